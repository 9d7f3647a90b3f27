"""Statistics over seeds (mean ± std, Welch's t-test) and the markdown tables of results.json."""

import json
import os
import statistics
from typing import Dict, List, Sequence, Tuple

from ..errors import ConfigError, MissingFileError
from .benches import BENCHES, STAGES, split_run_name

__all__ = [
    "mean_std",
    "welch",
    "row_label",
    "aggregate",
    "results_markdown",
    "compare_markdown",
    "is_mimic_statistics",
    "statistics_markdown",
    "report",
]


def mean_std(values: Sequence[float]):
    """(mean, sample standard deviation (0 for one value), n)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan"), 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def welch(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float]:
    """Welch's t-test of two samples (seeds of two rows): (t, two-sided p); nan below 2 runs a side
    or when both samples are constant."""
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    from scipy import stats

    t, p = stats.ttest_ind(list(a), list(b), equal_var=False)
    return float(t), float(p)


def row_label(record: Dict) -> str:
    """A table row: the stage, plus ``init pretrained`` for a student started from a pretrained
    backbone and its overrides (last key component and value) when it has any."""
    opts = list(record.get("overrides") or [])
    pairs = [f"{k.split('.')[-1]} {v}" for k, v in zip(opts[::2], opts[1::2])]
    if record.get("init") == "pretrained":
        pairs.insert(0, "init pretrained")
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
    """results.md: one row per (stage, overrides), mean ± std over seeds, the paper's row beside."""
    spec = BENCHES[bench]
    metrics = spec["metrics"]
    agg = aggregate(records, metrics)
    stage_of = {row_label(r): r["stage"] for r in records}
    names = [m.split("/")[-1] for m in metrics]
    preset = records[0]["preset"] if records else ""
    device = records[0]["device"] if records else ""
    custom = spec["kind"] == "custom"
    # λ·L_m / L_det at the end of training, where the records hold it (mimic students)
    ratios = {}
    for r in records:
        if r.get("loss_ratio") is not None:
            ratios.setdefault(row_label(r), []).append(r["loss_ratio"])
    # the collapse guard's messages: runs of the row it fired on, of those whose mimic layer it saw
    guarded = {}
    for r in records:
        if "max_student_zero_fraction" in r:
            guarded.setdefault(row_label(r), []).append(r.get("collapse_warned_at") is not None)
    what = f"Your data ({bench.split('_', 1)[1]} family)" if custom else f"Synthetic {bench}"
    lines = [
        f"{what} benchmark, preset `{preset}`, {device}; mean ± std (sample) over n "
        "seeds; a single run shows its value alone (teacher stages run once); runs that diverged "
        "(Inf/NaN) have no metrics and are counted apart.",
        "",
        "| stage | n | "
        + " | ".join(names)
        + (" | λ·L_m / L_det" if ratios else "")
        + (" | guard fired" if guarded else "")
        + (" |" if custom else " | paper, real dataset |"),
        "|---|---|"
        + "---|" * (len(names) + bool(ratios) + bool(guarded))
        + ("" if custom else "---|"),
    ]
    for label, stats in agg.items():
        n = max(s[2] for s in stats.values())
        bad = sum(1 for r in records if row_label(r) == label and r.get("diverged"))
        n = f"{n} (+{bad} diverged)" if bad else n
        cells = [
            ("–" if not s[2] else f"{s[0]:.2f}" if s[2] == 1 else f"{s[0]:.2f} ± {s[1]:.2f}")
            for s in stats.values()
        ]
        if ratios:
            r = ratios.get(label)
            cells.append(f"{statistics.mean(r):.3g}" if r else "–")
        if guarded:
            g = guarded.get(label)
            cells.append(f"{sum(g)} of {len(g)}" if g else "–")
        paper = "" if custom else f" {spec['paper'][stage_of[label]]} |"
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |" + paper)
    return "\n".join(lines) + "\n"


