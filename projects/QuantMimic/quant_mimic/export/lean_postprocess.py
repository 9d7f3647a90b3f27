"""Exact, runtime-friendly forms of detectron2's inference post-processing, used when the student is
exported to ONNX (docs/SPEED.md, "Post-processing").

A VGG-1-32 student's network is so small that detectron2's post-processing is a third of its
exported inference time in onnxruntime. Two parts of it cost far more than their arithmetic:

* **NMS that runs to the end.** Detectron2 keeps the first k indices of a full batched NMS
  (``keep[:post_nms_topk]`` in the RPN, ``keep[:topk_per_image]`` after the box head). Exported as
  is, onnxruntime's ``NonMaxSuppression`` selects every surviving box of the 1000 pre-NMS
  proposals, comparing each with all boxes already kept. Greedy NMS picks boxes in descending
  score order, and a pick depends only on the picks before it, so its first k picks are the same
  whether it stops there or not: ``NonMaxSuppression`` with ``max_output_boxes_per_class = k``
  returns exactly ``keep[:k]``, and stops early. :func:`batched_nms_topk` exports that, with
  torchvision's coordinate-offset trick for the class (or level) index, and without torchvision's
  empty-input ``If`` (the exported ops handle an empty input: an empty ``ReduceMax`` gives -inf,
  and empty offsets stay empty).
* **Box decoding in (N, 1) columns.** ``Box2BoxTransform.apply_deltas`` works on (N, 1) slices
  (``deltas[:, 0::4]``, ``boxes[:, 2]``): strided Slices, Gathers along the last axis, and
  scalar × (N, 1) products hit onnxruntime's slow per-row broadcasting path (≈ 90 µs for one
  multiply over the RPN's 9216 anchors, against ≈ 1 µs for the same product on an (N,) tensor).
  :class:`CoordinateMajorBox2BoxTransform` performs the same operations in the same order on (k, N)
  rows, so its boxes are bitwise equal.

:func:`lean_postprocess` applies both to a model while it is traced; outside it, nothing changes.
"""

import contextlib
import inspect
from typing import Iterator, List

import torch
import torchvision
from torch import nn

from detectron2.modeling.box_regression import Box2BoxTransform

__all__ = ["CoordinateMajorBox2BoxTransform", "batched_nms_topk", "lean_postprocess"]


