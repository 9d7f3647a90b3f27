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

# The public API: every concern's names (each module's __all__), one flat namespace.
from . import contract as _contract
from . import detector as _detector
from . import inference as _inference
from . import lean_postprocess as _lean_postprocess
from . import operating_point as _operating_point
from . import parity as _parity
from . import runtime as _runtime
from . import session as _session
from . import space_to_depth as _space_to_depth
from . import student_file as _student_file
from . import trace as _trace
from . import tuning as _tuning
from .contract import *  # noqa: F401,F403
from .detector import *  # noqa: F401,F403
from .inference import *  # noqa: F401,F403
from .lean_postprocess import *  # noqa: F401,F403
from .operating_point import *  # noqa: F401,F403
from .parity import *  # noqa: F401,F403
from .runtime import *  # noqa: F401,F403
from .session import *  # noqa: F401,F403
from .space_to_depth import *  # noqa: F401,F403
from .student_file import *  # noqa: F401,F403
from .trace import *  # noqa: F401,F403
from .tuning import *  # noqa: F401,F403

_MODULES = (
    _contract,
    _detector,
    _inference,
    _lean_postprocess,
    _operating_point,
    _parity,
    _runtime,
    _session,
    _space_to_depth,
    _student_file,
    _trace,
    _tuning,
)  # noqa: E501
__all__ = [name for module in _MODULES for name in module.__all__]
