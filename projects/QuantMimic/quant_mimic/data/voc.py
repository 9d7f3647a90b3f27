"""Pascal VOC loading and registration (detectron2's dicts), for the official sets and VOC xml as
labelling tools write it: missing ``<pose>``, ``<truncated>``, ``<difficult>`` or ``<size>``,
decimal and out-of-image coordinates (clipped, counted, logged), any image extension."""

import logging
import math
import os
import xml.etree.ElementTree as ET
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..errors import DATA_FIX, DataError

__all__ = ["SYNTH_VOC_CLASSES", "read_split_ids", "load_voc_instances", "register_voc"]

# The six classes of the synthetic VOC-layout benchmark (glyphs of the digits 0-5).
SYNTH_VOC_CLASSES = ("zero", "one", "two", "three", "four", "five")

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".PNG")


def read_split_ids(dirname: str, split: str) -> List[str]:
    """Image ids of ``ImageSets/Main/<split>.txt``; unlike ``np.loadtxt``, a one-line file works."""
    path = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    with PathManager.open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _image_file(dirname: str, fileid: str, tree) -> str:
    """The image of an annotation: ``<filename>`` in ``JPEGImages/`` when it exists there, else
    ``JPEGImages/<id>`` with the first extension found (``.jpg`` when none is)."""
    images = os.path.join(dirname, "JPEGImages")
    named = (tree.findtext("filename") or "").strip()
    if named and os.path.isfile(os.path.join(images, os.path.basename(named))):
        return os.path.join(images, os.path.basename(named))
    for ext in IMAGE_EXTENSIONS:
        if os.path.isfile(os.path.join(images, fileid + ext)):
            return os.path.join(images, fileid + ext)
    return os.path.join(images, fileid + ".jpg")


def _image_size(tree, image_file: str, anno_file: str) -> tuple:
    """(height, width) from ``<size>``, or from the image file when the xml has none."""
    if tree.find("./size/height") is not None or tree.find("./size/width") is not None:
        return _int_field(tree, "./size/height", anno_file), _int_field(
            tree, "./size/width", anno_file
        )
    try:
        from PIL import Image

        with Image.open(image_file) as im:
            width, height = im.size
    except OSError as e:
        raise DataError(
            f"{anno_file}", f"no <size>, and its image {image_file} is unreadable ({e})", DATA_FIX
        )
    return height, width


