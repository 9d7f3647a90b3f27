#!/usr/bin/env python
"""
QuantMimic training script: detectron2's ``train_net.py`` shape over :mod:`quant_mimic.engine`.

    python train_net.py --config-file configs/PascalVOC-Detection/faster_rcnn_R18_C4_teacher.yaml \
        --num-gpus 8 [KEY VALUE ...]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth

Training or evaluation writes ``OUTPUT_DIR/final_metrics.json`` (:func:`quant_mimic.engine.main`).
A mistake in what you give (a data file, a config, weights) ends with one line, ``error: FILE: what
is wrong; how to fix it``, and exit code 2; ``--debug`` (or ``QUANT_MIMIC_DEBUG=1``) adds the
traceback.
"""

import sys

from quant_mimic.engine import train_net_main  # registers everything
from quant_mimic.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(train_net_main))
