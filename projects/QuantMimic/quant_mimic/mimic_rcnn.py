"""MimicRCNN: a student detector trained to mimic a frozen, optionally quantized teacher on RoIs.

Paper §3.2-3.3, Fig. 1. The student minimises

    L = L_cls^rpn + L_reg^rpn + L_cls^det + L_reg^det + λ·L_m                      (eq. 4)
    L_m = 1/(2N) Σ_i ‖Q(f_t^i) − Q(r(f_s^i))‖²₂                                    (eq. 6)

where f_t^i, f_s^i are the features of the i-th of N region proposals pooled from the teacher's and
the student's feature maps at the end of their feature extractors, r is an adapter from student to
teacher channels and Q the quantizer of eq. 1-2. Without Q this is Li et al.'s mimic (eq. 5).
"""

import logging
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import RoIPool

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_model
from detectron2.modeling.poolers import (
    ROIPooler,
    assign_boxes_to_levels,
    convert_boxes_to_pooler_format,
)
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from .quantization import quantize
from .roi_max_pool import roi_max_pool
from .teacher import (
    build_teacher_cfg,
    load_teacher_strict,
    mimic_quantizer_args,
    teacher_fingerprint,
)
from .teacher_cache import TeacherMapCache, cache_identity, check_cacheable_input, tensor_digest

__all__ = ["mimic_loss", "MimicRCNN"]

logger = logging.getLogger(__name__)


