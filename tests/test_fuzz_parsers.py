"""Property-based tests (hypothesis) of the readers of untrusted files: WIDER FACE bbx_gt
(quant_mimic.data.widerface), VOC xml (quant_mimic.data.voc) and WIDER FACE prediction folders
(quant_mimic.evaluation.widerface). Valid inputs round-trip; anything else raises the project's
error (ValueError and its subclasses), never an unrelated exception."""

import os
import tempfile
import unittest

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_mimic.data.voc import load_voc_instances
from quant_mimic.data.widerface import parse_wider_bbx_gt
from quant_mimic.evaluation.widerface import (
    WiderFaceFormatError,
    read_widerface_predictions,
    write_widerface_predictions,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
NAMES = st.from_regex(r"[0-9]{1,2}--[A-Za-z]{1,8}/[A-Za-z0-9_]{1,12}\.jpg", fullmatch=True)
FACE = st.lists(st.integers(0, 2000), min_size=4, max_size=4).map(
    lambda b: b + [0, 0, 0, 0, 0, 0]
) | st.lists(st.integers(0, 2), min_size=10, max_size=10).map(lambda r: [1, 2, 30, 40] + r[4:])
ENTRIES = st.lists(st.tuples(NAMES, st.lists(FACE, max_size=5)), max_size=6)


def _bbx_text(entries):
    lines = []
    for name, rows in entries:
        lines += [name, str(len(rows))]
        lines += [" ".join(map(str, r)) for r in rows] or ["0 0 0 0 0 0 0 0 0 0"]
    return "\n".join(lines) + "\n"


def _mutate(text, data):
    """Replace, delete or insert one line or a few characters of ``text``."""
    lines = text.split("\n")
    i = data.draw(st.integers(0, max(len(lines) - 1, 0)))
    how = data.draw(st.sampled_from(["replace", "delete", "insert", "chars"]))
    junk = data.draw(
        st.sampled_from(["", "x", "-1", "1e400", "nan", "inf", "3.5", "1 2 3", "a.jpg"]) | TEXT
    )
    if how == "replace":
        lines[i] = junk
    elif how == "delete" and lines:
        del lines[i]
    elif how == "insert":
        lines.insert(i, junk)
    else:
        line = lines[i]
        j = data.draw(st.integers(0, len(line)))
        lines[i] = line[:j] + junk + line[j + 1 :]
    return "\n".join(lines)


class TestWiderBbxGtFuzz(unittest.TestCase):
    @SETTINGS
    @given(ENTRIES)
    def test_valid_round_trip(self, entries):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "gt.txt")
            with open(path, "w") as f:
                f.write(_bbx_text(entries))
            self.assertEqual(parse_wider_bbx_gt(path), [(n, r) for n, r in entries])

    @SETTINGS
    @given(ENTRIES, st.data())
    def test_mutated_or_arbitrary_input_raises_only_valueerror(self, entries, data):
        text = data.draw(st.just(_bbx_text(entries)).map(lambda t: _mutate(t, data)) | TEXT)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "gt.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            try:
                parse_wider_bbx_gt(path)
            except ValueError as e:
                self.assertIn("gt.txt", str(e))


def _voc_xml(size, objects):
    w, h = size
    objs = "".join(
        f"<object><name>{c}</name><difficult>{diff}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, (x0, y0, x1, y1), diff in objects
    )
    return f"<annotation><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>"


CLASSES = ("cat", "dog")


@st.composite
def voc_images(draw):
    w, h = draw(st.integers(20, 500)), draw(st.integers(20, 500))
    objs = []
    for _ in range(draw(st.integers(1, 4))):
        x0, y0 = draw(st.integers(1, w - 10)), draw(st.integers(1, h - 10))
        x1, y1 = draw(st.integers(x0 + 1, w)), draw(st.integers(y0 + 1, h))
        objs.append((draw(st.sampled_from(CLASSES)), (x0, y0, x1, y1), draw(st.integers(0, 1))))
    return (w, h), objs


