"""An exact half-resolution form of VGG's first block, for deployment (docs/SPEED.md).

VGG-1-32's block 1 is two 3×3 convolutions of 1→2 and 2→2 channels at full resolution followed by
a 2×2 max pool: ~32 MMAC at 576×1024 that generic convolution kernels run far below their speed
(too few channels to fill a vector register). Writing every full-resolution pixel (2i + a, 2j + b)
as phase (a, b) ∈ {0, 1}² of half-resolution pixel (i, j) turns the block into

- conv1_1: one 4×4, stride-2 convolution of the image (top/left padding 1, bottom/right 2) with
  4·C₁ output channels (phase-major: channel p·C₁ + c is phase p of channel c);
- conv1_2: one 3×3 convolution of 4·C₁ → 4·C₂ channels at half resolution (padding 1);
- the 2×2 pool: the element-wise max of the four phase slices.

Every output equals the original's up to float rounding, for any H and W: with an odd side, the
phases beyond the image are set to 0 (the original's zero padding before conv1_2, and ReLU outputs
are ≥ 0 so a 0 never wins the max that Caffe-style ceil-mode pooling takes over the valid entries
only) by a mask computed by the same strided convolution from an all-ones image, so the exported
graph has no shape-dependent branch.
"""

from typing import Dict, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.modeling import Backbone, ShapeSpec

__all__ = ["phase_weights", "SpaceToDepthVGG", "rewrite_vgg_first_block"]

_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def phase_weights(
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> Tuple[torch.Tensor, ...]:
    """
    Weights of the half-resolution block (module docstring) from conv1_1 (w1 (C₁, C₀, 3, 3), b1) and
    conv1_2 (w2 (C₂, C₁, 3, 3), b2).

    Returns:
        (W1 (4C₁, C₀, 4, 4), B1 (4C₁,), W2 (4C₂, 4C₁, 3, 3), B2 (4C₂,), M (4C₁, 1, 4, 4)):
        M picks, for output channel p·C₁ + c, the phase-p pixel of the window (the validity
        mask's kernel).
    """
    c1, c0 = w1.shape[:2]
    c2 = w2.shape[0]
    W1 = w1.new_zeros(4 * c1, c0, 4, 4)
    W2 = w2.new_zeros(4 * c2, 4 * c1, 3, 3)
    M = w1.new_zeros(4 * c1, 1, 4, 4)
    for p, (a, b) in enumerate(_PHASES):
        M[p * c1 : (p + 1) * c1, 0, a + 1, b + 1] = 1.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                # first conv: the 4×4 window starts one pixel above/left of phase (0, 0)
                W1[p * c1 : (p + 1) * c1, :, a + dy + 1, b + dx + 1] += w1[:, :, dy + 1, dx + 1]
                # second conv: input pixel 2i + a + dy is phase (a + dy) mod 2 of row i + ky
                ky, c = divmod(a + dy, 2)
                kx, d = divmod(b + dx, 2)
                q = _PHASES.index((c, d))
                W2[p * c2 : (p + 1) * c2, q * c1 : (q + 1) * c1, ky + 1, kx + 1] += w2[
                    :, :, dy + 1, dx + 1
                ]
    return W1, b1.repeat(4), W2, b2.repeat(4), M


class SpaceToDepthVGG(Backbone):
    """
    A :class:`~quant_mimic.vgg.VGG16` (inference, norms folded) whose block 1 and first pool run in
    the half-resolution form of the module docstring; the other blocks are the VGG's own. Same
    outputs, output shapes, size divisibility.
    """

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.vgg = vgg
        conv1, conv2 = list(vgg.vgg1.children())
        W1, B1, W2, B2, M = phase_weights(conv1.weight, conv1.bias, conv2.weight, conv2.bias)
        self.register_buffer("w1", W1.detach().clone(), False)
        self.register_buffer("b1", B1.detach().clone(), False)
        self.register_buffer("w2", W2.detach().clone(), False)
        self.register_buffer("b2", B2.detach().clone(), False)
        self.register_buffer("mask_kernel", M.detach().clone(), False)
        self.c1, self.c2 = conv1.weight.shape[0], conv2.weight.shape[0]

    def first_block(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C₀, H, W) → (N, C₂, ⌈H/2⌉, ⌈W/2⌉): conv1_1, ReLU, conv1_2, ReLU, 2×2 max pool."""
        x = F.pad(x, (1, 2, 1, 2))
        valid = F.pad(torch.ones_like(x[:, :1, 1:-2, 1:-2]), (1, 2, 1, 2))
        mask = F.conv2d(valid, self.mask_kernel, stride=2)  # 1 where the phase is in the image
        y = F.relu(F.conv2d(x, self.w1, self.b1, stride=2)) * mask
        y = F.relu(F.conv2d(y, self.w2, self.b2, padding=1))
        if self.c2 == self.c1:
            y = y * mask
        else:
            y = y * mask[:, :: self.c1].repeat_interleave(self.c2, dim=1)
        c = self.c2
        return torch.max(
            torch.max(y[:, :c], y[:, c : 2 * c]), torch.max(y[:, 2 * c : 3 * c], y[:, 3 * c :])
        )

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.vgg.forward_stages(self.first_block(x), 1)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self.vgg.output_shape()

    @property
    def size_divisibility(self) -> int:
        return self.vgg.size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return self.vgg.padding_constraints


def rewrite_vgg_first_block(model: nn.Module) -> bool:
    """
    Replace ``model.backbone`` by :class:`SpaceToDepthVGG` when it is a VGG16 whose block 1 is two
    convolutions with bias, ReLU and no remaining norm (fold BN first) and "vgg1" is not an output.
    Returns whether it did.
    """
    from ..vgg import VGG16

    vgg = getattr(model, "backbone", None)
    if not isinstance(vgg, VGG16) or "vgg1" in vgg._out_features or len(vgg.stage_names) < 2:
        return False
    convs = list(vgg.vgg1.children())
    if len(convs) != 2 or any(c.norm is not None or c.bias is None for c in convs):
        return False
    if any(c.activation is not F.relu for c in convs):
        return False
    model.backbone = SpaceToDepthVGG(vgg)
    return True
