"""The frozen teacher of mimic learning (paper §3.2-3.3): its config, its Q, strict loading, its
maps and their cache, and its pin.

* :class:`FrozenTeacher`: the teacher detector frozen (eval mode, no gradient, kept out of the
  student's state, optimizer and DDP), its weights loaded strictly, and its maps at the mimicked
  features for a batch, read from or written to the teacher-map cache
  (:mod:`quant_mimic.teacher_cache`).

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

import json
import logging
import os
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import GeneralizedRCNN

from .checkpoint import load_checkpoint_strict
from .config import TEACHER_CONFIG_KEY, add_quantmimic_config, resolve_teacher_config_path
from .errors import BadFileError, ConfigError, MissingFileError
from .fileio import atomic_write_text, file_sha256
from .quantization import quantize, quantizer_args
from .teacher_cache import TeacherMapCache, cache_identity, check_cacheable_input, tensor_digest

__all__ = [
    "FrozenTeacher",
    "resolve_teacher_config_path",
    "build_teacher_cfg",
    "mimic_quantizer_args",
    "load_teacher_strict",
    "teacher_fingerprint",
    "pin_teacher",
]

logger = logging.getLogger(__name__)


def build_teacher_cfg(cfg: CfgNode) -> CfgNode:
    """The teacher's config: detectron2 and QuantMimic defaults + ``MIMIC.TEACHER.CONFIG_FILE``,
    a path that the config's loading resolved (:func:`resolve_teacher_config_path`)."""
    path = cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE
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
        raise MissingFileError(
            path or TEACHER_CONFIG_KEY,
            f"the teacher config ({TEACHER_CONFIG_KEY}) does not exist{hint}",
            f"set {TEACHER_CONFIG_KEY} to the teacher's yaml or its run's config.yaml",
        )
    tcfg = get_cfg()
    add_quantmimic_config(tcfg)
    tcfg.merge_from_file(path)
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    tcfg.MODEL.WEIGHTS = ""
    if cfg.DATASETS.DATA_FILE and not tcfg.DATASETS.DATA_FILE and not _is_model_zoo(path):
        # a teacher config of this project, not a run's config.yaml (it has the classes it was
        # trained with) nor a model-zoo one: the student's data names the classes of both
        from .data.data_file import num_classes, set_num_classes

        set_num_classes(tcfg, num_classes(cfg))
    tcfg.freeze()
    return tcfg


def _is_model_zoo(path: str) -> bool:
    """Whether ``path`` is one of detectron2's installed model-zoo configs."""
    import detectron2

    zoo = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo")
    return os.path.abspath(path).startswith(zoo + os.sep)


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
        raise ConfigError(
            cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE,
            "the teacher config asks for a calibrated stride (MODEL.QUANTIZATION.CALIBRATION."
            "LEVELS > 0) but does not hold its value",
            "point MODEL.MIMIC.TEACHER.CONFIG_FILE at the config.yaml that the quantized "
            "teacher's training wrote (its STRIDE is the calibrated s)",
        )
    m = cfg.MODEL.MIMIC
    if (
        not teacher_quantized
        and (m.QUANTIZE_TEACHER or m.QUANTIZE_STUDENT)
        and cfg.MODEL.QUANTIZATION.CALIBRATION.LEVELS > 0
    ):
        raise ConfigError(
            "",
            "MODEL.QUANTIZATION.CALIBRATION.LEVELS > 0 with a full-precision teacher: the stride "
            "is calibrated when a quantized teacher is finetuned (stride_calibration.py)",
            "set MODEL.MIMIC.QUANT_STRIDE or MODEL.QUANTIZATION.STRIDE for this loss instead",
        )
    args = quantizer_args((tcfg if teacher_quantized else cfg).MODEL.QUANTIZATION)
    for key, name, value, unset in (
        ("stride", "STRIDE", float(m.QUANT_STRIDE), 0.0),
        ("method", "METHOD", m.QUANT_METHOD, ""),
    ):
        if value == unset:
            continue
        if teacher_quantized and value != args[key]:
            raise ConfigError(
                "",
                f"MODEL.MIMIC.QUANT_{name} = {value!r} disagrees with the quantized teacher's "
                f"MODEL.QUANTIZATION.{name} = {args[key]!r} "
                f"({cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE}): the loss's Q must be the teacher's Q "
                "(eq. 6)",
                "leave the key unset to inherit it",
            )
        args[key] = value
    quantize(torch.zeros(1), **args)  # validate the overrides too
    return args


