import os
import shutil
import tempfile
import unittest

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from quant_mimic.data.synthetic import face_subsets, generate_faces
from quant_mimic.data.widerface import register_widerface
from quant_mimic.evaluation.widerface import (
    WiderFaceEvaluator,
    WiderFaceFormatError,
    evaluate_widerface,
    main,
    read_widerface_predictions,
    write_widerface_predictions,
)


def _gt_preds(entries, score_fn=lambda k: 1.0 - 0.01 * k):
    preds = {}
    for rel, rows in entries:
        event, name = rel.split("/")
        stem = os.path.splitext(name)[0]
        preds.setdefault(event, {})[stem] = np.array(
            [r[:4] + [score_fn(k)] for k, r in enumerate(rows)], dtype=np.float64
        ).reshape(-1, 5)
    return preds


class TestWiderFaceEval(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.root = os.path.join(cls.tmp.name, "widerface")
        cls.written = generate_faces(cls.root, 4, 30, seed=5)
        cls.gt_dir = os.path.join(cls.root, "eval_tools", "ground_truth")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_perfect_predictions(self):
        aps = evaluate_widerface(_gt_preds(self.written["val"]), self.gt_dir)
        for s in ("easy", "medium", "hard"):
            self.assertAlmostEqual(aps[s], 1.0, places=6, msg=s)

    def test_constant_scores(self):
        aps = evaluate_widerface(_gt_preds(self.written["val"], lambda k: 0.5), self.gt_dir)
        self.assertAlmostEqual(aps["hard"], 1.0, places=6)

    def test_no_predictions(self):
        with self.assertRaisesRegex(WiderFaceFormatError, r"(\d+) of \1 ground-truth images"):
            evaluate_widerface({}, self.gt_dir)
        aps = evaluate_widerface({}, self.gt_dir, allow_missing=True)
        self.assertEqual(aps, {"easy": 0.0, "medium": 0.0, "hard": 0.0})

    def test_subsets_nest_and_hard_has_small_faces(self):
        sizes = {"easy": [], "medium": [], "hard": []}
        for _, rows in self.written["val"]:
            keep = face_subsets(rows)
            self.assertTrue(set(keep["easy"]) <= set(keep["medium"]) <= set(keep["hard"]))
            for s, idx in keep.items():
                sizes[s] += [rows[k - 1][2] for k in idx]
        self.assertGreaterEqual(min(sizes["easy"]), 40)
        self.assertLess(min(sizes["hard"]), 20)
        self.assertGreater(len(sizes["hard"]), len(sizes["easy"]))

    def test_written_and_reread_give_same_aps(self):
        preds = _gt_preds(self.written["val"], lambda k: 0.9 - 0.1 * k)
        # degrade: drop every third image's detections and add a false positive elsewhere
        for i, (event, images) in enumerate(sorted(preds.items())):
            for j, stem in enumerate(sorted(images)):
                if (i + j) % 3 == 0:
                    images[stem] = np.zeros((0, 5))
                else:
                    images[stem] = np.concatenate([images[stem], [[1, 1, 30, 30, 0.95]]])
        direct = evaluate_widerface(preds, self.gt_dir)
        with tempfile.TemporaryDirectory() as d:
            write_widerface_predictions(preds, d)
            some = next(iter(os.listdir(d)))
            f = os.path.join(d, some, sorted(os.listdir(os.path.join(d, some)))[0])
            lines = open(f).read().splitlines()
            self.assertEqual(int(lines[1]), len(lines) - 2)  # name, count, x y w h score lines
            reread = evaluate_widerface(read_widerface_predictions(d), self.gt_dir)
            cli = main(["--pred", d, "--gt", self.gt_dir])
        for s in direct:
            self.assertAlmostEqual(direct[s], reread[s], places=4)
            self.assertAlmostEqual(direct[s], cli[s], places=4)
        self.assertLess(direct["hard"], 1.0)
        self.assertGreater(direct["hard"], 0.0)

    def test_hand_checked_case(self):
        # One image with 2 kept faces A (big) and B (small, only in hard), detections:
        # d1 on A (0.9), d2 false positive (0.8), d3 on B (0.7).
        d = os.path.join(self.tmp.name, "hand")
        entries = [
            (
                "0--E/0_E_0.jpg",
                [[10, 10, 50, 50, 0, 0, 0, 0, 0, 0], [100, 100, 12, 12, 0, 0, 0, 0, 0, 0]],
            )
        ]
        from quant_mimic.data.synthetic import _write_val_mats

        _write_val_mats(d, entries)
        preds = {
            "0--E": {
                "0_E_0": np.array(
                    [[10, 10, 50, 50, 0.9], [200, 10, 30, 30, 0.8], [100, 100, 12, 12, 0.7]]
                )
            }
        }
        aps = evaluate_widerface(preds, d)
        # easy keeps A only: d3 matches B (not kept) -> ignored; PR: (P=1,R=1) then (1/2, 1) -> AP 1
        self.assertAlmostEqual(aps["easy"], 1.0, places=6)
        # hard keeps both: (1, 0.5), (0.5, 0.5), (2/3, 1) -> AP = 0.5·1 + 0.5·2/3
        self.assertAlmostEqual(aps["hard"], 0.5 + 0.5 * 2 / 3, places=6)

    def test_non_finite_scores_and_unknown_images_are_errors(self):
        good = _gt_preds(self.written["val"], lambda k: 0.9 - 0.1 * k)
        event = sorted(good)[0]
        stem = sorted(good[event])[0]
        for value in (float("nan"), float("inf"), -float("inf")):
            preds = _gt_preds(self.written["val"], lambda k: 0.9 - 0.1 * k)
            preds[event][stem] = np.concatenate([preds[event][stem], [[1, 1, 9, 9, value]]])
            with self.assertRaisesRegex(WiderFaceFormatError, f"{event}/{stem}: non-finite"):
                evaluate_widerface(preds, self.gt_dir, allow_missing=True)
        for where in (event, "99--Nowhere"):  # unknown image in a known / an unknown event
            preds = _gt_preds(self.written["val"], lambda k: 0.9 - 0.1 * k)
            preds.setdefault(where, {})["not_an_image"] = np.array([[1, 1, 9, 9, 100.0]])
            with self.assertRaisesRegex(WiderFaceFormatError, f"not in the ground truth.*{where}"):
                evaluate_widerface(preds, self.gt_dir, allow_missing=True)

    def test_missing_images_and_events(self):
        preds = _gt_preds(self.written["val"])
        total = sum(len(v) for v in preds.values())
        dropped_event = sorted(preds)[0]
        n = len(preds.pop(dropped_event))
        with self.assertRaisesRegex(WiderFaceFormatError, f"{n} of {total} ground-truth images"):
            evaluate_widerface(preds, self.gt_dir)
        with self.assertLogs("quant_mimic.evaluation.widerface", level="WARNING") as logs:
            aps = evaluate_widerface(preds, self.gt_dir, allow_missing=True)
        self.assertIn(f"{n} of {total}", "\n".join(logs.output))
        self.assertLess(aps["hard"], 1.0)

    def test_reader_rejects_malformed_files_naming_file_and_line(self):
        cases = {
            "a\n2\n1 1 5 5 0.9\n": ":2: the count line says 2 detections, the file has 1",
            "a\n1\n1 1 5 5 0.9\n2 2 5 5 0.8\n": ":2: the count line says 1",
            "a\nx\n": ":2: expected a detection count",
            "a\n1\n1 1 5 five 0.9\n": ":3: non-numeric",
            "a\n1\n1 1 5 5\n": ":3: expected 'x y w h score'",
            "a\n1\n1 1 5 5 nan\n": ":3: non-finite",
            "a\n1\n1 1 -5 5 0.5\n": ":3: negative width",
            "a\n": ": expected an image name line and a count line",
        }
        for text, msg in cases.items():
            with self.subTest(text=text), tempfile.TemporaryDirectory() as d:
                os.makedirs(os.path.join(d, "0--E"))
                with open(os.path.join(d, "0--E", "img.txt"), "w") as f:
                    f.write(text)
                with self.assertRaisesRegex(WiderFaceFormatError, "img.txt" + msg):
                    read_widerface_predictions(d)
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaisesRegex(WiderFaceFormatError, "no predictions"):
                read_widerface_predictions(d)
            with self.assertRaises(FileNotFoundError):
                read_widerface_predictions(os.path.join(d, "absent"))
            with self.assertRaises(WiderFaceFormatError):
                main(["--pred", d, "--gt", self.gt_dir])

    def test_keep_lists_must_match_the_image_list(self):
        import scipy.io

        with tempfile.TemporaryDirectory() as d:
            for name in os.listdir(self.gt_dir):
                shutil.copy(os.path.join(self.gt_dir, name), d)
            path = os.path.join(d, "wider_hard_val.mat")
            mat = scipy.io.loadmat(path)
            gt_list = mat["gt_list"]
            first = gt_list[0][0]
            n_faces = len(
                scipy.io.loadmat(os.path.join(d, "wider_face_val.mat"))["face_bbx_list"][0][0][0][0]
            )
            first[0][0] = np.array([[n_faces + 1]], dtype=np.float64)  # index past the faces
            scipy.io.savemat(path, {"gt_list": gt_list})
            with self.assertRaisesRegex(WiderFaceFormatError, "wider_hard_val.mat: keep list"):
                evaluate_widerface({}, d, allow_missing=True)
            scipy.io.savemat(path, {"gt_list": gt_list[:-1] if len(gt_list) > 1 else gt_list[:0]})
            with self.assertRaisesRegex(WiderFaceFormatError, "wider_hard_val.mat: .* events"):
                evaluate_widerface({}, d, allow_missing=True)

    def test_evaluator_on_registered_dataset(self):
        name = "qm_test_synth_faces_val"
        register_widerface(name, self.root, "val")
        ev = WiderFaceEvaluator(
            name, output_dir=os.path.join(self.tmp.name, "ev"), distributed=False
        )
        ev.reset()
        from detectron2.data import DatasetCatalog

        for r in DatasetCatalog.get(name):
            inst = Instances((r["height"], r["width"]))
            boxes = [a["bbox"] for a in r["annotations"]]
            xyxy = torch.tensor(
                [[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32
            ).reshape(-1, 4)
            inst.pred_boxes = Boxes(xyxy)
            inst.scores = torch.linspace(1.0, 0.5, len(boxes))
            ev.process([{"image_id": r["image_id"]}], [{"instances": inst}])
        res = ev.evaluate()["widerface"]
        self.assertEqual(MetadataCatalog.get(name).evaluator_type, "widerface")
        for s in ("easy", "medium", "hard"):
            self.assertAlmostEqual(res[f"AP_{s}"], 100.0, places=4)
        self.assertTrue(os.path.isdir(os.path.join(self.tmp.name, "ev", "predictions")))


if __name__ == "__main__":
    unittest.main()
