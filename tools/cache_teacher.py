#!/usr/bin/env python
"""
Pre-fill the teacher-map cache (``MODEL.MIMIC.TEACHER.CACHE_DIR``) of a mimic config for its
``DATASETS.TRAIN``: every training image as read and, with ``INPUT.RANDOM_FLIP``, flipped.

    python tools/cache_teacher.py --config-file CFG [--data FILE] [--num-gpus N] [KEY VALUE ...]

CFG is the student's mimic config (MimicRCNN, MimicRetinaNet, MimicFCOS); the teacher is its
``MODEL.MIMIC.TEACHER.*``. Training fills the cache lazily anyway (the first epoch computes, the
rest read); pre-filling moves that cost out of the first training run and lets several runs start
with a full cache. With N processes each
fills its share. Prints a progress line, then the number of entries and the size on disk.
"""

import logging
import sys

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from quant_mimic import Trainer, get_config
from quant_mimic.config import MIMIC_ARCHITECTURES
from quant_mimic.data.data_file import data_opts
from quant_mimic.engine import build_parser, launch_from_args
from quant_mimic.errors import run_cli
from quant_mimic.teacher_cache_fill import fill_teacher_cache


def main(args) -> dict:
    setup_logger(name="quant_mimic", distributed_rank=comm.get_rank())
    cfg = get_config(args.config_file, list(args.opts) + data_opts(args.data))
    if not cfg.MODEL.MIMIC.TEACHER.CACHE_DIR:
        raise SystemExit("MODEL.MIMIC.TEACHER.CACHE_DIR is empty: name the cache folder")
    if cfg.MODEL.META_ARCHITECTURE not in MIMIC_ARCHITECTURES:
        raise SystemExit(
            f"{args.config_file} is not a mimic config ({', '.join(MIMIC_ARCHITECTURES)}): there "
            "is no teacher"
        )
    model = Trainer.build_model(cfg)  # loads the teacher strictly
    stats = fill_teacher_cache(cfg, model)
    comm.synchronize()
    if comm.is_main_process():
        entries, size = model.teacher_cache.size_on_disk()
        per = size / max(entries, 1)
        print(
            f"Teacher cache {cfg.MODEL.MIMIC.TEACHER.CACHE_DIR}: {entries} entries, "
            f"{size / 2**20:.1f} MiB on disk ({per / 1024:.1f} KiB per input); this process: "
            f"{stats['inputs']} inputs of {stats['images']} images, {stats['computed']} computed, "
            f"{stats['seconds']} s",
            flush=True,
        )
    return stats


def cli(argv=None) -> None:
    args = build_parser().parse_args(argv)  # train_net.py's: --data FILE too
    logging.basicConfig(level=logging.INFO)
    launch_from_args(main, args)


if __name__ == "__main__":
    sys.exit(run_cli(cli))
