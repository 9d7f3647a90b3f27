import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

import pytest
import torch

from quant_mimic.data.synthetic import generate_faces

from .common import REPO_ROOT, build_model_no_weights, get_config

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
sys.path.insert(0, os.path.join(REPO_ROOT, "datasets"))
from demo import main as demo_main  # noqa: E402
from export_student import main as export_main  # noqa: E402
from export_student import student_state_dict  # noqa: E402
from prepare_widerface import main as prepare_main  # noqa: E402


def _run_cli(main, argv):
    """(exit code, stderr) of a tool's ``main`` run as its script runs it."""
    from quant_mimic.errors import run_cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_cli(main, argv)
    return code, err.getvalue()


class TestTools(unittest.TestCase):
    @pytest.mark.slow
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

    @pytest.mark.slow
    def test_export_student_never_overwrites_its_input(self):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "m.pth")
            torch.save({"model": {"a": torch.ones(2)}, "iteration": 3}, src)
            before = open(src, "rb").read()
            # the command as the script runs it (the entry points' handler), in this process
            for dst in (src, os.path.join(d, ".", "m.pth")):
                code, err = _run_cli(export_main, ["--output", dst, "MODEL.WEIGHTS", src])
                self.assertEqual(code, 2)
                self.assertIn("refusing to overwrite", err)
            self.assertEqual(open(src, "rb").read(), before)
            bad = os.path.join(d, "bad.pth")
            open(bad, "w").write("not a checkpoint")
            code, err = _run_cli(export_main, ["--output", src + "2", "MODEL.WEIGHTS", bad])
            self.assertEqual(code, 2)
            self.assertIn("not a readable torch checkpoint", err)
            self.assertFalse(os.path.exists(src + "2"))

    @pytest.mark.slow
    def test_benchmark_speed_quick_mode_writes_every_field(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "speed.json")
            tool = os.path.join(REPO_ROOT, "tools", "benchmark_speed.py")
            cmd = [sys.executable, tool, "--device", "cpu", "--runs", "1", "--warmup", "0"]
            cmd += ["--height", "96", "--width", "128", "--json", out, "--peer", "--threads", "1"]
            cmd += ["--models", "VGG-1-32 R-FCN", "--plain"]
            proc = subprocess.run(cmd, capture_output=True, cwd=d)  # from another directory
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            with open(out) as f:
                rows = json.load(f)
        fields = ("model", "runtime", "threads", "input", "detector_ms", "params_M", "size_MB",
                  "gmacs", "speedup_vs_peer")  # fmt: skip
        runtimes = ["pytorch", "torchscript", "onnxruntime", "onnxruntime-plain", "pytorch"]
        self.assertEqual([r["runtime"] for r in rows], runtimes)
        # --plain: detectron2's own post-processing graph, tuned the same way, same contract
        self.assertIn("nchwc_min_channels", rows[3]["session"])
        for r in rows:
            for k in fields:
                self.assertIn(k, r)
            self.assertGreater(r["detector_ms"], 0)
            self.assertEqual((r["threads"], r["input"]), (1, "96x128"))
        self.assertIn("mobilenet", rows[-1]["model"])
        self.assertAlmostEqual(
            rows[0]["speedup_vs_peer"], rows[-1]["detector_ms"] / rows[0]["detector_ms"], places=2
        )
        self.assertGreater(rows[0]["backbone_ms"], 0)
        self.assertGreater(rows[0]["gmacs"], 0)
        for r in rows:  # every row names its host
            self.assertTrue(r["cpu"] and r["torch"] and r["onnxruntime"], r)
            self.assertTrue(set(r["isa"]) <= {"avx2", "avx512f", "avx512_vnni", "amx_tile"}, r)
        self.assertEqual(rows[2]["session"]["intra_op_num_threads"], 1)
        # the fastest onnxruntime options on this host (level, or NCHWc from width c), applied
        timings, nchwc = rows[2]["ort_level_timings_ms"], rows[2]["ort_nchwc_timings_ms"]
        session = rows[2]["session"]
        if session["nchwc_min_channels"]:
            self.assertEqual(session["graph_optimization_level"], "ORT_ENABLE_ALL")
            self.assertEqual(
                nchwc[str(session["nchwc_min_channels"])],  # JSON keys are strings
                min(min(nchwc.values()), *timings.values()),
            )
        else:
            self.assertEqual(session["graph_optimization_level"], min(timings, key=timings.get))

    @pytest.mark.slow
    def test_benchmark_speed_openvino_rows(self):
        try:
            import openvino  # noqa: F401
        except ImportError:
            self.skipTest("openvino is not installed")
        from quant_mimic.export import bf16_supported

        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "speed.json")
            tool = os.path.join(REPO_ROOT, "tools", "benchmark_speed.py")
            cmd = [sys.executable, tool, "--runs", "1", "--warmup", "0", "--height", "96"]
            cmd += ["--width", "128", "--json", out, "--threads", "1", "--runtime", "onnxruntime"]
            cmd += ["--openvino", "--models", "VGG-1-32 R-FCN"]
            proc = subprocess.run(cmd, capture_output=True, cwd=d)
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            with open(out) as f:
                rows = json.load(f)
        expected = ["onnxruntime", "openvino"] + ["openvino-bf16"] * bf16_supported()
        self.assertEqual([r["runtime"] for r in rows], expected)
        for r in rows:
            self.assertGreater(r["detector_ms"], 0)
            self.assertTrue(r["openvino"] and isinstance(r["bf16"], bool), r)
        self.assertEqual(rows[1]["session"]["runtime"], "openvino")
        self.assertEqual(rows[1]["session"]["precision"], "fp32")
        self.assertEqual(rows[1]["session"]["threads"], 1)
        if bf16_supported():
            self.assertEqual(rows[2]["session"]["precision"], "bf16")

    @pytest.mark.slow
    def test_eval_exported_scores_each_runtime_like_the_model(self):
        from quant_mimic.pipeline.plan import generate_data, load_preset

        with tempfile.TemporaryDirectory() as tmp:
            generate_data("faces", load_preset("smoke", "faces"), tmp, False)
            config = os.path.join(REPO_ROOT, "configs", "Synth", "rfcn_VGG-1-32_scratch.yaml")
            model = build_model_no_weights(get_config(config))
            weights = os.path.join(tmp, "scratch_seed3", "model_final.pth")
            os.makedirs(os.path.dirname(weights))
            torch.save({"model": model.state_dict()}, weights)
            out = os.path.join(tmp, "ap.json")
            tool = os.path.join(REPO_ROOT, "tools", "eval_exported.py")
            cmd = [sys.executable, tool, "--weights", weights, "--config-file", config]
            cmd += ["--json", out, "--threads", "1", "--runtimes", "pytorch", "onnxruntime"]
            env = dict(os.environ, DETECTRON2_DATASETS=os.path.join(tmp, "datasets"))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            with open(out) as f:
                rows = json.load(f)
            self.assertEqual([r["runtime"] for r in rows], ["pytorch", "onnxruntime"])
            self.assertEqual({(r["kind"], r["seed"]) for r in rows}, {("scratch", 3)})
            self.assertIn("widerface/AP_easy", rows[0]["metrics"])
            self.assertEqual(rows[0]["metrics"], rows[1]["metrics"])  # fp32 export is exact
            self.assertEqual(rows[1]["session"]["runtime"], "onnxruntime")
            self.assertTrue(rows[0]["host"]["cpu"])
            table = subprocess.run([sys.executable, tool, "--report", out], capture_output=True,
                                   text=True)  # fmt: skip
            self.assertEqual(table.returncode, 0, table.stderr[-2000:])
            self.assertIn("| scratch | onnxruntime | 1 |", table.stdout)
            self.assertIn("(Δ +0.00", table.stdout)  # the paired difference to PyTorch
            missing = subprocess.run(
                [sys.executable, tool, "--weights", os.path.join(tmp, "none.pth"), "--json", out],
                capture_output=True, text=True,
            )  # fmt: skip
            self.assertNotEqual(missing.returncode, 0)
            self.assertIn("weights not found", missing.stderr)

    @pytest.mark.slow
    def test_demo_writes_png_of_input_size(self):
        import cv2

        student = build_model_no_weights(get_config("WIDERFace/rfcn_VGG-1-32_scratch.yaml"))
        with tempfile.TemporaryDirectory() as d:
            generate_faces(os.path.join(d, "faces"), 2, 2, seed=0)
            images = os.path.join(d, "faces", "WIDER_val", "images")
            image = sorted(os.path.join(r, f) for r, _, fs in os.walk(images) for f in fs)[0]
            weights = os.path.join(d, "s.pth")
            torch.save({"model": student.state_dict()}, weights)
            config = os.path.join(REPO_ROOT, "configs", "WIDERFace", "rfcn_VGG-1-32_scratch.yaml")
            tool = os.path.join(REPO_ROOT, "tools", "demo.py")
            onnx = os.path.join(d, "s.onnx")
            export = os.path.join(REPO_ROOT, "tools", "export_student.py")
            subprocess.run([sys.executable, export, "--config-file", config, "--format", "onnx",
                            "--ort-threads", "0", "--output", onnx, "MODEL.WEIGHTS", weights],
                           check=True)  # fmt: skip
            for extra in ([], ["--onnx", onnx]):  # in this process, as the script runs it
                out = os.path.join(d, "out" + str(len(extra)))
                argv = ["--config-file", config, "--input", image]
                argv += ["--output", out, "--confidence", "0.0"] + extra
                argv += ["MODEL.WEIGHTS", weights]
                code, err = _run_cli(demo_main, argv)
                self.assertEqual(code, 0, err[-2000:])
                png, js = sorted(os.listdir(out), key=lambda n: n.endswith(".json"))
                drawn = cv2.imread(os.path.join(out, png))
                self.assertEqual(drawn.shape[:2], cv2.imread(image).shape[:2])
                self.assertGreater(os.path.getsize(os.path.join(out, png)), 0)
                with open(os.path.join(out, js)) as f:
                    listed = json.load(f)
                self.assertEqual(listed["height"], drawn.shape[0])
                self.assertTrue(all(d["class"] == "face" for d in listed["detections"]))
            # the exported file alone: no config, names from its contract
            out = os.path.join(d, "onnx_only")
            cmd = [sys.executable, tool, "--onnx", onnx, "--input", image, "--output", out,
                   "--score-thresh", "0"]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            self.assertIn("detections", proc.stdout)

    def test_prepare_widerface_checks_layout(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(prepare_main(["--root", d]), 1)
            generate_faces(d, 2, 2, seed=0)
            self.assertEqual(prepare_main(["--root", d]), 0)

    def test_training_series_collects_runs_and_refuses_a_folder_without_metrics(self):
        from training_series import main as series_main

        with tempfile.TemporaryDirectory() as tmp:
            run = os.path.join(tmp, "mimic_seed0")
            os.makedirs(run)
            with open(os.path.join(run, "metrics.json"), "w") as f:
                f.write('{"iteration": 19, "mimic/loss_ratio": 5.0}\n{"iteration": 39}\n')
            with open(os.path.join(run, "final_metrics.json"), "w") as f:
                json.dump({"widerface/AP_easy": 98.0}, f)
            path = os.path.join(tmp, "series.json")
            self.assertEqual(series_main([run, "--json", path, "--keys", "mimic/loss_ratio"]), 0)
            with open(path) as f:
                got = json.load(f)
            self.assertEqual(
                got["mimic_seed0"],
                {
                    "series": {"iteration": [20], "mimic/loss_ratio": [5.0]},
                    "final_metrics": {"widerface/AP_easy": 98.0},
                    "collapse_warned_at": None,
                },
            )
            with self.assertRaises(SystemExit):
                series_main([tmp, "--json", path])


if __name__ == "__main__":
    unittest.main()
