import os
import tempfile
import unittest

import cv2
import numpy as np

from quant_mimic.data.widerface import (
    WIDER_ATTRIBUTES,
    load_widerface_instances,
    parse_wider_bbx_gt,
)

SNIPPET = """0--Parade/0_Parade_a.jpg
2
10 20 30 40 0 0 0 0 0 0
5 6 7 8 2 1 1 1 2 1
0--Parade/0_Parade_b.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/1_Handshaking_c.jpg
3
1 2 0 9 0 0 0 0 0 0
3 4 5 -1 0 0 0 0 0 0
50 60 12 14 1 0 0 0 1 0
"""


def _write(d, text, name="gt.txt"):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class TestParseBbxGt(unittest.TestCase):
    def test_snippet(self):
        with tempfile.TemporaryDirectory() as d:
            entries = parse_wider_bbx_gt(_write(d, SNIPPET))
        names = ["0--Parade/0_Parade_a.jpg", "0--Parade/0_Parade_b.jpg",
                 "1--Handshaking/1_Handshaking_c.jpg"]  # fmt: skip
        self.assertEqual([e[0] for e in entries], names)
        self.assertEqual(entries[0][1][1], [5, 6, 7, 8, 2, 1, 1, 1, 2, 1])
        self.assertEqual(entries[1][1], [])  # zero faces: the placeholder line is not a face
        self.assertEqual(len(entries[2][1]), 3)
        self.assertEqual(WIDER_ATTRIBUTES[3], "invalid")  # column 8 of the file (readme order)

    def test_malformed_files_name_file_and_line(self):
        cases = {
            "0--P/a.jpg\nx\n": ":2: expected a face count",
            "0--P/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n": ":4: file ends",
            "0--P/a.jpg\n1\n1 2 3 4 0 0 0 0 0\n": ":3: expected 10 values",
            "0--P/a.jpg\n1\n1 2 3 four 0 0 0 0 0 0\n": ":3: non-numeric",
            "0--P/a.jpg\n0\n1 0 0 0 0 0 0 0 0 0\n": ":3: an image with 0 faces",
            "not-an-image\n1\n": ":1: expected an image name",
        }
        with tempfile.TemporaryDirectory() as d:
            for text, msg in cases.items():
                path = _write(d, text, "bad.txt")
                with self.assertRaisesRegex(ValueError, "bad.txt" + msg):
                    parse_wider_bbx_gt(path)


class TestLoadWiderFace(unittest.TestCase):
    def test_invalid_and_degenerate_left_out(self):
        with tempfile.TemporaryDirectory() as d:
            gt = _write(d, SNIPPET)
            root = os.path.join(d, "images")
            for rel in (
                "0--Parade/0_Parade_a.jpg",
                "0--Parade/0_Parade_b.jpg",
                "1--Handshaking/1_Handshaking_c.jpg",
            ):
                os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
                cv2.imwrite(os.path.join(root, rel), np.zeros((90, 120, 3), np.uint8))
            with self.assertLogs("quant_mimic.data.widerface", level="INFO") as logs:
                dicts = load_widerface_instances(root, gt, "snippet")
            self.assertIn("1 invalid faces and 2 degenerate boxes", "\n".join(logs.output))
            self.assertEqual([len(r["annotations"]) for r in dicts], [1, 0, 1])
            a = dicts[0]["annotations"][0]
            self.assertEqual(a["bbox"], [10, 20, 30, 40])
            self.assertEqual((dicts[0]["height"], dicts[0]["width"]), (90, 120))
            self.assertEqual(dicts[2]["annotations"][0]["occlusion"], 1)
            self.assertEqual(dicts[2]["image_id"], "1--Handshaking/1_Handshaking_c")
            self.assertEqual(dicts[2]["event"], "1--Handshaking")


def _images(root, rels, size=(90, 120)):
    for rel in rels:
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        cv2.imwrite(os.path.join(root, rel), np.zeros(size + (3,), np.uint8))


class TestWiderFaceDataChecks(unittest.TestCase):
    def test_boxes_clipped_to_the_image_and_outside_ones_counted(self):
        text = (
            "0--E/a.jpg\n4\n"
            "-10 5 30 20 0 0 0 0 0 0\n"  # reaches left of the image: clipped to x 0..20
            "100 80 50 50 0 0 0 0 0 0\n"  # reaches past the bottom-right: clipped
            "200 10 20 20 0 0 0 0 0 0\n"  # entirely right of the 120-wide image: left out
            "10 10 20 20 0 0 0 0 0 0\n"  # inside
        )
        with tempfile.TemporaryDirectory() as d:
            _images(os.path.join(d, "images"), ["0--E/a.jpg"])
            with self.assertLogs("quant_mimic.data.widerface", level="WARNING") as logs:
                dicts = load_widerface_instances(os.path.join(d, "images"), _write(d, text), "t")
        self.assertIn("2 boxes reach outside their image and were clipped", logs.output[0])
        self.assertIn("1 boxes lie entirely outside", logs.output[0])
        boxes = [a["bbox"] for a in dicts[0]["annotations"]]
        self.assertEqual(boxes, [[0, 5, 20, 20], [100, 80, 20, 10], [10, 10, 20, 20]])

    def test_a_split_with_every_box_dropped_is_an_error(self):
        text = "0--E/a.jpg\n2\n500 5 30 20 0 0 0 0 0 0\n10 10 20 20 0 0 0 1 0 0\n"
        with tempfile.TemporaryDirectory() as d:
            _images(os.path.join(d, "images"), ["0--E/a.jpg"])
            with self.assertRaisesRegex(ValueError, "all 2 face rows were left out"):
                load_widerface_instances(os.path.join(d, "images"), _write(d, text), "t")

    def test_unreadable_image_is_named_at_load_time(self):
        text = "0--E/a.jpg\n1\n1 1 20 20 0 0 0 0 0 0\n"
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "images", "0--E"))
            with open(os.path.join(d, "images", "0--E", "a.jpg"), "wb") as f:
                f.write(b"not an image")
            with self.assertRaisesRegex(
                ValueError, r"0--E/a\.jpg: cannot open this WIDER FACE image"
            ):
                load_widerface_instances(os.path.join(d, "images"), _write(d, text), "t")

    def test_truncated_image_is_named_by_the_mapper(self):
        from quant_mimic import setup_cfg
        from quant_mimic.data import ImageReadError, NamedErrorDatasetMapper

        from .common import CONFIG_DIR

        cfg = setup_cfg(os.path.join(CONFIG_DIR, "Synth", "rfcn_VGG-1-32_scratch.yaml"))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.jpg")
            ok, buf = cv2.imencode(
                ".jpg", (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")
            )
            with open(path, "wb") as f:
                f.write(buf.tobytes()[: len(buf) // 2])  # header intact, data cut
            record = {"file_name": path, "image_id": "t", "height": 64, "width": 64,
                      "annotations": []}  # fmt: skip
            for is_train in (True, False):
                with self.assertRaisesRegex(ImageReadError, "t.jpg"):
                    NamedErrorDatasetMapper(cfg, is_train)(dict(record))


if __name__ == "__main__":
    unittest.main()
