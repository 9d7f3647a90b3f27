"""Pascal VOC evaluation: detectron2's evaluator and its AP arithmetic (``voc_eval``'s matching,
``voc_ap``), scoring the ground truth the dataset's loader read (the dicts that were trained on,
not the xml parsed a second time with other rules), saying which AP definition it reports,
reporting both at IoU 0.5, and leaving classes without ground truth out of the mean (named in the
log) instead of averaging a NaN.
"""

from collections import OrderedDict, defaultdict
from typing import Dict, List

import numpy as np

from detectron2.data import DatasetCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_ap
from detectron2.utils import comm

__all__ = ["VOCDetectionEvaluator", "voc_eval_dicts"]


def _ground_truth(dicts: List[dict], cls_id: int) -> Dict[str, dict]:
    """Per image id: the class's boxes in VOC's 1-based pixel convention (the loader's
    xmin/ymin + 1, as ``voc_eval`` reads them from xml) and their difficult flags."""
    recs = {}
    for d in dicts:
        objs = [a for a in d.get("annotations", ()) if a["category_id"] == cls_id]
        boxes = np.array(
            [[a["bbox"][0] + 1.0, a["bbox"][1] + 1.0, a["bbox"][2], a["bbox"][3]] for a in objs]
        ).reshape(-1, 4)
        difficult = np.array([bool(a.get("difficult", 0)) for a in objs], dtype=bool)
        recs[str(d["image_id"])] = {
            "bbox": boxes,
            "difficult": difficult,
            "det": [False] * len(objs),
        }
    return recs


def voc_eval_dicts(
    lines: List[str], dicts: List[dict], cls_id: int, ovthresh: float, use_07_metric: bool
) -> float:
    """
    AP of one class, with ``detectron2.evaluation.pascal_voc_evaluation.voc_eval``'s matching (a
    detection matches the unmatched ground-truth box of highest IoU above ``ovthresh``, difficult
    boxes neither count nor penalise; +1 pixel widths) and ``voc_ap``, on the dataset's dicts.

    Args:
        lines (list[str]): "image_id score xmin ymin xmax ymax" (1-based, as
            ``PascalVOCDetectionEvaluator.process`` writes them).
        dicts (list[dict]): the dataset's dicts (category ids contiguous).

    Returns:
        float: AP in [0, 1]; NaN when the class has no non-difficult box.
    """
    recs = _ground_truth(dicts, cls_id)
    npos = sum(int((~r["difficult"]).sum()) for r in recs.values())
    rows = [x.strip().split(" ") for x in lines if x.strip()]
    image_ids = [x[0] for x in rows]
    confidence = np.array([float(x[1]) for x in rows])
    boxes = np.array([[float(z) for z in x[2:]] for x in rows]).reshape(-1, 4)
    order = np.argsort(-confidence)
    boxes, image_ids = boxes[order, :], [image_ids[i] for i in order]
    tp, fp = np.zeros(len(image_ids)), np.zeros(len(image_ids))
    for d, image_id in enumerate(image_ids):
        r, bb = recs[image_id], boxes[d]
        ovmax, gt = -np.inf, r["bbox"]
        if gt.size > 0:
            iw = np.maximum(np.minimum(gt[:, 2], bb[2]) - np.maximum(gt[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gt[:, 3], bb[3]) - np.maximum(gt[:, 1], bb[1]) + 1.0, 0.0)
            inters = iw * ih
            union = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / union
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax > ovthresh:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d], r["det"][jmax] = 1.0, True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    if npos == 0:
        return float("nan")
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return float(voc_ap(rec, prec, use_07_metric))


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    """
    detectron2's VOC evaluator (VOC07 11-point or area-under-PR AP, IoU 0.50:0.95), with:

    * the AP definition stated in the log;
    * classes with no non-difficult ground-truth object in the split named in a warning and left
      out of the mean (their AP is undefined: voc_eval divides by zero and detectron2 averages the
      NaN into every metric); the count is reported as ``bbox/classes_without_gt``;
    * per-class AP50 in the results (``bbox/AP50-<class>``), and AP50 by both definitions
      (``bbox/AP50_11point``, ``bbox/AP50_area``);
    * the ground truth is the dataset's dicts (:func:`voc_eval_dicts`): what was trained on is what
      is scored, for xml that detectron2's parser would reject (decimal coordinates, no
      ``<pose>``) too.
    """

    def _gt_counts(self):
        counts = defaultdict(int)
        for d in DatasetCatalog.get(self._dataset_name):
            for a in d.get("annotations", ()):
                if not a.get("difficult", 0):
                    counts[a["category_id"]] += 1
        return counts

    def evaluate(self):
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        predictions = defaultdict(list)
        for per_rank in all_predictions:
            for cls_id, lines in per_rank.items():
                predictions[cls_id].extend(lines)
        gt_counts = self._gt_counts()
        missing = [c for i, c in enumerate(self._class_names) if gt_counts[i] == 0]
        if missing:
            self._logger.warning(
                f"{self._dataset_name}: no ground truth for class(es) {missing}; left out of the "
                "mean AP"
            )
        metric = (
            "VOC2007 11-point interpolated AP" if self._is_2007 else "VOC2010+ area-under-PR AP"
        )
        dicts = DatasetCatalog.get(self._dataset_name)
        aps = defaultdict(list)  # IoU threshold -> AP per evaluated class
        other = []  # AP50 by the other definition
        per_class = OrderedDict()
        for cls_id, cls_name in enumerate(self._class_names):
            if cls_name in missing:
                continue
            lines = predictions.get(cls_id, [])
            for thresh in range(50, 100, 5):
                ap = voc_eval_dicts(lines, dicts, cls_id, thresh / 100.0, self._is_2007)
                aps[thresh].append(ap * 100)
            other.append(100 * voc_eval_dicts(lines, dicts, cls_id, 0.5, not self._is_2007))
            per_class[f"AP50-{cls_name}"] = aps[50][-1]
        if not aps:
            raise ValueError(
                f"{self._dataset_name}: no class has ground truth; nothing to evaluate"
            )
        mean = {t: float(np.mean(v)) for t, v in aps.items()}
        bbox = OrderedDict(AP=float(np.mean(list(mean.values()))), AP50=mean[50], AP75=mean[75])
        # both definitions at IoU 0.5: VOC07's 11-point and the area under the PR curve
        bbox["AP50_11point" if self._is_2007 else "AP50_area"] = mean[50]
        bbox["AP50_area" if self._is_2007 else "AP50_11point"] = float(np.mean(other))
        bbox.update(per_class)
        bbox["classes_without_gt"] = float(len(missing))
        self._logger.info(f"{self._dataset_name}: bbox AP/AP50/AP75 use the {metric}")
        return OrderedDict(bbox=bbox)
