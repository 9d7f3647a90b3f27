import os
import tempfile
import unittest

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils.events import EventStorage

from quant_mimic import MimicRCNN, Trainer, add_quantmimic_config, mimic_loss, quantize, setup_cfg
from quant_mimic.engine import launch
from quant_mimic.teacher import mimic_quantizer_args

from .common import (
    CONFIG_DIR,
    FAST_OPTS,
    build_model_no_weights,
    get_config,
    random_inputs,
    register_tiny_dataset,
    trainer_opts,
)

QM = "PascalVOC-Detection/faster_rcnn_R18-1-16_C4_quant_mimic.yaml"
STUDENT = "PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml"


def teacher_state(model):
    t = model.teacher
    return {k: v.clone() for k, v in t.state_dict().items()}


class TestMimicLoss(unittest.TestCase):
    def test_hand_computation_eq6(self):
        # N = 2 RoIs, C = 1, S = 2
        ft = torch.tensor([[[[0.4, 1.6], [2.5, 3.0]]], [[[0.0, 0.7], [1.2, 5.1]]]])
        fs = torch.tensor(
            [[[[1.4, 1.2], [2.4, -1.0]]], [[[0.6, 0.5], [3.6, 4.4]]]], requires_grad=True
        )
        # Q(ft) = [[0,2],[2,3]], [[0,1],[1,5]];  Q(fs) = [[1,1],[2,0]], [[1,0],[4,4]]
        # squared diffs: 1+1+0+9 = 11 and 1+1+9+1 = 12 -> L = (11+12)/(2*2) = 5.75
        loss, mismatch = mimic_loss(ft, fs, quantize_teacher=True, quantize_student=True)
        self.assertAlmostEqual(loss.item(), 5.75, places=6)
        # every entry above 0.3 except entry (0,1,0) [2 vs 2] -> 3/4 and 4/4 -> 0.875
        self.assertAlmostEqual(mismatch.item(), 0.875, places=6)
        # eq. 5 (no Q): plain L2 / (2N)
        loss5, _ = mimic_loss(ft, fs, quantize_teacher=False, quantize_student=False)
        self.assertAlmostEqual(loss5.item(), ((ft - fs) ** 2).sum().item() / 4, places=5)
        # Table 4 rows: one side only
        lt, _ = mimic_loss(ft, fs, quantize_teacher=True, quantize_student=False)
        self.assertAlmostEqual(lt.item(), ((quantize(ft) - fs) ** 2).sum().item() / 4, places=5)
        ls, _ = mimic_loss(ft, fs, quantize_teacher=False, quantize_student=True)
        self.assertAlmostEqual(ls.item(), ((ft - quantize(fs)) ** 2).sum().item() / 4, places=5)
        # straight-through gradient: d/dfs of 1/(2N)||Q(ft)-Q(fs)||² = (Q(fs)-Q(ft))/N
        loss.backward()
        self.assertTrue(torch.allclose(fs.grad, (quantize(fs.detach()) - quantize(ft)) / 2))

    def test_loss_normalization_mean_is_per_entry(self):
        g = torch.Generator().manual_seed(0)
        ft, fs = torch.randn(5, 6, 3, 3, generator=g) * 3, torch.randn(5, 6, 3, 3, generator=g) * 3
        for q in (True, False):
            total, _ = mimic_loss(ft, fs, quantize_teacher=q, quantize_student=q)
            mean, _ = mimic_loss(
                ft, fs, quantize_teacher=q, quantize_student=q, normalization="mean"
            )
            self.assertAlmostEqual(mean.item(), total.item() / (6 * 3 * 3), places=5)
        with self.assertRaisesRegex(ValueError, "normalization"):
            mimic_loss(ft, fs, normalization="avg")
        cfg = get_config(
            "Synth/rfcn_VGG-1-32_mimic.yaml", ["MODEL.MIMIC.LOSS_NORMALIZATION", "mean"]
        )
        self.assertEqual(build_model_no_weights(cfg).mimic_head.loss_normalization, "mean")
        with self.assertRaisesRegex(ValueError, "LOSS_NORMALIZATION"):
            get_config("Synth/rfcn_VGG-1-32_mimic.yaml", ["MODEL.MIMIC.LOSS_NORMALIZATION", "avg"])

    def test_empty_rois(self):
        fs = torch.zeros(0, 4, 3, 3, requires_grad=True)
        loss, mismatch = mimic_loss(torch.zeros(0, 4, 3, 3), fs)
        self.assertEqual(loss.item(), 0.0)
        self.assertTrue(torch.isfinite(mismatch))
        loss.backward()
        self.assertIsNotNone(fs.grad)


