"""A collapsing mimic student, recognised while it trains (ours; docs/EVIDENCE.md §3).

The diagnosis of the students that died in this project's evidence: the summed mimic loss dwarfs the
detection losses, and at a high LR it drives every pre-activation of the student's last layer below
zero: its output at the mimic layer becomes **exactly 0 everywhere** (100 % zeros on every val image
for the dead seeds, against 41 % for a scratch student and 90 % for a surviving mimic one), the
adapter then emits its bias, no gradient reaches the backbone again, and every detection gets one
score. The student never recovers from it.

:class:`CollapseGuard` watches ``mimic/student_zero_fraction`` (the fraction of exact zeros in the
student's mimic-layer maps, logged by the mimic head every step): ``MODEL.MIMIC.COLLAPSE_ITERS``
consecutive iterations at or above ``MODEL.MIMIC.COLLAPSE_ZERO_FRACTION`` is a collapse. Per
``MODEL.MIMIC.COLLAPSE_GUARD``: "warn" (the default: a message once, training goes on; a false
alarm must never cost a run) names λ, the LR, the measured λ·L_m / L_det, the iteration and the
fix; "stop" raises :class:`StudentCollapsed` with the same message and points ``last_checkpoint``
at the newest checkpoint taken before the collapse began. The decision is taken from every rank's
observation at once (an all-gather every ``CHECK_PERIOD`` iterations), so every rank acts on it
and none is left waiting in a collective.
"""

import glob
import logging
import os
import re
from typing import List, Optional

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["StudentCollapsed", "CollapseGuard"]

logger = logging.getLogger(__name__)

CHECK_PERIOD = 10  # iterations between the ranks' shared decisions
# how the guard's message begins, followed by the 1-based iteration (the pipeline's records read it)
MESSAGE_PREFIX = "The mimic student is collapsing: at iteration "


class StudentCollapsed(RuntimeError):
    """Training stopped: the mimic student collapsed (``MODEL.MIMIC.COLLAPSE_GUARD "stop"``)."""


class CollapseGuard(HookBase):
    """
    Args:
        mode (str): "warn" or "stop".
        zero_fraction (float): the fraction of exact zeros that counts as dead.
        iters (int): consecutive dead iterations that make a collapse.
        features (list[str]): the student maps watched (named in the message).
    """

    def __init__(self, mode: str, zero_fraction: float, iters: int, features: List[str]):
        if mode not in ("warn", "stop"):
            raise ValueError(f"Unknown MODEL.MIMIC.COLLAPSE_GUARD: {mode!r}")
        self.mode, self.zero_fraction, self.iters = mode, float(zero_fraction), int(iters)
        self.features = list(features)
        self.dead_since: Optional[int] = None  # first iteration of the current dead streak
        self.fired_at: Optional[int] = None

    def _latest(self, key: str) -> Optional[float]:
        latest = self.trainer.storage.latest()
        return float(latest[key][0]) if key in latest else None

    def after_step(self):
        it = self.trainer.iter
        zeros = self._latest("mimic/student_zero_fraction")
        if zeros is not None and zeros >= self.zero_fraction:
            self.dead_since = it if self.dead_since is None else self.dead_since
        elif zeros is not None:
            self.dead_since = None
        if self.fired_at is not None or (it + 1) % CHECK_PERIOD:
            return
        local = self.dead_since is not None and it - self.dead_since + 1 >= self.iters
        starts = comm.all_gather(self.dead_since if local else None)  # one decision, every rank
        started = [s for s in starts if s is not None]
        if not started:
            return
        self.fired_at = it
        message = self.message(it, min(started), zeros)
        if self.mode == "warn":
            logger.warning(message)
            return
        kept = self._keep_checkpoint_before(min(started))
        raise StudentCollapsed(
            message + (f" The last checkpoint before it: {kept}." if kept else "")
        )

    def message(self, it: int, since: int, zeros: Optional[float]) -> str:
        """What happened, the numbers that explain it, and the fix."""
        storage = self.trainer.storage
        latest = storage.latest()
        lam = latest.get("mimic/lambda", (float("nan"),))[0]
        ratio = latest.get("mimic/loss_ratio", (float("nan"),))[0]
        lr = latest.get("lr", (float("nan"),))[0]
        return (
            f"{MESSAGE_PREFIX}{it + 1}, its output at the mimic "
            f"layer {self.features} has been {zeros:.1%} exact zeros since iteration {since + 1} "
            f"(dead ReLUs: no gradient reaches its backbone again and every detection gets one "
            f"score; docs/EVIDENCE.md §3). λ = {lam:g}, LR = {lr:g}, λ·L_m / L_det = {ratio:.3g}. "
            "Fix: lower MODEL.MIMIC.LOSS_WEIGHT (×0.1), or MODEL.MIMIC.LOSS_WEIGHT_MODE balanced, "
            "or a lower SOLVER.BASE_LR, or MODEL.MIMIC.WARMUP_ITERS; then restart this run"
        )

    def _keep_checkpoint_before(self, since: int) -> str:
        """Point ``last_checkpoint`` at the newest ``model_<iter>.pth`` saved before ``since``."""
        checkpointer = getattr(self.trainer, "checkpointer", None)
        if checkpointer is None or not comm.is_main_process():
            return ""
        best, best_iter = "", -1
        for path in glob.glob(os.path.join(checkpointer.save_dir, "model_*.pth")):
            m = re.match(r"model_(\d+)\.pth$", os.path.basename(path))
            # model_<i>.pth holds the weights after step i, which step i + 1's forward used: a
            # streak that starts at step `since` was already in the weights of model_<since - 1>
            if m and best_iter < int(m.group(1)) < since - 1:
                best, best_iter = path, int(m.group(1))
        if best:
            checkpointer.tag_last_checkpoint(os.path.basename(best))
        return best
