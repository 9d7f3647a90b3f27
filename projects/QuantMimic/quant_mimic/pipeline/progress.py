"""The pipeline's overall ETA, estimated per kind of stage and refined as stages run.

A teacher is several times slower per iteration than a student, and a mimic student (which runs the
frozen teacher too) slower than a scratch one, so one rate for every stage misleads. The rate of
each kind (:func:`rate_kind`) comes from the stages of that kind that finished (wall seconds per
iteration, evaluation included) or, before one finished, from the first logged iterations of the
running stage (detectron2's ``metrics.json``, :func:`logged_rate`). A kind not yet measured is
counted at the rate of a kind known to be no slower (a mimic student at the scratch student's), and
the ETA then says it is a lower bound ("ETA ≥"); with no such rate it says what is not yet timed.
"""

import json
import os
import statistics
from typing import Dict, List, Optional, Tuple

from ..timing import fmt_s
from .benches import STUDENT_TEACHER, TEACHER_STAGES

__all__ = ["fmt_s", "rate_kind", "logged_rate", "Progress"]

# A kind whose rate, while unmeasured, is bounded below by another kind's.
_LOWER_BOUND = {"mimic student": "student"}


def rate_kind(stage: str) -> str:
    """``teacher`` (both teacher stages: one network), ``student`` (no teacher) or
    ``mimic student`` (runs the frozen teacher at every step)."""
    if stage in TEACHER_STAGES:
        return "teacher"
    return "mimic student" if STUDENT_TEACHER.get(stage) else "student"


def logged_rate(metrics_json: str, min_iterations: int = 20) -> Optional[Tuple[float, int]]:
    """
    (seconds per iteration, iterations) of a running stage from detectron2's ``metrics.json``: the
    median of the logged ``time`` values (each a windowed median of iteration times) once
    ``min_iterations`` iterations were logged; None before.
    """
    if not os.path.isfile(metrics_json):
        return None
    times, last = [], 0
    with open(metrics_json) as f:
        for line in f:
            try:
                row = json.loads(line)
                it = int(row["iteration"]) + 1
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if "time" in row:
                times.append(float(row["time"]))
                last = max(last, it)
    if not times or last < min_iterations:
        return None
    return statistics.median(times), last


class Progress:
    """
    The ETA of the remaining runs of a pipeline.

    Args:
        runs (list[tuple]): (stage, seed, iterations) of every run, in order ("data" has 0).
    """

    def __init__(self, runs: List[tuple]):
        self.runs = runs
        self._finished: Dict[str, List[float]] = {}  # kind -> [seconds, iterations]
        self._observed: Dict[str, float] = {}  # kind -> s/iter from a running stage's log

    def record(self, stage: str, iterations: int, wall_s: float) -> None:
        """A finished stage run: ``wall_s`` seconds for ``iterations`` iterations."""
        if iterations > 0 and wall_s and wall_s > 0:
            acc = self._finished.setdefault(rate_kind(stage), [0.0, 0.0])
            acc[0] += wall_s
            acc[1] += iterations

    def observe(self, stage: str, sec_per_iter: float) -> None:
        """A running stage's rate over its first iterations (used until one of its kind ends)."""
        if sec_per_iter > 0:
            self._observed[rate_kind(stage)] = sec_per_iter

    def rate(self, kind: str) -> Optional[float]:
        """Seconds per iteration of ``kind``: finished stages first, else a running one's."""
        if kind in self._finished:
            seconds, iterations = self._finished[kind]
            return seconds / iterations
        return self._observed.get(kind)

    def eta(self, start_index: int) -> str:
        """The ETA of runs ``start_index`` onwards, e.g. "ETA 0:12:30", "ETA ≥ 0:10:00 (mimic
        student not yet timed, counted at the student rate)" or "ETA: measuring"."""
        total, bounded, untimed = 0.0, set(), {}
        for stage, _, iterations in self.runs[start_index:]:
            if stage == "data":
                continue
            kind = rate_kind(stage)
            rate = self.rate(kind)
            if rate is None and self.rate(_LOWER_BOUND.get(kind, "")) is not None:
                rate = self.rate(_LOWER_BOUND[kind])
                bounded.add(kind)
            if rate is None:
                untimed[kind] = untimed.get(kind, 0) + 1
                continue
            total += iterations * rate
        if untimed and total == 0:
            return "ETA: measuring"
        notes = [
            f"{k} not yet timed, counted at the {_LOWER_BOUND[k]} rate" for k in sorted(bounded)
        ]
        notes += [f"+ {n} {k} run(s) not yet timed" for k, n in sorted(untimed.items())]
        if not notes:
            return f"ETA {fmt_s(total)}"
        return f"ETA ≥ {fmt_s(total)} ({'; '.join(notes)})"
