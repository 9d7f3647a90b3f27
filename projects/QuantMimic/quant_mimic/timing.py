"""What a measurement ran on and how long a call takes: the host record and the median timer that
benchmarks, the export's tuning and ``tools/benchmark_*.py`` share (a time without its host cannot
be compared with anyone's)."""

import importlib
import os
import statistics
import time
from typing import Callable, Dict

import torch

__all__ = ["ISA_FLAGS", "host_info", "median_ms", "fmt_s"]

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


def fmt_s(s: float) -> str:
    """Seconds as H:MM:SS."""
    s = int(round(s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
