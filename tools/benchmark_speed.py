#!/usr/bin/env python
"""Speed and size of the paper's detectors and their tiny students (Table 1 setting), side by side
with a mobile detector a user would pick instead.

    python tools/benchmark_speed.py [--device cpu|cuda] [--threads 2] [--runtime all]
        [--openvino] [--peer] [--runs 30] [--json speed.json] [--models "VGG-1-32 R-FCN" ...]

One image of 576×1024 (the paper's longer side 1024), batch 1, random weights (speed does not
depend on them), every model measured in the same process so that ratios are side by side.
Per model and runtime: the median latency of ``--runs`` timed runs after ``--warmup``:

* ``pytorch``: :class:`quant_mimic.export.StudentInference` (BN folded) in eager inference mode,
  its CPU convolution backend (oneDNN or native) chosen by timing (``autotune_conv_backend``);
* ``torchscript``: the same module traced and frozen (``tools/export_student.py --format
  torchscript``);
* ``onnxruntime``: the same module exported to ONNX (``--format onnx``; its post-processing in
  the exact lean form of :mod:`quant_mimic.export.lean_postprocess`), its options (graph
  optimisation level, or ORT_ENABLE_ALL with NCHWc only for convolutions from c channels) chosen
  by timing on this host and recorded in the file as the export tool does (``tune_onnx``; the
  timings are in the row), onnxruntime CPU session with ``--threads`` intra-op threads (CPU only);
* ``openvino`` (``--openvino`` or ``--runtime openvino``): the same ONNX file in OpenVINO's CPU
  runtime (``onnx_session(path, threads, runtime="openvino")``: compiled for the input's shape,
  fp32, exact);
* ``openvino-bf16``: the same, bfloat16 inference (``precision="bf16"``; lossy, AP cost from
  ``tools/eval_exported.py``); skipped on CPUs without avx512_bf16 or AMX;
* ``onnxruntime-plain`` (``--plain``): onnxruntime on the file exported with detectron2's own
  post-processing graph (``export_onnx(..., lean=False)``), tuned the same way: the "before" of
  :mod:`quant_mimic.export.lean_postprocess`, side by side.

Every row records its host (``cpu`` model, ``isa``: which of avx2 / avx512f / avx512_vnni /
amx_tile, ``bf16``: native bfloat16 or not, ``torch``, ``onnxruntime`` and ``openvino`` versions,
threads) and, for onnxruntime / OpenVINO, the session options (``session``: graph optimisation
level or precision, threads). Also: parameters, fp32 size, backbone GMACs at 600×1000 (fvcore),
and for ``pytorch`` the time split (preprocess / backbone / RPN / ROI head / postprocess).
``--peer``: torchvision's
``fasterrcnn_mobilenet_v3_large_320_fpn`` (random weights, the same 576×1024 input, its own
resizing to 320 as shipped) timed in the same run; ``speedup_vs_peer`` = peer ms / model ms.
"""

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List

import torch

from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess

from quant_mimic import get_config
from quant_mimic.benchmark_models import MODELS, STUDENTS
from quant_mimic.errors import run_cli
from quant_mimic.export import (
    StudentInference,
    export_onnx,
    export_torchscript,
    onnx_session,
    run_onnx,
    session_options,
    tune_onnx,
)
from quant_mimic.fileio import CONFIGS_DIR
from quant_mimic.timing import host_info, median_ms

CONFIG_DIR = CONFIGS_DIR
RUNTIMES = ("pytorch", "torchscript", "onnxruntime")  # --runtime all
OPENVINO_RUNTIMES = ("openvino", "openvino-bf16")  # --openvino
# --plain: the file exported with detectron2's own post-processing graph (export_onnx(lean=False))
PLAIN_RUNTIME = "onnxruntime-plain"
PEER = "torchvision fasterrcnn_mobilenet_v3_large_320_fpn"


