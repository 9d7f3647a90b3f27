#!/usr/bin/env python
"""
The paper's whole pipeline on a built-in synthetic benchmark, in one command, with seeds.

    python tools/run_pipeline.py --bench faces|voc --preset smoke|cpu|gpu --seeds K --out DIR \
        [--stages STAGE ...] [--force] [--num-gpus N] [KEY VALUE ...]

Stages, in order (paper §3, Tables 2-4 and 7-8):

    data                      the synthetic set (quant_mimic.data.synthetic), under DIR/datasets
    teacher                   full-precision teacher (stage 1)
    teacher_quantized         teacher finetuned with its feature map quantized (stage 2, eq. 1-2)
    scratch                   the tiny student alone
    mimic                     Li et al.'s mimic from the full-precision teacher (eq. 5)
    quant_mimic_teacher_only  Q on the teacher side only (Table 4, middle row)
    quant_mimic               Quantization Mimic, Q on both sides (eq. 6)

Every training stage runs ``train_net.py`` (Detectron2's ``DefaultTrainer`` through ``launch``) on
the benchmark's configs in ``configs/Synth``, with the preset's overrides, then the trainer's final
evaluation on the val split. Teacher stages run once; student stages once per seed (``SEED`` set).
A stage whose ``model_final.pth`` and ``final_metrics.json`` exist is skipped (``--force`` redoes
it); an interrupted stage resumes from its last checkpoint. The students mimic exactly the teacher
that was trained: ``MODEL.MIMIC.TEACHER.CONFIG_FILE`` is the teacher stage's dumped ``config.yaml``.

Writes into DIR: ``results.json`` (one record per run), ``results.md`` (mean ± std over seeds beside
the paper's rows), ``results.png`` (main metrics with error bars), ``mismatch.png`` (Fig. 5: per-RoI
mismatch ratio of the teacher-only and the quant-mimic students on the val split, by an evaluation
pass, see :func:`quant_mimic.diagnostics.collect_mimic_statistics`), ``mimic_statistics.json`` (the
Q diagnostics of every mimic student) and, for runs evaluated during training
(``TEST.EVAL_PERIOD``), ``learning_curves.png``.
Presets are yaml files in ``configs/Synth/presets`` (or a path to one).
"""

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
PRESET_DIR = os.path.join(REPO_ROOT, "configs", "Synth", "presets")
FINAL_METRICS = "final_metrics.json"  # written by train_net.py into OUTPUT_DIR

STAGES = (
    "data",
    "teacher",
    "teacher_quantized",
    "scratch",
    "scratch_quantized",
    "mimic",
    "quant_mimic_teacher_only",
    "quant_mimic",
)
# Run only when named in --stages: Table 5's control (the student alone with its output quantized).
OPTIONAL_STAGES = ("scratch_quantized",)
DEFAULT_STAGES = tuple(s for s in STAGES if s not in OPTIONAL_STAGES)
TEACHER_STAGES = ("teacher", "teacher_quantized")
# Student stages and the teacher stage they learn from (None: no teacher).
STUDENT_TEACHER = {
    "scratch": None,
    "scratch_quantized": None,
    "mimic": "teacher",
    "quant_mimic_teacher_only": "teacher_quantized",
    "quant_mimic": "teacher_quantized",
}