def _verdict(diff: float, p: float, n: int, alpha: float, min_n: int) -> str:
    if n < min_n:
        return f"no claim (n < {min_n})"
    if p < alpha:
        return "A higher" if diff > 0 else "B higher"
    return "no difference"


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
            raise ConfigError(
                "--compare", f"no row {missing[0]!r}", f"name one of {sorted(labels)}"
            )
        runs = {x: [r for r in records if row_label(r) == x] for x in (a, b)}
        bench = runs[a][0]["bench"]
        if runs[b][0]["bench"] != bench:
            raise ConfigError(
                "--compare",
                f"{a!r} and {b!r} are rows of different benchmarks",
                "compare rows of one benchmark",
            )
        for m in BENCHES[bench]["metrics"]:
            va, vb = ([r["metrics"][m] for r in runs[x] if m in r["metrics"]] for x in (a, b))
            if not va and not vb:  # a metric neither row reports
                continue
            if not va or not vb:  # one row has no run with metrics (all diverged)
                lines.append(f"| {a} | {b} | {m.split('/')[-1]} | – | – | – | – | – | no runs |")
                continue
            t, pv = welch(va, vb)
            mean_a, mean_b = statistics.fmean(va), statistics.fmean(vb)
            verdict = _verdict(mean_a - mean_b, pv, min(len(va), len(vb)), alpha, min_n)
            lines.append(
                f"| {a} | {b} | {m.split('/')[-1]} | {mean_a:.2f} ({len(va)}) | "
                f"{mean_b:.2f} ({len(vb)}) | {mean_a - mean_b:+.2f} | {t:.2f} | "
                f"{'< 0.001' if pv < 0.001 else f'{pv:.3f}'} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


_STAT_KEYS = ("mean_mismatch_ratio", "teacher_zero_fraction", "ste_zero_grad_fraction")


def is_mimic_statistics(obj) -> bool:
    """Whether a loaded JSON file is a ``mimic_statistics.json`` of the diagnosis pass: a dict
    {run folder name: statistics of :func:`quant_mimic.diagnostics.collect_mimic_statistics`}."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(v, dict) and set(_STAT_KEYS) <= set(v) for v in obj.values())
    )


def statistics_markdown(stats: Dict[str, Dict]) -> str:
    """
    The Q diagnosis table (paper eq. 1-2 and 6, Fig. 5) of a ``mimic_statistics.json``: one row per
    student row, mean ± sample std over its seeds. A row is a run folder's stage
    (``quant_mimic_seed2`` -> ``quant_mimic``; a file merged from several pipeline folders keys its
    entries ``FOLDER/quant_mimic_seed2``) labelled like :func:`row_label` when the entry records its
    ``init`` and ``overrides`` (the pipeline writes both); percentiles of the RoI features before Q
    (teacher f_t, adapted student r(f_s)) are means over the seeds.
    """
    rows: Dict[str, List[Dict]] = {}
    for name, s in stats.items():
        stage, _ = split_run_name(name.rsplit("/", 1)[-1])
        rows.setdefault(row_label({**s, "stage": stage}), []).append(s)

    def pct(runs, side):
        p = [r[f"{side}_percentiles"] for r in runs]
        return " / ".join(f"{statistics.fmean(q[k] for q in p):.2f}" for k in ("p50", "p90", "p99"))

    def frac(runs, key):
        m, s, _ = mean_std([100.0 * r[key] for r in runs])
        return f"{m:.1f} ± {s:.1f} %"

    lines = [
        "Q diagnosis at the mimic layer (quant_mimic.diagnostics), mean ± sample std over n seeds; "
        "feature percentiles are of the RoI features before Q (means over the seeds).",
        "",
        "| row | n | Q teacher / student | teacher f_t p50 / p90 / p99 | student r(f_s) p50 / p90 "
        "/ p99 | Q(f_t) = 0 | Q(r(f_s)) = 0 | zero mimic gradient | mean Fig. 5 mismatch ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, runs in rows.items():
        q = "/".join(
            "on" if runs[0].get(f"quantize_{side}") else "off" for side in ("teacher", "student")
        )
        lines.append(
            f"| {label} | {len(runs)} | {q} | {pct(runs, 'teacher')} | {pct(runs, 'student')} | "
            f"{frac(runs, 'teacher_zero_fraction')} | {frac(runs, 'student_zero_fraction')} | "
            f"{frac(runs, 'ste_zero_grad_fraction')} | {frac(runs, 'mean_mismatch_ratio')} |"
        )
    return "\n".join(lines) + "\n"


def report(paths: Sequence[str], compare: Sequence[Sequence[str]] = ()) -> str:
    """The results.md table of committed ``results.json`` files (README tables are made so), and
    the Welch comparison of each ``compare`` pair of rows (:func:`compare_markdown`); a
    ``mimic_statistics.json`` of the diagnosis pass is printed as its table
    (:func:`statistics_markdown`)."""
    records, diagnosis = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise MissingFileError(path, "--report: no such file", "give a results.json")
        try:
            with open(path) as f:
                recs = json.load(f)
        except ValueError as e:
            raise ConfigError(path, f"--report: not JSON ({e})", "give a results.json") from None
        if is_mimic_statistics(recs):
            diagnosis.append(f"{path}:\n\n" + statistics_markdown(recs))
            continue
        if not isinstance(recs, list) or not all(
            isinstance(r, dict) and {"bench", "stage", "metrics"} <= set(r) for r in recs
        ):
            raise ConfigError(
                path,
                "is not a pipeline results.json (a list of records with bench, stage and "
                "metrics) or mimic_statistics.json",
                "other JSON files under results/ are read by the tools that wrote them",
            )
        records += recs
    benches = sorted({r["bench"] for r in records})
    text = "\n".join(results_markdown(b, [r for r in records if r["bench"] == b]) for b in benches)
    text = "\n".join(([text] if records else []) + diagnosis)
    return text + ("\n" + compare_markdown(records, compare) if compare else "")
