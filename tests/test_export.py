"""Deployment export (quant_mimic.export, tools/export_student.py): BN folding, TorchScript and
onnxruntime parity with PyTorch on two image sizes, the student-only checkpoint."""

import os
import sys
import tempfile
import unittest

import torch

from detectron2.checkpoint import DetectionCheckpointer

from quant_mimic.export import (
    ORT_LEVELS,
    StudentInference,
    compare_detections,
    export_onnx,
    export_torchscript,
    fold_batchnorm,
    onnx_session,
    parity_report,
    session_options,
    tune_onnx,
)

from .common import REPO_ROOT, build_model_no_weights, get_config

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from export_student import example_images, main  # noqa: E402

RFCN = "WIDERFace/rfcn_VGG-1-32_scratch.yaml"
RFCN_QM = "WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml"
FRCNN = "PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml"
FPN = "Synth/faster_rcnn_R18-1-16_FPN_scratch.yaml"
CASCADE = "Synth/cascade_rcnn_R18-1-16_FPN_quant_mimic.yaml"
# The first size (traced) yields more proposals than POST_NMS_TOPK_TEST, the second fewer: RoI
# counts must not be baked into the exported graphs.
SIZES = ((192, 256), (96, 128))


def _randomise_bn(model):
    """
    Non-trivial BN statistics, so that folding is really exercised, and score layers as spread as
    a trained model's: detectron2 initialises the RPN objectness and class-score layers with
    std 0.01 (near-equal logits), and near ties in the RPN's top-k and NMS are resolved differently
    by runtimes whose arithmetic differs in the last bit, which a parity check must not mistake
    for a bug.
    """
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith(("objectness_logits", "cls_score")) and hasattr(m, "weight"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
    return model.eval()


class TestFoldBatchNorm(unittest.TestCase):
    def test_folding_keeps_outputs(self):
        for config in (RFCN, FRCNN):
            with self.subTest(config=config):
                cfg = get_config(config)
                model = _randomise_bn(build_model_no_weights(cfg))
                x = torch.rand(len(cfg.MODEL.PIXEL_MEAN), 1, 160, 224) * 255
                x = model.preprocess_image([{"image": x[:, 0]}]).tensor
                with torch.no_grad():
                    before = model.backbone(x)
                    folded = fold_batchnorm(model)
                    after = model.backbone(x)
                self.assertGreater(folded, 0)
                for k in before:
                    torch.testing.assert_close(after[k], before[k], atol=1e-4, rtol=1e-4)


class TestExportRoundTrip(unittest.TestCase):
    def _round_trip(self, config):
        cfg = get_config(config)
        model = _randomise_bn(build_model_no_weights(cfg))
        module = StudentInference(model)
        images = example_images(cfg, sizes=SIZES)
        with tempfile.TemporaryDirectory() as d:
            ts = export_torchscript(module, images[0], os.path.join(d, "m.ts"))
            onnx = export_onnx(module, images[0], os.path.join(d, "m.onnx"))
            rows = parity_report(module, images, torchscript_path=ts, onnx_path=onnx)
        self.assertEqual(len(rows), 4)  # 2 runtimes × 2 sizes (dynamic H, W)
        for r in rows:
            self.assertTrue(r["ok"], r)
            self.assertGreater(r["count_ref"], 0, r)
        # the unfolded PyTorch model gives the same detections as the folded module
        with torch.no_grad():
            plain = model.inference([{"image": images[1]}], do_postprocess=False)[0]
            got = module(images[1])
        ref = (plain.pred_boxes.tensor, plain.scores, plain.pred_classes)
        self.assertTrue(compare_detections(ref, got, 0.05, 1e-3)["ok"])

    def test_rfcn_vgg_student(self):
        self._round_trip(RFCN)

    def test_faster_rcnn_resnet_student(self):
        self._round_trip(FRCNN)

    def test_space_to_depth_first_block_is_exact(self):
        from quant_mimic.space_to_depth import rewrite_vgg_first_block

        cfg = get_config(RFCN)
        model = _randomise_bn(build_model_no_weights(cfg))
        module = StudentInference(model, space_to_depth=True)
        self.assertTrue(module.space_to_depth)
        plain = StudentInference(model)
        for h, w in ((96, 128), (97, 131), (33, 50)):  # odd sides: ceil-mode pool, zero padding
            x = torch.rand(1, 1, h, w) * 3
            with torch.no_grad():
                ref, got = plain.model.backbone(x)["vgg5"], module.model.backbone(x)["vgg5"]
            self.assertEqual(ref.shape, got.shape)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        images = example_images(cfg, sizes=SIZES)
        with tempfile.TemporaryDirectory() as d:
            onnx = export_onnx(module, images[0], os.path.join(d, "m.onnx"))
            rows = parity_report(module, images, onnx_path=onnx)
        self.assertTrue(all(r["ok"] for r in rows), rows)
        # not a VGG, or BN not folded: left as it is
        self.assertFalse(rewrite_vgg_first_block(build_model_no_weights(get_config(FRCNN))))
        self.assertFalse(StudentInference(model, fold_bn=False, space_to_depth=True).space_to_depth)

    def test_fpn_and_cascade_students(self):
        # multi-level RoI pooling (levels assigned per box) and three cascade stages: same contract
        for config in (FPN, CASCADE):
            with self.subTest(config=config):
                self._round_trip(config)


class TestOnnxRuntimeLevel(unittest.TestCase):
    def test_fastest_level_recorded_and_applied(self):
        import numpy as np
        import onnx

        cfg = get_config(RFCN)
        module = StudentInference(_randomise_bn(build_model_no_weights(cfg)))
        image = example_images(cfg, sizes=SIZES[:1])[0]
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(module, image, os.path.join(d, "m.onnx"))
            level = lambda s: session_options(s)["graph_optimization_level"]  # noqa: E731
            self.assertEqual(level(onnx_session(path, 1)), "ORT_ENABLE_ALL")  # untuned default
            tuned = tune_onnx(path, 1, image.numpy(), runs=2)
            self.assertEqual(set(tuned["timings_ms"]), set(ORT_LEVELS))
            self.assertEqual(tuned["level"], min(tuned["timings_ms"], key=tuned["timings_ms"].get))
            props = {p.key: p.value for p in onnx.load(path).metadata_props}
            self.assertEqual(props["quant_mimic.ort_graph_optimization_level"], tuned["level"])
            session = onnx_session(path, 1)  # a plain load gets the recorded level
            self.assertEqual(level(session), tuned["level"])
            self.assertEqual(level(onnx_session(path, 1, "ORT_ENABLE_BASIC")), "ORT_ENABLE_BASIC")
            self.assertIn(level(onnx_session(path, 1, "auto")), ORT_LEVELS)
            with self.assertRaisesRegex(ValueError, "Unknown onnxruntime graph optimisation"):
                onnx_session(path, 1, "fast")
            # the tuned file still meets the contract, with parity
            boxes, scores, classes = session.run(None, {"image": image.numpy().astype(np.float32)})
            with torch.no_grad():
                ref = module(image)
            self.assertTrue(compare_detections(ref, (boxes, scores, classes))["ok"])


class TestExportCLI(unittest.TestCase):
    def test_formats_from_a_mimic_checkpoint(self):
        mimic = build_model_no_weights(get_config(RFCN_QM))
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "model_final.pth")
            torch.save({"model": mimic.state_dict(), "iteration": 3}, src)
            pth = os.path.join(d, "student.pth")
            self.assertEqual(main(["--format", "pth", "--output", pth, "MODEL.WEIGHTS", src]), 0)
            student = build_model_no_weights(get_config(RFCN)).eval()
            DetectionCheckpointer(student).load(pth)  # detectron2's own loader
            exported = torch.load(pth, weights_only=True)["model"]
            missing, unexpected = student.load_state_dict(exported, strict=True)
            self.assertEqual((missing, unexpected), ([], []))
            image = example_images(get_config(RFCN), sizes=SIZES[:1])[0]
            with torch.no_grad():
                a = student.inference([{"image": image}], do_postprocess=False)[0]
                b = mimic.eval().inference([{"image": image}], do_postprocess=False)[0]
            self.assertTrue(torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor))
            self.assertTrue(torch.equal(a.scores, b.scores))
            config = os.path.join(REPO_ROOT, "configs", RFCN_QM)
            for fmt, name in (("onnx", "s.onnx"), ("torchscript", "s.ts")):
                out = os.path.join(d, name)
                argv = ["--config-file", config, "--format", fmt, "--output", out, "--check"]
                self.assertEqual(main(argv + ["MODEL.WEIGHTS", src]), 0, fmt)
                self.assertGreater(os.path.getsize(out), 0)


if __name__ == "__main__":
    unittest.main()
