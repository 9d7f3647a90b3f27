"""Built-in synthetic benchmark in the exact WIDER FACE and Pascal VOC release layouts.

    python -m quant_mimic.data.synthetic --out datasets/synth/widerface --kind faces \
        --num-train 300 --num-val 100 --seed 0
    python -m quant_mimic.data.synthetic --out datasets/synth/VOC2007 --kind voc \
        --num-train 300 --num-val 100 --seed 0
    python -m quant_mimic.data.synthetic --out datasets/synth/cls --kind cls \
        --num-train 300 --num-val 60 --size 64 --seed 0      # per class; see synthetic_cls.py

faces: real face crops shipped with scikit-image (``skimage.data.lfw_subset()``: 100 faces, plus 100
non-faces pasted as 2-8 distractors per image, processed like faces) on real textures (brick, grass,
gravel, moon, camera), 6 to ~120 px (log-uniform), with contrast ×0.25-1.1, blur and sensor noise.
Difficulty subsets (the .mat keep lists), by face size s and blur b: easy = s ≥ 40 and b ≤ 1; medium
= easy ∪ {s ≥ 20 and b ≤ 1}; hard = every valid face (including 6-20 px and heavily blurred ones).
Faces under 8 px are written with ``invalid = 1`` (kept in the files, out of training targets and of
every keep list), like WIDER's unlabelable faces.

voc: six classes of real glyphs (the digits 0-5 in OpenCV's Hershey fonts, varied font, stroke and
colour), 10-100 px on their longest side (log-uniform, at most 0.8 × the image's shorter side), on
colour photographs shipped with scikit-image; objects under 14 px are ``difficult``.

Output is deterministic for a given seed.
"""

import argparse
import logging
import os
import time
from typing import Dict, List, Optional

import cv2
import numpy as np
import scipy.io

from .synthetic_world import FaceStyle, _background, _glyph, _skimage
from .voc import SYNTH_VOC_CLASSES

__all__ = ["VOC_CLASSES", "FACE_EVENTS", "FaceStyle", "generate_faces", "generate_voc", "main"]

logger = logging.getLogger(__name__)

VOC_CLASSES = SYNTH_VOC_CLASSES  # the generator draws these; registration reads them from voc.py
FACE_EVENTS = ("0--Brick", "1--Grass", "2--Gravel", "3--Moon", "4--Camera")


def _free_spot(rng, boxes: List[List[int]], s_h: int, s_w: int, h: int, w: int, tries: int = 30):
    """Top-left (x, y) of an s_h × s_w box inside h × w overlapping no box; None if none found."""
    if s_h > h or s_w > w:
        return None
    for _ in range(tries):
        x, y = rng.randint(0, w - s_w + 1), rng.randint(0, h - s_h + 1)
        if all(
            x + s_w <= bx or bx + bw <= x or y + s_h <= by or by + bh <= y
            for bx, by, bw, bh in boxes
        ):
            return x, y
    return None


