import math
import unittest

import torch

from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from quant_mimic.rfcn import RFCNROIHeads, ohem_select, ps_roi_pool_vote

from .common import build_model_no_weights, get_config, random_inputs, train_step

WIDER = "WIDERFace/rfcn_VGG-1-32_scratch.yaml"


def _bilinear(fmap, y, x):
    h, w = fmap.shape
    if not (-1.0 <= y <= h and -1.0 <= x <= w):
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * fmap[y0, x0] + (1 - ly) * lx * fmap[y0, x1]
        + ly * (1 - lx) * fmap[y1, x0] + ly * lx * fmap[y1, x1]
    )  # fmt: skip


def reference_ps_vote(maps, boxes_per_image, k, scale, kind, sampling_ratio=2):
    """Loop-by-loop R-FCN: bin (i, j) of output d reads channel d·k² + i·k + j; vote = bin mean."""
    out = []
    for n, boxes in enumerate(boxes_per_image):
        for x0, y0, x1, y1 in boxes.tolist():
            d_out = maps.shape[1] // (k * k)
            row = []
            for d in range(d_out):
                total = 0.0
                for i in range(k):
                    for j in range(k):
                        fmap = maps[n, d * k * k + i * k + j]
                        if kind == "PSROIPool":
                            rs_w, rs_h = math.floor(x0 * scale + 0.5), math.floor(y0 * scale + 0.5)
                            re_w, re_h = math.floor(x1 * scale + 0.5), math.floor(y1 * scale + 0.5)
                            bh, bw = max(re_h - rs_h, 1) / k, max(re_w - rs_w, 1) / k
                            hs, he = math.floor(i * bh) + rs_h, math.ceil((i + 1) * bh) + rs_h
                            ws, we = math.floor(j * bw) + rs_w, math.ceil((j + 1) * bw) + rs_w
                            total += fmap[hs:he, ws:we].mean().item()
                        else:
                            sx, sy = x0 * scale - 0.5, y0 * scale - 0.5
                            bh, bw = (y1 - y0) * scale / k, (x1 - x0) * scale / k
                            s = 0.0
                            for iy in range(sampling_ratio):
                                for ix in range(sampling_ratio):
                                    y = sy + i * bh + (iy + 0.5) * bh / sampling_ratio
                                    x = sx + j * bw + (ix + 0.5) * bw / sampling_ratio
                                    s += float(_bilinear(fmap, y, x))
                            total += s / sampling_ratio**2
                row.append(total / (k * k))
            out.append(row)
    return torch.tensor(out, dtype=maps.dtype)


class TestPSPooling(unittest.TestCase):
    def test_against_reference(self):
        g = torch.Generator().manual_seed(0)
        k, d, scale = 3, 4, 1 / 8.0
        maps = torch.randn(2, d * k * k, 14, 16, generator=g, dtype=torch.float64)
        boxes = []
        for _ in range(2):  # boxes well inside the 112×128 image
            xy = 10 + torch.rand(5, 2, generator=g, dtype=torch.float64) * 40
            wh = 8 + torch.rand(5, 2, generator=g, dtype=torch.float64) * 50
            boxes.append(torch.cat([xy, xy + wh], dim=1))
        for kind in ("PSROIAlign", "PSROIPool"):
            got = ps_roi_pool_vote(maps, boxes, k, scale, kind, sampling_ratio=2)
            ref = reference_ps_vote(maps, boxes, k, scale, kind, sampling_ratio=2)
            self.assertEqual(tuple(got.shape), (10, d))
            self.assertTrue(torch.allclose(got, ref, atol=1e-9), kind)

    def test_exportable_form_equals_torchvision_ps_roi_align(self):
        # values and gradients, adaptive and fixed sampling, boxes crossing the border, tiny and
        # empty RoI sets
        from torchvision.ops import ps_roi_align

        g = torch.Generator().manual_seed(1)
        for k, d, sr in ((3, 2, 0), (3, 4, 2), (2, 5, 0), (7, 1, 1)):
            maps = torch.randn(2, d * k * k, 12, 15, generator=g, dtype=torch.float64)
            boxes = []
            for n in (6, 0):
                xy = -10 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
                wh = 0.5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 80
                boxes.append(torch.cat([xy, xy + wh], dim=1))
            a = maps.clone().requires_grad_()
            b = maps.clone().requires_grad_()
            got = ps_roi_pool_vote(a, boxes, k, 1 / 8.0, "PSROIAlign", sampling_ratio=sr)
            ref = ps_roi_align(b, boxes, k, 1 / 8.0, sr if sr > 0 else -1).mean(dim=(2, 3))
            torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
            w = torch.randn(got.shape, generator=g, dtype=torch.float64)
            (got * w).sum().backward()
            (ref * w).sum().backward()
            torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=0)

    def test_layout_picks_position_sensitive_channel(self):
        # One map per (class, bin) set to a constant: the vote is the mean of the constants of the
        # class's own k² channels.
        k = 2
        maps = (
            torch.arange(3 * k * k, dtype=torch.float32)
            .view(1, -1, 1, 1)
            .expand(1, -1, 8, 8)
            .contiguous()
        )
        boxes = [torch.tensor([[8.0, 8.0, 56.0, 56.0]])]
        got = ps_roi_pool_vote(maps, boxes, k, 1 / 8.0, "PSROIPool")
        self.assertEqual(got.tolist(), [[1.5, 5.5, 9.5]])

    def test_bad_type(self):
        with self.assertRaises(ValueError):
            ps_roi_pool_vote(torch.zeros(1, 9, 4, 4), [torch.zeros(0, 4)], 3, 1.0, "Max")


