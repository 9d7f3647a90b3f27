"""The pipeline's stages and benchmarks: which config trains each stage, and where runs live."""

import os
from typing import Optional, Tuple

from ..fileio import CONFIGS_DIR

__all__ = [
    "PRESET_DIR",
    "STAGES",
    "OPTIONAL_STAGES",
    "DEFAULT_STAGES",
    "TEACHER_STAGES",
    "STUDENT_TEACHER",
    "FIG5_STAGES",
    "BENCHES",
    "config_file",
    "data_root",
    "stage_kind",
    "stage_dir",
    "split_run_name",
    "PRETRAIN_STAGE",
    "EXPORT_STAGE",
    "FAMILIES",
    "DATA_STAGES",
    "is_custom",
    "preset_dir",
    "export_dir",
    "pretrain_dir",
    "cls_data_root",
]

PRESET_DIR = os.path.join(CONFIGS_DIR, "Synth", "presets")

STAGES = (
    "data",
    "pretrain",
    "teacher",
    "teacher_quantized",
    "scratch",
    "scratch_quantized",
    "mimic",
    "quant_mimic_teacher_only",
    "quant_mimic",
    "export",
)
# Run only when named in --stages: Table 5's control (the student alone with its output quantized);
# the classification pretraining of the student's backbone (Table 7's "finetuned on ImageNet"; also
# run when --init pretrained finds no pretrained backbone); the export of the Quantization Mimic
# student (seed 0) to a parity-checked ONNX file (a default stage on your data).
PRETRAIN_STAGE = "pretrain"
EXPORT_STAGE = "export"
OPTIONAL_STAGES = (PRETRAIN_STAGE, "scratch_quantized", EXPORT_STAGE)
DEFAULT_STAGES = tuple(s for s in STAGES if s not in OPTIONAL_STAGES)
TEACHER_STAGES = ("teacher", "teacher_quantized")
# Student stages and the teacher stage they learn from (None: no teacher).
STUDENT_TEACHER = {
    "scratch": None,
    "scratch_quantized": None,
    "mimic": "teacher",
    "quant_mimic_teacher_only": "teacher_quantized",
    "quant_mimic": "teacher_quantized",
}
FIG5_STAGES = ("quant_mimic_teacher_only", "quant_mimic")  # the students Fig. 5 compares

# Each benchmark: the config of every stage (configs/Synth), its data, its main metrics, and the
# paper's corresponding rows (real datasets: WIDER FACE val Tables 2-4, Pascal VOC 2007 Table 7-8).
BENCHES = {
    "faces": {
        "kind": "faces",
        "data_dir": "synth/widerface",
        "configs": {
            "teacher": "rfcn_VGG-1-4_teacher.yaml",
            "teacher_quantized": "rfcn_VGG-1-4_teacher_quantized.yaml",
            "scratch": "rfcn_VGG-1-32_scratch.yaml",
            "scratch_quantized": "rfcn_VGG-1-32_scratch_quantized.yaml",
            "mimic": "rfcn_VGG-1-32_mimic.yaml",
            "quant_mimic_teacher_only": "rfcn_VGG-1-32_quant_mimic_teacher_only.yaml",
            "quant_mimic": "rfcn_VGG-1-32_quant_mimic.yaml",
        },
        "metrics": ("widerface/AP_easy", "widerface/AP_medium", "widerface/AP_hard"),
        "paper": {
            "teacher": "82.4 / 62.5 / 26.3 (VGG-1-4, Table 2)",
            "teacher_quantized": "83.7 / 65.0 / 27.4 (Table 2)",
            "scratch": "71.3 / 55.4 / 23.8 (VGG-1-32, Table 2)",
            "scratch_quantized": "71.9 / 55.2 / 23.7 (Table 5)",
            "mimic": "71.9 / 58.2 / 25.6 (Table 3-4)",
            "quant_mimic_teacher_only": "73.0 / 59.3 / 25.6 (Table 4)",
            "quant_mimic": "73.9 / 62.1 / 27.6 (Table 2-4)",
        },
    },
    "voc": {
        "kind": "voc",
        "data_dir": "synth/VOC2007",
        "configs": {
            "teacher": "faster_rcnn_R18_C4_teacher.yaml",
            "teacher_quantized": "faster_rcnn_R18_C4_teacher_quantized.yaml",
            "scratch": "faster_rcnn_R18-1-16_C4_scratch.yaml",
            "scratch_quantized": "faster_rcnn_R18-1-16_C4_scratch_quantized.yaml",
            "mimic": "faster_rcnn_R18-1-16_C4_mimic.yaml",
            "quant_mimic_teacher_only": "faster_rcnn_R18-1-16_C4_quant_mimic_teacher_only.yaml",
            "quant_mimic": "faster_rcnn_R18-1-16_C4_quant_mimic.yaml",
        },
        "metrics": ("bbox/AP50", "bbox/AP"),
        "paper": {
            "teacher": "72.9 mAP (ResNet18, Table 7)",
            "teacher_quantized": "73.3 (Table 7)",
            "scratch": "40.5 (ResNet18-1-16, Table 7)",
            "scratch_quantized": "not in the paper (Table 5 is faces only)",
            "mimic": "44.6 (Table 8)",
            "quant_mimic_teacher_only": "not in the paper",
            "quant_mimic": "47.0 (Table 7-8)",
        },
    },
}
# The VOC benchmark with FPN detectors (docs/OTHER_HEADS.md): ResNet18-FPN -> ResNet18-1-16 FPN,
# each RoI mimicked on its FPN level. Not a paper row.
BENCHES["voc_fpn"] = {
    "kind": "voc",
    "data_dir": "synth/VOC2007",
    "configs": {
        stage: name.replace("_C4_", "_FPN_") for stage, name in BENCHES["voc"]["configs"].items()
    },
    "metrics": ("bbox/AP50", "bbox/AP"),
    "paper": {stage: "not in the paper (C4 only)" for stage in BENCHES["voc"]["configs"]},
}