def load_teacher_strict(teacher: nn.Module, path: str, config_file: str = "") -> None:
    """
    Load ``MODEL.MIMIC.TEACHER.WEIGHTS`` into the teacher; any missing, unexpected or mis-shaped
    tensor is an error naming the file, the config the teacher was built from, the keys (once)
    and the fix (see :func:`load_checkpoint_strict`).
    """
    built_from = f"the teacher built from {config_file or 'MODEL.MIMIC.TEACHER.CONFIG_FILE'}"
    try:
        load_checkpoint_strict(
            teacher,
            path,
            what="Teacher checkpoint MODEL.MIMIC.TEACHER.WEIGHTS",
            model_name=built_from,
        )
    except BadFileError as e:
        if "does not match" not in e.what:
            raise
        raise BadFileError(
            e.file,
            e.what,
            "build the teacher from the config its weights were trained with: set "
            f"{TEACHER_CONFIG_KEY} to that run's config.yaml (used without asking when it lies "
            "beside MODEL.MIMIC.TEACHER.WEIGHTS and the command line names no teacher config), "
            "or train the teacher with this config",
        ) from None
    logger.info(f"Loaded teacher weights from {path}")


TEACHER_PIN_FILE = "teacher_pin.json"


def teacher_fingerprint(path: str) -> Dict:
    """``{"path", "size", "sha256"}`` of a teacher checkpoint file (read in 1 MiB blocks)."""
    from detectron2.utils.file_io import PathManager

    path = PathManager.get_local_path(path)  # detectron2:// and https:// URLs: the cached file
    return {
        "path": os.path.abspath(path),
        "size": os.path.getsize(path),
        "sha256": file_sha256(path),
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
                raise BadFileError(
                    weights,
                    message[0].lower() + message[1:],
                    "resume with the same teacher, or set MODEL.MIMIC.TEACHER.ALLOW_CHANGE True "
                    "to continue against the new one",
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


class FrozenTeacher:
    """
    The frozen teacher of §3.2-3.3: a detector built from its own config, loaded strictly
    (:meth:`load`), in eval mode, without gradients, run under ``no_grad`` and only up to its
    backbone. It is not an ``nn.Module`` of the student: the model that uses it keeps it out of
    ``state_dict()`` (never in checkpoints), the optimizer and DDP, keeps it in eval mode and moves
    it with itself (``MimicRCNN._apply``).
    """

    def __init__(
        self,
        model: GeneralizedRCNN,
        *,
        weights: str = "",
        feature_names: List[str],
        cache_dir: str = "",
        cache_identity: Optional[Dict] = None,
        config_file: str = "",
    ):
        """
        Args:
            model (GeneralizedRCNN): the teacher detector (only its backbone runs).
            weights (str): its checkpoint, loaded by :meth:`load` ("": random, for tests).
            feature_names (list[str]): the maps of its backbone that are mimicked.
            cache_dir (str): where its maps are cached in training ("" = off,
                :mod:`quant_mimic.teacher_cache`).
            cache_identity (dict): :func:`cache_identity` without the teacher's SHA-256, which is
                added when the cache is opened (after the teacher is loaded).
            config_file (str): the config it was built from (named in errors).
        """
        model.eval()
        self.config_file = config_file
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.weights = weights
        self.loaded = False
        self.feature_names = list(feature_names)
        self.cache_dir = cache_dir
        self._cache_identity = cache_identity
        self._cache: Optional[TeacherMapCache] = None
        self._warned_random = False

    @classmethod
    def from_config(cls, cfg: CfgNode, tcfg: CfgNode, model: GeneralizedRCNN, feature_names):
        """The frozen ``model`` (built from ``tcfg``) with the student config's
        ``MODEL.MIMIC.TEACHER`` settings: weights and cache (its augmentations checked)."""
        t = cfg.MODEL.MIMIC.TEACHER
        identity = None
        if t.CACHE_DIR:
            check_cacheable_input(cfg)
            identity = cache_identity(cfg, tcfg, model.backbone, feature_names, teacher_sha256="")
        return cls(
            model,
            weights=t.WEIGHTS,
            feature_names=feature_names,
            cache_dir=t.CACHE_DIR,
            cache_identity=identity,
            config_file=t.CONFIG_FILE,
        )

    def load(self, path: Optional[str] = None) -> None:
        """Load the teacher's weights (default ``MODEL.MIMIC.TEACHER.WEIGHTS``), strictly."""
        load_teacher_strict(self.model, path or self.weights, self.config_file)
        self.loaded = True

    def check_ready(self) -> None:
        """Before a training step: an unloaded teacher with weights is an error; a teacher without
        weights (random, for tests) is warned about once."""
        if self.loaded:
            return
        if self.weights:
            raise RuntimeError(
                "MimicRCNN is training but its teacher is not loaded: call "
                "model.load_teacher() (quant_mimic.Trainer.build_model does) or set "
                "MODEL.MIMIC.TEACHER.WEIGHTS ''"
            )
        if not self._warned_random:
            logger.warning(
                "MODEL.MIMIC.TEACHER.WEIGHTS is empty: the teacher is randomly initialised"
            )
            self._warned_random = True

    @property
    def cache(self) -> Optional[TeacherMapCache]:
        """The cache of the teacher's maps (``MODEL.MIMIC.TEACHER.CACHE_DIR``), opened on first
        use, when the teacher is loaded: its identity includes the teacher checkpoint's SHA-256
        (of its weights in memory for a random teacher). None when off."""
        if not self.cache_dir:
            return None
        if self._cache is None:
            if self.loaded and self.weights:
                sha = teacher_fingerprint(self.weights)["sha256"]
            else:  # a random teacher (tests): what its weights are, not a file
                state = self.model.state_dict()
                sha = "weights:" + tensor_digest(
                    torch.cat([v.detach().flatten().double().cpu() for v in state.values()])
                )
            identity = dict(self._cache_identity, teacher_sha256=sha)
            forms = 1 if identity["input"]["INPUT.RANDOM_FLIP"] == "none" else 2
            self._cache = TeacherMapCache(self.cache_dir, identity, forms)
        return self._cache

    def put_cache_scalars(self, storage) -> None:
        """``mimic/teacher_cache_hit``: the fraction of maps read from the cache so far."""
        cache = self._cache
        if cache is not None and cache.hits + cache.misses:
            storage.put_scalar("mimic/teacher_cache_hit", cache.hits / (cache.hits + cache.misses))

    def maps(self, batched_inputs, use_cache: bool = True, fill_only: bool = False):
        """
        The teacher's maps at the mimicked features for a batch, computed as the student's are: on
        the batch padded to one size (detectron2's ``ImageList``). With ``use_cache`` (training)
        and ``MODEL.MIMIC.TEACHER.CACHE_DIR`` set, each image's map in that padded layout is read
        from the cache when every image of the batch has one (an entry is keyed by the image, its
        size and the padded size, so it is exactly what the teacher would compute here);
        otherwise the teacher runs on the batch and the missing entries are written.

        Args:
            batched_inputs (list[dict]): the model inputs.
            use_cache (bool): read and fill the cache (when one is configured).
            fill_only (bool): only fill the cache; return the number of maps computed.

        Returns:
            dict[str->Tensor]: {teacher feature name: (N, C, H', W')}, without grad.
        """
        cache = self.cache if use_cache else None
        images = self.model.preprocess_image(batched_inputs)
        padded = tuple(images.tensor.shape[-2:])
        names = self.feature_names
        entries, stored = [], [None] * len(batched_inputs)
        if cache is not None:
            entries = [
                cache.entry(x.get("file_name", ""), x["image"], padded) for x in batched_inputs
            ]
            stored = [cache.get(e) for e in entries]
        if all(m is not None for m in stored):
            if fill_only:
                return 0
            return {n: torch.stack([m[n] for m in stored]).to(self.model.device) for n in names}
        with torch.no_grad():
            feats = self.model.backbone(images.tensor)
        maps = {n: feats[n] for n in names}
        for j, (e, m) in enumerate(zip(entries, stored)):
            if m is None:
                cache.put(e, {n: maps[n][j] for n in names})
        return sum(m is None for m in stored) if fill_only else maps
