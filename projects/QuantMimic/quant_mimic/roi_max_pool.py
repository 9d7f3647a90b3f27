"""RoI max pooling of the frozen teacher's maps by window-max tables (ours; exact).

The mimic loss pools f_t^i from the teacher's map for N RoIs per image with RoI max pooling (the
paper's, ``MODEL.MIMIC.POOLER_TYPE`` "ROIPool"). The teacher map needs no gradient and is small on
the CPU benchmarks (12×16 on the synthetic faces), while the N RoIs overlap heavily: torchvision's
CPU ``roi_pool`` visits every cell of every bin of every RoI and channel, one RoI at a time, and
costs more than the rest of a cached mimic step. Here every bin is a rectangle of the map with at
most ``LH`` rows and ``LW`` columns, so the maxima of all such rectangles are computed once per
image (``LH + LW`` vectorised max operations), and each bin's value is then one indexed read:

    T[n, c, h, lh, w, lw] = max x[n, c, h : h + lh + 1, w : w + lw + 1]
    out[r, c, i, j] = T[b_r, c, h0, h1 - h0 - 1, w0, w1 - w0 - 1]    (0 for an empty bin)

with the bin boundaries (h0, h1, w0, w1) computed exactly as torchvision's kernel does (float32
arithmetic, C rounding), so the output is bit-identical to ``torchvision.ops.roi_pool``
(tests/test_roi_max_pool.py). It is used only without gradient and when the table is small
(:data:`MAX_TABLE_ENTRIES`); otherwise torchvision's op runs.
"""

from typing import Optional

import torch

__all__ = ["roi_max_pool", "MAX_TABLE_ENTRIES"]

# Beyond this many table entries (N·C·H·W·LH·LW) the table costs more memory than it saves.
MAX_TABLE_ENTRIES = 16_000_000


def _c_round(v: torch.Tensor) -> torch.Tensor:
    """C's round(): half away from zero (torch.round is half to even)."""
    t = torch.trunc(v)
    return t + torch.where((v - t).abs() >= 0.5, torch.sign(v), torch.zeros_like(v))


def _bins(rois: torch.Tensor, size: int, scale: float, height: int, width: int):
    """Bin boundaries (R, P) h0, h1 and w0, w1 as torchvision's roi_pool CPU kernel has them."""
    s = torch.tensor(scale, dtype=torch.float32)
    r = rois.to(torch.float32)
    x0, y0, x1, y1 = (_c_round(r[:, k] * s).to(torch.int64) for k in (1, 2, 3, 4))
    roi_w = torch.clamp(x1 - x0 + 1, min=1).to(torch.float32)
    roi_h = torch.clamp(y1 - y0 + 1, min=1).to(torch.float32)
    bin_h, bin_w = roi_h / float(size), roi_w / float(size)  # float32, as T in the kernel
    p = torch.arange(size, dtype=torch.float32)
    h0 = torch.floor(p[None] * bin_h[:, None]).to(torch.int64) + y0[:, None]
    h1 = torch.ceil((p[None] + 1) * bin_h[:, None]).to(torch.int64) + y0[:, None]
    w0 = torch.floor(p[None] * bin_w[:, None]).to(torch.int64) + x0[:, None]
    w1 = torch.ceil((p[None] + 1) * bin_w[:, None]).to(torch.int64) + x0[:, None]
    return (
        h0.clamp(0, height),
        h1.clamp(0, height),
        w0.clamp(0, width),
        w1.clamp(0, width),
    )


@torch.no_grad()
def roi_max_pool(
    x: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float
) -> Optional[torch.Tensor]:
    """
    ``torchvision.ops.roi_pool(x, rois, output_size, spatial_scale)`` without gradient, by
    window-max tables; None when the table would exceed :data:`MAX_TABLE_ENTRIES` (use
    torchvision's op then).

    Args:
        x (Tensor): (N, C, H, W) maps.
        rois (Tensor): (R, 5) rows (batch index, x0, y0, x1, y1) in input-image coordinates.
        output_size (int): P of the P×P output.
        spatial_scale (float): 1 / the map's stride.

    Returns:
        Tensor: (R, C, P, P), or None.
    """
    n, c, height, width = x.shape
    num = rois.shape[0]
    if num == 0:
        return x.new_zeros((0, c, output_size, output_size))
    h0, h1, w0, w1 = _bins(rois.cpu(), output_size, spatial_scale, height, width)
    lh = max(int((h1 - h0).max()), 1)
    lw = max(int((w1 - w0).max()), 1)
    if n * c * height * width * lh * lw > MAX_TABLE_ENTRIES:
        return None
    # rows: R1[n, c, h, a, w] = max x[n, c, h : h + a + 1, w] (rows past the map repeat the last
    # valid maximum; such windows are never read: a bin ends inside the map)
    rows = [x]
    for a in range(1, lh):
        shifted = torch.cat([x[:, :, a:], x[:, :, -1:].expand(-1, -1, a, -1)], dim=2)
        rows.append(torch.maximum(rows[-1], shifted))
    r1 = torch.stack(rows, dim=3)  # (N, C, H, LH, W)
    cols = [r1]
    for b in range(1, lw):
        shifted = torch.cat([r1[..., b:], r1[..., -1:].expand(-1, -1, -1, -1, b)], dim=4)
        cols.append(torch.maximum(cols[-1], shifted))
    table = torch.stack(cols, dim=5)  # (N, C, H, LH, W, LW)
    # one row of C values per window, and a last row of zeros for the empty bins
    table = table.permute(0, 2, 3, 4, 5, 1).reshape(-1, c)
    table = torch.cat([table, table.new_zeros((1, c))])
    batch = rois[:, 0].to(torch.int64).cpu()
    hh0, hh1 = h0[:, :, None].expand(-1, -1, output_size), h1[:, :, None]
    ww0, ww1 = w0[:, None, :].expand(-1, output_size, -1), w1[:, None, :]
    dh = (hh1 - hh0 - 1).clamp(0, lh - 1)
    dw = (ww1 - ww0 - 1).clamp(0, lw - 1)
    index = (((batch[:, None, None] * height + hh0.clamp(max=height - 1)) * lh + dh) * width
             + ww0.clamp(max=width - 1)) * lw + dw  # fmt: skip
    index = torch.where((hh1 <= hh0) | (ww1 <= ww0), table.shape[0] - 1, index)  # empty: 0
    out = table.index_select(0, index.flatten().to(x.device))
    # (R, C, P, P) as a view of (R, P, P, C): the loss reads it once, no copy
    return out.view(num, output_size, output_size, c).permute(0, 3, 1, 2)
