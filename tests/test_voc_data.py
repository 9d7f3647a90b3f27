"""VOC loading checks (quant_mimic.data.voc) and the VOC evaluator's handling of classes without
ground truth (quant_mimic.evaluation.voc)."""

import os
import tempfile
import unittest

import cv2
import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances

from quant_mimic.data.voc import load_voc_instances, register_voc
from quant_mimic.evaluation import VOCDetectionEvaluator

CLASSES = ("cat", "dog")


def _obj(name, box, difficult=0):
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def _write_voc(root, images, size=(100, 80)):
    """images: {id: xml body (objects) or a raw xml string starting with '<annotation'}."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    w, h = size
    for fileid, body in images.items():
        xml = (
            body
            if body.startswith("<annotation") or not body.startswith("<")
            else (
                f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
                f"{body}</annotation>"
            )
        )
        with open(os.path.join(root, "Annotations", fileid + ".xml"), "w") as f:
            f.write(xml)
        cv2.imwrite(
            os.path.join(root, "JPEGImages", fileid + ".jpg"), np.zeros((h, w, 3), np.uint8)
        )
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("\n".join(images) + "\n")


class TestVOCLoading(unittest.TestCase):
    def test_clipping_inverted_and_outside_are_counted(self):
        with tempfile.TemporaryDirectory() as d:
            objects = (
                _obj("cat", (-5, 10, 50, 90))  # clipped
                + _obj("dog", (60, 10, 20, 40))  # inverted
                + _obj("dog", (300, 10, 320, 40))  # outside
                + _obj("cat", (11, 11, 30, 30))
            )
            _write_voc(d, {"a": objects})
            with self.assertLogs("quant_mimic.data.voc", level="WARNING") as logs:
                dicts = load_voc_instances(d, "test", CLASSES)
        text = "\n".join(logs.output)
        self.assertIn("1 boxes clipped", text)
        self.assertIn("1 inverted boxes and 1 boxes outside", text)
        self.assertIn("no object of class(es) ['dog']", text)
        boxes = [a["bbox"] for a in dicts[0]["annotations"]]
        self.assertEqual(boxes, [[0.0, 9.0, 50.0, 80.0], [10.0, 10.0, 30.0, 30.0]])

    def test_malformed_annotations_name_the_file(self):
        cases = {
            "<annotation><size><width>10": "malformed xml",
            _obj("cat", (1, 2, "three", 9)): r"<bndbox/xmax> is not a number: 'three'",
            _obj("cat", (1, 2, "nan", 9)): "not finite",
            "<object><name>cat</name></object>": "has no <bndbox/xmin>",
            _obj("bird", (1, 2, 3, 4)): "unknown class 'bird'",
            "<annotation><size><width>x</width><height>5</height></size>"
            "</annotation>": "size/width",
        }
        for body, msg in cases.items():
            with self.subTest(body=body), tempfile.TemporaryDirectory() as d:
                _write_voc(d, {"bad": body})
                with self.assertRaisesRegex(ValueError, r"bad\.xml.*" + msg):
                    load_voc_instances(d, "test", CLASSES)

    def test_every_object_dropped_is_an_error(self):
        with tempfile.TemporaryDirectory() as d:
            _write_voc(d, {"a": _obj("cat", (50, 10, 20, 40))})
            with self.assertRaisesRegex(ValueError, "all 1 objects were left out"):
                load_voc_instances(d, "test", CLASSES)


class TestVOCEvaluatorMissingClass(unittest.TestCase):
    def test_class_without_gt_is_reported_not_averaged(self):
        with tempfile.TemporaryDirectory() as d:
            _write_voc(d, {"a": _obj("cat", (11, 11, 40, 40)), "b": _obj("cat", (21, 21, 60, 70))})
            name = "qm_test_voc_missing_class"
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
            register_voc(name, d, "test", 2007, CLASSES)
            ev = VOCDetectionEvaluator(name)
            ev.reset()
            for r in DatasetCatalog.get(name):
                inst = Instances((r["height"], r["width"]))
                boxes = [a["bbox"] for a in r["annotations"]]
                inst.pred_boxes = Boxes(torch.tensor(boxes + [[1.0, 1.0, 9.0, 9.0]]))
                inst.scores = torch.tensor([0.9] * len(boxes) + [0.5])
                inst.pred_classes = torch.tensor([0] * len(boxes) + [1])  # a "dog" false positive
                ev.process([{"image_id": r["image_id"]}], [{"instances": inst}])
            with self.assertLogs(ev._logger, level="WARNING") as logs:
                res = ev.evaluate()["bbox"]
        self.assertIn("no ground truth for class(es) ['dog']", "\n".join(logs.output))
        self.assertAlmostEqual(res["AP50"], 100.0, places=4)
        self.assertEqual(res["classes_without_gt"], 1.0)
        self.assertNotIn("AP50-dog", res)
        self.assertTrue(np.isfinite(res["AP"]))


if __name__ == "__main__":
    unittest.main()
