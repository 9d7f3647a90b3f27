"""One-stage mimic students: RetinaNet and FCOS trained with λ·L_m against a frozen teacher (ours;
the paper's students are two-stage, §3.2-3.3).

A one-stage detector has no region proposals, and eq. 5/6 is a loss over "N region proposals".
Its N RoIs per image come from ``MODEL.MIMIC.DENSE_ROIS.SOURCES``:

* ``"gt"``: every ground-truth box and ``GT_COPIES`` jittered copies of it (each coordinate moved
  by up to ±``GT_JITTER`` of the box's width or height, uniformly, then clipped to the image):
  the regions the detector must describe, seen from a few nearby windows as proposals are;
* ``"detections"``: the student's own top ``MODEL.MIMIC.NUM_ROIS`` detections of this step (no
  score threshold, the candidates per level and the per-class NMS of its inference), detached:
  where the student looks, right or wrong, which is also what covers an image without ground
  truth (it trains on the detections alone).

Each RoI is pooled on the one pyramid level detectron2's ``ROIPooler`` assigns to its box (the
FPN mimic of :class:`~quant_mimic.mimic_head.RoIMimicHead`), the same level on both sides; a
teacher whose levels differ from the student's is the mimic head's clear error. The teacher is any
detectron2 detector of this project or the model zoo, two-stage or one-stage (only its backbone
runs, from the teacher cache where one is kept), Q on either side as ``MODEL.MIMIC`` says.
"""

from typing import Dict, List, Optional, Sequence

import torch

from detectron2.config import CfgNode, configurable
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes, Instances

from .fcos import FCOS
from .mimic_student import MimicStudent, build_mimic_parts

__all__ = ["DenseMimicRoIs", "MimicRetinaNet", "MimicFCOS"]

ROI_SOURCES = ("gt", "detections")


class DenseMimicRoIs:
    """
    The N mimic boxes per image of a one-stage student (module docstring).

    Args:
        sources (list[str]): any of "gt" and "detections".
        num_detections (int): the student's top detections per image (``MODEL.MIMIC.NUM_ROIS``).
        gt_copies (int): jittered copies of each ground-truth box (besides the box itself).
        gt_jitter (float): the largest shift of a coordinate, as a fraction of the box's size.
    """

    def __init__(
        self,
        sources: Sequence[str] = ROI_SOURCES,
        num_detections: int = 128,
        gt_copies: int = 4,
        gt_jitter: float = 0.1,
    ):
        unknown = [s for s in sources if s not in ROI_SOURCES]
        if unknown or not sources:
            raise ValueError(
                "MODEL.MIMIC.DENSE_ROIS.SOURCES must be a non-empty subset of "
                f"{list(ROI_SOURCES)}, got {list(sources)}"
            )
        self.sources = tuple(sources)
        self.num_detections = int(num_detections)
        self.gt_copies = int(gt_copies)
        self.gt_jitter = float(gt_jitter)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "DenseMimicRoIs":
        d = cfg.MODEL.MIMIC.DENSE_ROIS
        return cls(list(d.SOURCES), cfg.MODEL.MIMIC.NUM_ROIS, d.GT_COPIES, d.GT_JITTER)

    def jittered_gt(self, gt_boxes: torch.Tensor, image_size) -> torch.Tensor:
        """
        Args:
            gt_boxes (Tensor): (M, 4) ground-truth boxes x0 y0 x1 y1.
            image_size ((int, int)): (height, width) of the image.

        Returns:
            Tensor: ((1 + GT_COPIES)·M, 4): the boxes, then their jittered copies, in the image.
        """
        boxes = [gt_boxes]
        if self.gt_copies > 0 and len(gt_boxes) and self.gt_jitter > 0:
            wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).repeat(1, 2)  # (M, 4): w h w h
            noise = torch.rand((self.gt_copies, *gt_boxes.shape), device=gt_boxes.device)
            shifted = gt_boxes[None] + (noise * 2 - 1) * self.gt_jitter * wh[None]
            boxes.append(shifted.reshape(-1, 4))
        out = Boxes(torch.cat(boxes))
        out.clip(image_size)
        return out.tensor

    def __call__(
        self,
        detections: Optional[List[Instances]],
        gt_instances: Optional[List[Instances]],
        image_sizes: List,
        device: torch.device,
    ) -> List[Boxes]:
        """
        Args:
            detections (list[Instances]): the student's detections per image (``pred_boxes``,
                sorted by score), None without the "detections" source.
            gt_instances (list[Instances]): the ground truth per image (``gt_boxes``), or None.
            image_sizes (list[(int, int)]): (height, width) of each image.
            device: where the boxes are.

        Returns:
            list[Boxes]: per image, the N_j mimic boxes, detached (N_j = 0 is allowed).
        """
        out = []
        for i, size in enumerate(image_sizes):
            parts = []
            if "gt" in self.sources and gt_instances is not None:
                parts.append(self.jittered_gt(gt_instances[i].gt_boxes.tensor.detach(), size))
            if "detections" in self.sources and detections is not None:
                parts.append(detections[i].pred_boxes.tensor[: self.num_detections].detach())
            boxes = torch.cat(
                [p.float().to(device) for p in parts] + [torch.zeros((0, 4), device=device)]
            )
            out.append(Boxes(boxes))
        return out


