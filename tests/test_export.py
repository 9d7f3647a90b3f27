"""Deployment export (quant_mimic.export, tools/export_student.py): BN folding, TorchScript and
onnxruntime parity with PyTorch on two image sizes, the student-only checkpoint."""

import os
import sys
import tempfile
import unittest

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer

from quant_mimic.export import (
    ORT_LEVELS,
    ExportedDetector,
    OpenVINOSession,
    StudentInference,
    bf16_supported,
    compare_detections,
    export_onnx,
    export_torchscript,
    fold_batchnorm,
    nchwc_thresholds,
    onnx_session,
    parity_report,
    session_options,
    tune_onnx,
)

from .common import REPO_ROOT, build_model_no_weights, get_config

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from export_student import main  # noqa: E402

from quant_mimic.export import example_images  # noqa: E402

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
        from quant_mimic.export.space_to_depth import rewrite_vgg_first_block

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

    @pytest.mark.slow
    def test_fpn_and_cascade_students(self):
        # multi-level RoI pooling (levels assigned per box) and three cascade stages: same contract
        for config in (FPN, CASCADE):
            with self.subTest(config=config):
                self._round_trip(config)


class TestOnnxRuntimeLevel(unittest.TestCase):
    @pytest.mark.slow
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
            self.assertEqual(list(tuned["nchwc_timings_ms"]), nchwc_thresholds(path))
            best = min(tuned["timings_ms"].values())
            if tuned["nchwc_min_channels"]:  # the fastest is ALL with NCHWc for wide convs only
                c = tuned["nchwc_min_channels"]
                self.assertEqual(tuned["level"], "ORT_ENABLE_ALL")
                self.assertEqual(
                    c, min(tuned["nchwc_timings_ms"], key=tuned["nchwc_timings_ms"].get)
                )
                self.assertLess(tuned["nchwc_timings_ms"][c], best)
            else:
                self.assertEqual(tuned["timings_ms"][tuned["level"]], best)
            props = {p.key: p.value for p in onnx.load(path).metadata_props}
            self.assertEqual(props["quant_mimic.ort_graph_optimization_level"], tuned["level"])
            self.assertEqual(
                props["quant_mimic.ort_nchwc_min_channels"], str(tuned["nchwc_min_channels"])
            )
            session = onnx_session(path, 1)  # a plain load gets the recorded level
            self.assertEqual(level(session), tuned["level"])
            self.assertEqual(
                session_options(session)["nchwc_min_channels"], tuned["nchwc_min_channels"]
            )
            self.assertEqual(level(onnx_session(path, 1, "ORT_ENABLE_BASIC")), "ORT_ENABLE_BASIC")
            self.assertIn(level(onnx_session(path, 1, "auto")), ORT_LEVELS)
            with self.assertRaisesRegex(ValueError, "Unknown onnxruntime graph optimisation"):
                onnx_session(path, 1, "fast")
            # the tuned file still meets the contract, with parity
            boxes, scores, classes = session.run(None, {"image": image.numpy().astype(np.float32)})
            with torch.no_grad():
                ref = module(image)
            self.assertTrue(compare_detections(ref, (boxes, scores, classes))["ok"])


