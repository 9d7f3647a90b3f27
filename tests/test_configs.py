"""Every config under configs/ merges strictly, builds on CPU without weights, trains and infers."""

import os
import unittest

import pytest
import torch
import yaml

from detectron2.config import get_cfg

from quant_mimic import add_quantmimic_config, setup_cfg

from .common import (
    CONFIG_DIR,
    all_config_files,
    build_model_no_weights,
    get_config,
    random_inputs,
    train_step,
)


class TestConfigValidation(unittest.TestCase):
    """Bad QuantMimic values fail at start-up, naming the key and the value."""

    QM = os.path.join(os.path.dirname(__file__), "..", "configs", "Synth")

    def _fails(self, cfg_file, key, value, text=None):
        with self.assertRaises(ValueError) as e:
            setup_cfg(os.path.join(self.QM, cfg_file), [key, value])
        self.assertIn(key, str(e.exception))
        self.assertIn(repr(value) if text is None else text, str(e.exception))

    def test_bad_values_name_key_and_value(self):
        qm = "rfcn_VGG-1-32_quant_mimic.yaml"
        self._fails(qm, "MODEL.MIMIC.LOSS_WEIGHT", -1.0)
        self._fails(qm, "MODEL.MIMIC.NUM_ROIS", 0)
        self._fails(qm, "MODEL.MIMIC.NUM_ROIS", -1)
        self._fails(qm, "MODEL.MIMIC.WARMUP_ITERS", -5)
        self._fails(qm, "MODEL.MIMIC.STOP_ITER", 0)  # not after START_ITER 0
        self._fails(qm, "MODEL.MIMIC.QUANT_METHOD", "log")
        self._fails(qm, "MODEL.MIMIC.ADAPTER", "mlp")
        self._fails(qm, "MODEL.QUANTIZATION.STRIDE", 0.0)
        self._fails(qm, "MODEL.QUANTIZATION.STRIDE", -0.5)
        self._fails(qm, "MODEL.RFCN.POOLER_RESOLUTION", 0)
        self._fails(qm, "MODEL.RFCN.OHEM.NUM_PROPOSALS", 0)
        self._fails("rfcn_VGG-1-32_scratch.yaml", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 0)

    def test_valid_values_pass(self):
        qm = os.path.join(self.QM, "rfcn_VGG-1-32_quant_mimic.yaml")
        cfg = setup_cfg(qm, ["MODEL.MIMIC.LOSS_WEIGHT", 0.0, "MODEL.MIMIC.STOP_ITER", 10])
        self.assertEqual(cfg.MODEL.MIMIC.STOP_ITER, 10)
        for f in all_config_files():  # every shipped config is valid
            setup_cfg(f)


class TestCommandLineNumbers(unittest.TestCase):
    QM = os.path.join(os.path.dirname(__file__), "..", "configs", "Synth")

    def test_integer_for_a_float_key(self):
        # `MODEL.MIMIC.LOSS_WEIGHT 10` (Table 9's λ = 10) was a yacs type mismatch.
        qm = os.path.join(self.QM, "faster_rcnn_R18-1-16_C4_quant_mimic.yaml")
        cfg = setup_cfg(qm, ["MODEL.MIMIC.LOSS_WEIGHT", "10", "SOLVER.BASE_LR", 1])
        self.assertEqual((cfg.MODEL.MIMIC.LOSS_WEIGHT, cfg.SOLVER.BASE_LR), (10.0, 1.0))
        self.assertIsInstance(cfg.MODEL.MIMIC.LOSS_WEIGHT, float)
        cfg = setup_cfg(qm, ["SOLVER.MAX_ITER", "7", "MODEL.MIMIC.LOSS_WEIGHT", "0.5"])
        self.assertEqual((cfg.SOLVER.MAX_ITER, cfg.MODEL.MIMIC.LOSS_WEIGHT), (7, 0.5))
        self.assertIsInstance(cfg.SOLVER.MAX_ITER, int)  # int keys stay int
        with self.assertRaises(ValueError):  # other mismatches are still errors
            setup_cfg(qm, ["MODEL.MIMIC.LOSS_WEIGHT", "True"])
        with self.assertRaisesRegex(Exception, "NO_SUCH_KEY"):  # yacs: unknown keys fail
            setup_cfg(qm, ["MODEL.MIMIC.NO_SUCH_KEY", "10"])


class TestConfigKeys(unittest.TestCase):
    def test_every_new_key_is_commented(self):
        path = os.path.join(
            os.path.dirname(__file__), "..", "projects", "QuantMimic", "quant_mimic", "config.py"
        )
        lines = open(path).read().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("_C.MODEL.") and "=" in line and "CN()" not in line:
                self.assertTrue(lines[i - 1].strip().startswith("#"), f"uncommented key: {line}")

    def test_strict_merge(self):
        cfg = get_cfg()
        add_quantmimic_config(cfg)
        with self.assertRaises(AssertionError):  # a typo is an error, not a silent new key
            cfg.merge_from_list(["MODEL.QUANTIZATION.STRIED", 1.0])
        cfg.merge_from_list(["MODEL.QUANTIZATION.STRIDE", 0.5])
        self.assertEqual(cfg.MODEL.QUANTIZATION.STRIDE, 0.5)
        self.assertFalse(cfg.is_new_allowed())

    def test_base_paths_stay_in_repo(self):
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "configs"))
        for f in all_config_files(include_base=True):
            base = yaml.safe_load(open(f)).get("_BASE_")
            if base:
                target = os.path.abspath(os.path.join(os.path.dirname(f), base))
                self.assertTrue(target.startswith(root) and os.path.isfile(target), (f, base))


# Odd sizes (not multiples of any stride) and an image with no ground truth, as detectron2's
# test_model_e2e; smaller than its 200×249, as this checks plumbing, not learning.
TRAIN_SIZES, TEST_SIZE = ((120, 149), (96, 128)), (120, 149)
# Few RoIs: a C4 teacher's res5 head runs per RoI and is most of a step's time.
FEW_ROIS = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4", "MODEL.RPN.POST_NMS_TOPK_TEST", "8"]


@pytest.mark.slow  # 90 configs, ~75 s in all
@pytest.mark.parametrize("path", all_config_files(), ids=lambda f: os.path.relpath(f, CONFIG_DIR))
def test_every_config_builds_trains_and_infers(path):
    """One test per config, so that parallel workers share them."""
    cfg = get_config(path, FEW_ROIS)
    model = build_model_no_weights(cfg)
    losses = train_step(model, random_inputs(cfg, sizes=TRAIN_SIZES, num_boxes=(3, 0)))
    assert len(losses) > 0 and all(k.startswith("loss_") for k in losses), list(losses)
    for k, v in losses.items():
        assert torch.isfinite(v).all(), (k, v)
    model.eval()
    with torch.no_grad():
        out = model(random_inputs(cfg, sizes=(TEST_SIZE,), num_boxes=(0,)))
    inst = out[0]["instances"]
    assert inst.image_size == TEST_SIZE
    if len(inst):
        b = inst.pred_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= TEST_SIZE[1]).all()


def test_there_are_configs_to_check():
    assert len(all_config_files()) > 3


if __name__ == "__main__":
    unittest.main()
