"""quant_mimic.teacher: the config path resolves like _BASE_ from any working directory; the
teacher file is pinned (size + SHA-256) and a different one on resume is an error."""

import json
import os
import shutil
import tempfile
import unittest

from quant_mimic import setup_cfg
from quant_mimic.teacher import resolve_teacher_config_path

from .common import CONFIG_DIR

QM = os.path.join(CONFIG_DIR, "Synth", "rfcn_VGG-1-32_quant_mimic.yaml")
KEY = "MODEL.MIMIC.TEACHER.CONFIG_FILE"


class TestTeacherConfigPath(unittest.TestCase):
    def test_relative_to_the_yaml_that_names_it(self):
        expected = os.path.join(CONFIG_DIR, "Synth", "rfcn_VGG-1-4_teacher_quantized.yaml")
        self.assertEqual(resolve_teacher_config_path(QM), os.path.normpath(expected))
        # Named in a _BASE_ file: relative to that base file, not to the child.
        child = os.path.join(CONFIG_DIR, "Synth", "rfcn_VGG-1-32_quant_mimic_teacher_only.yaml")
        self.assertEqual(resolve_teacher_config_path(child), os.path.normpath(expected))

    def test_any_working_directory_and_copied_configs(self):
        old = os.getcwd()
        with tempfile.TemporaryDirectory() as d:
            try:
                os.chdir(d)
                cfg = setup_cfg(QM)
                self.assertTrue(os.path.isfile(cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE))
                # A user copies the student and teacher configs (and their bases) elsewhere.
                dst = os.path.join(d, "cfgs")
                shutil.copytree(CONFIG_DIR, dst)
                cfg = setup_cfg(os.path.join(dst, "Synth", "rfcn_VGG-1-32_quant_mimic.yaml"))
                self.assertTrue(cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE.startswith(dst))
                # On the command line: relative to the working directory.
                opt = os.path.join("cfgs", "Synth", "rfcn_VGG-1-4_teacher.yaml")
                cfg = setup_cfg(QM, [KEY, opt])
                self.assertEqual(cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE, os.path.join(d, opt))
            finally:
                os.chdir(old)

    def test_absolute_and_scheme_paths_are_kept(self):
        self.assertEqual(resolve_teacher_config_path(QM, [KEY, "/abs/t.yaml"]), "/abs/t.yaml")
        url = "detectron2://COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"
        self.assertEqual(resolve_teacher_config_path(QM, [KEY, url]), url)
        self.assertIsNone(
            resolve_teacher_config_path(
                os.path.join(CONFIG_DIR, "Synth", "rfcn_VGG-1-32_scratch.yaml")
            )
        )


class TestTeacherPin(unittest.TestCase):
    def test_pin_recorded_and_checked_on_resume(self):
        from quant_mimic.teacher import TEACHER_PIN_FILE, pin_teacher, teacher_fingerprint

        with tempfile.TemporaryDirectory() as d:
            teacher, out = os.path.join(d, "teacher.pth"), os.path.join(d, "out")
            with open(teacher, "wb") as f:
                f.write(b"weights v1")
            with self.assertLogs("quant_mimic.teacher", level="INFO") as logs:
                pinned = pin_teacher(out, teacher, resume=False)
            self.assertIn(pinned["sha256"], "\n".join(logs.output))
            with open(os.path.join(out, TEACHER_PIN_FILE)) as f:
                self.assertEqual(json.load(f), pinned)
            self.assertEqual(pinned["size"], 10)
            pin_teacher(out, teacher, resume=True)  # same file: fine
            with open(teacher, "wb") as f:
                f.write(b"weights v2")  # same size, other content
            with self.assertRaisesRegex(RuntimeError, "teacher checkpoint changed.*ALLOW_CHANGE"):
                pin_teacher(out, teacher, resume=True)
            with self.assertLogs("quant_mimic.teacher", level="WARNING"):
                pin_teacher(out, teacher, resume=True, allow_change=True)
            self.assertEqual(pinned["size"], teacher_fingerprint(teacher)["size"])
            pin_teacher(out, teacher, resume=True)  # re-pinned: now fine
            with open(teacher, "wb") as f:
                f.write(b"v3")
            pin_teacher(out, teacher, resume=False)  # a new run pins the new teacher


if __name__ == "__main__":
    unittest.main()
