"""The student file is the whole contract (quant_mimic.export.contract / .detector): the
ONNX file records its classes, input, resize rule, threshold and provenance; Detector turns an
OpenCV image into named boxes in the image's pixels, equal to DefaultPredictor over the PyTorch
student; files without the contract, empty images and images where nothing survives."""

import os
import tempfile
import unittest

import numpy as np
import pytest
import torch

from detectron2.engine import DefaultPredictor

from quant_mimic import get_config
from quant_mimic.errors import UserError
from quant_mimic.export import (
    Detector,
    compare_detections,
    example_images,
    export_student,
    read_contract,
)
from quant_mimic.testing import EXAMPLE_CLASSES, write_coco_example

from .common import CONFIG_DIR, build_model_no_weights

C4 = os.path.join(CONFIG_DIR, "Custom", "faster_rcnn_R18-1-16_C4_scratch.yaml")
SMALL = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "240", "INPUT.MAX_SIZE_TEST", "400",
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # fmt: skip


def _exported(d, config, opts, check=False):
    """(cfg, onnx path) of a random-weight student exported from ``config`` (``check``: its
    parity with PyTorch on two example images asserted)."""
    cfg = get_config(config, opts)
    model = build_model_no_weights(cfg)
    with torch.no_grad():  # BN statistics that are not the identity: folding is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    weights = os.path.join(d, "w.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = weights
    path = os.path.join(d, "s.onnx")
    images = example_images(cfg, sizes=((240, 320), (200, 260))) if check else None
    done = export_student(cfg, weights, path, ort_threads=0, check_images=images)
    assert done["ok"], done["parity"]
    return cfg, path


def _bgr(h, w, seed=0):
    rng = np.random.RandomState(seed)
    img = (rng.rand(h, w, 3) * 80).astype(np.uint8)
    img[h // 4 : h // 2, w // 3 : 2 * w // 3] = (40, 200, 60)
    return img


class TestContract(unittest.TestCase):
    def test_the_file_records_what_it_needs(self):
        with tempfile.TemporaryDirectory() as d:
            data = write_coco_example(os.path.join(d, "data"), 2, 2)
            cfg, path = _exported(d, C4, SMALL + ["DATASETS.DATA_FILE", data])
            c = read_contract(path)
            self.assertEqual(c["classes"], list(EXAMPLE_CLASSES))
            self.assertEqual((c["input"]["format"], c["input"]["channels"]), ("RGB", 3))
            self.assertEqual(c["input"]["pixel_mean"], list(cfg.MODEL.PIXEL_MEAN))
            self.assertEqual((c["resize"]["min_size"], c["resize"]["max_size"]), (240, 400))
            self.assertEqual(c["resize"]["size_divisibility"], 0)  # C4: no padding
            self.assertEqual(c["score_threshold"], 0.0)
            self.assertEqual(c["detections_per_image"], cfg.TEST.DETECTIONS_PER_IMAGE)
            prov = c["provenance"]
            self.assertEqual(len(prov["weights_sha256"]), 64)
            self.assertEqual(prov["opset"], 17)


class TestDetector(unittest.TestCase):
    def test_same_boxes_as_default_predictor_in_original_pixels(self):
        with tempfile.TemporaryDirectory() as d:
            data = write_coco_example(os.path.join(d, "data"), 2, 2)
            cfg, path = _exported(d, C4, SMALL + ["DATASETS.DATA_FILE", data])
            detector = Detector(path, threads=1)
            predictor = DefaultPredictor(cfg)
            for h, w in ((300, 500), (517, 389)):
                image = _bgr(h, w)
                got = detector(image)
                ref = predictor(image)["instances"]
                self.assertEqual(got.image_size, (h, w))
                self.assertGreater(len(ref), 0)
                result = compare_detections(
                    [ref.pred_boxes.tensor.numpy(), ref.scores.numpy(), ref.pred_classes.numpy()],
                    [got.boxes, got.scores, got.class_ids],
                    box_atol=0.05,
                    score_atol=1e-3,
                )
                self.assertEqual(result["ok"], 1.0, result)
                self.assertTrue(set(got.class_names) <= set(EXAMPLE_CLASSES))
                self.assertLessEqual(float(got.boxes[:, 2].max()), w)
            # a deployment threshold on top of the file's
            strict = Detector(path, threads=1, score_threshold=0.5)(_bgr(300, 500))
            self.assertTrue((strict.scores >= 0.5).all())

    def test_grey_student_reads_bgr_and_grey_images(self):
        with tempfile.TemporaryDirectory() as d:
            face = os.path.join(CONFIG_DIR, "WIDERFace", "rfcn_VGG-1-32_scratch.yaml")
            cfg, path = _exported(d, face, SMALL)
            detector = Detector(path, threads=1)
            self.assertEqual(detector.class_names, ["face"])
            image = _bgr(200, 300)
            with self.assertLogs("quant_mimic.export.detector", "WARNING") as logs:
                colour = detector(image)
                detector(image)
            self.assertEqual(len(logs.output), 1)  # logged once
            from PIL import Image

            grey = np.asarray(Image.fromarray(image[:, :, ::-1]).convert("L"))
            same = detector(grey)
            np.testing.assert_allclose(same.boxes, colour.boxes, atol=1e-4)

    def test_refuses_what_is_not_a_student_file(self):
        import onnx
        from onnx import TensorProto, helper

        with tempfile.TemporaryDirectory() as d:
            text = os.path.join(d, "x.onnx")
            with open(text, "w") as f:
                f.write("not a model")
            with self.assertRaisesRegex(UserError, "not an ONNX file"):
                Detector(text)
            node = helper.make_node("Identity", ["image"], ["boxes"])
            graph = helper.make_graph(
                [node],
                "g",
                [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, 2, 2])],
                [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [3, 2, 2])],
            )
            foreign = os.path.join(d, "foreign.onnx")
            onnx.save(helper.make_model(graph), foreign)
            with self.assertRaisesRegex(UserError, "without QuantMimic's contract.*class names"):
                Detector(foreign)
            cfg, path = _exported(d, C4, SMALL)
            detector = Detector(path, threads=1)
            for bad in (np.zeros((0, 10, 3), np.uint8), np.zeros((10, 0, 3), np.uint8)):
                with self.assertRaisesRegex(ValueError, r"empty image: size \(\d+, \d+, 3\)"):
                    detector(bad)


