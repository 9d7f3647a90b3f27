"""The CUDA path: one MimicRCNN training step with a quantized teacher and AMP, the
student's evaluation, and the export parity check, all on CUDA. Marked ``cuda``; skipped where
CUDA is absent (every CPU machine, so ``make test`` passes there). Run them on a GPU host with
``python -m pytest tests/test_cuda.py -m cuda``."""

import os
import tempfile
import unittest

import pytest
import torch

from quant_mimic import Trainer, setup_cfg
from quant_mimic.export import StudentInference, export_onnx, parity_report

from .common import CONFIG_DIR, FAST_OPTS, random_inputs, register_tiny_dataset, trainer_opts

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]

QM = "Synth/faster_rcnn_R18-1-16_C4_quant_mimic.yaml"
RFCN_QM = "Synth/rfcn_VGG-1-32_quant_mimic.yaml"


def _cuda_cfg(config, tmp, extra=()):
    name = register_tiny_dataset("qm_cuda_tiny", os.path.join(tmp, "data"), num_classes=6)
    opts = FAST_OPTS + trainer_opts(name, os.path.join(tmp, "out"), max_iter=2)
    opts += ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", True, *extra]
    return setup_cfg(os.path.join(CONFIG_DIR, config), opts)


class TestCudaPath(unittest.TestCase):
    def test_training_step_with_quantized_teacher_and_amp(self):
        for config in (QM, RFCN_QM):
            with self.subTest(config=config), tempfile.TemporaryDirectory() as tmp:
                cfg = _cuda_cfg(config, tmp)
                trainer = Trainer(cfg)
                trainer.resume_or_load(resume=False)
                model = trainer.model
                self.assertEqual(model.device.type, "cuda")
                self.assertEqual(next(model.teacher.parameters()).device.type, "cuda")
                before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
                trainer.train()
                latest = trainer.storage.latest()
                self.assertIn("loss_mimic", latest)
                self.assertTrue(torch.isfinite(torch.tensor(latest["loss_mimic"][0])))
                for k, v in model.teacher.state_dict().items():
                    self.assertTrue(torch.equal(v, before[k]), k)

    def test_evaluation_and_export_parity_on_cuda(self):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = _cuda_cfg(RFCN_QM, tmp)
            model = Trainer.build_model(cfg, load_teacher=False).eval()
            inputs = [{k: v for k, v in x.items() if k != "instances"} for x in random_inputs(cfg)]
            with torch.no_grad():
                outputs = model(inputs)
            self.assertEqual(len(outputs), len(inputs))
            self.assertEqual(outputs[0]["instances"].pred_boxes.tensor.device.type, "cuda")
            module = StudentInference(model)
            images = [x["image"].to("cuda") for x in inputs]
            onnx = export_onnx(module, images[0], os.path.join(tmp, "m.onnx"))
            rows = parity_report(module, images, onnx_path=onnx)
            self.assertTrue(all(r["ok"] for r in rows), rows)


if __name__ == "__main__":
    unittest.main()
