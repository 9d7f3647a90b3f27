#!/usr/bin/env python
"""
Seconds per training iteration of the scratch student, and of the mimic student without and with a
filled teacher-map cache (``MODEL.MIMIC.TEACHER.CACHE_DIR``), measured side by side in one process.

    python tools/benchmark_train.py --config-file CFG [--iters N] [--warmup W] [--json F] \
        [--bench faces|voc --preset cpu] [--out DIR] [KEY VALUE ...]

CFG is a mimic config (MimicRCNN, MimicRetinaNet, MimicFCOS); "scratch" is the same config with
its plain detector as ``MODEL.META_ARCHITECTURE`` (the same student, no teacher, no mimic loss).
Each row runs the real trainer's ``run_step`` (data loading included) W + N times and reports the
median of the last N. The cache row pre-fills the cache first (its time is reported apart).
``--preset`` applies the pipeline preset's overrides (every stage + student) and generates its
synthetic data under DIR/datasets.
Without teacher weights (``MODEL.MIMIC.TEACHER.WEIGHTS`` missing) the teacher is random: the
same computation, for timing only (the JSON says so).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from quant_mimic import Trainer, get_config
from quant_mimic.config import MIMIC_ARCHITECTURES, student_architecture
from quant_mimic.errors import run_cli
from quant_mimic.fileio import atomic_write_text
from quant_mimic.teacher_cache_fill import fill_teacher_cache
from quant_mimic.timing import host_info

# Real datasets' training inputs (images × 2 flips) for the projected cache size.
REAL_SETS = {"WIDER FACE train": 12880, "VOC 07+12 trainval": 16551}


def time_steps(cfg, iters: int, warmup: int) -> list:
    """Seconds of each of ``warmup + iters`` trainer steps (real data loader, optimizer)."""
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else 0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    times = []
    with EventStorage(0) as storage:
        trainer.storage = trainer._trainer.storage = storage
        for i in range(warmup + iters):
            trainer.iter = trainer._trainer.iter = storage.iter = i
            t0 = time.perf_counter()
            trainer.run_step()
            times.append(time.perf_counter() - t0)
    return times


def _relative(path: str) -> str:
    """A config path relative to the repository when it is inside it (results do not name hosts'
    folders)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = os.path.abspath(path)
    return os.path.relpath(full, root) if full.startswith(root + os.sep) else path


def projected_sizes(model, cfg) -> dict:
    """Bytes per input of the teacher's mimicked maps at 600×1000 (the real configs' training
    scale, an upper bound: the longer side ≤ 1000) and the cache of each real training set."""
    shapes = model.teacher.backbone.output_shape()
    cache = model.teacher_cache
    per = 0
    for name in model.frozen_teacher.feature_names:
        s = shapes[name]
        stored = 1 if cache.codecs[name].dtype == "uint8" else 2
        per += s.channels * -(-600 // s.stride) * -(-1000 // s.stride) * stored
    return {
        "bytes_per_input_600x1000": per,
        **{f"{k} ({n} images, 2 flips), this teacher": 2 * n * per for k, n in REAL_SETS.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--config-file", required=True, help="a mimic config")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", default="", help="write the rows here")
    p.add_argument("--bench", choices=("faces", "voc"), help="with --preset: its data and opts")
    p.add_argument("--preset", default="", help="a pipeline preset (smoke | cpu | gpu | a yaml)")
    p.add_argument("--out", default="output/benchmark_train", help="data and cache folder")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    opts = list(args.opts)
    if args.preset:
        if not args.bench:
            p.error("--preset needs --bench")
        from quant_mimic.data import register_all_quantmimic_datasets
        from quant_mimic.pipeline import dict_opts, load_preset
        from quant_mimic.pipeline.plan import generate_data

        preset = load_preset(args.preset, args.bench)
        os.environ["DETECTRON2_DATASETS"] = os.path.join(out, "datasets")
        register_all_quantmimic_datasets(os.environ["DETECTRON2_DATASETS"], replace=True)
        print(generate_data(args.bench, preset, out, force=False), flush=True)
        opts = dict_opts(preset.get("opts")) + dict_opts(preset.get("student")) + opts
    opts += ["TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", os.path.join(out, "run")]
    base = get_config(args.config_file, opts)
    if base.MODEL.META_ARCHITECTURE not in MIMIC_ARCHITECTURES:
        p.error(f"{args.config_file} is not a mimic config ({', '.join(MIMIC_ARCHITECTURES)})")
    teacher = base.MODEL.MIMIC.TEACHER.WEIGHTS
    random_teacher = not (teacher and os.path.isfile(teacher))
    if random_teacher:  # one random teacher, saved, so that every row and the cache share it
        torch.manual_seed(0)
        path = os.path.join(out, "random_teacher.pth")
        os.makedirs(out, exist_ok=True)
        model = Trainer.build_model(
            get_config(args.config_file, opts + ["MODEL.MIMIC.TEACHER.WEIGHTS", ""])
        )
        torch.save({"model": model.teacher.state_dict()}, path)
        opts += ["MODEL.MIMIC.TEACHER.WEIGHTS", path]
        print(f"No teacher weights at {teacher!r}: a random teacher (timing only)", flush=True)
    cache_dir = os.path.join(out, "teacher_cache")
    rows, fill = [], {}
    plans = [
        ("scratch student", ["MODEL.META_ARCHITECTURE", student_architecture(base)], False),
        ("mimic, teacher every step", ["MODEL.MIMIC.TEACHER.CACHE_DIR", ""], False),
        ("mimic, filled teacher cache", ["MODEL.MIMIC.TEACHER.CACHE_DIR", cache_dir], True),
    ]
    for label, extra, cached in plans:
        cfg = get_config(args.config_file, opts + extra)
        if cached:
            if os.path.isdir(cache_dir):
                import shutil

                shutil.rmtree(cache_dir)  # a fresh cache: the fill time is measured
            model = Trainer.build_model(cfg)
            fill = fill_teacher_cache(cfg, model)
            fill["bytes_per_input"] = round(fill["bytes"] / max(fill["entries"], 1), 1)
            fill.update(projected_sizes(model, cfg))
            print(f"filled the teacher cache: {fill}", flush=True)
            del model
        times = time_steps(cfg, args.iters, args.warmup)[args.warmup :]
        rows.append(
            {
                "row": label,
                "config": _relative(args.config_file),
                "cache": cached,
                "s_per_iter": round(statistics.median(times), 5),
                "iters": args.iters,
                "warmup": args.warmup,
                "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
            }
        )
        print(f"{label}: {rows[-1]['s_per_iter']:.4f} s/iter", flush=True)
    scratch = rows[0]["s_per_iter"]
    for r in rows:
        r["ratio_vs_scratch"] = round(r["s_per_iter"] / scratch, 3)
    print("\n| row | s/iter (median) | vs scratch |\n|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['s_per_iter']:.4f} | {r['ratio_vs_scratch']:.2f}× |")
    print(f"\ncache fill: {fill}")
    if args.json:
        result = {
            "host": dict(host_info(), device=str(base.MODEL.DEVICE)),
            "preset": args.preset,
            "bench": args.bench,
            "overrides": list(args.opts),
            "random_teacher": random_teacher,
            "rows": rows,
            "cache_fill": fill,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
