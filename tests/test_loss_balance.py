"""No silent dead students: λ·L_m / L_det logged every step and kept in the
pipeline's records; the balanced λ (quant_mimic.loss_balance: measured, frozen, checkpointed, one
value on every rank); AMP refused on a CPU device; the mimic head in float32 under autocast."""

import os
import tempfile
import unittest

import pytest
import torch

from detectron2.utils.events import EventStorage

from quant_mimic import Trainer, setup_cfg
from quant_mimic.engine import launch
from quant_mimic.loss_balance import LossBalance
from quant_mimic.testing import FAST_OPTS, register_tiny_dataset, train_losses, trainer_opts

from .common import CONFIG_DIR, build_model_no_weights, get_config, random_inputs

QM = "PascalVOC-Detection/faster_rcnn_R18-1-16_C4_quant_mimic.yaml"
BALANCED = ["MODEL.MIMIC.LOSS_WEIGHT_MODE", "balanced", "MODEL.MIMIC.BALANCE_RATIO", 0.5,
            "MODEL.MIMIC.BALANCE_ITERS", 2]  # fmt: skip


def _trainer_cfg(tmp, max_iter=4, extra=()):
    # a name of its own per folder: a dataset registered once per process must not outlive it
    name = register_tiny_dataset("qm_balance_" + os.path.basename(tmp), os.path.join(tmp, "data"))
    opts = FAST_OPTS + trainer_opts(name, os.path.join(tmp, "out"), max_iter)
    opts += ["SOLVER.CHECKPOINT_PERIOD", 2] + list(extra)
    return setup_cfg(os.path.join(CONFIG_DIR, QM), opts)


class TestLossBalance(unittest.TestCase):
    def test_measured_then_frozen(self):
        b = LossBalance(ratio=0.5, iters=3, start_iter=10)
        self.assertIsNone(b.update(5, 100.0, 1.0))  # before START_ITER: not measured
        self.assertIsNone(b.update(10, 200.0, 2.0))
        self.assertIsNone(b.update(11, 300.0, 3.0))
        self.assertIsNone(b.update(12, 100.0, 1.0))  # the last measured one: λ = 0, then frozen
        self.assertAlmostEqual(b.weight, 0.5 * 6.0 / 600.0)
        self.assertAlmostEqual(b.update(13, 1.0, 100.0), 0.005)  # frozen
        again = LossBalance(0.5, 3, 10)
        again.load_state_dict(b.state_dict())
        self.assertEqual(again.weight, b.weight)

    def test_config_keys_are_checked(self):
        for key, value in (("LOSS_WEIGHT_MODE", "auto"), ("BALANCE_RATIO", 0.0),
                           ("BALANCE_ITERS", 0)):  # fmt: skip
            with self.subTest(key=key), self.assertRaisesRegex(ValueError, key):
                get_config(QM, [f"MODEL.MIMIC.{key}", value])

    def test_balanced_lambda_in_training_checkpointed_and_resumed(self):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _trainer_cfg(tmp, extra=BALANCED)
            lambdas, model = train_losses(cfg, key="mimic/lambda")
            self.assertEqual(lambdas[:2], [0.0, 0.0])  # measuring: λ = 0
            frozen = model.mimic_head.balance.weight
            self.assertGreater(frozen, 0)
            self.assertEqual(lambdas[2:], [frozen, frozen])
            ckpt = torch.load(os.path.join(tmp, "out", "model_final.pth"), weights_only=False)
            self.assertEqual(ckpt["mimic_balance"]["weight"], frozen)
            # resumed from the iteration-2 checkpoint: the measurement and λ come back
            trainer = Trainer(_trainer_cfg(tmp, max_iter=4, extra=BALANCED))
            trainer.checkpointer.load(os.path.join(tmp, "out", "model_0000001.pth"))
            head = trainer.model.mimic_head
            self.assertEqual(head.balance.count, 2)
            self.assertEqual(head.balance.weight, frozen)


