"""Pascal VOC loading and registration (detectron2's format, one robustness fix)."""

import logging
import os
import xml.etree.ElementTree as ET
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = ["SYNTH_VOC_CLASSES", "read_split_ids", "load_voc_instances", "register_voc"]

# The six classes of the synthetic VOC-layout benchmark (glyphs of the digits 0-5).
SYNTH_VOC_CLASSES = ("zero", "one", "two", "three", "four", "five")

logger = logging.getLogger(__name__)


def read_split_ids(dirname: str, split: str) -> List[str]:
    """Image ids of ``ImageSets/Main/<split>.txt``; unlike ``np.loadtxt``, a one-line file works."""
    path = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    with PathManager.open(path) as f:
        return [line.strip() for line in f if line.strip()]


def load_voc_instances(dirname: str, split: str, class_names: Sequence[str]) -> List[dict]:
    """
    Load VOC annotations as detectron2's ``load_voc_instances`` does (difficult objects kept for
    training, 1-based pixel coordinates shifted by -1 for xmin/ymin), plus a ``difficult`` flag on
    each annotation.

    Returns:
        list[dict]: detectron2 dataset dicts.
    """
    dicts = []
    for fileid in read_split_ids(dirname, split):
        anno_file = os.path.join(dirname, "Annotations", fileid + ".xml")
        with PathManager.open(anno_file) as f:
            tree = ET.parse(f)
        record = {
            "file_name": os.path.join(dirname, "JPEGImages", fileid + ".jpg"),
            "image_id": fileid,
            "height": int(tree.findall("./size/height")[0].text),
            "width": int(tree.findall("./size/width")[0].text),
        }
        annos = []
        for obj in tree.findall("object"):
            name = obj.find("name").text
            if name not in class_names:
                raise ValueError(
                    f"{anno_file}: unknown class {name!r}; expected one of {list(class_names)}"
                )
            box = obj.find("bndbox")
            xyxy = [float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            xyxy[0] -= 1.0
            xyxy[1] -= 1.0
            difficult = obj.find("difficult")
            annos.append(
                {
                    "category_id": list(class_names).index(name),
                    "bbox": xyxy,
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "difficult": int(difficult.text) if difficult is not None else 0,
                }
            )
        record["annotations"] = annos
        dicts.append(record)
    return dicts


def register_voc(
    name: str, dirname: str, split: str, year: int, class_names: Sequence[str]
) -> None:
    """Register a VOC-layout dataset for the VOC protocol (``evaluator_type`` "pascal_voc")."""
    assert year in (2007, 2012), f"year must be 2007 (11-point AP) or 2012 (area AP), got {year}"
    class_names = list(class_names)
    DatasetCatalog.register(name, lambda: load_voc_instances(dirname, split, class_names))
    MetadataCatalog.get(name).set(
        thing_classes=class_names,
        dirname=dirname,
        year=year,
        split=split,
        evaluator_type="pascal_voc",
    )
