"""Running the pipeline: each stage through ``train_net.py``, records, tables, figures, Fig. 5."""

import contextlib
import io
import json
import logging
import os
import shutil
import threading
import time
from typing import Callable, Dict, List, Optional

from ..fileio import atomic_write_text, file_sha256
from .benches import (
    BENCHES,
    EXPORT_STAGE,
    FIG5_STAGES,
    PRETRAIN_STAGE,
    TEACHER_STAGES,
    config_file,
    data_root,
    export_dir,
    pretrain_dir,
    stage_dir,
)
from .console import Console
from .plan import (
    epochs_to_iterations,
    generate_cls_data,
    generate_data,
    load_preset,
    max_iter,
    plan_data_stages,
    plan_stages,
    pretrain_argv,
    stage_opts,
    student_init,
    teacher_cache_dir,
    train_images,
)
from .plots import plot_learning_curves, plot_mismatch, plot_results
from .progress import Progress, fmt_s, logged_rate
from .records import (
    DIVERGED,
    check_stage_init,
    diverged_record,
    init_record,
    is_divergence,
    is_done,
    last_iteration,
    load_records,
    make_record,
    sorted_records,
)
from .tables import results_markdown

__all__ = [
    "train_stage",
    "check_stage_configs",
    "run",
    "save_results",
    "mismatch_pass",
    "device_name",
]


class _StageLogs:
    """Detaches, after a stage, the log handlers detectron2's setup added for its OUTPUT_DIR."""

    NAMES = ("detectron2", "fvcore", "d2", "quant_mimic")

    def __enter__(self):
        self.before = {n: list(logging.getLogger(n).handlers) for n in self.NAMES}
        return self

    def __exit__(self, *exc):
        from detectron2.utils.logger import setup_logger

        for n, old in self.before.items():
            logger = logging.getLogger(n)
            for h in [h for h in logger.handlers if h not in old]:
                logger.removeHandler(h)
                h.close()
        setup_logger.cache_clear()  # a later stage with the same OUTPUT_DIR gets its handlers again
        return False


def train_stage(cfg_file: str, opts: List[str], num_gpus: int) -> None:
    """``train_net.py --config-file CFG --resume --num-gpus N OPTS`` through detectron2's launch."""
    from ..engine import build_parser, launch_from_args, main

    argv = ["--config-file", cfg_file, "--num-gpus", str(num_gpus), "--resume"] + list(opts)
    args = build_parser().parse_args(argv)
    with _StageLogs():
        launch_from_args(main, args)


def pretrain_stage(bench: str, preset: Dict, out: str, num_gpus: int, force: bool) -> str:
    """
    The pretrain stage: the built-in classification set (``DIR/datasets/synth/cls``), then
    ``tools/pretrain_backbone.py`` on the bench's student backbone into ``DIR/pretrain``, whose
    ``backbone.pth`` every student stage, seed and λ then starts from (``--init pretrained``).
    """
    from ..engine import launch_from_args
    from ..pretrain import BACKBONE_FILE, build_parser, main

    backbone = os.path.join(pretrain_dir(out), BACKBONE_FILE)
    if os.path.isfile(backbone) and not force:
        return f"skip, done ({backbone})"
    if force and os.path.isdir(pretrain_dir(out)):
        shutil.rmtree(pretrain_dir(out))
    data = generate_cls_data(preset, out, force)
    args = build_parser().parse_args(pretrain_argv(bench, preset, out, num_gpus))
    start = time.time()
    with _StageLogs():
        launch_from_args(main, args)
    metrics = json.load(open(os.path.join(pretrain_dir(out), "pretrain_metrics.json")))[-1]
    return (
        f"{data}; pretrained in {fmt_s(time.time() - start)}: top-1 {metrics['top1']:.1f} %, "
        f"top-5 {metrics['top5']:.1f} % after {metrics['epoch']} epochs ({backbone})"
    )


