"""The R-FCN head learns: a tiny R-FCN overfits a handful of synthetic images to high AP on CPU."""

import unittest

import numpy as np
import pytest
import torch

from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from .common import build_model_no_weights, get_config


def synthetic_batch(num_images=4, size=128, seed=0):
    """Grey images with 1-3 bright textured squares (the one class) on noise."""
    rng = np.random.RandomState(seed)
    inputs = []
    for _ in range(num_images):
        img = rng.rand(size, size).astype("float32") * 80
        boxes = []
        while len(boxes) < 1 + rng.randint(3):
            s = rng.randint(24, 48)
            x, y = rng.randint(0, size - s), rng.randint(0, size - s)
            b = [x, y, x + s, y + s]
            if (
                boxes
                and pairwise_iou(
                    Boxes(torch.tensor([b], dtype=torch.float)),
                    Boxes(torch.tensor(boxes, dtype=torch.float)),
                ).max()
                > 0
            ):
                continue
            boxes.append(b)
            img[y : y + s, x : x + s] = 180 + rng.rand(s, s) * 60
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float))
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
        inputs.append(
            {"image": torch.from_numpy(img)[None], "instances": inst, "height": size, "width": size}
        )
    return inputs


def average_precision(predictions, gts, iou_thresh=0.5):
    """All-point AP of one class: detections of all images ranked by score, greedy IoU matching."""
    dets = []
    for img_id, inst in enumerate(predictions):
        for b, s in zip(inst.pred_boxes.tensor, inst.scores):
            dets.append((s.item(), img_id, b))
    dets.sort(key=lambda d: -d[0])
    used = [torch.zeros(len(g), dtype=torch.bool) for g in gts]
    num_gt = sum(len(g) for g in gts)
    tp = []
    for _, img_id, b in dets:
        iou = pairwise_iou(Boxes(b[None]), gts[img_id].gt_boxes)[0]
        iou[used[img_id]] = -1
        j = int(iou.argmax()) if len(iou) else -1
        hit = j >= 0 and iou[j] >= iou_thresh
        if hit:
            used[img_id][j] = True
        tp.append(1.0 if hit else 0.0)
    tp = np.array(tp)
    fp = 1 - tp
    recall = np.cumsum(tp) / max(num_gt, 1)
    precision = np.cumsum(tp) / np.maximum(np.cumsum(tp) + np.cumsum(fp), 1e-9)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


class TestAveragePrecisionHelper(unittest.TestCase):
    def test_perfect_and_empty(self):
        gts = [x["instances"] for x in synthetic_batch(2)]
        perfect = []
        for g in gts:
            p = Instances(g.image_size)
            p.pred_boxes = g.gt_boxes
            p.scores = torch.ones(len(g))
            perfect.append(p)
        self.assertAlmostEqual(average_precision(perfect, gts), 1.0)
        none = []
        for g in gts:
            p = Instances(g.image_size)
            p.pred_boxes = Boxes(torch.zeros(0, 4))
            p.scores = torch.zeros(0)
            none.append(p)
        self.assertEqual(average_precision(none, gts), 0.0)


@pytest.mark.slow
class TestRFCNOverfits(unittest.TestCase):
    def test_overfit_to_high_ap(self):
        cfg = get_config(
            "WIDERFace/rfcn_VGG-1-32_scratch.yaml",
            [
                "MODEL.VGG.CHANNEL_DIVISOR", 8,
                "MODEL.ANCHOR_GENERATOR.SIZES", [[24, 48]],
                "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 600, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 128,
                "MODEL.RPN.PRE_NMS_TOPK_TEST", 300, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
                "MODEL.RFCN.OHEM.NUM_PROPOSALS", 128, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
                "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.05,
            ],
        )  # fmt: skip
        torch.manual_seed(0)
        model = build_model_no_weights(cfg)
        inputs = synthetic_batch()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        model.train()
        with EventStorage() as storage:
            for it in range(400):
                storage.iter = it
                losses = model(inputs)
                opt.zero_grad()
                sum(losses.values()).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            preds = [o["instances"] for o in model(inputs)]
        ap = average_precision(preds, [x["instances"] for x in inputs])
        self.assertGreater(ap, 0.9, f"AP50 after overfitting: {ap:.3f}")


if __name__ == "__main__":
    unittest.main()
