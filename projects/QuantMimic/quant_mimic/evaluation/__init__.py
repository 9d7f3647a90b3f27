from .widerface import WiderFaceEvaluator, evaluate_widerface

__all__ = ["WiderFaceEvaluator", "evaluate_widerface"]
