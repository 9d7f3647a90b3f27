"""Dataset registration: Pascal VOC, WIDER FACE and the built-in synthetic benchmark.

Pascal VOC keeps detectron2's built-in names and metadata (``voc_2007_trainval``,
``voc_2012_trainval``, ``voc_2007_test``, ... under ``$DETECTRON2_DATASETS``); their loader is
replaced by :func:`quant_mimic.data.voc.load_voc_instances`, the one the synthetic VOC set uses
too (same dicts, plus a ``difficult`` flag, and a split file with a single id works).
"""

import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .voc import SYNTH_VOC_CLASSES, load_voc_instances, register_voc
from .widerface import register_widerface

__all__ = ["register_all_quantmimic_datasets"]

logger = logging.getLogger(__name__)


def register_all_quantmimic_datasets(root: str = None, replace: bool = False) -> None:
    """
    Register, once (or again, under a new root, with ``replace=True``), under ``root`` (default
    ``$DETECTRON2_DATASETS`` or ``datasets``):

    * ``widerface_{train,val,test}``: ``<root>/widerface`` (official release layout);
    * ``synth_faces_{train,val}``: ``<root>/synth/widerface`` (WIDER FACE layout);
    * ``synth_voc_{trainval,test}``: ``<root>/synth/VOC2007`` (VOC layout, VOC07 11-point AP).
    """
    root = root or os.getenv("DETECTRON2_DATASETS", "datasets")
    registered = set(DatasetCatalog.list())
    todo = [
        (f"widerface_{s}", register_widerface, (os.path.join(root, "widerface"), s))
        for s in ("train", "val", "test")
    ]
    synth = os.path.join(root, "synth")
    todo += [
        ("synth_faces_train", register_widerface, (os.path.join(synth, "widerface"), "train")),
        ("synth_faces_val", register_widerface, (os.path.join(synth, "widerface"), "val")),
        (
            "synth_voc_trainval",
            register_voc,
            (os.path.join(synth, "VOC2007"), "trainval", 2007, SYNTH_VOC_CLASSES),
        ),
        (
            "synth_voc_test",
            register_voc,
            (os.path.join(synth, "VOC2007"), "test", 2007, SYNTH_VOC_CLASSES),
        ),
    ]
    for name, fn, args in todo:
        if replace and name in registered:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if replace or name not in registered:
            fn(name, *args)
    _use_project_voc_loader()


_logged_voc_replacement = False


def _use_project_voc_loader() -> None:
    """Give detectron2's built-in ``voc_*`` datasets this project's loader; say so once."""
    global _logged_voc_replacement
    replaced = []
    for name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if not name.startswith("voc_") or meta.get("evaluator_type") != "pascal_voc":
            continue
        DatasetCatalog.remove(name)
        DatasetCatalog.register(
            name,
            lambda d=meta.dirname, s=meta.split, c=tuple(meta.thing_classes): load_voc_instances(
                d, s, c
            ),
        )
        replaced.append(name)
    if replaced and not _logged_voc_replacement:
        logger.info(
            f"Re-registered detectron2's built-in datasets {replaced} with "
            "quant_mimic.data.voc.load_voc_instances (same dicts plus a 'difficult' flag; split "
            "files with a single id work)"
        )
        _logged_voc_replacement = True
