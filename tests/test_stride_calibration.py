"""Stride from the teacher's statistics (ours; quant_mimic.stride_calibration)."""

import json
import os
import tempfile
import unittest

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from quant_mimic import setup_cfg
from quant_mimic.config import validate_quantmimic_config
from quant_mimic.stride_calibration import (
    CALIBRATION_FILE,
    apply_stride_calibration,
    stride_from_statistics,
)
from quant_mimic.teacher import mimic_quantizer_args

from .common import CONFIG_DIR, build_model_no_weights, get_config

TEACHER_Q = "WIDERFace/rfcn_VGG-1-4_teacher_quantized.yaml"


class TestStrideFromStatistics(unittest.TestCase):
    def test_by_hand(self):
        # Positive entries 1..100 (negatives and zeros are left out): P50 by linear interpolation
        # of 1..100 is 50.5; with L = 5 levels s = 10.1.
        x = torch.cat([torch.arange(1.0, 101.0), -torch.ones(50), torch.zeros(30)])
        self.assertAlmostEqual(stride_from_statistics(x, 50, 5), 10.1, places=6)
        # P100 = the largest entry; L = 1: s is the maximum.
        self.assertAlmostEqual(stride_from_statistics(x, 100, 1), 100.0, places=6)
        # Any shape; non-finite entries are ignored.
        y = torch.tensor([[2.0, float("nan")], [float("inf"), 4.0]])
        self.assertAlmostEqual(stride_from_statistics(y, 100, 2), 2.0, places=6)

    def test_scale_equivariant(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 8, 5, 5, generator=g).relu()
        s = stride_from_statistics(x, 99.9, 7)
        self.assertAlmostEqual(stride_from_statistics(3 * x, 99.9, 7), 3 * s, places=5)

    def test_large_input_subsampled_quantile_is_close(self):
        x = torch.rand(5_000_000, generator=torch.Generator().manual_seed(0)) + 1e-6
        self.assertAlmostEqual(stride_from_statistics(x, 90, 9), 0.1, places=3)

    def test_bad_arguments(self):
        x = torch.ones(3)
        with self.assertRaisesRegex(ValueError, "no positive"):
            stride_from_statistics(-x, 99, 7)
        with self.assertRaisesRegex(ValueError, "percentile"):
            stride_from_statistics(x, 0, 7)
        with self.assertRaisesRegex(ValueError, "levels"):
            stride_from_statistics(x, 99, 0)


class TestCalibrationConfig(unittest.TestCase):
    def test_defaults_are_off(self):
        cfg = get_config(TEACHER_Q)
        self.assertEqual(cfg.MODEL.QUANTIZATION.CALIBRATION.LEVELS, 0)  # the paper's fixed s
        self.assertEqual(cfg.MODEL.QUANTIZATION.STRIDE, 1.0)

    def test_bad_values_name_the_key(self):
        for key, value in (("LEVELS", -1), ("PERCENTILE", 0.0), ("PERCENTILE", 100.5)):
            cfg = get_config(TEACHER_Q)
            cfg.defrost()
            setattr(cfg.MODEL.QUANTIZATION.CALIBRATION, key, value)
            with self.assertRaisesRegex(ValueError, f"CALIBRATION.{key}"):
                validate_quantmimic_config(cfg)

    def test_uncalibrated_teacher_config_is_an_error_for_the_loss(self):
        student = get_config("WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml")
        teacher = get_config(TEACHER_Q, ["MODEL.QUANTIZATION.CALIBRATION.LEVELS", 7])
        with self.assertRaisesRegex(ValueError, "calibrated stride"):
            mimic_quantizer_args(student, teacher)