def backbone_gmacs(model, channels: int, height: int = 600, width: int = 1000) -> float:
    """fvcore's count of the backbone's multiply-adds at height×width (one image; padded to the
    backbone's size divisibility, as the detector pads it)."""
    from fvcore.nn import FlopCountAnalysis

    d = max(int(getattr(model.backbone, "size_divisibility", 0)), 1)  # an FPN pads the input
    height, width = -(-height // d) * d, -(-width // d) * d
    x = torch.zeros(1, channels, height, width, device=next(model.parameters()).device)
    counter = FlopCountAnalysis(model.backbone, x)
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return counter.total() / 1e9


def time_split(module: StudentInference, image, runs: int, warmup: int, cuda: bool) -> Dict:
    """Median ms of each inference step of the (BN-folded) eager model, run step by step."""
    m = module.model
    inputs = [{"image": image}]
    state = {}

    def pre():
        state["images"] = m.preprocess_image(inputs)

    def backbone():
        state["features"] = m.backbone(state["images"].tensor)

    def rpn():
        state["proposals"], _ = m.proposal_generator(state["images"], state["features"], None)

    def head():
        state["results"], _ = m.roi_heads(state["images"], state["features"], state["proposals"])

    def post():
        detector_postprocess(state["results"][0], image.shape[1], image.shape[2])

    steps = (("preprocess", pre), ("backbone", backbone), ("rpn", rpn), ("roi_head", head),
             ("postprocess", post))  # fmt: skip
    if isinstance(m, DenseDetector):  # one stage: the dense head, then decoding + NMS

        def dense_head():
            state["levels"] = [state["features"][f] for f in m.head_in_features]
            state["predictions"] = m.head(state["levels"])

        def dense_post():
            results = m.forward_inference(state["images"], state["levels"], state["predictions"])
            detector_postprocess(results[0], image.shape[1], image.shape[2])

        steps = (("preprocess", pre), ("backbone", backbone), ("dense_head", dense_head),
                 ("postprocess", dense_post))  # fmt: skip
    split = {}
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=module.onednn):
        for name, fn in steps:
            fn()
            split[name + "_ms"] = round(median_ms(fn, runs, warmup, cuda), 3)
    return split


def measure_model(name, args, image, tmp) -> List[Dict]:
    config, opts = MODELS[name]
    cfg = get_config(
        os.path.join(CONFIG_DIR, config),
        ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", ""] + [str(o) for o in opts],
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    channels = len(cfg.MODEL.PIXEL_MEAN)
    img = image[:channels].to(args.device)
    params = sum(p.numel() for p in model.parameters())
    common = {
        "model": name,
        "config": config,
        "threads": args.threads,
        "device": _device_name(args.device),
        "input": f"{args.height}x{args.width}",
        "params_M": round(params / 1e6, 4),
        "size_MB": round(params * 4 / 2**20, 3),
        "gmacs": round(backbone_gmacs(model, channels), 3),
    }
    module = StudentInference(model)
    cuda = args.device.startswith("cuda")
    tuned = module.autotune_conv_backend(img)
    if tuned:
        common["conv_backend"] = "oneDNN" if module.onednn else "native"
        common.update({k: round(v, 3) for k, v in tuned.items()})
    rows = []
    onnx_path = ""
    for runtime in args.runtimes:
        row_extra = {}
        if runtime != "pytorch" and runtime != "torchscript" and cuda:
            continue  # onnxruntime / OpenVINO rows are CPU rows
        session = None
        if runtime == "pytorch":
            fn = _no_grad(lambda: module(img))
        elif runtime == "torchscript":
            path = export_torchscript(module, img, os.path.join(tmp, "m.ts"))
            ts = torch.jit.load(path, map_location=args.device)

            def fn():  # the same convolution backend as the eager module
                with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=module.onednn):
                    return ts(img)

        else:
            if not onnx_path:
                onnx_path = export_onnx(module, img.cpu(), os.path.join(tmp, "m.onnx"))
            engine, _, precision = runtime.partition("-")
            if engine == "onnxruntime":
                path = onnx_path
                if runtime == PLAIN_RUNTIME:
                    path = os.path.join(tmp, "plain.onnx")
                    export_onnx(module, img.cpu(), path, lean=False)
                # as tools/export_student.py does: the fastest options, recorded in the file
                tuned = tune_onnx(path, args.threads, img.cpu().numpy())
                row_extra["ort_level_timings_ms"] = tuned["timings_ms"]
                row_extra["ort_nchwc_timings_ms"] = tuned["nchwc_timings_ms"]
                session = onnx_session(path, args.threads)
            else:
                try:
                    session = onnx_session(
                        onnx_path, args.threads, runtime=engine, precision=precision or "fp32"
                    )
                except (ImportError, RuntimeError) as e:  # no openvino, or no bf16 on this CPU
                    print(f"  {name} / {runtime}: skipped ({e})", flush=True)
                    continue
            fn = lambda: run_onnx(session, img)  # noqa: E731
        row = dict(common, runtime=runtime, **row_extra)
        if session is not None:
            row["session"] = session_options(session)
        row["detector_ms"] = round(median_ms(fn, args.runs, args.warmup, cuda), 3)
        fn = session = None  # its threads end before the next runtime is timed
        if runtime == "pytorch" and name in STUDENTS:
            row.update(time_split(module, img, args.runs, args.warmup, cuda))
        rows.append(row)
        print(f"  {name} / {runtime}: {row['detector_ms']:.2f} ms", flush=True)
    return rows


