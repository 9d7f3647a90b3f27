"""QuantMimic: Quantization Mimic (Wei et al., ECCV 2018) for Detectron2.

Importing this package registers, once, every component with detectron2's registries.
"""

import warnings

# detectron2 (April 2024) still calls torch.jit.script, which torch >= 2.10 flags on every import.
warnings.filterwarnings(
    "ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning
)

from . import data  # noqa: F401  (registers datasets)
from .config import add_quantmimic_config
from .divided_resnet import DividedRes5ROIHeads, build_divided_resnet_backbone
from .engine import Trainer, get_config, setup_cfg
from .fcos import FCOS
from .mimic_dense import MimicFCOS, MimicRetinaNet
from .mimic_head import RoIMimicHead, mimic_loss
from .mimic_rcnn import MimicRCNN
from .quantization import QuantizedBackbone, build_quantized_backbone, quantize
from .rfcn import RFCNROIHeads
from .teacher import FrozenTeacher
from .version import __version__  # noqa: F401  (quant_mimic.__version__)
from .vgg import VGG16, build_divided_vgg_backbone

__all__ = [
    "add_quantmimic_config",
    "get_config",
    "setup_cfg",
    "Trainer",
    "quantize",
    "QuantizedBackbone",
    "build_quantized_backbone",
    "build_divided_resnet_backbone",
    "DividedRes5ROIHeads",
    "VGG16",
    "build_divided_vgg_backbone",
    "RFCNROIHeads",
    "MimicRCNN",
    "MimicRetinaNet",
    "MimicFCOS",
    "FCOS",
    "RoIMimicHead",
    "FrozenTeacher",
    "mimic_loss",
]
