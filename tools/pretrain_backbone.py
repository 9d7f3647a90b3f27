#!/usr/bin/env python
"""
ImageNet-style pretraining of the backbone a detection config builds (paper Table 7, "finetuned on
ImageNet"), for ``MODEL.WEIGHTS`` of the student (quant_mimic/pretrain.py has the recipe).

    python tools/pretrain_backbone.py --config-file CFG --data DIR --output OUT \\
        [--epochs E] [--batch-size B] [--lr LR] [--image-size S] [--workers W] \\
        [--num-gpus N] [--num-machines M --machine-rank R --dist-url URL] [--resume] \\
        [--skip-bad-images] [KEY VALUE ...]

DIR: ``DIR/train/<class>/<image>`` and ``DIR/val/<class>/<image>`` (ImageNet after the usual val
re-sort; the built-in stand-in: ``python -m quant_mimic.data.synthetic --kind cls --out DIR``).
``--batch-size`` is the total over all processes and ``--lr`` is for that batch (torchvision's
reference: 0.1 at 256). OUT gets ``backbone.pth`` (the detection model's ``backbone.*`` and, for
C4 models, ``roi_heads.res5.*`` tensors, checked against a model built from CFG),
``classifier.pth`` (for ``--resume``) and ``pretrain_metrics.json`` (one record per epoch).
A bad input is an error naming it, exit status 2.
"""

import logging
import sys

from quant_mimic.engine import launch_from_args
from quant_mimic.errors import run_cli
from quant_mimic.pretrain import build_parser, main


def cli(argv=None) -> int:
    """Run the pretraining; 0 when done (a bad input: one line and exit 2, through the entry
    points' handler, quant_mimic.errors)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    launch_from_args(main, args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))
