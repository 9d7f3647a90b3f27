"""Presets, stage planning and the command-line overrides of every stage run."""

import math
import os
from typing import Dict, List, Optional, Sequence

import yaml

from ..errors import ConfigError, MissingFileError
from .benches import (
    BENCHES,
    DATA_STAGES,
    DEFAULT_STAGES,
    PRESET_DIR,
    PRETRAIN_STAGE,
    STAGES,
    STUDENT_TEACHER,
    TEACHER_STAGES,
    cls_data_root,
    config_file,
    data_root,
    preset_dir,
    pretrain_dir,
    stage_dir,
    stage_kind,
)

__all__ = [
    "teacher_cache_dir",
    "load_preset",
    "dict_opts",
    "opt_lookup",
    "stage_opts",
    "max_iter",
    "plan_stages",
    "generate_data",
    "student_init",
    "pretrain_argv",
    "generate_cls_data",
    "plan_data_stages",
    "train_images",
    "epochs_to_iterations",
]

PRESET_SECTIONS = {"data", "opts", "teacher", "teacher_quantized", "student", "pretrain", "init"}
# ``export: {ort_threads: T}``: the export stage times onnxruntime's options with T threads and
# records the fastest (0: no timing; the smoke presets, whose files nobody deploys).
PRESET_SECTIONS |= {"export"}
INITS = ("random", "pretrained")


def _preset_path(name: str, relative_to: Optional[str] = None, folder: str = PRESET_DIR) -> str:
    """A preset name's file (in ``folder``); a yaml path is relative to ``relative_to`` (a
    ``_BASE_``'s preset folder) or the working directory."""
    if not name.endswith((".yaml", ".yml")):
        return os.path.join(folder, name + ".yaml")
    return os.path.join(relative_to, name) if relative_to else name


