"""WIDER FACE evaluation: the official protocol (eval_tools / its widely used Python port).

Per subset (easy, medium, hard): predictions of every val image, sorted by score, scores min-max
normalised over the whole set; a detection is matched to the ground-truth face of highest IoU; IoU ≥
0.5 with a face outside the subset's keep list makes the detection ignored (neither TP nor FP);
recall over the kept faces; precision/recall at 1000 score thresholds; all-point AP.

Standalone, on a folder of official-layout predictions (``<event>/<image>.txt``):

    python -m quant_mimic.evaluation.widerface --pred DIR --gt eval_tools/ground_truth
"""

import argparse
import copy
import itertools
import logging
import os
from collections import OrderedDict, defaultdict
from typing import Dict, List, Tuple

import numpy as np
import scipy.io

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = [
    "SUBSETS",
    "load_widerface_gt",
    "write_widerface_predictions",
    "read_widerface_predictions",
    "evaluate_widerface",
    "WiderFaceEvaluator",
]

logger = logging.getLogger(__name__)

SUBSETS = ("easy", "medium", "hard")
Predictions = Dict[str, Dict[str, np.ndarray]]  # event -> image stem -> (K, 5) x y w h score


def _cell_str(x) -> str:
    return str(np.asarray(x).reshape(-1)[0])


def load_widerface_gt(gt_dir: str):
    """
    Read ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``.

    Returns:
        list[(event, stem, boxes (K, 4) x y w h, {subset: keep indices (0-based)})]
    """
    face = scipy.io.loadmat(os.path.join(gt_dir, "wider_face_val.mat"))
    keeps = {
        s: scipy.io.loadmat(os.path.join(gt_dir, f"wider_{s}_val.mat"))["gt_list"] for s in SUBSETS
    }
    out = []
    for i in range(len(face["event_list"])):
        event = _cell_str(face["event_list"][i][0])
        files = face["file_list"][i][0]
        boxes = face["face_bbx_list"][i][0]
        for j in range(len(files)):
            stem = _cell_str(files[j][0])
            b = np.asarray(boxes[j][0], dtype=np.float64).reshape(-1, 4)
            keep = {
                s: np.asarray(keeps[s][i][0][j][0]).reshape(-1).astype(np.int64) - 1
                for s in SUBSETS
            }
            out.append((event, stem, b, keep))
    return out


def write_widerface_predictions(preds: Predictions, out_dir: str) -> None:
    """Write ``<out_dir>/<event>/<stem>.txt``: the name line, the count, ``x y w h score`` lines."""
    for event, images in preds.items():
        os.makedirs(os.path.join(out_dir, event), exist_ok=True)
        for stem, dets in images.items():
            lines = [stem, str(len(dets))] + [
                f"{x:.1f} {y:.1f} {w:.1f} {h:.1f} {s:.6f}"
                for x, y, w, h, s in np.asarray(dets).tolist()
            ]
            with open(os.path.join(out_dir, event, stem + ".txt"), "w") as f:
                f.write("\n".join(lines) + "\n")


def read_widerface_predictions(pred_dir: str) -> Predictions:
    """Read a folder written by :func:`write_widerface_predictions` or for the official tool."""
    preds: Predictions = defaultdict(dict)
    for event in sorted(os.listdir(pred_dir)):
        event_dir = os.path.join(pred_dir, event)
        if not os.path.isdir(event_dir):
            continue
        for name in sorted(os.listdir(event_dir)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(event_dir, name)) as f:
                lines = [line.strip() for line in f if line.strip()]
            count = int(lines[1]) if len(lines) > 1 else 0
            rows = [[float(v) for v in line.split()[:5]] for line in lines[2 : 2 + count]]
            preds[event][os.path.splitext(name)[0]] = np.asarray(rows, dtype=np.float64).reshape(
                -1, 5
            )
    return dict(preds)


def _overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes with the official tool's inclusive-pixel (+1) convention. (A, B)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(inter > 0, inter / np.maximum(union, 1e-12), 0.0)


