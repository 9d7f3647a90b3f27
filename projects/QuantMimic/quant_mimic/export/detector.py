"""From an image to named boxes in one call, with only the exported file (its contract,
:mod:`quant_mimic.export.contract`):

    from quant_mimic.export import Detector
    import cv2
    detections = Detector("student.onnx", threads=2)(cv2.imread("street.jpg"))
    for box, score, name in zip(detections.boxes, detections.scores, detections.class_names):
        print(name, round(float(score), 2), box)  # x0 y0 x1 y1 in the image's own pixels

The input is what OpenCV reads (HWC uint8 BGR), as detectron2's ``DefaultPredictor`` takes; the
detector converts it to the file's channel order (grey for an "L" student), resizes it by the
file's test-time rule, runs the file, and maps the boxes back to the image's pixels exactly as
detectron2's ``detector_postprocess`` does (scaled, clipped, empty boxes dropped). The same boxes as
``DefaultPredictor`` over the PyTorch student (tests/test_detector.py).
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from .contract import read_contract

__all__ = ["Detections", "Detector"]

logger = logging.getLogger(__name__)


@dataclass
class Detections:
    """The detections of one image: ``boxes`` (N, 4) float32 x0 y0 x1 y1 in the image's pixels,
    ``scores`` (N,) float32, ``class_ids`` (N,) int64, ``class_names`` (N names), ``image_size``
    (height, width)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: List[str]
    image_size: tuple

    def __len__(self) -> int:
        return len(self.scores)

    def to_dicts(self) -> List[Dict]:
        """One dict per detection: ``box`` [x0, y0, x1, y1], ``score``, ``class_id``, ``class``."""
        return [
            {"box": [float(v) for v in b], "score": float(s), "class_id": int(c), "class": n}
            for b, s, c, n in zip(self.boxes, self.scores, self.class_ids, self.class_names)
        ]


def _grey(bgr: np.ndarray) -> np.ndarray:
    """(H, W, 1) grey of a BGR image, as detectron2's ``read_image(format="L")`` computes it
    (PIL's ITU-R 601-2 luma on the RGB image)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).convert("L"))[
        ..., None
    ]


class Detector:
    """
    An exported student as a callable: ``Detector(path, threads)(image_bgr_uint8) ->``
    :class:`Detections` (module docstring).

    Args:
        path (str): the ONNX file (with its contract).
        threads (int): intra-op threads (0: the runtime's default).
        score_threshold (float): keep detections scoring at least this (default: the file's
            ``score_threshold``; a lower value cannot bring back what the graph dropped).
        session: a session to use instead of :func:`~quant_mimic.export.onnx_session` (tests).
    """

    def __init__(
        self, path: str, threads: int = 0, score_threshold: Optional[float] = None, session=None
    ):
        from detectron2.data import transforms as T

        self.path = path
        self.contract = read_contract(path)
        inp, resize = self.contract["input"], self.contract["resize"]
        self.format, self.channels = inp["format"], int(inp["channels"])
        self.class_names = list(self.contract["classes"])
        self.score_threshold = (
            float(self.contract["score_threshold"]) if score_threshold is None else score_threshold
        )
        size = int(resize["min_size"])
        self.resize = T.ResizeShortestEdge([size, size], int(resize["max_size"])) if size else None
        if session is None and path.endswith(".xml"):  # an int8 IR: OpenVINO runs it in int8
            from .runtime import OpenVINOSession

            session = OpenVINOSession(path, threads, "fp32")
        if session is None:
            from .session import onnx_session

            session = onnx_session(path, threads)
        self.session = session
        self._warned = set()

    def _once(self, key: str, message: str) -> None:
        if key not in self._warned:
            logger.warning(message)
            self._warned.add(key)

    def _to_input_format(self, image: np.ndarray) -> np.ndarray:
        """HWC in the file's channel order from an OpenCV image (BGR, or grey H×W / H×W×1)."""
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"expected an H×W×3 BGR (or grey) image, got shape {image.shape}")
        if image.shape[2] == 4:
            image = image[:, :, :3]  # BGRA as OpenCV reads a PNG with alpha: alpha dropped
        if image.shape[2] == 1:
            if self.format != "L":
                self._once("grey", f"{self.path}: a grey image given to a {self.format} student: "
                           "its channel repeated 3 times")  # fmt: skip
                return np.repeat(image, 3, axis=2)
            return image
        if self.format == "L":
            self._once("colour", f"{self.path}: a colour image given to a grey student: "
                       "converted to grey as read_image(format='L') does")  # fmt: skip
            return _grey(image)
        return image[:, :, ::-1] if self.format == "RGB" else image

    def __call__(self, image: np.ndarray) -> Detections:
        """:class:`Detections` of one image (HWC uint8 BGR as OpenCV reads it)."""
        image = np.asarray(image)
        if image.size == 0 or min(image.shape[:2]) == 0:
            raise ValueError(f"empty image: size {tuple(image.shape)}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image (as cv2.imread gives), got {image.dtype}")
        original = self._to_input_format(image)
        height, width = original.shape[:2]
        resized = (
            original
            if self.resize is None
            else self.resize.get_transform(original).apply_image(original)
        )
        if resized.ndim == 2:
            resized = resized[..., None]
        x = np.ascontiguousarray(resized.transpose(2, 0, 1)).astype(np.float32)
        boxes, scores, classes = self.session.run(None, {"image": x})
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        # detectron2's detector_postprocess: scale to the original size, clip, drop empty boxes
        sx, sy = width / resized.shape[1], height / resized.shape[0]
        boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keep &= scores >= self.score_threshold
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        names = [self.class_names[c] for c in classes]
        return Detections(boxes, scores, classes, names, (height, width))
