"""Filling the teacher-map cache ahead of training: the frozen teacher of a MimicRCNN run over a
training set, each image as read and flipped (the cache's format: :mod:`quant_mimic.teacher_cache`).
Used by ``tools/cache_teacher.py``; training fills the cache lazily as well."""

import logging
import time
from typing import Dict

from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils
from detectron2.data import get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.utils import comm

from .data import NamedErrorDatasetMapper
from .engine import Trainer

__all__ = ["fill_teacher_cache"]

logger = logging.getLogger(__name__)


def fill_teacher_cache(cfg: CfgNode, model=None, log_every: int = 50) -> Dict:
    """
    Pre-fill ``MODEL.MIMIC.TEACHER.CACHE_DIR`` for ``DATASETS.TRAIN`` (every image as read and,
    with ``INPUT.RANDOM_FLIP``, flipped), on this rank's share of the images, each image alone
    (padded to the teacher's size divisibility): the entries that training reads with one image
    per batch (the paper: one per GPU) or with images of one size (the synthetic benchmarks).

    Args:
        cfg: the MimicRCNN config (frozen or not).
        model: the MimicRCNN with its teacher loaded (default: built from ``cfg``).

    Returns:
        dict: ``images``, ``inputs``, ``computed``, ``entries``, ``bytes``, ``seconds``.
    """
    if model is None:
        model = Trainer.build_model(cfg)
    model.train()  # the cache is used (and filled) in training
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=0,
        proposal_files=None,
    )
    dicts = dicts[comm.get_rank() :: comm.get_world_size()]
    mapper = NamedErrorDatasetMapper(cfg, True)
    resize = utils.build_augmentation(cfg, True)[0]  # ResizeShortestEdge, one scale
    flips = [None]
    if cfg.INPUT.RANDOM_FLIP != "none":
        horizontal = cfg.INPUT.RANDOM_FLIP == "horizontal"
        flips.append(T.RandomFlip(prob=1.0, horizontal=horizontal, vertical=not horizontal))
    start, done, computed = time.time(), 0, 0
    for k, d in enumerate(dicts, 1):
        for flip in flips:
            mapper.augmentations = T.AugmentationList([resize] + ([flip] if flip else []))
            inp = mapper(dict(d))
            computed += model.teacher_maps([inp], fill_only=True)
            done += 1
        if k % log_every == 0 or k == len(dicts):
            el = time.time() - start
            eta = el / k * (len(dicts) - k)
            logger.info(
                f"Teacher cache: {k}/{len(dicts)} images ({done} inputs, {computed} computed), "
                f"{el:.0f} s, ETA {eta:.0f} s"
            )
    entries, size = model.teacher_cache.size_on_disk()
    return {
        "images": len(dicts),
        "inputs": done,
        "computed": computed,
        "entries": entries,
        "bytes": size,
        "seconds": round(time.time() - start, 1),
    }
