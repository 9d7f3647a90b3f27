"""results.json: one record per stage run, diverged runs, and the files a stage run leaves.

A record holds ``bench``, ``preset``, ``stage``, ``config`` (relative to the repository), ``seed``,
``iterations``, ``wall_s``, ``device``, ``metrics`` (the stage's ``final_metrics.json``) and
``overrides`` (the user's ``KEY VALUE`` list, which makes a row of its own), ``init`` ("random",
or "pretrained" for a student started from the pretrain stage's ``backbone.pth``, then also
``init_sha256``, that file's SHA-256; a stage folder's ``init.json`` keeps it); a stage that
calibrated its stride adds ``stride_calibration``; a mimic student adds ``loss_ratio``, its last
logged λ·L_m / L_det, ``lambda``, its last logged effective λ, and, where its mimic layer logs the
collapse guard's signal, ``max_student_zero_fraction`` (the largest logged fraction of exact zeros
at the mimic layer) and ``collapse_warned_at`` (the iteration of the guard's message in ``log.txt``,
None if it never fired); a student run that went to Inf/NaN adds
``diverged``, ``diverged_at_iter`` and ``error`` and has ``metrics`` {}.
"""

import json
import os
import re
from typing import Dict, List, Optional, Sequence

from ..collapse_guard import MESSAGE_PREFIX
from ..fileio import REPO_ROOT, atomic_write_text
from .benches import STAGES, TEACHER_STAGES, config_file

__all__ = [
    "FINAL_METRICS",
    "DIVERGED",
    "read_json",
    "is_done",
    "make_record",
    "diverged_record",
    "is_divergence",
    "divergence_message",
    "last_iteration",
    "collapse_warned_at",
    "training_series",
    "load_records",
    "sorted_records",
    "stage_init",
    "check_stage_init",
    "init_record",
]

FINAL_METRICS = "final_metrics.json"  # written by quant_mimic.engine.main into OUTPUT_DIR
INIT_FILE = "init.json"  # how a stage run started (random / pretrained + SHA-256), pipeline-written
DIVERGED = "DIVERGED"  # marker file in a stage folder whose training went to Inf/NaN


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def is_done(d: str) -> bool:
    """A stage run folder with ``model_final.pth`` and ``final_metrics.json``."""
    return all(os.path.isfile(os.path.join(d, f)) for f in ("model_final.pth", FINAL_METRICS))


def _calibration_record(d: str) -> Dict:
    """The stride computed from the teacher's statistics, where the stage calibrated one (ours)."""
    path = os.path.join(d, "stride_calibration.json")
    if not os.path.isfile(path):
        return {}
    rec = read_json(path)
    keys = ("stride", "percentile", "levels", "percentile_value", "num_images")
    return {"stride_calibration": {k: rec[k] for k in keys if k in rec}}


def stage_init(args, stage: str) -> Dict:
    """The ``init`` fields of a stage run the pipeline starts now: teachers train from random
    weights; students as ``args.init`` says."""
    if stage in TEACHER_STAGES or getattr(args, "init", "random") != "pretrained":
        return {"init": "random"}
    return {"init": "pretrained", "init_sha256": args.init_sha256}


def check_stage_init(args, stage: str, d: str) -> None:
    """A stage folder that started otherwise than this run asks is an error naming both (its
    results would be recorded under the wrong ``init``); a new folder gets ``init.json``."""
    want = stage_init(args, stage)
    path = os.path.join(d, INIT_FILE)
    if os.path.isfile(path):
        have = read_json(path)
        if have != want and not getattr(args, "force", False):
            raise RuntimeError(
                f"{d} started with {have}, this run asks {want}: use another --out, or --force "
                "to retrain it"
            )
        if have == want:
            return
    elif os.path.isdir(d) and os.listdir(d) and not getattr(args, "force", False):
        if want["init"] != "random":  # a folder from before init.json existed was random
            raise RuntimeError(f"{d} started from random weights, this run asks {want}")
        return
    os.makedirs(d, exist_ok=True)
    atomic_write_text(path, json.dumps(want) + "\n")


def init_record(d: str) -> Dict:
    """The ``init`` fields a stage folder started with (``init.json``; random before it existed)."""
    path = os.path.join(d, INIT_FILE)
    return read_json(path) if os.path.isfile(path) else {"init": "random"}


def make_record(args, stage, seed, iters, wall, device, d, metrics=None) -> Dict:
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
        "metrics": read_json(os.path.join(d, FINAL_METRICS)) if metrics is None else metrics,
        "overrides": list(args.opts),
        **init_record(d),
        **_calibration_record(d),
        **_mimic_record(d),
    }


def is_divergence(e: BaseException) -> bool:
    """detectron2's NaN/Inf guards raise FloatingPointError (a worker's arrives wrapped by
    torch.multiprocessing, its traceback in the message)."""
    return isinstance(e, FloatingPointError) or "FloatingPointError" in str(e)


