#!/usr/bin/env python
"""Unpack and check the official WIDER FACE release for QuantMimic.

Download (http://shuoyang1213.me/WIDERFACE/) WIDER_train.zip, WIDER_val.zip, WIDER_test.zip,
wider_face_split.zip and, from the evaluation code, eval_tools.zip (it holds ground_truth/*.mat).
Then:

    python datasets/prepare_widerface.py --zips ~/Downloads --root datasets/widerface

Existing folders are kept; the script then checks the layout that ``widerface_{train,val,test}``
read (see datasets/README.md) and parses both bbx_gt files.
"""

import argparse
import os
import sys
import zipfile

REQUIRED = [
    "WIDER_train/images",
    "WIDER_val/images",
    "wider_face_split/wider_face_train_bbx_gt.txt",
    "wider_face_split/wider_face_val_bbx_gt.txt",
    "eval_tools/ground_truth/wider_face_val.mat",
    "eval_tools/ground_truth/wider_easy_val.mat",
    "eval_tools/ground_truth/wider_medium_val.mat",
    "eval_tools/ground_truth/wider_hard_val.mat",
]
ZIPS = [
    "WIDER_train.zip",
    "WIDER_val.zip",
    "WIDER_test.zip",
    "wider_face_split.zip",
    "eval_tools.zip",
]


def check_layout(root: str) -> list:
    """Paths of the layout missing under ``root``."""
    return [p for p in REQUIRED if not os.path.exists(os.path.join(root, p))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zips", default="", help="folder holding the downloaded zip files")
    parser.add_argument(
        "--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "widerface")
    )
    args = parser.parse_args(argv)
    os.makedirs(args.root, exist_ok=True)
    if args.zips:
        for name in ZIPS:
            path = os.path.join(args.zips, name)
            if not os.path.isfile(path):
                print(f"skip {name}: not in {args.zips}")
                continue
            with zipfile.ZipFile(path) as z:
                top = z.namelist()[0].split("/")[0]
                if os.path.exists(os.path.join(args.root, top)):
                    print(f"keep existing {top}/")
                    continue
                print(f"unpack {name} -> {args.root}/{top}/")
                z.extractall(args.root)
    missing = check_layout(args.root)
    if missing:
        print("Missing under", args.root, ":\n  " + "\n  ".join(missing))
        return 1
    from quant_mimic.data.widerface import parse_wider_bbx_gt

    for split in ("train", "val"):
        entries = parse_wider_bbx_gt(
            os.path.join(args.root, "wider_face_split", f"wider_face_{split}_bbx_gt.txt")
        )
        print(f"{split}: {len(entries)} images, {sum(len(r) for _, r in entries)} faces")
    print("WIDER FACE layout OK:", args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
