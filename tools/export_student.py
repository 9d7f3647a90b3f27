#!/usr/bin/env python
"""Export the trained student for deployment: a plain checkpoint, TorchScript or ONNX.

    python tools/export_student.py [--config-file CFG] --format pth|torchscript|onnx --output F \\
        [--check] [--score-thresh T | --threshold-for precision=P|recall=R|f1] [--data FILE] \\
        [--runtime onnxruntime|openvino|auto] [--precision fp32|bf16] \\
        MODEL.WEIGHTS RUN/model_final.pth [KEY VALUE ...]

``--config-file`` defaults to the ``config.yaml`` of the run the weights come from.

* ``pth``: the checkpoint's model tensors without MimicRCNN's adapters r and without optimizer /
  scheduler state. It loads with no missing or unexpected key into the plain student config, e.g.
  ``train_net.py --config-file configs/WIDERFace/rfcn_VGG-1-32_scratch.yaml --eval-only
  MODEL.WEIGHTS student.pth``. ``--config-file`` may be omitted for this format.
* ``torchscript`` / ``onnx``: the student's whole single-image inference
  (:class:`quant_mimic.export.StudentInference`), BN folded into the convolutions unless
  ``--no-fold-bn``. CFG may be the student's config or the MimicRCNN config it was trained with
  (its inference is the student's). The ONNX file records its contract in its metadata (class
  names, input format, resize rule, threshold, provenance; docs/SPEED.md), which
  ``quant_mimic.export.Detector`` reads.
* ``--score-thresh`` / ``--threshold-for``: an export for deployment, with a threshold the user
  gives or one chosen on the val set (``quant_mimic.export.operating_point``), baked into the graph
  and recorded with where it comes from; without them the config's low threshold (for AP).
* ``--runtime`` / ``--precision`` (onnx): what a plain ``quant_mimic.export.onnx_session(path,
  threads)`` load runs, recorded in the file with the timed onnxruntime options: onnxruntime
  (default), OpenVINO, or ``auto`` (the faster here); ``bf16`` = OpenVINO bfloat16 inference,
  lossy (AP cost: ``tools/eval_exported.py``, docs/SPEED.md).
* ``--check``: run the exported file (TorchScript in torch, ONNX in its recorded runtime, in fp32)
  and the PyTorch model on two synthetic images of different sizes and compare detections (same
  count and class, |Δbox| ≤ 0.05 px, |Δscore| ≤ 1e-3); exit status 1 if they disagree. With
  ``--precision bf16`` the bf16 deviation is printed too (not a pass/fail check).

The output is written atomically and never over the input checkpoint.
"""

import argparse
import json
import os
import sys
from typing import Dict

import torch

from quant_mimic.errors import BadFileError, run_cli

__all__ = ["student_state_dict", "main"]

FORMATS = ("pth", "torchscript", "onnx")


