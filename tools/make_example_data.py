#!/usr/bin/env python
"""
Write a small 3-class example of "your data" in both formats a labelling tool exports, with its data
files (docs/YOUR_DATA.md): coloured rectangles of three classes (car, person, dog) on noise.

    python tools/make_example_data.py --out DIR [--train N] [--val N] [--height H --width W]

DIR/coco: a COCO-json set (category ids 3, 7, 11, an image without annotations and a crowd box in
each split) and DIR/coco/coco.yaml; DIR/voc: a VOC-xml set (.png images, decimal coordinates, no
<pose> on every other file) and DIR/voc/voc.yaml. Then, e.g.:

    python tools/run_pipeline.py --data DIR/voc/voc.yaml --family vgg --preset cpu --out output/ex
"""

import argparse
import os
import sys

from quant_mimic.errors import run_cli
from quant_mimic.testing import write_coco_example, write_voc_example


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=120, help="training images per set")
    p.add_argument("--val", type=int, default=40, help="val images per set")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    args = p.parse_args(argv)
    size = (args.height, args.width)
    coco = write_coco_example(os.path.join(args.out, "coco"), args.train, args.val, 0, size)
    voc = write_voc_example(os.path.join(args.out, "voc"), args.train, args.val, 1, size)
    print(f"Wrote {coco} and {voc} ({args.train} + {args.val} images of {size[0]}x{size[1]} each)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