# Each benchmark: the config of every stage (configs/Synth), its data, its main metrics, and the
# paper's corresponding rows (real datasets: WIDER FACE val Tables 2-4, Pascal VOC 2007 Table 7-8).
BENCHES = {
    "faces": {
        "kind": "faces",
        "data_dir": "synth/widerface",
        "configs": {
            "teacher": "rfcn_VGG-1-4_teacher.yaml",
            "teacher_quantized": "rfcn_VGG-1-4_teacher_quantized.yaml",
            "scratch": "rfcn_VGG-1-32_scratch.yaml",
            "scratch_quantized": "rfcn_VGG-1-32_scratch_quantized.yaml",
            "mimic": "rfcn_VGG-1-32_mimic.yaml",
            "quant_mimic_teacher_only": "rfcn_VGG-1-32_quant_mimic_teacher_only.yaml",
            "quant_mimic": "rfcn_VGG-1-32_quant_mimic.yaml",
        },
        "metrics": ("widerface/AP_easy", "widerface/AP_medium", "widerface/AP_hard"),
        "paper": {
            "teacher": "82.4 / 62.5 / 26.3 (VGG-1-4, Table 2)",
            "teacher_quantized": "83.7 / 65.0 / 27.4 (Table 2)",
            "scratch": "71.3 / 55.4 / 23.8 (VGG-1-32, Table 2)",
            "scratch_quantized": "71.9 / 55.2 / 23.7 (Table 5)",
            "mimic": "71.9 / 58.2 / 25.6 (Table 3-4)",
            "quant_mimic_teacher_only": "73.0 / 59.3 / 25.6 (Table 4)",
            "quant_mimic": "73.9 / 62.1 / 27.6 (Table 2-4)",
        },
    },
    "voc": {
        "kind": "voc",
        "data_dir": "synth/VOC2007",
        "configs": {
            "teacher": "faster_rcnn_R18_C4_teacher.yaml",
            "teacher_quantized": "faster_rcnn_R18_C4_teacher_quantized.yaml",
            "scratch": "faster_rcnn_R18-1-16_C4_scratch.yaml",
            "scratch_quantized": "faster_rcnn_R18-1-16_C4_scratch_quantized.yaml",
            "mimic": "faster_rcnn_R18-1-16_C4_mimic.yaml",
            "quant_mimic_teacher_only": "faster_rcnn_R18-1-16_C4_quant_mimic_teacher_only.yaml",
            "quant_mimic": "faster_rcnn_R18-1-16_C4_quant_mimic.yaml",
        },
        "metrics": ("bbox/AP50", "bbox/AP"),
        "paper": {
            "teacher": "72.9 mAP (ResNet18, Table 7)",
            "teacher_quantized": "73.3 (Table 7)",
            "scratch": "40.5 (ResNet18-1-16, Table 7)",
            "scratch_quantized": "not in the paper (Table 5 is faces only)",
            "mimic": "44.6 (Table 8)",
            "quant_mimic_teacher_only": "not in the paper",
            "quant_mimic": "47.0 (Table 7-8)",
        },
    },
}


# -------------------------------------------------------------------------------------------------
# Presets and command lines
# -------------------------------------------------------------------------------------------------
def load_preset(name: str, bench: str) -> Dict:
    """
    The preset's section for ``bench``: ``data`` (generator arguments), ``opts`` (every stage),
    ``teacher`` / ``teacher_quantized`` / ``student`` (per stage kind), each a {KEY: value} dict.
    """
    path = name if name.endswith((".yaml", ".yml")) else os.path.join(PRESET_DIR, name + ".yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Preset {name!r} not found (looked for {path})")
    with open(path) as f:
        preset = yaml.safe_load(f) or {}
    if bench not in preset:
        raise KeyError(f"Preset {path} has no section for bench {bench!r}")
    section = preset[bench]
    unknown = set(section) - {"data", "opts", "teacher", "teacher_quantized", "student"}
    if unknown:
        raise KeyError(f"Preset {path}, bench {bench}: unknown sections {sorted(unknown)}")
    return section


def _opt_value(value) -> str:
    """A yaml value as a detectron2 command-line value (yacs parses it with literal_eval)."""
    if isinstance(value, (list, tuple)):
        return "(" + "".join(f"{_opt_value(v)}, " for v in value) + ")"
    if isinstance(value, bool):
        return str(value)
    return str(value) if not isinstance(value, str) else value


def dict_opts(d: Optional[Dict]) -> List[str]:
    out = []
    for k, v in (d or {}).items():
        out += [k, _opt_value(v)]
    return out


def stage_kind(stage: str) -> str:
    return stage if stage in TEACHER_STAGES else "student"


def stage_dir(out: str, stage: str, seed: Optional[int]) -> str:
    return os.path.join(out, stage if seed is None else f"{stage}_seed{seed}")


def split_run_name(name: str) -> Tuple[str, Optional[int]]:
    """A stage run folder's name as (stage, seed): ``"mimic_seed2"`` -> ("mimic", 2); the inverse of
    :func:`stage_dir`; a teacher stage's folder has no seed: ``"teacher"`` -> ("teacher", None)."""
    stage, sep, seed = name.rpartition("_seed")
    if sep and seed.isdigit():
        return stage, int(seed)
    return name, None


