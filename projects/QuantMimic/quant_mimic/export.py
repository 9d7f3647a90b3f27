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

import copy
import logging
import os
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import GeneralizedRCNN

from .space_to_depth import rewrite_vgg_first_block

__all__ = [
    "fold_batchnorm",
    "StudentInference",
    "export_torchscript",
    "export_onnx",
    "onnx_session",
    "time_ort_levels",
    "tune_onnx",
    "ORT_LEVELS",
    "run_onnx",
    "compare_detections",
    "parity_report",
    "median_ms",
    "host_info",
    "session_options",
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


def export_onnx(module: StudentInference, example: torch.Tensor, path: str) -> str:
    """Export ``module`` to ONNX (TorchScript-based exporter, opset :data:`ONNX_OPSET`) with
    dynamic height and width, inputs/outputs named by the contract; check the file with onnx."""
    import onnx

    tmp = path + ".tmp"
    with torch.no_grad(), _traceable_len():
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


def host_info() -> Dict:
    """What a benchmark ran on: CPU model, which of avx2 / avx512f / avx512_vnni / amx_tile it has,
    cores, torch threads and the torch / onnxruntime versions (a time without its host cannot be
    compared with anyone's)."""
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
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "cpu": model,
        "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
    }


def session_options(session) -> Dict:
    """The options an onnxruntime session runs with (graph optimisation level, threads)."""
    o = session.get_session_options()
    return {
        "graph_optimization_level": str(o.graph_optimization_level).split(".")[-1],
        "intra_op_num_threads": o.intra_op_num_threads,
        "inter_op_num_threads": o.inter_op_num_threads,
        "execution_mode": str(o.execution_mode).split(".")[-1],
    }


ORT_LEVELS = ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
ORT_LEVEL_KEY = "quant_mimic.ort_graph_optimization_level"  # ONNX metadata written by tune_onnx
ORT_TUNED_ON_KEY = "quant_mimic.ort_tuned_on"


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


def _session(path: str, threads: int, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def time_ort_levels(
    path: str, threads: int = 0, example: np.ndarray = None, runs: int = 10, warmup: int = 2
) -> Dict[str, float]:
    """Median ms of one inference of the ONNX file at each graph optimisation level, on this host.
    onnxruntime's layout optimisations (ORT_ENABLE_ALL: NCHWc reorders) can cost more than they save
    on 2- to 16-channel convolutions, by CPU (docs/SPEED.md): the best level is measured, not set.
    """
    x = _example_input(path) if example is None else np.asarray(example, dtype=np.float32)
    out = {}
    for level in ORT_LEVELS:
        session = _session(path, threads, level)
        out[level] = round(median_ms(lambda: session.run(None, {"image": x}), runs, warmup), 3)
    return out


def tune_onnx(path: str, threads: int = 0, example: np.ndarray = None, runs: int = 10) -> Dict:
    """
    Time the graph optimisation levels on this host (:func:`time_ort_levels`) and record the
    fastest in the file's metadata (``quant_mimic.ort_graph_optimization_level``, with the host and
    timings in ``quant_mimic.ort_tuned_on``), so that :func:`onnx_session` applies it on a plain
    load.

    Returns:
        dict: ``level``, ``timings_ms`` (per level), ``host``.
    """
    import json

    import onnx

    timings = time_ort_levels(path, threads, example, runs)
    level = min(timings, key=timings.get)
    host = host_info()
    tuned_on = {"cpu": host["cpu"], "isa": host["isa"], "onnxruntime": host["onnxruntime"]}
    tuned_on.update(threads=threads, timings_ms=timings)
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({ORT_LEVEL_KEY: level, ORT_TUNED_ON_KEY: json.dumps(tuned_on)})
    onnx.helper.set_model_props(model, props)
    tmp = path + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return {"level": level, "timings_ms": timings, "host": tuned_on}


def onnx_session(path: str, threads: int = 0, level: str = ""):
    """
    An onnxruntime CPU session of an exported student (``threads`` intra-op threads; 0 =
    onnxruntime's default) with its graph optimisation level: ``level`` if given (one of
    :data:`ORT_LEVELS`, or "auto": timed now on this host), else the one :func:`tune_onnx` recorded
    in the file (``tools/export_student.py`` does at export), else ORT_ENABLE_ALL.
    """
    if level == "auto":
        timings = time_ort_levels(path, threads)
        level = min(timings, key=timings.get)
    if not level:
        level = _onnx_metadata(path).get(ORT_LEVEL_KEY, "ORT_ENABLE_ALL")
    if level not in ORT_LEVELS:
        raise ValueError(
            f"Unknown onnxruntime graph optimisation level {level!r}; use {ORT_LEVELS}"
        )
    return _session(path, threads, level)


def run_onnx(session, image: torch.Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes, scores, classes of one (C, H, W) image from an onnxruntime session."""
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
) -> List[Dict]:
    """Run the PyTorch module and the exported files on ``images``; one comparison per file and
    image (see :func:`compare_detections`)."""
    rows = []
    ts = torch.jit.load(torchscript_path) if torchscript_path else None
    session = onnx_session(onnx_path) if onnx_path else None
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
                dict(runtime="onnxruntime", image=i, size=list(image.shape[1:]),
                     **compare_detections(ref, got, box_atol, score_atol))
            )  # fmt: skip
    return rows
