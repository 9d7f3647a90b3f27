"""quant_mimic.pipeline (tools/run_pipeline.py): smoke preset end to end, resume/skip/force,
aggregation, the ETA, the results figure."""

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import pytest

from quant_mimic import pipeline
from quant_mimic.pipeline import (
    DEFAULT_STAGES,
    STAGES,
    STUDENT_TEACHER,
    aggregate,
    compare_markdown,
    data_root,
    dict_opts,
    is_mimic_statistics,
)
from quant_mimic.pipeline import main as pipeline_main
from quant_mimic.pipeline import (
    mean_std,
    parse_args,
    plan_stages,
    report,
    results_markdown,
    split_run_name,
    stage_dir,
    statistics_markdown,
    welch,
)
from quant_mimic.pipeline.plots import plot_results
from quant_mimic.pipeline.progress import Progress, logged_rate
from quant_mimic.pipeline.records import divergence_message, training_series

from .common import REPO_ROOT

RECORD_KEYS = {"bench", "preset", "stage", "config", "seed", "iterations", "wall_s", "device"}
RECORD_KEYS |= {"metrics", "overrides", "init"}


def _run(out, *extra, bench="faces", seeds=2):
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "run_pipeline.py")]
    cmd += ["--bench", bench, "--preset", "smoke", "--seeds", str(seeds), "--out", out, *extra]
    # From another working directory: the tool must not depend on it.
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _mtime(path):
    return os.stat(path).st_mtime_ns