def _bare_cfg(**kv):
    cfg = get_cfg()
    add_quantmimic_config(cfg)
    for k, v in kv.items():
        cfg.merge_from_list([k.replace("__", "."), v])
    return cfg


class TestOneQuantizerConfig(unittest.TestCase):
    """Q of the loss comes from the quantized teacher's MODEL.QUANTIZATION (one source of truth)."""

    QT = {
        "MODEL__BACKBONE__NAME": "build_quantized_backbone",
        "MODEL__QUANTIZATION__STRIDE": 0.5,
        "MODEL__QUANTIZATION__METHOD": "pow2",
        "MODEL__QUANTIZATION__CLIP": 4.0,
        "MODEL__QUANTIZATION__POW2_MIN_EXP": -3,
    }

    def test_defaults_inherit_the_quantized_teacher(self):
        q = mimic_quantizer_args(_bare_cfg(), _bare_cfg(**self.QT))
        self.assertEqual(q, {"stride": 0.5, "method": "pow2", "clip": 4.0, "pow2_min_exp": -3})

    def test_full_precision_teacher_uses_own_quantization_and_override(self):
        tcfg = _bare_cfg()  # not quantized
        q = mimic_quantizer_args(_bare_cfg(MODEL__QUANTIZATION__STRIDE=2.0), tcfg)
        self.assertEqual((q["stride"], q["method"], q["clip"]), (2.0, "uniform", None))
        q = mimic_quantizer_args(_bare_cfg(MODEL__MIMIC__QUANT_STRIDE=0.25), tcfg)
        self.assertEqual(q["stride"], 0.25)
        q = mimic_quantizer_args(_bare_cfg(MODEL__MIMIC__QUANT_METHOD="pow2"), tcfg)
        self.assertEqual(q["method"], "pow2")

    def test_override_must_agree_with_quantized_teacher(self):
        ok = _bare_cfg(MODEL__MIMIC__QUANT_STRIDE=0.5, MODEL__MIMIC__QUANT_METHOD="pow2")
        self.assertEqual(mimic_quantizer_args(ok, _bare_cfg(**self.QT))["stride"], 0.5)
        for key, value, text in (
            ("MODEL__MIMIC__QUANT_STRIDE", 1.0, "QUANT_STRIDE = 1.0"),
            ("MODEL__MIMIC__QUANT_METHOD", "uniform", "QUANT_METHOD = 'uniform'"),
        ):
            with self.assertRaises(ValueError) as e:
                mimic_quantizer_args(_bare_cfg(**{key: value}), _bare_cfg(**self.QT))
            self.assertIn(text, str(e.exception))
            self.assertIn("teacher", str(e.exception))

    def test_bad_override_is_rejected(self):
        with self.assertRaises(ValueError):
            mimic_quantizer_args(_bare_cfg(MODEL__MIMIC__QUANT_METHOD="log"), _bare_cfg())

    def test_pow2_row_needs_one_edit(self):
        # Table 6: naming the pow2 teacher is enough; the loss follows it.
        model = build_model_no_weights(get_config("WIDERFace/rfcn_VGG-1-32_quant_mimic_pow2.yaml"))
        self.assertEqual(model.mimic_head.quantizer["method"], "pow2")
        model = build_model_no_weights(get_config("WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml"))
        q = model.mimic_head.quantizer
        self.assertEqual((q["method"], q["stride"]), ("uniform", 1.0))


