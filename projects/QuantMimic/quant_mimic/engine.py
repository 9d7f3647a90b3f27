"""Training entry points: config setup, a ``DefaultTrainer`` for QuantMimic models, and the
``train_net.py`` command (:func:`main`).

    python train_net.py --config-file configs/PascalVOC-Detection/faster_rcnn_R18_C4_teacher.yaml \
        --num-gpus 8 [KEY VALUE ...]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS model_final.pth

A training run is: the config (:func:`setup_cfg`), then the stride calibration of a quantized
teacher (ours, :func:`~quant_mimic.stride_calibration.apply_stride_calibration`, an explicit step
of training, written into the run's ``config.yaml``), detectron2's ``default_setup``, the
:class:`Trainer`. After training (its final evaluation) or ``--eval-only``, the main process writes
the flat evaluation results to ``OUTPUT_DIR/final_metrics.json`` (e.g.
``{"widerface/AP_easy": 71.3}``), which the pipeline reads.
"""

import ast
import contextlib
import functools
import json
import logging
import os
import sys

import torch
import yaml

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.engine import defaults as d2_defaults
from detectron2.engine import launch as d2_launch
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpoint import (
    SafeCheckpointer,
    check_weights_file,
    checkpoint_file_problem,
    load_student_weights,
)
from .collapse_guard import CollapseGuard
from .config import TEACHER_CONFIG_KEY, add_quantmimic_config, validate_quantmimic_config
from .data import NamedErrorDatasetMapper
from .data.data_file import apply_data_file, check_num_classes, data_opts
from .errors import BadFileError, ConfigError, MissingFileError, UserError, WorkerUserError
from .evaluation import VOCDetectionEvaluator, WiderFaceEvaluator
from .fileio import CONFIGS_DIR, atomic_write_text, redirect_output
from .stride_calibration import apply_stride_calibration
from .teacher import (
    build_teacher_cfg,
    mimic_quantizer_args,
    pin_teacher,
    resolve_teacher_config_path,
)

__all__ = [
    "get_config",
    "setup_cfg",
    "launch",
    "launch_from_args",
    "Trainer",
    "FINAL_METRICS",
    "write_final_metrics",
    "build_parser",
    "load_eval_weights",
    "config_of_run",
    "teacher_config_from_run",
    "main",
    "train_net_main",
    "STAGE_OUTPUT_ENV",
]

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


def setup_cfg(config_file: str = "", opts=(), args=None, before_setup=None) -> CfgNode:
    """
    Build a frozen config from detectron2's defaults, QuantMimic's keys, a yaml file and overrides.
    ``MODEL.DEVICE`` falls back to "cpu" when CUDA is not available.
    ``MODEL.MIMIC.TEACHER.CONFIG_FILE`` becomes an absolute path, resolved like ``_BASE_`` (relative
    to the yaml naming it; to the working directory on the command line). QuantMimic's keys are
    validated (:func:`validate_quantmimic_config`): a bad value is an error naming it.
    With ``args`` (from ``default_argument_parser``), also runs detectron2's ``default_setup``
    (which writes ``OUTPUT_DIR/config.yaml``); ``before_setup(cfg)`` runs on the mutable config
    just before it (:func:`main` calibrates the stride there).
    """
    cfg = get_cfg()
    add_quantmimic_config(cfg)
    with _errors_name(config_file or "the config"):
        _merge(cfg, config_file, opts)
        # A value in the yaml was resolved by merge_from_file (add_quantmimic_config); one on the
        # command line is relative to the working directory.
        teacher_cfg = resolve_teacher_config_path("", opts)
        if teacher_cfg is not None:
            cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE = teacher_cfg
        notes = [teacher_config_from_run(cfg, opts), data_note(apply_data_file(cfg))]
        validate_quantmimic_config(cfg)
        check_num_classes(cfg)
        if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
            logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
            cfg.MODEL.DEVICE = "cpu"
        if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
            raise ConfigError(
                "",
                f"SOLVER.AMP.ENABLED is True but MODEL.DEVICE is {cfg.MODEL.DEVICE!r}: "
                "detectron2's AMPTrainer runs CUDA autocast and a CUDA gradient scaler, so mixed "
                "precision needs a GPU",
                "set SOLVER.AMP.ENABLED False on this machine",
            )
        notes.append(before_setup(cfg) if before_setup is not None else None)
    cfg.freeze()
    if args is not None:
        with _plain_config_dump():
            default_setup(cfg, args)
        setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="quant_mimic")
    for note in filter(None, notes):
        logger.info(note)
    return cfg