def _log_uniform(rng, lo: float, hi: float) -> int:
    return int(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _paste(rng, img, crop, x: int, y: int, side: int, contrast: float, style: FaceStyle):
    interp = cv2.INTER_AREA if side < crop.shape[0] else cv2.INTER_LINEAR
    patch = cv2.resize(crop, (side, side), interpolation=interp)
    patch = (patch - patch.mean()) * contrast * 255 + rng.uniform(*style.brightness)
    img[y : y + side, x : x + side] = patch
    return patch


def _add_distractors(rng, img, nonfaces, style: FaceStyle) -> None:
    """Real non-face crops, pasted like faces but not annotated (hard negatives)."""
    h, w = img.shape
    placed: List[List[int]] = []
    for _ in range(rng.randint(*style.distractor_count)):
        side = _log_uniform(rng, *style.distractor_side)
        spot = _free_spot(rng, placed, side, side, h, w)
        if spot:
            crop = nonfaces[rng.randint(len(nonfaces))]
            _paste(rng, img, crop, spot[0], spot[1], side, rng.uniform(*style.contrast), style)
            placed.append([spot[0], spot[1], side, side])


def _add_faces(rng, img, faces, style: FaceStyle) -> List[List[int]]:
    """Paste faces; their WIDER rows (x, y, w, h, blur, expr, illum, invalid, occl, pose)."""
    h, w = img.shape
    boxes: List[List[int]] = []
    rows: List[List[int]] = []
    num = 0 if rng.rand() < style.no_face_prob else rng.randint(*style.face_count)
    top = min(style.face_side[1], style.max_side_frac * h)
    for _ in range(num):
        side = _log_uniform(rng, style.face_side[0], top)
        spot = _free_spot(rng, boxes, side, side, h, w)
        if spot is None:
            continue
        x, y = spot
        blur = int(rng.choice([0, 1, 2], p=list(style.blur_probs)))
        contrast = rng.uniform(*style.contrast)
        crop = faces[rng.randint(len(faces))]
        patch = _paste(rng, img, crop, x, y, side, contrast, style)
        if blur:
            sigma = style.blur_sigma[blur - 1] * side + style.blur_sigma_offset
            img[y : y + side, x : x + side] = cv2.GaussianBlur(patch, (0, 0), sigma)
        boxes.append([x, y, side, side])
        invalid = int(side < style.invalid_below)
        illumination = int(contrast < style.low_contrast_below)
        rows.append([x, y, side, side, blur, 0, illumination, invalid, 0, 0])
    return rows


def _write_wider_split(out: str, split: str, entries) -> None:
    split_dir = os.path.join(out, "wider_face_split")
    os.makedirs(split_dir, exist_ok=True)
    with open(os.path.join(split_dir, f"wider_face_{split}_bbx_gt.txt"), "w") as f:
        for rel, rows in entries:
            f.write(f"{rel}\n{len(rows)}\n")
            for r in rows or [[0] * 10]:
                f.write(" ".join(str(v) for v in r) + " \n")


def generate_faces(
    out: str,
    num_train: int,
    num_val: int,
    seed: int = 0,
    size=(192, 256),
    style: Optional[FaceStyle] = None,
) -> Dict:
    """Write a WIDER-FACE-layout synthetic set under ``out``; returns the ground truth written."""
    style = style or FaceStyle()
    data = _skimage()
    lfw = data.lfw_subset()  # (200, 25, 25) in [0, 1]: 100 faces then 100 non-faces
    faces, nonfaces = lfw[:100], lfw[100:]
    textures = [data.brick(), data.grass(), data.gravel(), data.moon(), data.camera()]
    rng = np.random.RandomState(seed)
    h, w = size
    written = {}
    for split, num in (("train", num_train), ("val", num_val)):
        entries = []
        for idx in range(num):
            e = idx % len(FACE_EVENTS)
            event = FACE_EVENTS[e]
            img = _background(rng, textures[e], h, w)
            _add_distractors(rng, img, nonfaces, style)
            rows = _add_faces(rng, img, faces, style)
            img = img + rng.normal(0, rng.uniform(*style.noise_std), img.shape)
            img = np.clip(img, 0, 255).astype(np.uint8)
            rel = f"{event}/{e}_{event.split('--')[1]}_{split}_{idx:05d}.jpg"
            path = os.path.join(out, f"WIDER_{split}", "images", rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, style.jpeg_quality])
            entries.append((rel, rows))
        _write_wider_split(out, split, entries)
        written[split] = entries
    _write_val_mats(os.path.join(out, "eval_tools", "ground_truth"), written["val"])
    return written


def face_subsets(rows: List[List[int]]) -> Dict[str, List[int]]:
    """1-based keep lists of an image's face rows for easy/medium/hard (module docstring)."""
    keep = {"easy": [], "medium": [], "hard": []}
    for k, r in enumerate(rows, start=1):
        s, blur, invalid = min(r[2], r[3]), r[4], r[7]
        if invalid:
            continue
        keep["hard"].append(k)
        if s >= 20 and blur <= 1:
            keep["medium"].append(k)
        if s >= 40 and blur <= 1:
            keep["easy"].append(k)
    return keep


def _write_val_mats(gt_dir: str, entries) -> None:
    os.makedirs(gt_dir, exist_ok=True)
    events = sorted({rel.split("/")[0] for rel, _ in entries})
    event_list = np.empty((len(events), 1), dtype=object)
    file_list = np.empty((len(events), 1), dtype=object)
    bbx_list = np.empty((len(events), 1), dtype=object)
    gt_lists = {s: np.empty((len(events), 1), dtype=object) for s in ("easy", "medium", "hard")}
    for i, event in enumerate(events):
        items = [(rel, rows) for rel, rows in entries if rel.startswith(event + "/")]
        event_list[i, 0] = event
        files = np.empty((len(items), 1), dtype=object)
        boxes = np.empty((len(items), 1), dtype=object)
        subs = {s: np.empty((len(items), 1), dtype=object) for s in gt_lists}
        for j, (rel, rows) in enumerate(items):
            files[j, 0] = os.path.splitext(os.path.basename(rel))[0]
            boxes[j, 0] = np.array([r[:4] for r in rows], dtype=np.float64).reshape(-1, 4)
            for s, keep in face_subsets(rows).items():
                subs[s][j, 0] = np.array(keep, dtype=np.float64).reshape(-1, 1)
        file_list[i, 0], bbx_list[i, 0] = files, boxes
        for s in gt_lists:
            gt_lists[s][i, 0] = subs[s]
    common = {"event_list": event_list, "file_list": file_list}
    scipy.io.savemat(
        os.path.join(gt_dir, "wider_face_val.mat"), {**common, "face_bbx_list": bbx_list}
    )
    for s, lst in gt_lists.items():
        scipy.io.savemat(os.path.join(gt_dir, f"wider_{s}_val.mat"), {**common, "gt_list": lst})


