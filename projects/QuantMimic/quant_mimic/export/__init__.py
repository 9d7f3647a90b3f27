"""Deployment of the tiny student (paper Table 1): from a trained detector to a file that runs fast
on a CPU, with the same detections.

One file per concern, in the order a student goes through them:

* :mod:`.inference`: BN folding and the single-image inference module (:class:`StudentInference`);
  :mod:`.space_to_depth` rewrites a VGG's first block, exactly;
* :mod:`.trace`: TorchScript and ONNX files (:func:`export_onnx`), with the exact runtime-friendly
  post-processing of :mod:`.lean_postprocess`;
* :mod:`.runtime`: onnxruntime and OpenVINO sessions; :mod:`.tuning`: the fastest options on this
  host, timed and recorded in the file; :mod:`.session`: :func:`onnx_session` opens a file as it
  records;
* :mod:`.parity`: the exported file against PyTorch, per image and as a detectron2 model for AP;
* :mod:`.student_file`: all of it for a trained run (:func:`export_student`), the file's contract
  recorded in it (:mod:`.contract`);
* :mod:`.operating_point`: a deployment threshold, the user's or chosen on the val set;
* :mod:`.detector`: the file as a detector, image in, named boxes out (:class:`Detector`).

ONNX / TorchScript contract (docs/SPEED.md; an ONNX file records it in its metadata,
:mod:`.contract`):

* input ``image``: float32 (C, H, W), pixel values 0-255 in ``INPUT.FORMAT`` channel order, any H
  and W (dynamic); the caller resizes as ``INPUT.MIN/MAX_SIZE_TEST`` say;
* outputs ``boxes`` (N, 4) x0 y0 x1 y1 in the input's pixels, ``scores`` (N,), ``classes`` (N,)
  int64 — the whole inference: normalisation, backbone (incl. a quantized output), RPN, ROI head
  and post-processing (score threshold, NMS, ``TEST.DETECTIONS_PER_IMAGE``).
"""

from .contract import CONTRACT_KEY, build_contract, class_names, read_contract, write_contract
from .detector import Detections, Detector
from .inference import StudentInference, fold_batchnorm
from .lean_postprocess import CoordinateMajorBox2BoxTransform, batched_nms_topk, lean_postprocess
from .operating_point import at_threshold, choose_threshold, operating_point, val_curve
from .parity import ExportedDetector, compare_detections, parity_report
from .runtime import (
    ONNX_RUNTIMES,
    ORT_LEVELS,
    PRECISIONS,
    OpenVINOSession,
    bf16_supported,
    conv_widths,
    onnx_metadata,
    ort_session,
    run_onnx,
    session_options,
)
from .session import onnx_session
from .space_to_depth import rewrite_vgg_first_block
from .student_file import example_images, export_student, val_images
from .trace import ONNX_OPSET, export_onnx, export_torchscript
from .tuning import (
    best_ort_options,
    nchwc_thresholds,
    time_openvino,
    time_ort_levels,
    time_ort_options,
    tune_onnx,
)

__all__ = [
    "fold_batchnorm",
    "StudentInference",
    "rewrite_vgg_first_block",
    "lean_postprocess",
    "batched_nms_topk",
    "CoordinateMajorBox2BoxTransform",
    "ONNX_OPSET",
    "export_torchscript",
    "export_onnx",
    "ORT_LEVELS",
    "ONNX_RUNTIMES",
    "PRECISIONS",
    "onnx_metadata",
    "conv_widths",
    "ort_session",
    "bf16_supported",
    "OpenVINOSession",
    "session_options",
    "run_onnx",
    "onnx_session",
    "nchwc_thresholds",
    "time_ort_levels",
    "time_ort_options",
    "best_ort_options",
    "time_openvino",
    "tune_onnx",
    "ExportedDetector",
    "compare_detections",
    "parity_report",
    "example_images",
    "val_images",
    "export_student",
    "CONTRACT_KEY",
    "build_contract",
    "write_contract",
    "class_names",
    "read_contract",
    "Detector",
    "Detections",
    "operating_point",
    "val_curve",
    "choose_threshold",
    "at_threshold",
]
