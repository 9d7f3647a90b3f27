"""Channel-divided ResNets ("ResNet18-1-16", paper §4.2, Tables 7-9), their C4 box head and FPN.

"ResNet18-1-n" is ResNet18 with the number of filters of every conv layer divided by n. detectron2's
``build_resnet_backbone`` hard-codes the widths (and asserts RES2_OUT_CHANNELS == 64 for R18/R34),
and its ``Res5ROIHeads`` always builds Bottleneck blocks, so both are rebuilt here on
detectron2's own ``BasicStem`` / ``BasicBlock`` / ``BottleneckBlock`` / ``ResNet.make_stage``.
"""

from typing import Tuple

from torch import nn

from detectron2.config import CfgNode
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, ShapeSpec
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads

from .widths import ALLOWED_DIVISORS, divide_channels

__all__ = [
    "ALLOWED_DIVISORS",
    "divide_channels",
    "build_divided_resnet_backbone",
    "build_divided_resnet_fpn_backbone",
    "build_divided_retinanet_resnet_fpn_backbone",
    "build_divided_res5_block",
    "DividedRes5ROIHeads",
]


_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def _stage_kwargs(cfg: CfgNode, stage_idx: int, in_channels: int) -> Tuple[dict, int]:
    """make_stage() arguments (without stride) for stage ``stage_idx`` ∈ {2, 3, 4, 5}."""
    r = cfg.MODEL.RESNETS
    depth, n = r.DEPTH, r.CHANNEL_DIVISOR
    factor = 2 ** (stage_idx - 2)
    out_channels = divide_channels(r.RES2_OUT_CHANNELS * factor, n)
    kwargs = {"in_channels": in_channels, "out_channels": out_channels, "norm": r.NORM}
    if depth in (18, 34):
        kwargs["block_class"] = BasicBlock
    else:
        kwargs.update(
            block_class=BottleneckBlock,
            bottleneck_channels=divide_channels(r.NUM_GROUPS * r.WIDTH_PER_GROUP * factor, n),
            num_groups=r.NUM_GROUPS,
            stride_in_1x1=r.STRIDE_IN_1X1,
        )
    return kwargs, out_channels


def _check_resnet_cfg(cfg: CfgNode) -> None:
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in _BLOCKS_PER_STAGE:
        raise ValueError(
            f"Unknown MODEL.RESNETS.DEPTH: {r.DEPTH}; expected {list(_BLOCKS_PER_STAGE)}"
        )
    divide_channels(1, r.CHANNEL_DIVISOR)
    assert not any(r.DEFORM_ON_PER_STAGE), "Deformable conv is not supported by the divided ResNet"
    assert r.RES5_DILATION == 1, "MODEL.RESNETS.RES5_DILATION must be 1 for the divided ResNet"
    if r.DEPTH in (18, 34):
        assert r.RES2_OUT_CHANNELS == 64, "Set MODEL.RESNETS.RES2_OUT_CHANNELS = 64 for R18/R34"
        assert r.NUM_GROUPS == 1, "Set MODEL.RESNETS.NUM_GROUPS = 1 for R18/R34"
    elif r.NUM_GROUPS != 1 and r.CHANNEL_DIVISOR != 1:
        raise ValueError("Grouped (ResNeXt) convs cannot be channel-divided; use NUM_GROUPS = 1")