def _write_voc(d, xml):
    for sub in ("Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    with open(os.path.join(d, "Annotations", "im.xml"), "w", encoding="utf-8") as f:
        f.write(xml)
    with open(os.path.join(d, "ImageSets", "Main", "s.txt"), "w") as f:
        f.write("im\n")


class TestVOCFuzz(unittest.TestCase):
    @SETTINGS
    @given(voc_images())
    def test_valid_round_trip(self, image):
        size, objects = image
        with tempfile.TemporaryDirectory() as d:
            _write_voc(d, _voc_xml(size, objects))
            (record,) = load_voc_instances(d, "s", CLASSES)
        self.assertEqual((record["width"], record["height"]), size)
        got = [
            (CLASSES[a["category_id"]], a["bbox"], a["difficult"]) for a in record["annotations"]
        ]
        want = [
            (c, [x0 - 1.0, y0 - 1.0, float(x1), float(y1)], df)
            for c, (x0, y0, x1, y1), df in objects
        ]
        self.assertEqual(got, want)

    @SETTINGS
    @given(voc_images(), st.data())
    def test_mutated_or_arbitrary_input_raises_only_valueerror(self, image, data):
        xml = _voc_xml(*image)
        if data.draw(st.booleans()):
            xml = data.draw(TEXT)
        else:  # a field replaced by junk, or the text cut
            field = data.draw(
                st.sampled_from(["width", "height", "name", "xmin", "ymax", "difficult"])
            )
            junk = data.draw(st.sampled_from(["", "x", "-3", "nan", "1e400", "<", "2.5"]) | TEXT)
            start = xml.find(f"<{field}>") + len(field) + 2
            end = xml.find(f"</{field}>")
            xml = (
                xml[:start] + junk + xml[end:]
                if data.draw(st.booleans())
                else xml[: data.draw(st.integers(0, len(xml)))]
            )
        with tempfile.TemporaryDirectory() as d:
            _write_voc(d, xml)
            try:
                load_voc_instances(d, "s", CLASSES)
            except ValueError as e:
                self.assertTrue("im.xml" in str(e) or "split" in str(e), str(e))


ROWS = st.lists(
    st.tuples(
        st.floats(0, 2000),
        st.floats(0, 2000),
        st.floats(0, 500),
        st.floats(0, 500),
        st.floats(0, 1),
    ),
    max_size=6,
)


class TestWiderPredictionsFuzz(unittest.TestCase):
    @SETTINGS
    @given(
        st.dictionaries(
            st.from_regex(r"[a-z0-9_]{1,10}", fullmatch=True), ROWS, min_size=1, max_size=4
        )
    )
    def test_valid_round_trip(self, images):
        preds = {
            "0--E": {k: np.asarray(v, dtype=np.float64).reshape(-1, 5) for k, v in images.items()}
        }
        with tempfile.TemporaryDirectory() as d:
            write_widerface_predictions(preds, d)
            back = read_widerface_predictions(d)
        self.assertEqual(set(back["0--E"]), set(images))
        for k, v in preds["0--E"].items():
            np.testing.assert_allclose(back["0--E"][k][:, :4], v[:, :4], atol=0.051)
            np.testing.assert_allclose(back["0--E"][k][:, 4], v[:, 4], atol=6e-7)

    @SETTINGS
    @given(ROWS, st.data())
    def test_mutated_or_arbitrary_input_raises_only_format_error(self, rows, data):
        text = "img\n" + str(len(rows)) + "\n" + "".join(" ".join(map(str, r)) + "\n" for r in rows)
        text = data.draw(st.just(text).map(lambda t: _mutate(t, data)) | TEXT)
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "0--E"))
            with open(os.path.join(d, "0--E", "img.txt"), "w", encoding="utf-8") as f:
                f.write(text)
            try:
                preds = read_widerface_predictions(d)
            except WiderFaceFormatError as e:
                self.assertIn("img.txt", str(e))
            else:
                d = preds["0--E"]["img"]
                self.assertTrue(np.isfinite(d).all() and (d[:, 2:4] >= 0).all())


if __name__ == "__main__":
    unittest.main()
