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
from typing import Dict, List

import torch

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from .mimic_head import mimic_loss, pyramid_levels
from .mimic_student import MimicStudent, build_mimic_parts

__all__ = ["MimicRCNN", "mimic_loss", "pyramid_levels"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MimicRCNN(MimicStudent, GeneralizedRCNN):
    """
    A :class:`GeneralizedRCNN` student (any backbone, RPN and ROI head) trained with the RoI mimic
    loss against a frozen teacher (paper §3.2-3.3); the N RoIs of eq. 5/6 are its RPN's top
    proposals. The teacher, the adapters and the mimic loss: :class:`MimicStudent`.
    """

    @configurable
    def __init__(self, **kwargs):
        """
        Args:
            teacher (FrozenTeacher): the frozen teacher and its maps.
            mimic_head (RoIMimicHead): λ·L_m from both sides' maps.
            kwargs: :class:`GeneralizedRCNN` arguments of the student.
        """
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode):
        ret = super().from_config(cfg)
        ret.update(build_mimic_parts(cfg, ret["backbone"].output_shape()))
        return ret

    def test_mimic_boxes(self, images, student_maps):
        """The student's top ``NUM_ROIS`` test-time RPN proposals."""
        proposals, _ = self.proposal_generator(images, student_maps, None)
        return self.mimic_head.mimic_boxes(proposals, None)

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
        return self.add_mimic_loss(losses, batched_inputs, features, boxes)
