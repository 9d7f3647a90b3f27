import unittest

import torch

from detectron2.modeling import ShapeSpec, build_backbone

from quant_mimic.quantization import QuantizedBackbone, quantize

from .common import get_config


def reference_uniform(x, s, clip=None):
    """Eq. 1-2 element by element: level β = k·s with ((k-1)s + ks)/2 < x ≤ (ks + (k+1)s)/2."""
    out = []
    for v in x.flatten().tolist():
        k = 0
        while v > (k * s + (k + 1) * s) / 2:  # above the upper midpoint: next level
            k += 1
        if clip is not None:
            while k * s > clip:
                k -= 1
        out.append(k * s)
    return torch.tensor(out, dtype=x.dtype).reshape(x.shape)


def reference_pow2(x, s, min_exp):
    """Nearest level of {0} ∪ {s·2^k, k ≥ min_exp}, ties to the lower level, by brute force."""
    levels = [0.0] + [s * 2.0**k for k in range(min_exp, 40)]
    out = []
    for v in x.flatten().tolist():
        best = levels[0]
        for lv in levels[1:]:
            if abs(v - lv) < abs(v - best):  # strict: a tie keeps the lower level
                best = lv
        out.append(best)
    return torch.tensor(out, dtype=x.dtype).reshape(x.shape)


class TestUniformQuantize(unittest.TestCase):
    def test_levels_on_codebook_and_match_reference(self):
        g = torch.Generator().manual_seed(0)
        for s in (1.0, 0.5, 2.0, 0.25):
            x = torch.randn(500, generator=g, dtype=torch.float64) * 6 * s + s
            q = quantize(x, stride=s)
            self.assertTrue(torch.equal(q, reference_uniform(x, s)), f"stride {s}")
            self.assertTrue(torch.equal(q / s, torch.round(q / s)))
            self.assertGreaterEqual(q.min().item(), 0.0)

    def test_tie_goes_to_lower_level(self):
        x = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 0.5000001, 1.4999999])
        q = quantize(x, stride=1.0)
        self.assertEqual(q.tolist(), [0.0, 1.0, 2.0, 3.0, 4.0, 1.0, 1.0])
        # torch.round would give [0, 2, 2, 4, 4]: round-half-to-even is not eq. 1.
        self.assertNotEqual(torch.round(x[:5]).tolist(), q[:5].tolist())
        q2 = quantize(torch.tensor([1.0, 3.0, 5.0]), stride=2.0)  # midpoints of {0, 2, 4, 6}
        self.assertEqual(q2.tolist(), [0.0, 2.0, 4.0])

    def test_negative_and_small_values_go_to_zero(self):
        x = torch.tensor([-100.0, -0.3, 0.0, 0.2, 0.5])
        self.assertEqual(quantize(x, stride=1.0).tolist(), [0.0] * 5)

    def test_clip(self):
        x = torch.tensor([0.4, 2.6, 7.2, 100.0])
        self.assertEqual(quantize(x, stride=1.0, clip=4.0).tolist(), [0.0, 3.0, 4.0, 4.0])
        self.assertEqual(quantize(x, stride=2.0, clip=5.0).tolist(), [0.0, 2.0, 4.0, 4.0])
        y = torch.randn(300, dtype=torch.float64) * 5
        self.assertTrue(torch.equal(quantize(y, 0.5, clip=3.2), reference_uniform(y, 0.5, 3.2)))

    def test_fig2_staircase(self):
        # Fig. 2: the quantized ReLU Q(relu(x)) is a staircase with unit steps at k + 1/2.
        x = torch.linspace(-2, 5, 701, dtype=torch.float64)
        q = quantize(torch.relu(x), stride=1.0)
        steps = x[1:][q[1:] != q[:-1]]
        expected = torch.tensor([0.51, 1.51, 2.51, 3.51, 4.51], dtype=torch.float64)
        self.assertTrue(torch.allclose(steps, expected, atol=1e-9))
        self.assertTrue(torch.all(q[1:] >= q[:-1]))

    def test_dtype_and_shape_preserved(self):
        for dtype in (torch.float32, torch.float64, torch.float16):
            x = torch.rand(2, 3, 4, 5).to(dtype) * 10
            q = quantize(x)
            self.assertEqual(q.dtype, dtype)
            self.assertEqual(q.shape, x.shape)

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            quantize(torch.zeros(1), method="log")
        with self.assertRaises(ValueError):
            quantize(torch.zeros(1), stride=0.0)


