"""WIDER FACE (Yang et al., CVPR 2016) loading and registration, from the official release layout.

    <root>/WIDER_{train,val,test}/images/<event>/<image>.jpg
    <root>/wider_face_split/wider_face_{train,val}_bbx_gt.txt, wider_face_test_filelist.txt
    <root>/eval_tools/ground_truth/wider_{face,easy,medium,hard}_val.mat   (val keep lists)

bbx_gt format: an image name line, a face count line, then one line per face with
``x y w h blur expression illumination invalid occlusion pose``; an image with 0 faces is followed
by one all-zero line.
"""

import logging
import os
from typing import Dict, List, Optional, Tuple

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..errors import DATA_FIX, DataError

__all__ = [
    "WIDER_ATTRIBUTES",
    "parse_wider_bbx_gt",
    "load_widerface_instances",
    "register_widerface",
]

logger = logging.getLogger(__name__)

# Column order of the bbx_gt files (WIDER FACE readme). torchvision names columns 7 and 9 the other
# way round; this order is the readme's.
WIDER_ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


def parse_wider_bbx_gt(path: str) -> List[Tuple[str, List[List[int]]]]:
    """
    Parse a ``wider_face_*_bbx_gt.txt`` file exactly.

    Returns:
        list[(str, list[list[int]])]: per image, its relative path and its face rows
        ``[x, y, w, h, blur, expression, illumination, invalid, occlusion, pose]`` (an image with
        0 faces has no row; its all-zero placeholder line is consumed).

    Raises:
        ValueError: naming the file and the 1-based line of the first malformed entry.
    """
    with PathManager.open(path) as f:
        lines = [line.rstrip("\r\n") for line in f]
    out, i = [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        name = lines[i].strip()
        if not name.lower().endswith((".jpg", ".jpeg", ".png")):
            raise DataError(f"{path}:{i + 1}", f"expected an image name, got {name!r}", DATA_FIX)
        if i + 1 >= len(lines):
            raise DataError(f"{path}:{i + 2}", f"missing face count after {name!r}", DATA_FIX)
        try:
            count = int(lines[i + 1].strip())
        except ValueError:
            raise DataError(
                f"{path}:{i + 2}", f"expected a face count, got {lines[i + 1]!r}", DATA_FIX
            ) from None
        if count < 0:
            raise DataError(f"{path}:{i + 2}", f"negative face count {count}", DATA_FIX)
        num_rows = max(count, 1)  # 0 faces: one all-zero placeholder line follows
        rows = []
        for j in range(i + 2, i + 2 + num_rows):
            if j >= len(lines):
                raise DataError(
                    f"{path}:{j + 1}", f"file ends inside the faces of {name!r}", DATA_FIX
                )
            fields = lines[j].split()
            try:
                values = [int(float(v)) for v in fields]
            except (ValueError, OverflowError):  # "x", "nan", "1e400"
                raise DataError(
                    f"{path}:{j + 1}", f"non-numeric face row {lines[j]!r}", DATA_FIX
                ) from None
            if len(values) != 10:
                raise DataError(
                    f"{path}:{j + 1}", f"expected 10 values per face, got {len(values)}", DATA_FIX
                )
            rows.append(values)
        if count == 0:
            if any(rows[0]):
                raise DataError(
                    f"{path}:{i + 3}",
                    "an image with 0 faces must be followed by a zero line",
                    DATA_FIX,
                )
            rows = []
        out.append((name, rows))
        i += 2 + num_rows
    return out


def load_widerface_instances(
    image_root: str, bbx_gt_file: Optional[str], split_name: str = "", with_size: bool = True
) -> List[Dict]:
    """
    Detectron2 dataset dicts for a WIDER FACE split.

    Args:
        image_root (str): ``WIDER_<split>/images``.
        bbx_gt_file (str or None): the split's bbx_gt file; None for the unlabelled test split,
            whose images are listed by walking ``image_root``.
        with_size (bool): read each image's header for "height"/"width".

    Returns:
        list[dict]: one per image, with "file_name", "image_id" (``<event>/<stem>``), "event",
        "height", "width" and "annotations" (category 0, XYWH_ABS boxes, the six attributes).
        Faces marked invalid and degenerate boxes (w or h ≤ 0) are left out (counts are logged);
        with ``with_size``, boxes reaching outside their image are clipped to it and boxes with
        nothing inside it are left out (counted, with a warning). Images left without faces stay
        (DATALOADER.FILTER_EMPTY_ANNOTATIONS drops them in training).

    Raises:
        ValueError: an image that cannot be opened (naming it), or a split whose faces are all
            left out (nothing to train or evaluate on).
    """
    if bbx_gt_file is None:
        entries = []
        for event in sorted(os.listdir(image_root)):
            for img in sorted(os.listdir(os.path.join(image_root, event))):
                entries.append((f"{event}/{img}", None))
    else:
        entries = parse_wider_bbx_gt(bbx_gt_file)
    dicts = []
    counts = dict(rows=0, invalid=0, degenerate=0, clipped=0, outside=0)
    for rel, rows in entries:
        path = os.path.join(image_root, rel)
        record = {
            "file_name": path,
            "image_id": os.path.splitext(rel)[0],
            "event": os.path.dirname(rel),
        }
        if with_size:
            try:
                with Image.open(path) as im:
                    record["width"], record["height"] = im.size
            except OSError as e:  # missing, not an image, unreadable header
                raise DataError(path, f"cannot open this WIDER FACE image ({e})", DATA_FIX) from e
        if rows is not None:
            annos = []
            for row in rows:
                counts["rows"] += 1
                attrs = dict(zip(WIDER_ATTRIBUTES, row[4:]))
                if attrs["invalid"]:
                    counts["invalid"] += 1
                    continue
                box = _clip_xywh(row[:4], record.get("width"), record.get("height"), counts)
                if box is not None:
                    annos.append(
                        {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, **attrs}
                    )
            record["annotations"] = annos
        dicts.append(record)
    name = split_name or image_root
    kept = sum(len(d.get("annotations", ())) for d in dicts)
    logger.info(
        f"Loaded {len(dicts)} images of WIDER FACE {name} with {kept} faces; left out "
        f"{counts['invalid']} invalid faces and {counts['degenerate']} degenerate boxes "
        "(w or h <= 0)"
    )
    if counts["clipped"] or counts["outside"]:
        logger.warning(
            f"WIDER FACE {name}: {counts['clipped']} boxes reach outside their image and were "
            f"clipped to it; {counts['outside']} boxes lie entirely outside and were left out"
        )
    if counts["rows"] and not kept:
        raise DataError(
            bbx_gt_file,
            f"WIDER FACE {name}: all {counts['rows']} face rows were left out "
            f"({counts['invalid']} invalid, {counts['degenerate']} degenerate, {counts['outside']} "
            "outside their image): nothing to train or evaluate on",
            DATA_FIX,
        )
    return dicts


def _clip_xywh(xywh, width: Optional[int], height: Optional[int], counts: Dict[str, int]):
    """The box clipped to the image (``None`` when degenerate or outside; ``counts`` updated)."""
    x, y, w, h = xywh
    if w <= 0 or h <= 0:
        counts["degenerate"] += 1
        return None
    if width is None or height is None:
        return [x, y, w, h]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        counts["outside"] += 1
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        counts["clipped"] += 1
    return [x0, y0, x1 - x0, y1 - y0]


def register_widerface(name: str, root: str, split: str, gt_dir: Optional[str] = None) -> None:
    """
    Register a WIDER FACE split ("train", "val" or "test") of the release under ``root``.
    ``evaluator_type`` is "widerface"; ``gt_dir`` (default ``<root>/eval_tools/ground_truth``) holds
    the official .mat files used by the evaluator for "val".
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"Unknown WIDER FACE split: {split}")
    image_root = os.path.join(root, f"WIDER_{split}", "images")
    gt = (
        None
        if split == "test"
        else os.path.join(root, "wider_face_split", f"wider_face_{split}_bbx_gt.txt")
    )
    DatasetCatalog.register(name, lambda: load_widerface_instances(image_root, gt, name))
    MetadataCatalog.get(name).set(
        thing_classes=["face"],
        image_root=image_root,
        gt_dir=gt_dir or os.path.join(root, "eval_tools", "ground_truth"),
        evaluator_type="widerface",
    )