class TestApplyStrideCalibration(unittest.TestCase):
    """End to end on 3 synthetic images: the value equals the hand computation on the FP teacher."""

    @classmethod
    def setUpClass(cls):
        from quant_mimic.data.synthetic import generate_faces
        from quant_mimic.data.widerface import load_widerface_instances

        cls.tmp = tempfile.TemporaryDirectory()
        root = cls.tmp.name
        generate_faces(root, num_train=3, num_val=0, seed=3, size=(96, 128))
        cls.name = "test_stride_calibration_train"
        if cls.name in DatasetCatalog.list():
            DatasetCatalog.remove(cls.name)
            MetadataCatalog.remove(cls.name)
        images = os.path.join(root, "WIDER_train", "images")
        gt = os.path.join(root, "wider_face_split", "wider_face_train_bbx_gt.txt")
        DatasetCatalog.register(cls.name, lambda: load_widerface_instances(images, gt))
        # A "full-precision teacher": random weights, BN statistics moved off their init so that
        # the feature scale is not the trivial one.
        fp = build_model_no_weights(get_config("WIDERFace/rfcn_VGG-1-4_teacher.yaml"))
        with torch.no_grad():
            for m in fp.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_var.fill_(0.25)
                    m.bias.fill_(0.1)
        cls.weights = os.path.join(root, "teacher.pth")
        torch.save({"model": fp.state_dict()}, cls.weights)
        cls.fp = fp.eval()

    @classmethod
    def tearDownClass(cls):
        DatasetCatalog.remove(cls.name)
        cls.tmp.cleanup()

    def _cfg(self, out, levels=15, percentile=99.0):
        cfg = setup_cfg(
            os.path.join(CONFIG_DIR, TEACHER_Q),
            [
                "MODEL.WEIGHTS", self.weights, "MODEL.DEVICE", "cpu",
                "DATASETS.TRAIN", (self.name,), "OUTPUT_DIR", out,
                "INPUT.MIN_SIZE_TEST", 0, "INPUT.MAX_SIZE_TEST", 128,
                "MODEL.QUANTIZATION.CALIBRATION.LEVELS", levels,
                "MODEL.QUANTIZATION.CALIBRATION.PERCENTILE", percentile,
            ],
        )  # fmt: skip
        cfg.defrost()
        return cfg

    def _by_hand(self, percentile, levels):
        from detectron2.data import DatasetMapper

        cfg = self._cfg(os.path.join(self.tmp.name, "unused"))
        mapper = DatasetMapper(cfg, is_train=False)
        feats = []
        with torch.no_grad():
            for d in DatasetCatalog.get(self.name):
                images = self.fp.preprocess_image([mapper(d)])
                feats.append(self.fp.backbone(images.tensor)["vgg5"].flatten())
        x = torch.cat(feats).double()
        return torch.quantile(x[x > 0], percentile / 100).item() / levels

    def test_stride_written_into_the_config_and_recorded(self):
        out = os.path.join(self.tmp.name, "run")
        cfg = self._cfg(out)
        record = apply_stride_calibration(cfg)
        expected = self._by_hand(99.0, 15)
        self.assertAlmostEqual(record["stride"], expected, places=5)
        self.assertAlmostEqual(cfg.MODEL.QUANTIZATION.STRIDE, expected, places=5)
        self.assertEqual(cfg.MODEL.QUANTIZATION.CALIBRATION.LEVELS, 0)  # config is now fixed
        self.assertEqual(record["num_images"], 3)
        with open(os.path.join(out, CALIBRATION_FILE)) as f:
            self.assertAlmostEqual(json.load(f)["stride"], expected, places=5)
        # The quantized teacher built from that config quantizes with s; the loss inherits it.
        teacher = build_model_no_weights(cfg)
        self.assertAlmostEqual(teacher.backbone.q_stride, expected, places=5)
        student = get_config("WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml")
        self.assertAlmostEqual(mimic_quantizer_args(student, cfg)["stride"], expected, places=5)

    def test_resume_reuses_the_record_and_other_settings_recompute(self):
        out = os.path.join(self.tmp.name, "resume")
        first = apply_stride_calibration(self._cfg(out))
        path = os.path.join(out, CALIBRATION_FILE)
        with open(path) as f:
            rec = json.load(f)
        rec["stride"] = 123.0  # a recorded value is reused, not recomputed
        with open(path, "w") as f:
            json.dump(rec, f)
        cfg = self._cfg(out)
        self.assertEqual(apply_stride_calibration(cfg)["stride"], 123.0)
        self.assertEqual(cfg.MODEL.QUANTIZATION.STRIDE, 123.0)
        again = apply_stride_calibration(self._cfg(out, levels=7))  # other L: recomputed
        self.assertAlmostEqual(again["stride"], first["stride"] * 15 / 7, places=5)

    def test_off_leaves_the_config(self):
        cfg = self._cfg(os.path.join(self.tmp.name, "off"), levels=0)
        self.assertEqual(apply_stride_calibration(cfg), {})
        self.assertEqual(cfg.MODEL.QUANTIZATION.STRIDE, 1.0)

    def test_nothing_to_calibrate_without_a_quantized_backbone(self):
        # e.g. a student stage given the pipeline's global options: its loss inherits s from
        # its quantized teacher's config.yaml.
        for rel in ("WIDERFace/rfcn_VGG-1-4_teacher.yaml", "WIDERFace/rfcn_VGG-1-32_scratch.yaml"):
            cfg = setup_cfg(
                os.path.join(CONFIG_DIR, rel),
                ["MODEL.WEIGHTS", self.weights, "MODEL.QUANTIZATION.CALIBRATION.LEVELS", 7,
                 "OUTPUT_DIR", os.path.join(self.tmp.name, "fp")],
            )  # fmt: skip
            cfg.defrost()
            self.assertEqual(apply_stride_calibration(cfg), {})
            self.assertEqual(cfg.MODEL.QUANTIZATION.STRIDE, 1.0)
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "fp", CALIBRATION_FILE)))

    def test_full_precision_teacher_loss_cannot_calibrate(self):
        fp_teacher = get_config("WIDERFace/rfcn_VGG-1-4_teacher.yaml")
        opts = ["MODEL.QUANTIZATION.CALIBRATION.LEVELS", 7]
        only_student = get_config("WIDERFace/rfcn_VGG-1-32_quant_mimic_student_only.yaml", opts)
        with self.assertRaisesRegex(ValueError, "full-precision teacher"):
            mimic_quantizer_args(only_student, fp_teacher)
        mimic = get_config("WIDERFace/rfcn_VGG-1-32_mimic.yaml", opts)  # no Q: nothing to set
        self.assertEqual(mimic_quantizer_args(mimic, fp_teacher)["stride"], 1.0)


if __name__ == "__main__":
    unittest.main()
