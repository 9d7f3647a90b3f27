"""One-stage mimic students (mimic_dense.py): MimicRetinaNet and MimicFCOS, their RoIs from the
ground truth and their own detections, teachers one- or two-stage, the cache, the export."""

import os
import tempfile
import unittest

import pytest
import torch

from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from quant_mimic.export import export_student
from quant_mimic.export.student_file import example_images
from quant_mimic.mimic_dense import DenseMimicRoIs
from quant_mimic.testing import save_random_teacher, tiny_mimic_cfg, train_losses

from .common import build_model_no_weights, get_config, random_inputs

RETINA_QM = "Synth/retinanet_R18-1-16_FPN_quant_mimic.yaml"
FCOS_QM = "Synth/fcos_R18-1-16_FPN_quant_mimic.yaml"
RETINA_MIMIC = "Synth/retinanet_R18-1-16_FPN_mimic.yaml"
FCOS_SCRATCH = "Synth/fcos_R18-1-16_FPN_scratch.yaml"


def _step(model, inputs):
    model.train()
    with EventStorage() as storage:
        losses = model(inputs)
        sum(losses.values()).backward()
    return losses, storage


class TestDenseMimicRoIs(unittest.TestCase):
    def test_jittered_copies_stay_near_their_box_and_in_the_image(self):
        rois = DenseMimicRoIs(["gt"], num_detections=5, gt_copies=6, gt_jitter=0.2)
        gt = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 30.0, 90.0]])
        torch.manual_seed(0)
        out = rois.jittered_gt(gt, (100, 60))
        self.assertEqual(out.shape, (7 * 2, 4))
        torch.testing.assert_close(out[:2], torch.tensor([[10.0, 20, 50, 40], [0, 0, 30, 90]]))
        copies = out[2:].reshape(6, 2, 4)
        wh = (gt[:, 2:] - gt[:, :2]).repeat(1, 2)
        self.assertTrue(((copies - gt).abs() <= 0.2 * wh + 1e-5).all())
        self.assertTrue((out[:, 0::2] >= 0).all() and (out[:, 0::2] <= 60).all())
        self.assertTrue((out[:, 1::2] >= 0).all() and (out[:, 1::2] <= 100).all())
        self.assertGreater(float((copies - gt).abs().max()), 0.0)

    def test_sources_counts_and_an_image_without_ground_truth(self):
        dets = []
        for n in (50, 3):
            d = Instances((64, 64))
            d.pred_boxes = Boxes(torch.rand(n, 4).sort(dim=1).values * 60)
            dets.append(d)
        gts = []
        for n in (2, 0):
            g = Instances((64, 64))
            g.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, 30.0, 30.0]] * n).reshape(n, 4))
            gts.append(g)
        sizes, cpu = [(64, 64)] * 2, torch.device("cpu")
        both = DenseMimicRoIs(["gt", "detections"], num_detections=8, gt_copies=4)
        self.assertEqual([len(b) for b in both(dets, gts, sizes, cpu)], [2 * 5 + 8, 0 + 3])
        gt_only = DenseMimicRoIs(["gt"], num_detections=8, gt_copies=4)
        self.assertEqual([len(b) for b in gt_only(None, gts, sizes, cpu)], [10, 0])
        det_only = DenseMimicRoIs(["detections"], num_detections=8)
        self.assertEqual([len(b) for b in det_only(dets, gts, sizes, cpu)], [8, 3])
        with self.assertRaisesRegex(ValueError, "DENSE_ROIS.SOURCES"):
            DenseMimicRoIs(["proposals"])
        with self.assertRaisesRegex(ValueError, "DENSE_ROIS.SOURCES"):
            DenseMimicRoIs([])