def student_state_dict(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The ``model`` tensors of a detectron2 checkpoint without the mimic adapters."""
    from quant_mimic.checkpoint import ADAPTER_PREFIX

    model = checkpoint.get("model", checkpoint)
    return {k: v for k, v in model.items() if not k.startswith(ADAPTER_PREFIX)}


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _weights_from_opts(opts) -> str:
    for key, value in zip(opts[::2], opts[1::2]):
        if key == "MODEL.WEIGHTS":
            return value
    return ""


def _export_pth(parser, weights: str, output: str) -> int:
    try:
        ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise BadFileError(
            weights,
            f"MODEL.WEIGHTS is not a readable torch checkpoint ({type(e).__name__}: {e})",
            "give the model_final.pth of a training run",
        ) from e
    from quant_mimic.fileio import atomic_torch_save

    model = student_state_dict(ckpt)
    atomic_torch_save({"model": model}, output)
    dropped = len(ckpt.get("model", ckpt)) - len(model)
    print(f"Wrote {len(model)} tensors to {output} (dropped {dropped} adapter tensors)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config-file",
        default="",
        help="the student's (or MimicRCNN) config; default: the config.yaml of the run whose "
        "MODEL.WEIGHTS are given",
    )
    parser.add_argument("--data", default="", metavar="FILE", help="a data file (your data)")
    parser.add_argument("--format", choices=FORMATS, default="pth")
    parser.add_argument("--output", required=True)
    parser.add_argument("--check", action="store_true", help="parity check after export")
    parser.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers")
    parser.add_argument(
        "--space-to-depth",
        action="store_true",
        help="run a VGG student's first block at half resolution, exactly (quant_mimic/"
        "space_to_depth.py; not faster on the AVX2 host measured, docs/SPEED.md)",
    )
    parser.add_argument(
        "--ort-threads",
        type=int,
        default=2,
        help="onnx: time onnxruntime's graph optimisation levels and NCHWc widths with this many "
        "threads and record the fastest in the file (quant_mimic.export.onnx_session applies it); "
        "0: do not tune",
    )
    parser.add_argument(
        "--runtime",
        choices=("onnxruntime", "openvino", "auto"),
        default="onnxruntime",
        help="onnx: the runtime a plain quant_mimic.export.onnx_session load uses, recorded in the "
        "file; auto: the faster of the two on this host, timed now",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="onnx: bf16 = OpenVINO bfloat16 inference (lossy; CPUs with avx512_bf16 or AMX; AP "
        "cost measured in docs/SPEED.md), recorded in the file; the file's weights stay fp32",
    )
    point = parser.add_mutually_exclusive_group()
    point.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="export for deployment with this score threshold baked in and recorded (default: "
        "the config's, which is AP's)",
    )
    point.add_argument(
        "--threshold-for",
        default="",
        metavar="TARGET",
        help="export for deployment with the threshold chosen on the val set (DATASETS.TEST[0]) "
        "for TARGET: precision=P (the most recall at precision P), recall=R, or f1; recorded "
        "with its precision and recall",
    )
    parser.add_argument(
        "--int8",
        type=int,
        default=0,
        metavar="N",
        help="onnx: also write an OpenVINO int8 IR (<output>_int8.xml, NNCF post-training "
        "quantization calibrated on the first N val images; measured per host in docs/SPEED.md: "
        "1.4x OpenVINO fp32 for the ResNet18-1-16 C4 student on an AMX CPU, no gain for VGG-1-32)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    weights = _weights_from_opts(args.opts)
    if not weights:
        parser.error("MODEL.WEIGHTS <checkpoint> is required")
    if not os.path.isfile(weights):
        parser.error(f"input checkpoint not found: {weights}")
    if _same_file(weights, args.output):
        parser.error(f"output {args.output} is the input checkpoint: refusing to overwrite it")
    if args.format == "pth":
        return _export_pth(parser, weights, args.output)
    from quant_mimic import get_config
    from quant_mimic.data.data_file import data_opts
    from quant_mimic.engine import config_of_run
    from quant_mimic.export import (
        example_images,
        export_student,
        operating_point,
        parity_report,
        val_images,
    )

    config_file = config_of_run(args.config_file, weights)
    if not config_file:
        parser.error(
            f"--format {args.format} needs --config-file (no config.yaml beside {weights})"
        )
    if config_file != args.config_file:
        print(f"Config: {config_file} (the run of {weights})")
    opts = list(args.opts) + data_opts(args.data) + ["MODEL.DEVICE", "cpu"]
    cfg = get_config(config_file, opts)
    source = operating_point(cfg, weights, args.score_thresh, args.threshold_for)
    if source["kind"] != "config":
        print(f"Score threshold {cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST:g} for deployment: {source}")
    images = example_images(cfg)
    done = export_student(
        cfg, weights, args.output, args.format, fold_bn=not args.no_fold_bn,
        space_to_depth=args.space_to_depth, ort_threads=args.ort_threads, runtime=args.runtime,
        precision=args.precision, check_images=images if args.check else None,
        threshold_source=source, int8_images=val_images(cfg, args.int8) if args.int8 else None,
    )  # fmt: skip
    if done["int8"]:
        print(f"Wrote the OpenVINO int8 IR {done['int8']} (its contract inside; "
              "quant_mimic.export.Detector runs it)")  # fmt: skip
    module = done["module"]
    print(
        f"Wrote {args.format} to {args.output} ({os.path.getsize(args.output) / 2**20:.2f} MB; "
        f"{module.num_folded} BatchNorm layers folded)"
    )
    tuned = done["tuned"]
    if tuned is not None:
        c = tuned["nchwc_min_channels"]
        nchwc = f", NCHWc from {c} channels" if c else ""
        print(
            f"onnxruntime graph optimisation on this host ({tuned['host']['cpu']}, "
            f"{args.ort_threads} threads, 576x1024): {tuned['timings_ms']} ms, ALL with NCHWc from "
            f"c channels {tuned['nchwc_timings_ms']} ms -> {tuned['level']}{nchwc}; "
            f"OpenVINO {tuned['precision']}: {tuned['openvino_ms']} ms; plain load: "
            f"{tuned['runtime']} {tuned['precision']} (recorded in the file's metadata)"
        )
    if args.check:
        rows = done["parity"]
        print(json.dumps(rows, indent=1))
        if not all(r["ok"] for r in rows):
            print("Parity check FAILED", file=sys.stderr)
            return 1
        if args.format == "onnx" and args.precision == "bf16":
            lossy = parity_report(module, images, onnx_path=args.output, box_atol=1e9, score_atol=1)
            print("bf16 (lossy; not a pass/fail check, AP cost: tools/eval_exported.py): "
                  + json.dumps([{k: r[k] for k in ("image", "count_ref", "count_other",
                                "max_box_diff", "max_score_diff")} for r in lossy]))  # fmt: skip
        print(f"Parity check passed on {len(images)} images of sizes "
              f"{[list(i.shape[1:]) for i in images]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
