"""Training entry points: config setup and a ``DefaultTrainer`` for QuantMimic models."""

import ast
import contextlib
import logging
import os

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import launch as d2_launch
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpoint import SafeCheckpointer
from .config import add_quantmimic_config, validate_quantmimic_config
from .data import NamedErrorDatasetMapper
from .evaluation import VOCDetectionEvaluator, WiderFaceEvaluator
from .stride_calibration import apply_stride_calibration
from .teacher import pin_teacher, resolve_teacher_config_path

__all__ = ["get_config", "setup_cfg", "launch_from_args", "Trainer"]

logger = logging.getLogger(__name__)


def _ints_for_float_keys(cfg: CfgNode, opts) -> list:
    """
    ``opts`` (KEY VALUE ...) with an integer VALUE of a float-typed key written as a float:
    ``MODEL.MIMIC.LOSS_WEIGHT 10`` means λ = 10.0 (yacs alone rejects it as a type mismatch).
    """
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        node = cfg
        for part in str(out[i]).split("."):
            node = node.get(part) if isinstance(node, CfgNode) else None
        if not isinstance(node, float) or isinstance(out[i + 1], float):
            continue
        try:
            value = ast.literal_eval(out[i + 1]) if isinstance(out[i + 1], str) else out[i + 1]
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            out[i + 1] = float(value)
    return out


def setup_cfg(config_file: str = "", opts=(), args=None) -> CfgNode:
    """
    Build a frozen config from detectron2's defaults, QuantMimic's keys, a yaml file and overrides.
    ``MODEL.DEVICE`` falls back to "cpu" when CUDA is not available.
    ``MODEL.MIMIC.TEACHER.CONFIG_FILE`` becomes an absolute path, resolved like ``_BASE_`` (relative
    to the yaml naming it; to the working directory on the command line). QuantMimic's keys are
    validated (:func:`validate_quantmimic_config`): a bad value is an error naming it.
    With ``args`` (from ``default_argument_parser``), also runs detectron2's ``default_setup``.
    """
    cfg = get_cfg()
    add_quantmimic_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(_ints_for_float_keys(cfg, opts))
    # A value in the yaml was resolved by merge_from_file (add_quantmimic_config); one on the
    # command line is relative to the working directory.
    teacher_cfg = resolve_teacher_config_path("", opts)
    if teacher_cfg is not None:
        cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE = teacher_cfg
    validate_quantmimic_config(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    calibration = {}
    if args is not None and not getattr(args, "eval_only", False):
        # Ours: s from the teacher's statistics, fixed in the config before default_setup dumps it.
        calibration = apply_stride_calibration(cfg)
    cfg.freeze()
    if args is not None:
        default_setup(cfg, args)
        setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="quant_mimic")
        if calibration:
            logger.info(f"MODEL.QUANTIZATION.STRIDE calibrated (ours): {calibration}")
    return cfg


def launch_from_args(main_fn, args):
    """detectron2's ``launch`` of ``main_fn(args)`` with the processes the command line asks for
    (``default_argument_parser``'s ``--num-gpus``, ``--num-machines``, ``--machine-rank``,
    ``--dist-url``)."""
    return d2_launch(
        main_fn,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


# projects/QuantMimic/quant_mimic/engine.py -> <repo>/configs
CONFIGS_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3, "configs"))


def get_config(config_path: str, opts=()) -> CfgNode:
    """
    A QuantMimic config loaded the way ``train_net.py`` loads it, for notebooks and scripts (as
    detectron2's ``model_zoo.get_config``): detectron2's and QuantMimic's defaults, the yaml,
    ``opts`` (KEY VALUE ...), the teacher config path resolved relative to the yaml naming it, and
    QuantMimic's keys validated. No stride calibration and no logging set-up (``train_net.py``
    does those when it trains).

    Args:
        config_path (str): a yaml file, or a path relative to this repository's ``configs/``, e.g.
            ``"WIDERFace/rfcn_VGG-1-32_quant_mimic.yaml"``.
        opts (list[str]): overrides, as on the command line.

    Returns:
        CfgNode: mutable (``cfg.freeze()`` it if you wish); ``build_model(cfg)`` builds it.
    """
    path = config_path
    if not os.path.isfile(path) and os.path.isfile(os.path.join(CONFIGS_DIR, path)):
        path = os.path.join(CONFIGS_DIR, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config {config_path!r} not found (nor under {CONFIGS_DIR})")
    cfg = setup_cfg(path, opts)
    cfg.defrost()
    return cfg


@contextlib.contextmanager
def _cpu_aware_ddp():
    """
    ``DefaultTrainer.__init__`` wraps the model with detectron2's ``create_ddp_model``, which
    passes ``device_ids=[local rank]``; PyTorch's DDP rejects ``device_ids`` for CPU modules.
    For the constructor's duration only, that one function gets ``device_ids=None`` for CPU models;
    everything else is detectron2's own constructor, so changes there are inherited, not shadowed.
    """
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if not next(model.parameters()).is_cuda:
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """
    detectron2's ``DefaultTrainer`` with these changes:

    * the evaluator follows the test dataset's ``evaluator_type`` ("pascal_voc", "coco",
      "widerface");
    * models with a teacher (``MimicRCNN``) load it, strictly, when built for training, and pin
      its file (size + SHA-256, :func:`~quant_mimic.teacher.pin_teacher`) when training starts;
    * checkpoints go through :class:`~quant_mimic.checkpoint.SafeCheckpointer` (atomic writes,
      no non-finite weights saved, resume falls back from a broken file, another architecture in
      the output dir is an error);
    * data loaders name the image file when an image cannot be read;
    * on CPU, DDP is created with ``device_ids=None`` (see :func:`_cpu_aware_ddp`), so
      multi-process gloo runs go through the real trainer path.
    """

    def __init__(self, cfg: CfgNode):
        with _cpu_aware_ddp():
            super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling this; the
        # hooks (PeriodicCheckpointer) must get the safe one.
        self.checkpointer = SafeCheckpointer(
            self.checkpointer.model,
            self.cfg.OUTPUT_DIR,
            **self.checkpointer.checkpointables,
        )
        return super().build_hooks()

    def resume_or_load(self, resume: bool = True):
        super().resume_or_load(resume=resume)
        model = getattr(self.model, "module", self.model)
        weights = getattr(model, "teacher_weights", "")
        if weights and comm.is_main_process():
            pin_teacher(
                self.cfg.OUTPUT_DIR,
                weights,
                resume=resume,
                allow_change=self.cfg.MODEL.MIMIC.TEACHER.ALLOW_CHANGE,
            )

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=NamedErrorDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=NamedErrorDatasetMapper(cfg, False)
        )

    @classmethod
    def build_model(cls, cfg: CfgNode, load_teacher: bool = True) -> torch.nn.Module:
        """
        Build the model; a model with a teacher (MimicRCNN) loads ``MODEL.MIMIC.TEACHER.WEIGHTS``
        strictly, unless it is "" (random teacher, for tests).
        """
        model = build_model(cfg)
        if load_teacher and getattr(model, "teacher_weights", ""):
            model.load_teacher()
        return model

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str = None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
        if evaluator_type == "pascal_voc":
            return VOCDetectionEvaluator(dataset_name)
        if evaluator_type == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        if evaluator_type == "widerface":
            return WiderFaceEvaluator(dataset_name, output_dir=output_folder)
        raise ValueError(f"Unknown evaluator_type {evaluator_type!r} of dataset {dataset_name!r}")
