import os
import tempfile
import unittest

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from quant_mimic.data import register_all_quantmimic_datasets
from quant_mimic.data.synthetic import VOC_CLASSES, generate_faces, generate_voc, main
from quant_mimic.data.synthetic_cls import CLS_CLASSES, generate_cls, shared_images
from quant_mimic.data.voc import read_split_ids, register_voc
from quant_mimic.engine import Trainer
from quant_mimic.evaluation import VOCDetectionEvaluator

from .common import get_config


class TestSyntheticRoundTrip(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = cls.tmp.name
        cls.faces = generate_faces(os.path.join(cls.root, "synth", "widerface"), 12, 8, seed=1)
        cls.voc = generate_voc(os.path.join(cls.root, "synth", "VOC2007"), 10, 6, seed=2)
        # the same registration as the built-in names, under a test prefix and this root
        from quant_mimic.data.widerface import register_widerface

        register_widerface("rt_faces_train", os.path.join(cls.root, "synth", "widerface"), "train")
        register_voc(
            "rt_voc_test", os.path.join(cls.root, "synth", "VOC2007"), "test", 2007, VOC_CLASSES
        )

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_builtin_names_registered(self):
        names = DatasetCatalog.list()
        for n in ("synth_faces_train", "synth_faces_val", "synth_voc_trainval", "synth_voc_test",
                  "widerface_train", "widerface_val", "widerface_test"):  # fmt: skip
            self.assertIn(n, names)
        self.assertEqual(MetadataCatalog.get("synth_faces_val").evaluator_type, "widerface")
        self.assertEqual(MetadataCatalog.get("synth_voc_test").evaluator_type, "pascal_voc")
        register_all_quantmimic_datasets()  # idempotent

    def test_real_voc_names_use_the_project_loader(self):
        from unittest import mock

        with mock.patch("quant_mimic.data.builtin.load_voc_instances", return_value=[]) as loader:
            DatasetCatalog.get("voc_2007_test")
        (dirname, split, classes), _ = loader.call_args
        self.assertTrue(dirname.endswith("VOC2007"))
        self.assertEqual((split, len(classes)), ("test", 20))
        self.assertEqual(MetadataCatalog.get("voc_2007_test").year, 2007)

    def test_faces_round_trip(self):
        dicts = DatasetCatalog.get("rt_faces_train")
        self.assertEqual(len(dicts), 12)
        for d, (rel, rows) in zip(dicts, self.faces["train"]):
            self.assertTrue(d["file_name"].endswith(rel))
            expected = [r for r in rows if not r[7] and r[2] > 0 and r[3] > 0]
            self.assertEqual([a["bbox"] for a in d["annotations"]], [r[:4] for r in expected])
            self.assertEqual([a["blur"] for a in d["annotations"]], [r[4] for r in expected])
            self.assertTrue(all(a["invalid"] == 0 for a in d["annotations"]))
            self.assertEqual((d["height"], d["width"]), (192, 256))

    def test_voc_round_trip(self):
        dicts = DatasetCatalog.get("rt_voc_test")
        self.assertEqual(len(dicts), 6)
        for d, (fileid, objects) in zip(dicts, self.voc["test"]):
            self.assertEqual(d["image_id"], fileid)
            got = [
                (VOC_CLASSES[a["category_id"]], *a["bbox"], a["difficult"])
                for a in d["annotations"]
            ]
            exp = [
                (n, x0 - 1.0, y0 - 1.0, float(x1), float(y1), diff)
                for n, x0, y0, x1, y1, diff in objects
            ]
            self.assertEqual(got, exp)

    def test_deterministic(self):
        with tempfile.TemporaryDirectory() as d:
            again = generate_voc(os.path.join(d, "v"), 10, 6, seed=2)
            self.assertEqual(again, self.voc)
            a = open(os.path.join(d, "v", "JPEGImages", "test_000003.jpg"), "rb").read()
            b = open(
                os.path.join(self.root, "synth", "VOC2007", "JPEGImages", "test_000003.jpg"), "rb"
            ).read()
            self.assertEqual(a, b)

    def test_small_images_keep_every_object_inside(self):
        # The smoke preset's 96×128 once drew 100 px glyphs that fit nowhere (a ValueError).
        for h, w in ((96, 128), (48, 64), (24, 24)):
            with tempfile.TemporaryDirectory() as d:
                voc = generate_voc(os.path.join(d, "v"), 8, 2, seed=0, size=(h, w))
                objs = [o for _, objects in voc["trainval"] + voc["test"] for o in objects]
                self.assertGreater(len(objs), 0, (h, w))
                for _, x0, y0, x1, y1, _ in objs:  # 1-based inclusive
                    self.assertTrue(1 <= x0 <= x1 <= w and 1 <= y0 <= y1 <= h, (h, w, x0, y0))
                faces = generate_faces(os.path.join(d, "f"), 4, 2, seed=0, size=(h, w))
                for _, rows in faces["train"] + faces["val"]:
                    for x, y, bw, bh, *_ in rows:
                        self.assertTrue(0 <= x and x + bw <= w and 0 <= y and y + bh <= h)

    def test_single_id_split(self):
        with tempfile.TemporaryDirectory() as d:
            generate_voc(d, 1, 1, seed=3)
            self.assertEqual(read_split_ids(d, "test"), ["test_000000"])
            register_voc("rt_voc_single", d, "test", 2007, VOC_CLASSES)
            self.assertEqual(len(DatasetCatalog.get("rt_voc_single")), 1)

    def test_voc_evaluator_perfect_predictions(self):
        name = "rt_voc_test"
        ev = VOCDetectionEvaluator(name)
        ev.reset()
        for d in DatasetCatalog.get(name):
            inst = Instances((d["height"], d["width"]))
            inst.pred_boxes = Boxes(
                torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32)
            )
            inst.scores = torch.ones(len(d["annotations"]))
            inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
            ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
        with self.assertLogs("detectron2.evaluation.pascal_voc_evaluation", level="INFO") as logs:
            res = ev.evaluate()
        self.assertAlmostEqual(res["bbox"]["AP50"], 100.0, places=4)
        self.assertIn("VOC2007 11-point", "\n".join(logs.output))

    def test_trainer_picks_evaluators(self):
        cfg = get_config("WIDERFace/rfcn_VGG-1-32_scratch.yaml")
        self.assertEqual(
            type(Trainer.build_evaluator(cfg, "synth_faces_val")).__name__, "WiderFaceEvaluator"
        )
        self.assertIsInstance(Trainer.build_evaluator(cfg, "rt_voc_test"), VOCDetectionEvaluator)

    def test_cli(self):
        with tempfile.TemporaryDirectory() as d:
            main(
                ["--out", d, "--kind", "faces", "--num-train", "3", "--num-val", "2", "--seed", "0"]
            )
            for f in (
                "wider_face_val.mat",
                "wider_easy_val.mat",
                "wider_medium_val.mat",
                "wider_hard_val.mat",
            ):
                self.assertTrue(os.path.isfile(os.path.join(d, "eval_tools", "ground_truth", f)))
            self.assertTrue(
                np.all(
                    [
                        os.path.isdir(os.path.join(d, f"WIDER_{s}", "images"))
                        for s in ("train", "val")
                    ]
                )
            )


