"""QuantMimic: Quantization Mimic (Wei et al., ECCV 2018) for Detectron2.

Importing this package registers, once, every component with detectron2's registries.
"""
from .config import add_quantmimic_config
from .engine import Trainer, setup_cfg
from .divided_resnet import DividedRes5ROIHeads, build_divided_resnet_backbone
from .mimic_rcnn import MimicRCNN, mimic_loss
from .quantization import QuantizedBackbone, build_quantized_backbone, quantize
from .rfcn import RFCNROIHeads
from .vgg import VGG16, build_divided_vgg_backbone

__version__ = "0.1.0"
