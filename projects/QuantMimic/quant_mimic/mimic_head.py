"""The RoI mimic head: the loss λ·L_m of eq. 4-6 from the teacher's maps and the student's.

Paper §3.2-3.3, Fig. 1:

    L_m = 1/(2N) Σ_i ‖Q(f_t^i) − Q(r(f_s^i))‖²₂                                    (eq. 6)

where f_t^i, f_s^i are the features of the i-th of N region proposals pooled from the teacher's and
the student's feature maps at the end of their feature extractors, r is an adapter from student to
teacher channels and Q the quantizer of eq. 1-2. Without Q this is Li et al.'s mimic (eq. 5).

The head is given both sides' maps and the boxes; it never runs the teacher. Its data flow is one
way: maps → paired RoI features, the teacher side quantized once (before max pooling, which
commutes with Q, or after any other pooling) → :func:`mimic_loss` → ``{"loss_mimic": λ·L_m}``.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import RoIPool

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import (
    ROIPooler,
    assign_boxes_to_levels,
    convert_boxes_to_pooler_format,
)
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from .config import detector_in_features
from .loss_balance import LossBalance
from .quantization import quantize
from .roi_max_pool import roi_max_pool

__all__ = ["mimic_loss", "pyramid_levels", "mimic_feature_names", "RoIMimicHead"]


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


def mimic_feature_names(cfg: CfgNode, tcfg: CfgNode, s_shapes, t_shapes) -> Tuple[List, List]:
    """
    The paired student/teacher feature-map names: ``MODEL.MIMIC.STUDENT/TEACHER_FEATURES``, by
    default the maps each detector's heads read ("the end of the feature extractor", §3.2;
    :func:`~quant_mimic.config.detector_in_features`).
    """
    m = cfg.MODEL.MIMIC
    s_names = list(m.STUDENT_FEATURES) or detector_in_features(cfg)
    t_names = list(m.TEACHER_FEATURES) or detector_in_features(tcfg)
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
    one level), per ``MODEL.MIMIC.LEVEL_ASSIGNMENT`` ("auto": when the student maps are the ones
    its heads read, ROI or one-stage; ``cfg`` None: "pyramid"); None for one pair or "every". A
    pyramid needs strides 2^k, k consecutive, equal on both sides: otherwise an error naming both.
    """
    mode = cfg.MODEL.MIMIC.LEVEL_ASSIGNMENT if cfg is not None else "pyramid"
    if len(s_names) < 2 or mode == "every":
        return None
    if mode == "auto" and list(s_names) != detector_in_features(cfg):
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


