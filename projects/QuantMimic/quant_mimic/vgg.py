"""Channel-divided VGG16 backbone ("VGG-1-4", "VGG-1-32", paper §4.1, Tables 1-3).

VGG16's 13 convs (conv1_1 .. conv5_3, 3×3, ReLU) with max-pooling after blocks 1-4 and no pool5, so
the last map has stride 16 as in py-R-FCN. "VGG-1-n" divides every conv width by n.
"""

from collections import OrderedDict
from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, FrozenBatchNorm2d, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec

from .widths import divide_channels

__all__ = ["VGG16", "build_divided_vgg_backbone"]

# (number of convs, width) of the five blocks of VGG16 (Simonyan & Zisserman, configuration D).
_VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class VGG16(Backbone):
    """
    VGG16 feature extractor with divided widths. Outputs "vgg1".."vgg5" (the ReLU output of the last
    conv of each block, before its pool), strides 1, 2, 4, 8, 16.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int = 3,
        channel_divisor: int = 1,
        norm: str = "",
        out_features: List[str] = ("vgg5",),
        freeze_at: int = 0,
    ):
        """
        Args:
            in_channels (int): 3 for BGR/RGB input, 1 for grey (the paper's WIDER FACE setting).
            channel_divisor (int): n of "VGG-1-n"; widths 64/n, 128/n, 256/n, 512/n, 512/n (min 1).
            norm (str): norm after each conv ("" for none, "BN", "GN", ...; see get_norm).
            out_features (list[str]): names among "vgg1".."vgg5" to return.
            freeze_at (int): freeze the first ``freeze_at`` blocks (0 = none).
        """
        super().__init__()
        names = [f"vgg{i + 1}" for i in range(len(_VGG16_BLOCKS))]
        unknown = [f for f in out_features if f not in names]
        assert out_features and not unknown, f"VGG.OUT_FEATURES {unknown} not in {names}"
        self._out_features = list(out_features)
        last = max(names.index(f) for f in out_features)
        self.stage_names = names[: last + 1]
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        stride = 1
        for b, (name, (num_convs, width)) in enumerate(zip(self.stage_names, _VGG16_BLOCKS)):
            width = divide_channels(width, channel_divisor)
            convs = []
            for c in range(num_convs):
                conv = Conv2d(
                    in_channels,
                    width,
                    kernel_size=3,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, width),
                    activation=F.relu,
                )
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
                # conv{b+1}_{c+1}, as in the Caffe prototxt.
                convs.append((f"conv{b + 1}_{c + 1}", conv))
                in_channels = width
            block = nn.Sequential(OrderedDict(convs))
            if b < freeze_at:
                for p in block.parameters():
                    p.requires_grad = False
                block = _freeze_norms(block)
            self.add_module(name, block)
            self._out_feature_channels[name] = width
            self._out_feature_strides[name] = stride
            stride *= 2  # pool after blocks 1-4 (not after block 5: no pool5)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec):
        v = cfg.MODEL.VGG
        return {
            "in_channels": input_shape.channels,
            "channel_divisor": v.CHANNEL_DIVISOR,
            "norm": v.NORM,
            "out_features": list(v.OUT_FEATURES),
            "freeze_at": v.FREEZE_AT,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (N, C_in, H, W) images.

        Returns:
            dict[str->Tensor]: requested maps; "vggK" has shape (N, C_K, ~H/2^(K-1), ~W/2^(K-1))
            (the 2×2 pools round up, as Caffe's do).
        """
        assert x.dim() == 4, f"VGG16 takes (N, C, H, W) input, got {tuple(x.shape)}"
        return self.forward_stages(x, 0)

    def forward_stages(self, x: torch.Tensor, start: int) -> Dict[str, torch.Tensor]:
        """Blocks ``start``, ``start + 1``, … on ``x``, the input of block ``start`` (after its
        pool); the requested outputs among them."""
        outputs = {}
        for i, name in enumerate(self.stage_names[start:], start=start):
            if i > start:
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _freeze_norms(module: nn.Module) -> nn.Module:
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


@BACKBONE_REGISTRY.register()
def build_divided_vgg_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> VGG16:
    """
    VGG16 with widths divided by ``MODEL.VGG.CHANNEL_DIVISOR`` ("VGG-1-n", paper §4.1). Grayscale
    input comes from ``INPUT.FORMAT: "L"`` with a one-entry ``MODEL.PIXEL_MEAN``/``PIXEL_STD``.

    Returns:
        VGG16
    """
    return VGG16(cfg, input_shape)
