"""tools/pretrain_backbone.py and quant_mimic.pretrain: classification pretraining of a detection
config's backbone (paper Table 7), on tiny generated ImageFolder sets, CPU, seconds."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import pytest
import torch

from detectron2.modeling import build_model

from quant_mimic.data.synthetic_cls import generate_cls
from quant_mimic.pretrain import PretrainError, build_classifier, check_image_folder, lr_at

from .common import CONFIG_DIR, REPO_ROOT, get_config

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from pretrain_backbone import cli  # noqa: E402

FACES = os.path.join(CONFIG_DIR, "Synth", "rfcn_VGG-1-32_scratch.yaml")
VOC = os.path.join(CONFIG_DIR, "Synth", "faster_rcnn_R18-1-16_C4_scratch.yaml")
CLASSES = ("glyph_0", "face", "background")


def _argv(cfg, data, out, *extra):
    return [
        "--config-file", cfg, "--data", data, "--output", out, "--epochs", "1",
        "--batch-size", "3", "--lr", "0.01", "--image-size", "32", "--workers", "0", *extra,
    ]  # fmt: skip


class TestPretrain(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.data = os.path.join(cls.tmp, "cls")
        generate_cls(cls.data, 2, 1, seed=3, size=32, classes=CLASSES)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def _copy_data(self, d):
        data = os.path.join(d, "data")
        shutil.copytree(self.data, data)
        return data

    def test_smoke_writes_and_loads_into_the_student_then_resumes(self):
        for cfg_file, prefixes in (
            (VOC, ("backbone.", "roi_heads.res5.")),
            (FACES, ("backbone.",)),
        ):
            with self.subTest(cfg=os.path.basename(cfg_file)), tempfile.TemporaryDirectory() as d:
                out = os.path.join(d, "out")
                self.assertEqual(cli(_argv(cfg_file, self.data, out)), 0)
                self.assertEqual(
                    sorted(os.listdir(out)),
                    ["backbone.pth", "classifier.pth", "pretrain_metrics.json"],
                )
                metrics = json.load(open(os.path.join(out, "pretrain_metrics.json")))
                self.assertEqual(len(metrics), 1)
                for k in ("epoch", "train_loss", "top1", "top5", "lr", "seconds"):
                    self.assertIn(k, metrics[0])
                weights = torch.load(os.path.join(out, "backbone.pth"), weights_only=True)["model"]
                self.assertTrue(all(k.startswith(prefixes) for k in weights))
                for p in prefixes:
                    self.assertTrue(any(k.startswith(p) for k in weights), p)
                # the student (plain and mimic config) gets every backbone tensor from the file
                student = build_model(get_config(cfg_file))
                state = student.state_dict()
                missing = [k for k in state if k.startswith(prefixes) and k not in weights]
                self.assertEqual(missing, [])
                incompatible = student.load_state_dict(weights, strict=False)
                self.assertEqual(incompatible.unexpected_keys, [])
                for k, v in weights.items():
                    self.assertTrue(torch.equal(student.state_dict()[k], v), k)
                # --resume continues at epoch 2 with the saved optimizer state
                before = torch.load(os.path.join(out, "classifier.pth"), weights_only=False)
                self.assertEqual(before["epoch"], 0)
                argv = _argv(cfg_file, self.data, out, "--resume")
                argv[argv.index("--epochs") + 1] = "2"
                self.assertEqual(cli(argv), 0)
                metrics = json.load(open(os.path.join(out, "pretrain_metrics.json")))
                self.assertEqual([m["epoch"] for m in metrics], [1, 2])
                after = torch.load(os.path.join(out, "classifier.pth"), weights_only=False)
                self.assertEqual(after["epoch"], 1)
                self.assertTrue(after["optimizer"]["state"])

    def test_grey_config_reads_one_channel(self):
        clf, _ = build_classifier(get_config(FACES), 3)
        self.assertEqual(clf.pixel_mean.numel(), 1)
        self.assertEqual(clf(torch.zeros(2, 1, 32, 32)).shape, (2, 3))
        clf, _ = build_classifier(get_config(VOC), 4)
        self.assertEqual(clf(torch.zeros(2, 3, 32, 32)).shape, (2, 4))

    def _error(self, argv):
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "tools", "pretrain_backbone.py"), *argv],
            capture_output=True,
            text=True,
        )
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        return proc.stderr

    def test_layout_errors_name_what_is_wrong(self):
        with tempfile.TemporaryDirectory() as d:
            data = self._copy_data(d)
            shutil.rmtree(os.path.join(data, "val"))
            with self.assertRaisesRegex(PretrainError, "val.* is missing"):
                check_image_folder(data)
            os.makedirs(os.path.join(data, "val"))
            with self.assertRaisesRegex(PretrainError, "empty"):
                check_image_folder(data)
            shutil.copytree(
                os.path.join(data, "train"), os.path.join(data, "val"), dirs_exist_ok=True
            )
            shutil.rmtree(os.path.join(data, "val", "face"))
            with self.assertRaisesRegex(PretrainError, r"\['face'\] are in .*train/ but not in"):
                check_image_folder(data)
            os.makedirs(os.path.join(data, "val", "face"))
            with self.assertRaisesRegex(PretrainError, r"\['face'\] of .*val/ hold no image"):
                check_image_folder(data)
            shutil.rmtree(os.path.join(data, "train"))
            with self.assertRaisesRegex(PretrainError, "train.* is missing"):
                check_image_folder(data)

    @pytest.mark.slow
    def test_bad_inputs_exit_2_and_write_no_result(self):
        with tempfile.TemporaryDirectory() as d:
            data, out = self._copy_data(d), os.path.join(d, "out")
            shutil.rmtree(os.path.join(data, "val", "glyph_0"))
            err = self._error(_argv(VOC, data, out))
            self.assertIn("glyph_0", err)
            self.assertFalse(os.path.exists(os.path.join(out, "backbone.pth")))
            quantized = os.path.join(
                CONFIG_DIR, "Synth", "faster_rcnn_R18_C4_teacher_quantized.yaml"
            )
            err = self._error(_argv(quantized, self.data, out))
            self.assertIn("build_quantized_backbone", err)
            self.assertFalse(os.path.exists(os.path.join(out, "backbone.pth")))

    @pytest.mark.slow
    def test_unreadable_image_is_named_or_skipped_and_counted(self):
        with tempfile.TemporaryDirectory() as d:
            data, out = self._copy_data(d), os.path.join(d, "out")
            bad = os.path.join(data, "train", "face", "broken.png")
            open(bad, "w").write("not an image")
            err = self._error(_argv(VOC, data, out))
            self.assertIn("broken.png", err)
            self.assertFalse(os.path.exists(os.path.join(out, "backbone.pth")))
            self.assertEqual(cli(_argv(VOC, data, out, "--skip-bad-images")), 0)
            metrics = json.load(open(os.path.join(out, "pretrain_metrics.json")))
            self.assertEqual(metrics[-1]["skipped_images"], 1)

    def test_batch_larger_than_a_tiny_set(self):
        with tempfile.TemporaryDirectory() as d:
            argv = _argv(FACES, self.data, d)
            argv[argv.index("--batch-size") + 1] = "256"  # the default, 6 training images here
            self.assertEqual(cli(argv), 0)
            self.assertTrue(os.path.isfile(os.path.join(d, "backbone.pth")))

    def test_schedule_warmup_then_cosine(self):
        self.assertAlmostEqual(lr_at(0, 100, 10, 0.1), 0.001)
        self.assertAlmostEqual(lr_at(10, 100, 10, 0.1), 0.1)
        self.assertAlmostEqual(lr_at(55, 100, 10, 0.1), 0.05)
        self.assertAlmostEqual(lr_at(100, 100, 10, 0.1), 0.0)
        self.assertLess(lr_at(80, 100, 10, 0.1), lr_at(60, 100, 10, 0.1))


if __name__ == "__main__":
    unittest.main()
