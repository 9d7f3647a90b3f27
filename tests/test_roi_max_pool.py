"""quant_mimic.roi_max_pool: the teacher-side RoI max pooling is bit-identical to torchvision's
roi_pool (boxes across and outside the border, degenerate boxes, ties, several images, scales)."""

import unittest

import torch
from torchvision.ops import roi_pool

from quant_mimic import roi_max_pool as rmp


class TestRoIMaxPool(unittest.TestCase):
    def test_bit_identical_to_torchvision(self):
        g = torch.Generator().manual_seed(0)
        for trial in range(150):
            n, h, w, c, p = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in
                             ((1, 4), (1, 20), (1, 20), (1, 9), (1, 8)))  # fmt: skip
            scale = (1 / 16, 1 / 8, 1 / 32, 0.3, 1.0)[trial % 5]
            x = torch.randn(n, c, h, w, generator=g)
            if trial % 3 == 0:  # a quantized map: ties and zeros
                x = torch.round(x * 2).clamp(min=0)
            size = torch.tensor([w / scale * 1.2, h / scale * 1.2, w / scale, h / scale])
            b = torch.rand(40, 4, generator=g) * size - 20  # some start outside the map
            b[:, 2:] = b[:, :2] + b[:, 2:] * torch.rand(40, 2, generator=g) * (trial % 4)
            rois = torch.cat([torch.randint(0, n, (40, 1), generator=g).float(), b], dim=1)
            with self.subTest(trial=trial):
                got = rmp.roi_max_pool(x, rois, p, scale)
                self.assertTrue(torch.equal(got, roi_pool(x, rois, p, scale)))

    def test_empty_and_too_large(self):
        x = torch.rand(1, 3, 5, 6)
        self.assertEqual(tuple(rmp.roi_max_pool(x, torch.zeros(0, 5), 7, 1.0).shape), (0, 3, 7, 7))
        big = torch.rand(1, 2, 40, 40)
        rois = torch.tensor([[0.0, 0.0, 0.0, 39.0, 39.0]])
        old = rmp.MAX_TABLE_ENTRIES
        try:
            rmp.MAX_TABLE_ENTRIES = 100  # the caller falls back to torchvision's op
            self.assertIsNone(rmp.roi_max_pool(big, rois, 2, 1.0))
        finally:
            rmp.MAX_TABLE_ENTRIES = old
        self.assertTrue(torch.equal(rmp.roi_max_pool(big, rois, 2, 1.0), roi_pool(big, rois, 2)))


if __name__ == "__main__":
    unittest.main()
