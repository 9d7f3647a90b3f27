#!/usr/bin/env python
"""
What training runs logged, over their iterations, in one JSON (the raw data of a learning-curve
or a collapse-guard check; docs/EVIDENCE.md §10):

    python tools/training_series.py RUN_DIR [RUN_DIR ...] --json OUT.json \
        [--keys mimic/student_zero_fraction mimic/loss_ratio ...]

Each RUN_DIR is a stage folder (its ``metrics.json``, ``log.txt``, ``final_metrics.json``). The
JSON maps each folder's name to ``{"series": {"iteration": [...], key: [...]}, "final_metrics":
{...}, "collapse_warned_at": N or null}``.
"""

import argparse
import json
import os
import sys

from quant_mimic.errors import run_cli
from quant_mimic.fileio import atomic_write_text
from quant_mimic.pipeline.records import (
    FINAL_METRICS,
    collapse_warned_at,
    read_json,
    training_series,
)

DEFAULT_KEYS = [
    "mimic/student_zero_fraction",
    "mimic/loss_ratio",
    "mimic/lambda",
    "loss_cls",
    "fast_rcnn/fg_cls_accuracy",
]


def collect(run_dirs, keys):
    out = {}
    for d in run_dirs:
        metrics = os.path.join(d, FINAL_METRICS)
        out[os.path.basename(os.path.normpath(d))] = {
            "series": training_series(d, keys),
            "final_metrics": read_json(metrics) if os.path.isfile(metrics) else {},
            "collapse_warned_at": collapse_warned_at(d),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--json", required=True, help="the JSON file to write")
    parser.add_argument("--keys", nargs="+", default=DEFAULT_KEYS)
    args = parser.parse_args(argv)
    missing = [d for d in args.run_dirs if not os.path.isfile(os.path.join(d, "metrics.json"))]
    if missing:
        parser.error(f"no metrics.json in {missing}")
    atomic_write_text(args.json, json.dumps(collect(args.run_dirs, args.keys), indent=1) + "\n")
    print(f"wrote {args.json}: {len(args.run_dirs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
