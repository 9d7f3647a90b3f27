"""A user's mistake is one line: ``error: <file>: <what is wrong>; <how to fix it>`` on stderr, exit
code 2, no traceback, nothing written to the output folder (quant_mimic.errors); a bug keeps its
traceback; ``QUANT_MIMIC_DEBUG=1`` shows a user error's traceback; several processes print the
line once."""

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
import unittest

import pytest

import quant_mimic  # noqa: F401  (registers the project's components)
from quant_mimic import engine
from quant_mimic.errors import ConfigError, UserError, run_cli, worker_user_error_line
from quant_mimic.testing import write_coco_example

from .common import CONFIG_DIR, REPO_ROOT

LINE = re.compile(r"^error: \S.*: .+; .+$")
SCRATCH = os.path.join(CONFIG_DIR, "Custom", "faster_rcnn_R18-1-16_C4_scratch.yaml")
MIMIC = os.path.join(CONFIG_DIR, "Custom", "faster_rcnn_R18-1-16_C4_quant_mimic.yaml")


def _tool(name: str):
    """A tool of tools/ as a module (its main), without running it."""
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", f"{REPO_ROOT}/tools/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cli(main, argv):
    """(exit code, stderr) of ``main`` run as a command by the entry points' handler."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run_cli(main, argv)
    return code, err.getvalue()


class _Case(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self.out = os.path.join(self.tmp, "out")  # must stay absent

    def tearDown(self):
        self._tmp.cleanup()

    def assertOneLine(self, code, err, *fragments):
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(code, 2, err)
        self.assertEqual(len(lines), 1, err)
        self.assertRegex(lines[0], LINE)
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        self.assertFalse(os.path.exists(self.out), f"{self.out} was written")
        return lines[0]

    def data(self, text: str = "") -> str:
        """The example data file, or a data file of ``text``."""
        if not text:
            return write_coco_example(os.path.join(self.tmp, "data"), num_train=2, num_val=1)
        path = os.path.join(self.tmp, "my_data.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def train_net(self, *argv):
        return _cli(engine.train_net_main, list(argv) + ["OUTPUT_DIR", self.out])


class TestTrainNet(_Case):
    def test_data_file_without_val(self):
        data = self.data("train:\n  coco: a.json\n  images: imgs\n")
        code, err = self.train_net("--config-file", SCRATCH, "--data", data)
        self.assertOneLine(code, err, data, "no 'val' set", "docs/YOUR_DATA.md")

    def test_data_file_that_does_not_exist(self):
        code, err = self.train_net("--config-file", SCRATCH, "--data", "nope.yaml")
        self.assertOneLine(code, err, "nope.yaml", "does not exist")

    def test_data_file_set_that_is_not_coco(self):
        bad = os.path.join(self.tmp, "a.json")
        with open(bad, "w") as f:
            f.write("[1, 2]")
        os.makedirs(os.path.join(self.tmp, "imgs"))
        data = self.data(
            "train:\n  coco: a.json\n  images: imgs\nval:\n  coco: a.json\n  images: imgs\n"
        )
        code, err = self.train_net("--config-file", SCRATCH, "--data", data)
        self.assertOneLine(code, err, "a.json", "not a COCO json")

    def test_class_count_that_does_not_fit_the_data(self):
        cfg = os.path.join(CONFIG_DIR, "Synth", "faster_rcnn_R18-1-16_C4_scratch.yaml")
        code, err = self.train_net("--config-file", cfg, "MODEL.ROI_HEADS.NUM_CLASSES", "5")
        self.assertOneLine(code, err, cfg, "MODEL.ROI_HEADS.NUM_CLASSES = 5", "set ")

    def test_config_file_key_and_value(self):
        code, err = self.train_net("--config-file", os.path.join(self.tmp, "nope.yaml"))
        self.assertOneLine(code, err, "nope.yaml", "does not exist")
        code, err = self.train_net("--config-file", SCRATCH, "MODEL.NOPE", "1")
        self.assertOneLine(code, err, "the command line", "MODEL.NOPE")
        code, err = self.train_net("--config-file", SCRATCH, "MODEL.MIMIC.LOSS_WEIGHT", "-1")
        self.assertOneLine(code, err, SCRATCH, "MODEL.MIMIC.LOSS_WEIGHT = -1.0", "λ must be ≥ 0")

    def test_teacher_config_that_does_not_exist(self):
        nope = os.path.join(self.tmp, "teacher.yaml")
        code, err = self.train_net(
            "--config-file", MIMIC, "--data", self.data(),
            "MODEL.MIMIC.TEACHER.CONFIG_FILE", nope, "MODEL.MIMIC.TEACHER.WEIGHTS", "",
        )  # fmt: skip
        self.assertOneLine(code, err, nope, "teacher config")

    def test_missing_and_unreadable_weights(self):
        data = self.data()
        code, err = self.train_net(
            "--config-file", SCRATCH, "--data", data, "--eval-only", "MODEL.WEIGHTS", "no.pth"
        )
        self.assertOneLine(code, err, "no.pth", "MODEL.WEIGHTS not found")
        notes = os.path.join(self.tmp, "notes.pth")
        with open(notes, "w") as f:
            f.write("not a checkpoint")
        for argv in (["--eval-only", "MODEL.WEIGHTS", notes], ["MODEL.WEIGHTS", notes]):
            code, err = self.train_net("--config-file", SCRATCH, "--data", data, *argv)
            self.assertOneLine(code, err, notes, "not a readable checkpoint")
        code, err = self.train_net(
            "--config-file", MIMIC, "--data", data, "MODEL.MIMIC.TEACHER.WEIGHTS", notes
        )
        self.assertOneLine(code, err, notes, "MODEL.MIMIC.TEACHER.WEIGHTS")

    def test_bad_option(self):
        code, err = self.train_net("--config-file", SCRATCH, "--num-gpus", "two")
        self.assertOneLine(code, err, "--num-gpus", "--help")


class TestTools(_Case):
    def test_pipeline_family_preset_and_data(self):
        pipeline = _tool("run_pipeline")
        base = ["--out", self.out]
        code, err = _cli(pipeline.main, ["--data", self.data(), "--family", "yolo", *base])
        self.assertOneLine(code, err, "--family", "yolo")
        code, err = _cli(pipeline.main, ["--data", self.data(), "--preset", "nope", *base])
        self.assertOneLine(code, err, "nope", "no such preset", "cpu")
        bad = self.data("val:\n  coco: a.json\n")
        code, err = _cli(pipeline.main, ["--data", bad, "--preset", "cpu", *base])
        self.assertOneLine(code, err, bad, "no 'train' set")
        code, err = _cli(
            pipeline.main,
            ["--bench", "voc", "--preset", "smoke", *base, "MODEL.ROI_HEADS.NUM_CLASSES", "3"],
        )
        self.assertOneLine(code, err, "MODEL.ROI_HEADS.NUM_CLASSES = 3")

    def test_demo_input_and_onnx_without_contract(self):
        import numpy as np
        import onnx
        from onnx import TensorProto, helper

        demo = _tool("demo")
        base = ["--output", self.out]
        code, err = _cli(demo.main, ["--input", os.path.join(self.tmp, "no.jpg"), *base])
        self.assertOneLine(code, err, "no.jpg", "--input does not exist")
        broken = os.path.join(self.tmp, "broken.jpg")
        with open(broken, "wb") as f:
            f.write(b"not a jpeg")
        code, err = _cli(demo.main, ["--input", broken, *base])
        self.assertOneLine(code, err, "broken.jpg", "OpenCV")
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(empty)
        code, err = _cli(demo.main, ["--input", empty, *base])
        self.assertOneLine(code, err, empty, "no image")
        image = os.path.join(self.tmp, "a.png")
        import cv2

        cv2.imwrite(image, np.zeros((8, 8, 3), np.uint8))
        plain = os.path.join(self.tmp, "plain.onnx")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [x],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        onnx.save(helper.make_model(graph), plain)
        code, err = _cli(demo.main, ["--input", image, "--onnx", plain, *base])
        self.assertOneLine(code, err, plain, "without QuantMimic's contract", "export")


class TestHandler(unittest.TestCase):
    def test_a_bug_keeps_its_traceback(self):
        def bug(argv):
            raise ZeroDivisionError("a bug")

        with self.assertRaises(ZeroDivisionError):
            run_cli(bug, [])

    def test_debug_shows_the_traceback_and_returns_2(self):
        def mistake(argv):
            raise ConfigError("f.yaml", "bad", "fix it")

        for argv, env in ((["--debug"], None), ([], "1")):
            old = os.environ.pop("QUANT_MIMIC_DEBUG", None)
            try:
                if env:
                    os.environ["QUANT_MIMIC_DEBUG"] = env
                code, err = _cli(mistake, argv)
            finally:
                os.environ.pop("QUANT_MIMIC_DEBUG", None)
                if old is not None:
                    os.environ["QUANT_MIMIC_DEBUG"] = old
            self.assertEqual(code, 2)
            self.assertIn("Traceback", err)
            self.assertEqual(err.strip().splitlines()[-1], "error: f.yaml: bad; fix it")

    def test_line_and_worker_text(self):
        e = UserError("a.yaml", "two\nlines", "fix")
        self.assertEqual(e.line(), "error: a.yaml: two lines; fix")
        text = f"Traceback ...\nWorkerUserError: QUANT_MIMIC_USER_ERROR:{e.line()}\n"
        self.assertEqual(worker_user_error_line(RuntimeError(text)), e.line())
        self.assertIsNone(worker_user_error_line(RuntimeError("Traceback ... KeyError")))


class TestProcesses(unittest.TestCase):
    @pytest.mark.slow
    def test_train_net_two_processes_one_line(self):
        # the script as a user runs it, two processes: the line once, exit 2, nothing written
        # (QUANT_MIMIC_DEBUG and --debug: TestHandler, in this process)
        with tempfile.TemporaryDirectory() as d:
            data = os.path.join(d, "my_data.yaml")
            with open(data, "w") as f:
                f.write("train:\n  coco: a.json\n  images: imgs\n")
            out = os.path.join(d, "out")
            cmd = [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--num-gpus", "2",
                   "--config-file", SCRATCH, "--data", data, "OUTPUT_DIR", out]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=d)
            self.assertEqual(proc.returncode, 2, proc.stderr)
            self.assertEqual(proc.stderr.strip().splitlines(), [f"error: {data}: no 'val' set; "
                             "the data file's format is in docs/YOUR_DATA.md"])  # fmt: skip
            self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main()
