"""Statistics of feature maps under Q (paper §3.4, Fig. 5): the low-level measures.

The mimic loss of eq. 6, L_m = 1/(2N) Σ_i ‖Q(f_t^i) − Q(r(f_s^i))‖², passes to the student the
straight-through gradient Q(r(f_s)) − Q(f_t) (§3.1). Where both sides fall in the same level of the
code book, that gradient is exactly 0. These functions measure that on given tensors; they depend on
the quantizer only, so the stride calibration (:mod:`quant_mimic.stride_calibration`) and the
evaluation pass (:func:`quant_mimic.diagnostics.collect_mimic_statistics`) share them:

* :func:`zero_fraction`: fraction of entries that Q maps to 0;
* :func:`ste_zero_grad_fraction`: fraction of student-side entries whose mimic gradient is 0;
* :func:`roi_mismatch_ratio`: Fig. 5's per-RoI fraction of entries with |f_t − f_s| > 0.3;
* :func:`percentiles`: quantiles of a tensor's entries (subsampled above 2 M entries).
"""

from typing import Dict, Optional, Sequence

import torch

from .quantization import quantize

__all__ = ["zero_fraction", "ste_zero_grad_fraction", "roi_mismatch_ratio", "percentiles"]

PERCENTILES = (50, 90, 99, 99.9)


def zero_fraction(x: torch.Tensor, quantizer: Optional[Dict] = None) -> float:
    """Fraction of the entries of ``x`` (any shape) that Q (``quantize(**quantizer)``) maps to 0."""
    if x.numel() == 0:
        return float("nan")
    return (quantize(x, **(quantizer or {})) == 0).float().mean().item()


def ste_zero_grad_fraction(
    teacher_feats: torch.Tensor,
    student_feats: torch.Tensor,
    quantizer: Optional[Dict] = None,
    quantize_teacher: bool = True,
    quantize_student: bool = True,
) -> float:
    """
    Fraction of student-side entries whose gradient of L_m (eq. 5-6) is exactly 0.

    With the straight-through estimator, ∂L_m/∂r(f_s) ∝ S − T where T = Q(f_t) or f_t and
    S = Q(r(f_s)) or r(f_s) (per ``quantize_teacher`` / ``quantize_student``), so an entry gets no
    gradient exactly when S == T.

    Args:
        teacher_feats, student_feats (Tensor): f_t and r(f_s), same shape (N, C, S, S).
    """
    if student_feats.numel() == 0:
        return float("nan")
    q = quantizer or {}
    t = quantize(teacher_feats, **q) if quantize_teacher else teacher_feats
    s = quantize(student_feats, **q) if quantize_student else student_feats
    return (s == t).float().mean().item()


def roi_mismatch_ratio(
    teacher_feats: torch.Tensor,
    student_feats: torch.Tensor,
    threshold: float = 0.3,
    quantizer: Optional[Dict] = None,
    quantize_teacher: bool = True,
    quantize_student: bool = True,
) -> torch.Tensor:
    """
    Fig. 5: per RoI, the fraction of entries whose distance between the two feature maps the loss
    compares (Q applied per the switches) exceeds ``threshold`` (paper: 0.3).

    Returns:
        Tensor: (N,) in [0, 1].
    """
    q = quantizer or {}
    t = quantize(teacher_feats, **q) if quantize_teacher else teacher_feats
    s = quantize(student_feats, **q) if quantize_student else student_feats
    return ((t - s).abs() > threshold).flatten(1).float().mean(dim=1)


def percentiles(values: torch.Tensor, ps: Sequence[float] = PERCENTILES) -> Dict[str, float]:
    """{"p<p>": value} of the entries of ``values`` (any shape; an evenly spaced subsample of 2 M
    entries above that size); {} when empty."""
    if values.numel() == 0:
        return {}
    v = values.flatten().double()
    n, m = v.numel(), 2_000_000
    if n > m:  # quantiles on a fixed, evenly spaced subsample (integer indices, always < n)
        v = v[torch.arange(m, dtype=torch.int64) * (n - 1) // (m - 1)]
    qs = torch.quantile(v, torch.tensor([p / 100 for p in ps], dtype=torch.float64))
    return {f"p{p:g}": float(x) for p, x in zip(ps, qs)}