def _merge(base: Dict, over: Dict) -> Dict:
    """``over`` on ``base``: dict sections merged key by key, other values replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _preset_names(folder: str) -> List[str]:
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def load_preset(name: str, bench: str, _relative_to: Optional[str] = None) -> Dict:
    """
    The preset's section for ``bench``: ``data`` (generator arguments), ``opts`` (every stage),
    ``teacher`` / ``teacher_quantized`` / ``student`` (per stage kind), each a {KEY: value} dict;
    ``init`` ("random" or "pretrained": how student stages start) and ``pretrain`` (``data``: the
    classification set's generator arguments; ``args``: ``tools/pretrain_backbone.py`` flags).
    ``name`` is a preset of ``configs/Synth/presets`` (``smoke``, ``cpu``, ``gpu``, ...) or a yaml
    path. A preset with ``_BASE_: other.yaml`` is ``other.yaml`` with its sections merged key by
    key.
    """
    path = _preset_path(name, _relative_to, preset_dir(bench))
    if not os.path.isfile(path):
        raise MissingFileError(
            name,
            f"no such preset (looked for {path})",
            f"use one of {_preset_names(preset_dir(bench))} or a preset yaml file",
        )
    try:
        with open(path) as f:
            preset = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(path, f"the preset is not valid YAML ({e})", "correct its syntax")
    if not isinstance(preset, dict):
        raise ConfigError(path, "the preset is not a mapping", "give it one section per bench")
    base = preset.pop("_BASE_", None)
    if bench not in preset and base is None:
        raise ConfigError(
            path, f"the preset has no section for {bench!r}", f"add a '{bench}:' section to it"
        )
    section = preset.get(bench) or {}
    if base is not None:
        section = _merge(load_preset(base, bench, os.path.dirname(path)), section)
    unknown = set(section) - PRESET_SECTIONS
    if unknown:
        raise ConfigError(
            path,
            f"{bench}: unknown section(s) {sorted(unknown)}",
            f"use only {sorted(PRESET_SECTIONS)}",
        )
    if section.get("init", "random") not in INITS:
        raise ConfigError(path, f"{bench}: init must be one of {INITS}", "correct init")
    return section


def student_init(requested: Optional[str], preset: Dict, stages: Optional[Sequence[str]]) -> str:
    """How student stages start: ``requested`` (``--init``), else "pretrained" when the pretrain
    stage is named in ``stages``, else the preset's ``init`` (default "random")."""
    if requested:
        return requested
    if stages and PRETRAIN_STAGE in stages:
        return "pretrained"
    return preset.get("init", "random")


def _opt_value(value) -> str:
    """A yaml value as a detectron2 command-line value (yacs parses it with literal_eval)."""
    if isinstance(value, (list, tuple)):
        return "(" + "".join(f"{_opt_value(v)}, " for v in value) + ")"
    if isinstance(value, bool):
        return str(value)
    return str(value) if not isinstance(value, str) else value


def dict_opts(d: Optional[Dict]) -> List[str]:
    """{KEY: value} as detectron2's ``KEY VALUE ...`` list."""
    out = []
    for k, v in (d or {}).items():
        out += [k, _opt_value(v)]
    return out


def opt_lookup(opts: Sequence[str], key: str, default=None):
    """The last value given to ``key`` in a ``KEY VALUE ...`` list, else ``default``."""
    value = default
    for k, v in zip(opts[::2], opts[1::2]):
        if k == key:
            value = v
    return value


def teacher_cache_dir(out: str, teacher_stage: str) -> str:
    """The teacher-map cache of one teacher stage, shared by every student that mimics it."""
    return os.path.join(out, "teacher_cache", teacher_stage)


def stage_opts(
    bench: str,
    preset: Dict,
    out: str,
    stage: str,
    seed: Optional[int],
    extra: Sequence[str],
    teacher_cache: bool = True,
    init: str = "random",
    data_file: str = "",
) -> List[str]:
    """The KEY VALUE overrides of one stage run (preset, wiring between stages, user's extra);
    a student that mimics a teacher reads that teacher's maps from its cache (``teacher_cache``,
    :mod:`quant_mimic.teacher_cache`), unless the user's overrides name another one; with ``init``
    "pretrained" a student starts from the pretrain stage's ``backbone.pth``; ``data_file`` (your
    data) is every stage's ``DATASETS.DATA_FILE``."""
    opts = ["DATASETS.DATA_FILE", data_file] if data_file else []
    opts += dict_opts(preset.get("opts")) + dict_opts(preset.get(stage_kind(stage)))
    if init == "pretrained" and stage not in TEACHER_STAGES:
        opts += ["MODEL.WEIGHTS", os.path.join(pretrain_dir(out), "backbone.pth")]
    if stage == "teacher_quantized":
        opts += ["MODEL.WEIGHTS", os.path.join(stage_dir(out, "teacher", None), "model_final.pth")]
    teacher = STUDENT_TEACHER.get(stage)
    if teacher:
        tdir = stage_dir(out, teacher, None)
        opts += [
            "MODEL.MIMIC.TEACHER.CONFIG_FILE",
            os.path.join(tdir, "config.yaml"),
            "MODEL.MIMIC.TEACHER.WEIGHTS",
            os.path.join(tdir, "model_final.pth"),
        ]
        if teacher_cache:
            opts += ["MODEL.MIMIC.TEACHER.CACHE_DIR", teacher_cache_dir(out, teacher)]
    opts += ["SEED", str(seed if seed is not None else preset.get("teacher_seed", 0))]
    opts += ["OUTPUT_DIR", stage_dir(out, stage, seed)]
    return opts + list(extra)


def max_iter(bench: str, preset: Dict, stage: str, extra: Sequence[str]) -> int:
    """SOLVER.MAX_ITER of a stage: the user's override, else the preset's, else its config's."""
    opts = dict_opts(preset.get("opts")) + dict_opts(preset.get(stage_kind(stage))) + list(extra)
    value = opt_lookup(opts, "SOLVER.MAX_ITER")
    if value is None:
        from ..engine import get_config

        value = get_config(config_file(bench, stage)).SOLVER.MAX_ITER
    return int(value)


def plan_stages(requested: Optional[Sequence[str]], data_root_: str) -> List[str]:
    """
    The stages to run, in pipeline order: ``requested`` (None: :data:`DEFAULT_STAGES`), with
    ``data`` added when a training stage is asked for and ``data_root_`` does not exist yet (the
    data is deterministic from the preset, so ``--stages teacher`` on a fresh folder makes it).
    """
    stages = [s for s in STAGES if s in (requested or DEFAULT_STAGES)]
    if stages and "data" not in stages and not os.path.isdir(data_root_):
        stages.insert(0, "data")
    return stages


def pretrain_argv(bench: str, preset: Dict, out: str, num_gpus: int) -> List[str]:
    """``tools/pretrain_backbone.py`` arguments of the pretrain stage: the backbone of the bench's
    student (its scratch config), the built-in classification set, the preset's ``pretrain.args``
    (e.g. ``epochs: 30`` -> ``--epochs 30``)."""
    argv = ["--config-file", config_file(bench, "scratch"), "--data", cls_data_root(out)]
    argv += ["--output", pretrain_dir(out), "--num-gpus", str(num_gpus)]
    for k, v in ((preset.get("pretrain") or {}).get("args") or {}).items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def generate_cls_data(preset: Dict, out: str, force: bool) -> str:
    """The classification set of the pretrain stage, from the preset's ``pretrain.data``."""
    from ..data.synthetic_cls import generate_cls

    root = cls_data_root(out)
    if os.path.isdir(root) and not force:
        return f"{root} exists"
    d = dict((preset.get("pretrain") or {}).get("data") or {})
    generate_cls(root, int(d.pop("num_train", 300)), int(d.pop("num_val", 60)), **d)
    return f"wrote {root}"


def generate_data(bench: str, preset: Dict, out: str, force: bool) -> str:
    """The ``data`` stage: the benchmark's synthetic set from the preset's ``data`` section."""
    from ..data.synthetic import FaceStyle, generate_faces, generate_voc

    root = data_root(bench, out)
    if os.path.isdir(root) and not force:
        return f"skip: {root} exists"
    d = dict(preset.get("data") or {})
    size = (int(d.pop("height", 192)), int(d.pop("width", 256)))
    kw = {"seed": int(d.pop("seed", 0)), "size": size}
    if BENCHES[bench]["kind"] == "faces":
        style = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("style", {}).items()}
        fn, kw["style"] = generate_faces, FaceStyle(**style)
    else:
        fn = generate_voc
    fn(root, int(d.pop("num_train")), int(d.pop("num_val")), **kw)
    if d:
        raise KeyError(f"Unknown data keys in the preset: {sorted(d)}")
    return f"wrote {root}"