class TestNCHWcWidths(unittest.TestCase):
    def test_only_wide_convolutions_change_layout_and_outputs_do_not(self):
        import numpy as np
        import onnx

        from quant_mimic.export import conv_widths, ort_session

        cfg = get_config(RFCN)
        module = StudentInference(_randomise_bn(build_model_no_weights(cfg)))
        images = example_images(cfg, sizes=SIZES)
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(module, images[0], os.path.join(d, "m.onnx"))
            widths = sorted(set(conv_widths(onnx.load(path)).values()))
            self.assertEqual(nchwc_thresholds(path), widths[1:] + [widths[-1] + 1])
            c = widths[2]
            session = ort_session(path, 1, "ORT_ENABLE_ALL", c)
            self.assertEqual([i.name for i in session.get_inputs()], ["image"])
            self.assertEqual(session_options(session)["nchwc_min_channels"], c)
            plain = ort_session(path, 1, "ORT_ENABLE_ALL")
            for x in images:
                got = session.run(None, {"image": x.numpy()})
                for a, b in zip(got, plain.run(None, {"image": x.numpy()})):
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
                with torch.no_grad():
                    self.assertTrue(compare_detections(module(x), got)["ok"])
            # which convolutions went to NCHWc: exactly those at least c channels wide
            import onnxruntime as ort

            optimized = os.path.join(d, "opt.onnx")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.optimized_model_filepath = optimized
            options.log_severity_level = 3
            model = onnx.load(path)
            narrow = [n for n, w in conv_widths(model).items() if w < c]
            for name in narrow:
                t = next(t for t in model.graph.initializer if t.name == name)
                model.graph.input.append(
                    onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims))
                )
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            nodes = onnx.load(optimized).graph.node
            nchwc = [n for n in nodes if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"]
            self.assertGreater(len(nchwc), 0)
            self.assertFalse(any(set(n.input) & set(narrow) for n in nchwc))
            self.assertEqual(
                ort_session(path, 1, "ORT_ENABLE_EXTENDED", c).quant_mimic_nchwc_min_channels, 0
            )


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@unittest.skipUnless(_has_openvino(), "openvino is not installed")
class TestOpenVINO(unittest.TestCase):
    """The same ONNX file in OpenVINO (quant_mimic.export.OpenVINOSession): exact in fp32, chosen
    by the file's metadata on a plain onnx_session load, bf16 only on request."""

    @classmethod
    def setUpClass(cls):
        cls.cfg = get_config(RFCN)
        cls.module = StudentInference(_randomise_bn(build_model_no_weights(cls.cfg)))
        cls.images = example_images(cls.cfg, sizes=SIZES)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.path = export_onnx(cls.module, cls.images[0], os.path.join(cls.tmp.name, "m.onnx"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_fp32_parity_on_two_sizes_and_an_empty_result(self):
        import numpy as np

        rows = parity_report(self.module, self.images, onnx_path=self.path, runtime="openvino")
        self.assertEqual([r["runtime"] for r in rows], ["openvino"] * 2)
        for r in rows:
            self.assertTrue(r["ok"], r)
            self.assertGreater(r["count_ref"], 0, r)
        session = onnx_session(self.path, 1, runtime="openvino")
        self.assertIsInstance(session, OpenVINOSession)
        opts = session_options(session)
        self.assertEqual(
            (opts["runtime"], opts["precision"], opts["threads"]), ("openvino", "fp32", 1)
        )
        flat = np.zeros((1, 64, 96), dtype=np.float32)  # nothing to detect: (0, 4), (0,), (0,)
        boxes, scores, classes = session.run(None, {"image": flat})
        self.assertEqual((boxes.shape[1:], scores.ndim, classes.dtype), ((4,), 1, np.int64))
        self.assertEqual(len(boxes), len(scores))
        # outputs by name, in the order asked; each shape compiled once and kept (max_shapes)
        x = self.images[1].numpy()
        scores2, boxes2 = session.run(["scores", "boxes"], {"image": x})
        ref_boxes, ref_scores, _ = session.run(None, {"image": x})
        np.testing.assert_array_equal(boxes2, ref_boxes)
        np.testing.assert_array_equal(scores2, ref_scores)
        session.max_shapes = 1
        session.run(None, {"image": self.images[0].numpy()})
        self.assertEqual(len(session._requests), 1)

    def test_runtime_recorded_and_applied(self):
        import onnx

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.onnx")
            with open(self.path, "rb") as src, open(path, "wb") as dst:
                dst.write(src.read())
            tuned = tune_onnx(path, 1, self.images[0].numpy(), runs=1, runtime="openvino")
            self.assertEqual((tuned["runtime"], tuned["precision"]), ("openvino", "fp32"))
            self.assertGreater(tuned["openvino_ms"], 0)
            props = {p.key: p.value for p in onnx.load(path).metadata_props}
            self.assertEqual(props["quant_mimic.runtime"], "openvino")
            self.assertEqual(props["quant_mimic.precision"], "fp32")
            self.assertIn(props["quant_mimic.ort_graph_optimization_level"], ORT_LEVELS)
            self.assertIsInstance(onnx_session(path, 1), OpenVINOSession)  # a plain load
            level = session_options(onnx_session(path, 1, "ORT_ENABLE_BASIC"))  # level: ORT
            self.assertEqual(level["graph_optimization_level"], "ORT_ENABLE_BASIC")
            # recorded OpenVINO where openvino is missing: onnxruntime, with a warning
            from unittest import mock

            with (
                mock.patch("importlib.util.find_spec", return_value=None),
                self.assertLogs("quant_mimic.export", "WARNING") as logs,
            ):
                fallback = session_options(onnx_session(path, 1))
            self.assertEqual(fallback["graph_optimization_level"], tuned["level"])
            self.assertIn("not installed", logs.output[0])
            ort = onnx_session(path, 1, runtime="onnxruntime")  # the recorded level, in ORT
            self.assertEqual(
                session_options(ort)["graph_optimization_level"], tuned["level"]
            )  # fmt: skip
            auto = tune_onnx(path, 1, self.images[0].numpy(), runs=1, runtime="auto")
            ort_ms = min(*auto["timings_ms"].values(), *auto["nchwc_timings_ms"].values())
            faster = "openvino" if auto["openvino_ms"] < ort_ms else None  # the fastest ORT options
            self.assertEqual(auto["runtime"], faster or "onnxruntime")
        with self.assertRaisesRegex(ValueError, "Unknown runtime"):
            onnx_session(self.path, 1, runtime="tensorrt")
        with self.assertRaisesRegex(ValueError, "Unknown precision"):
            onnx_session(self.path, 1, runtime="openvino", precision="int4")
        with self.assertRaisesRegex(ValueError, "runs in OpenVINO"):
            onnx_session(self.path, 1, runtime="onnxruntime", precision="bf16")
        with self.assertRaisesRegex(ValueError, "runs in OpenVINO"):
            tune_onnx(self.path, 1, runs=1, precision="bf16")

    def test_bf16_is_lossy_but_keeps_the_contract(self):
        import numpy as np

        if not bf16_supported():
            with self.assertRaisesRegex(RuntimeError, "avx512_bf16 or AMX"):
                OpenVINOSession(self.path, 1, precision="bf16")
            return
        session = onnx_session(self.path, 1, precision="bf16")  # implies OpenVINO
        self.assertEqual(session_options(session)["inference_precision_hint"], "bf16")
        boxes, scores, classes = session.run(None, {"image": self.images[0].numpy()})
        self.assertEqual((boxes.dtype, scores.dtype, classes.dtype),
                         (np.float32, np.float32, np.int64))  # fmt: skip
        self.assertEqual((len(boxes), len(scores)), (len(classes), len(classes)))
        self.assertTrue(np.all(boxes[:, 2:] >= boxes[:, :2]))

    def test_exported_detector_evaluates_like_the_model(self):
        # detectron2's evaluation input: a resized uint8 image and the original height / width
        model = self.module.model
        image = self.images[0].round().clamp(0, 255).to(torch.uint8)
        inputs = [{"image": image, "height": 384, "width": 512}]
        with torch.no_grad():
            ref = model(inputs)[0]["instances"]
        for runtime in ("onnxruntime", "openvino"):
            with self.subTest(runtime=runtime):
                detector = ExportedDetector(onnx_session(self.path, 1, runtime=runtime))
                got = detector(inputs)[0]["instances"]
                self.assertEqual(got.image_size, (384, 512))
                ref_det = (ref.pred_boxes.tensor, ref.scores, ref.pred_classes)
                got_det = (got.pred_boxes.tensor, got.scores, got.pred_classes)
                self.assertTrue(compare_detections(ref_det, got_det, 0.1, 1e-3)["ok"])


class TestExportCLI(unittest.TestCase):
    @pytest.mark.slow
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
                argv += ["--ort-threads", "0"]  # the timing: TestOnnxRuntimeLevel
                self.assertEqual(main(argv + ["MODEL.WEIGHTS", src]), 0, fmt)
                self.assertGreater(os.path.getsize(out), 0)


if __name__ == "__main__":
    unittest.main()
