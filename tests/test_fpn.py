"""Mimic beyond C4 / R-FCN: FPN students and teachers (level pairing, adapters, Q on FPN levels),
the divided ResNet-FPN, Cascade R-CNN students, model-zoo teacher names."""

import os
import unittest

import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from quant_mimic.config import model_zoo_config_file, resolve_teacher_config_path
from quant_mimic.mimic_head import pyramid_levels
from quant_mimic.teacher import build_teacher_cfg

from .common import CONFIG_DIR, build_model_no_weights, get_config, random_inputs

FPN_QM = "Synth/faster_rcnn_R18-1-16_FPN_quant_mimic.yaml"
FPN_MIMIC = "Synth/faster_rcnn_R18-1-16_FPN_mimic.yaml"
CASCADE = "Synth/cascade_rcnn_R18-1-16_FPN_quant_mimic.yaml"
ZOO = "COCO-Detection/faster_rcnn_R18-1-16_FPN_quant_mimic_from_R50_FPN.yaml"


class TestDividedResNetFPN(unittest.TestCase):
    def test_widths_divided_and_levels(self):
        for depth, n in ((18, 16), (34, 4), (50, 16)):
            with self.subTest(depth=depth, n=n):
                cfg = get_config(
                    "Synth/faster_rcnn_R18_FPN_teacher.yaml",
                    ["MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.CHANNEL_DIVISOR", n]
                    + ["MODEL.RESNETS.RES2_OUT_CHANNELS", 64 if depth < 50 else 256],
                )
                backbone = build_model(cfg).backbone
                shapes = backbone.output_shape()
                self.assertEqual(sorted(shapes), ["p2", "p3", "p4", "p5", "p6"])
                self.assertEqual({s.channels for s in shapes.values()}, {256 // n})
                self.assertEqual([shapes[f"p{k}"].stride for k in range(2, 7)], [4, 8, 16, 32, 64])
                out = backbone(torch.zeros(1, 3, 64, 96))
                self.assertEqual(tuple(out["p3"].shape), (1, 256 // n, 8, 12))
                res5 = backbone.bottom_up.output_shape()["res5"].channels
                self.assertEqual(res5, (512 if depth < 50 else 2048) // n)


class TestLevelPairing(unittest.TestCase):
    def _model(self, opts=()):
        # the student's FPN as wide as the teacher's (4096 / 16 = 256) so that r can be the
        # identity and the pooled values can be read back on both sides
        opts = ["MODEL.FPN.OUT_CHANNELS", 4096, "MODEL.MIMIC.ADAPTER", "identity", *opts]
        return build_model_no_weights(get_config(FPN_MIMIC, opts))

    def test_each_box_on_the_expected_level_on_both_sides(self):
        model = self._model()
        self.assertEqual(model.mimic_head.pyramid, (2, 5))
        # ROIPooler's rule: level = floor(4 + log2(sqrt(area) / 224)), clamped to [2, 5]
        sides = {16: 2, 60: 2, 112: 3, 150: 3, 224: 4, 300: 4, 448: 5, 900: 5}
        boxes = Boxes(torch.tensor([[0.0, 0.0, s, s] for s in sides]))
        t_maps = {f"p{k}": torch.full((1, 256, 64, 64), float(k)) for k in range(2, 7)}
        s_maps = {f"p{k}": torch.full((1, 256, 64, 64), 10.0 * k) for k in range(2, 7)}
        [(f_t, f_s)] = model.mimic_head.paired_features(t_maps, s_maps, [boxes], False)
        self.assertEqual(f_t.shape, (len(sides), 256, 7, 7))
        got_t = sorted(f_t.flatten(1).mean(1).tolist())
        self.assertEqual(got_t, sorted(float(v) for v in sides.values()))
        # row by row the student side comes from the same level as the teacher side
        torch.testing.assert_close(f_s, 10 * f_t)

    def test_per_level_and_shared_adapters(self):
        shared = build_model_no_weights(get_config(FPN_QM))
        self.assertEqual(len(shared.mimic_adapters), 1)
        per_level = build_model_no_weights(
            get_config(FPN_QM, ["MODEL.MIMIC.FPN_ADAPTER", "per_level"])
        )
        self.assertEqual(len(per_level.mimic_adapters), 4)
        self.assertEqual(per_level.mimic_adapters[2].weight.shape, (256, 16, 1, 1))
        every = build_model_no_weights(
            get_config(FPN_QM, ["MODEL.MIMIC.LEVEL_ASSIGNMENT", "every"])
        )
        self.assertIsNone(
            every.mimic_head.pyramid
        )  # every RoI on every pair: one adapter and term each
        self.assertEqual(len(every.mimic_adapters), 4)
        with self.assertRaisesRegex(ValueError, "FPN_ADAPTER"):
            get_config(FPN_QM, ["MODEL.MIMIC.FPN_ADAPTER", "both"])

    def test_loss_counts_each_roi_once(self):
        # eq. 5/6 over the pyramid: 1/(2N) Σ_i over the N RoIs, each on its one level
        model = self._model(["MODEL.MIMIC.QUANTIZE_TEACHER", False])
        model.train()
        boxes = [Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 300.0, 300.0]]))]
        t_maps = {f"p{k}": torch.full((1, 256, 64, 64), 1.0) for k in range(2, 7)}
        s_maps = {f"p{k}": torch.zeros(1, 256, 64, 64, requires_grad=True) for k in range(2, 7)}
        with EventStorage():
            loss = model.mimic_head.losses(t_maps, s_maps, boxes)["loss_mimic"]
        self.assertAlmostEqual(loss.item(), 256 * 7 * 7 * 2 / (2 * 2), places=3)

    def test_mismatched_level_ranges_are_an_error_naming_both(self):
        opts = ["MODEL.MIMIC.TEACHER_FEATURES", ["p3", "p4", "p5", "p6"]]
        with self.assertRaisesRegex(ValueError, r"student \{'p2': 4.*teacher \{'p3': 8"):
            build_model_no_weights(get_config(FPN_QM, opts))
        shapes = {"a": type("S", (), {"stride": 4})(), "b": type("S", (), {"stride": 16})()}
        with self.assertRaisesRegex(ValueError, "not a pyramid"):
            pyramid_levels(None, ["a", "b"], ["a", "b"], shapes, shapes)
        self.assertIsNone(pyramid_levels(None, ["a"], ["a"], shapes, shapes))


class TestFPNAndCascadeTraining(unittest.TestCase):
    def test_one_step_with_frozen_fpn_teacher(self):
        for config in (FPN_QM, FPN_MIMIC, CASCADE):
            with self.subTest(config=config):
                cfg = get_config(config)
                model = build_model_no_weights(cfg)
                model.train()
                before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
                with EventStorage():
                    losses = model(random_inputs(cfg))
                self.assertIn("loss_mimic", losses)
                self.assertTrue(all(torch.isfinite(v) for v in losses.values()), losses)
                sum(losses.values()).backward()
                unused = [
                    n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
                ]
                self.assertEqual(unused, [])
                self.assertTrue(all(p.grad is None for p in model.teacher.parameters()))
                for k, v in model.teacher.state_dict().items():
                    self.assertTrue(torch.equal(v, before[k]), k)
                self.assertFalse(any("teacher" in k for k in model.state_dict()))
                if config == CASCADE:
                    self.assertIn("loss_cls_stage2", losses)


class TestQuantizedFPNWrapper(unittest.TestCase):
    def test_shapes_and_checkpoint_keys_unchanged(self):
        plain = build_model_no_weights(get_config("Synth/faster_rcnn_R18_FPN_teacher.yaml"))
        quant = build_model_no_weights(
            get_config("Synth/faster_rcnn_R18_FPN_teacher_quantized.yaml")
        )
        self.assertEqual(set(plain.state_dict()), set(quant.state_dict()))
        quant.load_state_dict(plain.state_dict())
        self.assertEqual(plain.backbone.output_shape(), quant.backbone.output_shape())
        x = torch.rand(1, 3, 64, 96) * 3
        plain.eval(), quant.eval()
        with torch.no_grad():
            a, b = plain.backbone(x), quant.backbone(x)
        for k in a:
            self.assertEqual(a[k].shape, b[k].shape)
            if k == "p6":  # not in MODEL.QUANTIZATION.IN_FEATURES
                torch.testing.assert_close(a[k], b[k])
            else:
                self.assertTrue(torch.equal(b[k], b[k].round().clamp(min=0)), k)


class TestModelZooTeachers(unittest.TestCase):
    def test_zoo_names_resolve_offline(self):
        path = model_zoo_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
        self.assertTrue(path and os.path.isfile(path))
        self.assertIsNone(model_zoo_config_file("COCO-Detection/no_such_model.yaml"))
        # in a yaml (no file of that name next to it) and on the command line
        cfg = get_config(ZOO)
        self.assertEqual(cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE, path)
        opts = ["MODEL.MIMIC.TEACHER.CONFIG_FILE", "COCO-Detection/retinanet_R_50_FPN_1x.yaml"]
        resolved = resolve_teacher_config_path(os.path.join(CONFIG_DIR, FPN_QM), opts)
        self.assertTrue(
            resolved.endswith("retinanet_R_50_FPN_1x.yaml") and os.path.isfile(resolved)
        )
        tcfg = build_teacher_cfg(cfg)
        self.assertEqual(tcfg.MODEL.RESNETS.DEPTH, 50)
        self.assertEqual(list(tcfg.MODEL.ROI_HEADS.IN_FEATURES), ["p2", "p3", "p4", "p5"])
        from quant_mimic import get_config as plain_get_config

        weights = plain_get_config(ZOO).MODEL.MIMIC.TEACHER.WEIGHTS
        self.assertTrue(weights.startswith("detectron2://COCO-Detection/faster_rcnn_R_50_FPN_1x"))

    def test_distillation_config_builds_and_steps(self):
        cfg = get_config(ZOO, ["INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 160])
        model = build_model_no_weights(cfg)
        self.assertEqual(model.mimic_head.pyramid, (2, 5))
        self.assertEqual(model.mimic_adapters[0].weight.shape, (256, 16, 1, 1))
        model.train()
        with EventStorage():
            losses = model(random_inputs(cfg, sizes=((128, 160),), num_boxes=(2,)))
        self.assertTrue(torch.isfinite(losses["loss_mimic"]))


if __name__ == "__main__":
    unittest.main()
