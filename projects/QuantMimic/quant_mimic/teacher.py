"""The frozen teacher of mimic learning (paper §3.2-3.3): its config, its Q, and strict loading.

* :func:`resolve_teacher_config_path`: ``MODEL.MIMIC.TEACHER.CONFIG_FILE`` is resolved like
  ``_BASE_``: relative to the yaml file that names it (absolute paths and ``scheme://`` paths are
  kept), or to the working directory when it is given on the command line.
* :func:`build_teacher_cfg`: the teacher's own config (detectron2 + QuantMimic defaults + its file).
* :func:`mimic_quantizer_args`: Q of the mimic loss (eq. 6), read from the quantized teacher.
* :func:`load_teacher_strict`: load its checkpoint and fail on any missing, unexpected or mis-shaped
  tensor (detectron2/fvcore only warn and go on with random weights).
* :func:`pin_teacher`: record the teacher checkpoint's size and hash; a different one on resume is
  an error.
"""

import hashlib
import json
import logging
import os
from typing import Dict

import torch
from torch import nn

from detectron2.config import CfgNode, get_cfg

from .checkpoint import atomic_write_text, load_checkpoint_strict
from .config import (
    TEACHER_CONFIG_KEY,
    add_quantmimic_config,
    model_zoo_config_file,
    resolve_teacher_config_path,
)
from .quantization import quantize, quantizer_args

__all__ = [
    "resolve_teacher_config_path",
    "build_teacher_cfg",
    "mimic_quantizer_args",
    "load_teacher_strict",
    "teacher_fingerprint",
    "pin_teacher",
]

logger = logging.getLogger(__name__)


def build_teacher_cfg(cfg: CfgNode) -> CfgNode:
    """The teacher's config: detectron2 and QuantMimic defaults + ``MIMIC.TEACHER.CONFIG_FILE``."""
    path = cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE
    if path and not os.path.isfile(path):
        path = model_zoo_config_file(path) or path
    if not path or not os.path.isfile(path):
        hint = ""
        if path and not os.path.isabs(path) and "://" not in path:
            hint = (
                f" (looked for {os.path.abspath(path)}). A relative {TEACHER_CONFIG_KEY} in a yaml "
                "is relative to that yaml, like _BASE_; a config loaded with a plain detectron2 "
                "CfgNode keeps it as written. Load the config with "
                "quant_mimic.get_config('path/to/student.yaml') (as train_net.py does), or call "
                "add_quantmimic_config(cfg) before cfg.merge_from_file(...), which resolves it"
            )
        raise FileNotFoundError(f"{TEACHER_CONFIG_KEY} not found: {path!r}{hint}")
    tcfg = get_cfg()
    add_quantmimic_config(tcfg)
    tcfg.merge_from_file(path)
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    tcfg.MODEL.WEIGHTS = ""
    tcfg.freeze()
    return tcfg


def mimic_quantizer_args(cfg: CfgNode, tcfg: CfgNode) -> Dict:
    """
    Q of the mimic loss (eq. 6), from one source of truth: the quantized teacher's
    ``MODEL.QUANTIZATION`` when the teacher's backbone is quantized (the loss quantizes exactly as
    the teacher was finetuned, §3.3), otherwise the student config's ``MODEL.QUANTIZATION``.
    ``MODEL.MIMIC.QUANT_STRIDE`` (> 0) / ``QUANT_METHOD`` (non-empty) override s / the code book;
    with a quantized teacher they must agree with it.

    Returns:
        dict: keyword arguments of :func:`quantize`.
    """
    teacher_quantized = tcfg.MODEL.BACKBONE.NAME == "build_quantized_backbone"
    if teacher_quantized and tcfg.MODEL.QUANTIZATION.CALIBRATION.LEVELS > 0:
        raise ValueError(
            f"The teacher config {cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE} asks for a calibrated "
            "stride (MODEL.QUANTIZATION.CALIBRATION.LEVELS > 0) but does not hold its value: "
            "point MODEL.MIMIC.TEACHER.CONFIG_FILE at the config.yaml that the quantized teacher's "
            "training wrote (its STRIDE is the calibrated s)"
        )
    m = cfg.MODEL.MIMIC
    if (
        not teacher_quantized
        and (m.QUANTIZE_TEACHER or m.QUANTIZE_STUDENT)
        and cfg.MODEL.QUANTIZATION.CALIBRATION.LEVELS > 0
    ):
        raise ValueError(
            "MODEL.QUANTIZATION.CALIBRATION.LEVELS > 0 with a full-precision teacher: the stride "
            "is calibrated when a quantized teacher is finetuned (stride_calibration.py); set "
            "MODEL.MIMIC.QUANT_STRIDE or MODEL.QUANTIZATION.STRIDE for this loss instead"
        )
    args = quantizer_args((tcfg if teacher_quantized else cfg).MODEL.QUANTIZATION)
    for key, name, value, unset in (
        ("stride", "STRIDE", float(m.QUANT_STRIDE), 0.0),
        ("method", "METHOD", m.QUANT_METHOD, ""),
    ):
        if value == unset:
            continue
        if teacher_quantized and value != args[key]:
            raise ValueError(
                f"MODEL.MIMIC.QUANT_{name} = {value!r} disagrees with the quantized teacher's "
                f"MODEL.QUANTIZATION.{name} = {args[key]!r} "
                f"({cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE}): "
                "the loss's Q must be the teacher's Q (eq. 6); leave the key unset to inherit it"
            )
        args[key] = value
    quantize(torch.zeros(1), **args)  # validate the overrides too
    return args


