"""The detectors the speed tools compare (``tools/benchmark_speed.py``, ``tools/profile_onnx.py``):
name -> (config relative to ``configs/``, overrides). Random weights suffice for speed."""

from typing import Dict

__all__ = ["MODELS", "DEPLOY_OPTS", "STUDENTS"]

MODELS: Dict[str, tuple] = {
    "VGG16 R-FCN": ("WIDERFace/rfcn_VGG-1-4_teacher.yaml", ["MODEL.VGG.CHANNEL_DIVISOR", 1]),
    "VGG-1-4 R-FCN": ("WIDERFace/rfcn_VGG-1-4_teacher.yaml", []),
    "VGG-1-32 R-FCN": ("WIDERFace/rfcn_VGG-1-32_scratch.yaml", []),
    "ResNet18 Faster R-CNN": ("PascalVOC-Detection/faster_rcnn_R18_C4_teacher.yaml", []),
    "ResNet18-1-16 Faster R-CNN": ("PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml", []),
    # one-stage students (docs/OTHER_HEADS.md): detectron2's RetinaNet / FCOS at 1-16
    "ResNet18-1-16 RetinaNet": ("PascalVOC-Detection/retinanet_R18-1-16_FPN_scratch.yaml", []),
    "ResNet18-1-16 FCOS": ("PascalVOC-Detection/fcos_R18-1-16_FPN_scratch.yaml", []),
}
# The students at the test-time proposal counts chosen for the tiny model (README "Speed": greedy
# NMS keeps the same top-scoring survivors from a shorter pre-NMS list; the AP cost is measured by
# tools/sweep_test_proposals.py).
DEPLOY_OPTS = ["MODEL.RPN.PRE_NMS_TOPK_TEST", 1000, "MODEL.RPN.POST_NMS_TOPK_TEST", 100]
MODELS["VGG-1-32 R-FCN, RPN test 1000/100"] = (MODELS["VGG-1-32 R-FCN"][0], DEPLOY_OPTS)
MODELS["ResNet18-1-16 Faster R-CNN, RPN test 1000/100"] = (
    MODELS["ResNet18-1-16 Faster R-CNN"][0],
    DEPLOY_OPTS,
)
STUDENTS = tuple(m for m in MODELS if "-1-32" in m or "-1-16" in m)
