#!/usr/bin/env python
"""AP of trained students as they deploy: each checkpoint exported to ONNX and evaluated on its
config's test split in each runtime, beside the PyTorch model (the accuracy side of README
"Speed": what a lossy runtime such as OpenVINO bf16 costs, per student kind and seed).

    python tools/eval_exported.py --weights RUN/model_final.pth [...] --json OUT \\
        [--runtimes pytorch onnxruntime openvino openvino-bf16] [--threads 2] [KEY VALUE ...]
    python tools/eval_exported.py --report OUT [OUT ...]   # the table: mean ± std (n) per kind

The config of ``RUN/model_final.pth`` is ``RUN/config.yaml`` (a pipeline or train_net.py output
folder) unless ``--config-file`` names one for every checkpoint; MimicRCNN configs evaluate their
student, as ``train_net.py --eval-only`` does. Each runtime's detections go through detectron2's
evaluator for the split (``DefaultTrainer.test``) via :class:`quant_mimic.export.ExportedDetector`.
One record per checkpoint and runtime: ``kind`` and ``seed`` from the folder name (e.g.
``mimic_seed1``), ``runtime``, ``metrics`` (flat), ``host``.
"""

import argparse
import json
import os
import re
import sys
import tempfile

from quant_mimic.errors import run_cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIMES = ("pytorch", "onnxruntime", "openvino", "openvino-bf16")


def _kind_seed(weights: str):
    folder = os.path.basename(os.path.dirname(os.path.abspath(weights)))
    m = re.fullmatch(r"(.+)_seed(\d+)", folder)
    return (m.group(1), int(m.group(2))) if m else (folder, None)


def evaluate(
    weights: str,
    config_file: str,
    runtimes,
    threads: int,
    opts,
    tmp: str,
    score_thresh=None,
    target: str = "",
):
    """Records (one per runtime) of one checkpoint."""
    import torch

    from detectron2.evaluation.testing import flatten_results_dict

    from quant_mimic import Trainer, setup_cfg
    from quant_mimic.checkpoint import load_student_weights
    from quant_mimic.export import (
        ExportedDetector,
        at_threshold,
        export_student,
        onnx_session,
        operating_point,
        read_contract,
        session_options,
        val_curve,
    )

    cfg = setup_cfg(
        config_file,
        list(opts) + ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", tmp, "MODEL.DEVICE", "cpu"],
    )
    cfg.defrost()
    source = operating_point(cfg, weights, score_thresh, target)
    cfg.freeze()
    model = Trainer.build_model(cfg, load_teacher=False).eval()
    load_student_weights(model, weights)
    path = os.path.join(tmp, "student.onnx")
    export_student(cfg, weights, path, ort_threads=0, threshold_source=source)
    threshold = read_contract(path)["score_threshold"]
    kind, seed = _kind_seed(weights)
    rows = []
    for runtime in runtimes:
        if runtime == "pytorch":
            evaluated, session = model, {"runtime": "pytorch"}
        else:
            name, _, precision = runtime.partition("-")
            sess = onnx_session(path, threads, runtime=name, precision=precision or "fp32")
            evaluated, session = ExportedDetector(sess), session_options(sess)
        with torch.no_grad():
            results = Trainer.test(cfg, evaluated)
        metrics = {k: float(v) for k, v in flatten_results_dict(results).items()}
        # the deployed behaviour beside AP: precision and recall at the file's recorded threshold
        point = at_threshold(val_curve(cfg, evaluated), threshold)
        rows.append(
            {"weights": os.path.relpath(os.path.abspath(weights), REPO_ROOT), "config":
             os.path.relpath(os.path.abspath(config_file), REPO_ROOT), "kind": kind, "seed": seed,
             "runtime": runtime, "session": session, "metrics": metrics,
             "operating_point": dict(point, source=source)}
        )  # fmt: skip
        print(
            f"{kind} seed {seed} / {runtime}: {metrics}; at the recorded score threshold "
            f"{threshold:g} ({source['kind']}): precision {point['precision']:.3f}, recall "
            f"{point['recall']:.3f}",
            flush=True,
        )
    return rows


def report(paths) -> str:
    """Per kind and runtime: mean ± sample std (n) of each metric over seeds, and the mean paired
    difference to the same checkpoints in PyTorch (a runtime's AP cost)."""
    import statistics

    rows = []
    for path in paths:
        with open(path) as f:
            rows += json.load(f)
    ref = {(r["weights"], k): v for r in rows if r["runtime"] == "pytorch"
           for k, v in r["metrics"].items()}  # fmt: skip
    metrics = sorted({k for r in rows for k in r["metrics"]})
    lines = [
        "| kind | runtime | n | " + " | ".join(metrics) + " |",
        "|---" * (3 + len(metrics)) + "|",
    ]
    groups = {}
    for r in rows:
        groups.setdefault((r["kind"], r["runtime"]), []).append(r)
    for (kind, runtime), group in groups.items():
        cells = []
        for k in metrics:
            vals = [r["metrics"][k] for r in group]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cell = f"{statistics.mean(vals):.2f} ± {sd:.2f}"
            deltas = [r["metrics"][k] - ref[(r["weights"], k)] for r in group
                      if (r["weights"], k) in ref]  # fmt: skip
            if runtime != "pytorch" and deltas:
                cell += (
                    f" (Δ {statistics.mean(deltas):+.2f}, {min(deltas):+.2f}…{max(deltas):+.2f})"
                )
            cells.append(cell)
        lines.append(f"| {kind} | {runtime} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", nargs="+", default=[], help="print the table of JSON files")
    parser.add_argument("--weights", nargs="+", default=[])
    parser.add_argument(
        "--config-file", default="", help="default: config.yaml beside each weights"
    )
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="")
    point = parser.add_mutually_exclusive_group()
    point.add_argument("--score-thresh", type=float, default=None, help="deployment threshold")
    point.add_argument(
        "--threshold-for", default="", metavar="TARGET", help="precision=P | recall=R | f1"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return True
    if not args.weights or not args.json:
        parser.error("--weights and --json are required (or --report FILE ...)")
    for w in args.weights:
        if not os.path.isfile(w):
            parser.error(f"weights not found: {w}")
        config = args.config_file or os.path.join(os.path.dirname(w), "config.yaml")
        if not os.path.isfile(config):
            parser.error(f"no config for {w}: {config} is missing (use --config-file)")
    import torch

    from quant_mimic.timing import host_info

    torch.set_num_threads(args.threads)
    rows = []
    for w in args.weights:
        config = args.config_file or os.path.join(os.path.dirname(w), "config.yaml")
        with tempfile.TemporaryDirectory() as tmp:
            rows += evaluate(
                w, config, args.runtimes, args.threads, args.opts, tmp,
                args.score_thresh, args.threshold_for,
            )  # fmt: skip
    host = host_info()
    rows = [dict(r, host=host) for r in rows]
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: 0 if main(argv) else 1))
