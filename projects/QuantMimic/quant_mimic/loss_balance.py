"""λ of eq. 4 set from the measured losses (ours; the paper's fixed λ stays the default).

With ``MODEL.MIMIC.LOSS_WEIGHT_MODE "balanced"``, λ is chosen so that λ·L_m is
``MODEL.MIMIC.BALANCE_RATIO`` times the detection losses L_det:

* **measure**: for the first ``MODEL.MIMIC.BALANCE_ITERS`` iterations from ``START_ITER`` the
  student trains with λ = 0 (its detection losses alone) while the unweighted L_m and L_det are
  summed; every rank adds its own, and the sums are all-reduced once, at the end, so every rank
  gets the same λ;
* **freeze**: λ = ratio · mean(L_det) / mean(L_m), constant from then on (times the usual linear
  warm-up of ``WARMUP_ITERS`` and the ``STOP_ITER`` cut).

Why frozen, not an EMA of the ratio: a λ that follows L_m grows as the student matches the teacher
(L_m falls) and pushes hardest when mimicking has converged; a constant λ keeps eq. 4 as the paper
writes it, is reproducible from the seed, and is one number to report. The measured sums and λ are
the trainer's checkpointable ``mimic_balance`` (saved with every checkpoint, restored on
``--resume``, so a resumed run keeps its λ).
"""

from typing import Dict, Optional

import torch

from detectron2.utils import comm

__all__ = ["LossBalance"]


class LossBalance:
    """
    The balanced λ's state machine (module docstring).

    Args:
        ratio (float): the target λ·L_m / L_det.
        iters (int): iterations measured before λ is frozen.
        start_iter (int): the first iteration of mimicking (``MODEL.MIMIC.START_ITER``).
    """

    def __init__(self, ratio: float, iters: int, start_iter: int = 0):
        self.ratio, self.iters, self.start_iter = float(ratio), int(iters), int(start_iter)
        self.sum_mimic = 0.0
        self.sum_detection = 0.0
        self.count = 0
        self.weight: Optional[float] = None  # λ once frozen

    def update(self, iteration: int, mimic: float, detection: float) -> Optional[float]:
        """Add one iteration's unweighted L_m and L_det (while measuring); return the frozen λ,
        or None during the measured iterations (λ = 0 there; the last one freezes λ for the
        next)."""
        if self.weight is not None:
            return self.weight
        if iteration >= self.start_iter:
            self.sum_mimic += float(mimic)
            self.sum_detection += float(detection)
            self.count += 1
        if self.count >= self.iters:
            sums = torch.tensor([self.sum_mimic, self.sum_detection], dtype=torch.float64)
            if comm.get_world_size() > 1:  # one λ for every rank
                torch.distributed.all_reduce(sums)
            mimic_sum, detection_sum = float(sums[0]), float(sums[1])
            self.weight = self.ratio * detection_sum / mimic_sum if mimic_sum > 0 else 0.0
        return None

    def state_dict(self) -> Dict:
        return {
            "sum_mimic": self.sum_mimic,
            "sum_detection": self.sum_detection,
            "count": self.count,
            "weight": self.weight,
        }

    def load_state_dict(self, state: Dict) -> None:
        self.sum_mimic = float(state["sum_mimic"])
        self.sum_detection = float(state["sum_detection"])
        self.count = int(state["count"])
        self.weight = None if state["weight"] is None else float(state["weight"])