def load_voc_instances(dirname: str, split: str, class_names: Sequence[str]) -> List[dict]:
    """
    Load VOC annotations as detectron2's ``load_voc_instances`` does (difficult objects kept for
    training, 1-based pixel coordinates shifted by -1 for xmin/ymin), plus a ``difficult`` flag on
    each annotation. Boxes reaching outside the image (``size``) are clipped to it; inverted boxes
    (xmax < xmin or ymax < ymin) and boxes with nothing inside the image are left out; both are
    counted in one warning. Classes with no object in the split are named in a warning. The image
    is ``<filename>`` (any extension) and the size, without ``<size>``, the image's.

    Returns:
        list[dict]: detectron2 dataset dicts.

    Raises:
        ValueError: naming the xml file, for malformed xml, a missing or non-numeric field, an
            unknown class; naming the split, when every object is left out.
    """
    dicts = []
    counts = dict(objects=0, clipped=0, inverted=0, outside=0)
    per_class = {c: 0 for c in class_names}
    for fileid in read_split_ids(dirname, split):
        anno_file = os.path.join(dirname, "Annotations", fileid + ".xml")
        if not PathManager.exists(anno_file):
            split_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
            raise DataError(
                split_file,
                f"names image {fileid!r}, which has no {anno_file}",
                "add the annotation, or take the image out of the split file",
            )
        try:
            with PathManager.open(anno_file) as f:
                tree = ET.parse(f)
        except ET.ParseError as e:
            raise DataError(anno_file, f"malformed xml ({e})", DATA_FIX) from None
        if tree.getroot().tag != "annotation":
            raise DataError(
                anno_file,
                f"not a VOC annotation (root element <{tree.getroot().tag}>, expected "
                "<annotation>)",
                DATA_FIX,
            )
        file_name = _image_file(dirname, fileid, tree)
        height, width = _image_size(tree, file_name, anno_file)
        record = {"file_name": file_name, "image_id": fileid, "height": height, "width": width}
        annos = []
        for i, obj in enumerate(tree.findall("object")):
            counts["objects"] += 1
            name = _text(obj, "name", anno_file, i)
            if name not in class_names:
                raise DataError(
                    anno_file,
                    f"unknown class {name!r}; expected one of {list(class_names)}",
                    "add it to the data file's names, or correct the object's <name>",
                )
            xyxy = [
                _float(obj, f"bndbox/{k}", anno_file, i) for k in ("xmin", "ymin", "xmax", "ymax")
            ]
            xyxy[0] -= 1.0
            xyxy[1] -= 1.0
            xyxy = _clip_xyxy(xyxy, record["width"], record["height"], counts)
            if xyxy is None:
                continue
            difficult = _difficult(obj, anno_file, i)
            per_class[name] += 1
            annos.append(
                {
                    "category_id": list(class_names).index(name),
                    "bbox": xyxy,
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "difficult": difficult,
                }
            )
        record["annotations"] = annos
        dicts.append(record)
    where = f"{dirname} split {split!r}"
    if counts["clipped"] or counts["inverted"] or counts["outside"]:
        logger.warning(
            f"VOC {where}: {counts['clipped']} boxes clipped to their image, "
            f"{counts['inverted']} inverted boxes and {counts['outside']} boxes outside their "
            "image left out"
        )
    if counts["objects"] and not any(per_class.values()):
        raise DataError(
            f"VOC {where}",
            f"all {counts['objects']} objects were left out (inverted or outside their image)",
            DATA_FIX,
        )
    empty = [c for c, n in per_class.items() if n == 0]
    if empty and dicts:
        logger.warning(f"VOC {where}: no object of class(es) {empty}; their AP is undefined")
    return dicts


def _text(node, path: str, anno_file: str, index: int) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise DataError(anno_file, f"object {index} has no <{path}>", DATA_FIX)
    return found.text.strip()


def _float(node, path: str, anno_file: str, index: int) -> float:
    text = _text(node, path, anno_file, index)
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{anno_file}: object {index}", f"<{path}> is not a number: {text!r}", DATA_FIX
        ) from None
    if not math.isfinite(value):
        raise DataError(
            f"{anno_file}: object {index}", f"<{path}> is not finite: {text!r}", DATA_FIX
        )
    return value


def _difficult(obj, anno_file: str, index: int) -> int:
    """The ``<difficult>`` flag: 0 when absent, else 0 or 1."""
    if obj.find("difficult") is None:
        return 0
    text = _text(obj, "difficult", anno_file, index)
    if text not in ("0", "1"):
        raise DataError(
            f"{anno_file}: object {index}", f"<difficult> must be 0 or 1, got {text!r}", DATA_FIX
        )
    return int(text)


def _int_field(tree, path: str, anno_file: str) -> int:
    found = tree.find(path)
    try:
        value = int(found.text)
    except (AttributeError, TypeError, ValueError):
        raise DataError(anno_file, f"missing or non-integer {path[2:]}", DATA_FIX) from None
    if value <= 0:
        raise DataError(anno_file, f"{path[2:]} must be positive, got {value}", DATA_FIX)
    return value


def _clip_xyxy(xyxy, width: int, height: int, counts) -> Optional[List[float]]:
    x0, y0, x1, y1 = xyxy
    if x1 < x0 or y1 < y0:
        counts["inverted"] += 1
        return None
    c = [min(max(x0, 0.0), width), min(max(y0, 0.0), height)]
    c += [min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
    if c[2] <= c[0] or c[3] <= c[1]:
        counts["outside"] += 1
        return None
    if c != [x0, y0, x1, y1]:
        counts["clipped"] += 1
    return c


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
