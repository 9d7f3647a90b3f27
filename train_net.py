#!/usr/bin/env python
"""
QuantMimic training script, in the shape of detectron2's projects/*/train_net.py.

    python train_net.py --config-file configs/PascalVOC-Detection/faster_rcnn_R18_C4_teacher.yaml \
        --num-gpus 8 [KEY VALUE ...]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth

After training (its final evaluation) or ``--eval-only``, the main process also writes the flat
evaluation results to ``OUTPUT_DIR/final_metrics.json`` (e.g. ``{"widerface/AP_easy": 71.3}``),
which ``tools/run_pipeline.py`` reads.
"""

import json
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm

from quant_mimic import Trainer, setup_cfg  # registers everything
from quant_mimic.checkpoint import atomic_write_text, load_checkpoint_strict
from quant_mimic.engine import launch_from_args

FINAL_METRICS = "final_metrics.json"


def write_final_metrics(output_dir: str, results) -> str:
    """Write ``results`` (detectron2's nested evaluation dict) flattened, atomically."""
    flat = {k: float(v) for k, v in flatten_results_dict(results or {}).items()}
    path = os.path.join(output_dir, FINAL_METRICS)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(path, json.dumps(flat, indent=2, sort_keys=True))
    return path


def build_parser():
    """detectron2's ``default_argument_parser`` plus ``--lenient``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="--eval-only: load MODEL.WEIGHTS as detectron2 does (mismatched or missing tensors "
        "are skipped with a warning) instead of failing on them",
    )
    return parser


def load_eval_weights(cfg, model, args) -> None:
    """
    ``--eval-only`` weights: ``MODEL.WEIGHTS`` (or, with ``--resume``, the output dir's last
    checkpoint), loaded strictly: empty weights, a file that is not a checkpoint, and missing,
    unexpected or mis-shaped tensors are errors naming them (``--lenient``: detectron2's loading).
    MimicRCNN's adapters r, unused at inference, may be absent (an exported student).
    """
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if args.lenient:
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return
    path = cfg.MODEL.WEIGHTS
    if args.resume and checkpointer.has_checkpoint():
        path = checkpointer.get_checkpoint_file()
    load_checkpoint_strict(
        model,
        path,
        what="MODEL.WEIGHTS",
        model_name=args.config_file or "the config",
        optional_prefixes=("mimic_adapters.",),
    )


def main(args):
    cfg = setup_cfg(args.config_file, args.opts, args=args)
    if args.eval_only:
        # Evaluation is the student's inference alone: no teacher is loaded.
        model = Trainer.build_model(cfg, load_teacher=False)
        load_eval_weights(cfg, model, args)
        res = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer.train returns them only with TEST.EXPECTED_RESULTS set.
        res = getattr(trainer, "_last_eval_results", None)
    if comm.is_main_process():
        verify_results(cfg, res)
        write_final_metrics(cfg.OUTPUT_DIR, res)
    return res


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    launch_from_args(main, args)