@contextlib.contextmanager
def _errors_name(config_file: str):
    """A user error that names no file (a config key's value) names ``config_file``."""
    try:
        yield
    except UserError as e:
        if not e.file:
            e.file = config_file
        raise


def _merge(cfg: CfgNode, config_file: str, opts) -> None:
    """The yaml file and the KEY VALUE overrides into ``cfg``; what yacs rejects (a key that does
    not exist, a value of the wrong type, a yaml that does not parse) is a user error naming the
    file or the command line."""
    if config_file and not os.path.isfile(config_file):
        raise MissingFileError(
            config_file,
            "the config file does not exist",
            "check --config-file (the project's configs are under configs/)",
        )
    for where, merge, fix in (
        (config_file, lambda: cfg.merge_from_file(config_file) if config_file else None,
         "compare its keys and values with the configs under configs/"),
        ("the command line", lambda: cfg.merge_from_list(_ints_for_float_keys(cfg, opts)),
         "give KEY VALUE pairs whose keys and value types are those of the config"),
    ):  # fmt: skip
        try:
            merge()
        except UserError:
            raise
        except (KeyError, ValueError, TypeError, AssertionError, yaml.YAMLError) as e:
            what = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
            raise ConfigError(where, f"{type(e).__name__}: {what}", fix) from e