class TestOneStageStudents(unittest.TestCase):
    def test_training_step_losses_gradients_and_frozen_teacher(self):
        for config, own in ((RETINA_QM, "loss_cls"), (FCOS_QM, "loss_fcos_ctr")):
            with self.subTest(config=config):
                cfg = get_config(config)
                model = build_model_no_weights(cfg)
                self.assertEqual(model.mimic_head.pyramid, (3, 7))
                before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
                losses, storage = _step(model, random_inputs(cfg))
                self.assertIn("loss_mimic", losses)
                self.assertIn(own, losses)
                self.assertTrue(all(torch.isfinite(v) for v in losses.values()), losses)
                unused = [
                    n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
                ]
                self.assertEqual(unused, [])
                self.assertTrue(all(p.grad is None for p in model.teacher.parameters()))
                for k, v in model.teacher.state_dict().items():
                    self.assertTrue(torch.equal(v, before[k]), k)
                self.assertFalse(any("teacher" in k for k in model.state_dict()))
                self.assertTrue(any(k.startswith("mimic_adapters.") for k in model.state_dict()))
                # 3 boxes × (1 + 4 copies) + 64 detections, and 64 detections on the empty image
                self.assertEqual(storage.history("mimic/num_rois").latest(), 15 + 64 + 64)
                self.assertIn("mimic/loss_ratio", storage.histories())
                self.assertIn("mimic/student_zero_fraction", storage.histories())

    def test_a_batch_without_ground_truth_trains_on_the_detections(self):
        for config in (RETINA_QM, FCOS_QM):
            with self.subTest(config=config):
                cfg = get_config(config)
                model = build_model_no_weights(cfg)
                inputs = random_inputs(cfg, num_boxes=(0, 0))
                losses, storage = _step(model, inputs)
                self.assertEqual(storage.history("mimic/num_rois").latest(), 2 * 64)
                self.assertGreater(float(losses["loss_mimic"]), 0.0)
                self.assertIsNotNone(model.mimic_adapters[0].weight.grad)
                # ground truth only: no RoI at all, a zero loss that still backpropagates
                cfg = get_config(config, ["MODEL.MIMIC.DENSE_ROIS.SOURCES", ["gt"]])
                model = build_model_no_weights(cfg)
                losses, storage = _step(model, inputs)
                self.assertEqual(storage.history("mimic/num_rois").latest(), 0)
                self.assertEqual(float(losses["loss_mimic"]), 0.0)

    def test_inference_is_the_plain_detectors(self):
        for config, plain in ((RETINA_QM, "RetinaNet"), (FCOS_QM, "FCOS")):
            with self.subTest(config=config):
                cfg = get_config(config)
                model = build_model_no_weights(cfg).eval()
                pcfg = get_config(config, ["MODEL.META_ARCHITECTURE", plain])
                student = build_model_no_weights(pcfg).eval()
                missing, unexpected = student.load_state_dict(model.state_dict(), strict=False)
                self.assertEqual(missing, [])
                self.assertTrue(all(k.startswith("mimic_adapters.") for k in unexpected))
                inputs = random_inputs(cfg, sizes=((160, 192),), num_boxes=(0,))
                with torch.no_grad():
                    a, b = model(inputs)[0]["instances"], student(inputs)[0]["instances"]
                torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)
                torch.testing.assert_close(a.scores, b.scores)

    def test_teacher_levels_differing_from_the_students_are_the_clear_error(self):
        # a two-stage FPN teacher's ROI heads read p2..p5; the one-stage student's p3..p7
        opts = ["MODEL.MIMIC.TEACHER.CONFIG_FILE", "Synth/faster_rcnn_R18_FPN_teacher.yaml"]
        with self.assertRaisesRegex(ValueError, r"student \{'p3': 8.*teacher \{'p2': 4"):
            build_model_no_weights(get_config(RETINA_MIMIC, _abs(opts)))
        # the same teacher on the levels both have: p3..p6
        levels = ["p3", "p4", "p5", "p6"]
        opts += ["MODEL.MIMIC.STUDENT_FEATURES", levels, "MODEL.MIMIC.TEACHER_FEATURES", levels]
        opts += ["MODEL.MIMIC.LEVEL_ASSIGNMENT", "pyramid"]
        cfg = get_config(RETINA_MIMIC, _abs(opts))
        model = build_model_no_weights(cfg)
        self.assertEqual(model.mimic_head.pyramid, (3, 6))
        losses, _ = _step(model, random_inputs(cfg))
        self.assertTrue(torch.isfinite(losses["loss_mimic"]))

    def test_model_zoo_one_stage_teacher(self):
        cfg = get_config(
            "COCO-Detection/retinanet_R18-1-16_FPN_quant_mimic_from_R50_RetinaNet.yaml",
            ["INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 160],
        )
        self.assertTrue(cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE.endswith("retinanet_R_50_FPN_1x.yaml"))
        model = build_model_no_weights(cfg)
        self.assertEqual(model.mimic_adapters[0].weight.shape, (256, 16, 1, 1))
        losses, _ = _step(model, random_inputs(cfg, sizes=((128, 160),), num_boxes=(2,)))
        self.assertTrue(torch.isfinite(losses["loss_mimic"]))

    def test_teacher_cache_gives_the_same_losses(self):
        with tempfile.TemporaryDirectory() as tmp:
            base = tiny_mimic_cfg(os.path.join(tmp, "a"), RETINA_QM)
            teacher = os.path.join(tmp, "teacher.pth")
            save_random_teacher(base, teacher, seed=3)
            plain, _ = train_losses(
                tiny_mimic_cfg(os.path.join(tmp, "b"), RETINA_QM, teacher=teacher)
            )
            cache = os.path.join(tmp, "cache")
            cfg = tiny_mimic_cfg(os.path.join(tmp, "c"), RETINA_QM, cache=cache, teacher=teacher)
            cached, model = train_losses(cfg)
            self.assertEqual(len(plain), 4)
            torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain))
            self.assertGreater(model.teacher_cache.misses, 0)


