"""A MimicRCNN checkpoint written before the layout changes (commit 9aa6981) loads strictly and
gives the same mimic loss and detections (tests/data/mimic_rcnn_9aa6981.pth, made by that commit's
code: the WIDER FACE VGG-1-32 quant-mimic config with a VGG-1-32 teacher, random weights)."""

import os
import unittest

import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from .common import CONFIG_DIR, REPO_ROOT, get_config, random_inputs

FIXTURE = os.path.join(REPO_ROOT, "tests", "data", "mimic_rcnn_9aa6981.pth")


class TestCheckpointWrittenBeforeTheChange(unittest.TestCase):
    def test_loads_strictly_and_predicts_identically(self):
        saved = torch.load(FIXTURE, weights_only=True)
        teacher_cfg = os.path.join(CONFIG_DIR, "WIDERFace", "rfcn_VGG-1-32_scratch.yaml")
        cfg = get_config(
            "WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml",
            ["MODEL.MIMIC.TEACHER.CONFIG_FILE", teacher_cfg],
        )
        model = build_model(cfg)
        model.load_state_dict(saved["model"], strict=True)
        model.teacher.load_state_dict(saved["teacher"], strict=True)
        inputs = random_inputs(cfg, sizes=((96, 128), (80, 112)), num_boxes=(2, 1), seed=1)
        # The saved state holds BN statistics after one training forward; inference first.
        model.eval()
        with torch.no_grad():
            out = model([{k: v for k, v in x.items() if k != "instances"} for x in inputs])
        for o, boxes, scores in zip(out, saved["boxes"], saved["scores"]):
            self.assertTrue(torch.allclose(o["instances"].pred_boxes.tensor, boxes, atol=1e-4))
            self.assertTrue(torch.allclose(o["instances"].scores, scores, atol=1e-6))
        model.load_state_dict(saved["model"], strict=True)
        model.train()
        with EventStorage():
            losses = model(inputs)
        self.assertTrue(torch.allclose(losses["loss_mimic"], saved["loss_mimic"], rtol=1e-5))


if __name__ == "__main__":
    unittest.main()