class RoIMimicHead:
    """
    λ·L_m of eq. 4-6 over N RoIs per image, given the teacher's and the student's maps.

    Holds the adapters r (an ``nn.ModuleList``; the model that uses the head registers them, so
    they are in its checkpoint, optimizer and DDP wrapper: ``MimicRCNN`` as ``mimic_adapters``),
    the RoI poolers of both sides (no parameters), Q and λ's schedule. On a feature pyramid each
    RoI is pooled on the one level its box is assigned to, the same on both sides.
    """

    @configurable
    def __init__(
        self,
        *,
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
        balance: Optional[LossBalance] = None,
    ):
        """
        Args:
            student_feature_names / teacher_feature_names (list[str]): the paired maps to mimic.
            adapters (nn.ModuleList): r for each pair, mapping student RoI features to the teacher's
                channels; with ``pyramid``, one per level or one shared by every level.
            student_poolers / teacher_poolers (list[ROIPooler]): one per pair (own stride each).
            num_rois (int): N per image: the top-scoring RPN proposals after NMS.
            add_gt_boxes (bool): also mimic on the ground-truth boxes.
            quantize_teacher / quantize_student (bool): apply Q to each side (eq. 6, Table 4).
            quantizer (dict): keyword arguments of :func:`quantize` (see
                :func:`~quant_mimic.teacher.mimic_quantizer_args`); default: s = 1, uniform.
            loss_weight (float): λ of eq. 4.
            warmup_iters (int): λ ramps linearly from 0 over this many iterations after start_iter.
            start_iter / stop_iter (int): λ = 0 before start_iter and from stop_iter on (-1: never).
            mismatch_threshold (float): Fig. 5 diagnostic threshold.
            loss_normalization (str): "sum" (eq. 5/6) or "mean" (per RoI entry), see
                :func:`mimic_loss`.
            pyramid ((int, int)): (min, max) level when the pairs are FPN levels (see
                :func:`pyramid_levels`); None: every RoI on every pair.
            balance (LossBalance): λ measured from the losses instead of ``loss_weight``
                (:mod:`quant_mimic.loss_balance`); None: the fixed λ.
        """
        assert len(student_feature_names) == len(teacher_feature_names) and (
            len(adapters) == len(student_feature_names) or (pyramid and len(adapters) == 1)
        ), "MODEL.MIMIC.STUDENT_FEATURES and TEACHER_FEATURES must pair up one to one"
        self.student_feature_names = list(student_feature_names)
        self.teacher_feature_names = list(teacher_feature_names)
        self.adapters = adapters
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
        self.balance = balance
        quantize(torch.zeros(1), **self.quantizer)  # validate early

    @classmethod
    def from_config(
        cls,
        cfg: CfgNode,
        tcfg: CfgNode,
        student_shapes: Dict[str, ShapeSpec],
        teacher_shapes: Dict[str, ShapeSpec],
        quantizer: Dict,
    ):
        """``cfg``: the student's config (``MODEL.MIMIC``), ``tcfg``: the teacher's;
        ``*_shapes``: each backbone's ``output_shape()``; ``quantizer``: Q of the loss."""
        m = cfg.MODEL.MIMIC
        s_shapes, t_shapes = student_shapes, teacher_shapes
        s_names, t_names = mimic_feature_names(cfg, tcfg, s_shapes, t_shapes)
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
        return dict(
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
            quantizer=quantizer,
            loss_weight=m.LOSS_WEIGHT,
            warmup_iters=m.WARMUP_ITERS,
            start_iter=m.START_ITER,
            stop_iter=m.STOP_ITER,
            mismatch_threshold=m.MISMATCH_THRESHOLD,
            loss_normalization=m.LOSS_NORMALIZATION,
            pyramid=pyramid,
            balance=(
                LossBalance(m.BALANCE_RATIO, m.BALANCE_ITERS, m.START_ITER)
                if m.LOSS_WEIGHT_MODE == "balanced"
                else None
            ),
        )

    def current_loss_weight(self, iteration: int, base: Optional[float] = None) -> float:
        """λ at ``iteration``: 0 outside [START_ITER, STOP_ITER), linear warm-up from START_ITER;
        ``base`` (default ``loss_weight``) is the λ the schedule scales."""
        base = self.loss_weight if base is None else base
        if iteration < self.start_iter or (0 <= self.stop_iter <= iteration):
            return 0.0
        if self.warmup_iters > 0:
            return base * min(1.0, (iteration - self.start_iter + 1) / self.warmup_iters)
        return base

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

    def _max_pooling(self, i: int) -> bool:
        """Whether the i-th teacher pooler is RoI max pooling (commutes with Q)."""
        return all(isinstance(p, RoIPool) for p in self.teacher_poolers[i].level_poolers)

    def _teacher_side(self, i: int, t_map: torch.Tensor, rois: torch.Tensor, quantized: bool):
        """
        f_t of pair (or level) i for ``rois`` (R, 5), Q(f_t) when ``quantized``. With RoI max
        pooling (``POOLER_TYPE`` "ROIPool", the paper's) the map is pooled by
        :func:`~quant_mimic.roi_max_pool.roi_max_pool` (exact, no gradient, ~10× faster on CPU)
        and Q is applied to the map before pooling: Q is non-decreasing and maps 0 to 0, so max
        pooling commutes with it exactly, and the map has far fewer entries than the N
        overlapping RoIs. Any other pooling quantizes the pooled features.
        """
        pool = self.teacher_poolers[i].level_poolers[0]
        if self._max_pooling(i):
            if quantized:
                t_map = quantize(t_map, **self.quantizer)
            f_t = roi_max_pool(t_map, rois, pool.output_size[0], pool.spatial_scale)
            if f_t is not None:
                return f_t
            quantized = False  # a map too large for the window table: pooled below, Q done
        f_t = pool(t_map, rois)
        return quantize(f_t, **self.quantizer) if quantized else f_t

    def paired_features(
        self,
        teacher_maps: Dict[str, torch.Tensor],
        student_maps: Dict[str, torch.Tensor],
        boxes: List[Boxes],
        quantize_teacher: Optional[bool] = None,
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        The paired RoI features of eq. 5-6, one pair per mimicked map (one in all on a pyramid,
        RoIs grouped by level).

        Args:
            teacher_maps (dict[str->Tensor]): the teacher's maps, (B, C_t, H, W) each, no grad.
            student_maps (dict[str->Tensor]): the student's backbone outputs.
            boxes (list[Boxes]): per image, the N_j boxes in input-image coordinates.
            quantize_teacher (bool): return Q(f_t) (default: as the loss does, eq. 6) or f_t.

        Returns:
            list[(Tensor, Tensor)]: (f_t or Q(f_t), r(f_s)), each (ΣN_j, C_t, S, S); f_t no grad.
        """
        if quantize_teacher is None:
            quantize_teacher = self.quantize_teacher
        rois = convert_boxes_to_pooler_format(boxes)
        names = list(zip(self.student_feature_names, self.teacher_feature_names))
        if self.pyramid:
            levels = assign_boxes_to_levels(boxes, self.pyramid[0], self.pyramid[1], 224, 4)
            groups = [torch.nonzero(levels == i, as_tuple=True)[0] for i in range(len(names))]
        else:
            groups = [None] * len(names)
        f_ts, f_ss = [], []
        for i, ((s_name, t_name), idx) in enumerate(zip(names, groups)):
            if idx is not None and idx.numel() == 0:
                continue
            level_rois = rois if idx is None else rois[idx]
            f_ts.append(self._teacher_side(i, teacher_maps[t_name], level_rois, quantize_teacher))
            s_pool = self.student_poolers[i].level_poolers[0]
            f_s = s_pool(student_maps[s_name], level_rois)
            f_ss.append(self.adapters[i if len(self.adapters) > 1 else 0](f_s))
        if not self.pyramid:
            return list(zip(f_ts, f_ss))
        if not f_ts:  # no RoI at all: empty tensors of the right shape, loss 0 with a gradient
            t_map = teacher_maps[self.teacher_feature_names[0]]
            s_map = student_maps[self.student_feature_names[0]]
            size = self.teacher_poolers[0].output_size
            empty = s_map.new_zeros((0, s_map.shape[1], *size))
            return [(t_map.new_zeros((0, t_map.shape[1], *size)), self.adapters[0](empty))]
        return [(torch.cat(f_ts), torch.cat(f_ss))]

    def losses(
        self,
        teacher_maps: Dict[str, torch.Tensor],
        student_maps: Dict[str, torch.Tensor],
        boxes: List[Boxes],
        detection_loss: Optional[float] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args: see :meth:`paired_features`; ``detection_loss``: this step's detection losses (their
            sum), which the balanced λ measures (:mod:`quant_mimic.loss_balance`).

        Returns:
            dict[str->Tensor]: {"loss_mimic": λ·L_m}; the unweighted L_m, λ, N and the Fig. 5
            mismatch ratio go to the event storage (``mimic/*``).
        """
        # in float32 under mixed precision too: the adapter r, Q's thresholds and the summed
        # squared error (fp16 overflows past 65504; a λ·L_m of 10^5 occurs at s = 1)
        device = next(iter(student_maps.values())).device.type
        with torch.autocast(device_type=device, enabled=False):
            return self._losses(
                {k: v.float() for k, v in teacher_maps.items()},
                {k: v.float() for k, v in student_maps.items()},
                boxes,
                detection_loss,
            )

    def _losses(self, teacher_maps, student_maps, boxes, detection_loss) -> Dict[str, torch.Tensor]:
        total = student_maps[self.student_feature_names[0]].sum() * 0.0
        mismatches = []
        for f_t, f_s in self.paired_features(teacher_maps, student_maps, boxes):
            loss, mismatch = mimic_loss(
                f_t,
                f_s,
                quantize_teacher=False,  # Q(f_t) already (paired_features)
                quantize_student=self.quantize_student,
                quantizer=self.quantizer,
                mismatch_threshold=self.mismatch_threshold,
                normalization=self.loss_normalization,
            )
            total = total + loss
            mismatches.append(mismatch)
        storage = get_event_storage()
        with torch.no_grad():  # dead ReLUs at the mimic layer: the collapse guard's signal
            zeros = sum(int((student_maps[n] == 0).sum()) for n in self.student_feature_names)
            total_entries = sum(student_maps[n].numel() for n in self.student_feature_names)
        storage.put_scalar("mimic/student_zero_fraction", zeros / max(total_entries, 1))
        base = None
        if self.balance is not None:
            if detection_loss is None:
                raise ValueError("the balanced λ needs the step's detection losses")
            base = self.balance.update(storage.iter, total.detach().item(), float(detection_loss))
            base = 0.0 if base is None else base  # λ = 0 while it is measured
        weight = self.current_loss_weight(storage.iter, base)
        storage.put_scalar("mimic/num_rois", float(sum(len(b) for b in boxes)))
        storage.put_scalar("mimic/loss_unweighted", total.detach().item())
        storage.put_scalar("mimic/mismatch_ratio", torch.stack(mismatches).mean().item())
        storage.put_scalar("mimic/lambda", weight)
        return {"loss_mimic": total * weight}

    __call__ = losses
