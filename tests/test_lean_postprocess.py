"""The exact runtime-friendly post-processing traced into ONNX exports
(quant_mimic.export.lean_postprocess): bitwise-equal box decoding, NMS that stops at its top-k,
and the context that applies them and restores everything."""

import os
import tempfile
import unittest

import numpy as np
import torch

from detectron2.layers import batched_nms
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.proposal_generator import proposal_utils, rpn
from detectron2.modeling.roi_heads import fast_rcnn

from quant_mimic.export import StudentInference, export_onnx
from quant_mimic.export.lean_postprocess import (
    CoordinateMajorBox2BoxTransform,
    batched_nms_topk,
    lean_postprocess,
)

from .common import build_model_no_weights, get_config

RFCN = "WIDERFace/rfcn_VGG-1-32_scratch.yaml"
CASCADE = "Synth/cascade_rcnn_R18-1-16_FPN_quant_mimic.yaml"


def _boxes(n: int, seed: int, size: float = 200.0) -> torch.Tensor:
    """(n, 4) valid boxes, clustered so that NMS suppresses many of them."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(n // 8, 1), 2, generator=g) * size
    xy = centres[torch.randint(len(centres), (n,), generator=g)] + torch.randn(n, 2, generator=g)
    wh = 10 + torch.rand(n, 2, generator=g) * 30
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=1).clamp(min=0)


class _NMS(torch.nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, boxes, scores, idxs):
        return batched_nms_topk(boxes, scores, idxs, 0.5, self.k)


class TestCoordinateMajorDecoding(unittest.TestCase):
    def test_bitwise_equal_to_detectron2(self):
        g = torch.Generator().manual_seed(0)
        for weights, k in (((1.0, 1.0, 1.0, 1.0), 1), ((10.0, 10.0, 5.0, 5.0), 3)):
            with self.subTest(weights=weights, k=k):
                ref = Box2BoxTransform(weights)
                lean = CoordinateMajorBox2BoxTransform(ref)
                boxes = _boxes(257, 1)
                deltas = torch.randn(257, 4 * k, generator=g)
                deltas[::7, 2::4] = 50.0  # beyond scale_clamp: the clamp must act the same
                got = lean.apply_deltas(deltas, boxes)
                self.assertEqual(got.shape, (257, 4 * k))
                self.assertTrue(torch.equal(got, ref.apply_deltas(deltas, boxes)))
                target = _boxes(257, 2)
                self.assertTrue(
                    torch.equal(lean.get_deltas(boxes, target), ref.get_deltas(boxes, target))
                )


class TestBatchedNMSTopK(unittest.TestCase):
    def test_first_k_of_detectron2_batched_nms(self):
        for n, classes in ((300, 1), (300, 4), (5, 2)):
            boxes = _boxes(n, n + classes)
            scores = torch.rand(n, generator=torch.Generator().manual_seed(classes))
            idxs = torch.arange(n) % classes
            full = batched_nms(boxes, scores, idxs, 0.5)
            for k in (1, 7, len(full), len(full) + 10, -1):
                with self.subTest(n=n, classes=classes, k=k):
                    got = batched_nms_topk(boxes, scores, idxs, 0.5, k)
                    self.assertTrue(torch.equal(got, full if k < 0 else full[:k]))
        empty = batched_nms_topk(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0).long(), 0.5, 3)
        self.assertEqual((empty.shape, empty.dtype), ((0,), torch.int64))

    def test_onnx_nms_stops_at_k_without_a_branch(self):
        import onnx
        import onnxruntime as ort

        k = 7
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "nms.onnx")
            example = (_boxes(64, 0), torch.rand(64), torch.arange(64) % 3)
            torch.onnx.export(
                _NMS(k),
                example,
                path,
                dynamo=False,
                opset_version=17,
                input_names=["boxes", "scores", "idxs"],
                dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"}, "idxs": {0: "n"}},
            )
            graph = onnx.load(path).graph
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.assertNotIn("If", [node.op_type for node in graph.node])
        (nms,) = [node for node in graph.node if node.op_type == "NonMaxSuppression"]
        consts = {
            node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
            for node in graph.node
            if node.op_type == "Constant"
        }
        self.assertEqual(consts[nms.input[2]].tolist(), [k])
        for n, classes in ((200, 3), (64, 1), (3, 1), (0, 1)):  # (3, 1): fewer than k kept
            with self.subTest(n=n, classes=classes):
                boxes, scores = _boxes(n, n), torch.rand(n)
                idxs = torch.arange(n) % classes
                ref = _NMS(k)(boxes, scores, idxs)
                got = session.run(
                    None, {"boxes": boxes.numpy(), "scores": scores.numpy(), "idxs": idxs.numpy()}
                )[0]
                np.testing.assert_array_equal(got, ref.numpy())


class TestLeanPostprocess(unittest.TestCase):
    def test_same_detections_and_everything_restored(self):
        for config in (RFCN, CASCADE):
            with self.subTest(config=config):
                cfg = get_config(config)
                model = build_model_no_weights(cfg).eval()
                x = torch.rand(len(cfg.MODEL.PIXEL_MEAN), 160, 224) * 255
                patched = [
                    (proposal_utils, "batched_nms"),
                    (fast_rcnn, "batched_nms"),
                    (rpn, "find_top_rpn_proposals"),
                    (fast_rcnn, "fast_rcnn_inference_single_image"),
                ]
                before = [getattr(m, name) for m, name in patched]
                transform = model.proposal_generator.box2box_transform
                with torch.no_grad():
                    ref = model.inference([{"image": x}], do_postprocess=False)[0]
                    with lean_postprocess(model):
                        self.assertIsInstance(
                            model.proposal_generator.box2box_transform,
                            CoordinateMajorBox2BoxTransform,
                        )
                        got = model.inference([{"image": x}], do_postprocess=False)[0]
                self.assertGreater(len(ref), 0)
                self.assertTrue(torch.equal(got.pred_boxes.tensor, ref.pred_boxes.tensor))
                self.assertTrue(torch.equal(got.scores, ref.scores))
                self.assertTrue(torch.equal(got.pred_classes, ref.pred_classes))
                self.assertEqual([getattr(m, name) for m, name in patched], before)
                self.assertIs(model.proposal_generator.box2box_transform, transform)
        with self.assertRaises(RuntimeError), lean_postprocess(model):
            raise RuntimeError("inside")
        self.assertEqual([getattr(m, name) for m, name in patched], before)

    def test_exported_graph_stops_nms_at_the_configured_top_k(self):
        import onnx
        import onnxruntime as ort

        cfg = get_config(RFCN)
        module = StudentInference(build_model_no_weights(cfg))
        x = torch.rand(len(cfg.MODEL.PIXEL_MEAN), 192, 256) * 255
        with tempfile.TemporaryDirectory() as d:
            lean = export_onnx(module, x, os.path.join(d, "lean.onnx"))
            plain = export_onnx(module, x, os.path.join(d, "plain.onnx"), lean=False)
            graph = onnx.load(lean).graph
            outputs = [
                ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(
                    None, {"image": x.numpy()}
                )
                for p in (lean, plain)
            ]
        self.assertNotIn("If", [node.op_type for node in graph.node])
        consts = {
            node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t).tolist()
            for node in graph.node
            if node.op_type == "Constant"
        }
        caps = sorted(
            consts[node.input[2]][0] for node in graph.node if node.op_type == "NonMaxSuppression"
        )
        self.assertEqual(
            caps, sorted([cfg.MODEL.RPN.POST_NMS_TOPK_TEST, cfg.TEST.DETECTIONS_PER_IMAGE])
        )
        for got, ref in zip(*outputs):
            np.testing.assert_array_equal(got, ref)