def _ddp_balance_worker(tmp):
    import json

    from detectron2.utils import comm

    cfg = _trainer_cfg(tmp, max_iter=3, extra=BALANCED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    balance = trainer.model.module.mimic_head.balance
    with open(os.path.join(tmp, f"lambda_rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"weight": balance.weight, "count": balance.count}, f)


class TestLossBalanceDDP(unittest.TestCase):
    @pytest.mark.slow
    def test_every_rank_gets_the_same_lambda(self):
        import json

        with tempfile.TemporaryDirectory() as tmp:
            launch(_ddp_balance_worker, 2, dist_url="auto", args=(tmp,))
            ranks = []
            for r in (0, 1):
                with open(os.path.join(tmp, f"lambda_rank{r}.json")) as f:
                    ranks.append(json.load(f))
            self.assertGreater(ranks[0]["weight"], 0)
            self.assertEqual(ranks[0], ranks[1])  # measured on each rank, one all-reduced λ


class TestBalanceAndPrecision(unittest.TestCase):
    def test_loss_ratio_is_logged(self):
        cfg = get_config(QM)
        model = build_model_no_weights(cfg)
        model.train()
        with EventStorage() as storage:
            losses = model(random_inputs(cfg))
            ratio = storage.latest()["mimic/loss_ratio"][0]
        detection = sum(v.item() for k, v in losses.items() if k != "loss_mimic")
        self.assertAlmostEqual(ratio / (losses["loss_mimic"].item() / detection), 1.0, places=5)

    def test_amp_on_a_cpu_device_is_refused_at_setup(self):
        with self.assertRaisesRegex(ValueError, "SOLVER.AMP.ENABLED.*MODEL.DEVICE is 'cpu'"):
            setup_cfg(
                os.path.join(CONFIG_DIR, QM), ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", True]
            )

    def test_mimic_head_stays_float32_under_autocast(self):
        cfg = get_config(QM)
        model = build_model_no_weights(cfg)
        model.train()
        inputs = random_inputs(cfg)
        with EventStorage():
            images = model.preprocess_image(inputs)
            feats = model.backbone(images.tensor)
            from detectron2.structures import Boxes

            boxes = [Boxes(torch.tensor([[10.0, 10.0, 90.0, 120.0]]))] * 2
            maps = model.teacher_maps(inputs)
            plain = model.mimic_head.losses(maps, feats, boxes)["loss_mimic"]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = model.mimic_head.losses(
                    {k: v.bfloat16() for k, v in maps.items()}, feats, boxes
                )["loss_mimic"]
        self.assertEqual(mixed.dtype, torch.float32)
        self.assertTrue(torch.isfinite(mixed))
        self.assertAlmostEqual(mixed.item(), plain.item(), delta=0.02 * abs(plain.item()) + 1e-3)


class _FakeTrainer:
    def __init__(self, storage, save_dir=""):
        from detectron2.checkpoint import DetectionCheckpointer

        self.storage, self.iter = storage, 0
        self.checkpointer = DetectionCheckpointer(torch.nn.Linear(1, 1), save_dir=save_dir)


def _drive(guard, zero_fractions, **scalars):
    """Run the guard over iterations whose student zero fraction is given (and other scalars,
    ``a__b`` for ``a/b``); a "stop" guard's exception propagates."""
    with EventStorage() as storage:
        guard.trainer = _FakeTrainer(storage, getattr(guard, "_dir", ""))
        for it, z in enumerate(zero_fractions):
            storage.iter = guard.trainer.iter = it
            storage.put_scalar("mimic/student_zero_fraction", z)
            for k, v in scalars.items():
                storage.put_scalar(k.replace("__", "/"), v)
            guard.after_step()


def _ddp_guard_worker(tmp, mode):
    """Rank 0's student dies at iteration 30, rank 1's never: both must act, at one iteration."""
    import json

    from detectron2.utils import comm

    from quant_mimic.collapse_guard import CollapseGuard, StudentCollapsed

    dying = [0.5] * 30 + [1.0] * 60
    healthy = [0.5] * 90
    guard = CollapseGuard(mode, 0.999, 20, ["res4"])
    outcome = "finished"
    try:
        _drive(guard, dying if comm.get_rank() == 0 else healthy)
    except StudentCollapsed:
        outcome = "stopped"
    comm.synchronize()  # no rank is left waiting in the guard's all-gather
    with open(os.path.join(tmp, f"guard_rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"fired_at": guard.fired_at, "outcome": outcome}, f)


class TestCollapseGuardDDP(unittest.TestCase):
    @pytest.mark.slow
    def test_one_decision_acted_on_by_every_rank(self):
        import json

        for mode, outcome in (("warn", "finished"), ("stop", "stopped")):
            with self.subTest(mode=mode), tempfile.TemporaryDirectory() as tmp:
                launch(_ddp_guard_worker, 2, dist_url="auto", args=(tmp, mode))
                ranks = []
                for r in (0, 1):
                    with open(os.path.join(tmp, f"guard_rank{r}.json")) as f:
                        ranks.append(json.load(f))
                self.assertEqual(ranks[0], {"fired_at": 49, "outcome": outcome})
                self.assertEqual(ranks[1], ranks[0])  # the healthy rank acts too, at once


class TestCollapseGuard(unittest.TestCase):
    def test_warns_once_on_a_dead_streak_and_never_on_a_healthy_run(self):
        from quant_mimic.collapse_guard import CollapseGuard

        healthy = [0.4, 0.9, 0.95, 0.998] * 25  # a surviving mimic student: many zeros, not all
        guard = CollapseGuard("warn", 0.999, 20, ["res4"])
        with self.assertNoLogs("quant_mimic.collapse_guard", "WARNING"):
            _drive(guard, healthy)
        dying = [0.5] * 30 + [1.0] * 60
        guard = CollapseGuard("warn", 0.999, 20, ["res4"])
        with self.assertLogs("quant_mimic.collapse_guard", "WARNING") as logs:
            _drive(guard, dying, mimic__lambda=1.0, mimic__loss_ratio=480.0, lr=0.01)
        self.assertEqual(len(logs.output), 1)
        msg = logs.output[0]
        for needle in (
            "since iteration 31",
            "λ = 1",
            "LR = 0.01",
            "480",
            "LOSS_WEIGHT",
            "['res4']",
        ):
            self.assertIn(needle, msg)
        self.assertEqual(guard.fired_at, 49)  # 20 dead iterations, at the next check (every 10)

    def test_stop_keeps_the_last_checkpoint_before_the_collapse(self):
        from quant_mimic.collapse_guard import CollapseGuard, StudentCollapsed

        with tempfile.TemporaryDirectory() as d:
            for i in (9, 19, 29, 39):  # model_<i>.pth: weights after step i
                torch.save({"model": {}}, os.path.join(d, f"model_{i:07d}.pth"))
            guard = CollapseGuard("stop", 0.999, 20, ["vgg5"])
            guard._dir = d
            with self.assertRaisesRegex(StudentCollapsed, "model_0000019.pth"):
                _drive(guard, [0.3] * 21 + [1.0] * 40)  # dead from step 21: model_20 on is dead
            with open(os.path.join(d, "last_checkpoint")) as f:
                self.assertEqual(f.read().strip(), "model_0000019.pth")

    def test_trainer_registers_it_first_and_logs_the_signal(self):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _trainer_cfg(tmp, max_iter=2)
            trainer = Trainer(cfg)
            from quant_mimic.collapse_guard import CollapseGuard

            self.assertIsInstance(trainer._hooks[0], CollapseGuard)
            zeros, _ = train_losses(cfg, key="mimic/student_zero_fraction")
            self.assertTrue(all(0.0 <= z <= 1.0 for z in zeros))
            off = _trainer_cfg(tmp, max_iter=2, extra=["MODEL.MIMIC.COLLAPSE_GUARD", "off"])
            self.assertFalse(any(isinstance(h, CollapseGuard) for h in Trainer(off)._hooks))
