"""Choosing how an exported student runs on this host, by timing: onnxruntime's graph
optimisation levels, the NCHWc widths, OpenVINO; the fastest is recorded in the file's metadata
(:func:`tune_onnx`), which :func:`~quant_mimic.export.session.onnx_session` applies."""

import functools
import json
import time
from typing import Dict, List, Tuple

import numpy as np

from ..fileio import atomic_output
from ..timing import host_info
from .runtime import (
    NCHWC_MIN_KEY,
    ONNX_RUNTIMES,
    ORT_LEVEL_KEY,
    ORT_LEVELS,
    ORT_TUNED_ON_KEY,
    PRECISION_KEY,
    PRECISIONS,
    RUNTIME_KEY,
    OpenVINOSession,
    conv_widths,
    ort_session,
)

__all__ = [
    "nchwc_thresholds",
    "time_ort_levels",
    "time_ort_options",
    "best_ort_options",
    "time_openvino",
    "tune_onnx",
]


def _example_input(path: str, height: int = 576, width: int = 1024) -> np.ndarray:
    """A random image of the model's channel count (the contract's input: (C, H, W), 0-255)."""
    import onnx

    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    channels = dims[0].dim_value or 3
    return (np.random.RandomState(0).rand(channels, height, width) * 255).astype(np.float32)


def nchwc_thresholds(path: str) -> List[int]:
    """
    The values of ``nchwc_min_channels`` worth timing for the file (:func:`time_ort_options`): each
    convolution width but the narrowest, and one more than the widest (no convolution in NCHWc).
    """
    import onnx

    widths = sorted(set(conv_widths(onnx.load(path, load_external_data=False)).values()))
    return widths[1:] + [widths[-1] + 1] if widths else []


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
    (:func:`ort_session`), for each ``c`` of :func:`nchwc_thresholds`, all in one
    :func:`_time_round_robin`. On VGG-1-32, NCHWc costs more than it saves on the 2- and 4-channel
    full-resolution layers and saves on the wider ones (docs/SPEED.md): where the layout pays is
    measured, per host.

    Returns:
        (dict, dict): ms per level, ms per ``c`` (empty without ``nchwc``).
    """
    x = _example_input(path) if example is None else np.asarray(example, dtype=np.float32)
    makers = {}
    for level in ORT_LEVELS:
        makers[level] = functools.partial(ort_session, path, threads, level)
    for c in nchwc_thresholds(path) if nchwc else ():
        makers[c] = functools.partial(ort_session, path, threads, "ORT_ENABLE_ALL", c)
    timings = _time_round_robin(makers, x, runs, warmup)
    by_level = {k: v for k, v in timings.items() if isinstance(k, str)}
    return by_level, {k: v for k, v in timings.items() if not isinstance(k, str)}


def best_ort_options(timings: Dict[str, float], nchwc_timings: Dict[int, float]):
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
    import onnx

    if runtime not in ONNX_RUNTIMES + ("auto",):
        raise ValueError(f"Unknown runtime {runtime!r}; use one of {ONNX_RUNTIMES + ('auto',)}")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision == "bf16" and runtime == "onnxruntime":
        raise ValueError("precision 'bf16' runs in OpenVINO: use runtime 'openvino' or 'auto'")
    timings, nchwc_timings = time_ort_options(path, threads, example, runs)
    level, nchwc_min, best_ms = best_ort_options(timings, nchwc_timings)
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
    with atomic_output(path) as tmp:
        onnx.save(model, tmp)
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