def measure_peer(args, image) -> Dict:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    peer = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    peer = peer.eval().to(args.device)
    x = [(image.expand(3, -1, -1) / 255.0).to(args.device)]
    params = sum(p.numel() for p in peer.parameters())
    ms = median_ms(_no_grad(lambda: peer(x)), args.runs, args.warmup, args.device != "cpu")
    print(f"  {PEER} / pytorch: {ms:.2f} ms", flush=True)
    return {
        "model": PEER,
        "config": "torchvision (random weights)",
        "threads": args.threads,
        "device": _device_name(args.device),
        "input": f"{args.height}x{args.width}",
        "params_M": round(params / 1e6, 4),
        "size_MB": round(params * 4 / 2**20, 3),
        "gmacs": None,
        "runtime": "pytorch",
        "detector_ms": round(ms, 3),
    }


def _no_grad(fn):
    def run():
        with torch.inference_mode():
            return fn()

    return run


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores)"


def main(argv=None) -> List[Dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime CPU threads")
    parser.add_argument(
        "--runtime", choices=RUNTIMES + OPENVINO_RUNTIMES + ("all",), default="all",
        help=f"one runtime, or all of {RUNTIMES}",
    )  # fmt: skip
    parser.add_argument(
        "--openvino", action="store_true", help=f"also time {OPENVINO_RUNTIMES} (CPU)"
    )
    parser.add_argument("--peer", action="store_true", help=f"also time {PEER}")
    parser.add_argument(
        "--plain",
        action="store_true",
        help=f"also time {PLAIN_RUNTIME}: onnxruntime on the export with detectron2's own "
        "post-processing graph (before quant_mimic.export.lean_postprocess), tuned the same way",
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--json", default="", help="write the rows to this file")
    args = parser.parse_args(argv)
    args.runtimes = RUNTIMES if args.runtime == "all" else (args.runtime,)
    if args.openvino:
        args.runtimes += tuple(r for r in OPENVINO_RUNTIMES if r not in args.runtimes)
    if args.plain and PLAIN_RUNTIME not in args.runtimes:
        args.runtimes += (PLAIN_RUNTIME,)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, args.height, args.width, generator=g) * 255
    rows = []
    peer = measure_peer(args, image) if args.peer else None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += measure_model(name, args, image, tmp)
    if peer is not None:
        for r in rows:
            r["speedup_vs_peer"] = round(peer["detector_ms"] / r["detector_ms"], 3)
        peer["speedup_vs_peer"] = 1.0
        rows.append(peer)
    else:
        for r in rows:
            r["speedup_vs_peer"] = None
    host = host_info()  # every row names its host: figures from two hosts cannot be compared
    rows = [dict(r, **host) for r in rows]
    _print_table(rows, args)
    print(f"host: {host}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


def _print_table(rows, args):
    print(f"\n{args.height}x{args.width}, batch 1, {args.threads} threads, median of {args.runs}")
    print("| model | runtime | ms | vs peer | params (M) | size (MB) | backbone GMACs (600×1000) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['speedup_vs_peer']:.2f}×" if r.get("speedup_vs_peer") else "–"
        gmacs = f"{r['gmacs']:.3f}" if r.get("gmacs") is not None else "–"
        print(
            f"| {r['model']} | {r['runtime']} | {r['detector_ms']:.2f} | {ratio} | "
            f"{r['params_M']:.3f} | {r['size_MB']:.2f} | {gmacs} |"
        )
    for r in rows:
        if "backbone_ms" in r:
            steps = ("preprocess", "backbone", "rpn", "roi_head", "postprocess")
            print(
                f"{r['model']} (pytorch) split: "
                + ", ".join(f"{s} {r[s + '_ms']:.2f} ms" for s in steps)
            )


if __name__ == "__main__":
    sys.exit(run_cli(main))