def stage_opts(
    bench: str, preset: Dict, out: str, stage: str, seed: Optional[int], extra: Sequence[str]
) -> List[str]:
    """The KEY VALUE overrides of one stage run (preset, wiring between stages, user's extra)."""
    opts = dict_opts(preset.get("opts")) + dict_opts(preset.get(stage_kind(stage)))
    if stage == "teacher_quantized":
        opts += ["MODEL.WEIGHTS", os.path.join(stage_dir(out, "teacher", None), "model_final.pth")]
    teacher = STUDENT_TEACHER.get(stage)
    if teacher:
        tdir = stage_dir(out, teacher, None)
        opts += [
            "MODEL.MIMIC.TEACHER.CONFIG_FILE",
            os.path.join(tdir, "config.yaml"),
            "MODEL.MIMIC.TEACHER.WEIGHTS",
            os.path.join(tdir, "model_final.pth"),
        ]
    opts += ["SEED", str(seed if seed is not None else preset.get("teacher_seed", 0))]
    opts += ["OUTPUT_DIR", stage_dir(out, stage, seed)]
    return opts + list(extra)


def _max_iter(bench: str, preset: Dict, stage: str, extra: Sequence[str]) -> int:
    """SOLVER.MAX_ITER of a stage: the user's override, else the preset's, else its config's."""
    opts = dict_opts(preset.get("opts")) + dict_opts(preset.get(stage_kind(stage))) + list(extra)
    value = _opt_lookup(opts, "SOLVER.MAX_ITER")
    if value is None:
        from detectron2.config import get_cfg

        from quant_mimic import add_quantmimic_config

        cfg = get_cfg()
        add_quantmimic_config(cfg)
        cfg.merge_from_file(config_file(bench, stage))
        value = cfg.SOLVER.MAX_ITER
    return int(value)


def config_file(bench: str, stage: str) -> str:
    return os.path.join(REPO_ROOT, "configs", "Synth", BENCHES[bench]["configs"][stage])


def _opt_lookup(opts: Sequence[str], key: str, default=None):
    value = default
    for k, v in zip(opts[::2], opts[1::2]):
        if k == key:
            value = v
    return value


# -------------------------------------------------------------------------------------------------
# Results: aggregation and reports
# -------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]):
    """(mean, sample standard deviation (0 for one value), n)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan"), 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def row_label(record: Dict) -> str:
    """A table row: the stage, plus its overrides (last key component and value) when it has any."""
    opts = list(record.get("overrides") or [])
    pairs = [f"{k.split('.')[-1]} {v}" for k, v in zip(opts[::2], opts[1::2])]
    return record["stage"] + (f" ({', '.join(pairs)})" if pairs else "")


def aggregate(records: List[Dict], metrics: Sequence[str]) -> Dict[str, Dict[str, tuple]]:
    """
    {row: {metric: (mean, std, n)}} over the records (seeds) of each row, in stage order. A row is a
    stage with one set of overrides (:func:`row_label`): runs of a stage at another λ or stride
    are rows of their own, never pooled.
    """
    out = {}
    for stage in STAGES:
        rows = [r for r in records if r["stage"] == stage]
        for label in dict.fromkeys(row_label(r) for r in rows):
            runs = [r for r in rows if row_label(r) == label]
            out[label] = {
                m: mean_std([r["metrics"][m] for r in runs if m in r["metrics"]]) for m in metrics
            }
    return out


def results_markdown(bench: str, records: List[Dict]) -> str:
    spec = BENCHES[bench]
    metrics = spec["metrics"]
    agg = aggregate(records, metrics)
    stage_of = {row_label(r): r["stage"] for r in records}
    names = [m.split("/")[-1] for m in metrics]
    preset = records[0]["preset"] if records else ""
    device = records[0]["device"] if records else ""
    lines = [
        f"Synthetic {bench} benchmark, preset `{preset}`, {device}; mean ± std (sample) over n "
        "seeds; a single run shows its value alone (teacher stages run once); runs that diverged "
        "(Inf/NaN) have no metrics and are counted apart.",
        "",
        "| stage | n | " + " | ".join(names) + " | paper, real dataset |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for label, stats in agg.items():
        n = max(s[2] for s in stats.values())
        bad = sum(1 for r in records if row_label(r) == label and r.get("diverged"))
        n = f"{n} (+{bad} diverged)" if bad else n
        cells = [
            ("–" if not s[2] else f"{s[0]:.2f}" if s[2] == 1 else f"{s[0]:.2f} ± {s[1]:.2f}")
            for s in stats.values()
        ]
        paper = spec["paper"][stage_of[label]]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + f" | {paper} |")
    return "\n".join(lines) + "\n"


def welch(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float]:
    """Welch's t-test of two samples (seeds of two rows): (t, two-sided p); nan below 2 runs a side
    or when both samples are constant."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    from scipy import stats

    t, p = stats.ttest_ind(list(a), list(b), equal_var=False)
    return float(t), float(p)