def generate_voc(out: str, num_train: int, num_val: int, seed: int = 0, size=(192, 256)) -> Dict:
    """Write a VOC-layout synthetic set (``out``: the VOC2007-like folder); return what it wrote."""
    data = _skimage()
    photos = [
        data.coffee(),
        data.astronaut(),
        data.chelsea(),
        data.rocket(),
        data.immunohistochemistry(),
    ]
    rng = np.random.RandomState(seed)
    h, w = size
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    written = {}
    for split, num in (("trainval", num_train), ("test", num_val)):
        ids = []
        for idx in range(num):
            photo = photos[idx % len(photos)][:, :, ::-1]  # BGR for cv2
            img = _background(rng, np.ascontiguousarray(photo), h, w)
            objects, boxes = [], []
            for _ in range(rng.randint(1, 5)):
                cls = int(rng.randint(len(VOC_CLASSES)))
                # Longest side log-uniform in [10, 100] px, at most 0.8 × the image's shorter side.
                side = int(np.exp(rng.uniform(np.log(10), np.log(100))))
                mask = _glyph(rng, cls, min(side, int(0.8 * min(h, w))))
                mh, mw = mask.shape
                spot = _free_spot(rng, boxes, mh, mw, h, w)
                if spot is None:
                    continue
                x, y = spot
                color = rng.randint(0, 256, size=3).astype(np.float32)
                alpha = mask.astype(np.float32)[..., None] / 255.0
                img[y : y + mh, x : x + mw] = (
                    img[y : y + mh, x : x + mw] * (1 - alpha) + color * alpha
                )
                boxes.append([x, y, mw, mh])
                # VOC: 1-based inclusive pixel indices
                objects.append(
                    (VOC_CLASSES[cls], x + 1, y + 1, x + mw, y + mh, int(min(mw, mh) < 14))
                )
            img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
            fileid = f"{split}_{idx:06d}"
            cv2.imwrite(
                os.path.join(out, "JPEGImages", fileid + ".jpg"),
                img,
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
            _write_voc_xml(os.path.join(out, "Annotations", fileid + ".xml"), fileid, w, h, objects)
            ids.append((fileid, objects))
        with open(os.path.join(out, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(f"{i}\n" for i, _ in ids))
        written[split] = ids
    return written


def _write_voc_xml(path: str, fileid: str, w: int, h: int, objects) -> None:
    objs = "".join(
        f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n"
        f"    <truncated>0</truncated>\n"
        f"    <difficult>{difficult}</difficult>\n    <bndbox>\n      <xmin>{x0}</xmin>\n"
        f"      <ymin>{y0}</ymin>\n      <xmax>{x1}</xmax>\n"
        f"      <ymax>{y1}</ymax>\n    </bndbox>\n"
        f"  </object>\n"
        for name, x0, y0, x1, y1, difficult in objects
    )
    with open(path, "w") as f:
        f.write(
            f"<annotation>\n  <folder>VOC2007</folder>\n  <filename>{fileid}.jpg</filename>\n"
            f"  <size>\n    <width>{w}</width>\n    <height>{h}</height>\n"
            f"    <depth>3</depth>\n  </size>\n"
            f"  <segmented>0</segmented>\n{objs}</annotation>\n"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write QuantMimic's synthetic benchmark")
    parser.add_argument(
        "--out", required=True, help="output folder (WIDER FACE, VOC2007 or ImageFolder layout)"
    )
    parser.add_argument(
        "--kind",
        required=True,
        choices=["faces", "voc", "cls"],
        help="cls: the ImageFolder classification set for backbone pretraining (synthetic_cls.py)",
    )
    parser.add_argument("--num-train", type=int, default=300, help="images (cls: per class)")
    parser.add_argument("--num-val", type=int, default=None, help="default 100 (cls: 60 per class)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--size", type=int, default=64, help="cls: image side in pixels")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.kind == "cls":
        from .synthetic_cls import generate_cls

        num_val = 60 if args.num_val is None else args.num_val
        m = generate_cls(args.out, args.num_train, num_val, args.seed, args.size)
        print(
            f"Wrote {args.num_train} + {num_val} images per class, {len(m['classes'])} classes, "
            f"to {args.out} in {time.perf_counter() - start:.1f} s"
        )
        return
    num_val = 100 if args.num_val is None else args.num_val
    fn = generate_faces if args.kind == "faces" else generate_voc
    fn(args.out, args.num_train, num_val, args.seed, (args.height, args.width))
    print(
        f"Wrote {args.num_train} + {num_val} {args.kind} images to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
