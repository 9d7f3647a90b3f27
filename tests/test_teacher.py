"""Teacher config path resolves like _BASE_, from any working directory (quant_mimic.teacher)."""

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


if __name__ == "__main__":
    unittest.main()
