"""The student prepared for deployment: BatchNorm folded into its convolutions and its whole
single-image inference as one module, ``image (C, H, W) -> boxes, scores, classes`` (the contract
of :mod:`quant_mimic.export`)."""

import copy
from typing import Dict

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.meta_arch.dense_detector import DenseDetector

from ..timing import median_ms
from .space_to_depth import rewrite_vgg_first_block

__all__ = ["fold_batchnorm", "StudentInference"]


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """
    Fold every inference-mode BatchNorm that follows a convolution inside detectron2's ``Conv2d``
    (``conv.norm``) into the convolution's weight and bias, in place: y = γ(Wx + b - μ)/σ + β
    becomes W'x + b' (PyTorch's ``fuse_conv_bn_weights``). Outputs are unchanged up to float
    rounding. Returns the number folded.
    """
    folded = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if not isinstance(module, Conv2d) or norm is None:
            continue
        if not isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            continue
        if isinstance(norm, nn.BatchNorm2d) and (norm.training or not norm.track_running_stats):
            continue
        weight, bias = fuse_conv_bn_weights(
            module.weight,
            module.bias,
            norm.running_mean,
            norm.running_var,
            norm.eps,
            norm.weight,
            norm.bias,
        )
        module.weight, module.bias = weight, bias
        module.norm = None
        folded += 1
    return folded


class StudentInference(nn.Module):
    """
    The detector's whole single-image inference as ``image (C, H, W) -> boxes, scores, classes``
    (module docstring). Built from an evaluated ``GeneralizedRCNN`` or one-stage ``DenseDetector``
    (RetinaNet, FCOS; a mimic student is one of them: its inference is the student's); a deep
    copy, in eval mode, optionally with BN folded.
    """

    def __init__(self, model: nn.Module, fold_bn: bool = True, space_to_depth: bool = False):
        """
        Args:
            fold_bn (bool): fold BatchNorm into the convolutions (:func:`fold_batchnorm`).
            space_to_depth (bool): run a VGG's first block at half resolution, exactly
                (:mod:`quant_mimic.export.space_to_depth`; needs ``fold_bn``);
                ``self.space_to_depth`` says whether it applied.
        """
        super().__init__()
        model = copy.deepcopy(model).eval()
        if hasattr(model, "mimic_adapters"):  # unused at inference
            del model.mimic_adapters
        self.num_folded = fold_batchnorm(model) if fold_bn else 0
        self.space_to_depth = bool(space_to_depth) and rewrite_vgg_first_block(model)
        self.model = model
        self.eval()  # exporters restore the mode they found: it must be eval

    onednn = True  # PyTorch CPU convolutions through oneDNN (mkldnn); see autotune_conv_backend

    def forward(self, image: torch.Tensor):
        with torch.backends.mkldnn.flags(enabled=self.onednn):
            if isinstance(self.model, DenseDetector):
                instances = self._dense_inference(image)
            else:
                instances = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes.long()

    def _dense_inference(self, image: torch.Tensor):
        """A one-stage detector's inference on one image, before ``detector_postprocess`` (as
        ``inference(..., do_postprocess=False)`` of a ``GeneralizedRCNN``)."""
        model = self.model
        images = model.preprocess_image([{"image": image}])
        maps = model.backbone(images.tensor)
        features = [maps[f] for f in model.head_in_features]
        return model.forward_inference(images, features, model.head(features))[0]

    @torch.no_grad()
    def autotune_conv_backend(self, image: torch.Tensor, runs: int = 5) -> Dict[str, float]:
        """
        Choose, by timing the backbone on ``image`` (CPU only), whether PyTorch runs the
        convolutions through oneDNN or its native kernels. oneDNN is the faster choice for wide
        layers but much slower for the 2-16-channel layers of a VGG-1-32 (per-call overhead
        dominates tiny convolutions). Like ``cudnn.benchmark``: same outputs, measured choice.

        Returns:
            dict: median backbone ms for each backend (``onednn_ms``, ``native_ms``).
        """
        if image.is_cuda:
            return {}
        x = self.model.preprocess_image([{"image": image}]).tensor
        times = {}
        for name, enabled in (("onednn_ms", True), ("native_ms", False)):
            with torch.backends.mkldnn.flags(enabled=enabled):
                times[name] = median_ms(lambda: self.model.backbone(x), runs=runs, warmup=1)
        self.onednn = times["onednn_ms"] <= times["native_ms"]
        return times