class TestMimicRCNNModel(unittest.TestCase):
    def test_teacher_is_frozen_out_of_state_and_eval(self):
        cfg = get_config(QM)
        model = build_model_no_weights(cfg)
        self.assertIsInstance(model, MimicRCNN)
        self.assertFalse(
            any(k.startswith("teacher") or "_teacher" in k for k in model.state_dict())
        )
        self.assertIn("mimic_adapters.0.weight", model.state_dict())
        self.assertFalse(any(p.requires_grad for p in model.teacher.parameters()))
        teacher_ids = {id(p) for p in model.teacher.parameters()}
        self.assertFalse(teacher_ids & {id(p) for p in model.parameters()})
        model.train()
        self.assertFalse(model.teacher.training)
        self.assertFalse(any(m.training for m in model.teacher.modules()))
        with inference_context(model):  # EvalHook's path: eval inside, previous mode restored after
            self.assertFalse(model.training)
        model.train(True)  # EvalHook restores the previous mode like this
        self.assertFalse(any(m.training for m in model.teacher.modules()))
        # the teacher's weights come from its own (quantized) config
        self.assertEqual(type(model.teacher.backbone).__name__, "QuantizedBackbone")
        self.assertEqual(model.teacher.backbone.output_shape()["res4"].channels, 256)
        self.assertEqual(model.backbone.output_shape()["res4"].channels, 16)

    def test_teacher_follows_device_and_dtype(self):
        model = build_model_no_weights(get_config(QM))
        model.double()
        self.assertTrue(all(p.dtype == torch.float64 for p in model.teacher.parameters()))
        self.assertEqual(model.teacher.device, model.device)

    def test_loss_keys_gradients_and_diagnostics(self):
        cfg = get_config(QM)
        model = build_model_no_weights(cfg)
        inputs = random_inputs(cfg)
        model.train()
        with EventStorage() as storage:
            losses = model(inputs)
            self.assertEqual(
                set(losses),
                {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "loss_mimic"},
            )
            sum(losses.values()).backward()
            for key in (
                "mimic/num_rois",
                "mimic/loss_unweighted",
                "mimic/mismatch_ratio",
                "mimic/lambda",
            ):
                self.assertIn(key, storage.histories())
            self.assertLessEqual(
                storage.history("mimic/num_rois").latest(), 2 * cfg.MODEL.MIMIC.NUM_ROIS
            )
        self.assertGreater(losses["loss_mimic"].item(), 0)
        # gradient reaches the adapter and the student backbone through Q
        self.assertGreater(model.mimic_adapters[0].weight.grad.abs().sum().item(), 0)
        self.assertGreater(model.backbone.res4[0].conv1.weight.grad.abs().sum().item(), 0)
        self.assertTrue(all(p.grad is None for p in model.teacher.parameters()))
        # no trainable parameter is left without a gradient (DDP without find_unused_parameters)
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        self.assertEqual(unused, [])

    def test_num_rois_and_gt_boxes(self):
        for add_gt in (False, True):
            cfg = get_config(QM, ["MODEL.MIMIC.NUM_ROIS", 5, "MODEL.MIMIC.ADD_GT_BOXES", add_gt])
            model = build_model_no_weights(cfg)
            model.train()
            with EventStorage() as storage:
                model(random_inputs(cfg, num_boxes=(3, 0)))
                n = storage.history("mimic/num_rois").latest()
            self.assertEqual(n, 2 * 5 + (3 if add_gt else 0))

    def test_gradient_of_mimic_alone_reaches_backbone_and_adapter(self):
        cfg = get_config(QM)
        model = build_model_no_weights(cfg)
        model.train()
        with EventStorage():
            losses = model(random_inputs(cfg))
            losses["loss_mimic"].backward()
        self.assertGreater(model.mimic_adapters[0].weight.grad.abs().sum().item(), 0)
        self.assertGreater(model.backbone.stem.conv1.weight.grad.abs().sum().item(), 0)
        self.assertIsNone(model.roi_heads.box_predictor.cls_score.weight.grad)

    def test_switches_both_off_is_plain_l2(self):
        for qt, qs in ((False, False), (True, False), (False, True), (True, True)):
            cfg = get_config(
                QM, ["MODEL.MIMIC.QUANTIZE_TEACHER", qt, "MODEL.MIMIC.QUANTIZE_STUDENT", qs]
            )
            model = build_model_no_weights(cfg)
            model.train()
            inputs = random_inputs(cfg)
            with EventStorage():
                images = model.preprocess_image(inputs)
                feats = model.backbone(images.tensor)
                from detectron2.structures import Boxes

                boxes = [
                    Boxes(torch.tensor([[10.0, 10.0, 90.0, 120.0], [0.0, 0.0, 50.0, 40.0]]))
                ] * 2
                head = model.mimic_head
                got = head.losses(model.teacher_maps(inputs), feats, boxes)["loss_mimic"]
                with torch.no_grad():
                    timg = model.teacher.preprocess_image(inputs)
                    ft = head.teacher_poolers[0](
                        [model.teacher.backbone(timg.tensor)["res4"]], boxes
                    )
                fs = model.mimic_adapters[0](head.student_poolers[0]([feats["res4"]], boxes))
                ft = quantize(ft) if qt else ft
                fs = quantize(fs) if qs else fs
                expected = ((ft - fs) ** 2).sum() / (2 * 4)
            self.assertTrue(torch.allclose(got, expected, rtol=1e-5), (qt, qs, got, expected))

    def test_identical_student_and_teacher_give_zero_loss(self):
        with tempfile.TemporaryDirectory() as d:
            plain = get_config(STUDENT, ["MODEL.RESNETS.NORM", "FrozenBN"])
            teacher_yaml = os.path.join(d, "teacher.yaml")
            with open(teacher_yaml, "w") as f:
                f.write(plain.dump())
            cfg = get_config(
                QM,
                ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.MIMIC.TEACHER.CONFIG_FILE", teacher_yaml,
                 "MODEL.MIMIC.ADAPTER", "identity", "MODEL.MIMIC.QUANTIZE_TEACHER", False,
                 "MODEL.MIMIC.QUANTIZE_STUDENT", False],
            )  # fmt: skip
            model = build_model_no_weights(cfg)
            with torch.no_grad():
                for p in model.backbone.parameters():
                    p.uniform_(-0.5, 0.5)
            path = os.path.join(d, "student.pth")
            torch.save({"model": model.state_dict()}, path)
            model.load_teacher(path)
            for q in (False, True):
                model.mimic_head.quantize_teacher = model.mimic_head.quantize_student = q
                model.train()
                with EventStorage():
                    losses = model(random_inputs(cfg))
                self.assertEqual(losses["loss_mimic"].item(), 0.0)

    def test_teacher_load_is_strict(self):
        cfg = get_config(QM)
        model = build_model_no_weights(cfg)
        with tempfile.TemporaryDirectory() as d:
            good = os.path.join(d, "teacher.pth")
            torch.save({"model": model.teacher.state_dict()}, good)
            model.load_teacher(good)  # exact match loads
            self.assertTrue(model.frozen_teacher.loaded)
            sd = dict(model.teacher.state_dict())
            sd["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(
                3, 512
            )  # wrong class count
            bad_shape = os.path.join(d, "bad_shape.pth")
            torch.save({"model": sd}, bad_shape)
            with self.assertRaisesRegex(RuntimeError, "bad_shape.pth.*cls_score"):
                model.load_teacher(bad_shape)
            prefixed = os.path.join(d, "prefixed.pth")
            torch.save(
                {"model": {"module.x." + k: v for k, v in model.teacher.state_dict().items()}},
                prefixed,
            )
            with self.assertRaisesRegex(RuntimeError, "missing in file"):
                model.load_teacher(prefixed)
            with self.assertRaisesRegex(FileNotFoundError, "nope.pth"):
                model.load_teacher(os.path.join(d, "nope.pth"))

    def test_training_without_loading_teacher_fails(self):
        cfg = get_config(QM, ["MODEL.MIMIC.TEACHER.WEIGHTS", "some/teacher.pth"])
        model = build_model_no_weights(cfg)
        model.train()
        with EventStorage(), self.assertRaisesRegex(RuntimeError, "load_teacher"):
            model(random_inputs(cfg))

    def test_inference_is_the_students(self):
        cfg = get_config(QM)
        model = build_model_no_weights(cfg)
        model.eval()
        student_cfg = get_config(STUDENT)
        student = build_model_no_weights(student_cfg)
        missing = student.load_state_dict(model.state_dict(), strict=False)
        self.assertEqual(missing.missing_keys, [])
        self.assertEqual(
            missing.unexpected_keys, ["mimic_adapters.0.weight", "mimic_adapters.0.bias"]
        )
        student.eval()
        inputs = random_inputs(cfg, sizes=((200, 249),), num_boxes=(0,))
        with torch.no_grad():
            model.teacher.backbone.forward = None  # the teacher must not run
            a, b = model(inputs)[0]["instances"], student(inputs)[0]["instances"]
        self.assertTrue(torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor))
        self.assertTrue(torch.equal(a.scores, b.scores))

    def test_loss_weight_schedule(self):
        cfg = get_config(
            QM,
            ["MODEL.MIMIC.LOSS_WEIGHT", 2.0, "MODEL.MIMIC.START_ITER", 10,
             "MODEL.MIMIC.WARMUP_ITERS", 4, "MODEL.MIMIC.STOP_ITER", 100],
        )  # fmt: skip
        model = build_model_no_weights(cfg)
        got = [model.mimic_head.current_loss_weight(i) for i in (0, 9, 10, 11, 13, 50, 99, 100)]
        self.assertEqual(got, [0.0, 0.0, 0.5, 1.0, 2.0, 2.0, 2.0, 0.0])


