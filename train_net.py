#!/usr/bin/env python
"""
QuantMimic training script, in the shape of detectron2's projects/*/train_net.py.

    python train_net.py --config-file configs/PascalVOC-Detection/faster_rcnn_R18_C4_teacher.yaml \
        --num-gpus 8 [KEY VALUE ...]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth
"""

import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "projects", "QuantMimic")
)
from quant_mimic import Trainer, setup_cfg  # noqa: E402  (registers everything)


def main(args):
    cfg = setup_cfg(args.config_file, args.opts, args=args)
    if args.eval_only:
        # Evaluation is the student's inference alone: no teacher is loaded.
        model = Trainer.build_model(cfg, load_teacher=False)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
