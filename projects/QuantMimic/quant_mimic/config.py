"""Config keys added by QuantMimic. Paper: Wei et al., "Quantization Mimic", ECCV 2018.

``MODEL.MIMIC.TEACHER.CONFIG_FILE`` is a path resolved like ``_BASE_``: relative to the yaml file
that names it (:func:`resolve_teacher_config_path`), or, when no such file exists, a name of
detectron2's model zoo (``"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"``, resolved offline by
``detectron2.model_zoo.get_config_file``). A config that went through
:func:`add_quantmimic_config` resolves it in its own ``merge_from_file``, so the plain detectron2
way of loading (``get_cfg(); add_quantmimic_config(cfg); cfg.merge_from_file(path)``) gets the same
path as ``quant_mimic.get_config`` / ``train_net.py``.
"""

import os
from typing import Optional, Sequence

import yaml

from detectron2.config import CfgNode as CN

from .errors import ConfigError

__all__ = [
    "add_quantmimic_config",
    "validate_quantmimic_config",
    "resolve_teacher_config_path",
    "model_zoo_config_file",
    "MIMIC_ARCHITECTURES",
    "student_architecture",
    "detector_in_features",
]

TEACHER_CONFIG_KEY = "MODEL.MIMIC.TEACHER.CONFIG_FILE"

# The mimic meta-architectures and the plain detectron2 detector each one trains (its inference).
MIMIC_ARCHITECTURES = {
    "MimicRCNN": "GeneralizedRCNN",
    "MimicRetinaNet": "RetinaNet",
    "MimicFCOS": "FCOS",
}


def student_architecture(cfg: CN) -> str:
    """The detector ``cfg`` trains: a mimic meta-architecture's plain detectron2 detector
    (:data:`MIMIC_ARCHITECTURES`), any other ``MODEL.META_ARCHITECTURE`` as it is."""
    arch = cfg.MODEL.META_ARCHITECTURE
    return MIMIC_ARCHITECTURES.get(arch, arch)


def detector_in_features(cfg: CN) -> list:
    """The feature maps a detector's heads read, "the end of its feature extractor" (§3.2): the
    ROI heads' ``MODEL.ROI_HEADS.IN_FEATURES`` of a two-stage detector, the dense head's
    ``MODEL.RETINANET.IN_FEATURES`` / ``MODEL.FCOS.IN_FEATURES`` of a one-stage one."""
    arch = student_architecture(cfg)
    if arch == "RetinaNet":
        return list(cfg.MODEL.RETINANET.IN_FEATURES)
    if arch == "FCOS":
        return list(cfg.MODEL.FCOS.IN_FEATURES)
    return list(cfg.MODEL.ROI_HEADS.IN_FEATURES)


def _is_kept_as_is(path: str) -> bool:
    return not path or os.path.isabs(path) or "://" in path


def model_zoo_config_file(name: str) -> Optional[str]:
    """The installed file of detectron2 model-zoo config ``name`` (e.g.
    ``"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"``), or None if it is not one (no network)."""
    if not name or os.path.isabs(name) or "://" in name or not name.endswith(".yaml"):
        return None
    try:
        from detectron2 import model_zoo

        return model_zoo.get_config_file(name)
    except RuntimeError:
        return None


def _local_or_zoo(path: str, value: str) -> str:
    """``path`` (``value`` resolved as a file) if it exists, else ``value`` as a model-zoo name if
    it is one, else ``path`` (its error names the file)."""
    if os.path.isfile(path):
        return path
    return model_zoo_config_file(value) or path


class _KeyReader(yaml.SafeLoader):
    """A safe yaml loader that reads python-object tags (detectron2's configs compute anchor sizes
    with ``!!python/object/apply:eval``) as None instead of failing or running them."""


_KeyReader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _named_in_yaml(config_file: str) -> Optional[tuple]:
    """(value, yaml file) of the teacher config key in ``config_file`` or, if absent, its bases."""
    with open(config_file) as f:
        data = yaml.load(f, Loader=_KeyReader) or {}
    value = ((data.get("MODEL") or {}).get("MIMIC") or {}).get("TEACHER", {}) or {}
    if "CONFIG_FILE" in value:
        return value["CONFIG_FILE"], config_file
    base = data.get("_BASE_")
    if not base or "://" in base:
        return None
    base = base if os.path.isabs(base) else os.path.join(os.path.dirname(config_file), base)
    return _named_in_yaml(base)