class _DenseMimic(MimicStudent):
    """The training step of a one-stage mimic student (module docstring); the detector's own losses
    are its ``forward_training``'s, its inference is the detector's, untouched."""

    def __init__(self, *, mimic_rois: DenseMimicRoIs, **kwargs):
        super().__init__(**kwargs)
        self.mimic_rois = mimic_rois

    @classmethod
    def from_config(cls, cfg: CfgNode):
        ret = super().from_config(cfg)
        ret.update(build_mimic_parts(cfg, ret["backbone"].output_shape()))
        ret["mimic_rois"] = DenseMimicRoIs.from_config(cfg)
        return ret

    def _dense_scores(self, predictions) -> tuple:
        """Per level, (N, HWA, K) class scores and (N, HWA, 4) deltas, as the inference scores."""
        # abstract: RetinaNet and FCOS score differently (MimicRetinaNet, MimicFCOS below)
        raise NotImplementedError

    @torch.no_grad()
    def student_detections(self, features, predictions, image_sizes) -> List[Instances]:
        """
        The student's detections of this step, as its inference makes them but with no score
        threshold: the top candidates of each level, decoded, per-class NMS, best first, clipped
        to the image. Detached.
        """
        scores, deltas = self._dense_scores([[p.detach() for p in ps] for ps in predictions])
        anchors = self.anchor_generator(features)
        results = []
        for j, size in enumerate(image_sizes):
            pred = self._decode_multi_level_predictions(
                anchors,
                [s[j] for s in scores],
                [d[j] for d in deltas],
                -1.0,  # every candidate: early in training no score passes the test threshold
                self.test_topk_candidates,
                size,
            )
            keep = batched_nms(
                pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
            )
            pred = pred[keep[: self.mimic_rois.num_detections]]
            pred.pred_boxes.clip(size)
            results.append(pred)
        return results

    def test_mimic_boxes(self, images, student_maps):
        """The student's top ``NUM_ROIS`` detections (a test image has no ground truth)."""
        features = [student_maps[f] for f in self.head_in_features]
        detections = self.student_detections(features, self.head(features), images.image_sizes)
        return [Boxes(d.pred_boxes.tensor) for d in detections]

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        Training: the detector's own losses plus ``loss_mimic`` (eq. 4) on the mimic RoIs.
        Inference: exactly the detector's.
        """
        if not self.training:
            return super().forward(batched_inputs)
        self.frozen_teacher.check_ready()
        images = self.preprocess_image(batched_inputs)
        maps = self.backbone(images.tensor)
        features = [maps[f] for f in self.head_in_features]
        predictions = self.head(features)
        assert "instances" in batched_inputs[0], "Instance annotations are missing in training!"
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        losses = self.forward_training(images, features, predictions, gt_instances)
        detections = None
        if "detections" in self.mimic_rois.sources:
            detections = self.student_detections(features, predictions, images.image_sizes)
        boxes = self.mimic_rois(detections, gt_instances, images.image_sizes, self.device)
        return self.add_mimic_loss(losses, batched_inputs, maps, boxes)


@META_ARCH_REGISTRY.register()
class MimicRetinaNet(_DenseMimic, RetinaNet):
    """A detectron2 :class:`RetinaNet` student trained with the RoI mimic loss (module
    docstring)."""

    @configurable
    def __init__(self, **kwargs):
        """
        Args:
            teacher (FrozenTeacher), mimic_head (RoIMimicHead): :class:`MimicStudent`'s.
            mimic_rois (DenseMimicRoIs): where the N RoIs come from.
            kwargs: :class:`RetinaNet` arguments of the student.
        """
        super().__init__(**kwargs)

    def _dense_scores(self, predictions):
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        return [x.sigmoid() for x in logits], deltas


@META_ARCH_REGISTRY.register()
class MimicFCOS(_DenseMimic, FCOS):
    """An :class:`~quant_mimic.fcos.FCOS` student trained with the RoI mimic loss (module
    docstring)."""

    @configurable
    def __init__(self, **kwargs):
        """
        Args:
            teacher (FrozenTeacher), mimic_head (RoIMimicHead): :class:`MimicStudent`'s.
            mimic_rois (DenseMimicRoIs): where the N RoIs come from.
            kwargs: :class:`FCOS` arguments of the student.
        """
        super().__init__(**kwargs)

    def _dense_scores(self, predictions):
        logits, deltas, ctrness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        # the inference's scores: sqrt(class × centerness) (FCOS.forward_inference)
        return [torch.sqrt(x.sigmoid() * c.sigmoid()) for x, c in zip(logits, ctrness)], deltas