class TestNothingSurvives(unittest.TestCase):
    @pytest.mark.slow
    def test_every_family_exports_and_runs_with_no_detection(self):
        families = [
            ("Custom/faster_rcnn_R18-1-16_C4_scratch.yaml", []),
            ("Custom/rfcn_VGG-1-32_scratch.yaml", []),
            ("Custom/faster_rcnn_R18-1-16_FPN_scratch.yaml", []),
            (
                "Synth/cascade_rcnn_R18-1-16_FPN_quant_mimic.yaml",
                ["MODEL.MIMIC.TEACHER.WEIGHTS", ""],
            ),
        ]
        for config, extra in families:
            with self.subTest(config=config), tempfile.TemporaryDirectory() as d:
                opts = SMALL[:-2] + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.999"] + extra
                cfg, path = _exported(d, os.path.join(CONFIG_DIR, config), opts, check=True)
                out = Detector(path, threads=1)(_bgr(200, 300))
                self.assertEqual(len(out), 0)
                self.assertEqual(out.boxes.shape, (0, 4))


class TestOperatingPoint(unittest.TestCase):
    def test_precision_recall_and_targets_by_hand(self):
        from quant_mimic.export.operating_point import at_threshold, choose_threshold
        from quant_mimic.export.operating_point import precision_recall as pr

        gt = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]), np.array([0, 0, 1]),
               np.array([False, False, True]))]  # fmt: skip
        dets = [(np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 31], [50, 50, 60, 60],
                           [70, 70, 80, 80]], dtype=float),
                 np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([0, 0, 0, 1, 0]))]  # fmt: skip
        curve = pr(dets, gt)
        # 0.9 TP, 0.8 duplicate FP, 0.7 TP (IoU 10/11), 0.6 on the ignored box (skipped), 0.5 FP
        np.testing.assert_allclose(curve["thresholds"], [0.9, 0.8, 0.7, 0.5])
        np.testing.assert_allclose(curve["precision"], [1.0, 0.5, 2 / 3, 0.5])
        np.testing.assert_allclose(curve["recall"], [0.5, 0.5, 1.0, 1.0])
        self.assertEqual(choose_threshold(curve, "precision=0.6")["threshold"], 0.7)
        self.assertEqual(choose_threshold(curve, "recall=0.5")["threshold"], 0.9)
        self.assertEqual(choose_threshold(curve, "f1")["threshold"], 0.7)
        self.assertEqual(at_threshold(curve, 0.75)["precision"], 0.5)
        only_false = [(dets[0][0][4:], dets[0][1][4:], dets[0][2][4:])]
        with self.assertRaisesRegex(ValueError, "precision 0.5 is not reached"):
            choose_threshold(pr(only_false, gt), "precision=0.5")

    def test_export_for_deployment_records_its_threshold(self):
        with tempfile.TemporaryDirectory() as d:
            data = write_coco_example(os.path.join(d, "data"), 2, 3)
            cfg = get_config(C4, SMALL + ["DATASETS.DATA_FILE", data])
            model = build_model_no_weights(cfg)
            weights = os.path.join(d, "w.pth")
            torch.save({"model": model.state_dict()}, weights)
            from quant_mimic.export import operating_point

            cfg.defrost()
            source = operating_point(cfg, weights, target="f1")
            self.assertEqual(source["kind"], "val")
            self.assertEqual(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, source["threshold"])
            path = os.path.join(d, "s.onnx")
            export_student(cfg, weights, path, ort_threads=0, threshold_source=source)
            c = read_contract(path)
            self.assertEqual(c["score_threshold"], source["threshold"])
            self.assertEqual(c["threshold_source"]["target"], "f1")
            with self.assertRaisesRegex(ValueError, "Unknown operating-point target"):
                operating_point(cfg, weights, target="accuracy=0.9")


