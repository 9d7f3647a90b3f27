import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch

from quant_mimic.data.synthetic import generate_faces

from .common import REPO_ROOT, build_model_no_weights, get_config

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
sys.path.insert(0, os.path.join(REPO_ROOT, "datasets"))
from export_student import student_state_dict  # noqa: E402
from prepare_widerface import main as prepare_main  # noqa: E402


class TestTools(unittest.TestCase):
    def test_export_student_loads_strictly_into_plain_student(self):
        mimic = build_model_no_weights(get_config("WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml"))
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "m.pth"), os.path.join(d, "s.pth")
            torch.save({"model": mimic.state_dict(), "iteration": 3}, src)
            tool = os.path.join(REPO_ROOT, "tools", "export_student.py")
            cmd = [sys.executable, tool, "--format", "pth", "--output", dst, "MODEL.WEIGHTS", src]
            subprocess.run(cmd, check=True)
            exported = torch.load(dst, weights_only=True)["model"]
        student = build_model_no_weights(get_config("WIDERFace/rfcn_VGG-1-32_scratch.yaml"))
        student.load_state_dict(exported, strict=True)
        self.assertEqual(set(exported), set(student_state_dict({"model": mimic.state_dict()})))

    def test_export_student_never_overwrites_its_input(self):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "m.pth")
            torch.save({"model": {"a": torch.ones(2)}, "iteration": 3}, src)
            before = open(src, "rb").read()
            tool = os.path.join(REPO_ROOT, "tools", "export_student.py")
            for dst in (src, os.path.join(d, ".", "m.pth")):
                cmd = [sys.executable, tool, "--output", dst, "MODEL.WEIGHTS", src]
                proc = subprocess.run(cmd, capture_output=True)
                self.assertNotEqual(proc.returncode, 0)
                self.assertIn(b"refusing to overwrite", proc.stderr)
            self.assertEqual(open(src, "rb").read(), before)
            bad = os.path.join(d, "bad.pth")
            open(bad, "w").write("not a checkpoint")
            cmd = [sys.executable, tool, "--output", src + "2", "MODEL.WEIGHTS", bad]
            proc = subprocess.run(cmd, capture_output=True)
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn(b"not a readable torch checkpoint", proc.stderr)
            self.assertFalse(os.path.exists(src + "2"))

    def test_benchmark_speed_runs_from_any_directory(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "speed.json")
            tool = os.path.join(REPO_ROOT, "tools", "benchmark_speed.py")
            cmd = [sys.executable, tool, "--device", "cpu", "--runs", "1", "--warmup", "0"]
            cmd += ["--height", "64", "--width", "96", "--json", out]
            proc = subprocess.run(cmd, capture_output=True, cwd=d)
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            with open(out) as f:
                self.assertEqual(len(json.load(f)), 3)

    def test_prepare_widerface_checks_layout(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(prepare_main(["--root", d]), 1)
            generate_faces(d, 2, 2, seed=0)
            self.assertEqual(prepare_main(["--root", d]), 0)


if __name__ == "__main__":
    unittest.main()