def mimic_loss(
    teacher_feats: torch.Tensor,
    student_feats: torch.Tensor,
    *,
    quantize_teacher: bool = True,
    quantize_student: bool = True,
    quantizer: Optional[Dict] = None,
    mismatch_threshold: float = 0.3,
    normalization: str = "sum",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    The mimic loss of eq. 6 (eq. 5 when both switches are off).

    Args:
        teacher_feats (Tensor): f_t, shape (N, C, S, S), the teacher's RoI features (no grad).
        student_feats (Tensor): r(f_s), shape (N, C, S, S), the adapted student RoI features.
        quantize_teacher / quantize_student (bool): apply Q to the teacher / student side.
        quantizer (dict): keyword arguments of :func:`quantize` (stride, method, clip,
            pow2_min_exp); default: the paper's s = 1 uniform code book.
        mismatch_threshold (float): threshold of the Fig. 5 mismatch ratio.
        normalization (str): "sum" (eq. 5/6: each RoI's squared error summed over its C·S·S
            entries) or "mean" (ours: divided by C·S·S, the per-entry mean).

    Returns:
        (Tensor, Tensor): L_m = 1/(2N) Σ_i ‖·‖²₂ (a scalar; 0 with gradient if N = 0; "mean":
        also / (C·S·S)), and the mean
        over RoIs of the fraction of entries with |f_t − f_s| > threshold (Fig. 5), without grad.
    """
    assert teacher_feats.shape == student_feats.shape, (
        f"Teacher RoI features {tuple(teacher_feats.shape)} and adapted student RoI features "
        f"{tuple(student_feats.shape)} differ: check MODEL.MIMIC.ADAPTER and the feature names"
    )
    n = teacher_feats.shape[0]
    if n == 0:
        zero = student_feats.sum() * 0.0
        return zero, zero.detach()
    q = quantizer or {}
    t = quantize(teacher_feats, **q) if quantize_teacher else teacher_feats
    s = quantize(student_feats, **q) if quantize_student else student_feats
    # Σ‖t − s‖² in one fused pass (and one for its gradient)
    loss = F.mse_loss(s, t, reduction="sum") / (2.0 * n)
    if normalization == "mean":
        loss = loss / (s.numel() // n)
    elif normalization != "sum":
        raise ValueError(f"normalization must be 'sum' or 'mean', got {normalization!r}")
    with torch.no_grad():
        # the mean over RoIs of per-RoI fractions: every RoI has C·S·S entries, one global mean
        mismatch = (t - s.detach()).abs_().gt_(mismatch_threshold).sum() / s.numel()
    return loss, mismatch


def _mimic_feature_names(cfg: CfgNode, tcfg: CfgNode, s_shapes, t_shapes) -> Tuple[List, List]:
    """
    The paired student/teacher feature-map names: ``MODEL.MIMIC.STUDENT/TEACHER_FEATURES``, by
    default the maps each detector's ROI heads read ("the end of the feature extractor", §3.2).
    """
    m = cfg.MODEL.MIMIC
    s_names = list(m.STUDENT_FEATURES) or list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    t_names = list(m.TEACHER_FEATURES) or list(tcfg.MODEL.ROI_HEADS.IN_FEATURES)
    for names, shapes, who in ((s_names, s_shapes, "student"), (t_names, t_shapes, "teacher")):
        missing = [n for n in names if n not in shapes]
        assert (
            not missing
        ), f"Mimic features {missing} are not {who} backbone outputs {list(shapes)}"
    return s_names, t_names


def _build_adapter(kind: str, student_channels: int, teacher_channels: int) -> nn.Module:
    """r of eq. 5: a 1×1 conv from student to teacher channels, or the identity."""
    if kind == "conv1x1":
        adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        nn.init.normal_(adapter.weight, std=0.01)
        nn.init.zeros_(adapter.bias)
        return adapter
    if kind == "identity":
        assert student_channels == teacher_channels, (
            f"ADAPTER 'identity' needs equal channels, got student {student_channels}, "
            f"teacher {teacher_channels}"
        )
        return nn.Identity()
    raise ValueError(f"Unknown MODEL.MIMIC.ADAPTER: {kind}")


def pyramid_levels(cfg: CfgNode, s_names, t_names, s_shapes, t_shapes) -> Optional[Tuple[int, int]]:
    """
    (min level, max level) when the paired maps are pooled as a feature pyramid (FPN: each RoI on
    one level), per ``MODEL.MIMIC.LEVEL_ASSIGNMENT`` ("auto": when the student maps are its ROI
    heads' IN_FEATURES; ``cfg`` None: "pyramid"); None for one pair or "every". A pyramid needs
    strides 2^k, k consecutive, equal on both sides: otherwise an error naming both.
    """
    mode = cfg.MODEL.MIMIC.LEVEL_ASSIGNMENT if cfg is not None else "pyramid"
    if len(s_names) < 2 or mode == "every":
        return None
    if mode == "auto" and list(s_names) != list(cfg.MODEL.ROI_HEADS.IN_FEATURES):
        return None
    s_strides = [s_shapes[n].stride for n in s_names]
    t_strides = [t_shapes[n].stride for n in t_names]
    if s_strides != t_strides:
        raise ValueError(
            "The student's and the teacher's feature pyramids differ: student "
            f"{dict(zip(s_names, s_strides))}, teacher {dict(zip(t_names, t_strides))} (name: "
            "stride). Each RoI is pooled on the same level on both sides; set "
            "MODEL.MIMIC.STUDENT_FEATURES and MODEL.MIMIC.TEACHER_FEATURES to levels of equal "
            "strides"
        )
    levels = [math.log2(s) for s in s_strides]
    consecutive = all(b - a == 1 for a, b in zip(levels, levels[1:]))
    if not all(v.is_integer() for v in levels) or not consecutive:
        raise ValueError(
            f"Mimic features {dict(zip(s_names, s_strides))} are several maps but not a pyramid "
            "(strides 2^k, consecutive k, in increasing order): list them as FPN levels, e.g. "
            "p2 p3 p4 p5"
        )
    return int(levels[0]), int(levels[-1])


def _build_pooler(m: CfgNode, stride: int) -> ROIPooler:
    """The RoI pooling of f^i (S×S, ``MODEL.MIMIC.POOLER_*``) on one map of the given stride."""
    return ROIPooler(
        output_size=m.POOLER_RESOLUTION,
        scales=(1.0 / stride,),
        sampling_ratio=m.POOLER_SAMPLING_RATIO,
        pooler_type=m.POOLER_TYPE,
    )


@META_ARCH_REGISTRY.register()
class MimicRCNN(GeneralizedRCNN):
    """
    A :class:`GeneralizedRCNN` student (any backbone, RPN and ROI head) trained with the RoI mimic
    loss against a frozen teacher (paper §3.2-3.3).

    The teacher is built from its own config file, loaded (strictly) by :meth:`load_teacher`, kept
    in eval mode, run under ``no_grad`` and only up to its backbone. It is *not* a submodule: it is
    not in ``state_dict()`` (so never in checkpoints), not in the optimizer, not wrapped by DDP, and
    not switched to train mode by ``model.train()``; it follows the student's device (``.to()``).
    The adapters r are submodules (in the student's checkpoint) and unused at inference, which is
    exactly the student's.
    """

    @configurable
    def __init__(
        self,
        *,
        teacher: GeneralizedRCNN,
        teacher_weights: str = "",
        student_feature_names: List[str],
        teacher_feature_names: List[str],
        adapters: nn.ModuleList,
        student_poolers: List[ROIPooler],
        teacher_poolers: List[ROIPooler],
        num_rois: int = 128,
        add_gt_boxes: bool = False,
        quantize_teacher: bool = True,
        quantize_student: bool = True,
        quantizer: Optional[Dict] = None,
        loss_weight: float = 1.0,
        warmup_iters: int = 0,
        start_iter: int = 0,
        stop_iter: int = -1,
        mismatch_threshold: float = 0.3,
        loss_normalization: str = "sum",
        pyramid: Optional[Tuple[int, int]] = None,
        teacher_cache_dir: str = "",
        teacher_cache_identity: Optional[Dict] = None,
        **kwargs,
    ):
        """
        Args:
            teacher (GeneralizedRCNN): the teacher detector (only its backbone runs).
            teacher_weights (str): checkpoint of the teacher, loaded by :meth:`load_teacher`.
            student_feature_names / teacher_feature_names (list[str]): the paired maps to mimic.
            adapters (nn.ModuleList): r for each pair, mapping student RoI features to the teacher's
                channels; with ``pyramid``, one per level or one shared by every level.
            student_poolers / teacher_poolers (list[ROIPooler]): one per pair (own stride each).
            num_rois (int): N per image: the top-scoring RPN proposals after NMS.
            add_gt_boxes (bool): also mimic on the ground-truth boxes.
            quantize_teacher / quantize_student (bool): apply Q to each side (eq. 6, Table 4).
            quantizer (dict): keyword arguments of :func:`quantize` (see
                :func:`mimic_quantizer_args`); default: s = 1, uniform.
            loss_weight (float): λ of eq. 4.
            warmup_iters (int): λ ramps linearly from 0 over this many iterations after start_iter.
            start_iter / stop_iter (int): λ = 0 before start_iter and from stop_iter on (-1: never).
            mismatch_threshold (float): Fig. 5 diagnostic threshold.
            loss_normalization (str): "sum" (eq. 5/6) or "mean" (per RoI entry), see
                :func:`mimic_loss`.
            pyramid ((int, int)): (min, max) level when the pairs are FPN levels (see
                :func:`pyramid_levels`): each RoI is pooled on one level, assigned by its box as
                detectron2's ``ROIPooler`` does; None: every RoI on every pair.
            teacher_cache_dir (str): where the teacher's maps are cached in training ("" = off,
                see :mod:`quant_mimic.teacher_cache`).
            teacher_cache_identity (dict): :func:`cache_identity` without the teacher's SHA-256,
                which is added when the cache is opened (after the teacher is loaded).
            kwargs: :class:`GeneralizedRCNN` arguments of the student.
        """
        super().__init__(**kwargs)
        assert len(student_feature_names) == len(teacher_feature_names) and (
            len(adapters) == len(student_feature_names) or (pyramid and len(adapters) == 1)
        ), "MODEL.MIMIC.STUDENT_FEATURES and TEACHER_FEATURES must pair up one to one"
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        # Not registered as a submodule on purpose (see class docstring).
        object.__setattr__(self, "_teacher", teacher)
        self.teacher_weights = teacher_weights
        self.teacher_loaded = False
        self._warned_random_teacher = False
        self.student_feature_names = list(student_feature_names)
        self.teacher_feature_names = list(teacher_feature_names)
        self.mimic_adapters = adapters
        # Poolers hold no parameters; a plain list keeps them out of the state_dict.
        self.student_poolers = list(student_poolers)
        self.teacher_poolers = list(teacher_poolers)
        self.num_rois = num_rois
        self.add_gt_boxes = add_gt_boxes
        self.quantize_teacher = quantize_teacher
        self.quantize_student = quantize_student
        self.quantizer = dict(quantizer or {"stride": 1.0, "method": "uniform"})
        self.loss_weight = loss_weight
        self.warmup_iters = warmup_iters
        self.start_iter = start_iter
        self.stop_iter = stop_iter
        self.mismatch_threshold = mismatch_threshold
        self.loss_normalization = loss_normalization
        self.pyramid = tuple(pyramid) if pyramid else None
        self.teacher_cache_dir = teacher_cache_dir
        self._teacher_cache_identity = teacher_cache_identity
        self._teacher_cache: Optional[TeacherMapCache] = None
        quantize(torch.zeros(1), **self.quantizer)  # validate early

    @classmethod
    def from_config(cls, cfg: CfgNode):
        ret = super().from_config(cfg)
        m = cfg.MODEL.MIMIC
        tcfg = build_teacher_cfg(cfg)
        assert tcfg.MODEL.META_ARCHITECTURE != "MimicRCNN", "A MimicRCNN cannot be a teacher"
        assert tcfg.INPUT.FORMAT == cfg.INPUT.FORMAT, (
            f"Teacher INPUT.FORMAT {tcfg.INPUT.FORMAT} != student {cfg.INPUT.FORMAT}: "
            "both read the same images"
        )
        teacher = build_model(tcfg)
        s_shapes = ret["backbone"].output_shape()
        t_shapes = teacher.backbone.output_shape()
        s_names, t_names = _mimic_feature_names(cfg, tcfg, s_shapes, t_shapes)
        pyramid = pyramid_levels(cfg, s_names, t_names, s_shapes, t_shapes)
        pairs = list(zip(s_names, t_names))
        if pyramid and m.FPN_ADAPTER == "shared":
            channels = {(s_shapes[s].channels, t_shapes[t].channels) for s, t in pairs}
            if len(channels) > 1:
                raise ValueError(
                    f"MODEL.MIMIC.FPN_ADAPTER 'shared' needs equal channels on every level, got "
                    f"(student, teacher) channels {sorted(channels)}: use 'per_level'"
                )
            pairs = pairs[:1]
        identity = None
        if m.TEACHER.CACHE_DIR:
            check_cacheable_input(cfg)
            identity = cache_identity(cfg, tcfg, teacher.backbone, t_names, teacher_sha256="")
        ret.update(
            teacher=teacher,
            teacher_weights=m.TEACHER.WEIGHTS,
            student_feature_names=s_names,
            teacher_feature_names=t_names,
            adapters=nn.ModuleList(
                _build_adapter(m.ADAPTER, s_shapes[s].channels, t_shapes[t].channels)
                for s, t in pairs
            ),
            student_poolers=[_build_pooler(m, s_shapes[n].stride) for n in s_names],
            teacher_poolers=[_build_pooler(m, t_shapes[n].stride) for n in t_names],
            num_rois=m.NUM_ROIS,
            add_gt_boxes=m.ADD_GT_BOXES,
            quantize_teacher=m.QUANTIZE_TEACHER,
            quantize_student=m.QUANTIZE_STUDENT,
            quantizer=mimic_quantizer_args(cfg, tcfg),
            loss_weight=m.LOSS_WEIGHT,
            warmup_iters=m.WARMUP_ITERS,
            start_iter=m.START_ITER,
            stop_iter=m.STOP_ITER,
            mismatch_threshold=m.MISMATCH_THRESHOLD,
            loss_normalization=m.LOSS_NORMALIZATION,
            pyramid=pyramid,
            teacher_cache_dir=m.TEACHER.CACHE_DIR,
            teacher_cache_identity=identity,
        )
        return ret

    @property
    def teacher(self) -> GeneralizedRCNN:
        """The frozen teacher detector (not a submodule)."""
        return self._teacher

    def load_teacher(self, path: Optional[str] = None) -> None:
        """Load the teacher's weights (default ``MODEL.MIMIC.TEACHER.WEIGHTS``), strictly."""
        load_teacher_strict(self.teacher, path or self.teacher_weights)
        self.teacher_loaded = True

    @property
    def teacher_cache(self) -> Optional[TeacherMapCache]:
        """The cache of the teacher's maps (``MODEL.MIMIC.TEACHER.CACHE_DIR``), opened on first
        use, when the teacher is loaded: its identity includes the teacher checkpoint's SHA-256
        (of its weights in memory for a random teacher). None when off."""
        if not self.teacher_cache_dir:
            return None
        if self._teacher_cache is None:
            if self.teacher_loaded and self.teacher_weights:
                sha = teacher_fingerprint(self.teacher_weights)["sha256"]
            else:  # a random teacher (tests): what its weights are, not a file
                state = self.teacher.state_dict()
                sha = "weights:" + tensor_digest(
                    torch.cat([v.detach().flatten().double().cpu() for v in state.values()])
                )
            identity = dict(self._teacher_cache_identity, teacher_sha256=sha)
            forms = 1 if identity["input"]["INPUT.RANDOM_FLIP"] == "none" else 2
            self._teacher_cache = TeacherMapCache(self.teacher_cache_dir, identity, forms)
        return self._teacher_cache

    def teacher_maps(self, batched_inputs, fill_only: bool = False):
        """
        The teacher's maps at the mimicked features for a batch, computed as the student's are: on
        the batch padded to one size (detectron2's ``ImageList``). In training with
        ``MODEL.MIMIC.TEACHER.CACHE_DIR`` set, each image's map in that padded layout is read from
        the cache when every image of the batch has one (an entry is keyed by the image, its size
        and the padded size, so it is exactly what the teacher would compute here); otherwise the
        teacher runs on the batch and the missing entries are written.

        Args:
            batched_inputs (list[dict]): the model inputs.
            fill_only (bool): only fill the cache; return the number of maps computed.

        Returns:
            dict[str->Tensor]: {teacher feature name: (N, C, H', W')}, without grad.
        """
        cache = self.teacher_cache if self.training else None
        images = self.teacher.preprocess_image(batched_inputs)
        padded = tuple(images.tensor.shape[-2:])
        names = self.teacher_feature_names
        entries, stored = [], [None] * len(batched_inputs)
        if cache is not None:
            entries = [
                cache.entry(x.get("file_name", ""), x["image"], padded) for x in batched_inputs
            ]
            stored = [cache.get(e) for e in entries]
        if all(m is not None for m in stored):
            if fill_only:
                return 0
            return {n: torch.stack([m[n] for m in stored]).to(self.device) for n in names}
        with torch.no_grad():
            feats = self.teacher.backbone(images.tensor)
        maps = {n: feats[n] for n in names}
        for j, (e, m) in enumerate(zip(entries, stored)):
            if m is None:
                cache.put(e, {n: maps[n][j] for n in names})
        return sum(m is None for m in stored) if fill_only else maps

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # BN statistics of the teacher never drift
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)  # the teacher follows the student's device/dtype
        return self

    def current_loss_weight(self, iteration: int) -> float:
        """λ at ``iteration``: 0 outside [START_ITER, STOP_ITER), linear warm-up from START_ITER."""
        if iteration < self.start_iter or (0 <= self.stop_iter <= iteration):
            return 0.0
        if self.warmup_iters > 0:
            return self.loss_weight * min(
                1.0, (iteration - self.start_iter + 1) / self.warmup_iters
            )
        return self.loss_weight

    def mimic_boxes(
        self, proposals: List[Instances], gt_instances: Optional[List[Instances]]
    ) -> List[Boxes]:
        """The N boxes per image to mimic on: top ``num_rois`` RPN proposals (+ GT), detached."""
        boxes = []
        for i, p in enumerate(proposals):
            # detectron2's RPN returns proposals after NMS, sorted by objectness, without grad.
            b = p.proposal_boxes.tensor[: self.num_rois].detach()
            if self.add_gt_boxes and gt_instances is not None:
                b = torch.cat([b, gt_instances[i].gt_boxes.tensor.to(b)], dim=0)
            boxes.append(Boxes(b))
        return boxes

    def pooled_roi_features(
        self,
        batched_inputs,
        student_feature_maps: Dict[str, torch.Tensor],
        boxes: List[Boxes],
        quantize_teacher_maps: bool = False,
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        The paired RoI features of eq. 5-6 before Q, one pair per mimicked feature map.
        With RoI max pooling (``POOLER_TYPE`` "ROIPool", the paper's) the teacher side is pooled
        by :func:`~quant_mimic.roi_max_pool.roi_max_pool` (exact, no gradient, ~10× faster on
        CPU), and with ``quantize_teacher_maps`` f_t is Q(f_t), computed by quantizing the
        teacher's map before pooling: Q is non-decreasing and maps 0 to 0, so max pooling commutes
        with it exactly, and the map has far fewer entries than the N overlapping RoIs (32× fewer
        for 128 RoIs on the synthetic faces).

        Args:
            batched_inputs (list[dict]): the model inputs (the teacher preprocesses them itself).
            student_feature_maps (dict[str->Tensor]): the student's backbone outputs.
            boxes (list[Boxes]): per image, the N_j boxes in input-image coordinates.

        Returns:
            list[(Tensor, Tensor)]: (f_t, r(f_s)), each (ΣN_j, C_t, S, S); f_t without grad.
        """
        teacher_maps = self.teacher_maps(batched_inputs)
        if self.pyramid:
            return [
                self._pooled_on_levels(
                    teacher_maps, student_feature_maps, boxes, quantize_teacher_maps
                )
            ]
        pairs = []
        for i, (s_name, t_name) in enumerate(
            zip(self.student_feature_names, self.teacher_feature_names)
        ):
            t_map = teacher_maps[t_name]
            f_t = None
            if self._max_pooling(i):
                if quantize_teacher_maps:
                    t_map = quantize(t_map, **self.quantizer)
                pooler = self.teacher_poolers[i]
                f_t = roi_max_pool(
                    t_map,
                    convert_boxes_to_pooler_format(boxes),
                    pooler.output_size[0],
                    pooler.level_poolers[0].spatial_scale,
                )
            if f_t is None:  # another pooler, or a map too large for the window table
                f_t = self.teacher_poolers[i]([t_map], boxes)
            f_s = self.student_poolers[i]([student_feature_maps[s_name]], boxes)
            pairs.append((f_t, self.mimic_adapters[i](f_s)))
        return pairs

    def _pooled_on_levels(self, teacher_maps, student_feature_maps, boxes, quantize_teacher_maps):
        """
        FPN: every RoI pooled on the one level its box is assigned to (detectron2's
        ``assign_boxes_to_levels``, canonical box 224 at level 4, as ``ROIPooler``), the same level
        on both sides, then r of that level (or the shared r).

        Returns:
            (Tensor, Tensor): f_t and r(f_s), each (ΣN_j, C_t, S, S), RoIs grouped by level.
        """
        rois = convert_boxes_to_pooler_format(boxes)
        levels = assign_boxes_to_levels(boxes, self.pyramid[0], self.pyramid[1], 224, 4)
        f_ts, f_ss = [], []
        for i, (s_name, t_name) in enumerate(
            zip(self.student_feature_names, self.teacher_feature_names)
        ):
            idx = torch.nonzero(levels == i, as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            level_rois = rois[idx]
            t_map = teacher_maps[t_name]
            t_pool = self.teacher_poolers[i].level_poolers[0]
            f_t = None
            if self._max_pooling(i):
                if quantize_teacher_maps:
                    t_map = quantize(t_map, **self.quantizer)
                f_t = roi_max_pool(t_map, level_rois, t_pool.output_size[0], t_pool.spatial_scale)
            if f_t is None:
                f_t = t_pool(t_map, level_rois)
            s_pool = self.student_poolers[i].level_poolers[0]
            f_s = s_pool(student_feature_maps[s_name], level_rois)
            adapter = self.mimic_adapters[i if len(self.mimic_adapters) > 1 else 0]
            f_ts.append(f_t)
            f_ss.append(adapter(f_s))
        if not f_ts:  # no RoI at all: empty tensors of the right shape, loss 0 with a gradient
            t_map = teacher_maps[self.teacher_feature_names[0]]
            s_map = student_feature_maps[self.student_feature_names[0]]
            size = self.teacher_poolers[0].output_size
            empty = s_map.new_zeros((0, s_map.shape[1], *size))
            return t_map.new_zeros((0, t_map.shape[1], *size)), self.mimic_adapters[0](empty)
        return torch.cat(f_ts), torch.cat(f_ss)

    def _teacher_quantized_in_pooling(self, i: int) -> bool:
        """Whether pair i's f_t is already Q(f_t): max pooling of the quantized map (every level
        of a pyramid)."""
        if self.pyramid:
            return all(self._max_pooling(j) for j in range(len(self.teacher_poolers)))
        return self._max_pooling(i)

    def _max_pooling(self, i: int) -> bool:
        """Whether the i-th teacher pooler is RoI max pooling (commutes with Q)."""
        return all(isinstance(p, RoIPool) for p in self.teacher_poolers[i].level_poolers)

    def weighted_mimic_loss(
        self, batched_inputs, student_feature_maps: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> Dict[str, torch.Tensor]:
        """
        Args: see :meth:`pooled_roi_features`.

        Returns:
            dict[str->Tensor]: {"loss_mimic": λ·L_m}; diagnostics go to the event storage.
        """
        total = student_feature_maps[self.student_feature_names[0]].sum() * 0.0
        mismatches = []
        pairs = self.pooled_roi_features(
            batched_inputs, student_feature_maps, boxes, quantize_teacher_maps=self.quantize_teacher
        )
        for i, (f_t, f_s) in enumerate(pairs):
            loss, mismatch = mimic_loss(
                f_t,
                f_s,
                # Q(f_t) already, when pooled by max from the quantized map (exact, cheaper)
                quantize_teacher=self.quantize_teacher
                and not self._teacher_quantized_in_pooling(i),
                quantize_student=self.quantize_student,
                quantizer=self.quantizer,
                mismatch_threshold=self.mismatch_threshold,
                normalization=self.loss_normalization,
            )
            total = total + loss
            mismatches.append(mismatch)
        storage = get_event_storage()
        weight = self.current_loss_weight(storage.iter)
        storage.put_scalar("mimic/num_rois", float(sum(len(b) for b in boxes)))
        storage.put_scalar("mimic/loss_unweighted", total.detach().item())
        storage.put_scalar("mimic/mismatch_ratio", torch.stack(mismatches).mean().item())
        storage.put_scalar("mimic/lambda", weight)
        cache = self._teacher_cache
        if cache is not None and cache.hits + cache.misses:
            storage.put_scalar("mimic/teacher_cache_hit", cache.hits / (cache.hits + cache.misses))
        return {"loss_mimic": total * weight}

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        Training: the student's RPN and ROI-head losses plus ``loss_mimic`` (eq. 4).
        Inference: exactly :meth:`GeneralizedRCNN.inference` of the student.
        """
        if not self.training:
            return self.inference(batched_inputs)
        if not self.teacher_loaded:
            if self.teacher_weights:
                raise RuntimeError(
                    "MimicRCNN is training but its teacher is not loaded: call "
                    "model.load_teacher() (quant_mimic.Trainer.build_model does) or set "
                    "MODEL.MIMIC.TEACHER.WEIGHTS ''"
                )
            if not self._warned_random_teacher:
                logger.warning(
                    "MODEL.MIMIC.TEACHER.WEIGHTS is empty: the teacher is randomly initialised"
                )
                self._warned_random_teacher = True
        images = self.preprocess_image(batched_inputs)
        gt_instances = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        boxes = self.mimic_boxes(proposals, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        losses.update(self.weighted_mimic_loss(batched_inputs, features, boxes))
        return losses
