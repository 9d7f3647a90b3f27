"""The built-in stand-in for ImageNet: an ImageFolder classification set from the synthetic world.

    python -m quant_mimic.data.synthetic --kind cls --out datasets/synth/cls \
        --num-train 300 --num-val 60 --size 64 --seed 0

Nine classes, each image one centred object on its own background, drawn from the same sources as
the two synthetic detection benchmarks (:mod:`quant_mimic.data.synthetic`): ``glyph_0`` ...
``glyph_5`` (the VOC benchmark's six Hershey digits, varied font, stroke and colour, on crops of the
same scikit-image photographs), ``face`` and ``nonface`` (the faces benchmark's LFW faces and its
non-face distractors, with its contrast, brightness and blur rules, on the same textures) and
``background`` (photograph or texture alone). Object sides are 35-90 % of the image side.

Layout (torchvision ``ImageFolder``, as ImageNet after the usual val re-sort):
``out/train/<class>/<class>_train_00000.png`` and ``out/val/<class>/...``; ``--num-train`` and
``--num-val`` count images **per class**; ``out/manifest.json`` records the classes, counts, seed
and the SHA-256 of every image.

Disjoint from the detection sets' images: every image here is rendered from the raw sources (LFW
crops, glyph renders, photographs, textures), never cut from a detection image, by a random stream
keyed ``(seed, 0xC15)``. A detection set draws from ``RandomState(seed)`` (one key word), so no
seed of either makes the two streams coincide, and the images differ in size and content anyway;
:func:`shared_images` checks it by content hash, and the tests run it.
"""

import hashlib
import json
import os
from typing import Dict, Iterable, List, Tuple

import cv2
import numpy as np

from .synthetic_world import FaceStyle, _background, _glyph, _skimage

__all__ = ["CLS_CLASSES", "generate_cls", "shared_images"]

CLS_CLASSES = tuple(f"glyph_{d}" for d in range(6)) + ("face", "nonface", "background")
_STREAM_KEY = 0xC15  # second word of the cls stream's seed: never a detection stream's seed
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def _sources():
    data = _skimage()
    lfw = data.lfw_subset()  # 100 faces then 100 non-faces, (25, 25) in [0, 1]
    photos = [data.coffee(), data.astronaut(), data.chelsea(), data.rocket()]
    photos += [data.immunohistochemistry()]
    photos = [np.ascontiguousarray(p[:, :, ::-1]) for p in photos]  # RGB -> BGR for cv2
    textures = [data.brick(), data.grass(), data.gravel(), data.moon(), data.camera()]
    return lfw[:100], lfw[100:], photos, textures


def _render(rng, cls: str, size: int, sources, style: FaceStyle) -> np.ndarray:
    """One (size, size, 3) uint8 BGR image of class ``cls``."""
    faces, nonfaces, photos, textures = sources
    side = int(size * rng.uniform(0.35, 0.9))
    x, y = rng.randint(0, size - side + 1), rng.randint(0, size - side + 1)
    if cls.startswith("glyph_") or (cls == "background" and rng.rand() < 0.5):
        img = _background(rng, photos[rng.randint(len(photos))], size, size)
        if cls.startswith("glyph_"):
            mask = _glyph(rng, int(cls[-1]), side)
            mh, mw = mask.shape
            x, y = rng.randint(0, size - mw + 1), rng.randint(0, size - mh + 1)
            alpha = mask.astype(np.float32)[..., None] / 255.0
            color = rng.randint(0, 256, size=3).astype(np.float32)
            img[y : y + mh, x : x + mw] = img[y : y + mh, x : x + mw] * (1 - alpha) + color * alpha
        noise = 3.0
    else:
        img = _background(rng, textures[rng.randint(len(textures))], size, size)
        if cls in ("face", "nonface"):
            crops = faces if cls == "face" else nonfaces
            crop = crops[rng.randint(len(crops))]
            patch = cv2.resize(crop, (side, side), interpolation=cv2.INTER_LINEAR)
            contrast = rng.uniform(*style.contrast)
            patch = (patch - patch.mean()) * contrast * 255 + rng.uniform(*style.brightness)
            blur = int(rng.choice([0, 1, 2], p=list(style.blur_probs)))
            if blur:
                sigma = style.blur_sigma[blur - 1] * side + style.blur_sigma_offset
                patch = cv2.GaussianBlur(patch, (0, 0), sigma)
            img[y : y + side, x : x + side] = patch
        img = np.repeat(img[..., None], 3, axis=2)
        noise = rng.uniform(*style.noise_std)
    img = img + rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def generate_cls(
    out: str,
    num_train: int,
    num_val: int,
    seed: int = 0,
    size: int = 64,
    classes: Iterable[str] = CLS_CLASSES,
) -> Dict:
    """
    Write the ImageFolder set under ``out`` (module docstring); deterministic for a given seed.

    Args:
        num_train / num_val (int): images per class in ``train/`` / ``val/`` (≥ 1 each).
        size (int): image side in pixels (≥ 16).
        classes: a subset of :data:`CLS_CLASSES` (all by default).

    Returns:
        dict: the manifest written to ``out/manifest.json``.
    """
    classes = list(classes)
    unknown = [c for c in classes if c not in CLS_CLASSES]
    if unknown or not classes:
        raise ValueError(f"Unknown cls classes {unknown} (known: {list(CLS_CLASSES)})")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"--num-train and --num-val must be ≥ 1, got {num_train}, {num_val}")
    if size < 16:
        raise ValueError(f"--size must be ≥ 16 pixels, got {size}")
    rng = np.random.RandomState([seed, _STREAM_KEY])
    sources, style = _sources(), FaceStyle()
    files: Dict[str, str] = {}
    for split, num in (("train", num_train), ("val", num_val)):
        for idx in range(num):
            for cls in classes:
                rel = os.path.join(split, cls, f"{cls}_{split}_{idx:05d}.png")
                path = os.path.join(out, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                cv2.imwrite(path, _render(rng, cls, size, sources, style))
                files[rel.replace(os.sep, "/")] = _sha256(path)
    manifest = {
        "kind": "cls",
        "classes": classes,
        "num_train_per_class": num_train,
        "num_val_per_class": num_val,
        "size": size,
        "seed": seed,
        "stream": [seed, _STREAM_KEY],
        "sha256": files,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def _image_hashes(root: str) -> Dict[str, str]:
    """SHA-256 of the decoded pixels of every image under ``root`` -> its path."""
    hashes = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(_IMAGE_EXTS):
                path = os.path.join(dirpath, name)
                img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
                if img is not None:
                    hashes[hashlib.sha256(img.tobytes()).hexdigest()] = path
    return hashes


def shared_images(cls_root: str, detection_roots: Iterable[str]) -> List[Tuple[str, str]]:
    """(cls image, detection image) pairs with identical pixels; [] when the sets are disjoint."""
    mine = _image_hashes(cls_root)
    shared = []
    for root in detection_roots:
        for h, path in _image_hashes(root).items():
            if h in mine:
                shared.append((mine[h], path))
    return shared
