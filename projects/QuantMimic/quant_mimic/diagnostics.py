"""Diagnostics of Q at the mimic layer (paper §3.4, Fig. 5), computed by an evaluation pass.

The mimic loss of eq. 6, L_m = 1/(2N) Σ_i ‖Q(f_t^i) − Q(r(f_s^i))‖², passes to the student the
straight-through gradient Q(r(f_s)) − Q(f_t) (§3.1). Where both sides fall in the same level of the
code book, that gradient is exactly 0: with s = 1 and RoI features mostly below s/2 = 0.5, Q maps
both sides to 0 and the student gets no signal from the mimic loss. These functions measure that:

* :func:`zero_fraction`: fraction of entries that Q maps to 0;
* :func:`ste_zero_grad_fraction`: fraction of student-side entries whose mimic gradient is 0;
* :func:`roi_mismatch_ratio`: Fig. 5's per-RoI fraction of entries with |f_t − f_s| > 0.3;
* :func:`collect_mimic_statistics`: all of them, plus the teacher's RoI-feature percentiles, for a
  trained :class:`MimicRCNN` on its test split.
"""

from typing import Dict, List, Optional, Sequence

import torch

from .quantization import quantize

__all__ = [
    "zero_fraction",
    "ste_zero_grad_fraction",
    "roi_mismatch_ratio",
    "percentiles",
    "collect_mimic_statistics",
]

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


@torch.no_grad()
def collect_mimic_statistics(
    config_file: str, opts: Sequence[str] = (), max_images: int = 0
) -> Dict:
    """
    Evaluation pass of a trained :class:`MimicRCNN` (student weights from ``MODEL.WEIGHTS``, teacher
    from ``MODEL.MIMIC.TEACHER.*``) on the first dataset of ``DATASETS.TEST``: per image, the
    student's test-time RPN proposals (the top ``MODEL.MIMIC.NUM_ROIS``) are the RoIs, as in
    training.

    Returns:
        dict: ``roi_mismatch_ratio`` (list, one per RoI, Fig. 5), ``mismatch_threshold``,
        ``num_rois``, ``num_images``, ``quantizer``, ``quantize_teacher``, ``quantize_student``,
        ``teacher_percentiles`` / ``student_percentiles`` (RoI features before Q; student = r(f_s)),
        ``teacher_zero_fraction`` / ``student_zero_fraction`` (entries Q maps to 0),
        ``ste_zero_grad_fraction`` (student entries with a zero mimic gradient).
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader

    from .engine import Trainer, setup_cfg

    cfg = setup_cfg(config_file, list(opts) + ["DATALOADER.NUM_WORKERS", "0"])
    model = Trainer.build_model(cfg)  # loads the teacher, strictly
    assert hasattr(model, "pooled_roi_features"), "collect_mimic_statistics needs a MimicRCNN"
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    pairs: List[torch.Tensor] = []  # (2, entries): f_t and r(f_s), aligned
    ratios: List[torch.Tensor] = []
    kw = dict(
        quantizer=model.quantizer,
        quantize_teacher=model.quantize_teacher,
        quantize_student=model.quantize_student,
    )
    num_images = 0
    for inputs in loader:
        images = model.preprocess_image(inputs)
        feature_maps = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, feature_maps, None)
        boxes = model.mimic_boxes(proposals, None)
        for f_t, f_s in model.pooled_roi_features(inputs, feature_maps, boxes):
            pairs.append(torch.stack([f_t.flatten(), f_s.flatten()]).cpu())
            ratios.append(roi_mismatch_ratio(f_t, f_s, model.mismatch_threshold, **kw).cpu())
        num_images += len(inputs)
        if max_images and num_images >= max_images:
            break
    f_t, f_s = torch.cat(pairs, dim=1) if pairs else torch.zeros(2, 0)
    ratio = torch.cat(ratios) if ratios else torch.zeros(0)
    return {
        "roi_mismatch_ratio": ratio.tolist(),
        "mismatch_threshold": model.mismatch_threshold,
        "num_rois": int(ratio.numel()),
        "num_images": num_images,
        "quantizer": dict(model.quantizer),
        "quantize_teacher": model.quantize_teacher,
        "quantize_student": model.quantize_student,
        "mean_mismatch_ratio": float(ratio.mean()) if ratio.numel() else float("nan"),
        "teacher_percentiles": percentiles(f_t),
        "student_percentiles": percentiles(f_s),
        "teacher_zero_fraction": zero_fraction(f_t, model.quantizer),
        "student_zero_fraction": zero_fraction(f_s, model.quantizer),
        "ste_zero_grad_fraction": ste_zero_grad_fraction(f_t, f_s, **kw),
    }