class CoordinateMajorBox2BoxTransform:
    """
    :class:`~detectron2.modeling.Box2BoxTransform` with ``apply_deltas`` computed coordinate-major:
    the four coordinates of all N boxes are (k, N) rows instead of (N, k) columns. The same
    operations in the same order (the results are bitwise equal), in shapes that onnxruntime's
    element-wise kernels run without per-row broadcasting (module docstring).
    ``get_deltas`` (training) is the wrapped transform's.
    """

    def __init__(self, transform: Box2BoxTransform):
        self.transform = transform
        self.weights = transform.weights
        self.scale_clamp = transform.scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        return self.transform.get_deltas(src_boxes, target_boxes)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            deltas (Tensor): (N, k·4) deltas (dx, dy, dw, dh) of k transformations per box.
            boxes (Tensor): (N, 4) boxes (x0, y0, x1, y1).

        Returns:
            Tensor: (N, k·4) transformed boxes, as ``Box2BoxTransform.apply_deltas``.
        """
        deltas = deltas.float()  # fp32 decoding, as detectron2
        boxes = boxes.to(deltas.dtype)
        n = deltas.shape[0]
        x0, y0, x1, y1 = boxes.unbind(1)  # (N,) each
        widths = x1 - x0
        heights = y1 - y0
        ctr_x = x0 + 0.5 * widths
        ctr_y = y0 + 0.5 * heights

        # (N, k) each -> (k, N): one row per transformation
        if deltas.shape[1] == 4:  # k = 1 (the RPN, one-stage heads): N may be 0, no reshape
            dx, dy, dw, dh = deltas.t().unsqueeze(1).unbind(0)
        else:
            dx, dy, dw, dh = (d.t() for d in deltas.reshape(n, -1, 4).unbind(2))
        wx, wy, ww, wh = self.weights
        dx = dx / wx
        dy = dy / wy
        dw = torch.clamp(dw / ww, max=self.scale_clamp)
        dh = torch.clamp(dh / wh, max=self.scale_clamp)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights

        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        pred_boxes = torch.stack((x1, y1, x2, y2), dim=-1)  # (k, N, 4)
        return pred_boxes.transpose(0, 1).reshape(deltas.shape)


class _NMSTopK(torch.autograd.Function):
    """torchvision's NMS truncated to its first ``k`` picks; exported as ONNX NonMaxSuppression
    with ``max_output_boxes_per_class = k`` (the same indices, module docstring)."""

    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold: float, k: int):
        return torchvision.ops.nms(boxes, scores, iou_threshold)[:k]

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float, k: int):
        float32 = torch.onnx.TensorProtoDataType.FLOAT
        boxes = g.op("Unsqueeze", boxes, g.op("Constant", value_t=torch.tensor([0])))
        scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([0, 1])))
        selected = g.op(
            "NonMaxSuppression",
            g.op("Cast", boxes, to_i=float32),
            g.op("Cast", scores, to_i=float32),
            g.op("Constant", value_t=torch.tensor([k], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float)),
        )  # (k' ≤ k, 3) rows (batch, class, box index)
        return g.op("Gather", selected, g.op("Constant", value_t=torch.tensor(2)), axis_i=1)


def batched_nms_topk(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, k: int
) -> torch.Tensor:
    """
    ``detectron2.layers.batched_nms(boxes, scores, idxs, iou_threshold)[:k]``: NMS within each
    value of ``idxs`` (class or level), the kept indices in descending score order, the first
    ``k`` of them (all when ``k < 0``). The same offsets as torchvision's coordinate trick; in an
    ONNX export one ``NonMaxSuppression`` that stops after ``k`` picks (module docstring).

    Args:
        boxes (Tensor): (N, 4) boxes (x0, y0, x1, y1).
        scores (Tensor): (N,) scores.
        idxs (Tensor): (N,) int64 class / level index of each box.
        iou_threshold (float): boxes with IoU > this are suppressed.
        k (int): how many kept indices to return; < 0: all.

    Returns:
        Tensor: (min(k, kept),) int64 indices into ``boxes``.
    """
    boxes = boxes.float()  # as detectron2's batched_nms (fp16 lacks the offsets' range)
    if not torch.jit.is_tracing() and boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    # max over the boxes and 0: defined for no box too (traced on an image where nothing
    # survives; an empty ReduceMax would fail), and as torchvision's offsets for clipped boxes
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    boxes_for_nms = boxes + offsets[:, None]
    if k < 0:
        return torchvision.ops.nms(boxes_for_nms, scores, iou_threshold)
    if torch.onnx.is_in_onnx_export():
        return _NMSTopK.apply(boxes_for_nms, scores, float(iou_threshold), int(k))
    return torchvision.ops.nms(boxes_for_nms, scores, iou_threshold)[:k]


class _TopKNMS:
    """Routes detectron2's ``batched_nms`` calls inside the RPN's and the box head's selection
    functions to :func:`batched_nms_topk`, with the k those functions keep afterwards."""

    def __init__(self):
        self.stack: List[int] = []

    def batched_nms(self, boxes, scores, idxs, iou_threshold):
        k = self.stack[-1] if self.stack else -1  # another caller: the whole NMS, as before
        return batched_nms_topk(boxes, scores, idxs, iou_threshold, k)

    def keeping(self, fn, k_arg: str):
        signature = inspect.signature(fn)

        def wrapped(*args, **kwargs):
            self.stack.append(int(signature.bind(*args, **kwargs).arguments[k_arg]))
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()

        return wrapped

    def keeping_attribute(self, model: nn.Module):
        """``model.inference_single_image`` of a one-stage detector, NMS routed with k = its
        ``max_detections_per_image`` (it keeps ``keep[:max_detections_per_image]``)."""
        fn = model.inference_single_image

        def wrapped(*args, **kwargs):
            self.stack.append(int(model.max_detections_per_image))
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()

        return wrapped


@contextlib.contextmanager
def lean_postprocess(model: nn.Module) -> Iterator[nn.Module]:
    """
    Within the context, ``model`` (a detectron2 ``GeneralizedRCNN``, ``RetinaNet`` or ``FCOS``)
    decodes boxes with :class:`CoordinateMajorBox2BoxTransform` (where it uses a
    ``Box2BoxTransform``) and its RPN and box head (a one-stage detector: its head) run NMS
    through :func:`batched_nms_topk` with their post-NMS top-k (``post_nms_topk``,
    ``topk_per_image``, ``max_detections_per_image``).
    Same detections; the exported graph is the lean one of the module docstring. Everything is
    restored on exit.
    """
    from detectron2.modeling.meta_arch import fcos, retinanet
    from detectron2.modeling.proposal_generator import proposal_utils, rpn
    from detectron2.modeling.roi_heads import fast_rcnn

    predictors = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if not isinstance(predictors, nn.ModuleList):  # cascade heads have one per stage
        predictors = [predictors]
    owners = [getattr(model, "proposal_generator", None), *predictors, model]
    swapped = [
        (o, o.box2box_transform)
        for o in owners
        if isinstance(getattr(o, "box2box_transform", None), Box2BoxTransform)
    ]
    router = _TopKNMS()
    patches = [
        (proposal_utils, "batched_nms", router.batched_nms),
        (fast_rcnn, "batched_nms", router.batched_nms),
        (
            rpn,
            "find_top_rpn_proposals",
            router.keeping(rpn.find_top_rpn_proposals, "post_nms_topk"),
        ),
        (
            fast_rcnn,
            "fast_rcnn_inference_single_image",
            router.keeping(fast_rcnn.fast_rcnn_inference_single_image, "topk_per_image"),
        ),
        # one-stage detectors (RetinaNet, FCOS): their per-class NMS, then keep[:max detections]
        (retinanet, "batched_nms", router.batched_nms),
        (fcos, "batched_nms", router.batched_nms),
    ]
    if hasattr(model, "inference_single_image") and hasattr(model, "max_detections_per_image"):
        patches.append((model, "inference_single_image", router.keeping_attribute(model)))
    originals = [(module, name, module.__dict__.get(name)) for module, name, _ in patches]
    try:
        for owner, transform in swapped:
            owner.box2box_transform = CoordinateMajorBox2BoxTransform(transform)
        for module, name, replacement in patches:
            setattr(module, name, replacement)
        yield model
    finally:
        for module, name, original in originals:
            if original is None:  # an instance's bound method: the class's again
                delattr(module, name)
            else:
                setattr(module, name, original)
        for owner, transform in swapped:
            owner.box2box_transform = transform