class _RateWatcher(threading.Thread):
    """
    While a stage trains, reads its metrics.json: once its first iterations give a rate, refines
    the overall ETA with it; says a progress line (iterations done, the stage's ETA, the
    pipeline's) each time another ``step`` percent of the stage's iterations is done.
    """

    def __init__(self, progress: Progress, stage: str, d: str, index: int, label: str,
                 total: int, say: Callable[[str], None], step: int = 10):  # fmt: skip
        super().__init__(daemon=True)
        self.progress, self.stage, self.d, self.index, self.label = progress, stage, d, index, label
        self.total, self.say, self.step = total, say, step
        self.done = threading.Event()

    def run(self):
        shown = 0  # the last percentage said
        while not self.done.wait(2.0):
            measured = logged_rate(os.path.join(self.d, "metrics.json"), min_iterations=1)
            if measured is None:
                continue
            rate, iterations = measured
            self.progress.observe(self.stage, rate)
            percent = min(100, 100 * iterations // max(self.total, 1))
            if percent < shown + self.step or percent >= 100:
                continue
            shown = percent - percent % self.step
            left = fmt_s(max(self.total - iterations, 0) * rate)
            self.say(
                f"{self.label}: {percent:3d}% ({iterations}/{self.total} iterations, "
                f"{rate:.2f} s/it), stage ETA {left}; pipeline {self.progress.eta(self.index)}"
            )

    def stop(self):
        self.done.set()
        self.join()


def device_name(num_gpus: int) -> str:
    import torch

    if torch.cuda.is_available() and num_gpus > 0:
        return f"{num_gpus} × {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def save_results(out: str, bench: str, records: List[Dict]) -> None:
    """results.json, results.md and results.png of ``records``."""
    dumped = sorted_records(records)
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(dumped, indent=2) + "\n")
    atomic_write_text(os.path.join(out, "results.md"), results_markdown(bench, dumped))
    plot_results(bench, dumped, os.path.join(out, "results.png"))


def mismatch_pass(args, bench: str, preset: Dict, out: str) -> None:
    """
    Evaluation pass over every mimic student (each seed) on the val split: Fig. 5 of the
    teacher-only and quant-mimic students to ``mismatch.png``, and the Q diagnostics of every
    student (the Li et al. student's teacher side is the full-precision teacher's RoI features
    before Q) to ``mimic_statistics.json``.
    """
    from ..diagnostics import collect_mimic_statistics

    ratios, summary = {}, {}
    threshold = None
    for stage in ("mimic",) + FIG5_STAGES:
        per_stage = []
        for seed in range(args.seeds):
            d = stage_dir(out, stage, seed)
            if not is_done(d):
                continue
            opts = stage_opts(
                bench, preset, out, stage, seed, args.opts, False, args.init, args_data(args)
            )
            opts += ["MODEL.WEIGHTS", os.path.join(d, "model_final.pth")]
            stats = collect_mimic_statistics(config_file(bench, stage), opts)
            per_stage.extend(stats.pop("roi_mismatch_ratio"))
            threshold = stats["mismatch_threshold"]
            stats["init"] = init_record(d)["init"]  # the row's label, as in results.json
            stats["overrides"] = list(args.opts)
            summary[f"{stage}_seed{seed}"] = stats
        if per_stage and stage in FIG5_STAGES:
            ratios[stage] = per_stage
    if ratios:
        plot_mismatch(ratios, threshold, os.path.join(out, "mismatch.png"))
    if summary:
        atomic_write_text(
            os.path.join(out, "mimic_statistics.json"), json.dumps(summary, indent=2) + "\n"
        )


def _use_cache(args) -> bool:
    return not getattr(args, "no_teacher_cache", False)


def args_data(args) -> str:
    """The data file of a run on your data ("" for a built-in bench)."""
    return getattr(args, "data", "") or ""


EXPORTED = ("quant_mimic", 0)  # the student the export stage writes: Quantization Mimic, seed 0


def export_stage(args, bench: str, preset: Dict, out: str) -> str:
    """
    The export stage: the Quantization Mimic student (seed 0) as an ONNX file,
    ``DIR/export/student.onnx``, with BN folded, onnxruntime's options tuned on this host and
    recorded, and its detections compared with PyTorch's on the first two val images
    (``DIR/export/export.json``); a disagreement is an error.
    """
    from ..engine import get_config
    from ..export import export_student, val_images

    stage, seed = EXPORTED
    d = stage_dir(out, stage, seed)
    if not is_done(d):
        raise FileNotFoundError(f"export: {d} has no trained student; run the stage {stage!r}")
    path = os.path.join(export_dir(out), "student.onnx")
    record = os.path.join(export_dir(out), "export.json")
    if os.path.isfile(record) and not args.force:
        return f"skip, done ({path})"
    cfg = get_config(os.path.join(d, "config.yaml"), ["MODEL.DEVICE", "cpu"])
    weights = os.path.join(d, "model_final.pth")
    start = time.time()
    threads = int((preset.get("export") or {}).get("ort_threads", 2))
    done = export_student(
        cfg, weights, path, "onnx", ort_threads=threads, check_images=val_images(cfg, 2)
    )
    summary = {
        "student": os.path.relpath(d, out),
        "path": path,
        "size_mb": done["size_mb"],
        "bn_folded": done["folded"],
        "onnxruntime": (
            {k: done["tuned"][k] for k in ("level", "nchwc_min_channels", "host")}
            if done["tuned"]
            else None  # the preset's export.ort_threads 0: not timed
        ),
        "parity": done["parity"],
        "ok": done["ok"],
        "seconds": round(time.time() - start, 1),
    }
    atomic_write_text(record, json.dumps(summary, indent=2) + "\n")
    if not done["ok"]:
        raise RuntimeError(f"export: the ONNX student disagrees with PyTorch; see {record}")
    return (
        f"{path} ({done['size_mb']:.2f} MB), parity with PyTorch on {len(done['parity'])} val "
        f"images: ok ({record})"
    )


