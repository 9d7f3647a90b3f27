"""Regression test for a collapse once seen on faces: a detector that never leaves the prior.

The collapsed runs (the scratch VGG-1-32 student; the VGG-1-4 teacher after 400
iterations) scored every detection 0.10 ± 0.02 (max 0.15) with ``loss_cls`` flat from iteration
60 on. Here the synthetic-faces scratch student (the paper's R-FCN recipe, OHEM on) trains on four
synthetic face images for a short schedule and must (1) bring ``loss_cls`` clearly below the plateau
of the prior and (2) score its detections over a wide band. The schedule is the test's own
(higher LR, fewer proposals, few images, so that it fits in well under a minute); the benchmark's
schedule is calibrated in README, Evidence. At the paper's LR of 0.001-0.002 the same 400
iterations end collapsed (scores std 0.03, max 0.37), which this test reports as a failure.
"""

import tempfile
import unittest

import numpy as np
import pytest
import torch

from detectron2.data import DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from .common import get_config

ITERS = 400
WARMUP = 50
LR = 0.04
SPEEDUP_OPTS = [
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 600, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 128,
    "MODEL.RFCN.OHEM.NUM_PROPOSALS", 128, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
]  # fmt: skip


def score_band(scores: torch.Tensor) -> dict:
    """The numbers the collapse shows in: the spread (std) and the top score."""
    s = scores.double()
    return {
        "std": float(s.std()) if s.numel() > 1 else 0.0,
        "max": float(s.max()) if s.numel() else 0.0,
        "num": int(s.numel()),
    }


def is_collapsed(scores: torch.Tensor) -> bool:
    """All detections in one narrow band, none confident (collapsed runs: 0.10 ± 0.02, max 0.15)."""
    b = score_band(scores)
    return b["std"] < 0.06 or b["max"] < 0.5


def plateau_drop(loss_cls) -> float:
    """Mean loss_cls of the last 50 iterations / of iterations 50-100 (the prior's plateau)."""
    return float(np.mean(loss_cls[-50:]) / np.mean(loss_cls[WARMUP : 2 * WARMUP]))


class TestCollapseCriterion(unittest.TestCase):
    def test_collapsed_signature_is_collapsed(self):
        g = torch.Generator().manual_seed(0)
        collapsed = (0.10 + 0.02 * torch.randn(500, generator=g)).clamp(0.01, 0.15)
        self.assertTrue(is_collapsed(collapsed))
        learned = torch.cat([torch.rand(300, generator=g) * 0.2, 0.7 + 0.3 * torch.rand(40)])
        self.assertFalse(is_collapsed(learned))
        self.assertTrue(is_collapsed(torch.zeros(0)))
        self.assertAlmostEqual(plateau_drop([0.5] * 100 + [0.25] * 300), 0.5)


class TestScratchStudentLeavesThePrior(unittest.TestCase):
    @pytest.mark.slow
    def test_short_training_on_synthetic_faces(self):
        from quant_mimic.data.synthetic import generate_faces
        from quant_mimic.data.widerface import load_widerface_instances

        with tempfile.TemporaryDirectory() as root:
            generate_faces(root, num_train=4, num_val=0, seed=0)
            dicts = load_widerface_instances(
                f"{root}/WIDER_train/images", f"{root}/wider_face_split/wider_face_train_bbx_gt.txt"
            )
            cfg = get_config("Synth/rfcn_VGG-1-32_scratch.yaml", SPEEDUP_OPTS)
            # The mapper flips each image by np.random: unseeded, 1 of 3 runs drew flips that
            # end in a narrow score band (std 0.048, measured), so the test was a coin toss.
            seed_all_rng(0)
            train_inputs = [DatasetMapper(cfg, is_train=True)(d) for d in dicts if d["annotations"]]
            test_inputs = [DatasetMapper(cfg, is_train=False)(d) for d in dicts]
        self.assertGreaterEqual(len(train_inputs), 3)
        torch.manual_seed(0)
        model = build_model(cfg)
        opt = torch.optim.SGD(
            model.parameters(), lr=LR, momentum=0.9, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
        losses_cls = []
        model.train()
        with EventStorage() as storage:
            for it in range(ITERS):
                storage.iter = it
                for group in opt.param_groups:
                    group["lr"] = LR * min(1.0, (it + 1) / WARMUP)
                losses = model(train_inputs)
                opt.zero_grad()
                sum(losses.values()).backward()
                opt.step()
                losses_cls.append(losses["loss_cls"].item())
        model.eval()
        with torch.no_grad():
            scores = torch.cat([o["instances"].scores for o in model(test_inputs)])
        band, drop = score_band(scores), plateau_drop(losses_cls)
        msg = f"scores {band}, loss_cls last/prior plateau {drop:.2f}"
        self.assertLess(drop, 0.85, "loss_cls stayed on the prior's plateau: " + msg)
        self.assertFalse(is_collapsed(scores), "detections collapsed onto one score band: " + msg)


if __name__ == "__main__":
    unittest.main()