class TestOHEM(unittest.TestCase):
    def test_top_b_matches_bruteforce(self):
        g = torch.Generator().manual_seed(3)
        losses = torch.rand(50, generator=g)
        boxes = torch.rand(50, 4, generator=g) * 50
        boxes[:, 2:] += boxes[:, :2] + 5
        got = ohem_select(losses, boxes, 16)
        brute = sorted(range(50), key=lambda i: -losses[i].item())[:16]
        self.assertEqual(got.tolist(), brute)
        self.assertEqual(len(ohem_select(losses, boxes, 100)), 50)

    def test_nms_variant_matches_greedy_reference(self):
        from detectron2.structures import pairwise_iou

        g = torch.Generator().manual_seed(4)
        losses = torch.rand(40, generator=g)
        boxes = torch.rand(40, 4, generator=g) * 30
        boxes[:, 2:] += boxes[:, :2] + 10
        iou = pairwise_iou(Boxes(boxes), Boxes(boxes))
        kept = []
        for i in sorted(range(40), key=lambda i: -losses[i].item()):
            if all(iou[i, j] <= 0.5 for j in kept):
                kept.append(i)
        self.assertEqual(ohem_select(losses, boxes, 10, nms_thresh=0.5).tolist(), kept[:10])

    def test_head_backpropagates_exactly_the_hardest(self):
        cfg = get_config(WIDER, ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 8])
        model = build_model_no_weights(cfg)
        model.train()
        head = model.roi_heads
        self.assertIsInstance(head, RFCNROIHeads)
        self.assertTrue(head.ohem)
        inputs = random_inputs(cfg, num_boxes=(3, 2))
        with EventStorage():
            images = model.preprocess_image(inputs)
            feats = model.backbone(images.tensor)
            gt = [x["instances"] for x in inputs]
            proposals, _ = model.proposal_generator(images, feats, gt)
            labelled = head.label_and_sample_proposals(
                [p[: head.ohem_num_proposals] for p in proposals], gt
            )
            # every proposal is labelled (no sampling) when OHEM is on
            self.assertEqual(len(labelled[0]), min(len(proposals[0]), head.ohem_num_proposals) + 3)
            preds = head.predict(feats, [p.proposal_boxes for p in labelled])
            per_roi = head.box_predictor.per_roi_losses(preds, labelled)
            _, selected = head._ohem(preds, labelled)
        start = 0
        for lab, sel in zip(labelled, selected):
            loss_img = per_roi[start : start + len(lab)]
            expected = torch.sort(loss_img, descending=True, stable=True).values[:8]
            # find the selected proposals' losses by box identity
            chosen = [
                loss_img[(lab.proposal_boxes.tensor == b).all(dim=1).nonzero()[0, 0]].item()
                for b in sel.proposal_boxes.tensor
            ]
            self.assertEqual(len(sel), 8)
            self.assertTrue(torch.allclose(torch.tensor(chosen), expected))
            start += len(lab)