class TestOneStageExport(unittest.TestCase):
    @pytest.mark.slow
    def test_onnx_parity_with_detections(self):
        for config in (RETINA_QM, FCOS_SCRATCH):
            with self.subTest(config=config), tempfile.TemporaryDirectory() as tmp:
                # scores spread out (a random head's all sit at its prior, 0.01, within 1e-7 of
                # each other: ties at the top-100 cut), and a threshold in a wide gap of them
                cfg = get_config(config)
                model = build_model_no_weights(cfg)
                torch.manual_seed(0)
                torch.nn.init.normal_(model.head.cls_score.weight, std=1.0)
                images = example_images(cfg, sizes=((192, 256), (128, 160)))
                thresh = _threshold_in_a_gap(model, images[0])
                cfg = get_config(config, ["MODEL.RETINANET.SCORE_THRESH_TEST", thresh])
                cfg.defrost()
                cfg.MODEL.FCOS.SCORE_THRESH_TEST = thresh
                weights = os.path.join(tmp, "model.pth")
                torch.save({"model": model.state_dict()}, weights)
                out = os.path.join(tmp, "student.onnx")
                done = export_student(cfg, weights, out, ort_threads=0, check_images=images)
                self.assertTrue(done["ok"], done["parity"])
                self.assertEqual(len(done["parity"]), 2)
                # detections on the first image, below the top-100 cut (the second: any, 0 too)
                self.assertTrue(0 < done["parity"][0]["count_ref"] < 100, done["parity"])
                from quant_mimic.export import read_contract

                contract = read_contract(out)
                self.assertAlmostEqual(contract["score_threshold"], thresh)
                self.assertEqual(len(contract["classes"]), 6)


def _ddp_worker(tmp):
    from quant_mimic import Trainer

    # 2 images per rank: the synthetic heads' BatchNorm needs more than one value per channel on
    # the tiny images' 1×1 p7
    cfg = tiny_mimic_cfg(tmp, RETINA_QM, max_iter=2, extra=["SOLVER.IMS_PER_BATCH", 4])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    assert not isinstance(model.module.teacher, torch.nn.parallel.DistributedDataParallel)
    from detectron2.utils import comm

    if comm.is_main_process():  # detectron2 logs the reduced losses on the main process
        assert "loss_mimic" in trainer.storage.histories()


class TestOneStageDDP(unittest.TestCase):
    @pytest.mark.slow
    def test_two_process_gloo(self):
        from quant_mimic.engine import launch

        with tempfile.TemporaryDirectory() as tmp:
            launch(_ddp_worker, 2, dist_url="auto", args=(tmp,))
            self.assertTrue(os.path.isfile(os.path.join(tmp, "out", "model_final.pth")))


def _threshold_in_a_gap(model, image) -> float:
    """A score threshold in the widest gap between the 10th and the 60th best scores of ``model``
    on ``image`` (no detection within float noise of it)."""
    from quant_mimic.export import StudentInference

    module = StudentInference(model, fold_bn=False)
    module.model.test_score_thresh = 0.0
    with torch.no_grad():
        scores = module(image)[1].sort(descending=True).values[10:60]
    gaps = scores[:-1] - scores[1:]
    i = int(gaps.argmax())
    return float(scores[i] + scores[i + 1]) / 2


def _abs(opts):
    """``opts`` with the teacher config path (relative to configs/) made absolute."""
    from quant_mimic.fileio import CONFIGS_DIR

    out = list(opts)
    for i in range(0, len(out), 2):
        if out[i] == "MODEL.MIMIC.TEACHER.CONFIG_FILE":
            out[i + 1] = os.path.join(CONFIGS_DIR, out[i + 1])
    return out


if __name__ == "__main__":
    unittest.main()