# The VOC benchmark with one-stage students (docs/OTHER_HEADS.md): the ResNet18-1-4 RetinaNet
# teacher
# (quantized for Quantization Mimic) -> ResNet18-1-16 RetinaNet or FCOS students, their RoIs the
# ground truth and their own detections (mimic_dense.py). Not a paper row.
for _bench, _arch in (("voc_retinanet", "retinanet"), ("voc_fcos", "fcos")):
    BENCHES[_bench] = {
        "kind": "voc",
        "data_dir": "synth/VOC2007",
        "configs": {
            "teacher": "retinanet_R18-1-4_FPN_teacher.yaml",
            "teacher_quantized": "retinanet_R18-1-4_FPN_teacher_quantized.yaml",
            **{
                stage: f"{_arch}_R18-1-16_FPN_{stage}.yaml"
                for stage in STUDENT_TEACHER  # scratch ... quant_mimic
            },
        },
        "metrics": ("bbox/AP50", "bbox/AP"),
        "paper": {
            stage: "not in the paper (two-stage only)" for stage in BENCHES["voc"]["configs"]
        },
    }

# Your data (``--data FILE``, docs/YOUR_DATA.md): one bench per student family of configs/Custom,
# the same stages as the built-in benches without the synthetic data, ending with the export.
FAMILIES = {"vgg": "custom_vgg", "c4": "custom_c4", "fpn": "custom_fpn"}
DATA_STAGES = ("teacher", "teacher_quantized", "scratch", "mimic", "quant_mimic", EXPORT_STAGE)
_FAMILY_CONFIGS = {
    "custom_vgg": ("rfcn_VGG-1-4_teacher", "rfcn_VGG-1-32_{}"),
    "custom_c4": ("faster_rcnn_R18_C4_teacher", "faster_rcnn_R18-1-16_C4_{}"),
    "custom_fpn": ("faster_rcnn_R18_FPN_teacher", "faster_rcnn_R18-1-16_FPN_{}"),
}
for _bench, (_teacher, _student) in _FAMILY_CONFIGS.items():
    BENCHES[_bench] = {
        "kind": "custom",
        "configs": {
            "teacher": _teacher + ".yaml",
            "teacher_quantized": _teacher + "_quantized.yaml",
            **{s: _student.format(s) + ".yaml" for s in ("scratch", "mimic", "quant_mimic")},
        },
        "metrics": ("bbox/AP50", "bbox/AP"),
        "paper": {},  # no paper row: your data
    }


def is_custom(bench: str) -> bool:
    """Whether ``bench`` trains on the user's data (configs/Custom) rather than a synthetic set."""
    return BENCHES[bench]["kind"] == "custom"


def preset_dir(bench: str) -> str:
    """Where the bench's named presets live: configs/Custom/presets for your data (schedules in
    epochs), configs/Synth/presets for the built-in benches."""
    return os.path.join(CONFIGS_DIR, "Custom", "presets") if is_custom(bench) else PRESET_DIR


def config_file(bench: str, stage: str) -> str:
    """The absolute path of the config that trains ``stage`` on ``bench`` (configs/Synth, or
    configs/Custom for your data)."""
    folder = "Custom" if is_custom(bench) else "Synth"
    return os.path.join(CONFIGS_DIR, folder, BENCHES[bench]["configs"][stage])


def export_dir(out: str) -> str:
    """The export stage's output: the ONNX student and its parity report."""
    return os.path.join(out, EXPORT_STAGE)


def data_root(bench: str, out: str) -> str:
    """The benchmark's synthetic data folder under run folder ``out`` (``DETECTRON2_DATASETS``
    is ``out/datasets``)."""
    return os.path.join(out, "datasets", BENCHES[bench]["data_dir"])


def pretrain_dir(out: str) -> str:
    """The pretrain stage's output (``backbone.pth`` ...), shared by every student, seed and λ."""
    return os.path.join(out, PRETRAIN_STAGE)


def cls_data_root(out: str) -> str:
    """The built-in classification set the pretrain stage writes and reads."""
    return os.path.join(out, "datasets", "synth", "cls")


def stage_kind(stage: str) -> str:
    """The preset section of a stage: ``teacher``, ``teacher_quantized`` or ``student``."""
    return stage if stage in TEACHER_STAGES else "student"


def stage_dir(out: str, stage: str, seed: Optional[int]) -> str:
    """The run folder of one stage run: ``out/stage`` (teachers) or ``out/stage_seedK``."""
    return os.path.join(out, stage if seed is None else f"{stage}_seed{seed}")


def split_run_name(name: str) -> Tuple[str, Optional[int]]:
    """A stage run folder's name as (stage, seed): ``"mimic_seed2"`` -> ("mimic", 2); the inverse of
    :func:`stage_dir`; a teacher stage's folder has no seed: ``"teacher"`` -> ("teacher", None)."""
    stage, sep, seed = name.rpartition("_seed")
    if sep and seed.isdigit():
        return stage, int(seed)
    return name, None
