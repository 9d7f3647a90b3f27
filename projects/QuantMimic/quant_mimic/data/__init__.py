from .builtin import register_all_quantmimic_datasets
from .mapper import ImageReadError, NamedErrorDatasetMapper
from .voc import SYNTH_VOC_CLASSES, load_voc_instances, register_voc
from .widerface import load_widerface_instances, parse_wider_bbx_gt, register_widerface

register_all_quantmimic_datasets()

__all__ = [
    "register_all_quantmimic_datasets",
    "ImageReadError",
    "NamedErrorDatasetMapper",
    "SYNTH_VOC_CLASSES",
    "load_voc_instances",
    "register_voc",
    "load_widerface_instances",
    "parse_wider_bbx_gt",
    "register_widerface",
]
