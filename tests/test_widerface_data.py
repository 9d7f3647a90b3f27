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


if __name__ == "__main__":
    unittest.main()
