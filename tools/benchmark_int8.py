#!/usr/bin/env python
"""
Int8 for the exported student, measured per host and runtime: speed beside exact fp32 in one run,
and AP beside fp32 on trained students (the verdict is in docs/SPEED.md).

    pip install nncf   # OpenVINO's post-training quantization (not a project dependency)
    python tools/benchmark_int8.py --weights RUN1/model_final.pth RUN2/... RUN3/... \\
        [--threads 2] [--runs 10] [--calibration 40] --json results/int8_....json

For each trained student (its run's ``config.yaml``): the exact fp32 ONNX file
(``quant_mimic.export.export_student``), then

* ``openvino-int8``: NNCF post-training quantization of that file in OpenVINO (``nncf.quantize``,
  the mixed preset: symmetric int8 weights, asymmetric activations), calibrated on the first
  ``--calibration`` val images as the model receives them;
* ``onnxruntime-int8-wide``: onnxruntime's static QDQ quantization (per-channel int8 weights) of
  only the convolutions at least ``--wide`` channels wide, calibrated the same way (the narrow
  2-16 channel layers, whose quantize/dequantize pairs cost more than they save, stay fp32).

Speed: one synthetic 576×1024 image (the other speed tables' input), the runtimes timed in
alternating rounds, one live session at a time, lower quartile per runtime (as ``tune_onnx``).
AP: each runtime's detections on the val split through the dataset's evaluator
(``ExportedDetector``), beside onnxruntime fp32 on the same weights.
"""

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List

import numpy as np
import torch

from quant_mimic.errors import run_cli
from quant_mimic.fileio import atomic_write_text
from quant_mimic.timing import host_info

RUNTIMES = ("onnxruntime-fp32", "openvino-fp32", "openvino-int8", "onnxruntime-int8-wide")


def _calibration(cfg, count: int) -> List[np.ndarray]:
    from quant_mimic.export import val_images

    return [x.numpy().astype(np.float32) for x in val_images(cfg, count)]


def quantize_openvino(onnx_path: str, out_xml: str, images: List[np.ndarray]) -> str:
    """NNCF post-training int8 quantization of the ONNX file in OpenVINO, saved as IR."""
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(onnx_path)
    name = model.inputs[0].get_any_name()
    dataset = nncf.Dataset(images, lambda x: {name: x})
    quantized = nncf.quantize(model, dataset, subset_size=len(images))
    ov.save_model(quantized, out_xml)
    return out_xml


class _Reader:
    def __init__(self, images):
        self.items = iter([{"image": x} for x in images])

    def get_next(self):
        return next(self.items, None)


def quantize_wide_convs(onnx_path: str, out_path: str, images, min_channels: int) -> int:
    """onnxruntime static QDQ quantization of the convolutions ≥ ``min_channels`` wide; returns how
    many were quantized."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from quant_mimic.export import conv_widths

    model = onnx.load(onnx_path)
    widths = conv_widths(model)
    nodes = [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and widths.get(n.input[1], 0) >= min_channels
    ]
    if not nodes:
        return 0
    quantize_static(
        onnx_path,
        out_path,
        _Reader(images),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        nodes_to_quantize=nodes,
    )
    return len(nodes)


def _sessions(paths: Dict[str, str], threads: int) -> Dict:
    from quant_mimic.export import OpenVINOSession, ort_session

    makers = {}
    for runtime, path in paths.items():
        if runtime.startswith("openvino"):
            makers[runtime] = lambda p=path: OpenVINOSession(p, threads, "fp32")
        else:
            makers[runtime] = lambda p=path: ort_session(p, threads, "ORT_ENABLE_EXTENDED")
    return makers


def _time(makers: Dict, image: np.ndarray, runs: int) -> Dict[str, float]:
    import time

    times = {k: [] for k in makers}
    while any(len(t) < runs for t in times.values()):
        for key, make in makers.items():
            session = make()
            session.run(None, {"image": image})
            for _ in range(min(3, runs - len(times[key]))):
                start = time.perf_counter()
                session.run(None, {"image": image})
                times[key].append(1000 * (time.perf_counter() - start))
            session = None
    return {k: round(float(np.percentile(v, 25)), 3) for k, v in times.items()}


def measure(weights: str, threads: int, runs: int, calibration: int, wide: int, tmp: str) -> Dict:
    from detectron2.evaluation.testing import flatten_results_dict

    from quant_mimic import Trainer, get_config
    from quant_mimic.export import ExportedDetector, export_student

    run = os.path.dirname(os.path.abspath(weights))
    cfg = get_config(os.path.join(run, "config.yaml"), ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", tmp])
    fp32 = os.path.join(tmp, "student.onnx")
    export_student(cfg, weights, fp32, ort_threads=0)
    images = _calibration(cfg, calibration)
    paths = {"onnxruntime-fp32": fp32, "openvino-fp32": fp32}
    paths["openvino-int8"] = quantize_openvino(fp32, os.path.join(tmp, "int8.xml"), images)
    quantized = quantize_wide_convs(fp32, os.path.join(tmp, "wide.onnx"), images, wide)
    if quantized:
        paths["onnxruntime-int8-wide"] = os.path.join(tmp, "wide.onnx")
    example = (np.random.RandomState(0).rand(len(cfg.MODEL.PIXEL_MEAN), 576, 1024) * 255).astype(
        np.float32
    )
    makers = _sessions(paths, threads)
    speed = _time(makers, example, runs)
    ap = {}
    for runtime, make in makers.items():
        with torch.no_grad():
            results = Trainer.test(cfg, ExportedDetector(make()))
        ap[runtime] = {k: float(v) for k, v in flatten_results_dict(results).items()}
    return {
        "weights": os.path.relpath(weights),
        "config": os.path.relpath(os.path.join(run, "config.yaml")),
        "speed_ms": speed,
        "wide_convs_quantized": quantized,
        "wide_min_channels": wide,
        "calibration_images": len(images),
        "metrics": ap,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--calibration", type=int, default=40)
    p.add_argument("--wide", type=int, default=16, help="int8 convolutions at least this wide")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for w in args.weights:
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(w, args.threads, args.runs, args.calibration, args.wide, tmp)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("weights", "speed_ms")}), flush=True)
        for runtime, metrics in row["metrics"].items():
            main_ = {k: round(v, 2) for k, v in metrics.items() if k.count("/") == 1}
            print(f"  {runtime}: {main_}", flush=True)
    import nncf

    out = {"host": dict(host_info(), nncf=nncf.__version__), "threads": args.threads, "rows": rows}
    atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