def compare_markdown(
    records: List[Dict], pairs: Sequence[Sequence[str]], alpha: float = 0.05, min_n: int = 3
) -> str:
    """
    Row A against row B (labels of :func:`row_label`) on every metric of their benchmark: means,
    difference, Welch's t and p over the seeds, and the verdict this project's README uses: a
    difference counts only with ``min_n`` runs or more a side and p < ``alpha``; otherwise "no
    difference" (enough runs, p ≥ alpha) or "no claim" (too few runs).
    """
    labels = {row_label(r) for r in records}
    lines = [
        f"Welch's t-test over seeds; a difference counts with n ≥ {min_n} a side and p < {alpha}.",
        "",
        "| A | B | metric | A mean (n) | B mean (n) | A − B | t | p | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a, b in pairs:
        missing = [x for x in (a, b) if x not in labels]
        if missing:
            raise ValueError(f"no row {missing[0]!r}; rows: {sorted(labels)}")
        runs = {x: [r for r in records if row_label(r) == x] for x in (a, b)}
        bench = runs[a][0]["bench"]
        if runs[b][0]["bench"] != bench:
            raise ValueError(f"{a!r} and {b!r} are rows of different benchmarks")
        for m in BENCHES[bench]["metrics"]:
            va, vb = ([r["metrics"][m] for r in runs[x] if m in r["metrics"]] for x in (a, b))
            if not va and not vb:  # a metric neither row reports
                continue
            if not va or not vb:  # one row has no run with metrics (all diverged)
                lines.append(f"| {a} | {b} | {m.split('/')[-1]} | – | – | – | – | – | no runs |")
                continue
            t, pv = welch(va, vb)
            diff = statistics.fmean(va) - statistics.fmean(vb)
            if min(len(va), len(vb)) < min_n:
                verdict = f"no claim (n < {min_n})"
            elif pv < alpha:
                verdict = "A higher" if diff > 0 else "B higher"
            else:
                verdict = "no difference"
            lines.append(
                f"| {a} | {b} | {m.split('/')[-1]} | {statistics.fmean(va):.2f} ({len(va)}) | "
                f"{statistics.fmean(vb):.2f} ({len(vb)}) | {diff:+.2f} | {t:.2f} | "
                f"{'< 0.001' if pv < 0.001 else f'{pv:.3f}'} | "
                f"{verdict} |"
            )
    return "\n".join(lines) + "\n"


def plot_results(bench: str, records: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = BENCHES[bench]["metrics"]
    agg = aggregate(records, metrics)
    stages = list(agg)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(stages)), 4))
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(stages))]
        ys = [agg[s][m][0] for s in stages]
        err = [agg[s][m][1] for s in stages]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=m.split("/")[-1])
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels([s.replace("quant_mimic_", "qm_") for s in stages], rotation=20)
    n = max((agg[s][metrics[0]][2] for s in stages), default=0)
    ax.set_ylabel("AP (%)")
    ax.set_title(f"Synthetic {bench}: mean ± std over up to {n} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def learning_curve(stage_dir_: str, metric: str) -> List[tuple]:
    """(iteration, value) of every evaluation of ``metric`` logged in the stage's metrics.json."""
    path = os.path.join(stage_dir_, "metrics.json")
    points = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if metric in row:
                    points.append((int(row["iteration"]) + 1, float(row[metric])))
    return points


def plot_learning_curves(bench: str, out: str, path: str) -> bool:
    """Val metrics against iterations for every stage run evaluated more than once
    (``TEST.EVAL_PERIOD`` > 0); False if there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = BENCHES[bench]["metrics"]
    runs = sorted(d for d in os.listdir(out) if os.path.isfile(os.path.join(out, d, FINAL_METRICS)))
    curves = {d: [learning_curve(os.path.join(out, d), m) for m in metrics] for d in runs}
    curves = {d: c for d, c in curves.items() if len(c[0]) > 1}
    if not curves:
        return False
    names = {d: split_run_name(d) for d in curves}
    stages = list(dict.fromkeys(stage for stage, _ in names.values()))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, m, j in zip(axes[0], metrics, range(len(metrics))):
        for d, c in curves.items():  # one colour per stage, one line style per seed
            stage, seed = names[d]
            style = ("-", "--", ":", "-.")[(seed or 0) % 4]
            color = f"C{stages.index(stage) % 10}"
            xy = ([p[0] for p in c[j]], [p[1] for p in c[j]])
            ax.plot(*xy, marker="o", markersize=3, color=color, linestyle=style, label=d)
        ax.set_xlabel("iteration")
        ax.set_ylabel(m)
        ax.legend(fontsize=7)
    fig.suptitle(f"Synthetic {bench}: val AP during training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_mismatch(ratios: Dict[str, List[float]], threshold: float, path: str) -> None:
    """Fig. 5: cumulative fraction of RoIs whose mismatch ratio is at most x, per student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in ratios.items():
        v = np.sort(np.asarray(values))
        if len(v):
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{label} ({len(v)} RoIs)")
    ax.set_xlabel(f"mismatch ratio (fraction of RoI entries with |f_t - f_s| > {threshold})")
    ax.set_ylabel("fraction of RoIs with at most this ratio")
    ax.set_title("Fig. 5 on the val split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------
# Running
# -------------------------------------------------------------------------------------------------
def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Overall ETA from the measured seconds per iteration of each stage kind."""

    def __init__(self, runs: List[tuple]):
        self.runs = runs  # (stage, seed, iterations)
        self.sec_per_iter: Dict[str, float] = {}

    def record(self, stage: str, iterations: int, wall_s: float) -> None:
        if iterations > 0 and wall_s > 0:
            self.sec_per_iter[stage_kind(stage)] = wall_s / iterations

    def eta(self, start_index: int) -> str:
        if not self.sec_per_iter:
            return "ETA: measuring"
        fallback = max(self.sec_per_iter.values())
        total = sum(
            it * self.sec_per_iter.get(stage_kind(st), fallback)
            for st, _, it in self.runs[start_index:]
            if st != "data"
        )
        return f"ETA {_fmt_s(total)}"


def _device_name(num_gpus: int) -> str:
    import torch

    if torch.cuda.is_available() and num_gpus > 0:
        return f"{num_gpus} × {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _is_done(d: str) -> bool:
    return all(os.path.isfile(os.path.join(d, f)) for f in ("model_final.pth", FINAL_METRICS))


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def data_root(bench: str, out: str) -> str:
    """The benchmark's synthetic data folder under run folder ``out`` (``DETECTRON2_DATASETS``
    is ``out/datasets``)."""
    return os.path.join(out, "datasets", BENCHES[bench]["data_dir"])


def generate_data(bench: str, preset: Dict, out: str, force: bool) -> str:
    from quant_mimic.data.synthetic import generate_faces, generate_voc

    root = data_root(bench, out)
    if os.path.isdir(root) and not force:
        return f"skip: {root} exists"
    d = dict(preset.get("data") or {})
    size = (int(d.pop("height", 192)), int(d.pop("width", 256)))
    kw = {"seed": int(d.pop("seed", 0)), "size": size}
    if BENCHES[bench]["kind"] == "faces":
        from quant_mimic.data.synthetic import FaceStyle

        style = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("style", {}).items()}
        fn, kw["style"] = generate_faces, FaceStyle(**style)
    else:
        fn = generate_voc
    fn(root, int(d.pop("num_train")), int(d.pop("num_val")), **kw)
    if d:
        raise KeyError(f"Unknown data keys in the preset: {sorted(d)}")
    return f"wrote {root}"


def _train_net():
    """The repository's train_net.py as a module (one training code path for every stage)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quant_mimic_train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _StageLogs:
    """Detaches, after a stage, the log handlers detectron2's setup added for its OUTPUT_DIR."""

    NAMES = ("detectron2", "fvcore", "d2", "quant_mimic")

    def __enter__(self):
        import logging

        self.before = {n: list(logging.getLogger(n).handlers) for n in self.NAMES}
        return self

    def __exit__(self, *exc):
        import logging

        from detectron2.utils.logger import setup_logger

        for n, old in self.before.items():
            logger = logging.getLogger(n)
            for h in [h for h in logger.handlers if h not in old]:
                logger.removeHandler(h)
                h.close()
        setup_logger.cache_clear()  # a later stage with the same OUTPUT_DIR gets its handlers again
        return False


def train_stage(cfg_file: str, opts: List[str], num_gpus: int) -> None:
    """``train_net.py --config-file CFG --resume --num-gpus N OPTS`` through detectron2's launch."""
    from detectron2.engine import launch

    train_net = _train_net()
    argv = ["--config-file", cfg_file, "--num-gpus", str(num_gpus), "--resume"] + list(opts)
    args = train_net.build_parser().parse_args(argv)
    with _StageLogs():
        launch(
            train_net.main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )


def plan_stages(requested: Optional[Sequence[str]], data_root: str) -> List[str]:
    """
    The stages to run, in pipeline order: ``requested`` (None: :data:`DEFAULT_STAGES`), with
    ``data`` added when a training stage is asked for and ``data_root`` does not exist yet (the
    data is deterministic from the preset, so ``--stages teacher`` on a fresh folder makes it).
    """
    stages = [s for s in STAGES if s in (requested or DEFAULT_STAGES)]
    if stages and "data" not in stages and not os.path.isdir(data_root):
        stages.insert(0, "data")
    return stages


def run(args) -> List[Dict]:
    bench, out = args.bench, os.path.abspath(args.out)
    preset = load_preset(args.preset, bench)
    os.makedirs(out, exist_ok=True)
    # Every stage (this process and any worker it spawns) reads the data under DIR/datasets.
    os.environ["DETECTRON2_DATASETS"] = os.path.join(out, "datasets")
    from quant_mimic.data import register_all_quantmimic_datasets

    register_all_quantmimic_datasets(os.environ["DETECTRON2_DATASETS"], replace=True)
    stages = plan_stages(args.stages, data_root(bench, out))
    seeds = list(range(args.seeds))
    runs = []
    for stage in stages:
        if stage == "data":
            runs.append((stage, None, 0))
            continue
        its = _max_iter(bench, preset, stage, args.opts)
        for seed in [None] if stage in TEACHER_STAGES else seeds:
            runs.append((stage, seed, its))
    progress = Progress(runs)
    results_path = os.path.join(out, "results.json")
    records = {(r["stage"], r["seed"]): r for r in _load_records(results_path)}
    device = _device_name(args.num_gpus)
    t0 = time.time()
    for k, (stage, seed, iters) in enumerate(runs, 1):
        label = f"[{k}/{len(runs)}] {stage}" + (f" (seed {seed})" if seed is not None else "")
        if stage == "data":
            print(f"{label}: {generate_data(bench, preset, out, args.force)}", flush=True)
            continue
        d = stage_dir(out, stage, seed)
        if os.path.isfile(os.path.join(d, DIVERGED)) and not args.force:
            print(f"{label}: skip, diverged ({d}/{DIVERGED}; --force to retry)", flush=True)
            if (stage, seed) not in records:
                records[(stage, seed)] = _diverged_record(args, stage, seed, iters, device, d)
            continue
        if _is_done(d) and not args.force:
            print(f"{label}: skip, done ({d})", flush=True)
            if (stage, seed) not in records:  # finished, but recorded by no earlier invocation
                records[(stage, seed)] = _record(args, stage, seed, iters, None, device, d)
            if records[(stage, seed)].get("wall_s"):  # the ETA learns from earlier invocations
                progress.record(stage, iters, records[(stage, seed)]["wall_s"])
            continue
        if args.force and os.path.isdir(d):
            import shutil

            shutil.rmtree(d)
        print(f"{label}: {iters} iterations … {progress.eta(k - 1)} (log {d}/log.txt)", flush=True)
        opts = stage_opts(bench, preset, out, stage, seed, args.opts)
        start = time.time()
        try:
            train_stage(config_file(bench, stage), opts, args.num_gpus)
        except Exception as e:  # a student's NaN is a result (recorded); anything else is a bug
            if stage in TEACHER_STAGES or not _is_divergence(e):
                raise
            records[(stage, seed)] = _diverged_record(args, stage, seed, iters, device, d, e)
            _save(out, bench, list(records.values()))
            print(f"{label}: DIVERGED at iteration {_last_iteration(d)} (recorded)", flush=True)
            continue
        wall = time.time() - start
        progress.record(stage, iters, wall)
        records[(stage, seed)] = _record(args, stage, seed, iters, wall, device, d)
        _save(out, bench, list(records.values()))
        main = ", ".join(
            f"{m.split('/')[-1]} {records[(stage, seed)]['metrics'].get(m, float('nan')):.2f}"
            for m in BENCHES[bench]["metrics"]
        )
        print(f"{label}: done in {_fmt_s(wall)}: {main}", flush=True)
    recs = list(records.values())
    diverged = [f"{r['stage']} seed {r['seed']}" for r in recs if r.get("diverged")]
    if diverged:
        print(f"{len(diverged)} run(s) diverged, recorded without metrics: {diverged}", flush=True)
    if recs:
        _save(out, bench, recs)
        if not args.no_mismatch:
            _mismatch(args, bench, preset, out)
        plot_learning_curves(bench, out, os.path.join(out, "learning_curves.png"))
    print(f"Pipeline finished in {_fmt_s(time.time() - t0)}; results in {out}", flush=True)
    return recs


def _record(args, stage, seed, iters, wall, device, d, metrics=None) -> Dict:
    """One results.json record; ``wall`` is None for a finished stage found without a record;
    ``metrics`` (default: the stage's ``final_metrics.json``) is {} for a diverged run."""
    return {
        "bench": args.bench,
        "preset": args.preset,
        "stage": stage,
        "config": os.path.relpath(config_file(args.bench, stage), REPO_ROOT),
        "seed": seed if seed is not None else 0,
        "iterations": iters,
        "wall_s": round(wall, 1) if wall is not None else None,
        "device": device,
        "metrics": _read_json(os.path.join(d, FINAL_METRICS)) if metrics is None else metrics,
        "overrides": list(args.opts),
        **_calibration_record(d),
    }


DIVERGED = "DIVERGED"  # marker file in a stage folder whose training went to Inf/NaN


def _is_divergence(e: BaseException) -> bool:
    """detectron2's NaN/Inf guards raise FloatingPointError (a worker's arrives wrapped by
    torch.multiprocessing, its traceback in the message)."""
    return isinstance(e, FloatingPointError) or "FloatingPointError" in str(e)


def _divergence_message(e: BaseException) -> str:
    """The guard's first line, e.g. "FloatingPointError: Loss became infinite or NaN at
    iteration=92!" (its loss_dict line and a worker's traceback left out)."""
    text = str(e)
    key = "FloatingPointError: "
    text = text[text.rindex(key) :] if key in text else f"{type(e).__name__}: {text}"
    return (text.strip().splitlines() or [""])[0][:300]


def _last_iteration(d: str) -> Optional[int]:
    """The last iteration the stage logged to ``metrics.json`` (1-based), None if it logged none."""
    last = None
    path = os.path.join(d, "metrics.json")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    last = int(json.loads(line)["iteration"]) + 1
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
    return last


def _diverged_record(args, stage, seed, iters, device, d, error=None) -> Dict:
    """The record of a student run that went to Inf/NaN: no metrics, ``diverged`` true, the last
    iteration it logged and detectron2's message; a ``DIVERGED`` marker keeps resume from retrying
    it (``--force`` does)."""
    marker = os.path.join(d, DIVERGED)
    if error is not None:
        os.makedirs(d, exist_ok=True)
        _write_atomic(marker, _divergence_message(error) + "\n")
    message = open(marker).read().strip() if os.path.isfile(marker) else ""
    record = _record(args, stage, seed, iters, None, device, d, metrics={})
    return dict(record, diverged=True, diverged_at_iter=_last_iteration(d), error=message)


def _calibration_record(d: str) -> Dict:
    """The stride computed from the teacher's statistics, where the stage calibrated one (ours)."""
    path = os.path.join(d, "stride_calibration.json")
    if not os.path.isfile(path):
        return {}
    rec = _read_json(path)
    keys = ("stride", "percentile", "levels", "percentile_value", "num_images")
    return {"stride_calibration": {k: rec[k] for k in keys if k in rec}}


def _load_records(path: str) -> List[Dict]:
    if not os.path.isfile(path):
        return []
    recs = _read_json(path)
    for r in recs:  # teacher stages are keyed by seed None in memory
        if r["stage"] in TEACHER_STAGES:
            r["seed"] = None
    return recs


def _save(out: str, bench: str, records: List[Dict]) -> None:
    order = {s: i for i, s in enumerate(STAGES)}
    recs = sorted(records, key=lambda r: (order[r["stage"]], r["seed"] or 0))
    dumped = [dict(r, seed=r["seed"] if r["seed"] is not None else 0) for r in recs]
    _write_atomic(os.path.join(out, "results.json"), json.dumps(dumped, indent=2) + "\n")
    _write_atomic(os.path.join(out, "results.md"), results_markdown(bench, dumped))
    plot_results(bench, dumped, os.path.join(out, "results.png"))


FIG5_STAGES = ("quant_mimic_teacher_only", "quant_mimic")  # the students Fig. 5 compares


def _mismatch(args, bench: str, preset: Dict, out: str) -> None:
    """
    Evaluation pass over every mimic student (each seed) on the val split: Fig. 5 of the
    teacher-only and quant-mimic students to ``mismatch.png``, and the Q diagnostics of every
    student (the Li et al. student's teacher side is the full-precision teacher's RoI features
    before Q) to ``mimic_statistics.json``.
    """
    from quant_mimic.diagnostics import collect_mimic_statistics

    ratios, summary = {}, {}
    threshold = None
    for stage in ("mimic",) + FIG5_STAGES:
        per_stage = []
        for seed in range(args.seeds):
            d = stage_dir(out, stage, seed)
            if not _is_done(d):
                continue
            opts = stage_opts(bench, preset, out, stage, seed, args.opts)
            opts += ["MODEL.WEIGHTS", os.path.join(d, "model_final.pth")]
            stats = collect_mimic_statistics(config_file(bench, stage), opts)
            per_stage.extend(stats.pop("roi_mismatch_ratio"))
            threshold = stats["mismatch_threshold"]
            summary[f"{stage}_seed{seed}"] = stats
        if per_stage and stage in FIG5_STAGES:
            ratios[stage] = per_stage
    if ratios:
        plot_mismatch(ratios, threshold, os.path.join(out, "mismatch.png"))
    if summary:
        _write_atomic(
            os.path.join(out, "mimic_statistics.json"), json.dumps(summary, indent=2) + "\n"
        )


def report(paths: Sequence[str], compare: Sequence[Sequence[str]] = ()) -> str:
    """The results.md table of committed ``results.json`` files (README tables are made so), and
    the Welch comparison of each ``compare`` pair of rows (:func:`compare_markdown`)."""
    records = [r for path in paths for r in _read_json(path)]
    benches = sorted({r["bench"] for r in records})
    text = "\n".join(results_markdown(b, [r for r in records if r["bench"] == b]) for b in benches)
    return text + ("\n" + compare_markdown(records, compare) if compare else "")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument(
        "--report",
        nargs="+",
        metavar="RESULTS_JSON",
        help="only print the table of these results.json files (no training)",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        action="append",
        default=[],
        metavar=("ROW_A", "ROW_B"),
        help="with --report: Welch's t-test of two rows, labelled as in the table "
        "(e.g. 'quant_mimic' 'mimic'); repeatable",
    )
    p.add_argument("--bench", choices=sorted(BENCHES))
    p.add_argument("--preset", help="smoke | cpu | gpu, or a preset yaml file")
    p.add_argument("--seeds", type=int, default=1, help="runs of every student stage (SEED 0..K-1)")
    p.add_argument("--out", help="output folder")
    p.add_argument(
        "--stages",
        nargs="+",
        metavar="STAGE",
        help=f"default: {DEFAULT_STAGES}; optional: {OPTIONAL_STAGES}",
    )
    p.add_argument("--force", action="store_true", help="redo the selected stages")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per stage (train_net.py)")
    p.add_argument("--no-mismatch", action="store_true", help="skip the Fig. 5 evaluation pass")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every stage")
    args = p.parse_args(argv)
    if args.compare and not args.report:
        p.error("--compare needs --report")
    if args.report:
        return args
    for name in ("bench", "preset", "out"):
        if getattr(args, name) is None:
            p.error(f"--{name} is required")
    if args.stages:  # "--stages a b KEY VALUE ...": the stage names end where the overrides begin
        n = next((i for i, x in enumerate(args.stages) if x not in STAGES), len(args.stages))
        if n == 0:
            p.error(f"--stages: unknown stage {args.stages[0]!r}; choose from {STAGES}")
        args.opts = args.stages[n:] + list(args.opts)
        args.stages = args.stages[:n]
    if args.seeds < 1:
        p.error("--seeds must be ≥ 1")
    if len(args.opts) % 2:
        p.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        try:
            print(report(args.report, args.compare))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
