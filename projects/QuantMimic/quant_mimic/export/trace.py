"""Tracing the student's inference module into a deployable file: TorchScript and ONNX, written
atomically."""

import contextlib

import torch

from detectron2.export.torchscript_patch import patch_builtin_len

from ..fileio import atomic_output
from .inference import StudentInference
from .lean_postprocess import lean_postprocess

__all__ = ["ONNX_OPSET", "export_torchscript", "export_onnx"]

ONNX_OPSET = 17  # RoiAlign with half_pixel (aligned) needs opset >= 16


def _traceable_len():
    """detectron2's patch making ``len()`` of per-image RoI counts (e.g. the ``split`` of box
    predictions per image) a traced value instead of a constant baked into the graph."""
    return patch_builtin_len()


def export_torchscript(module: StudentInference, example: torch.Tensor, path: str) -> str:
    """Trace ``module`` on ``example`` (shapes stay dynamic: detectron2's code is trace-aware),
    freeze it and save it to ``path`` atomically."""
    with torch.no_grad(), _traceable_len():
        traced = torch.jit.trace(module, (example,), check_trace=False)
    traced = torch.jit.freeze(traced.eval())
    with atomic_output(path) as tmp:
        traced.save(tmp)
    return path


def export_onnx(
    module: StudentInference, example: torch.Tensor, path: str, lean: bool = True
) -> str:
    """Export ``module`` to ONNX (TorchScript-based exporter, opset :data:`ONNX_OPSET`) with
    dynamic height and width, inputs/outputs named by the contract; check the file with onnx.

    ``lean``: trace the post-processing in its exact runtime-friendly form
    (:func:`~quant_mimic.export.lean_postprocess.lean_postprocess`: NMS that stops at the kept
    top-k, coordinate-major box decoding); False exports detectron2's graph as it is (for
    comparison)."""
    import onnx

    lean_context = lean_postprocess(module.model) if lean else contextlib.nullcontext()
    with atomic_output(path) as tmp:
        with torch.no_grad(), _traceable_len(), lean_context:
            torch.onnx.export(
                module,
                (example,),
                tmp,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["boxes", "scores", "classes"],
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    "boxes": {0: "detections"},
                    "scores": {0: "detections"},
                    "classes": {0: "detections"},
                },
            )
        onnx.checker.check_model(onnx.load(tmp))
    return path
