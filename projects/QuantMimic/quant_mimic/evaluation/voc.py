"""Pascal VOC evaluation: detectron2's evaluator, saying which AP definition it reports."""

from detectron2.evaluation import PascalVOCDetectionEvaluator

__all__ = ["VOCDetectionEvaluator"]


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    """detectron2's VOC evaluator, saying which AP it reports (VOC07 11-point or area under PR)."""

    def evaluate(self):
        metric = (
            "VOC2007 11-point interpolated AP" if self._is_2007 else "VOC2010+ area-under-PR AP"
        )
        results = super().evaluate()
        if results is not None:
            self._logger.info(f"{self._dataset_name}: bbox AP/AP50/AP75 above use the {metric}")
        return results
