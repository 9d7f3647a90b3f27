"""The visual world the synthetic sets are drawn from (scikit-image photographs and textures, LFW
crops, Hershey glyphs): the pieces shared by the detection sets (:mod:`.synthetic`) and the
classification set (:mod:`.synthetic_cls`)."""

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

__all__ = ["FaceStyle"]

_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
)


def _skimage():
    import skimage.data

    return skimage.data


def _background(rng, texture: np.ndarray, h: int, w: int) -> np.ndarray:
    th, tw = texture.shape[:2]
    scale = rng.uniform(max(h / th, w / tw), max(h / th, w / tw) * 2.5)
    tex = cv2.resize(
        texture, (int(tw * scale) + 1, int(th * scale) + 1), interpolation=cv2.INTER_LINEAR
    )
    y, x = rng.randint(0, tex.shape[0] - h + 1), rng.randint(0, tex.shape[1] - w + 1)
    bg = tex[y : y + h, x : x + w].astype(np.float32)
    return np.clip((bg - bg.mean()) * rng.uniform(0.4, 1.0) + rng.uniform(70, 170), 0, 255)


@dataclass(frozen=True)
class FaceStyle:
    """
    Every number of the synthetic faces benchmark (``generate_faces``), named. Sizes are face sides
    in pixels; "contrast" multiplies a crop's zero-mean intensities (×255); blur is Gaussian with
    σ = factor·side + BLUR_SIGMA_OFFSET.
    """

    face_count: Tuple[int, int] = (1, 7)  # faces per image, randint(lo, hi)
    no_face_prob: float = 0.05  # images without any face
    face_side: Tuple[float, float] = (6.0, 120.0)  # log-uniform; the top capped at 0.75·height
    max_side_frac: float = 0.75
    invalid_below: int = 8  # faces under this side are WIDER's "invalid" rows
    blur_probs: Tuple[float, float, float] = (0.45, 0.3, 0.25)  # none / normal / heavy (WIDER)
    # σ factor for normal / heavy blur. Heavy blur was 0.2·side until the collapse calibration:
    # that erased every face into a flat square, indistinguishable from a low-contrast distractor,
    # i.e. label noise (see README, Evidence).
    blur_sigma: Tuple[float, float] = (0.03, 0.08)
    blur_sigma_offset: float = 0.4
    contrast: Tuple[float, float] = (0.25, 1.1)
    low_contrast_below: float = 0.5  # the "illumination" flag of the WIDER row
    brightness: Tuple[float, float] = (80.0, 180.0)  # mean grey level of a pasted crop
    distractor_count: Tuple[int, int] = (2, 9)  # non-face crops per image, randint(lo, hi)
    distractor_side: Tuple[float, float] = (6.0, 60.0)  # log-uniform
    noise_std: Tuple[float, float] = (2.0, 10.0)  # sensor noise σ, uniform per image
    jpeg_quality: int = 95


def _glyph(rng, cls: int, target: int):
    """Render digit ``cls``; return its uint8 mask cropped to the ink, longest side ~target."""
    font = _FONTS[rng.randint(len(_FONTS))]
    thickness = int(rng.randint(2, 5))
    canvas = np.zeros((120, 120), np.uint8)
    cv2.putText(canvas, str(cls), (20, 100), font, 3.0, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas > 40)
    mask = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = target / max(mask.shape)
    mask = cv2.resize(
        mask, (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    )
    return mask