class TestPow2Quantize(unittest.TestCase):
    def test_matches_reference(self):
        g = torch.Generator().manual_seed(1)
        x = torch.rand(400, generator=g, dtype=torch.float64) * 40 - 2
        for s, e in ((1.0, -4), (0.5, -2), (2.0, 0)):
            self.assertTrue(
                torch.equal(quantize(x, s, "pow2", pow2_min_exp=e), reference_pow2(x, s, e))
            )

    def test_ties_and_levels(self):
        x = torch.tensor([-1.0, 0.0, 0.0625, 0.07, 1.5, 1.51, 3.0, 6.0, 6.5, 24.0])
        q = quantize(x, 1.0, "pow2", pow2_min_exp=-3)  # levels 0, 1/8, 1/4, ...
        self.assertEqual(q.tolist(), [0.0, 0.0, 0.0, 0.125, 1.0, 2.0, 2.0, 4.0, 8.0, 16.0])
        q = quantize(torch.tensor([5.0, 100.0]), 1.0, "pow2", clip=10.0)
        self.assertEqual(q.tolist(), [4.0, 8.0])


class TestStraightThrough(unittest.TestCase):
    def test_jacobian_is_identity(self):
        # Q is piecewise constant, so numerical differences are 0 almost everywhere; the claimed
        # rule is the identity (full-precision gradient, §3.1): the analytic Jacobian must be I.
        x = (torch.rand(4, 3, dtype=torch.float64) * 5).requires_grad_()
        for method in ("uniform", "pow2"):
            jac = torch.autograd.functional.jacobian(lambda t: quantize(t, 1.0, method), x)
            self.assertTrue(torch.equal(jac.reshape(12, 12), torch.eye(12, dtype=torch.float64)))
        # Chain rule with Q replaced by the identity: d/dx L(Q(x)) = L'(Q(x)).
        y = (torch.rand(5, dtype=torch.float64) * 4).requires_grad_()
        w = torch.arange(5.0, dtype=torch.float64)
        q = quantize(y, 0.5)
        (w * q**2).sum().backward()
        self.assertTrue(torch.equal(y.grad, 2 * w * q.detach()))


class TestQuantizedBackbone(unittest.TestCase):
    def _cfg(self, **kw):
        opts = ["MODEL.BACKBONE.NAME", "build_quantized_backbone"]
        for k, v in kw.items():
            opts += [k, v]
        return get_config("PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml", opts)

    def test_features_on_codebook_and_shapes_unchanged(self):
        cfg = self._cfg(**{"MODEL.QUANTIZATION.STRIDE": 0.5,
                           "MODEL.RESNETS.OUT_FEATURES": ["res3", "res4"],
                           "MODEL.QUANTIZATION.IN_FEATURES": ["res4"]})  # fmt: skip
        torch.manual_seed(0)
        qb = build_backbone(cfg, ShapeSpec(channels=3))
        self.assertIsInstance(qb, QuantizedBackbone)
        plain = qb.bottom_up
        self.assertEqual(qb.output_shape(), plain.output_shape())
        self.assertEqual(qb.size_divisibility, plain.size_divisibility)
        qb.eval()
        x = torch.randn(2, 3, 64, 96) * 50
        out, ref = qb(x), plain(x)
        self.assertTrue(torch.equal(out["res4"], quantize(ref["res4"], 0.5)))
        self.assertTrue(torch.equal(out["res4"] / 0.5, torch.round(out["res4"] / 0.5)))
        self.assertTrue(torch.equal(out["res3"], ref["res3"]))  # not listed: untouched
        qb.train()  # quantized in training too
        out = qb(x)
        self.assertTrue(torch.equal(out["res4"] / 0.5, torch.round(out["res4"] / 0.5)))

    def test_checkpoint_keys_transparent(self):
        cfg = self._cfg()
        qb = build_backbone(cfg, ShapeSpec(channels=3))
        plain_cfg = get_config("PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml")
        plain = build_backbone(plain_cfg, ShapeSpec(channels=3))
        self.assertEqual(set(qb.state_dict()), set(plain.state_dict()))
        with torch.no_grad():
            for p in plain.parameters():
                p.normal_()
        qb.load_state_dict(plain.state_dict(), strict=True)
        for k, v in plain.state_dict().items():
            self.assertTrue(torch.equal(qb.state_dict()[k], v), k)
        plain.load_state_dict(qb.state_dict(), strict=True)

    def test_gradient_passes_through(self):
        cfg = self._cfg()
        qb = build_backbone(cfg, ShapeSpec(channels=3))
        out = qb(torch.randn(1, 3, 64, 64) * 50)
        out["res4"].sum().backward()
        grads = [p.grad for p in qb.parameters() if p.requires_grad]
        self.assertTrue(all(g is not None for g in grads))
        self.assertGreater(sum(g.abs().sum().item() for g in grads), 0)


if __name__ == "__main__":
    unittest.main()
