#!/usr/bin/env python
"""
QuantMimic training script: detectron2's ``train_net.py`` shape over :mod:`quant_mimic.engine`.

    python train_net.py --config-file configs/PascalVOC-Detection/faster_rcnn_R18_C4_teacher.yaml \
        --num-gpus 8 [KEY VALUE ...]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth

Training or evaluation writes ``OUTPUT_DIR/final_metrics.json`` (:func:`quant_mimic.engine.main`).
"""

from quant_mimic.engine import build_parser, launch_from_args, main  # registers everything

if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    launch_from_args(main, args)
