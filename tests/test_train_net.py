"""train_net.py's main (quant_mimic.engine): --eval-only loads MODEL.WEIGHTS strictly;
final_metrics.json; the script itself is thin and nothing imports it."""

import ast
import json
import os
import tempfile
import unittest

import pytest
import torch

from quant_mimic import engine as train_net

from .common import REPO_ROOT, build_model_no_weights, get_config

STUDENT = "WIDERFace/rfcn_VGG-1-32_scratch.yaml"


def _args(*extra):
    return train_net.build_parser().parse_args(["--eval-only", *extra])


class TestEvalOnlyWeights(unittest.TestCase):
    def test_empty_weights_are_an_error(self):
        cfg = get_config(STUDENT)
        model = build_model_no_weights(cfg)
        with self.assertRaisesRegex(FileNotFoundError, "MODEL.WEIGHTS is empty"):
            train_net.load_eval_weights(cfg, model, _args())

    def test_other_architecture_is_an_error_unless_lenient(self):
        with tempfile.TemporaryDirectory() as d:
            teacher = build_model_no_weights(get_config("WIDERFace/rfcn_VGG-1-4_teacher.yaml"))
            path = os.path.join(d, "teacher.pth")
            torch.save({"model": teacher.state_dict()}, path)
            cfg = get_config(STUDENT, ["MODEL.WEIGHTS", path])
            model = build_model_no_weights(cfg)
            with self.assertRaisesRegex(RuntimeError, "teacher.pth does not match.*shape mismatch"):
                train_net.load_eval_weights(cfg, model, _args())
            train_net.load_eval_weights(cfg, model, _args("--lenient"))  # detectron2's way

    def test_not_a_checkpoint_names_the_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "notes.pth")
            with open(path, "w") as f:
                f.write("hello")
            cfg = get_config(STUDENT, ["MODEL.WEIGHTS", path])
            with self.assertRaisesRegex(RuntimeError, "notes.pth is not a readable checkpoint"):
                train_net.load_eval_weights(cfg, build_model_no_weights(cfg), _args())

    def test_matching_checkpoint_and_exported_student_load(self):
        with tempfile.TemporaryDirectory() as d:
            mimic_cfg = get_config("WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml")
            mimic = build_model_no_weights(mimic_cfg)
            student_sd = {
                k: v for k, v in mimic.state_dict().items() if not k.startswith("mimic_adapters.")
            }
            path = os.path.join(d, "student.pth")
            torch.save({"model": student_sd}, path)
            for rel in (STUDENT, "WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml"):  # adapters optional
                cfg = get_config(rel, ["MODEL.WEIGHTS", path])
                model = build_model_no_weights(cfg)
                train_net.load_eval_weights(cfg, model, _args())
                for k, v in student_sd.items():
                    self.assertTrue(torch.equal(model.state_dict()[k], v), k)

    def test_final_metrics_json(self):
        with tempfile.TemporaryDirectory() as d:
            path = train_net.write_final_metrics(d, {"widerface": {"AP_easy": 50.0}})
            with open(path) as f:
                self.assertEqual(json.load(f), {"widerface/AP_easy": 50.0})


if __name__ == "__main__":
    unittest.main()


class TestThinScript(unittest.TestCase):
    def test_train_net_only_calls_the_engine(self):
        with open(os.path.join(REPO_ROOT, "train_net.py")) as f:
            tree = ast.parse(f.read())
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        self.assertEqual(defs, [], "train_net.py defines nothing: its body is quant_mimic.engine")
        imports = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        self.assertEqual(imports, {"quant_mimic.engine", "quant_mimic.errors"})


def _gather_and_return(tmp):
    """Ends right after a collective: the case in which torch 2.14's gloo aborted at exit."""
    from detectron2.utils import comm

    for _ in range(3):
        gathered = comm.all_gather(list(range(100)))
    with open(os.path.join(tmp, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(len(gathered), f)


def _raise_on_rank1(tmp):
    from detectron2.utils import comm

    if comm.get_rank() == 1:
        raise ValueError("rank 1 fails")


class TestLaunch(unittest.TestCase):
    def setUp(self):  # detectron2's start method, train_net.py's default (tests/conftest.py)
        self._method = os.environ.pop(train_net.START_METHOD_ENV, None)

    def tearDown(self):
        if self._method is not None:
            os.environ[train_net.START_METHOD_ENV] = self._method

    @pytest.mark.slow
    def test_two_process_launches_end_cleanly(self):
        # without engine.launch's clean exit, 7 of 30 such launches died with SIGABRT on the host;
        # spawned, as train_net.py does (a forked process never finalizes its interpreter)
        for _ in range(6):
            with tempfile.TemporaryDirectory() as tmp:
                train_net.launch(_gather_and_return, 2, dist_url="auto", args=(tmp,))
                for r in (0, 1):
                    with open(os.path.join(tmp, f"rank{r}.json")) as f:
                        self.assertEqual(json.load(f), 2)

    @pytest.mark.slow
    def test_a_failing_rank_still_fails_the_launch_and_one_process_runs_here(self):
        from torch.multiprocessing import ProcessRaisedException

        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(ProcessRaisedException, "rank 1 fails"):
                train_net.launch(_raise_on_rank1, 2, dist_url="auto", args=(tmp,))
            calls = []
            self.assertIsNone(train_net.launch(calls.append, 1, args=(tmp,)))
            self.assertEqual(calls, [tmp])  # no process spawned, no os._exit
