"""The pipeline's figures: results (mean bar, one point per seed), learning curves, Fig. 5."""

import json
import os
from typing import Dict, List

from .benches import BENCHES, is_custom, split_run_name
from .records import FINAL_METRICS
from .tables import aggregate, row_label

__all__ = ["plot_results", "learning_curve", "plot_learning_curves", "plot_mismatch"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bench_title(bench: str) -> str:
    """ "Synthetic faces" for a built-in bench, "Your data (c4 family)" for a run on your data."""
    if is_custom(bench):
        return f"Your data ({bench.split('_', 1)[1]} family)"
    return f"Synthetic {bench}"


def plot_results(bench: str, records: List[Dict], path: str) -> None:
    """
    One group of bars per row (stage + overrides), one bar per main metric: the bar is the mean
    over seeds and every seed is a point on it (an error bar of ± std would cross 0 for rows with
    dead seeds and misread); diverged runs, which have no metrics, are not drawn.
    """
    plt = _pyplot()
    metrics = BENCHES[bench]["metrics"]
    agg = aggregate(records, metrics)
    rows = list(agg)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4))
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        ys = [agg[r][m][0] if agg[r][m][2] else 0.0 for r in rows]
        ax.bar(xs, ys, width, alpha=0.6, color=f"C{j}", label=m.split("/")[-1])
        for x, row in zip(xs, rows):
            seeds = [r["metrics"][m] for r in records if row_label(r) == row and m in r["metrics"]]
            offsets = [
                (k - (len(seeds) - 1) / 2) * width / (len(seeds) + 2) for k in range(len(seeds))
            ]
            ax.plot([x + o for o in offsets], seeds, "o", color="k", markersize=3, zorder=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([s.replace("quant_mimic_", "qm_") for s in rows], rotation=20, ha="right")
    n = max((agg[s][metrics[0]][2] for s in rows), default=0)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{bench_title(bench)}: mean (bar) and each seed (point), up to {n} seeds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
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
    metrics = BENCHES[bench]["metrics"]
    runs = sorted(d for d in os.listdir(out) if os.path.isfile(os.path.join(out, d, FINAL_METRICS)))
    curves = {d: [learning_curve(os.path.join(out, d), m) for m in metrics] for d in runs}
    curves = {d: c for d, c in curves.items() if len(c[0]) > 1}
    if not curves:
        return False
    plt = _pyplot()
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
    fig.suptitle(f"{bench_title(bench)}: val AP during training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_mismatch(ratios: Dict[str, List[float]], threshold: float, path: str) -> None:
    """Fig. 5: cumulative fraction of RoIs whose mismatch ratio is at most x, per student."""
    import numpy as np

    plt = _pyplot()
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
