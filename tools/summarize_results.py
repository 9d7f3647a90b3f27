#!/usr/bin/env python
"""Print (markdown) and save (JSON) the final evaluation metrics of training output folders.

    python tools/summarize_results.py output/synth/* [--json results.json]

Reads each folder's ``metrics.json`` (written by detectron2's JSONWriter) and keeps, per metric
(``widerface/AP_*``, ``bbox/AP*``), its last value, with the iteration it was logged at.
"""

import argparse
import json
import os
from typing import Dict

__all__ = ["final_metrics"]

_PREFIXES = ("widerface/", "bbox/")


def final_metrics(output_dir: str) -> Dict[str, float]:
    """Last logged value of each evaluation metric in ``<output_dir>/metrics.json``."""
    path = os.path.join(output_dir, "metrics.json")
    out = {}
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            for k, v in row.items():
                if k.startswith(_PREFIXES):
                    out[k] = v
                    out["iteration"] = row.get("iteration")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = {
        os.path.basename(os.path.normpath(d)): final_metrics(d)
        for d in args.dirs
        if os.path.isdir(d)
    }
    keys = sorted({k for r in rows.values() for k in r if k != "iteration"})
    print("| run | iteration | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 2) + "|")
    for name, r in rows.items():
        cells = [f"{r[k]:.2f}" if k in r else "-" for k in keys]
        print(f"| {name} | {r.get('iteration', '-')} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