def _trainer_cfg(tmp, max_iter=3, extra=()):
    name = register_tiny_dataset("qm_tiny_voc", os.path.join(tmp, "data"))
    return setup_cfg(
        os.path.join(CONFIG_DIR, QM),
        FAST_OPTS + trainer_opts(name, os.path.join(tmp, "out"), max_iter) + list(extra),
    )


class TestMimicWithTrainer(unittest.TestCase):
    def test_teacher_untouched_by_training_and_absent_from_checkpoints(self):
        with tempfile.TemporaryDirectory() as tmp:
            # a teacher with trainable-type BN, so that drifting running statistics would show
            tcfg = get_config(
                "PascalVOC-Detection/faster_rcnn_R18_C4_teacher_quantized.yaml",
                ["MODEL.RESNETS.NORM", "BN"],
            )
            teacher_yaml = os.path.join(tmp, "teacher.yaml")
            with open(teacher_yaml, "w") as f:
                f.write(tcfg.dump())
            cfg = _trainer_cfg(
                tmp,
                max_iter=3,
                extra=["MODEL.MIMIC.TEACHER.CONFIG_FILE", teacher_yaml,
                       "TEST.PRECISE_BN.ENABLED", True, "TEST.PRECISE_BN.NUM_ITER", 2],
            )  # fmt: skip
            # a teacher checkpoint to load strictly (random weights)
            probe = Trainer.build_model(cfg, load_teacher=False)
            tpath = os.path.join(tmp, "teacher.pth")
            torch.save({"model": probe.teacher.state_dict()}, tpath)
            cfg.defrost()
            cfg.MODEL.MIMIC.TEACHER.WEIGHTS = tpath
            cfg.freeze()
            trainer = Trainer(cfg)
            trainer.resume_or_load(resume=False)
            model = trainer.model
            self.assertTrue(any(k.endswith("running_mean") for k in model.teacher.state_dict()))
            before = teacher_state(model)
            params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
            self.assertFalse(params & {id(p) for p in model.teacher.parameters()})
            self.assertIn(id(model.mimic_adapters[0].weight), params)
            trainer.train()
            after = teacher_state(model)
            for k in before:  # parameters and BN buffers, bit for bit
                self.assertTrue(torch.equal(before[k], after[k]), k)
            ckpt = torch.load(os.path.join(tmp, "out", "model_final.pth"), weights_only=True)
            self.assertFalse(any("teacher" in k for k in ckpt["model"]))
            self.assertIn("mimic_adapters.0.weight", ckpt["model"])
            # the student checkpoint loads into the plain student config (deployment)
            student = build_model_no_weights(get_config(STUDENT))
            inc = DetectionCheckpointer(student).load(os.path.join(tmp, "out", "model_final.pth"))
            self.assertIsNotNone(inc)
            self.assertTrue(
                torch.equal(student.backbone.stem.conv1.weight, model.backbone.stem.conv1.weight)
            )


def _ddp_worker(tmp):
    cfg = _trainer_cfg(tmp, max_iter=2)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    assert not any(
        isinstance(m, torch.nn.parallel.DistributedDataParallel)
        for m in [trainer.model.module.teacher]
    )


class TestMimicDDP(unittest.TestCase):
    @pytest.mark.slow
    def test_two_process_gloo(self):
        with tempfile.TemporaryDirectory() as tmp:
            launch(_ddp_worker, 2, dist_url="auto", args=(tmp,))
            self.assertTrue(os.path.isfile(os.path.join(tmp, "out", "model_final.pth")))


if __name__ == "__main__":
    unittest.main()
