"""R-FCN ROI head (Dai et al., NIPS 2016) for detectron2, with OHEM (Shrivastava et al., CVPR 2016).

The paper's WIDER FACE detectors are R-FCN on VGG-1-4 / VGG-1-32 with k = 3 and OHEM (§3.5).
Detectron2 has no R-FCN; this head follows py-R-FCN:

* optional 1×1 "conv_new" (+ReLU) on the feature map;
* 1×1 convs to k²·(C+1) position-sensitive class maps and k²·4 (class-agnostic, py-R-FCN's default)
  or k²·4C box maps; channel ``c·k² + i·k + j`` holds class c at bin (i, j);
* position-sensitive RoI pooling (PS-RoIAlign in exportable ops, or torchvision ``ps_roi_pool``),
  then average voting over the k×k bins;
* detectron2's proposal labelling, ``FastRCNNOutputLayers`` losses and inference;
* OHEM: all proposals are scored, the B hardest by per-RoI loss (optionally after NMS among RoIs, as
  in the OHEM paper; py-R-FCN does not) are back-propagated.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import nms, ps_roi_pool, roi_align

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import ROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

__all__ = ["ps_roi_pool_vote", "ohem_select", "RFCNOutputLayers", "RFCNROIHeads"]

logger = logging.getLogger(__name__)

PS_POOLER_TYPES = ("PSROIAlign", "PSROIPool")


def _bin_rois(boxes: List[torch.Tensor], k: int) -> torch.Tensor:
    """
    The k² bins of every RoI as RoIs of their own, in the layout ``roi_align`` takes:
    (k²·R, 5) rows ``(n·k² + b, x0, y0, x1, y1)`` for bin b = i·k + j of a RoI of image n, ordered
    RoI-major (all bins of RoI 0 first). Sizes come from tensors, never Python ints, so that a
    traced / exported graph stays valid for any number of RoIs.
    """
    rois = torch.cat(boxes)
    image = torch.cat([torch.zeros_like(b[:, 0]) + n for n, b in enumerate(boxes)])
    x0, y0, x1, y1 = rois.unbind(1)
    steps = torch.arange(k, dtype=rois.dtype, device=rois.device)
    bw, bh = (x1 - x0) / k, (y1 - y0) / k  # (R,)
    bx0 = x0[:, None] + steps[None, :] * bw[:, None]  # (R, k): left edge of column j
    by0 = y0[:, None] + steps[None, :] * bh[:, None]  # (R, k): top edge of row i
    zero = torch.zeros_like(x0)[:, None, None] + torch.zeros(
        k, k, dtype=rois.dtype, device=rois.device
    )
    bins = torch.stack(
        [
            bx0[:, None, :] + zero,
            by0[:, :, None] + zero,
            (bx0 + bw[:, None])[:, None, :] + zero,
            (by0 + bh[:, None])[:, :, None] + zero,
        ],
        dim=-1,
    ).reshape(-1, 4)
    b = torch.arange(k * k, dtype=rois.dtype, device=rois.device)
    index = (image[:, None] * (k * k) + b[None, :]).reshape(-1, 1)
    return torch.cat([index, bins], dim=1)


def ps_roi_pool_vote(
    score_maps: torch.Tensor,
    boxes: List[torch.Tensor],
    k: int,
    spatial_scale: float,
    pooler_type: str = "PSROIAlign",
    sampling_ratio: int = 0,
) -> torch.Tensor:
    """
    Position-sensitive RoI pooling followed by average voting (R-FCN, Dai et al. 2016).

    "PSROIAlign" is computed in exportable ops (ONNX, TorchScript): the maps are regrouped so that
    bin b's channel group ``{d·k² + b}`` becomes image ``n·k² + b`` of a (N·k², D, H, W) batch, and
    one ``roi_align`` (aligned, 1×1 output) pools each bin of each RoI from its own group. This is
    torchvision's ``ps_roi_align`` (same sampling points, same adaptive sampling) — tested against
    it in tests/test_rfcn.py — and the only implementation used, in training and inference.

    Args:
        score_maps (Tensor): (N, D·k·k, H, W); channel ``d·k² + i·k + j`` is output d at bin (i, j).
        boxes (list[Tensor]): per image, (R_n, 4) boxes in input-image coordinates (x0, y0, x1, y1).
        k (int): bins per side.
        spatial_scale (float): 1 / feature stride.
        pooler_type (str): "PSROIAlign" (bilinear samples averaged per bin, ``sampling_ratio``
            per bin side; 0 = adaptive, ceil(bin size)) or "PSROIPool" (average over
            integer-rounded bins, as py-R-FCN's PSROIPooling; torchvision's op, not exportable).

    Returns:
        Tensor: (ΣR_n, D), the mean over the k×k bins of the pooled values.
    """
    n, c, h, w = score_maps.shape
    assert c % (k * k) == 0, f"{c} channels is not D·k² (k={k})"
    d = c // (k * k)
    if pooler_type == "PSROIAlign":
        grouped = score_maps.reshape(n, d, k * k, h, w).transpose(1, 2).reshape(n * k * k, d, h, w)
        pooled = roi_align(
            grouped,
            _bin_rois(boxes, k).to(score_maps.dtype),
            (1, 1),
            spatial_scale,
            sampling_ratio if sampling_ratio > 0 else 0,
            aligned=True,
        )  # (ΣR_n·k², D, 1, 1)
        return pooled.reshape(-1, k * k, d).mean(dim=1)
    if pooler_type == "PSROIPool":
        return ps_roi_pool(score_maps, boxes, k, spatial_scale).mean(dim=(2, 3))
    raise ValueError(f"Unknown MODEL.RFCN.POOLER_TYPE: {pooler_type}; expected {PS_POOLER_TYPES}")


def ohem_select(
    losses: torch.Tensor, boxes: torch.Tensor, num: int, nms_thresh: float = -1.0
) -> torch.Tensor:
    """
    Online hard example mining for one image: the indices of the ``num`` RoIs of highest loss.

    Args:
        losses (Tensor): (R,) per-RoI loss.
        boxes (Tensor): (R, 4) RoI boxes, used when ``nms_thresh`` > 0.
        num (int): B, RoIs kept.
        nms_thresh (float): if > 0, first suppress RoIs overlapping a harder RoI by more than this
            IoU (OHEM paper: 0.7); ≤ 0 = plain top-B by loss (py-R-FCN).

    Returns:
        Tensor: (min(B, R'),) int64 indices, hardest first.
    """
    if nms_thresh > 0:
        keep = nms(boxes.float(), losses.float(), nms_thresh)  # sorted by loss, descending
    else:
        keep = torch.sort(losses, descending=True, stable=True).indices
    return keep[:num]


class RFCNOutputLayers(FastRCNNOutputLayers):
    """
    detectron2's ``FastRCNNOutputLayers`` losses and inference, with R-FCN's voting in place of the
    two linear layers: it has no parameters; ``forward`` takes already-voted scores and deltas.
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(input_shape=ShapeSpec(channels=1), **kwargs)
        # R-FCN predicts with position-sensitive convs in RFCNROIHeads: no linear layers.
        del self.cls_score
        del self.bbox_pred

    @classmethod
    def from_config(cls, cfg: CfgNode):
        ret = super().from_config(cfg, ShapeSpec(channels=1))
        ret.pop("input_shape")
        return ret

    def forward(self, x: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (scores (R, C+1), deltas (R, 4) or (R, 4C)), the voted predictions.
        """
        return x

    def per_roi_losses(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> torch.Tensor:
        """
        Per-RoI loss for OHEM: cross entropy + (foreground only) the box regression loss summed over
        the 4 coordinates, with the same targets as :meth:`losses`.

        Returns:
            Tensor: (R,) for the concatenated proposals.
        """
        scores, deltas = predictions
        gt_classes = (
            torch.cat([p.gt_classes for p in proposals])
            if proposals
            else scores.new_zeros(0).long()
        )
        loss = F.cross_entropy(scores, gt_classes, reduction="none")
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        if fg.any():
            proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
            gt_boxes = torch.cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals]
            )
            targets = self.box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
            d = deltas[fg]
            if d.shape[1] != 4:  # class-specific: the deltas of the ground-truth class
                d = d.view(-1, self.num_classes, 4)[
                    torch.arange(d.shape[0], device=d.device), gt_classes[fg]
                ]
            beta = self.smooth_l1_beta
            diff = (d - targets).abs()
            box = (
                torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
                if beta > 0
                else diff
            )
            loss = loss.clone()
            loss[fg] += box.sum(dim=1)
        return loss


@ROI_HEADS_REGISTRY.register()
class RFCNROIHeads(ROIHeads):
    """
    R-FCN head: position-sensitive score maps on one feature map, PS RoI pooling, voting, and
    optionally OHEM. See the module docstring.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        in_channels: int,
        feature_stride: int,
        conv_new_dim: int,
        k: int,
        cls_agnostic_bbox_reg: bool,
        pooler_type: str,
        sampling_ratio: int,
        box_predictor: RFCNOutputLayers,
        ohem: bool = False,
        ohem_num_proposals: int = 300,
        ohem_nms_thresh: float = -1.0,
        **kwargs,
    ):
        """
        Args:
            in_features (list[str]): one feature map name.
            in_channels (int), feature_stride (int): its channels and stride.
            conv_new_dim (int): channels of the 1×1 conv_new + ReLU; 0 = none.
            k (int): k of the k×k position-sensitive bins.
            cls_agnostic_bbox_reg (bool): k²·4 (True) or k²·4C box maps.
            pooler_type (str), sampling_ratio (int): see :func:`ps_roi_pool_vote`.
            box_predictor (RFCNOutputLayers): losses and inference.
            ohem (bool): online hard example mining (B = batch_size_per_image per image).
            ohem_num_proposals (int): proposals per image scored by OHEM.
            ohem_nms_thresh (float): see :func:`ohem_select`.
            kwargs: :class:`ROIHeads` arguments.
        """
        super().__init__(**kwargs)
        assert len(in_features) == 1, f"R-FCN reads one feature map, got {in_features}"
        if pooler_type not in PS_POOLER_TYPES:
            raise ValueError(
                f"Unknown MODEL.RFCN.POOLER_TYPE: {pooler_type}; expected {PS_POOLER_TYPES}"
            )
        self.in_features = list(in_features)
        self.spatial_scale = 1.0 / feature_stride
        self.k = k
        self.pooler_type = pooler_type
        self.sampling_ratio = sampling_ratio
        self.ohem = ohem
        self.ohem_num_proposals = ohem_num_proposals
        self.ohem_nms_thresh = ohem_nms_thresh
        if conv_new_dim > 0:
            self.conv_new = nn.Conv2d(in_channels, conv_new_dim, kernel_size=1)
            nn.init.normal_(self.conv_new.weight, std=0.01)
            nn.init.zeros_(self.conv_new.bias)
            in_channels = conv_new_dim
        else:
            self.conv_new = None
        num_box_classes = 1 if cls_agnostic_bbox_reg else self.num_classes
        self.cls_conv = nn.Conv2d(in_channels, k * k * (self.num_classes + 1), kernel_size=1)
        self.bbox_conv = nn.Conv2d(in_channels, k * k * 4 * num_box_classes, kernel_size=1)
        for conv, std in ((self.cls_conv, 0.01), (self.bbox_conv, 0.001)):
            nn.init.normal_(conv.weight, std=std)
            nn.init.zeros_(conv.bias)
        self.box_predictor = box_predictor
        if ohem and box_predictor.box_reg_loss_type != "smooth_l1":
            # OHEM ranks RoIs by a per-RoI loss (RFCNOutputLayers.per_roi_losses), smooth L1 only.
            raise ValueError(
                "MODEL.RFCN.OHEM.ENABLED needs MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE 'smooth_l1', "
                f"got {box_predictor.box_reg_loss_type!r}"
            )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg)
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        r = cfg.MODEL.RFCN
        assert len(in_features) == 1, "R-FCN takes one feature map: set MODEL.ROI_HEADS.IN_FEATURES"
        ret.update(
            in_features=in_features,
            in_channels=input_shape[in_features[0]].channels,
            feature_stride=input_shape[in_features[0]].stride,
            conv_new_dim=r.CONV_NEW_DIM,
            k=r.POOLER_RESOLUTION,
            cls_agnostic_bbox_reg=cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG,
            pooler_type=r.POOLER_TYPE,
            sampling_ratio=r.POOLER_SAMPLING_RATIO,
            box_predictor=RFCNOutputLayers(cfg),
            ohem=r.OHEM.ENABLED,
            ohem_num_proposals=r.OHEM.NUM_PROPOSALS,
            ohem_nms_thresh=r.OHEM.NMS_THRESH,
        )
        return ret

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        if not self.ohem:
            return super()._sample_proposals(matched_idxs, matched_labels, gt_classes)
        # OHEM labels every proposal (no random sampling); -1 (ignored) proposals are dropped.
        if gt_classes.numel() > 0:
            gt_classes = gt_classes[matched_idxs]
            gt_classes[matched_labels == 0] = self.num_classes
            gt_classes[matched_labels == -1] = -1
        else:
            gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
        keep = torch.nonzero(gt_classes != -1).squeeze(1)
        return keep, gt_classes[keep]

    def predict(
        self, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Returns:
            (Tensor, Tensor): scores (R, C+1) and deltas (R, 4) or (R, 4C), boxes concatenated.
        """
        x = features[self.in_features[0]]
        if self.conv_new is not None:
            x = F.relu(self.conv_new(x))
        b = [bx.tensor for bx in boxes]
        args = (self.k, self.spatial_scale, self.pooler_type, self.sampling_ratio)
        scores = ps_roi_pool_vote(self.cls_conv(x), b, *args)
        deltas = ps_roi_pool_vote(self.bbox_conv(x), b, *args)
        return self.box_predictor((scores, deltas))

    def _ohem(self, predictions, proposals: List[Instances]):
        with torch.no_grad():
            losses = self.box_predictor.per_roi_losses(
                tuple(p.detach() for p in predictions), proposals
            )
        keep_local, keep_global, start = [], [], 0
        for p in proposals:
            idx = ohem_select(
                losses[start : start + len(p)],
                p.proposal_boxes.tensor,
                self.batch_size_per_image,
                self.ohem_nms_thresh,
            )
            keep_local.append(idx)
            keep_global.append(idx + start)
            start += len(p)
        keep_all = torch.cat(keep_global) if keep_global else losses.new_zeros(0, dtype=torch.long)
        selected = [p[idx] for p, idx in zip(proposals, keep_local)]
        storage = get_event_storage()
        storage.put_scalar("rfcn/ohem_num_rois", float(len(keep_all)))
        return tuple(x[keep_all] for x in predictions), selected

    def forward(
        self,
        images,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """See :meth:`ROIHeads.forward`. Training returns ``loss_cls`` and ``loss_box_reg``."""
        del images
        if self.training:
            assert targets is not None, "R-FCN needs targets in training"
            if self.ohem:
                proposals = [p[: self.ohem_num_proposals] for p in proposals]
            proposals = self.label_and_sample_proposals(proposals, targets)
        predictions = self.predict(features, [p.proposal_boxes for p in proposals])
        if self.training:
            if self.ohem:
                predictions, proposals = self._ohem(predictions, proposals)
            return proposals, self.box_predictor.losses(predictions, proposals)
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        return pred_instances, {}