@BACKBONE_REGISTRY.register()
def build_divided_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """
    ResNet-{18,34,50,101} with every conv width divided by n = ``MODEL.RESNETS.CHANNEL_DIVISOR``
    ("ResNet18-1-n", paper §4.2). Stage names res2..res5, strides 4, 8, 16, 32. Honours
    ``MODEL.BACKBONE.FREEZE_AT``, ``MODEL.RESNETS.NORM`` (use "BN" from scratch) and
    ``MODEL.RESNETS.OUT_FEATURES``. With n = 1 the network is detectron2's
    ``build_resnet_backbone``.

    Returns:
        ResNet: a detectron2 :class:`ResNet`; e.g. R18-1-16 has widths stem 4, res2 4, res3 8,
        res4 16, res5 32.
    """
    _check_resnet_cfg(cfg)
    r = cfg.MODEL.RESNETS
    stem = BasicStem(
        in_channels=input_shape.channels,
        out_channels=divide_channels(r.STEM_OUT_CHANNELS, r.CHANNEL_DIVISOR),
        norm=r.NORM,
    )
    in_channels = stem.out_channels
    stages = []
    for idx, stage_idx in enumerate(range(2, 6)):
        num_blocks = _BLOCKS_PER_STAGE[r.DEPTH][idx]
        kwargs, in_channels_next = _stage_kwargs(cfg, stage_idx, in_channels)
        first_stride = 1 if stage_idx == 2 else 2
        stages.append(
            ResNet.make_stage(
                num_blocks=num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                **kwargs,
            )
        )
        in_channels = in_channels_next
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_divided_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """
    detectron2's ResNet-FPN (``build_resnet_fpn_backbone``: lateral and output convs, p2..p6 with
    a max-pooled p6) on the divided ResNet, with the FPN's width divided by the same n:
    ``MODEL.FPN.OUT_CHANNELS`` / ``MODEL.RESNETS.CHANNEL_DIVISOR`` (256 / 16 = 16 for
    ResNet18-1-16). ``MODEL.FPN.IN_FEATURES`` (res2..res5) name the bottom-up stages; n = 1 is
    detectron2's network.

    Returns:
        FPN: outputs p2..p6 (strides 4..64), each with OUT_CHANNELS / n channels.
    """
    bottom_up = build_divided_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=divide_channels(cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.RESNETS.CHANNEL_DIVISOR),
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_divided_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """
    detectron2's one-stage ResNet-FPN (``build_retinanet_resnet_fpn_backbone``: p3..p5 from
    res3..res5 and p6, p7 from res5 by stride-2 3×3 convs) on the divided ResNet, the FPN's width
    divided by the same n as :func:`build_divided_resnet_fpn_backbone`. The backbone of RetinaNet
    and FCOS (``MODEL.FPN.IN_FEATURES`` res3..res5).

    Returns:
        FPN: outputs p3..p7 (strides 8..128), each with OUT_CHANNELS / n channels.
    """
    bottom_up = build_divided_resnet_backbone(cfg, input_shape)
    out_channels = divide_channels(cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.RESNETS.CHANNEL_DIVISOR)
    res5 = bottom_up.output_shape()["res5"].channels
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(res5, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def build_divided_res5_block(cfg: CfgNode) -> Tuple[nn.Sequential, int]:
    """
    The res5 stage of the divided ResNet, run per RoI in a C4 detector (stride 2 in its first
    block). BasicBlocks for R18/R34, Bottlenecks otherwise.

    Returns:
        (nn.Sequential, int): the blocks and their output channels.
    """
    _check_resnet_cfg(cfg)
    in_channels = _stage_kwargs(cfg, 4, 0)[1]
    kwargs, out_channels = _stage_kwargs(cfg, 5, in_channels)
    num_blocks = _BLOCKS_PER_STAGE[cfg.MODEL.RESNETS.DEPTH][3]
    blocks = ResNet.make_stage(
        num_blocks=num_blocks, stride_per_block=[2] + [1] * (num_blocks - 1), **kwargs
    )
    return nn.Sequential(*blocks), out_channels


@ROI_HEADS_REGISTRY.register()
class DividedRes5ROIHeads(Res5ROIHeads):
    """
    detectron2's C4 ``Res5ROIHeads`` whose per-RoI res5 stage is that of the divided ResNet: the
    paper's "ResNet18 Faster R-CNN" (feature extractor ends at res4, res5 in the RoI head).
    With ``ROI_BOX_HEAD.POOLER_RESOLUTION`` 14 the stride-2 res5 gives the paper's 7×7 RoI output.
    """

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode):
        return build_divided_res5_block(cfg)