def _image_eval(pred: np.ndarray, gt: np.ndarray, kept: np.ndarray, iou_thresh: float):
    """Per detection (score order): kept faces recalled so far, and whether the detection counts."""
    p = pred[:, :4].copy()
    g = gt.copy()
    p[:, 2:] += p[:, :2]
    g[:, 2:] += g[:, :2]
    overlaps = _overlaps(p, g)
    recalled = np.zeros(len(g))
    counts = np.ones(len(p))
    pred_recall = np.zeros(len(p))
    for h in range(len(p)):
        j = int(overlaps[h].argmax())
        if overlaps[h, j] >= iou_thresh:
            if not kept[j]:  # a face outside this subset: the detection is ignored
                recalled[j] = -1
                counts[h] = -1
            elif recalled[j] == 0:
                recalled[j] = 1
        pred_recall[h] = np.sum(recalled == 1)
    return pred_recall, counts


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def evaluate_widerface(
    preds: Predictions, gt_dir: str, iou_thresh: float = 0.5, thresh_num: int = 1000
) -> Dict[str, float]:
    """
    AP (in [0, 1]) on the easy, medium and hard subsets by the official protocol (module doc).

    Args:
        preds: event -> image stem -> (K, 5) detections ``x y w h score``. A missing image counts
            as no detections.
    """
    gts = load_widerface_gt(gt_dir)
    preds = copy.deepcopy(preds)
    all_scores = [d[:, 4] for images in preds.values() for d in images.values() if len(d)]
    if all_scores:
        s = np.concatenate(all_scores)
        lo, hi = float(s.min()), float(s.max())
        for images in preds.values():
            for stem, d in images.items():
                d = d[np.argsort(-d[:, 4], kind="stable")]
                # min-max normalisation over the whole set; constant scores all become 1
                d[:, 4] = (d[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
                images[stem] = d
    thresholds = 1.0 - (np.arange(thresh_num) + 1.0) / thresh_num
    results = {}
    for subset in SUBSETS:
        pr = np.zeros((thresh_num, 2))
        num_faces = 0
        for event, stem, gt, keep in gts:
            num_faces += len(keep[subset])
            pred = preds.get(event, {}).get(stem, np.zeros((0, 5)))
            if len(gt) == 0 or len(pred) == 0:
                continue
            kept = np.zeros(len(gt), dtype=bool)
            kept[keep[subset]] = True
            pred_recall, counts = _image_eval(pred, gt, kept, iou_thresh)
            # Scores are sorted descending: the last detection at or above each threshold.
            last = np.searchsorted(-pred[:, 4], -thresholds, side="right") - 1
            valid = last >= 0
            counted = np.cumsum(counts == 1)
            pr[valid, 0] += counted[last[valid]]
            pr[valid, 1] += pred_recall[last[valid]]
        precision = np.divide(pr[:, 1], pr[:, 0], out=np.zeros(thresh_num), where=pr[:, 0] > 0)
        recall = pr[:, 1] / num_faces if num_faces else np.zeros(thresh_num)
        results[subset] = _voc_ap(recall, precision)
    return results


class WiderFaceEvaluator(DatasetEvaluator):
    """
    Collects detections in original-image coordinates, writes them in the official layout under
    ``<output_dir>/predictions`` and reports AP_easy, AP_medium, AP_hard (in %) against the
    dataset's ``gt_dir`` .mat files.
    """

    def __init__(self, dataset_name: str, output_dir: str = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._gt_dir = MetadataCatalog.get(dataset_name).gt_dir
        self._predictions: List[Tuple[str, np.ndarray]] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            boxes = inst.pred_boxes.tensor.numpy().astype(np.float64)
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            dets = np.concatenate([xywh, inst.scores.numpy()[:, None]], axis=1).reshape(-1, 5)
            self._predictions.append((inp["image_id"], dets))

    def evaluate(self):
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        preds: Predictions = defaultdict(dict)
        for image_id, dets in predictions:
            event, stem = image_id.split("/")[-2:]
            preds[event][stem] = dets
        if self._output_dir:
            out = os.path.join(self._output_dir, "predictions")
            write_widerface_predictions(preds, out)
            logger.info(f"WIDER FACE predictions written to {out} (official layout)")
        aps = evaluate_widerface(dict(preds), self._gt_dir)
        logger.info(
            f"WIDER FACE {self._dataset_name} (official protocol, IoU 0.5): "
            + ", ".join(f"{s} {100 * aps[s]:.2f}" for s in SUBSETS)
        )
        return OrderedDict(widerface={f"AP_{s}": 100.0 * aps[s] for s in SUBSETS})


def main(argv=None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description="WIDER FACE evaluation (official protocol)")
    parser.add_argument("--pred", required=True, help="folder of <event>/<image>.txt predictions")
    parser.add_argument(
        "--gt", required=True, help="folder with wider_face_val.mat and wider_*_val.mat"
    )
    parser.add_argument("--iou", type=float, default=0.5)
    args = parser.parse_args(argv)
    aps = evaluate_widerface(read_widerface_predictions(args.pred), args.gt, args.iou)
    print("==================== Results ====================")
    for s in SUBSETS:
        print(f"{s.capitalize():6s} Val AP: {aps[s]:.4f}")
    print("=================================================")
    return aps


if __name__ == "__main__":
    main()
