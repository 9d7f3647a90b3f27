"""Config keys added by QuantMimic. Paper: Wei et al., "Quantization Mimic", ECCV 2018."""
from detectron2.config import CfgNode as CN

__all__ = ["add_quantmimic_config"]


def add_quantmimic_config(cfg: CN) -> None:
    """
    Add QuantMimic's config nodes to a detectron2 config (in place). Call it before
    ``merge_from_file``. Float keys are declared as floats: write ``1.0``, not ``1`` (yacs rejects an
    int where a float is declared).
    """
    _C = cfg

    # ---------------------------------------------------------------------------------------------
    # Channel-divided ResNet (build_divided_resnet_backbone, divided_resnet.py)
    # ---------------------------------------------------------------------------------------------
    # n of "ResNet18-1-n" (paper §4.2, Table 7): every conv width of the stem and of res2..res5 (and
    # of the res5 box head) is divided by n, at least 1 channel. Allowed: 1, 2, 4, 8, 16, 32.
    # n = 1 gives detectron2's stock widths.
    _C.MODEL.RESNETS.CHANNEL_DIVISOR = 1

    # ---------------------------------------------------------------------------------------------
    # Channel-divided VGG16 (build_divided_vgg_backbone, vgg.py)
    # ---------------------------------------------------------------------------------------------
    _C.MODEL.VGG = CN()
    # n of "VGG-1-n" (paper §4.1, Table 1): the 13 conv widths (64, 128, 256, 512, 512) are divided by
    # n, at least 1 channel. VGG-1-4 (teacher) has 128 channels in conv5, VGG-1-32 (student) 16.
    _C.MODEL.VGG.CHANNEL_DIVISOR = 1
    # Normalization after every conv: "" (none, the original VGG16), "BN", "SyncBN", "GN", "FrozenBN".
    # Use "BN" (or "GN") when training from scratch.
    _C.MODEL.VGG.NORM = ""
    # Outputs to return, from "vgg1" (conv1_2, stride 1) ... "vgg5" (conv5_3, stride 16; no pool5).
    _C.MODEL.VGG.OUT_FEATURES = ["vgg5"]
    # Freeze the first N conv blocks (0 = train all, 1..5). Frozen blocks also freeze their norm layers.
    _C.MODEL.VGG.FREEZE_AT = 0

    # ---------------------------------------------------------------------------------------------
    # Quantized-output backbone (build_quantized_backbone, quantization.py). Paper eq. 1-3, §3.3.
    # ---------------------------------------------------------------------------------------------
    _C.MODEL.QUANTIZATION = CN()
    # Registered name of the backbone whose outputs are quantized, e.g.
    # "build_divided_resnet_backbone" or "build_divided_vgg_backbone". Used when
    # MODEL.BACKBONE.NAME = "build_quantized_backbone".
    _C.MODEL.QUANTIZATION.BACKBONE_NAME = "build_divided_resnet_backbone"
    # Names of the backbone outputs to quantize; [] = all of them ("the output feature map").
    _C.MODEL.QUANTIZATION.IN_FEATURES = []
    # Quantization stride s of the code book D = {0, s, 2s, ...} (eq. 2); the paper uses s = 1 (§3.5).
    # For "pow2", s is the scale of the level 2^0.
    _C.MODEL.QUANTIZATION.STRIDE = 1.0
    # Code book: "uniform" (eq. 2, the paper's method) or "pow2" ({0} ∪ {s·2^k}, Table 6).
    _C.MODEL.QUANTIZATION.METHOD = "uniform"
    # Upper clip of the quantized value (largest level ≤ CLIP); 0.0 = no clip (the paper does not clip).
    _C.MODEL.QUANTIZATION.CLIP = 0.0
    # Smallest exponent k of the power-of-2 code book s·2^k ("pow2" only); values ≤ s·2^(k-1) go to 0.
    _C.MODEL.QUANTIZATION.POW2_MIN_EXP = -8
