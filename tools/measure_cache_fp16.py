#!/usr/bin/env python
"""
How far a float16 teacher cache (a full-precision teacher) moves ``loss_mimic``: the same short
real-trainer run (tiny generated data, a random teacher saved to a file, fixed seed) without the
cache and with a filled one, per iteration; at iteration 0 every map comes from the cache, so its
difference is the storage error alone; later ones add the drift of two training trajectories.

    python tools/measure_cache_fp16.py [--iters 8] [--json results/cache_fp16_faces_voc.json]
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

from quant_mimic.errors import run_cli
from quant_mimic.fileio import atomic_write_text
from quant_mimic.testing import save_random_teacher as _save_teacher
from quant_mimic.testing import tiny_mimic_cfg as _cfg
from quant_mimic.testing import train_losses as _train_losses

CONFIGS = ("Synth/rfcn_VGG-1-32_mimic.yaml", "Synth/faster_rcnn_R18-1-16_C4_mimic.yaml")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    rows = []
    for config in CONFIGS:
        with tempfile.TemporaryDirectory() as tmp:
            extra = ("MODEL.ROI_HEADS.NUM_CLASSES", 6) if "rfcn" in config else ()
            teacher = _save_teacher(_cfg(tmp, config, extra=extra), os.path.join(tmp, "t.pth"), 3)
            run = dict(teacher=teacher, extra=extra, max_iter=args.iters)
            plain, _ = _train_losses(_cfg(tmp, config, **run))
            cache = os.path.join(tmp, "cache")
            _train_losses(_cfg(tmp, config, cache, **run))  # fills it
            warm, _ = _train_losses(_cfg(tmp, config, cache, **run))
            rel = (np.abs(np.array(warm) - np.array(plain)) / np.abs(np.array(plain))).tolist()
            rows.append({"config": config, "loss_mimic": plain, "cached": warm, "relative": rel})
            print(f"{config}: relative difference per iteration {[f'{r:.1e}' for r in rel]}")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