def divergence_message(e: BaseException) -> str:
    """The guard's first line, e.g. "FloatingPointError: Loss became infinite or NaN at
    iteration=92!" (its loss_dict line and a worker's traceback left out)."""
    text = str(e)
    key = "FloatingPointError: "
    text = text[text.rindex(key) :] if key in text else f"{type(e).__name__}: {text}"
    return (text.strip().splitlines() or [""])[0][:300]


def _logged_lines(d: str):
    """The records a stage logged to its ``metrics.json``, one dict a line (bad lines skipped)."""
    path = os.path.join(d, "metrics.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def last_logged(d: str, key: str) -> Optional[float]:
    """The last value of ``key`` the stage logged to ``metrics.json`` (None if never)."""
    values = [r[key] for r in _logged_lines(d) if isinstance(r, dict) and key in r]
    return float(values[-1]) if values else None


GUARD_MESSAGE = re.compile(re.escape(MESSAGE_PREFIX) + r"(\d+)")


def collapse_warned_at(d: str) -> Optional[int]:
    """The iteration (1-based) of the collapse guard's first message in the stage's ``log.txt``
    (:mod:`quant_mimic.collapse_guard`), None if it never fired."""
    path = os.path.join(d, "log.txt")
    if not os.path.isfile(path):
        return None
    with open(path, errors="replace") as f:
        for line in f:
            m = GUARD_MESSAGE.search(line)
            if m:
                return int(m.group(1))
    return None


_MIMIC_LAST = (("loss_ratio", "mimic/loss_ratio"), ("lambda", "mimic/lambda"))


def _mimic_record(d: str) -> Dict:
    """What a mimic student logged (see the module docstring), in one pass over ``metrics.json``:
    its last λ·L_m / L_det and λ, and what the collapse guard saw; {} for other stages."""
    last, zeros = {}, []
    for r in _logged_lines(d):
        if not isinstance(r, dict):
            continue
        last.update({name: float(r[k]) for name, k in _MIMIC_LAST if k in r})
        if "mimic/student_zero_fraction" in r:
            zeros.append(float(r["mimic/student_zero_fraction"]))
    if zeros:
        last.update(max_student_zero_fraction=max(zeros), collapse_warned_at=collapse_warned_at(d))
    return last


def training_series(d: str, keys: Sequence[str]) -> Dict[str, List]:
    """What a stage logged to ``metrics.json`` over training: ``{"iteration": [...] (1-based),
    key: [...]}`` over the lines that hold any of ``keys``, None where a line lacks one
    (detectron2 logs every 20 iterations the median of the last 20 for smoothed scalars, e.g. the
    guard's ``mimic/student_zero_fraction``)."""
    lines = [
        r
        for r in _logged_lines(d)
        if isinstance(r, dict) and "iteration" in r and any(k in r for k in keys)
    ]
    series = {"iteration": [int(r["iteration"]) + 1 for r in lines]}
    series.update({k: [r.get(k) for r in lines] for k in keys})
    return series


def last_iteration(d: str) -> Optional[int]:
    """The last iteration the stage logged to ``metrics.json`` (1-based), None if it logged none."""
    last = last_logged(d, "iteration")
    return None if last is None else int(last) + 1


def diverged_record(args, stage, seed, iters, device, d, error=None) -> Dict:
    """The record of a student run that went to Inf/NaN: no metrics, ``diverged`` true, the last
    iteration it logged and detectron2's message; a ``DIVERGED`` marker keeps resume from retrying
    it (``--force`` does)."""
    marker = os.path.join(d, DIVERGED)
    if error is not None:
        os.makedirs(d, exist_ok=True)
        atomic_write_text(marker, divergence_message(error) + "\n")
    message = open(marker).read().strip() if os.path.isfile(marker) else ""
    record = make_record(args, stage, seed, iters, None, device, d, metrics={})
    return dict(record, diverged=True, diverged_at_iter=last_iteration(d), error=message)


def load_records(path: str) -> List[Dict]:
    """The records of a results.json (none if it does not exist); teacher stages get seed None,
    as they are keyed in memory."""
    if not os.path.isfile(path):
        return []
    recs = read_json(path)
    for r in recs:
        if r["stage"] in TEACHER_STAGES:
            r["seed"] = None
    return recs


def sorted_records(records: List[Dict]) -> List[Dict]:
    """Records as results.json stores them: in stage then seed order, a teacher's seed 0."""
    order = {s: i for i, s in enumerate(STAGES)}
    recs = sorted(records, key=lambda r: (order[r["stage"]], r["seed"] or 0))
    return [dict(r, seed=r["seed"] if r["seed"] is not None else 0) for r in recs]
