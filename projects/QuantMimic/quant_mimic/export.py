"""Deployment of the tiny student: BN folding, a single-image inference module with the ONNX
contract, TorchScript / ONNX export and a parity check (used by tools/export_student.py,
tools/benchmark_speed.py and tools/demo.py).

ONNX / TorchScript contract (README, "Deploy"):

* input ``image``: float32 (C, H, W), pixel values 0-255 in ``INPUT.FORMAT`` channel order, any H
  and W (dynamic); the caller resizes as ``INPUT.MIN/MAX_SIZE_TEST`` say;
* outputs ``boxes`` (N, 4) x0 y0 x1 y1 in the input's pixels, ``scores`` (N,), ``classes`` (N,)
  int64 — the whole inference: normalisation, backbone (incl. a quantized output), RPN, ROI head
  and post-processing (score threshold, NMS, ``TEST.DETECTIONS_PER_IMAGE``).
"""

import contextlib
import copy
import functools
import importlib
import importlib.util
import logging
import os
import statistics
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import GeneralizedRCNN

from .lean_postprocess import lean_postprocess
from .space_to_depth import rewrite_vgg_first_block

__all__ = [
    "fold_batchnorm",
    "StudentInference",
    "export_torchscript",
    "export_onnx",
    "onnx_session",
    "OpenVINOSession",
    "ExportedDetector",
    "bf16_supported",
    "time_ort_levels",
    "time_ort_options",
    "nchwc_thresholds",
    "tune_onnx",
    "ORT_LEVELS",
    "ONNX_RUNTIMES",
    "PRECISIONS",
    "run_onnx",
    "compare_detections",
    "parity_report",
    "median_ms",
    "host_info",
    "session_options",
    "time_openvino",
    "ISA_FLAGS",
    "ONNX_OPSET",
]

logger = logging.getLogger(__name__)

ONNX_OPSET = 17  # RoiAlign with half_pixel (aligned) needs opset >= 16