class TestInt8(unittest.TestCase):
    @pytest.mark.slow
    def test_openvino_int8_ir_carries_the_contract_and_runs(self):
        try:
            import nncf  # noqa: F401
        except ImportError:
            self.skipTest("nncf is not installed (tools/install_deps.sh installs it)")
        from quant_mimic.export import val_images

        with tempfile.TemporaryDirectory() as d:
            data = write_coco_example(os.path.join(d, "data"), 2, 3)
            cfg = get_config(C4, SMALL + ["DATASETS.DATA_FILE", data])
            model = build_model_no_weights(cfg)
            weights = os.path.join(d, "w.pth")
            torch.save({"model": model.state_dict()}, weights)
            path = os.path.join(d, "s.onnx")
            done = export_student(cfg, weights, path, ort_threads=0, int8_images=val_images(cfg, 3))
            self.assertTrue(done["int8"].endswith("s_int8.xml"))
            contract = read_contract(done["int8"])
            self.assertEqual(contract["precision"], "int8")
            self.assertEqual(contract["classes"], list(EXAMPLE_CLASSES))
            out = Detector(done["int8"], threads=1)(_bgr(240, 320))
            self.assertEqual(out.image_size, (240, 320))
            self.assertTrue(set(out.class_names) <= set(EXAMPLE_CLASSES))


class TestDemoVideo(unittest.TestCase):
    def test_a_video_gets_boxes_drawn_and_one_json_line_per_frame(self):
        import json
        import sys

        import cv2

        from .common import REPO_ROOT

        sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
        from demo import main as demo

        with tempfile.TemporaryDirectory() as d:
            data = write_coco_example(os.path.join(d, "data"), 2, 2)
            _, path = _exported(d, C4, SMALL + ["DATASETS.DATA_FILE", data])
            video = os.path.join(d, "clip.mp4")
            writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
            for i in range(4):
                writer.write(np.roll(_bgr(120, 160), 5 * i, axis=1))
            writer.release()
            out = os.path.join(d, "out")
            self.assertEqual(demo(["--onnx", path, "--input", video, "--output", out,
                                   "--score-thresh", "0"]), 0)  # fmt: skip
            with open(os.path.join(out, "clip.jsonl")) as f:
                lines = [json.loads(line) for line in f]
            self.assertEqual([x["frame"] for x in lines], [0, 1, 2, 3])
            self.assertTrue(
                all(d["class"] in EXAMPLE_CLASSES for x in lines for d in x["detections"])
            )
            self.assertEqual(cv2.VideoCapture(os.path.join(out, "clip.mp4")).get(7), 4)
