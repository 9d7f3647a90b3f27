"""Q diagnostics at the mimic layer (quant_mimic.diagnostics), on hand-made tensors."""

import unittest

import torch

from quant_mimic.diagnostics import roi_mismatch_ratio, ste_zero_grad_fraction, zero_fraction


class TestDiagnostics(unittest.TestCase):
    def test_zero_fraction_by_hand(self):
        x = torch.tensor([0.2, 0.5, 0.51, 1.4, -1.0])
        # s = 1: levels 0, 0 (a midpoint goes down), 1, 1, 0 -> 3 of 5 entries are 0.
        self.assertAlmostEqual(zero_fraction(x, {"stride": 1.0}), 0.6)
        # s = 0.25: only the negative entry is at or below s/2.
        self.assertAlmostEqual(zero_fraction(x, {"stride": 0.25}), 0.2)
        # default = the paper's s = 1
        self.assertAlmostEqual(zero_fraction(x), 0.6)

    def test_ste_zero_grad_fraction_by_hand(self):
        t = torch.tensor([0.2, 0.7, 1.2, 3.0])
        s = torch.tensor([0.4, 0.2, 1.4, 3.0])
        # Q(t) = 0, 1, 1, 3 and Q(s) = 0, 0, 1, 3: the gradient Q(s) - Q(t) is 0 at 3 of 4 entries.
        self.assertAlmostEqual(ste_zero_grad_fraction(t, s, {"stride": 1.0}), 0.75)
        # Without Q on the student: s - Q(t) is 0 only where s equals the level (3.0).
        frac = ste_zero_grad_fraction(t, s, {"stride": 1.0}, quantize_student=False)
        self.assertAlmostEqual(frac, 0.25)
        # Without Q at all (Li et al.): zero only where the features are equal.
        self.assertAlmostEqual(ste_zero_grad_fraction(t, s, None, False, False), 0.25)
        # The fraction matches autograd through the straight-through quantizer.
        from quant_mimic import mimic_loss

        s_ = s.clone().view(1, 4, 1, 1).requires_grad_()
        loss, _ = mimic_loss(t.view(1, 4, 1, 1), s_, quantizer={"stride": 1.0})
        loss.backward()
        self.assertAlmostEqual((s_.grad == 0).float().mean().item(), 0.75)

    def test_roi_mismatch_ratio_by_hand(self):
        t = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
        s = torch.tensor([[0.2, 1.0, 2.4, 0.8], [0.1, 0.35, 0.0, 0.0]]).view(2, 1, 2, 2)
        # Without Q: |t - s| = .2, 0, .4, .8 -> 2 of 4 above 0.3; RoI 2: .1, .35, 0, 0 -> 1 of 4.
        r = roi_mismatch_ratio(t, s, 0.3, quantize_teacher=False, quantize_student=False)
        self.assertTrue(torch.allclose(r, torch.tensor([0.5, 0.25])))
        # Q on both sides (s = 1): Q(s) = 0, 1, 2, 1 and 0, 0, 0, 0 -> 1 of 4 and 0 of 4.
        r = roi_mismatch_ratio(t, s, 0.3, quantizer={"stride": 1.0})
        self.assertTrue(torch.allclose(r, torch.tensor([0.25, 0.0])))


if __name__ == "__main__":
    unittest.main()
