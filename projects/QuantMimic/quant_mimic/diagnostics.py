"""Diagnostics of Q at the mimic layer (paper §3.4, Fig. 5), computed by an evaluation pass.

The mimic loss of eq. 6, L_m = 1/(2N) Σ_i ‖Q(f_t^i) − Q(r(f_s^i))‖², passes to the student the
straight-through gradient Q(r(f_s)) − Q(f_t) (§3.1). Where both sides fall in the same level of the
code book, that gradient is exactly 0: with s = 1 and RoI features mostly below s/2 = 0.5, Q maps
both sides to 0 and the student gets no signal from the mimic loss.
:func:`collect_mimic_statistics` measures that for a trained :class:`MimicRCNN` on its test split,
with the measures of :mod:`quant_mimic.feature_statistics` (re-exported here). It builds the model
the way training does (:mod:`quant_mimic.engine`), so it sits above it; the measures sit below.
"""

from typing import Dict, List, Sequence

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader

from .engine import Trainer, setup_cfg
from .feature_statistics import (
    percentiles,
    roi_mismatch_ratio,
    ste_zero_grad_fraction,
    zero_fraction,
)

__all__ = [
    "zero_fraction",
    "ste_zero_grad_fraction",
    "roi_mismatch_ratio",
    "percentiles",
    "collect_mimic_statistics",
]


@torch.no_grad()
def collect_mimic_statistics(
    config_file: str, opts: Sequence[str] = (), max_images: int = 0
) -> Dict:
    """
    Evaluation pass of a trained mimic student (student weights from ``MODEL.WEIGHTS``, teacher
    from ``MODEL.MIMIC.TEACHER.*``) on the first dataset of ``DATASETS.TEST``: per image, the
    student's test-time RoIs (:meth:`~quant_mimic.mimic_student.MimicStudent.test_mimic_boxes`:
    the top ``MODEL.MIMIC.NUM_ROIS`` RPN proposals, or a one-stage student's top detections), as
    in training.

    Returns:
        dict: ``roi_mismatch_ratio`` (list, one per RoI, Fig. 5), ``mismatch_threshold``,
        ``num_rois``, ``num_images``, ``quantizer``, ``quantize_teacher``, ``quantize_student``,
        ``teacher_percentiles`` / ``student_percentiles`` (RoI features before Q; student = r(f_s)),
        ``teacher_zero_fraction`` / ``student_zero_fraction`` (entries Q maps to 0),
        ``ste_zero_grad_fraction`` (student entries with a zero mimic gradient).
    """
    cfg = setup_cfg(config_file, list(opts) + ["DATALOADER.NUM_WORKERS", "0"])
    model = Trainer.build_model(cfg)  # loads the teacher, strictly
    assert hasattr(model, "mimic_head"), "collect_mimic_statistics needs a mimic student"
    head = model.mimic_head
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    pairs: List[torch.Tensor] = []  # (2, entries): f_t and r(f_s), aligned
    ratios: List[torch.Tensor] = []
    kw = dict(
        quantizer=head.quantizer,
        quantize_teacher=head.quantize_teacher,
        quantize_student=head.quantize_student,
    )
    num_images = 0
    for inputs in loader:
        images = model.preprocess_image(inputs)
        feature_maps = model.backbone(images.tensor)
        boxes = model.test_mimic_boxes(images, feature_maps)
        teacher_maps = model.teacher_maps(inputs)
        # before Q: the statistics below apply Q themselves, on each side as the loss does
        for f_t, f_s in head.paired_features(teacher_maps, feature_maps, boxes, False):
            pairs.append(torch.stack([f_t.flatten(), f_s.flatten()]).cpu())
            ratios.append(roi_mismatch_ratio(f_t, f_s, head.mismatch_threshold, **kw).cpu())
        num_images += len(inputs)
        if max_images and num_images >= max_images:
            break
    f_t, f_s = torch.cat(pairs, dim=1) if pairs else torch.zeros(2, 0)
    ratio = torch.cat(ratios) if ratios else torch.zeros(0)
    return {
        "roi_mismatch_ratio": ratio.tolist(),
        "mismatch_threshold": head.mismatch_threshold,
        "num_rois": int(ratio.numel()),
        "num_images": num_images,
        "quantizer": dict(head.quantizer),
        "quantize_teacher": head.quantize_teacher,
        "quantize_student": head.quantize_student,
        "mean_mismatch_ratio": float(ratio.mean()) if ratio.numel() else float("nan"),
        "teacher_percentiles": percentiles(f_t),
        "student_percentiles": percentiles(f_s),
        "teacher_zero_fraction": zero_fraction(f_t, head.quantizer),
        "student_zero_fraction": zero_fraction(f_s, head.quantizer),
        "ste_zero_grad_fraction": ste_zero_grad_fraction(f_t, f_s, **kw),
    }