def check_inputs(cfg: CfgNode, eval_only: bool = False, resume: bool = False) -> None:
    """
    The files a run reads, checked before its output folder is written: ``MODEL.WEIGHTS`` (unless
    a resume finds a checkpoint in ``OUTPUT_DIR``), a mimic student's teacher config (it builds,
    and its Q agrees with the student's, eq. 6) and ``MODEL.MIMIC.TEACHER.WEIGHTS``. A file that
    is missing or is not a checkpoint is a user error (:mod:`quant_mimic.errors`). URLs
    (``detectron2://``, ``https://``) are left to the load.
    """
    resumable = resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    weights = [] if resumable else [("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS)]
    if eval_only and not cfg.MODEL.WEIGHTS and not resumable:
        check_weights_file("", "MODEL.WEIGHTS")
    if not eval_only and cfg.MODEL.META_ARCHITECTURE.startswith("Mimic"):
        tcfg = build_teacher_cfg(cfg)
        mimic_quantizer_args(cfg, tcfg)
        weights.append(("MODEL.MIMIC.TEACHER.WEIGHTS", cfg.MODEL.MIMIC.TEACHER.WEIGHTS))
    for key, path in weights:
        if not path or "://" in path:
            continue
        problem = checkpoint_file_problem(check_weights_file(path, key))
        if problem:
            raise BadFileError(
                path,
                f"{key} is not a readable checkpoint ({problem})",
                "give a .pth or .pkl checkpoint that detectron2 wrote",
            )


@contextlib.contextmanager
def _plain_config_dump():
    """detectron2's ``default_setup`` logs the config files syntax-highlighted for a terminal: in
    ``log.txt`` that is escape codes around every token, and pygments takes ~0.3 s per dump (about
    a second per training run). Plain text instead, for the duration of the set-up."""
    original = d2_defaults._highlight
    d2_defaults._highlight = lambda code, filename: code
    try:
        yield
    finally:
        d2_defaults._highlight = original


def config_of_run(config_file: str, weights: str) -> str:
    """``config_file``, or, when it is empty, the ``config.yaml`` beside ``weights``: the config of
    the run those weights come from (what was trained is what is built). "" when neither."""
    if config_file or not weights or "://" in weights:
        return config_file
    run_config = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.yaml")
    return run_config if os.path.isfile(run_config) else ""


def data_note(registered) -> str:
    """The log line of a data file's registration."""
    if registered is None:
        return ""
    return (
        f"Data file: {len(registered.names)} classes {registered.names}; DATASETS.TRAIN "
        f"{tuple(registered.train)}, DATASETS.TEST ({registered.val!r},); every NUM_CLASSES set"
    )


def teacher_config_from_run(cfg: CfgNode, opts=()) -> str:
    """
    When ``MODEL.MIMIC.TEACHER.WEIGHTS`` lies in a run directory that holds the ``config.yaml``
    it was trained with, and the command line names no ``MODEL.MIMIC.TEACHER.CONFIG_FILE``, that
    ``config.yaml`` builds the teacher (what was trained is what is loaded: its class count, its
    calibrated stride, any override of its run). Returns the log line ("" when the rule did not
    apply).
    """
    weights = cfg.MODEL.MIMIC.TEACHER.WEIGHTS
    if not weights or "://" in weights or TEACHER_CONFIG_KEY in list(opts)[::2]:
        return ""
    run_config = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.yaml")
    if not os.path.isfile(run_config):
        return ""
    cfg.MODEL.MIMIC.TEACHER.CONFIG_FILE = run_config
    return f"Teacher built from {run_config}, the config its weights {weights} were trained with"


# How launch starts its processes: "spawn" (detectron2's, the default: a fresh interpreter each) or
# "forkserver" (tests/conftest.py: children forked from a server that imported quant_mimic once).
START_METHOD_ENV = "QUANT_MIMIC_START_METHOD"

# Where a spawned process sends its standard output and error (a pipeline stage's console.txt;
# quant_mimic.pipeline.console); unset: the terminal.
STAGE_OUTPUT_ENV = "QUANT_MIMIC_STAGE_OUTPUT"


class _WorkerExit:
    """``main_fn`` of one spawned process of :func:`launch`, ended without interpreter finalization.

    Why (torch 2.14, gloo, measured on this project's 2-core host): a gloo worker thread
    (``ProcessGroupGloo::runLoop``) drops its reference to a finished ``all_gather``'s work only
    after the collective has returned to Python; the work's tensors then need the GIL. If the
    process is already finalizing, CPython ends that thread with ``pthread_exit``, which unwinds
    through a ``noexcept`` frame: ``std::terminate``, SIGABRT, and ``launch`` raises
    ``ProcessExitedException`` although every rank's work finished (7 of 30 two-process launches
    of three ``comm.all_gather`` calls; ``destroy_process_group`` first still 3 of 40; this exit
    0 of 50). So after ``main_fn`` returns: a barrier (every rank done), logs and standard streams
    flushed, ``os._exit(0)``. A ``main_fn`` that raises propagates as before.
    """

    def __init__(self, main_fn):
        self.main_fn = main_fn

    def __call__(self, *args):
        output = os.environ.get(STAGE_OUTPUT_ENV)  # a quiet pipeline stage: its file
        with redirect_output(output) if output else contextlib.nullcontext():
            try:
                self.main_fn(*args)  # detectron2's launch ignores what it returns when spawned
            except UserError as e:  # to the parent, which prints its line once
                raise WorkerUserError(e.line()) from e
        comm.synchronize()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


def launch(main_fn, num_gpus_per_machine, num_machines=1, machine_rank=0, dist_url=None, args=()):
    """
    detectron2's ``launch`` (same arguments), except that each spawned process ends with
    ``os._exit(0)`` once ``main_fn`` returned on every rank (:class:`_WorkerExit`: torch 2.14's gloo
    can abort a finished process at interpreter exit). One process: ``main_fn(*args)`` here.
    """
    world_size = num_machines * num_gpus_per_machine
    fn = _WorkerExit(main_fn) if world_size > 1 else main_fn
    # After one process failed, torch warns as it terminates the others: noise before the error
    # (a user error's one line, quant_mimic.errors), which says what happened.
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_logger.level
    spawn_logger.setLevel(logging.ERROR)
    method = os.environ.get(START_METHOD_ENV, "spawn")
    start_processes = torch.multiprocessing.start_processes
    if method != "spawn":  # detectron2 spawns; the test suite forks from a preloaded server
        torch.multiprocessing.start_processes = functools.partial(
            start_processes, start_method=method
        )
    try:
        return d2_launch(
            fn,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
        )
    finally:
        spawn_logger.setLevel(level)
        torch.multiprocessing.start_processes = start_processes


def launch_from_args(main_fn, args):
    """:func:`launch` of ``main_fn(args)`` with the processes the command line asks for
    (``default_argument_parser``'s ``--num-gpus``, ``--num-machines``, ``--machine-rank``,
    ``--dist-url``)."""
    return launch(
        main_fn,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


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


@contextlib.contextmanager
def _data_file_hint():
    """detectron2's "Dataset 'x' is not registered!" with the way to give your data."""
    try:
        yield
    except KeyError as e:
        if "is not registered" not in str(e):
            raise
        raise ConfigError(
            "DATASETS",
            e.args[0].split(" Available")[0],
            "describe your data in a data file and pass --data FILE (COCO json, VOC xml; "
            "docs/YOUR_DATA.md), or register the dataset in Python before set-up",
        ) from None


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
        checkpointables = dict(self.checkpointer.checkpointables)
        head = getattr(getattr(self.checkpointer.model, "module", self.checkpointer.model),
                       "mimic_head", None)  # fmt: skip
        if head is not None and head.balance is not None:  # the balanced λ resumes as it was
            checkpointables["mimic_balance"] = head.balance
        self.checkpointer = SafeCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **checkpointables
        )
        hooks = super().build_hooks()
        m = self.cfg.MODEL.MIMIC
        if head is not None and m.COLLAPSE_GUARD != "off":
            # first: a "stop" acts before any checkpoint of the collapsed weights is written
            guard = CollapseGuard(
                m.COLLAPSE_GUARD,
                m.COLLAPSE_ZERO_FRACTION,
                m.COLLAPSE_ITERS,
                head.student_feature_names,
            )
            hooks.insert(0, guard)
        return hooks

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
        with _data_file_hint():
            return build_detection_train_loader(cfg, mapper=NamedErrorDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        with _data_file_hint():
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


FINAL_METRICS = "final_metrics.json"


def write_final_metrics(output_dir: str, results) -> str:
    """Write ``results`` (detectron2's nested evaluation dict) flattened, atomically."""
    flat = {k: float(v) for k, v in flatten_results_dict(results or {}).items()}
    path = os.path.join(output_dir, FINAL_METRICS)
    atomic_write_text(path, json.dumps(flat, indent=2, sort_keys=True))
    return path


def build_parser():
    """detectron2's ``default_argument_parser`` plus ``--data`` and ``--lenient``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--data",
        default="",
        metavar="FILE",
        help="a data file describing your train and val sets (COCO json, VOC xml, WIDER FACE) and "
        "classes: sets DATASETS.* and every NUM_CLASSES (docs/YOUR_DATA.md)",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="--eval-only: load MODEL.WEIGHTS as detectron2 does (mismatched or missing tensors "
        "are skipped with a warning) instead of failing on them",
    )
    return parser


def load_eval_weights(cfg: CfgNode, model, args) -> None:
    """
    ``--eval-only`` weights: ``MODEL.WEIGHTS`` (or, with ``--resume``, the output dir's last
    checkpoint), loaded strictly (:func:`~quant_mimic.checkpoint.load_student_weights`: empty
    weights, a file that is not a checkpoint, and missing, unexpected or mis-shaped tensors are
    errors naming them; ``--lenient``: detectron2's loading).
    """
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if args.lenient:
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return
    path = cfg.MODEL.WEIGHTS
    if args.resume and checkpointer.has_checkpoint():
        path = checkpointer.get_checkpoint_file()
    load_student_weights(model, path, model_name=args.config_file or "the config")


def _calibrate_stride(cfg: CfgNode) -> str:
    """The training step before set-up: s from the teacher's statistics (ours), fixed in the config
    before ``default_setup`` writes it."""
    record = apply_stride_calibration(cfg)
    return f"MODEL.QUANTIZATION.STRIDE calibrated (ours): {record}" if record else ""


def main(args):
    """``train_net.py``: train (and evaluate) or, with ``--eval-only``, evaluate the student alone
    (no teacher is loaded); the main process writes ``final_metrics.json``."""

    def before(cfg):
        check_inputs(cfg, eval_only=args.eval_only, resume=args.resume)
        return None if args.eval_only else _calibrate_stride(cfg)

    opts = list(args.opts) + data_opts(getattr(args, "data", ""))
    cfg = setup_cfg(args.config_file, opts, args=args, before_setup=before)
    if args.eval_only:
        model = Trainer.build_model(cfg, load_teacher=False)
        load_eval_weights(cfg, model, args)
        res = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # DefaultTrainer.train returns them only with TEST.EXPECTED_RESULTS set.
        res = getattr(trainer, "_last_eval_results", None)
    if comm.is_main_process():
        verify_results(cfg, res)
        write_final_metrics(cfg.OUTPUT_DIR, res)
    return res


def train_net_main(argv=None) -> None:
    """``train_net.py``: its command line (:func:`build_parser`), then :func:`main` in the
    processes it asks for. Run it through :func:`quant_mimic.errors.run_cli` (user errors as one
    line)."""
    args = build_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch_from_args(main, args)
