#!/usr/bin/env python
"""Speed and size of R-FCN detectors on VGG16, VGG-1-4 and VGG-1-32 (the paper's Table 1 setting).

    python tools/benchmark_speed.py [--device cuda] [--runs 50] [--json speed.json]

One grey image whose longer side is 1024 (576×1024), batch 1, inference mode; medians over
``--runs`` timed runs after warm-up, all models measured in the same process, side by side. Sizes
are fp32 parameter bytes. Randomly initialised weights (speed does not depend on them; the RPN's
proposals are capped by POST_NMS_TOPK_TEST as in the configs).
"""

import argparse
import json
import os
import statistics
import time

import torch

from detectron2.modeling import build_model

import quant_mimic  # noqa: F401
from quant_mimic import setup_cfg

# Config paths are relative to the repository's configs/ folder: the tool runs from any directory.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MODELS = {
    "VGG16 R-FCN": ("WIDERFace/rfcn_VGG-1-4_teacher.yaml", ["MODEL.VGG.CHANNEL_DIVISOR", 1]),
    "VGG-1-4 R-FCN": ("WIDERFace/rfcn_VGG-1-4_teacher.yaml", []),
    "VGG-1-32 R-FCN": ("WIDERFace/rfcn_VGG-1-32_scratch.yaml", []),
}


def _time(fn, device, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    image = torch.rand(1, args.height, args.width) * 255
    rows = []
    for name, (config, opts) in MODELS.items():
        cfg = setup_cfg(
            os.path.join(CONFIG_DIR, config),
            ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", ""] + opts,
        )
        model = build_model(cfg).eval()
        inputs = [{"image": image.to(device), "height": args.height, "width": args.width}]
        params = sum(p.numel() for p in model.parameters())
        backbone_params = sum(p.numel() for p in model.backbone.parameters())
        with torch.inference_mode():
            full = _time(lambda: model(inputs), device, args.runs, args.warmup)
            x = model.preprocess_image(inputs).tensor
            backbone = _time(lambda: model.backbone(x), device, args.runs, args.warmup)
        rows.append(
            {
                "model": name,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "input": f"{args.height}x{args.width}",
                "detector_ms": round(full, 3),
                "backbone_ms": round(backbone, 3),
                "params_M": round(params / 1e6, 4),
                "size_MB": round(params * 4 / 2**20, 3),
                "backbone_size_MB": round(backbone_params * 4 / 2**20, 3),
            }
        )
    base = rows[0]["detector_ms"]
    print(
        f"| model | device | detector ms (median of {args.runs}) | backbone ms | speed-up "
        "| params (M) | size (MB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['device']} | {r['detector_ms']:.2f} | {r['backbone_ms']:.2f} | "
            f"{base / r['detector_ms']:.2f}× | {r['params_M']:.3f} | {r['size_MB']:.2f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