class TestSyntheticClassification(unittest.TestCase):
    def test_layout_classes_and_disjointness(self):
        with tempfile.TemporaryDirectory() as d:
            main(["--kind", "cls", "--out", os.path.join(d, "cls"), "--num-train", "3"]
                 + ["--num-val", "2", "--size", "40", "--seed", "0"])  # fmt: skip
            for split, n in (("train", 3), ("val", 2)):
                root = os.path.join(d, "cls", split)
                self.assertEqual(sorted(os.listdir(root)), sorted(CLS_CLASSES))
                for c in CLS_CLASSES:
                    files = os.listdir(os.path.join(root, c))
                    self.assertEqual(len(files), n, (split, c))
            from torchvision.datasets import ImageFolder

            folder = ImageFolder(os.path.join(d, "cls", "train"))
            self.assertEqual(len(folder.classes), 9)
            self.assertEqual(folder[0][0].size, (40, 40))
            # the same seed as the detection sets: still no shared image
            generate_faces(os.path.join(d, "faces"), 4, 2, seed=0, size=(40, 40))
            generate_voc(os.path.join(d, "voc"), 4, 2, seed=0, size=(40, 40))
            shared = shared_images(
                os.path.join(d, "cls"), [os.path.join(d, "faces"), os.path.join(d, "voc")]
            )
            self.assertEqual(shared, [])
            # the check finds a copied image
            img = os.path.join(
                d, "cls", "val", "face", os.listdir(os.path.join(d, "cls", "val", "face"))[0]
            )
            os.makedirs(os.path.join(d, "leak"))
            import shutil

            shutil.copy(img, os.path.join(d, "leak", "x.png"))
            self.assertEqual(
                len(shared_images(os.path.join(d, "cls"), [os.path.join(d, "leak")])), 1
            )

    def test_deterministic_and_seeded(self):
        with tempfile.TemporaryDirectory() as d:
            a = generate_cls(os.path.join(d, "a"), 1, 1, seed=4, size=32)["sha256"]
            b = generate_cls(os.path.join(d, "b"), 1, 1, seed=4, size=32)["sha256"]
            c = generate_cls(os.path.join(d, "c"), 1, 1, seed=5, size=32)["sha256"]
            self.assertEqual(a, b)
            self.assertNotEqual(a, c)
            with self.assertRaisesRegex(ValueError, "Unknown cls classes"):
                generate_cls(os.path.join(d, "e"), 1, 1, classes=["cat"])


if __name__ == "__main__":
    unittest.main()