class TestAggregation(unittest.TestCase):
    def test_mean_std_by_hand(self):
        mean, std, n = mean_std([70.0, 72.0, 77.0])
        self.assertAlmostEqual(mean, 73.0)
        # sample std: sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13)
        self.assertAlmostEqual(std, 13**0.5)
        self.assertEqual(n, 3)
        self.assertEqual(mean_std([5.0]), (5.0, 0.0, 1))

    def test_aggregate_and_markdown(self):
        recs = [
            {"stage": "scratch", "seed": s, "preset": "p", "device": "d", "metrics": m}
            for s, m in enumerate(
                [
                    {"widerface/AP_easy": 10.0, "widerface/AP_medium": 1.0, "widerface/AP_hard": 0},
                    {"widerface/AP_easy": 20.0, "widerface/AP_medium": 3.0, "widerface/AP_hard": 0},
                ]
            )
        ]
        recs.append(
            {
                "stage": "teacher",
                "seed": 0,
                "preset": "p",
                "device": "d",
                "metrics": {"widerface/AP_easy": 90.0},
            }
        )
        agg = aggregate(recs, ("widerface/AP_easy", "widerface/AP_medium"))
        self.assertEqual(list(agg), ["teacher", "scratch"])  # stage order, not record order
        mean, std, n = agg["scratch"]["widerface/AP_easy"]
        self.assertEqual((mean, n), (15.0, 2))
        self.assertAlmostEqual(std, 50**0.5)  # sqrt((25 + 25) / 1)
        md = results_markdown("faces", recs)
        self.assertIn("| scratch | 2 | 15.00 ± 7.07 | 2.00 ± 1.41 | 0.00 ± 0.00 |", md)
        self.assertIn("| teacher | 1 | 90.00 | – | – |", md)  # one run: no ± shown
        self.assertIn("paper, real dataset", md)
        self.assertIn("71.3 / 55.4 / 23.8", md)

    def test_overrides_make_rows_of_their_own(self):
        def rec(stage, seed, v, opts=()):
            return {"bench": "faces", "stage": stage, "seed": seed, "preset": "p", "device": "d",
                    "metrics": {"widerface/AP_easy": v}, "overrides": list(opts)}  # fmt: skip

        lam = ["MODEL.MIMIC.LOSS_WEIGHT", "0.1"]
        recs = [rec("quant_mimic", k, v) for k, v in enumerate((0.0, 2.0))]
        recs += [rec("quant_mimic", k, v, lam) for k, v in enumerate((90.0, 94.0))]
        recs += [rec("quant_mimic", 0, 50.0, lam + ["MODEL.QUANTIZATION.STRIDE", "0.25"])]
        agg = aggregate(recs, ("widerface/AP_easy",))
        self.assertEqual(
            list(agg),
            [
                "quant_mimic",
                "quant_mimic (LOSS_WEIGHT 0.1)",
                "quant_mimic (LOSS_WEIGHT 0.1, STRIDE 0.25)",
            ],
        )
        self.assertEqual(agg["quant_mimic (LOSS_WEIGHT 0.1)"]["widerface/AP_easy"][:1], (92.0,))
        md = results_markdown("faces", recs)
        self.assertIn("| quant_mimic (LOSS_WEIGHT 0.1, STRIDE 0.25) | 1 | 50.00 |", md)
        self.assertIn("| quant_mimic | 2 | 1.00 ± 1.41 |", md)

    def test_report_of_committed_results(self):
        recs = [
            {"bench": "faces", "stage": "scratch", "seed": k, "preset": "p", "device": "d",
             "metrics": {"widerface/AP_easy": v}}
            for k, v in enumerate((1.0, 2.0, 6.0))
        ]  # fmt: skip
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "results.json")
            with open(path, "w") as f:
                json.dump(recs, f)
            self.assertIn("| scratch | 3 | 3.00 ± 2.65 |", report([path]))  # sqrt(7)

    def test_report_of_mimic_statistics(self):
        def stats(mismatch, zero_grad, quantized):
            pct = {"p50": 0.5, "p90": 1.0, "p99": 3.0, "p99.9": 4.0}
            return {
                "mean_mismatch_ratio": mismatch, "teacher_zero_fraction": 0.6,
                "student_zero_fraction": 0.5, "ste_zero_grad_fraction": zero_grad,
                "teacher_percentiles": pct, "student_percentiles": pct,
                "quantize_teacher": quantized, "quantize_student": quantized,
            }  # fmt: skip

        lam = {"init": "pretrained", "overrides": ["MODEL.MIMIC.LOSS_WEIGHT", "0.1"]}
        summary = {
            "mimic_seed0": stats(0.4, 0.0, False),
            "mimic_seed1": stats(0.6, 0.0, False),
            "quant_mimic_seed0": {**stats(0.3, 0.6, True), **lam},
            "folder_b/quant_mimic_seed1": {**stats(0.3, 0.7, True), **lam},  # a merged file
        }
        self.assertTrue(is_mimic_statistics(summary))
        self.assertFalse(is_mimic_statistics({"mimic_seed0": {"bbox/AP": 1.0}}))
        md = statistics_markdown(summary)
        self.assertIn("| mimic | 2 | off/off | 0.50 / 1.00 / 3.00 |", md)
        self.assertIn("| 50.0 ± 14.1 % |", md)  # Fig. 5 ratio of the mimic row, sqrt(0.02)
        self.assertIn(
            "| quant_mimic (init pretrained, LOSS_WEIGHT 0.1) | 2 | on/on |", md
        )  # a row per (stage, init, overrides), as results.json's rows
        self.assertIn("| 65.0 ± 7.1 % |", md)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "mimic_statistics.json")
            with open(path, "w") as f:
                json.dump(summary, f)
            self.assertIn("| mimic | 2 | off/off |", report([path]))

    def test_stages_then_overrides(self):
        base = ["--bench", "faces", "--preset", "smoke", "--out", "o"]
        a = parse_args(base + ["--stages", "teacher_quantized", "quant_mimic", "A.B", "0.25"])
        self.assertEqual(
            (a.stages, a.opts), (["teacher_quantized", "quant_mimic"], ["A.B", "0.25"])
        )
        with self.assertRaises(SystemExit):
            parse_args(base + ["--stages", "nope"])

    def test_teacher_cache_flag(self):
        base = ["--bench", "faces", "--preset", "smoke", "--out", "/o"]
        from quant_mimic.pipeline import load_preset

        preset = load_preset("smoke", "faces")
        for argv, cached in ((base, True), (base + ["--no-teacher-cache"], False)):
            a = parse_args(argv)
            opts = pipeline.stage_opts(
                "faces", preset, "/o", "mimic", 0, a.opts, not a.no_teacher_cache
            )
            kv = dict(zip(opts[::2], opts[1::2]))
            self.assertEqual(
                kv.get("MODEL.MIMIC.TEACHER.CACHE_DIR"),
                os.path.join("/o", "teacher_cache", "teacher") if cached else None,
            )
        scratch = pipeline.stage_opts("faces", preset, "/o", "scratch", 0, [])
        self.assertNotIn("MODEL.MIMIC.TEACHER.CACHE_DIR", scratch)

    def test_plan_stages_generates_missing_data(self):
        with tempfile.TemporaryDirectory() as d:
            missing = os.path.join(d, "datasets", "synth", "widerface")
            self.assertEqual(
                plan_stages(["scratch", "teacher"], missing), ["data", "teacher", "scratch"]
            )
            self.assertEqual(plan_stages(None, missing), list(DEFAULT_STAGES))
            os.makedirs(missing)
            self.assertEqual(plan_stages(["scratch", "teacher"], missing), ["teacher", "scratch"])
            self.assertEqual(plan_stages(["data"], missing), ["data"])
            self.assertNotIn("scratch_quantized", DEFAULT_STAGES)  # Table 5: only when named
            self.assertEqual(
                plan_stages(["scratch_quantized", "scratch"], missing),
                ["scratch", "scratch_quantized"],
            )

    def test_run_names_and_data_root(self):
        for stage in STAGES:  # a folder name reads back as the stage and seed that made it
            for seed in (None, 0, 12):
                name = os.path.basename(stage_dir("/x", stage, seed))
                self.assertEqual(split_run_name(name), (stage, seed))
        self.assertEqual(split_run_name("mimic_seedling"), ("mimic_seedling", None))
        # where the data stage writes is where the dataset registration (root DIR/datasets) reads
        self.assertEqual(
            data_root("faces", "/r"), os.path.join("/r", "datasets", "synth", "widerface")
        )
        self.assertEqual(data_root("voc", "/r"), os.path.join("/r", "datasets", "synth", "VOC2007"))

    def test_welch_comparison(self):
        def rec(stage, seed, ap50, bench="voc", opts=()):
            return {
                "bench": bench,
                "stage": stage,
                "seed": seed,
                "overrides": list(opts),
                "metrics": {"bbox/AP50": ap50},
            }

        # by hand: means 2 and 5, variances 1 and 1, t = -3 / sqrt(2/3) = -3.674, df = 4, p = 0.0213
        t, p = welch([1, 2, 3], [4, 5, 6])
        self.assertAlmostEqual(t, -3.674, places=3)
        self.assertAlmostEqual(p, 0.0213, places=4)
        self.assertTrue(all(x != x for x in welch([1], [4, 5, 6])))  # nan below 2 runs
        lam = ("MODEL.MIMIC.LOSS_WEIGHT", "10.0")
        records = [rec("mimic", k, v) for k, v in enumerate((1, 2, 3))]
        records += [rec("quant_mimic", k, v) for k, v in enumerate((4, 5, 6))]
        records += [rec("quant_mimic", k, v, opts=lam) for k, v in enumerate((1.5, 2.5, 2.2))]
        records += [rec("scratch", k, v) for k, v in enumerate((0.0, 9.0))]
        rows = compare_markdown(
            records,
            [
                ("mimic", "quant_mimic"),
                ("quant_mimic (LOSS_WEIGHT 10.0)", "mimic"),
                ("quant_mimic", "scratch"),
            ],
        ).splitlines()[4:]
        self.assertEqual(len(rows), 3)  # one metric (AP50) per pair
        self.assertIn("| -3.00 | -3.67 | 0.021 | B higher |", rows[0])
        self.assertTrue(rows[1].endswith("| no difference |"), rows[1])
        self.assertTrue(rows[2].endswith("| no claim (n < 3) |"), rows[2])  # scratch has 2 runs
        dead = dict(rec("mimic", 0, 0.0, opts=lam), metrics={}, diverged=True)
        rows = compare_markdown(records + [dead], [("mimic (LOSS_WEIGHT 10.0)", "mimic")])
        self.assertTrue(rows.rstrip().endswith("| no runs |"), rows)
        with self.assertRaisesRegex(ValueError, "no row 'nope'"):
            compare_markdown(records, [("mimic", "nope")])
        with self.assertRaisesRegex(ValueError, "different benchmarks"):
            compare_markdown(
                records + [rec("teacher", 0, 1.0, bench="faces")], [("mimic", "teacher")]
            )
        with self.assertRaises(SystemExit):  # --compare only reads results files
            parse_args(["--bench", "voc", "--preset", "cpu", "--out", "x", "--compare", "a", "b"])

    def test_diverged_student_is_recorded(self):
        calls = []

        def fake_train(cfg_file, opts, num_gpus, fail=FloatingPointError):
            kv = dict(zip(opts[::2], opts[1::2]))
            d, seed = kv["OUTPUT_DIR"], int(kv["SEED"])
            calls.append(seed)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "metrics.json"), "w") as f:
                f.write('{"iteration": 76, "total_loss": 1e9}\n{"iteration": 77}\n')
            if seed == 0:  # detectron2's guard (SimpleTrainer's message has a loss_dict line)
                raise fail("Loss became infinite or NaN at iteration=77!\nloss_dict = {'a': inf}")
            open(os.path.join(d, "model_final.pth"), "wb").close()
            with open(os.path.join(d, "final_metrics.json"), "w") as f:
                json.dump({"widerface/AP_easy": 50.0 + seed}, f)

        with tempfile.TemporaryDirectory() as out:
            argv = ["--bench", "faces", "--preset", "smoke", "--seeds", "3", "--out", out]
            argv += ["--no-mismatch", "--stages", "scratch", "MODEL.MIMIC.LOSS_WEIGHT", "10.0"]
            recs = pipeline.run(parse_args(argv), train=fake_train)  # seed 0 diverges; 1, 2 run
            self.assertEqual(calls, [0, 1, 2])
            bad = [r for r in recs if r.get("diverged")]
            self.assertEqual(len(bad), 1)
            self.assertEqual((bad[0]["seed"], bad[0]["metrics"]), (0, {}))
            self.assertEqual(bad[0]["diverged_at_iter"], 78)
            self.assertEqual(
                bad[0]["error"],
                "FloatingPointError: Loss became infinite or NaN at iteration=77!",
            )
            self.assertEqual(  # a worker's exception arrives as a traceback text
                divergence_message(RuntimeError("Traceback ...\nFloatingPointError: x\ny")),
                "FloatingPointError: x",
            )
            table = open(os.path.join(out, "results.md")).read()
            self.assertIn("| scratch (LOSS_WEIGHT 10.0) | 2 (+1 diverged) | 51.50 ± 0.71 |", table)
            saved = json.load(open(os.path.join(out, "results.json")))
            self.assertEqual(sorted(r["seed"] for r in saved if r.get("diverged")), [0])
            # resume: the diverged run is not retried and keeps its record; --force retries
            recs = pipeline.run(parse_args(argv), train=fake_train)
            self.assertEqual((calls, sum(bool(r.get("diverged")) for r in recs)), ([0, 1, 2], 1))
            pipeline.run(parse_args(argv + ["--force"]), train=fake_train)
            self.assertEqual(calls[3:], [0, 1, 2])
            # other failures, and a teacher's divergence, stop the pipeline
            argv_t = argv[:-4] + ["--stages", "teacher"]
            with self.assertRaises(FloatingPointError):
                pipeline.run(parse_args(argv_t), train=fake_train)
            with self.assertRaises(RuntimeError):
                pipeline.run(
                    parse_args(argv + ["--force"]),
                    train=lambda *a: fake_train(*a, fail=RuntimeError),
                )

    def test_collapse_guard_outcome_is_recorded_and_tabled(self):
        def fake_train(cfg_file, opts, num_gpus):
            kv = dict(zip(opts[::2], opts[1::2]))
            d, seed = kv["OUTPUT_DIR"], int(kv["SEED"])
            os.makedirs(d, exist_ok=True)
            zeros = [0.4, 1.0, 1.0] if seed == 1 else [0.4, 0.5, 0.45]  # seed 1 dies
            with open(os.path.join(d, "metrics.json"), "w") as f:
                for i, z in enumerate(zeros):
                    line = {"iteration": 20 * i + 19, "mimic/student_zero_fraction": z}
                    f.write(json.dumps(dict(line, **{"mimic/lambda": 0.02 + seed})) + "\n")
            with open(os.path.join(d, "log.txt"), "w") as f:
                f.write("[12/03 10:00:00 quant_mimic.engine]: Starting training\n")
                if seed == 1:  # the guard's message, as collapse_guard logs it
                    f.write(
                        "[12/03 10:01:00 quant_mimic.collapse_guard]: The mimic student is "
                        "collapsing: at iteration 50, its output at the mimic layer ...\n"
                    )
            open(os.path.join(d, "model_final.pth"), "wb").close()
            with open(os.path.join(d, "final_metrics.json"), "w") as f:
                json.dump({"widerface/AP_easy": 0.0 if seed == 1 else 90.0}, f)

        with tempfile.TemporaryDirectory() as out:
            argv = ["--bench", "faces", "--preset", "smoke", "--seeds", "3", "--out", out]
            argv += ["--no-mismatch", "--stages", "scratch"]
            recs = {r["seed"]: r for r in pipeline.run(parse_args(argv), train=fake_train)}
            self.assertEqual([recs[k]["collapse_warned_at"] for k in (0, 1, 2)], [None, 50, None])
            self.assertEqual([recs[k]["max_student_zero_fraction"] for k in (0, 1)], [0.5, 1.0])
            self.assertAlmostEqual(recs[2]["lambda"], 2.02)
            table = open(os.path.join(out, "results.md")).read()
            self.assertIn("| guard fired |", table)
            self.assertIn("| 1 of 3 |", table)
            # the per-iteration data of a guard check (tools/training_series.py)
            series = training_series(os.path.join(out, "scratch_seed1"), ["mimic/lambda", "x"])
            self.assertEqual(
                series, {"iteration": [20, 40, 60], "mimic/lambda": [1.02] * 3, "x": [None] * 3}
            )

    @pytest.mark.slow
    def test_tools_script_is_a_thin_front_end(self):
        path = os.path.join(REPO_ROOT, "tools", "run_pipeline.py")
        with open(path) as f:
            self.assertLessEqual(len(f.read().splitlines()), 150)
        from quant_mimic.errors import run_cli

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            nope = os.path.join(REPO_ROOT, "results", "nope.json")
            self.assertEqual(run_cli(pipeline_main, ["--report", nope]), 2)
        self.assertIn("nope.json: --report: no such file", err.getvalue())
        with tempfile.TemporaryDirectory() as d:  # not a results.json: a clear error, exit 2
            bad = os.path.join(d, "speed.json")
            with open(bad, "w") as f:
                json.dump({"rows": []}, f)
            proc = subprocess.run(
                [sys.executable, path, "--report", bad], capture_output=True, text=True
            )
            self.assertEqual(proc.returncode, 2, proc.stderr)
            self.assertIn("is not a pipeline results.json", proc.stderr)

    def test_results_figure_shows_every_seed(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        recs = [
            {"bench": "faces", "stage": "scratch", "seed": k, "preset": "p", "device": "d",
             "metrics": {"widerface/AP_easy": v, "widerface/AP_medium": 1.0,
                         "widerface/AP_hard": 0.0}}
            for k, v in enumerate((0.0, 0.5, 80.0))
        ]  # fmt: skip
        recs.append(dict(recs[0], seed=3, metrics={}, diverged=True))
        with tempfile.TemporaryDirectory() as d, mock.patch.object(plt, "close"):
            plot_results("faces", recs, os.path.join(d, "results.png"))
            self.assertGreater(os.path.getsize(os.path.join(d, "results.png")), 0)
            ax = plt.gcf().axes[0]
            points = [y for line in ax.lines for y in line.get_ydata()]
            self.assertEqual(sorted(points), sorted([0.0, 0.5, 80.0, 1, 1, 1, 0, 0, 0]))
            self.assertEqual(len(ax.collections), 0)  # no error bars
            self.assertGreaterEqual(ax.get_ylim()[0], 0)
            plt.close("all")


class TestProgress(unittest.TestCase):
    # make demo's shape: teacher 2400 it at 0.6 s/it, students 4x faster, mimic ones 1.6x scratch.
    RUNS = [("data", None, 0), ("teacher", None, 2400), ("teacher_quantized", None, 1200)]
    RUNS += [(s, 0, 2400) for s in ("scratch", "mimic", "quant_mimic_teacher_only", "quant_mimic")]

    def test_eta_per_kind_of_stage(self):
        p = Progress(self.RUNS)
        self.assertEqual(p.eta(1), "ETA: measuring")
        p.record("teacher", 2400, 1440.0)
        # the teacher's rate is not applied to the students: they are counted apart
        eta = p.eta(2)
        self.assertTrue(eta.startswith("ETA ≥ 0:12:00"), eta)  # teacher_quantized: 1200 x 0.6
        self.assertIn("1 student run(s) not yet timed", eta)
        self.assertIn("3 mimic student run(s) not yet timed", eta)
        # the first student iterations: 0.15 s/it; mimic students counted at that rate, as a bound
        p.observe("scratch", 0.15)
        eta = p.eta(3)
        self.assertTrue(eta.startswith("ETA ≥ 0:24:00"), eta)  # (1 + 3) x 2400 x 0.15
        self.assertIn("mimic student not yet timed, counted at the student rate", eta)
        # stages that finish refine it: scratch took 0.16 s/it with its evaluation, mimic 0.25
        p.record("scratch", 2400, 384.0)
        p.record("mimic", 2400, 600.0)
        self.assertEqual(p.eta(5), "ETA 0:20:00")  # 2 mimic runs x 2400 x 0.25
        self.assertEqual(p.eta(len(self.RUNS)), "ETA 0:00:00")

    def test_logged_rate_from_metrics_json(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "metrics.json")
            self.assertIsNone(logged_rate(path))
            with open(path, "w") as f:
                f.write('{"iteration": 9, "time": 0.5}\n')
            self.assertIsNone(logged_rate(path))  # fewer than 20 iterations
            with open(path, "a") as f:
                f.write(
                    '{"iteration": 19, "time": 0.3}\nnot json\n{"iteration": 39, "time": 0.2}\n'
                )
                f.write('{"iteration": 39, "widerface/AP_easy": 3.0}\n')
            self.assertEqual(logged_rate(path), (0.3, 40))

    def test_dict_opts(self):
        self.assertEqual(
            dict_opts({"SOLVER.STEPS": [3, 4], "A": 0.5, "B": "x", "C": []}),
            ["SOLVER.STEPS", "(3, 4, )", "A", "0.5", "B", "x", "C", "()"],
        )


@pytest.mark.slow
class TestSmokePipeline(unittest.TestCase):
    def test_end_to_end_resume_and_force(self):
        with tempfile.TemporaryDirectory() as out:
            log = _run(out)
            self.assertIn("[1/11] data", log)
            self.assertIn("ETA", log)
            with open(os.path.join(out, "results.json")) as f:
                records = json.load(f)
            expected = {("teacher", 0), ("teacher_quantized", 0)}
            expected |= {(s, k) for s in DEFAULT_STAGES[3:] for k in (0, 1)}
            self.assertEqual({(r["stage"], r["seed"]) for r in records}, expected)
            for r in records:
                # a mimic student's record also keeps its last λ·L_m / L_det, λ and what the
                # collapse guard saw (faces: a VGG mimic layer, whose ReLU output it watches)
                mimics = STUDENT_TEACHER.get(r["stage"]) is not None
                guard = {"max_student_zero_fraction", "collapse_warned_at"}
                extra = {"loss_ratio", "lambda"} | guard if mimics else set()
                self.assertEqual(set(r), RECORD_KEYS | extra)
                if mimics:
                    self.assertTrue(0.0 <= r["max_student_zero_fraction"] <= 1.0, r)
                self.assertEqual(set(r["metrics"]) >= {"widerface/AP_easy"}, True, r)
                d = r["stage"] + ("" if r["stage"].startswith("teacher") else f"_seed{r['seed']}")
                for f in ("model_final.pth", "final_metrics.json"):
                    self.assertTrue(os.path.isfile(os.path.join(out, d, f)), (d, f))
            for f in ("results.md", "results.png", "mismatch.png", "mimic_statistics.json"):
                self.assertGreater(os.path.getsize(os.path.join(out, f)), 0, f)
            for stage in ("mimic", "quant_mimic_teacher_only", "quant_mimic"):
                with open(os.path.join(out, f"{stage}_seed0", "metrics.json")) as f:
                    self.assertIn("loss_mimic", f.read(), stage)
            # one teacher-map cache per teacher stage, shared by its students' seeds and rows
            for teacher in ("teacher", "teacher_quantized"):
                cache = os.path.join(out, "teacher_cache", teacher)
                self.assertTrue(os.path.isfile(os.path.join(cache, "manifest.json")), teacher)
                self.assertTrue(os.listdir(os.path.join(cache, "entries")), teacher)
            with open(os.path.join(out, "quant_mimic_seed1", "metrics.json")) as f:
                hits = [json.loads(x).get("mimic/teacher_cache_hit") for x in f]
            self.assertGreater(max(h for h in hits if h is not None), 0.5)  # seed 1 reads
            ckpts = {
                d: _mtime(os.path.join(out, d, "model_final.pth"))
                for d in os.listdir(out)
                if os.path.isfile(os.path.join(out, d, "model_final.pth"))
            }

            log = _run(out)  # everything done: every stage is skipped, and says so
            self.assertEqual(log.count("skip, done"), 10, log)
            for d, t in ckpts.items():
                self.assertEqual(_mtime(os.path.join(out, d, "model_final.pth")), t, d)

            log = _run(out, "--force", "--stages", "scratch")
            self.assertEqual(log.count("skip"), 0, log)
            for d, t in ckpts.items():
                changed = _mtime(os.path.join(out, d, "model_final.pth")) != t
                self.assertEqual(changed, d.startswith("scratch"), d)
            with open(os.path.join(out, "results.json")) as f:
                self.assertEqual(len(json.load(f)), 10)  # records of other stages are kept

    def test_pretrain_stage_and_init_field(self):
        # --stages pretrain: the classification set, the pretraining, then every student from its
        # backbone.pth; teachers from random weights; each record says how it started.
        with tempfile.TemporaryDirectory() as out:
            log = _run(
                out, "--stages", "pretrain", "teacher", "scratch", "mimic", bench="voc", seeds=1
            )
            self.assertIn("pretrain: ", log)
            backbone = os.path.join(out, "pretrain", "backbone.pth")
            self.assertTrue(os.path.isfile(backbone))
            self.assertTrue(os.path.isdir(os.path.join(out, "datasets", "synth", "cls", "train")))
            from quant_mimic.fileio import file_sha256

            with open(os.path.join(out, "results.json")) as f:
                records = {r["stage"]: r for r in json.load(f)}
            self.assertEqual(records["teacher"]["init"], "random")
            self.assertNotIn("init_sha256", records["teacher"])
            for stage in ("scratch", "mimic"):
                self.assertEqual(records[stage]["init"], "pretrained")
                self.assertEqual(records[stage]["init_sha256"], file_sha256(backbone))
                with open(os.path.join(out, f"{stage}_seed0", "config.yaml")) as f:
                    self.assertIn(backbone, f.read())
            with open(os.path.join(out, "results.md")) as f:
                self.assertIn("scratch (init pretrained)", f.read())
            # a finished pretrained student is never recorded as a random one
            cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "run_pipeline.py")]
            cmd += ["--bench", "voc", "--preset", "smoke", "--out", out, "--init", "random"]
            proc = subprocess.run(cmd + ["--stages", "scratch"], capture_output=True, text=True)
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn("started with {'init': 'pretrained'", proc.stderr)

    def test_one_stage_benches_end_to_end(self):
        # docs/OTHER_HEADS.md: the RetinaNet teacher, its quantized finetuning (p3..p7), the
        # RetinaNet / FCOS scratch and Quantization Mimic students, the student exported with parity
        # (FCOS without scratch and export, which test_mimic_dense.py covers: the test's time)
        for bench, arch, extra in (
            ("voc_retinanet", "retinanet", ["scratch", "export"]),
            ("voc_fcos", "fcos", []),
        ):
            with self.subTest(bench=bench), tempfile.TemporaryDirectory() as out:
                stages = ["teacher", "teacher_quantized", "quant_mimic", *extra]
                _run(out, "--stages", *stages, bench=bench, seeds=1)
                with open(os.path.join(out, "results.json")) as f:
                    records = {r["stage"]: r for r in json.load(f)}
                self.assertEqual(sorted(records), sorted(s for s in stages if s != "export"))
                self.assertIn("retinanet_R18-1-4_FPN_teacher", records["teacher"]["config"])
                self.assertIn(f"{arch}_R18-1-16_FPN_quant_mimic", records["quant_mimic"]["config"])
                self.assertIn("bbox/AP50", records["quant_mimic"]["metrics"])
                with open(os.path.join(out, "quant_mimic_seed0", "metrics.json")) as f:
                    text = f.read()
                self.assertIn("loss_mimic", text)
                self.assertIn("mimic/loss_ratio", text)
                if "export" in stages:
                    with open(os.path.join(out, "export", "export.json")) as f:
                        self.assertTrue(json.load(f)["ok"])

    def test_fpn_bench_end_to_end(self):
        # docs/OTHER_HEADS.md: the FPN student pretrained through its bottom-up, the FPN teacher,
        # its quantized finetuning (p2..p5) and Quantization Mimic on the pyramid
        with tempfile.TemporaryDirectory() as out:
            stages = ["pretrain", "teacher", "teacher_quantized", "scratch", "quant_mimic"]
            _run(out, "--stages", *stages, bench="voc_fpn", seeds=1)
            with open(os.path.join(out, "results.json")) as f:
                records = {r["stage"]: r for r in json.load(f)}
            self.assertEqual(sorted(records), sorted(stages[1:]))
            self.assertIn("FPN", records["quant_mimic"]["config"])
            self.assertEqual(records["quant_mimic"]["init"], "pretrained")
            with open(os.path.join(out, "quant_mimic_seed0", "metrics.json")) as f:
                self.assertIn("loss_mimic", f.read())

    def test_preset_base_and_init(self):
        preset = pipeline.load_preset("cpu_paper", "faces")
        base = pipeline.load_preset("cpu", "faces")
        self.assertEqual(preset["teacher"], base["teacher"])
        self.assertEqual(preset["data"], base["data"])
        self.assertEqual(preset["init"], "pretrained")
        self.assertEqual(preset["student"]["SOLVER.BASE_LR"], 0.001)
        from quant_mimic.pipeline.plan import student_init

        self.assertEqual(student_init(None, base, None), "random")
        self.assertEqual(student_init(None, base, ["pretrain", "scratch"]), "pretrained")
        self.assertEqual(student_init("random", preset, None), "random")
        self.assertEqual(student_init(None, preset, ["scratch"]), "pretrained")
        opts = pipeline.stage_opts("faces", preset, "/o", "scratch", 0, [], init="pretrained")
        self.assertEqual(pipeline.opt_lookup(opts, "MODEL.WEIGHTS"), "/o/pretrain/backbone.pth")
        opts = pipeline.stage_opts("faces", preset, "/o", "teacher", None, [], init="pretrained")
        self.assertIsNone(pipeline.opt_lookup(opts, "MODEL.WEIGHTS"))

    def test_voc_end_to_end(self):
        # The VOC bench through every default stage (its smoke data once failed to generate), and
        # Table 5's optional control, asked for by name.
        with tempfile.TemporaryDirectory() as out:
            _run(out, bench="voc", seeds=1)
            _run(out, "--stages", "scratch_quantized", bench="voc", seeds=1)
            with open(os.path.join(out, "results.json")) as f:
                records = json.load(f)
            self.assertEqual(
                [r["stage"] for r in records],
                list(DEFAULT_STAGES[1:4]) + ["scratch_quantized", *DEFAULT_STAGES[4:]],
            )
            for r in records:
                self.assertIn("bbox/AP50", r["metrics"], r["stage"])
            with open(os.path.join(out, "mimic_statistics.json")) as f:
                stats = json.load(f)
            self.assertEqual(
                sorted(stats),
                ["mimic_seed0", "quant_mimic_seed0", "quant_mimic_teacher_only_seed0"],
            )
            self.assertEqual(stats["quant_mimic_seed0"]["quantize_student"], True)
            self.assertEqual(stats["mimic_seed0"]["init"], "random")  # labels its report row
            self.assertIn("| quant_mimic | 1 | on/on |", statistics_markdown(stats))
            with open(os.path.join(out, "scratch_quantized_seed0", "config.yaml")) as f:
                self.assertIn("build_quantized_backbone", f.read())


if __name__ == "__main__":
    unittest.main()