def _bn_scale_shift(norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # same fields in both kinds
    return scale, norm.bias - norm.running_mean * scale


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """
    Fold every inference-mode BatchNorm that follows a convolution inside detectron2's ``Conv2d``
    (``conv.norm``) into the convolution's weight and bias, in place: y = γ(Wx + b - μ)/σ + β
    becomes W'x + b'. Outputs are unchanged up to float rounding. Returns the number folded.
    """
    folded = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if not isinstance(module, Conv2d) or norm is None:
            continue
        if not isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            continue
        if isinstance(norm, nn.BatchNorm2d) and (norm.training or not norm.track_running_stats):
            continue
        scale, shift = _bn_scale_shift(norm)
        module.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = module.bias if module.bias is not None else torch.zeros_like(shift)
        new_bias = bias * scale + shift
        if module.bias is None:
            module.bias = nn.Parameter(new_bias)
        else:
            module.bias.copy_(new_bias)
        module.norm = None
        folded += 1
    return folded


class StudentInference(nn.Module):
    """
    The detector's whole single-image inference as ``image (C, H, W) -> boxes, scores, classes``
    (module docstring). Built from an evaluated ``GeneralizedRCNN`` (a MimicRCNN is one: its
    inference is the student's); a deep copy, in eval mode, optionally with BN folded.
    """

    def __init__(self, model: GeneralizedRCNN, fold_bn: bool = True, space_to_depth: bool = False):
        """
        Args:
            fold_bn (bool): fold BatchNorm into the convolutions (:func:`fold_batchnorm`).
            space_to_depth (bool): run a VGG's first block at half resolution, exactly
                (:mod:`quant_mimic.space_to_depth`; needs ``fold_bn``); ``self.space_to_depth``
                says whether it applied.
        """
        super().__init__()
        model = copy.deepcopy(model).eval()
        if hasattr(model, "mimic_adapters"):  # unused at inference
            del model.mimic_adapters
        self.num_folded = fold_batchnorm(model) if fold_bn else 0
        self.space_to_depth = bool(space_to_depth) and rewrite_vgg_first_block(model)
        self.model = model
        self.eval()  # exporters restore the mode they found: it must be eval

    onednn = True  # PyTorch CPU convolutions through oneDNN (mkldnn); see autotune_conv_backend

    def forward(self, image: torch.Tensor):
        with torch.backends.mkldnn.flags(enabled=self.onednn):
            instances = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes.long()

    @torch.no_grad()
    def autotune_conv_backend(self, image: torch.Tensor, runs: int = 5) -> Dict[str, float]:
        """
        Choose, by timing the backbone on ``image`` (CPU only), whether PyTorch runs the
        convolutions through oneDNN or its native kernels. oneDNN is the faster choice for wide
        layers but much slower for the 2-16-channel layers of a VGG-1-32 (per-call overhead
        dominates tiny convolutions). Like ``cudnn.benchmark``: same outputs, measured choice.

        Returns:
            dict: median backbone ms for each backend (``onednn_ms``, ``native_ms``).
        """
        if image.is_cuda:
            return {}
        x = self.model.preprocess_image([{"image": image}]).tensor
        times = {}
        for name, enabled in (("onednn_ms", True), ("native_ms", False)):
            with torch.backends.mkldnn.flags(enabled=enabled):
                times[name] = median_ms(lambda: self.model.backbone(x), runs=runs, warmup=1)
        self.onednn = times["onednn_ms"] <= times["native_ms"]
        return times


def median_ms(fn: Callable, runs: int, warmup: int, cuda: bool = False) -> float:
    """Median wall time of ``fn()`` in ms over ``runs`` calls after ``warmup`` untimed ones
    (``cuda``: synchronize around each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


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
    tmp = path + ".tmp"
    traced.save(tmp)
    os.replace(tmp, path)
    return path


def export_onnx(
    module: StudentInference, example: torch.Tensor, path: str, lean: bool = True
) -> str:
    """Export ``module`` to ONNX (TorchScript-based exporter, opset :data:`ONNX_OPSET`) with
    dynamic height and width, inputs/outputs named by the contract; check the file with onnx.

    ``lean``: trace the post-processing in its exact runtime-friendly form
    (:func:`~quant_mimic.lean_postprocess.lean_postprocess`: NMS that stops at the kept top-k,
    coordinate-major box decoding); False exports detectron2's graph as it is (for comparison)."""
    import onnx

    tmp = path + ".tmp"
    lean_context = lean_postprocess(module.model) if lean else contextlib.nullcontext()
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
    os.replace(tmp, path)
    return path


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile")


def _module_version(name: str):
    try:
        return importlib.import_module(name).__version__
    except ImportError:
        return None


def host_info() -> Dict:
    """What a benchmark ran on: CPU model, which of :data:`ISA_FLAGS` it has, whether it has
    native bfloat16 (``bf16``: avx512_bf16 or AMX), cores, torch threads and the torch /
    onnxruntime / openvino versions (a time without its host cannot be compared with anyone's)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key == "model name":
                    model = line.split(":", 1)[1].strip()
                elif key == "flags":
                    flags = set(line.split(":", 1)[1].split())
    return {
        "cpu": model,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": _module_version("onnxruntime"),
        "openvino": _module_version("openvino"),
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


ORT_LEVELS = ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
ONNX_RUNTIMES = ("onnxruntime", "openvino")  # what runs an exported file (onnx_session)
PRECISIONS = ("fp32", "bf16")  # bf16: OpenVINO only, lossy (AP cost in docs/SPEED.md)
# ONNX metadata written by tune_onnx
ORT_LEVEL_KEY = "quant_mimic.ort_graph_optimization_level"
ORT_TUNED_ON_KEY = "quant_mimic.ort_tuned_on"
NCHWC_MIN_KEY = "quant_mimic.ort_nchwc_min_channels"  # with level ORT_ENABLE_ALL; 0: ORT's choice
RUNTIME_KEY = "quant_mimic.runtime"
PRECISION_KEY = "quant_mimic.precision"


def _onnx_metadata(path: str) -> Dict[str, str]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _example_input(path: str, height: int = 576, width: int = 1024) -> np.ndarray:
    """A random image of the model's channel count (the contract's input: (C, H, W), 0-255)."""
    import onnx

    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    channels = dims[0].dim_value or 3
    return (np.random.RandomState(0).rand(channels, height, width) * 255).astype(np.float32)


def _conv_widths(model) -> Dict[str, int]:
    """Output channels of every main-graph Conv with a constant weight, by weight name."""
    inits = {t.name: t for t in model.graph.initializer}
    return {
        n.input[1]: int(inits[n.input[1]].dims[0])
        for n in model.graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits
    }


def nchwc_thresholds(path: str) -> List[int]:
    """
    The values of ``nchwc_min_channels`` worth timing for the file (:func:`time_ort_options`): each
    convolution width but the narrowest, and one more than the widest (no convolution in NCHWc).
    """
    import onnx

    widths = sorted(set(_conv_widths(onnx.load(path, load_external_data=False)).values()))
    return widths[1:] + [widths[-1] + 1] if widths else []


@functools.lru_cache(maxsize=8)
def _narrow_weights_as_inputs(path: str, mtime: float, min_channels: int) -> bytes:
    """The file's model, serialized, with the weights of convolutions narrower than
    ``min_channels`` also listed as graph inputs (:func:`_session`); cached per file version, as
    the tune builds the same session in every round."""
    import onnx

    del mtime  # part of the cache key only
    model = onnx.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    for name, width in _conv_widths(model).items():
        if width < min_channels:
            t = inits[name]
            model.graph.input.append(
                onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims))
            )
    return model.SerializeToString()


def _session(path: str, threads: int, level: str, nchwc_min_channels: int = 0, options=None):
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


def _time_round_robin(makers: Dict, x: np.ndarray, runs: int, warmup: int) -> Dict:
    """
    Lower-quartile ms of ``session.run`` on ``x`` for the session each of ``makers`` builds, timed
    in alternating rounds (per round and candidate: build the session, ``warmup`` untimed calls, up
    to three timed ones, close it), so that a slow spell of a shared host falls on every candidate
    alike; the lower quartile is what a candidate costs when no spell slows it, where a median can
    still be moved by one. One session lives at a time: an idle onnxruntime session's spinning
    threads would slow the one being timed.
    """
    feed = {"image": x}
    times = {key: [] for key in makers}
    while any(len(t) < runs for t in times.values()):
        for key, make in makers.items():
            session = make()
            for _ in range(max(warmup, 1)):
                session.run(None, feed)
            for _ in range(min(3, runs - len(times[key]))):
                start = time.perf_counter()
                session.run(None, feed)
                times[key].append(1000 * (time.perf_counter() - start))
            session = None  # its threads end before the next one is timed
    return {key: round(float(np.percentile(t, 25)), 3) for key, t in times.items()}


def time_ort_levels(
    path: str, threads: int = 0, example: np.ndarray = None, runs: int = 10, warmup: int = 2
) -> Dict[str, float]:
    """Lower-quartile ms of one inference of the ONNX file at each graph optimisation level, on
    this host (:func:`_time_round_robin`). onnxruntime's layout optimisations (ORT_ENABLE_ALL: NCHWc
    reorders) can cost more than they save on 2- to 16-channel convolutions, by CPU
    (docs/SPEED.md): the best level is measured, not set.
    """
    return time_ort_options(path, threads, example, runs, warmup, nchwc=False)[0]


def time_ort_options(
    path: str,
    threads: int = 0,
    example: np.ndarray = None,
    runs: int = 10,
    warmup: int = 2,
    nchwc: bool = True,
) -> Tuple[Dict[str, float], Dict[int, float]]:
    """
    Lower-quartile ms of one inference at each graph optimisation level and (``nchwc``) at
    ORT_ENABLE_ALL with NCHWc only for convolutions at least ``c`` channels wide
    (:func:`_session`), for each ``c`` of :func:`nchwc_thresholds`, all in one
    :func:`_time_round_robin`. On VGG-1-32, NCHWc costs more than it saves on the 2- and 4-channel
    full-resolution layers and saves on the wider ones (docs/SPEED.md): where the layout pays is
    measured, per host.

    Returns:
        (dict, dict): ms per level, ms per ``c`` (empty without ``nchwc``).
    """
    x = _example_input(path) if example is None else np.asarray(example, dtype=np.float32)
    makers = {}
    for level in ORT_LEVELS:
        makers[level] = functools.partial(_session, path, threads, level)
    for c in nchwc_thresholds(path) if nchwc else ():
        makers[c] = functools.partial(_session, path, threads, "ORT_ENABLE_ALL", c)
    timings = _time_round_robin(makers, x, runs, warmup)
    by_level = {k: v for k, v in timings.items() if isinstance(k, str)}
    return by_level, {k: v for k, v in timings.items() if not isinstance(k, str)}


def _best_ort_options(timings: Dict[str, float], nchwc_timings: Dict[int, float]):
    """(level, nchwc_min_channels, ms) of the fastest timed onnxruntime options."""
    level = min(timings, key=timings.get)
    if nchwc_timings and min(nchwc_timings.values()) < timings[level]:
        c = min(nchwc_timings, key=nchwc_timings.get)
        return "ORT_ENABLE_ALL", c, nchwc_timings[c]
    return level, 0, timings[level]


def time_openvino(
    path: str,
    threads: int = 0,
    example: np.ndarray = None,
    runs: int = 10,
    warmup: int = 2,
    precision: str = "fp32",
) -> float:
    """Lower-quartile ms of one inference of the ONNX file in :class:`OpenVINOSession`, on this
    host (timed as :func:`_time_round_robin` times onnxruntime's options, so they compare)."""
    x = _example_input(path) if example is None else np.asarray(example, dtype=np.float32)
    make = functools.partial(OpenVINOSession, path, threads, precision)
    return _time_round_robin({"openvino": make}, x, runs, warmup)["openvino"]


def tune_onnx(
    path: str,
    threads: int = 0,
    example: np.ndarray = None,
    runs: int = 10,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
) -> Dict:
    """
    Time the onnxruntime graph optimisation levels on this host and ORT_ENABLE_ALL with NCHWc only
    for convolutions at least c channels wide, side by side (:func:`time_ort_options`). Record the
    fastest in the file's metadata (``quant_mimic.ort_graph_optimization_level``,
    ``quant_mimic.ort_nchwc_min_channels``; the host and timings in ``quant_mimic.ort_tuned_on``),
    so that :func:`onnx_session` applies it on a plain load. Also records the runtime a plain load
    uses (``quant_mimic.runtime``) and its precision (``quant_mimic.precision``):

    * ``runtime="onnxruntime"`` (default), "openvino", or "auto": OpenVINO is timed too
      (:func:`time_openvino` at ``precision``) and the faster of the two is recorded;
    * ``precision="bf16"`` (OpenVINO only, lossy; the caller's choice, never made by timing).

    Returns:
        dict: ``level`` and ``nchwc_min_channels`` (0: onnxruntime's own choice), ``timings_ms``
        (per onnxruntime level), ``nchwc_timings_ms`` (per c), ``runtime``, ``precision``,
        ``openvino_ms`` (None when not timed), ``host``.
    """
    import json

    import onnx

    if runtime not in ONNX_RUNTIMES + ("auto",):
        raise ValueError(f"Unknown runtime {runtime!r}; use one of {ONNX_RUNTIMES + ('auto',)}")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision == "bf16" and runtime == "onnxruntime":
        raise ValueError("precision 'bf16' runs in OpenVINO: use runtime 'openvino' or 'auto'")
    timings, nchwc_timings = time_ort_options(path, threads, example, runs)
    level, nchwc_min, best_ms = _best_ort_options(timings, nchwc_timings)
    openvino_ms = None
    if runtime != "onnxruntime":
        openvino_ms = time_openvino(path, threads, example, runs, precision=precision)
    if runtime == "auto":
        runtime = "openvino" if openvino_ms < best_ms else "onnxruntime"
    if runtime == "onnxruntime":
        precision = "fp32"
    host = host_info()
    tuned_on = {k: host[k] for k in ("cpu", "isa", "bf16", "onnxruntime", "openvino")}
    tuned_on.update(
        threads=threads,
        timings_ms=timings,
        nchwc_timings_ms=nchwc_timings,
        openvino_ms=openvino_ms,
    )
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    props.update(
        {
            ORT_LEVEL_KEY: level,
            NCHWC_MIN_KEY: str(nchwc_min),
            ORT_TUNED_ON_KEY: json.dumps(tuned_on),
            RUNTIME_KEY: runtime,
            PRECISION_KEY: precision,
        }
    )
    onnx.helper.set_model_props(model, props)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return {
        "level": level,
        "nchwc_min_channels": nchwc_min,
        "timings_ms": timings,
        "nchwc_timings_ms": nchwc_timings,
        "runtime": runtime,
        "precision": precision,
        "openvino_ms": openvino_ms,
        "host": tuned_on,
    }


def onnx_session(path: str, threads: int = 0, level: str = "", runtime: str = "", precision=""):
    """
    A CPU session of an exported student with the options its file records (:func:`tune_onnx`;
    ``tools/export_student.py`` tunes at export), ``threads`` intra-op threads (0 = the runtime's
    default). Every session answers ``run(None, {"image": x}) -> [boxes, scores, classes]``.

    Args:
        level: onnxruntime graph optimisation level, one of :data:`ORT_LEVELS` or "auto" (timed
            now on this host, with the NCHWc widths of :func:`time_ort_options`; implies
            onnxruntime); default: the recorded one with its ``nchwc_min_channels``, else
            ORT_ENABLE_ALL. An explicit level runs as onnxruntime sets it.
        runtime: "onnxruntime" or "openvino" (:class:`OpenVINOSession`); default: the recorded
            one, else onnxruntime. A recorded OpenVINO choice falls back to onnxruntime, with a
            warning, where openvino is not installed.
        precision: "fp32" or "bf16" (implies OpenVINO); default: the recorded one, else fp32. A
            recorded bf16 falls back to fp32, with a warning, on a CPU without bf16.
    """
    meta = _onnx_metadata(path)
    if precision == "bf16" and not runtime:
        runtime = "openvino"
    if level and not runtime:
        runtime = "onnxruntime"  # a graph optimisation level is an onnxruntime option
    explicit_runtime, explicit_precision = bool(runtime), bool(precision)
    runtime = runtime or meta.get(RUNTIME_KEY, "onnxruntime")
    precision = precision or meta.get(PRECISION_KEY, "fp32")
    if runtime not in ONNX_RUNTIMES:
        raise ValueError(f"Unknown runtime {runtime!r}; use one of {ONNX_RUNTIMES}")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {PRECISIONS}")
    if (
        runtime == "openvino"
        and not explicit_runtime
        and importlib.util.find_spec("openvino") is None
    ):
        logger.warning(f"{path} records OpenVINO, which is not installed: using onnxruntime")
        runtime, precision = "onnxruntime", "fp32"
    if runtime == "openvino":
        if precision == "bf16" and not explicit_precision and not bf16_supported():
            logger.warning(f"{path} records bf16 but this CPU has no bf16: running fp32")
            precision = "fp32"
        return OpenVINOSession(path, threads, precision)
    if precision == "bf16":
        raise ValueError("precision 'bf16' runs in OpenVINO: use runtime 'openvino'")
    nchwc_min = 0
    if level == "auto":
        level, nchwc_min, _ = _best_ort_options(*time_ort_options(path, threads))
    if not level:
        level = meta.get(ORT_LEVEL_KEY, "ORT_ENABLE_ALL")
        nchwc_min = int(meta.get(NCHWC_MIN_KEY, "0") or 0)
    if level not in ORT_LEVELS:
        raise ValueError(
            f"Unknown onnxruntime graph optimisation level {level!r}; use {ORT_LEVELS}"
        )
    return _session(path, threads, level, nchwc_min)


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


def run_onnx(session, image: torch.Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes, scores, classes of one (C, H, W) image from a session of :func:`onnx_session`
    (onnxruntime or :class:`OpenVINOSession`)."""
    boxes, scores, classes = session.run(None, {"image": image.numpy().astype(np.float32)})
    return boxes, scores, classes


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
