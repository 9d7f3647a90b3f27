"""Does the exported file detect what the PyTorch student detects? Per-image comparison
(:func:`compare_detections`, :func:`parity_report`) and the file as a detectron2 model for AP
(:class:`ExportedDetector`)."""

from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from .inference import StudentInference
from .runtime import run_onnx, session_options
from .session import onnx_session

__all__ = ["ExportedDetector", "compare_detections", "parity_report"]


class ExportedDetector(nn.Module):
    """
    An exported student's session (:func:`onnx_session`) as a detectron2 model for evaluation:
    ``forward(batched_inputs)`` takes the test loader's dicts (``image``: (C, H, W) uint8 tensor
    already resized, optional ``height`` / ``width`` of the original image) and returns
    ``[{"instances": Instances}]`` in the original image's pixels, as ``GeneralizedRCNN`` does, so
    that ``inference_on_dataset`` (or ``DefaultTrainer.test``) measures the runtime's AP.
    """

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        from detectron2.modeling.postprocessing import detector_postprocess
        from detectron2.structures import Boxes, Instances

        outputs = []
        for inputs in batched_inputs:
            image = inputs["image"]
            boxes, scores, classes = run_onnx(self.session, image.float())
            result = Instances(tuple(image.shape[1:]))
            result.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            result.scores = torch.as_tensor(scores, dtype=torch.float32)
            result.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
            height = inputs.get("height", image.shape[1])
            width = inputs.get("width", image.shape[2])
            outputs.append({"instances": detector_postprocess(result, height, width)})
        return outputs


def compare_detections(
    reference: Sequence, other: Sequence, box_atol: float = 0.05, score_atol: float = 1e-3
) -> Dict[str, float]:
    """
    Compare two (boxes, scores, classes) results of one image. Every reference detection must
    have a counterpart of the same class with |Δbox| ≤ ``box_atol`` px on each coordinate and
    |Δscore| ≤ ``score_atol``, and the counts must agree.

    Returns:
        dict: ``count_ref``, ``count_other``, ``max_box_diff``, ``max_score_diff``, ``matched``
        (fraction of reference detections with a counterpart), ``ok`` (1.0 / 0.0).
    """
    rb, rs, rc = (np.asarray(x, dtype=np.float64) for x in reference)
    ob, os_, oc = (np.asarray(x, dtype=np.float64) for x in other)
    out = {"count_ref": float(len(rs)), "count_other": float(len(os_))}
    if len(rs) == 0 or len(os_) == 0:
        out.update(max_box_diff=0.0, max_score_diff=0.0, matched=float(len(rs) == len(os_)))
        out["ok"] = float(len(rs) == len(os_))
        return out
    box_diff = np.abs(rb[:, None, :] - ob[None, :, :]).max(axis=2)  # (R, O)
    score_diff = np.abs(rs[:, None] - os_[None, :])
    same = (rc[:, None] == oc[None, :]) & (box_diff <= box_atol) & (score_diff <= score_atol)
    matched = same.any(axis=1)
    cost = np.where(same, box_diff, np.inf).min(axis=1)
    out["matched"] = float(matched.mean())
    out["max_box_diff"] = float(cost[matched].max()) if matched.any() else float("inf")
    s_cost = np.where(same, score_diff, np.inf).min(axis=1)
    out["max_score_diff"] = float(s_cost[matched].max()) if matched.any() else float("inf")
    out["ok"] = float(matched.all() and len(rs) == len(os_))
    return out


def parity_report(
    module: StudentInference,
    images: List[torch.Tensor],
    torchscript_path: str = "",
    onnx_path: str = "",
    box_atol: float = 0.05,
    score_atol: float = 1e-3,
    runtime: str = "",
    precision: str = "",
) -> List[Dict]:
    """Run the PyTorch module and the exported files on ``images``; one comparison per file and
    image (see :func:`compare_detections`). The ONNX file runs in :func:`onnx_session` (``runtime``
    and ``precision`` as there: by default what the file records)."""
    rows = []
    ts = torch.jit.load(torchscript_path) if torchscript_path else None
    session = onnx_session(onnx_path, runtime=runtime, precision=precision) if onnx_path else None
    if session is not None:
        opts = session_options(session)
        name = opts["runtime"] + ("-bf16" if opts.get("precision") == "bf16" else "")
    for i, image in enumerate(images):
        with torch.no_grad():
            ref = [x.numpy() for x in module(image)]
            if ts is not None:
                got = [x.numpy() for x in ts(image)]
                rows.append(
                    dict(runtime="torchscript", image=i, size=list(image.shape[1:]),
                         **compare_detections(ref, got, box_atol, score_atol))
                )  # fmt: skip
        if session is not None:
            got = run_onnx(session, image)
            rows.append(
                dict(runtime=name, image=i, size=list(image.shape[1:]),
                     **compare_detections(ref, got, box_atol, score_atol))
            )  # fmt: skip
    return rows
