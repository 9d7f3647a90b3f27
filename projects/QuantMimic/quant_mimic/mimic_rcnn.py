"""MimicRCNN: a student detector trained to mimic a frozen, optionally quantized teacher on RoIs.

Paper §3.2-3.3, Fig. 1. The student minimises

    L = L_cls^rpn + L_reg^rpn + L_cls^det + L_reg^det + λ·L_m                      (eq. 4)

A training step runs one way: inputs → the student's backbone, RPN and ROI-head losses; the N
mimic boxes per image (:meth:`RoIMimicHead.mimic_boxes`); the frozen teacher's maps
(:class:`~quant_mimic.teacher.FrozenTeacher`, from its cache where one is kept) → the RoI mimic
head (:class:`~quant_mimic.mimic_head.RoIMimicHead`: paired RoI features, Q, eq. 5/6, λ) →
``loss_mimic``.
"""

import logging
from typing import Dict, List, Optional

import torch

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_model
from detectron2.utils.events import get_event_storage

from .mimic_head import RoIMimicHead, mimic_feature_names, mimic_loss, pyramid_levels
from .teacher import FrozenTeacher, build_teacher_cfg, mimic_quantizer_args
from .teacher_cache import TeacherMapCache

__all__ = ["MimicRCNN", "mimic_loss", "pyramid_levels"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MimicRCNN(GeneralizedRCNN):
    """
    A :class:`GeneralizedRCNN` student (any backbone, RPN and ROI head) trained with the RoI mimic
    loss against a frozen teacher (paper §3.2-3.3).

    The teacher (:class:`FrozenTeacher`) is *not* a submodule: it is not in ``state_dict()`` (so
    never in checkpoints), not in the optimizer, not wrapped by DDP, and not switched to train mode
    by ``model.train()``; it follows the student's device (``.to()``). The mimic head's adapters r
    are submodules (``mimic_adapters``, in the student's checkpoint) and unused at inference, which
    is exactly the student's.
    """

    @configurable
    def __init__(self, *, teacher: FrozenTeacher, mimic_head: RoIMimicHead, **kwargs):
        """
        Args:
            teacher (FrozenTeacher): the frozen teacher and its maps.
            mimic_head (RoIMimicHead): λ·L_m from both sides' maps.
            kwargs: :class:`GeneralizedRCNN` arguments of the student.
        """
        super().__init__(**kwargs)
        object.__setattr__(self, "frozen_teacher", teacher)  # not a submodule (class docstring)
        self.mimic_head = mimic_head
        self.mimic_adapters = mimic_head.adapters  # the head's parameters, in the student's state

    @classmethod
    def from_config(cls, cfg: CfgNode):
        ret = super().from_config(cfg)
        tcfg = build_teacher_cfg(cfg)
        assert tcfg.MODEL.META_ARCHITECTURE != "MimicRCNN", "A MimicRCNN cannot be a teacher"
        assert tcfg.INPUT.FORMAT == cfg.INPUT.FORMAT, (
            f"Teacher INPUT.FORMAT {tcfg.INPUT.FORMAT} != student {cfg.INPUT.FORMAT}: "
            "both read the same images"
        )
        teacher = build_model(tcfg)
        s_shapes = ret["backbone"].output_shape()
        t_shapes = teacher.backbone.output_shape()
        _, t_names = mimic_feature_names(cfg, tcfg, s_shapes, t_shapes)
        quantizer = mimic_quantizer_args(cfg, tcfg)
        ret["mimic_head"] = RoIMimicHead(cfg, tcfg, s_shapes, t_shapes, quantizer)
        ret["teacher"] = FrozenTeacher.from_config(cfg, tcfg, teacher, t_names)
        return ret

    @property
    def teacher(self) -> GeneralizedRCNN:
        """The frozen teacher detector (not a submodule)."""
        return self.frozen_teacher.model

    @property
    def teacher_weights(self) -> str:
        """``MODEL.MIMIC.TEACHER.WEIGHTS``."""
        return self.frozen_teacher.weights

    def load_teacher(self, path: Optional[str] = None) -> None:
        """Load the teacher's weights (default ``MODEL.MIMIC.TEACHER.WEIGHTS``), strictly."""
        self.frozen_teacher.load(path)

    @property
    def teacher_cache(self) -> Optional[TeacherMapCache]:
        """The teacher-map cache (:attr:`FrozenTeacher.cache`), None when off."""
        return self.frozen_teacher.cache

    def teacher_maps(self, batched_inputs, fill_only: bool = False):
        """The teacher's maps for a batch (:meth:`FrozenTeacher.maps`; the cache in training)."""
        return self.frozen_teacher.maps(batched_inputs, self.training, fill_only)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # BN statistics of the teacher never drift
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)  # the teacher follows the student's device/dtype
        return self

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        Training: the student's RPN and ROI-head losses plus ``loss_mimic`` (eq. 4).
        Inference: exactly :meth:`GeneralizedRCNN.inference` of the student.
        """
        if not self.training:
            return self.inference(batched_inputs)
        self.frozen_teacher.check_ready()
        images = self.preprocess_image(batched_inputs)
        gt_instances = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        boxes = self.mimic_head.mimic_boxes(proposals, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        teacher_maps = self.teacher_maps(batched_inputs)
        # λ·L_m against the detection losses: the balance that decides whether a student learns
        detection = sum(v.detach() for v in losses.values())
        mimic = self.mimic_head.losses(teacher_maps, features, boxes, float(detection))
        storage = get_event_storage()
        storage.put_scalar(
            "mimic/loss_ratio", float(mimic["loss_mimic"].detach() / detection.clamp(min=1e-12))
        )
        losses.update(mimic)
        self.frozen_teacher.put_cache_scalars(storage)
        return losses
