"""Pascal VOC evaluation: detectron2's evaluator, saying which AP definition it reports and
leaving classes without ground truth out of the mean (named in the log) instead of averaging a NaN.
"""

import os
import tempfile
from collections import OrderedDict, defaultdict

import numpy as np

from detectron2.data import DatasetCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_eval
from detectron2.utils import comm

__all__ = ["VOCDetectionEvaluator"]


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    """
    detectron2's VOC evaluator (VOC07 11-point or area-under-PR AP, IoU 0.50:0.95), with:

    * the AP definition stated in the log;
    * classes with no non-difficult ground-truth object in the split named in a warning and left
      out of the mean (their AP is undefined: voc_eval divides by zero and detectron2 averages the
      NaN into every metric); the count is reported as ``bbox/classes_without_gt``;
    * per-class AP50 in the results (``bbox/AP50-<class>``).
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
        aps = defaultdict(list)  # IoU threshold -> AP per evaluated class
        per_class = OrderedDict()
        with tempfile.TemporaryDirectory(prefix="pascal_voc_eval_") as dirname:
            template = os.path.join(dirname, "{}.txt")
            for cls_id, cls_name in enumerate(self._class_names):
                if cls_name in missing:
                    continue
                with open(template.format(cls_name), "w") as f:
                    f.write("\n".join(predictions.get(cls_id, [""])))
                for thresh in range(50, 100, 5):
                    _, _, ap = voc_eval(
                        template,
                        self._anno_file_template,
                        self._image_set_path,
                        cls_name,
                        ovthresh=thresh / 100.0,
                        use_07_metric=self._is_2007,
                    )
                    aps[thresh].append(ap * 100)
                per_class[f"AP50-{cls_name}"] = aps[50][-1]
        if not aps:
            raise ValueError(
                f"{self._dataset_name}: no class has ground truth; nothing to evaluate"
            )
        mean = {t: float(np.mean(v)) for t, v in aps.items()}
        bbox = OrderedDict(AP=float(np.mean(list(mean.values()))), AP50=mean[50], AP75=mean[75])
        bbox.update(per_class)
        bbox["classes_without_gt"] = float(len(missing))
        self._logger.info(f"{self._dataset_name}: bbox AP/AP50/AP75 use the {metric}")
        return OrderedDict(bbox=bbox)