def resolve_teacher_config_path(config_file: str, opts: Sequence = ()) -> Optional[str]:
    """
    The absolute teacher config path that ``config_file`` + command-line ``opts`` name: a value in
    a yaml is relative to that yaml (or the base yaml holding it), like ``_BASE_``; a value in
    ``opts`` is relative to the working directory; absolute and ``scheme://`` paths are kept.
    None if neither names one.
    """
    opts = list(opts)
    from_opts = [v for k, v in zip(opts[::2], opts[1::2]) if k == TEACHER_CONFIG_KEY]
    if from_opts:
        value = str(from_opts[-1])
        return value if _is_kept_as_is(value) else _local_or_zoo(os.path.abspath(value), value)
    if not config_file:
        return None
    named = _named_in_yaml(config_file)
    if named is None:
        return None
    value, yaml_file = named
    if _is_kept_as_is(value):
        return value
    path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(yaml_file)), value))
    return _local_or_zoo(path, value)


class _QuantMimicCfgNode(CN):
    """detectron2's CfgNode whose ``merge_from_file`` also resolves the teacher config path
    relative to the merged yaml (what ``_BASE_`` gets), so a plain-detectron2 load builds."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True) -> None:
        # detectron2 builds the loaded nodes as type(self); only the root is of this class, so
        # the merge itself runs as a plain CfgNode (nodes of one type on both sides).
        object.__setattr__(self, "__class__", CN)
        try:
            CN.merge_from_file(self, cfg_filename, allow_unsafe=allow_unsafe)
        finally:
            object.__setattr__(self, "__class__", _QuantMimicCfgNode)
        resolved = resolve_teacher_config_path(cfg_filename)
        if resolved is not None:
            self.MODEL.MIMIC.TEACHER.CONFIG_FILE = resolved


def add_quantmimic_config(cfg: CN) -> None:
    """
    Add QuantMimic's config nodes to a detectron2 config (in place). Call it before
    ``merge_from_file``: from then on, ``cfg.merge_from_file(path)`` resolves
    ``MODEL.MIMIC.TEACHER.CONFIG_FILE`` relative to ``path``, like ``_BASE_``. Float keys are
    declared as floats: write ``1.0``, not ``1`` (yacs rejects an int where a float is declared).
    """
    _C = cfg
    if type(cfg) is CN:  # same layout (a dict subclass): only merge_from_file changes
        object.__setattr__(cfg, "__class__", _QuantMimicCfgNode)

    # ---------------------------------------------------------------------------------------------
    # Your data (ours; data/data_file.py, docs/YOUR_DATA.md)
    # ---------------------------------------------------------------------------------------------
    # A data file (YAML: names, train, val; COCO json, VOC xml or WIDER FACE sets), absolute once
    # set up ("" = none: DATASETS.TRAIN / TEST name registered datasets). When set, set-up registers
    # its sets, sets DATASETS.TRAIN / TEST to them and every head's class count (C, e.g.
    # MODEL.ROI_HEADS.NUM_CLASSES) to its names; a run's config.yaml keeps it, so evaluation,
    # export and the demo of that run need nothing more. `--data FILE` on the command line sets it.
    _C.DATASETS.DATA_FILE = ""

    # ---------------------------------------------------------------------------------------------
    # Channel-divided ResNet (build_divided_resnet_backbone, divided_resnet.py)
    # ---------------------------------------------------------------------------------------------
    # n of "ResNet18-1-n" (paper §4.2, Table 7): every conv width of the stem and of res2..res5 (and
    # of the res5 box head) is divided by n, at least 1 channel. Allowed: 1, 2, 4, 8, 16, 32.
    # n = 1 gives detectron2's stock widths.
    _C.MODEL.RESNETS.CHANNEL_DIVISOR = 1

    # ---------------------------------------------------------------------------------------------
    # Channel-divided VGG16 (build_divided_vgg_backbone, vgg.py)
    # ---------------------------------------------------------------------------------------------
    _C.MODEL.VGG = CN()
    # n of "VGG-1-n" (paper §4.1, Table 1): the 13 conv widths (64, 128, 256, 512, 512) are divided
    # by n, at least 1 channel. VGG-1-4 (teacher) has 128 channels in conv5, VGG-1-32 (student) 16.
    _C.MODEL.VGG.CHANNEL_DIVISOR = 1
    # Normalization after every conv: "" (none, the original VGG16), "BN", "SyncBN", "GN",
    # "FrozenBN". Use "BN" (or "GN") when training from scratch.
    _C.MODEL.VGG.NORM = ""
    # Outputs to return, from "vgg1" (conv1_2, stride 1) ... "vgg5" (conv5_3, stride 16; no pool5).
    _C.MODEL.VGG.OUT_FEATURES = ["vgg5"]
    # Freeze the first N conv blocks (0 = train all, 1..5). Frozen blocks also freeze their norm
    # layers.
    _C.MODEL.VGG.FREEZE_AT = 0

    # ---------------------------------------------------------------------------------------------
    # Quantized-output backbone (build_quantized_backbone, quantization.py). Paper eq. 1-3, §3.3.
    # ---------------------------------------------------------------------------------------------
    _C.MODEL.QUANTIZATION = CN()
    # Registered name of the backbone whose outputs are quantized, e.g.
    # "build_divided_resnet_backbone" or "build_divided_vgg_backbone". Used when
    # MODEL.BACKBONE.NAME = "build_quantized_backbone".
    _C.MODEL.QUANTIZATION.BACKBONE_NAME = "build_divided_resnet_backbone"
    # Names of the backbone outputs to quantize; [] = all of them ("the output feature map").
    _C.MODEL.QUANTIZATION.IN_FEATURES = []
    # Quantization stride s of the code book D = {0, s, 2s, ...} (eq. 2); the paper uses s = 1
    # (§3.5). For "pow2", s is the scale of the level 2^0.
    _C.MODEL.QUANTIZATION.STRIDE = 1.0
    # Code book: "uniform" (eq. 2, the paper's method) or "pow2" ({0} ∪ {s·2^k}, Table 6).
    _C.MODEL.QUANTIZATION.METHOD = "uniform"
    # Upper clip of the quantized value (largest level ≤ CLIP); 0.0 = no clip (the paper does not
    # clip).
    _C.MODEL.QUANTIZATION.CLIP = 0.0
    # Smallest exponent k of the power-of-2 code book s·2^k ("pow2" only); values ≤ s·2^(k-1)
    # go to 0.
    _C.MODEL.QUANTIZATION.POW2_MIN_EXP = -8
    # Stride from the teacher's statistics (ours, not in the paper; stride_calibration.py):
    # s = P_PERCENTILE(positive entries of the full-precision outputs that Q quantizes) / LEVELS,
    # measured once over the first NUM_IMAGES of DATASETS.TRAIN with MODEL.WEIGHTS (the
    # full-precision teacher) when train_net.py starts the quantized teacher's finetuning (§3.3).
    # The value replaces STRIDE in the run's config.yaml (LEVELS becomes 0 there), which the
    # students' mimic loss (eq. 6) inherits, and is recorded in OUTPUT_DIR/stride_calibration.json.
    _C.MODEL.QUANTIZATION.CALIBRATION = CN()
    # L: non-zero levels of {0, s, ..., L·s} spanning the percentile (2^b - 1 for b bits);
    # 0 = off: s = STRIDE (the paper).
    _C.MODEL.QUANTIZATION.CALIBRATION.LEVELS = 0
    # p (0 < p ≤ 100) of the percentile P_p of the positive entries.
    _C.MODEL.QUANTIZATION.CALIBRATION.PERCENTILE = 99.9
    # Training images measured.
    _C.MODEL.QUANTIZATION.CALIBRATION.NUM_IMAGES = 64

    # ---------------------------------------------------------------------------------------------
    # Mimic learning (MimicRCNN, mimic_rcnn.py). Paper §3.2-3.3, eq. 4-6.
    # ---------------------------------------------------------------------------------------------
    _C.MODEL.MIMIC = CN()
    _C.MODEL.MIMIC.TEACHER = CN()
    # Config file of the teacher detector, resolved like _BASE_: relative to the yaml file that
    # names it (to the working directory on the command line); absolute and scheme:// paths are
    # kept. It may itself use a quantized backbone (the paper's quantized teacher, §3.3).
    _C.MODEL.MIMIC.TEACHER.CONFIG_FILE = ""
    # Teacher checkpoint, loaded strictly when the model is built for training
    # (Trainer.build_model). "" = random teacher (tests only; a warning is logged).
    _C.MODEL.MIMIC.TEACHER.WEIGHTS = ""
    # The teacher file's size and SHA-256 are pinned in OUTPUT_DIR/teacher_pin.json when training
    # starts; --resume with a different file is an error unless this is True (then re-pinned).
    _C.MODEL.MIMIC.TEACHER.ALLOW_CHANGE = False
    # Cache of the teacher's maps f_t at TEACHER_FEATURES (ours, not in the paper): "" = off (the
    # teacher runs at every step). A folder: in training each image's map is read from it, or
    # computed by the teacher and written (lazy fill; tools/cache_teacher.py pre-fills it). A
    # quantized teacher's map is stored exactly (uint8 levels of eq. 1-2), a full-precision one's
    # as float16. The folder records what it was built from (teacher SHA-256, config, Q, input
    # rules); any other teacher or input is refused. Needs one training scale and no random crop
    # (teacher_cache.py).
    _C.MODEL.MIMIC.TEACHER.CACHE_DIR = ""
    # Student feature maps to mimic; [] = the maps its heads read, "the end of the feature
    # extractor" (§3.2): MODEL.ROI_HEADS.IN_FEATURES, or RETINANET / FCOS.IN_FEATURES (one-stage).
    _C.MODEL.MIMIC.STUDENT_FEATURES = []
    # Teacher feature maps, paired one to one with STUDENT_FEATURES; [] = the maps the teacher's
    # heads read (as for the student).
    _C.MODEL.MIMIC.TEACHER_FEATURES = []
    # N per image of eq. 5-6: the top-scoring proposals of the student's RPN after NMS (detached).
    # Paper §3.5: 128 for Faster R-CNN, 2000 for R-FCN. One-stage students: the top detections
    # (DENSE_ROIS).
    _C.MODEL.MIMIC.NUM_ROIS = 128
    # Also mimic on the ground-truth boxes of each image (not in the paper).
    _C.MODEL.MIMIC.ADD_GT_BOXES = False
    # RoI feature extraction for f^i: "ROIPool" (the paper's Caffe RoI pooling, max), "ROIAlign",
    # "ROIAlignV2".
    _C.MODEL.MIMIC.POOLER_TYPE = "ROIPool"
    # Several paired maps that form a pyramid (FPN: p2..p5 on both sides, same strides): each RoI
    # is pooled on ONE level, chosen by its box as detectron2's ROIPooler assigns levels (canonical
    # box 224 at level 4), the same level on both sides; N of eq. 5/6 counts each RoI once. The
    # two pyramids must have the same levels (else an error names both). r, per level or shared:
    # "shared" (default: FPN's own RPN and box heads share one set of weights over the levels, so
    # its levels are one feature space, and one r sees every RoI) or "per_level".
    _C.MODEL.MIMIC.FPN_ADAPTER = "shared"
    # When several maps are paired: "auto" (default) pools each RoI on one level (above) when the
    # paired student maps are its ROI heads' own IN_FEATURES (the heads pool them as a pyramid),
    # else every RoI on every pair (one loss term each); "pyramid" / "every" force either.
    _C.MODEL.MIMIC.LEVEL_ASSIGNMENT = "auto"
    # Output size S×S of the RoI features: 7 for Faster R-CNN, k = 3 for R-FCN (§3.5).
    _C.MODEL.MIMIC.POOLER_RESOLUTION = 7
    # Sampling ratio of ROIAlign poolers (0 = adaptive).
    _C.MODEL.MIMIC.POOLER_SAMPLING_RATIO = 0
    # r of eq. 5: "conv1x1" (student -> teacher channels, trained with the student, unused at
    # inference) or "identity" (channels must match). Applied to the pooled student features; each
    # map is pooled at its own stride, so student and teacher strides may differ.
    _C.MODEL.MIMIC.ADAPTER = "conv1x1"
    # Apply Q to the teacher's RoI features, Q(f_t^i) in eq. 6 (Table 4).
    _C.MODEL.MIMIC.QUANTIZE_TEACHER = True
    # Apply Q to the adapted student RoI features, Q(r(f_s^i)) in eq. 6 (Table 4). Both False = Li
    # et al.'s mimic (eq. 5).
    _C.MODEL.MIMIC.QUANTIZE_STUDENT = True
    # Q of the loss (eq. 6) has one source of truth: the quantized teacher's MODEL.QUANTIZATION
    # (its STRIDE s, METHOD, CLIP, POW2_MIN_EXP) when the teacher's backbone is
    # build_quantized_backbone, else this config's MODEL.QUANTIZATION. The two keys below override
    # s and the code book: 0.0 / "" (default) = inherit. With a quantized teacher an override must
    # agree with the teacher's value (an error names both otherwise); with a full-precision teacher
    # it sets the loss's Q freely (e.g. the Table 4 "student only" row).
    _C.MODEL.MIMIC.QUANT_STRIDE = 0.0
    # Code book of Q in the loss: "" (inherit), "uniform" (eq. 2) or "pow2" (Table 6).
    _C.MODEL.MIMIC.QUANT_METHOD = ""
    # λ of eq. 4 (paper: 0.1, 1, 10; Table 9). A float: write 10.0, not 10.
    _C.MODEL.MIMIC.LOSS_WEIGHT = 1.0
    # How λ is set (ours; loss_balance.py): "fixed" = LOSS_WEIGHT (the paper); "balanced" = λ
    # measured so that λ·L_m = BALANCE_RATIO · L_det (the detection losses), over the first
    # BALANCE_ITERS iterations from START_ITER (λ = 0 meanwhile), then frozen (LOSS_WEIGHT unused).
    _C.MODEL.MIMIC.LOSS_WEIGHT_MODE = "fixed"
    # The target λ·L_m / L_det of "balanced" (> 0). 10, measured on the faces benchmark (random
    # init, LR 0.01), where the paper's λ = 1 kills 6 of 9 students: the early λ·L_m / L_det is
    # ~580 at λ = 1 and ~58 at the healthy λ = 0.1; 10 gives λ ≈ 0.021-0.023, and all 9 students
    # (3 rows x 3 seeds) train (results/balanced_faces_cpu.json, docs/EVIDENCE.md §10); 1 gives
    # λ ≈ 0.002. On VOC C4 (ResNet18 res4 RoIs) 10 gives λ ≈ 0.0017, AP as at λ = 1 (same §).
    _C.MODEL.MIMIC.BALANCE_RATIO = 10.0
    # Iterations measured before the balanced λ is frozen (≥ 1).
    _C.MODEL.MIMIC.BALANCE_ITERS = 20
    # The collapse guard (ours; collapse_guard.py): "off", "warn" (a message once; the default: a
    # false alarm never costs a run) or "stop" (an error, last_checkpoint set to the newest one
    # before the collapse). A collapse: COLLAPSE_ITERS consecutive iterations in which at least
    # COLLAPSE_ZERO_FRACTION of the student's mimic-layer output is exactly 0 (dead ReLUs).
    _C.MODEL.MIMIC.COLLAPSE_GUARD = "warn"
    # The fraction of exact zeros in the student's mimic-layer output that counts as dead, (0, 1].
    _C.MODEL.MIMIC.COLLAPSE_ZERO_FRACTION = 0.999
    # Consecutive dead iterations that make a collapse (≥ 1).
    _C.MODEL.MIMIC.COLLAPSE_ITERS = 20
    # Scale of L_m (ours). "sum" (the paper, eq. 5/6): L_m = 1/(2N) Σ_i ‖·‖², summed over the
    # C·k·k entries of each RoI, so λ's meaning grows with the teacher's width C and the pooled size
    # k. "mean": L_m = 1/(2N) Σ_i ‖·‖² / (C·k·k), the per-entry mean, comparable across teachers.
    _C.MODEL.MIMIC.LOSS_NORMALIZATION = "sum"
    # Linear warm-up of λ over this many iterations from START_ITER (0 = none).
    _C.MODEL.MIMIC.WARMUP_ITERS = 0
    # λ = 0 before this iteration.
    _C.MODEL.MIMIC.START_ITER = 0
    # λ = 0 from this iteration on; -1 = never stop.
    _C.MODEL.MIMIC.STOP_ITER = -1
    # Fig. 5 diagnostic: fraction of RoI entries with |f_t - f_s| above this (logged as
    # mimic/mismatch_ratio).
    _C.MODEL.MIMIC.MISMATCH_THRESHOLD = 0.3
    # The N RoIs of a one-stage student (MimicRetinaNet, MimicFCOS; mimic_dense.py), which has no
    # proposals: "gt" (each ground-truth box and GT_COPIES jittered copies) and/or "detections"
    # (the student's own top NUM_ROIS detections of the step, detached; the only RoIs of an image
    # without ground truth).
    _C.MODEL.MIMIC.DENSE_ROIS = CN()
    # Sources of the one-stage RoIs: a non-empty subset of ["gt", "detections"].
    _C.MODEL.MIMIC.DENSE_ROIS.SOURCES = ["gt", "detections"]
    # Jittered copies of each ground-truth box, besides the box itself (≥ 0).
    _C.MODEL.MIMIC.DENSE_ROIS.GT_COPIES = 4
    # Largest shift of a jittered box's coordinate, as a fraction of the box's width or height.
    _C.MODEL.MIMIC.DENSE_ROIS.GT_JITTER = 0.1

    # ---------------------------------------------------------------------------------------------
    # FCOS (fcos.py): detectron2's FCOS, which upstream has only a LazyConfig, from yacs keys with
    # detectron2's defaults. MODEL.META_ARCHITECTURE "FCOS" (or "MimicFCOS" for a mimic student).
    # ---------------------------------------------------------------------------------------------
    _C.MODEL.FCOS = CN()
    # Object classes.
    _C.MODEL.FCOS.NUM_CLASSES = 80
    # Backbone maps the head reads (FPN levels, equal channels).
    _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Shared 3×3 convs of each branch (classification, box + centerness).
    _C.MODEL.FCOS.NUM_CONVS = 4
    # Normalization of the head's convs: "" (none), "BN", "SyncBN" or "GN" (32 groups).
    _C.MODEL.FCOS.NORM = "GN"
    # Prior probability of the classification bias at initialization.
    _C.MODEL.FCOS.PRIOR_PROB = 0.01
    # Radius (in strides) around a box's centre within which points are positives.
    _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # α of the focal loss.
    _C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    # γ of the focal loss.
    _C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    # Detections scored below this are dropped at inference.
    _C.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    # Candidates kept per level before NMS at inference.
    _C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    # IoU of the per-class NMS at inference.
    _C.MODEL.FCOS.NMS_THRESH_TEST = 0.6

    # ---------------------------------------------------------------------------------------------
    # R-FCN head (RFCNROIHeads, rfcn.py): MODEL.ROI_HEADS.NAME = "RFCNROIHeads". It reads the one
    # map in MODEL.ROI_HEADS.IN_FEATURES; class-agnostic boxes follow
    # MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG, box regression weights and loss follow
    # MODEL.ROI_BOX_HEAD as for Fast R-CNN.
    # ---------------------------------------------------------------------------------------------
    _C.MODEL.RFCN = CN()
    # Channels of the 1×1 "conv_new" + ReLU before the score maps (py-R-FCN: 1024); 0 = none.
    _C.MODEL.RFCN.CONV_NEW_DIM = 0
    # k of the k×k position-sensitive bins (R-FCN paper: 7; Quantization Mimic, WIDER FACE: 3,
    # §3.5).
    _C.MODEL.RFCN.POOLER_RESOLUTION = 7
    # "PSROIAlign" (torchvision ps_roi_align) or "PSROIPool" (ps_roi_pool, py-R-FCN's PSROIPooling).
    _C.MODEL.RFCN.POOLER_TYPE = "PSROIAlign"
    # Samples per bin side for PSROIAlign; 0 = adaptive (ceil(roi_size / k)).
    _C.MODEL.RFCN.POOLER_SAMPLING_RATIO = 0
    _C.MODEL.RFCN.OHEM = CN()
    # Online hard example mining (Shrivastava et al.; used by the paper for R-FCN, §3.5): score all
    # proposals, back-propagate the MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE (B) hardest per image.
    _C.MODEL.RFCN.OHEM.ENABLED = False
    # Proposals per image scored by OHEM (the top ones by RPN objectness; paper: 2000).
    _C.MODEL.RFCN.OHEM.NUM_PROPOSALS = 300
    # IoU of the NMS among RoIs (by loss) before taking the top B; the OHEM paper uses 0.7,
    # py-R-FCN none. ≤ 0 = no NMS.
    _C.MODEL.RFCN.OHEM.NMS_THRESH = -1.0


def _check(ok: bool, key: str, value, rule: str) -> None:
    if not ok:  # no file: the entry point names the config file (engine.setup_cfg)
        raise ConfigError("", f"invalid config: {key} = {value!r}", rule)


def validate_quantmimic_config(cfg: CN) -> None:
    """
    Check QuantMimic's keys (and the detectron2 keys they rely on) at start-up, so that a bad value
    fails before any training with an error naming the key and the value, instead of training to a
    wrong result (a negative λ, a negative RoI count that slices RoIs off, ...).
    """
    m, q, r = cfg.MODEL.MIMIC, cfg.MODEL.QUANTIZATION, cfg.MODEL.RFCN
    methods = ("uniform", "pow2")
    _check(q.STRIDE > 0, "MODEL.QUANTIZATION.STRIDE", q.STRIDE, "the stride s must be > 0")
    _check(q.METHOD in methods, "MODEL.QUANTIZATION.METHOD", q.METHOD, f"expected {methods}")
    _check(q.CLIP >= 0, "MODEL.QUANTIZATION.CLIP", q.CLIP, "must be ≥ 0 (0 = no clip)")
    c = q.CALIBRATION
    key = "MODEL.QUANTIZATION.CALIBRATION."
    _check(c.LEVELS >= 0, key + "LEVELS", c.LEVELS, "must be ≥ 0 (0 = off)")
    _check(0 < c.PERCENTILE <= 100, key + "PERCENTILE", c.PERCENTILE, "must be in (0, 100]")
    _check(c.NUM_IMAGES > 0, key + "NUM_IMAGES", c.NUM_IMAGES, "must be > 0")
    _check(m.LOSS_WEIGHT >= 0, "MODEL.MIMIC.LOSS_WEIGHT", m.LOSS_WEIGHT, "λ must be ≥ 0")
    _check(
        m.LOSS_WEIGHT_MODE in ("fixed", "balanced"),
        "MODEL.MIMIC.LOSS_WEIGHT_MODE",
        m.LOSS_WEIGHT_MODE,
        "'fixed' (LOSS_WEIGHT) or 'balanced' (BALANCE_RATIO)",
    )
    _check(m.BALANCE_RATIO > 0, "MODEL.MIMIC.BALANCE_RATIO", m.BALANCE_RATIO, "must be > 0")
    _check(m.BALANCE_ITERS >= 1, "MODEL.MIMIC.BALANCE_ITERS", m.BALANCE_ITERS, "must be ≥ 1")
    _check(
        m.COLLAPSE_GUARD in ("off", "warn", "stop"),
        "MODEL.MIMIC.COLLAPSE_GUARD",
        m.COLLAPSE_GUARD,
        "'off', 'warn' or 'stop'",
    )
    _check(
        0 < m.COLLAPSE_ZERO_FRACTION <= 1,
        "MODEL.MIMIC.COLLAPSE_ZERO_FRACTION",
        m.COLLAPSE_ZERO_FRACTION,
        "must be in (0, 1]",
    )
    _check(m.COLLAPSE_ITERS >= 1, "MODEL.MIMIC.COLLAPSE_ITERS", m.COLLAPSE_ITERS, "must be ≥ 1")
    _check(
        m.LOSS_NORMALIZATION in ("sum", "mean"),
        "MODEL.MIMIC.LOSS_NORMALIZATION",
        m.LOSS_NORMALIZATION,
        "'sum' (eq. 5/6) or 'mean' (per entry)",
    )
    _check(
        m.FPN_ADAPTER in ("shared", "per_level"),
        "MODEL.MIMIC.FPN_ADAPTER",
        m.FPN_ADAPTER,
        "'shared' or 'per_level'",
    )
    _check(
        m.LEVEL_ASSIGNMENT in ("auto", "pyramid", "every"),
        "MODEL.MIMIC.LEVEL_ASSIGNMENT",
        m.LEVEL_ASSIGNMENT,
        "'auto', 'pyramid' or 'every'",
    )
    _check(m.NUM_ROIS > 0, "MODEL.MIMIC.NUM_ROIS", m.NUM_ROIS, "N must be > 0")
    _check(m.QUANT_STRIDE >= 0, "MODEL.MIMIC.QUANT_STRIDE", m.QUANT_STRIDE, "≥ 0 (0 = inherit)")
    _check(
        m.QUANT_METHOD in ("",) + methods,
        "MODEL.MIMIC.QUANT_METHOD",
        m.QUANT_METHOD,
        f"expected '' (inherit) or one of {methods}",
    )
    _check(m.WARMUP_ITERS >= 0, "MODEL.MIMIC.WARMUP_ITERS", m.WARMUP_ITERS, "must be ≥ 0")
    _check(m.START_ITER >= 0, "MODEL.MIMIC.START_ITER", m.START_ITER, "must be ≥ 0")
    _check(
        m.STOP_ITER == -1 or m.STOP_ITER > m.START_ITER,
        "MODEL.MIMIC.STOP_ITER",
        m.STOP_ITER,
        f"must be -1 (never) or > MODEL.MIMIC.START_ITER = {m.START_ITER}",
    )
    _check(
        m.POOLER_RESOLUTION > 0, "MODEL.MIMIC.POOLER_RESOLUTION", m.POOLER_RESOLUTION, "must be > 0"
    )
    pooler_types = ("ROIPool", "ROIAlign", "ROIAlignV2")
    _check(
        m.POOLER_TYPE in pooler_types, "MODEL.MIMIC.POOLER_TYPE", m.POOLER_TYPE, str(pooler_types)
    )
    _check(
        m.ADAPTER in ("conv1x1", "identity"),
        "MODEL.MIMIC.ADAPTER",
        m.ADAPTER,
        "expected 'conv1x1' or 'identity'",
    )
    _check(
        m.MISMATCH_THRESHOLD >= 0,
        "MODEL.MIMIC.MISMATCH_THRESHOLD",
        m.MISMATCH_THRESHOLD,
        "must be ≥ 0",
    )
    _check(
        len(m.STUDENT_FEATURES) == len(m.TEACHER_FEATURES)
        or not (m.STUDENT_FEATURES and m.TEACHER_FEATURES),
        "MODEL.MIMIC.TEACHER_FEATURES",
        list(m.TEACHER_FEATURES),
        f"must pair one to one with MODEL.MIMIC.STUDENT_FEATURES = {list(m.STUDENT_FEATURES)}",
    )
    if cfg.MODEL.META_ARCHITECTURE in MIMIC_ARCHITECTURES:
        _check(
            bool(m.TEACHER.CONFIG_FILE),
            "MODEL.MIMIC.TEACHER.CONFIG_FILE",
            m.TEACHER.CONFIG_FILE,
            f"{cfg.MODEL.META_ARCHITECTURE} needs its teacher's config file",
        )
    if cfg.MODEL.ROI_HEADS.NAME == "RFCNROIHeads":
        _check(
            r.POOLER_RESOLUTION > 0, "MODEL.RFCN.POOLER_RESOLUTION", r.POOLER_RESOLUTION, "k > 0"
        )
        _check(r.CONV_NEW_DIM >= 0, "MODEL.RFCN.CONV_NEW_DIM", r.CONV_NEW_DIM, "must be ≥ 0")
        _check(
            r.OHEM.NUM_PROPOSALS > 0,
            "MODEL.RFCN.OHEM.NUM_PROPOSALS",
            r.OHEM.NUM_PROPOSALS,
            "must be > 0",
        )
        _check(
            cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE > 0,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
            "OHEM's B must be > 0",
        )
