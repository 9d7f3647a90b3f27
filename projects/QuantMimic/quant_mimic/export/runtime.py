"""Running an exported student: onnxruntime sessions (with NCHWc only for the convolutions wide
enough to gain from it) and OpenVINO sessions behind onnxruntime's interface, and the options a
file records for them (written by :mod:`quant_mimic.export.tuning`)."""

import functools
import os
from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..timing import host_info

__all__ = [
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
]

ORT_LEVELS = ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
ONNX_RUNTIMES = ("onnxruntime", "openvino")  # what runs an exported file (onnx_session)
PRECISIONS = ("fp32", "bf16")  # bf16: OpenVINO only, lossy (AP cost in docs/SPEED.md)
# ONNX metadata written by tune_onnx
ORT_LEVEL_KEY = "quant_mimic.ort_graph_optimization_level"
ORT_TUNED_ON_KEY = "quant_mimic.ort_tuned_on"
NCHWC_MIN_KEY = "quant_mimic.ort_nchwc_min_channels"  # with level ORT_ENABLE_ALL; 0: ORT's choice
RUNTIME_KEY = "quant_mimic.runtime"
PRECISION_KEY = "quant_mimic.precision"


def onnx_metadata(path: str) -> Dict[str, str]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def conv_widths(model) -> Dict[str, int]:
    """Output channels of every main-graph Conv with a constant weight, by weight name."""
    inits = {t.name: t for t in model.graph.initializer}
    return {
        n.input[1]: int(inits[n.input[1]].dims[0])
        for n in model.graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits
    }


@functools.lru_cache(maxsize=8)
def _narrow_weights_as_inputs(path: str, mtime: float, min_channels: int) -> bytes:
    """The file's model, serialized, with the weights of convolutions narrower than
    ``min_channels`` also listed as graph inputs (:func:`ort_session`); cached per file version, as
    the tune builds the same session in every round."""
    import onnx

    del mtime  # part of the cache key only
    model = onnx.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    for name, width in conv_widths(model).items():
        if width < min_channels:
            t = inits[name]
            model.graph.input.append(
                onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims))
            )
    return model.SerializeToString()


def ort_session(path: str, threads: int, level: str, nchwc_min_channels: int = 0, options=None):
    """
    An onnxruntime CPU session at ``level``. With ORT_ENABLE_ALL and ``nchwc_min_channels`` > 0,
    only convolutions with at least that many output channels go to the NCHWc layout:
    onnxruntime's NCHWc transformer converts a convolution only if its weight is a constant, so
    the narrower ones' weights are listed as (overridable) graph inputs of the in-memory model.
    The file is not changed; the session's only input is still ``image``. ``options``: an
    ``ort.SessionOptions`` to start from (e.g. with profiling on).
    """
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    source = path
    nchwc_min_channels = int(nchwc_min_channels) if level == "ORT_ENABLE_ALL" else 0
    if nchwc_min_channels > 0:
        options.log_severity_level = 3  # it warns that those weights are not constants: the point
        source = _narrow_weights_as_inputs(path, os.path.getmtime(path), nchwc_min_channels)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    session.quant_mimic_nchwc_min_channels = nchwc_min_channels  # for session_options
    return session


@functools.lru_cache(maxsize=None)
def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin runs bfloat16 natively here (avx512_bf16 or AMX); asked once
    per process."""
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOSession:
    """
    OpenVINO CPU inference of an exported student (the same ONNX file, no conversion step) behind
    onnxruntime's interface: ``run(None, {"image": x})`` returns ``[boxes, scores, classes]``, so
    :func:`run_onnx`, :func:`parity_report` and :class:`ExportedDetector` take either session.

    The file's height and width are dynamic; the model is compiled for each input shape it meets
    (kept for the last ``max_shapes`` shapes): the CPU plugin's kernels for a static shape are
    faster than its dynamic-shape path (docs/SPEED.md). A shape's first call pays the compile.

    ``precision``: "fp32" is exact (the same parity with PyTorch as onnxruntime); "bf16" runs
    convolutions and matrix products in bfloat16 on CPUs with native support (avx512_bf16 or AMX;
    :func:`bf16_supported`) and is lossy: its detection and AP cost are measured by
    ``tools/eval_exported.py`` (docs/SPEED.md).
    """

    def __init__(self, path: str, threads: int = 0, precision: str = "fp32", max_shapes: int = 4):
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}; use one of {PRECISIONS}")
        if precision == "bf16" and not bf16_supported():
            raise RuntimeError(
                f"precision 'bf16' needs a CPU with avx512_bf16 or AMX; this one "
                f"({host_info()['cpu']}) has neither: use 'fp32'"
            )
        self._core = ov.Core()
        self._model = self._core.read_model(path)
        self._input = self._model.inputs[0].get_any_name()
        self._outputs = [o.get_any_name() for o in self._model.outputs]
        self._config = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self.path, self.threads, self.precision = path, int(threads), precision
        self.max_shapes = int(max_shapes)
        self._requests: "OrderedDict[tuple, object]" = OrderedDict()

    def _request(self, shape: tuple):
        request = self._requests.pop(shape, None)
        if request is None:
            model = self._model.clone()
            model.reshape({self._input: list(shape)})
            request = self._core.compile_model(model, "CPU", self._config).create_infer_request()
            while len(self._requests) >= self.max_shapes:
                self._requests.popitem(last=False)
        self._requests[shape] = request  # most recently used last
        return request

    def run(self, output_names, input_feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """``output_names`` (None: all, in the file's order) of one inference of ``input_feed``."""
        x = np.ascontiguousarray(input_feed[self._input], dtype=np.float32)
        result = self._request(tuple(x.shape)).infer({self._input: x})  # outputs are copies
        values = dict(zip(self._outputs, result.to_tuple()))  # the file's output order
        return [values[name] for name in (output_names or self._outputs)]

    def options(self) -> Dict:
        import openvino as ov

        return {
            "runtime": "openvino",
            "openvino": ov.__version__,
            "precision": self.precision,
            "inference_precision_hint": self._config["INFERENCE_PRECISION_HINT"],
            "threads": self.threads,
            "performance_hint": self._config["PERFORMANCE_HINT"],
            "static_shapes": True,
        }


def session_options(session) -> Dict:
    """The options a session of :func:`onnx_session` runs with: for onnxruntime the graph
    optimisation level and threads, for :class:`OpenVINOSession` its :meth:`~OpenVINOSession.
    options` (precision, threads, static shapes)."""
    if isinstance(session, OpenVINOSession):
        return session.options()
    o = session.get_session_options()
    return {
        "runtime": "onnxruntime",
        "graph_optimization_level": str(o.graph_optimization_level).split(".")[-1],
        "nchwc_min_channels": getattr(session, "quant_mimic_nchwc_min_channels", 0),
        "intra_op_num_threads": o.intra_op_num_threads,
        "inter_op_num_threads": o.inter_op_num_threads,
        "execution_mode": str(o.execution_mode).split(".")[-1],
    }


def run_onnx(session, image: torch.Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes, scores, classes of one (C, H, W) image from a session of :func:`onnx_session`
    (onnxruntime or :class:`OpenVINOSession`)."""
    boxes, scores, classes = session.run(None, {"image": image.numpy().astype(np.float32)})
    return boxes, scores, classes