def check_stage_configs(args, bench: str, preset: Dict, out: str, stages, data_file: str) -> None:
    """
    Every training stage's config as it will be set up (its yaml, the preset, the overrides, the
    data file), before anything is written: a bad key or value, or a class count that does not
    fit the data, is a user error now (:mod:`quant_mimic.errors`), not after the stages before it
    trained.
    """
    from ..engine import get_config

    init = student_init(getattr(args, "init", None), preset, args.stages)
    for stage in stages:
        if stage in ("data", PRETRAIN_STAGE, EXPORT_STAGE):
            continue
        seed = None if stage in TEACHER_STAGES else 0
        opts = stage_opts(bench, preset, out, stage, seed, args.opts, False, init, data_file)
        with contextlib.redirect_stderr(io.StringIO()):  # its notes come again when it runs
            get_config(config_file(bench, stage), opts)


def run(args, train: Optional[Callable] = None) -> List[Dict]:
    """
    Run the pipeline that ``args`` (:func:`quant_mimic.pipeline.cli.parse_args`) describes and
    return its records. ``train`` (default :func:`train_stage`) trains one stage run:
    ``train(config_file, opts, num_gpus)``. The console gets the pipeline's own lines; each
    stage's output goes to its ``console.txt`` (:class:`~.console.Console`; ``args.verbose``:
    to the console too).
    """
    train = train or train_stage
    console = Console(verbose=getattr(args, "verbose", False))
    bench, out = args.bench, os.path.abspath(args.out)
    console.say(
        f"Logs: {out}/<stage>/log.txt (detectron2's) and console.txt (all a stage prints); "
        "--verbose shows them here"
    )
    preset = load_preset(args.preset, bench)
    data_file = getattr(args, "data", "") or ""
    if data_file:  # your data: checked (and its images counted) before anything is written
        data_file = args.data = os.path.abspath(data_file)
        stages = plan_data_stages(args.stages)
        n = train_images(data_file)
        schedule = epochs_to_iterations(bench, preset, n, args.opts)  # epochs -> MAX_ITER
    else:
        # Every stage (this process and any worker it spawns) reads the data under DIR/datasets.
        os.environ["DETECTRON2_DATASETS"] = os.path.join(out, "datasets")
        from ..data import register_all_quantmimic_datasets

        register_all_quantmimic_datasets(os.environ["DETECTRON2_DATASETS"], replace=True)
        stages, schedule = plan_stages(args.stages, data_root(bench, out)), []
    check_stage_configs(args, bench, preset, out, stages, data_file)
    for line in schedule:
        console.say(f"Schedule {line}")
    os.makedirs(out, exist_ok=True)
    pipeline_output = os.path.join(out, "console.txt")  # what the steps between stages print
    args.init = student_init(getattr(args, "init", None), preset, args.stages)
    backbone = os.path.join(pretrain_dir(out), "backbone.pth")
    if args.init == "pretrained" and PRETRAIN_STAGE not in stages and not os.path.isfile(backbone):
        stages.insert(1 if stages[:1] == ["data"] else 0, PRETRAIN_STAGE)
    runs = []
    for stage in stages:
        if stage in ("data", PRETRAIN_STAGE, EXPORT_STAGE):
            runs.append((stage, None, 0))
            continue
        its = max_iter(bench, preset, stage, args.opts)
        for seed in [None] if stage in TEACHER_STAGES else range(args.seeds):
            runs.append((stage, seed, its))
    progress = Progress(runs)
    records = {(r["stage"], r["seed"]): r for r in load_records(os.path.join(out, "results.json"))}
    device = device_name(args.num_gpus)
    t0 = time.time()
    for k, (stage, seed, iters) in enumerate(runs, 1):
        label = f"[{k}/{len(runs)}] {stage}" + (f" (seed {seed})" if seed is not None else "")
        if stage == "data":
            with console.quiet(pipeline_output):
                done = generate_data(bench, preset, out, args.force)
            console.say(f"{label}: {done}")
            continue
        if stage == PRETRAIN_STAGE:
            console.say(f"{label} … (log {pretrain_dir(out)}/console.txt)")
            with console.quiet(os.path.join(pretrain_dir(out), "console.txt")):
                done = pretrain_stage(bench, preset, out, args.num_gpus, args.force)
            console.say(f"{label}: {done}")
            continue
        if stage == EXPORT_STAGE:
            with console.quiet(os.path.join(export_dir(out), "console.txt")):
                exported = export_stage(args, bench, preset, out)
            console.say(f"{label}: {exported}")
            continue
        if args.init == "pretrained" and not getattr(args, "init_sha256", None):
            if not os.path.isfile(backbone):
                raise FileNotFoundError(
                    f"--init pretrained: {backbone} does not exist; run the pretrain stage"
                )
            args.init_sha256 = file_sha256(backbone)
        d = stage_dir(out, stage, seed)
        check_stage_init(args, stage, d)
        if os.path.isfile(os.path.join(d, DIVERGED)) and not args.force:
            console.say(f"{label}: skip, diverged ({d}/{DIVERGED}; --force to retry)")
            if (stage, seed) not in records:
                records[(stage, seed)] = diverged_record(args, stage, seed, iters, device, d)
            continue
        if is_done(d) and not args.force:
            console.say(f"{label}: skip, done ({d})")
            if (stage, seed) not in records:  # finished, but recorded by no earlier invocation
                records[(stage, seed)] = make_record(args, stage, seed, iters, None, device, d)
            if records[(stage, seed)].get("wall_s"):  # the ETA learns from earlier invocations
                progress.record(stage, iters, records[(stage, seed)]["wall_s"])
            continue
        if args.force and os.path.isdir(d):
            shutil.rmtree(d)
            check_stage_init(args, stage, d)
        if stage in TEACHER_STAGES and os.path.isdir(teacher_cache_dir(out, stage)):
            shutil.rmtree(teacher_cache_dir(out, stage))  # maps of the teacher being retrained
        console.say(f"{label}: {iters} iterations … {progress.eta(k - 1)} (log {d}/log.txt)")
        opts = stage_opts(
            bench, preset, out, stage, seed, args.opts, _use_cache(args), args.init, data_file
        )
        start = time.time()
        watcher = _RateWatcher(progress, stage, d, k - 1, label, iters, console.say)
        watcher.start()
        try:
            with console.quiet(os.path.join(d, "console.txt")):
                train(config_file(bench, stage), opts, args.num_gpus)
        except Exception as e:  # a student's NaN is a result (recorded); anything else is a bug
            if stage in TEACHER_STAGES or not is_divergence(e):
                raise
            records[(stage, seed)] = diverged_record(args, stage, seed, iters, device, d, e)
            save_results(out, bench, list(records.values()))
            console.say(f"{label}: DIVERGED at iteration {last_iteration(d)} (recorded)")
            continue
        finally:
            watcher.stop()
        wall = time.time() - start
        progress.record(stage, iters, wall)
        records[(stage, seed)] = make_record(args, stage, seed, iters, wall, device, d)
        save_results(out, bench, list(records.values()))
        main = ", ".join(
            f"{m.split('/')[-1]} {records[(stage, seed)]['metrics'].get(m, float('nan')):.2f}"
            for m in BENCHES[bench]["metrics"]
        )
        console.say(f"{label}: done in {fmt_s(wall)}: {main}; {progress.eta(k)}")
    recs = list(records.values())
    diverged = [f"{r['stage']} seed {r['seed']}" for r in recs if r.get("diverged")]
    if diverged:
        console.say(f"{len(diverged)} run(s) diverged, recorded without metrics: {diverged}")
    if recs:
        with console.quiet(pipeline_output):
            save_results(out, bench, recs)
            if not args.no_mismatch:
                mismatch_pass(args, bench, preset, out)
            plot_learning_curves(bench, out, os.path.join(out, "learning_curves.png"))
    console.say(f"Pipeline finished in {fmt_s(time.time() - t0)}; results in {out}")
    if recs:
        with open(os.path.join(out, "results.md")) as f:
            console.say("\n" + f.read().rstrip())
    exported = os.path.join(export_dir(out), "student.onnx")
    if os.path.isfile(exported):
        console.say(f"Exported student: {exported}")
    return recs