def load_teacher_strict(teacher: nn.Module, path: str) -> None:
    """
    Load ``MODEL.MIMIC.TEACHER.WEIGHTS`` into the teacher; any missing, unexpected or mis-shaped
    tensor is an error naming the file and the keys (see :func:`load_checkpoint_strict`).
    """
    load_checkpoint_strict(
        teacher,
        path,
        what="Teacher checkpoint MODEL.MIMIC.TEACHER.WEIGHTS",
        model_name="MODEL.MIMIC.TEACHER.CONFIG_FILE",
    )
    logger.info(f"Loaded teacher weights from {path}")


TEACHER_PIN_FILE = "teacher_pin.json"


def teacher_fingerprint(path: str) -> Dict:
    """``{"path", "size", "sha256"}`` of a teacher checkpoint file (read in 1 MiB blocks)."""
    from detectron2.utils.file_io import PathManager

    path = PathManager.get_local_path(path)  # detectron2:// and https:// URLs: the cached file
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "path": os.path.abspath(path),
        "size": os.path.getsize(path),
        "sha256": digest.hexdigest(),
    }


def pin_teacher(output_dir: str, weights: str, resume: bool, allow_change: bool = False) -> Dict:
    """
    Pin the teacher of a training run: record its checkpoint's size and SHA-256 in
    ``<output_dir>/teacher_pin.json`` (and the log) when training starts; on ``--resume``, a teacher
    file whose size or hash differs from the recorded one is an error (the student would continue
    against another target), unless ``allow_change`` (``MODEL.MIMIC.TEACHER.ALLOW_CHANGE``), which
    re-pins with a warning.

    Returns:
        dict: the current fingerprint (see :func:`teacher_fingerprint`).
    """
    current = teacher_fingerprint(weights)
    pin_file = os.path.join(output_dir, TEACHER_PIN_FILE)
    if resume and os.path.isfile(pin_file):
        with open(pin_file) as f:
            pinned = json.load(f)
        if (pinned["size"], pinned["sha256"]) != (current["size"], current["sha256"]):
            message = (
                f"The teacher checkpoint changed since this run started: {pin_file} records "
                f"{pinned['path']} ({pinned['size']} bytes, sha256 {pinned['sha256'][:12]}…), "
                f"MODEL.MIMIC.TEACHER.WEIGHTS is {current['path']} ({current['size']} bytes, "
                f"sha256 {current['sha256'][:12]}…)"
            )
            if not allow_change:
                raise RuntimeError(
                    message + ". Resume with the same teacher, or set "
                    "MODEL.MIMIC.TEACHER.ALLOW_CHANGE True to continue against the new one."
                )
            logger.warning(message + "; continuing (MODEL.MIMIC.TEACHER.ALLOW_CHANGE True)")
        elif pinned["path"] != current["path"]:
            logger.info(f"Teacher moved to {current['path']} (same size and sha256)")
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(pin_file, json.dumps(current, indent=2))
    logger.info(
        f"Teacher pinned: {current['path']} ({current['size']} bytes, sha256 {current['sha256']})"
    )
    return current
