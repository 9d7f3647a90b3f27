from .voc import VOCDetectionEvaluator
from .widerface import WiderFaceEvaluator, evaluate_widerface

__all__ = ["VOCDetectionEvaluator", "WiderFaceEvaluator", "evaluate_widerface"]
