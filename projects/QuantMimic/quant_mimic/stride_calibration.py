"""Stride s of Q from the teacher's feature statistics (ours; not in the paper).

The paper fixes the stride of its code book D = {0, s, 2s, ...} (eq. 2) at s = 1 for all its
networks (§3.5). That value is tied to the scale of the quantized feature map: a BN network whose
entries are mostly below s/2 has most of them mapped to 0, and where both sides of eq. 6 fall in the
same level the straight-through gradient is 0 (README, Evidence). This module sets s from the
full-precision teacher instead, once, before the quantized teacher is finetuned (§3.3):

    s = P_p({x > 0}) / L                                                              (ours)

where P_p is the p-th percentile of the positive entries of the teacher's quantized outputs
(``MODEL.QUANTIZATION.IN_FEATURES``) over the first images of ``DATASETS.TRAIN``, and L the number
of non-zero levels that should span it (L = 2^b - 1 for a b-bit code book {0, s, ..., L·s}; values
above L·s still get higher levels, Q is not clipped unless ``CLIP`` says so). Negative and zero
entries are left out: Q maps them to 0 whatever s is.

:func:`calibrate_stride` is run by ``train_net.py`` when ``MODEL.QUANTIZATION.CALIBRATION.LEVELS``
> 0; the computed s replaces ``MODEL.QUANTIZATION.STRIDE`` in the run's config (so the dumped
``config.yaml``, which students read as their teacher's, holds the fixed value and the mimic loss
inherits it) and is recorded with its statistics in ``OUTPUT_DIR/stride_calibration.json``.
"""

import json
import logging
import os
from typing import Dict, List

import torch

from detectron2.utils import comm

from .feature_statistics import percentiles
from .fileio import atomic_write_text

__all__ = ["stride_from_statistics", "calibrate_stride", "apply_stride_calibration"]

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "stride_calibration.json"


def stride_from_statistics(features: torch.Tensor, percentile: float, levels: int) -> float:
    """
    s = P_p(positive entries of ``features``) / L.

    Args:
        features (Tensor): any shape; entries of the feature map(s) Q will quantize.
        percentile (float): p in (0, 100].
        levels (int): L ≥ 1, non-zero levels spanning P_p.

    Returns:
        float: s > 0.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if levels < 1:
        raise ValueError(f"levels must be ≥ 1, got {levels}")
    x = features.detach().flatten().double()
    x = x[torch.isfinite(x) & (x > 0)]
    if x.numel() == 0:
        raise ValueError("stride calibration: the features have no positive finite entry")
    return percentiles(x, (percentile,))[f"p{percentile:g}"] / levels


@torch.no_grad()
def calibrate_stride(cfg) -> Dict:
    """
    Compute s for a quantized-backbone detector config (``MODEL.BACKBONE.NAME =
    "build_quantized_backbone"``) whose ``MODEL.WEIGHTS`` is the full-precision teacher.

    Runs the wrapped (full-precision) backbone over the first ``CALIBRATION.NUM_IMAGES`` images of
    ``DATASETS.TRAIN[0]`` (test-time mapper, no augmentation) and applies
    :func:`stride_from_statistics` to the outputs that Q quantizes.

    Returns:
        dict: ``stride``, ``percentile``, ``levels``, ``num_images``, ``num_entries``,
        ``percentile_value`` (P_p), ``positive_fraction``, ``zero_fraction_at_stride_1`` /
        ``zero_fraction_at_stride`` (entries Q maps to 0 at s = 1 / at the computed s),
        ``weights``, ``dataset``, ``features``.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model

    q = cfg.MODEL.QUANTIZATION
    c = q.CALIBRATION
    if cfg.MODEL.BACKBONE.NAME != "build_quantized_backbone":
        raise ValueError(
            "MODEL.QUANTIZATION.CALIBRATION.LEVELS > 0 needs MODEL.BACKBONE.NAME = "
            f"build_quantized_backbone (the quantized teacher), got {cfg.MODEL.BACKBONE.NAME!r}"
        )
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("stride calibration needs the full-precision teacher in MODEL.WEIGHTS")
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    backbone = model.backbone
    names = backbone.quantized_features
    dataset = cfg.DATASETS.TRAIN[0]
    dicts = DatasetCatalog.get(dataset)[: c.NUM_IMAGES]
    mapper = DatasetMapper(cfg, is_train=False)
    values: List[torch.Tensor] = []
    for d in dicts:
        images = model.preprocess_image([mapper(d)])
        outputs = backbone.bottom_up(images.tensor)  # full precision: before Q
        values.extend(outputs[n].flatten().cpu() for n in names)
    x = torch.cat(values) if values else torch.zeros(0)
    stride = stride_from_statistics(x, c.PERCENTILE, c.LEVELS)
    return {
        "stride": stride,
        "percentile": float(c.PERCENTILE),
        "levels": int(c.LEVELS),
        "percentile_value": stride * int(c.LEVELS),
        "num_images": len(dicts),
        "num_entries": int(x.numel()),
        "positive_fraction": float((x > 0).float().mean()),
        # What the diagnosis of README's Evidence measures: entries Q maps to 0.
        "zero_fraction_at_stride_1": float((x <= 0.5).float().mean()),
        "zero_fraction_at_stride": float((x <= stride / 2).float().mean()),
        "weights": cfg.MODEL.WEIGHTS,
        "dataset": dataset,
        "features": list(names),
    }


def apply_stride_calibration(cfg) -> Dict:
    """
    If ``MODEL.QUANTIZATION.CALIBRATION.LEVELS`` > 0 and the backbone is quantized: compute s (or
    read it back from ``OUTPUT_DIR/stride_calibration.json`` of an earlier run with the same weights
    and settings, e.g. on ``--resume``), write it into ``cfg`` (``MODEL.QUANTIZATION.STRIDE = s``,
    ``CALIBRATION.LEVELS = 0``: the config now describes a fixed Q) and record it. ``cfg`` must be
    mutable. Returns the record, or ``{}`` when calibration is off.
    """
    c = cfg.MODEL.QUANTIZATION.CALIBRATION
    if c.LEVELS <= 0:
        return {}
    if cfg.MODEL.BACKBONE.NAME != "build_quantized_backbone":
        # A student (or a full-precision teacher): no Q of its own to calibrate. A student's mimic
        # loss inherits s from its quantized teacher's config.yaml (teacher.mimic_quantizer_args).
        logger.info("Stride calibration: no quantized backbone in this config, nothing to do")
        return {}
    path = os.path.join(cfg.OUTPUT_DIR, CALIBRATION_FILE)
    record = None
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        same = (old.get("weights"), old.get("percentile"), old.get("levels")) == (
            cfg.MODEL.WEIGHTS,
            float(c.PERCENTILE),
            int(c.LEVELS),
        )
        if same and old.get("num_images") is not None:
            record = old
    if record is None:
        record = calibrate_stride(cfg)
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            atomic_write_text(path, json.dumps(record, indent=2))
    logger.info(
        "Stride calibration (ours): s = P%g of the positive teacher features over %d images "
        "(%.4g) / L = %d = %.4g; recorded in %s",
        record["percentile"],
        record["num_images"],
        record["percentile_value"],
        record["levels"],
        record["stride"],
        path,
    )
    cfg.MODEL.QUANTIZATION.STRIDE = float(record["stride"])
    c.LEVELS = 0
    return record
