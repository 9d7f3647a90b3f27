"""SafeCheckpointer: atomic writes, no non-finite checkpoint, resume fallback, architecture
check (quant_mimic.checkpoint), and the Trainer using it."""

import os
import tempfile
import unittest
from unittest import mock

import torch
from torch import nn

from detectron2.engine import HookBase

from quant_mimic import Trainer, setup_cfg
from quant_mimic.checkpoint import SafeCheckpointer

from .common import CONFIG_DIR, FAST_OPTS, register_tiny_dataset, trainer_opts


def _net(out=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, out), nn.BatchNorm1d(out))


class TestSafeCheckpointer(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def _saved(self, *names, net=None):
        net = net or _net()
        ck = SafeCheckpointer(net, self.dir)
        for i, name in enumerate(names):
            with torch.no_grad():
                net[0].bias.fill_(float(i))
            ck.save(name, iteration=i)
        return ck

    def test_kill_during_write_keeps_previous_file(self):
        ck = self._saved("model_final")
        before = open(os.path.join(self.dir, "model_final.pth"), "rb").read()

        def killed(obj, f, *a, **k):
            f.write(b"\x00" * 100)  # a partial file, then the process "dies"
            raise KeyboardInterrupt

        with mock.patch("quant_mimic.checkpoint.torch.save", side_effect=killed):
            with self.assertRaises(KeyboardInterrupt):
                ck.save("model_final", iteration=9)
        self.assertEqual(open(os.path.join(self.dir, "model_final.pth"), "rb").read(), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["last_checkpoint", "model_final.pth"])

    def test_non_finite_model_is_never_written(self):
        net = _net()
        ck = self._saved("model_0000001", net=net)
        with torch.no_grad():
            net[0].weight[0, 0] = float("inf")
        with self.assertRaisesRegex(FloatingPointError, r"non-finite.*0\.weight"):
            ck.save("model_0000003", iteration=3)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "model_0000003.pth")))
        self.assertEqual(ck.get_checkpoint_file(), os.path.join(self.dir, "model_0000001.pth"))

    def _resume(self, net=None):
        net = net or _net()
        ck = SafeCheckpointer(net, self.dir)
        with self.assertLogs(ck.logger, level="WARNING") as logs:
            extra = ck.resume_or_load("", resume=True)
        return net, extra, "\n".join(logs.output)

    def test_resume_falls_back_from_empty_and_truncated_files(self):
        for damage in ("empty", "truncated", "garbage"):
            with self.subTest(damage=damage):
                self._saved("model_0000001", "model_final")
                path = os.path.join(self.dir, "model_final.pth")
                data = open(path, "rb").read()
                new = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"x" * 50}
                with open(path, "wb") as f:
                    f.write(new[damage])
                net, extra, logs = self._resume()
                self.assertEqual(extra["iteration"], 0)  # model_0000001 holds iteration 0
                self.assertEqual(float(net[0].bias[0]), 0.0)
                self.assertIn("Cannot resume from", logs)
                self.assertIn("model_final.pth", logs)

    def test_resume_skips_a_non_finite_checkpoint(self):
        self._saved("model_0000001")
        bad = _net()
        with torch.no_grad():
            bad[0].weight.fill_(float("nan"))
        torch.save({"model": bad.state_dict(), "iteration": 5}, os.path.join(self.dir, "x.pth"))
        with open(os.path.join(self.dir, "last_checkpoint"), "w") as f:
            f.write("x.pth")
        _, extra, logs = self._resume()
        self.assertEqual(extra["iteration"], 0)
        self.assertIn("non-finite", logs)

    def test_no_readable_checkpoint_is_an_error(self):
        self._saved("model_final")
        open(os.path.join(self.dir, "model_final.pth"), "wb").close()
        with self.assertRaisesRegex(RuntimeError, "no readable checkpoint"):
            SafeCheckpointer(_net(), self.dir).resume_or_load("", resume=True)

    def test_resume_into_another_architecture_is_an_error(self):
        self._saved("model_final")
        with self.assertRaisesRegex(RuntimeError, r"another architecture.*0\.weight \(3, 2\)"):
            SafeCheckpointer(_net(out=4), self.dir).resume_or_load("", resume=True)

    def test_initialisation_from_weights_stays_lenient(self):
        self._saved("model_final")
        other = _net(out=4)
        # MODEL.WEIGHTS for initialisation (no resume): detectron2's partial loading, no error
        SafeCheckpointer(other, os.path.join(self.dir, "new")).resume_or_load(
            os.path.join(self.dir, "model_final.pth"), resume=False
        )


class _PoisonAfter(HookBase):
    """Make the weights infinite after iteration ``at`` (a diverging run)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            with torch.no_grad():
                for p in self.trainer.model.parameters():
                    p.fill_(float("inf"))


STUDENT = "PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml"


def _cfg(tmp, *extra):
    name = register_tiny_dataset("qm_tiny_ckpt", os.path.join(tmp, "data"))
    opts = FAST_OPTS + trainer_opts(name, os.path.join(tmp, "out"), 4) + ["MODEL.WEIGHTS", ""]
    return setup_cfg(
        os.path.join(CONFIG_DIR, STUDENT), opts + ["SOLVER.CHECKPOINT_PERIOD", 2] + list(extra)
    )


class TestTrainerCheckpoints(unittest.TestCase):
    def test_divergence_keeps_last_good_checkpoint_and_resume_works(self):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(_cfg(tmp))
            self.assertIsInstance(trainer.checkpointer, SafeCheckpointer)
            trainer.register_hooks([_PoisonAfter(2)])
            trainer.resume_or_load(resume=False)
            with self.assertRaises(FloatingPointError):
                trainer.train()
            out = os.path.join(tmp, "out")
            with open(os.path.join(out, "last_checkpoint")) as f:
                self.assertEqual(f.read(), "model_0000001.pth")
            self.assertFalse(os.path.exists(os.path.join(out, "model_final.pth")))
            ckpt = torch.load(os.path.join(out, "model_0000001.pth"), weights_only=False)
            self.assertTrue(all(torch.isfinite(v).all() for v in ckpt["model"].values()))
            resumed = Trainer(_cfg(tmp))
            resumed.resume_or_load(resume=True)
            self.assertEqual(resumed.start_iter, 2)
            resumed.train()  # finishes; model_final is written and finite
            self.assertTrue(os.path.isfile(os.path.join(out, "model_final.pth")))

    def test_resume_into_output_of_another_architecture_fails_before_training(self):
        with tempfile.TemporaryDirectory() as tmp:
            Trainer(_cfg(tmp)).checkpointer.save("model_0000001", iteration=1)
            other = Trainer(_cfg(tmp, "MODEL.RESNETS.CHANNEL_DIVISOR", 8))
            with self.assertRaisesRegex(RuntimeError, "another architecture"):
                other.resume_or_load(resume=True)


if __name__ == "__main__":
    unittest.main()