def plan_data_stages(requested: Optional[Sequence[str]]) -> List[str]:
    """The stages of a run on your data, in order: ``requested`` (None: all of
    :data:`DATA_STAGES`); a stage that needs synthetic data is an error."""
    other = [s for s in requested or () if s not in DATA_STAGES]
    if other:
        raise ValueError(f"--stages {other} do not apply to your data; choose from {DATA_STAGES}")
    return [s for s in DATA_STAGES if s in (requested or DATA_STAGES)]


def train_images(data_file: str, filter_empty: bool = True) -> int:
    """The number of training images of a data file as detectron2's train loader counts them
    (images without annotations left out when ``filter_empty``, as
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``)."""
    from detectron2.data import get_detection_dataset_dicts

    from ..data.data_file import register_data_file

    names = register_data_file(data_file).train
    return len(get_detection_dataset_dicts(names, filter_empty=filter_empty))


def epochs_to_iterations(
    bench: str, preset: Dict, num_images: int, extra: Sequence[str] = ()
) -> List[str]:
    """
    Presets on your data give schedules in epochs of the train set (one preset for any dataset
    size): in each stage section, ``epochs`` becomes ``SOLVER.MAX_ITER`` = ceil(epochs × images /
    ``SOLVER.IMS_PER_BATCH``) and ``steps`` (fractions of the schedule) ``SOLVER.STEPS``, in place;
    the batch is the user's override, else the preset's, else the stage config's. ``KEY VALUE``
    overrides given by the user still win (they come last). Returns one line per stage kind.
    """
    lines = []
    for kind in ("teacher", "teacher_quantized", "student"):
        section = preset.get(kind) or {}
        if "epochs" not in section:
            continue
        epochs = float(section.pop("epochs"))
        steps = section.pop("steps", None)
        stage = "scratch" if kind == "student" else kind
        opts = dict_opts(preset.get("opts")) + dict_opts(section) + list(extra)
        batch = opt_lookup(opts, "SOLVER.IMS_PER_BATCH")
        if batch is None:
            from ..engine import get_config

            batch = get_config(config_file(bench, stage)).SOLVER.IMS_PER_BATCH
        iters = max(1, math.ceil(epochs * num_images / int(batch)))
        section["SOLVER.MAX_ITER"] = iters
        if steps is not None:
            section["SOLVER.STEPS"] = [max(1, round(f * iters)) for f in steps]
        preset[kind] = section
        lines.append(
            f"{kind}: {epochs:g} epochs × {num_images} training images / SOLVER.IMS_PER_BATCH "
            f"{batch} = {iters} iterations"
            + (f", LR steps at {section['SOLVER.STEPS']}" if steps is not None else "")
        )
    return lines