class TestRFCNHead(unittest.TestCase):
    def test_losses_and_inference(self):
        variant = [
            "MODEL.RFCN.OHEM.ENABLED", False,
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False,
            "MODEL.RFCN.CONV_NEW_DIM", 32,
            "MODEL.RFCN.POOLER_TYPE", "PSROIPool",
        ]  # fmt: skip
        for opts in ([], variant):
            cfg = get_config(WIDER, opts)
            model = build_model_no_weights(cfg)
            losses = train_step(model, random_inputs(cfg, num_boxes=(3, 0)))
            self.assertEqual(
                {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}, set(losses)
            )
            self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
            unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            self.assertEqual(unused, [])
            model.eval()
            with torch.no_grad():
                out = model(random_inputs(cfg, sizes=((200, 249),), num_boxes=(0,)))[0]["instances"]
            b = out.pred_boxes.tensor
            self.assertTrue(
                ((b[:, 0] >= 0) & (b[:, 2] <= 249) & (b[:, 1] >= 0) & (b[:, 3] <= 200)).all()
            )

    def test_empty_proposals_and_gt(self):
        cfg = get_config(WIDER)
        model = build_model_no_weights(cfg)
        head = model.roi_heads
        head.train()
        feats = {"vgg5": torch.randn(2, 16, 8, 10)}
        empty = []
        for _ in range(2):
            p = Instances((128, 160))
            p.proposal_boxes = Boxes(torch.zeros(0, 4))
            p.objectness_logits = torch.zeros(0)
            empty.append(p)
        gts = []
        for _ in range(2):
            t = Instances((128, 160))
            t.gt_boxes = Boxes(torch.zeros(0, 4))
            t.gt_classes = torch.zeros(0, dtype=torch.long)
            gts.append(t)
        head.proposal_append_gt = False
        with EventStorage():
            _, losses = head(None, feats, empty, gts)
        for v in losses.values():
            self.assertTrue(torch.isfinite(v))
            self.assertEqual(v.item(), 0.0)

    def test_nan_features_give_no_detections(self):
        cfg = get_config(WIDER)
        model = build_model_no_weights(cfg)
        head = model.roi_heads
        head.eval()
        p = Instances((128, 160))
        p.proposal_boxes = Boxes(torch.tensor([[10.0, 10.0, 60.0, 70.0], [0.0, 0.0, 100.0, 90.0]]))
        p.objectness_logits = torch.zeros(2)
        for bad in (float("nan"), float("inf")):
            feats = {"vgg5": torch.full((1, 16, 8, 10), bad)}
            with torch.no_grad():
                out, _ = head(None, feats, [p])
            self.assertEqual(len(out[0]), 0)

    def test_class_agnostic_decoding(self):
        # With zero deltas, a class-agnostic head returns the proposal boxes themselves.
        cfg = get_config(WIDER, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
        model = build_model_no_weights(cfg)
        head = model.roi_heads
        head.eval()
        torch.nn.init.zeros_(head.bbox_conv.weight)
        torch.nn.init.zeros_(head.bbox_conv.bias)
        p = Instances((128, 160))
        boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [80.0, 20.0, 150.0, 100.0]])
        p.proposal_boxes = Boxes(boxes)
        p.objectness_logits = torch.zeros(2)
        with torch.no_grad():
            out, _ = head(None, {"vgg5": torch.randn(1, 16, 8, 10)}, [p])
        got = out[0].pred_boxes.tensor
        self.assertEqual(len(got), 2)
        for b in boxes:
            self.assertTrue(((got - b).abs().sum(dim=1) < 1e-4).any())


if __name__ == "__main__":
    unittest.main()


class TestOHEMLossType(unittest.TestCase):
    def test_ohem_rejects_other_box_losses_clearly(self):
        with self.assertRaisesRegex(ValueError, "BBOX_REG_LOSS_TYPE 'smooth_l1', got 'giou'"):
            build_model_no_weights(
                get_config(WIDER, ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou"])
            )
        cfg = get_config(
            WIDER,
            ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou", "MODEL.RFCN.OHEM.ENABLED", False],
        )
        build_model_no_weights(cfg)  # without OHEM, detectron2's losses handle every type
