"""One call from an exported file to a session that runs it as recorded:
:func:`onnx_session`."""

import importlib.util
import logging

from .runtime import (
    NCHWC_MIN_KEY,
    ONNX_RUNTIMES,
    ORT_LEVEL_KEY,
    ORT_LEVELS,
    PRECISION_KEY,
    PRECISIONS,
    RUNTIME_KEY,
    OpenVINOSession,
    bf16_supported,
    onnx_metadata,
    ort_session,
)
from .tuning import best_ort_options, time_ort_options

__all__ = ["onnx_session"]

logger = logging.getLogger(__name__)


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
    meta = onnx_metadata(path)
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
        level, nchwc_min, _ = best_ort_options(*time_ort_options(path, threads))
    if not level:
        level = meta.get(ORT_LEVEL_KEY, "ORT_ENABLE_ALL")
        nchwc_min = int(meta.get(NCHWC_MIN_KEY, "0") or 0)
    if level not in ORT_LEVELS:
        raise ValueError(
            f"Unknown onnxruntime graph optimisation level {level!r}; use {ORT_LEVELS}"
        )
    return ort_session(path, threads, level, nchwc_min)
