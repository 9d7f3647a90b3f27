"""Feature-map quantization of Quantization Mimic (Wei et al., ECCV 2018, §3.1).

The paper quantizes the *output feature map of the feature extractor* with the element-wise function

    Q(x) = β   if (α + β) / 2 < x ≤ (β + γ) / 2                                   (eq. 1)

where α, β, γ are adjacent entries of the code book

    D = {0, s, 2s, 3s, ...}                                                        (eq. 2)

and s is the quantization stride (s = 1 in all of the paper's experiments, §3.5). Backward passes
the full-precision gradient (straight-through, "inspired by BNN"). Table 6 compares this uniform
code book with a power-of-2 one, {0} ∪ {2^k}.

This module provides the pure function :func:`quantize` (used here and by the mimic loss, eq. 6) and
:class:`QuantizedBackbone`, a backbone wrapper that quantizes selected outputs of any registered
backbone; registered as ``build_quantized_backbone``.
"""

import logging
import math
from typing import Dict, List, Optional

import torch

from detectron2.config import CfgNode, configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec

__all__ = [
    "QUANTIZATION_METHODS",
    "quantize",
    "quantizer_args",
    "QuantizedBackbone",
    "build_quantized_backbone",
]

logger = logging.getLogger(__name__)

QUANTIZATION_METHODS = ("uniform", "pow2")


def _uniform_levels(x: torch.Tensor, stride: float, clip: Optional[float]) -> torch.Tensor:
    # Index β/s of the level of eq. 1: x ∈ ((k - 1/2)s, (k + 1/2)s] -> k. ceil() puts an exact
    # midpoint on the lower level (torch.round would send 2.5 to 2 but 3.5 to 4: "round half to
    # even").
    k = torch.ceil(x / stride - 0.5).clamp_(min=0)
    if clip is not None:
        k = k.clamp_(max=math.floor(clip / stride))
    return k * stride


def _pow2_levels(
    x: torch.Tensor, stride: float, clip: Optional[float], min_exp: int
) -> torch.Tensor:
    # Code book {0} ∪ {s·2^k : k ≥ min_exp}; nearest level, a midpoint goes to the lower level.
    y = x / stride
    smallest = 2.0**min_exp
    mantissa, exponent = torch.frexp(y.clamp(min=smallest))  # y = m·2^e, m ∈ [0.5, 1)
    # y lies in [2^(e-1), 2^e); the midpoint of that interval is 0.75·2^e, i.e. m = 0.75.
    exponent = torch.where(mantissa > 0.75, exponent, exponent - 1)
    level = torch.ldexp(torch.ones_like(y), exponent)
    level = torch.where(y > smallest / 2, level, torch.zeros_like(y))
    if clip is not None:
        top = clip / stride
        if top < smallest:
            level = torch.zeros_like(level)
        else:
            level = level.clamp(max=2.0 ** math.floor(math.log2(top)))
    return level * stride


class _QuantizeSTE(torch.autograd.Function):
    """Q in the forward pass, identity in the backward pass (§3.1, full-precision gradient)."""

    @staticmethod
    def forward(ctx, x, stride, method, clip, min_exp):
        if method == "uniform":
            return _uniform_levels(x, stride, clip)
        return _pow2_levels(x, stride, clip, min_exp)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None, None, None, None


def quantize(
    x: torch.Tensor,
    stride: float = 1.0,
    method: str = "uniform",
    clip: Optional[float] = None,
    pow2_min_exp: int = -8,
) -> torch.Tensor:
    """
    Quantize a tensor element-wise with a straight-through gradient (paper eq. 1-2, Table 6).

    Args:
        x (Tensor): any shape, any floating dtype.
        stride (float): s > 0. Uniform: the code book is {0, s, 2s, ...} (eq. 2). Power-of-2:
            the code book is {0} ∪ {s·2^k : k ≥ pow2_min_exp}, i.e. s is the scale of the level 2^0.
        method (str): "uniform" (the paper's choice) or "pow2" (Table 6 ablation).
        clip (float or None): if given, values are capped at the largest level ≤ clip.
        pow2_min_exp (int): smallest exponent of the power-of-2 code book; values at or below
            half of s·2^pow2_min_exp go to 0. Ignored for "uniform".

    Returns:
        Tensor: same shape and dtype as ``x``, every entry on the code book. A value exactly midway
        between two adjacent levels goes to the lower one; values ≤ s/2 (including all negative
        values) go to 0. The gradient w.r.t. ``x`` is the identity.
    """
    if method not in QUANTIZATION_METHODS:
        raise ValueError(
            f"Unknown quantization method: {method!r}; expected one of {QUANTIZATION_METHODS}"
        )
    if not stride > 0:
        raise ValueError(f"Quantization stride must be > 0, got {stride}")
    if clip is not None and clip <= 0:
        clip = None
    return _QuantizeSTE.apply(x, float(stride), method, clip, int(pow2_min_exp))


def quantizer_args(qcfg: CfgNode) -> Dict:
    """
    The keyword arguments of :func:`quantize` (``stride``, ``method``, ``clip``, ``pow2_min_exp``)
    described by a ``MODEL.QUANTIZATION`` config node: the one description of Q that the quantized
    backbone and, by default, the mimic loss (eq. 6) share.
    """
    args = {
        "stride": float(qcfg.STRIDE),
        "method": qcfg.METHOD,
        "clip": float(qcfg.CLIP) if qcfg.CLIP > 0 else None,
        "pow2_min_exp": int(qcfg.POW2_MIN_EXP),
    }
    quantize(torch.zeros(1), **args)  # validate early, naming the bad value
    return args


class QuantizedBackbone(Backbone):
    """
    Wraps a backbone and quantizes some of its output feature maps with :func:`quantize`.

    The wrapped network is "a network whose output feature map is quantized" (paper §3.3, the
    quantized teacher): quantization applies in training and at inference, output shapes and strides
    are those of the inner backbone, and gradients pass straight through Q.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_features: List[str],
        stride: float = 1.0,
        method: str = "uniform",
        clip: Optional[float] = None,
        pow2_min_exp: int = -8,
    ):
        """
        Args:
            backbone (Backbone): the network whose outputs are quantized.
            in_features (list[str]): names of the outputs to quantize; empty list = all outputs.
            stride, method, clip, pow2_min_exp: see :func:`quantize`.
        """
        super().__init__()
        self.bottom_up = backbone
        names = list(backbone.output_shape().keys())
        unknown = [f for f in in_features if f not in names]
        assert not unknown, f"QUANTIZATION.IN_FEATURES {unknown} are not backbone outputs {names}"
        self.quantized_features = list(in_features) or names
        self.q_stride = stride
        self.q_method = method
        self.q_clip = clip
        self.q_pow2_min_exp = pow2_min_exp
        # Validate arguments once, at construction.
        quantize(torch.zeros(1), stride, method, clip, pow2_min_exp)
        # Checkpoints are transparent to the wrapper: a full-precision model's weights load into the
        # quantized model (the paper's finetuning step, §3.3) and back, with identical keys.
        self._register_state_dict_hook(_drop_inner_prefix)
        self._register_load_state_dict_pre_hook(_add_inner_prefix, with_module=True)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec):
        qcfg = cfg.MODEL.QUANTIZATION
        assert qcfg.BACKBONE_NAME != "build_quantized_backbone", "Cannot wrap the wrapper itself"
        inner = BACKBONE_REGISTRY.get(qcfg.BACKBONE_NAME)(cfg, input_shape)
        assert isinstance(inner, Backbone), f"{qcfg.BACKBONE_NAME} did not return a Backbone"
        return {
            "backbone": inner,
            "in_features": list(qcfg.IN_FEATURES),
            **quantizer_args(qcfg),
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): images of shape (N, C, H, W).

        Returns:
            dict[str->Tensor]: the inner backbone's outputs; those named in ``quantized_features``
            are quantized.
        """
        outputs = self.bottom_up(x)
        for name in self.quantized_features:
            outputs[name] = quantize(
                outputs[name], self.q_stride, self.q_method, self.q_clip, self.q_pow2_min_exp
            )
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.bottom_up.output_shape()

    @property
    def size_divisibility(self) -> int:
        return self.bottom_up.size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return self.bottom_up.padding_constraints


_INNER = "bottom_up."


def _drop_inner_prefix(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + _INNER)]:
        state_dict[prefix + key[len(prefix + _INNER) :]] = state_dict.pop(key)
    return state_dict


def _add_inner_prefix(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
):
    # A key gets the inner prefix when that names one of the wrapped backbone's tensors: decided
    # by the backbone's own names, since an inner FPN has a "bottom_up." of its own.
    inner = {prefix + _INNER + k for k in module.bottom_up.state_dict(keep_vars=True)}
    for key in [k for k in state_dict if k.startswith(prefix) and k not in inner]:
        if prefix + _INNER + key[len(prefix) :] in inner:
            state_dict[prefix + _INNER + key[len(prefix) :]] = state_dict.pop(key)


@BACKBONE_REGISTRY.register()
def build_quantized_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """
    Build the backbone named by ``MODEL.QUANTIZATION.BACKBONE_NAME`` and quantize its outputs listed
    in ``MODEL.QUANTIZATION.IN_FEATURES`` (paper eq. 1-3, §3.3 "quantized teacher").

    Returns:
        QuantizedBackbone
    """
    return QuantizedBackbone(cfg, input_shape)
