"""The command line of ``tools/run_pipeline.py`` (see :mod:`quant_mimic.pipeline`)."""

import argparse
import os

from .benches import (
    BENCHES,
    DATA_STAGES,
    DEFAULT_STAGES,
    FAMILIES,
    OPTIONAL_STAGES,
    STAGES,
    is_custom,
    preset_dir,
)
from .runner import run
from .tables import report

__all__ = ["build_parser", "parse_args", "main"]


def _presets(bench: str):
    """The named presets of a bench's preset folder."""
    return sorted(f[:-5] for f in os.listdir(preset_dir(bench)) if f.endswith(".yaml"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="The paper's whole pipeline, in one command, with seeds "
        "(quant_mimic.pipeline): on a built-in synthetic benchmark (--bench), or on your data "
        "(--data FILE, docs/YOUR_DATA.md: teacher, quantized teacher, the student rows, "
        "evaluation, export)."
    )
    p.add_argument(
        "--report",
        nargs="+",
        metavar="RESULTS_JSON",
        help="only print the table of these results.json files (no training)",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        action="append",
        default=[],
        metavar=("ROW_A", "ROW_B"),
        help="with --report: Welch's t-test of two rows, labelled as in the table "
        "(e.g. 'quant_mimic' 'mimic'); repeatable",
    )
    p.add_argument("--bench", choices=sorted(b for b in BENCHES if not is_custom(b)))
    p.add_argument(
        "--data", default="", metavar="FILE", help="your data: a data file (docs/YOUR_DATA.md)"
    )
    p.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default="c4",
        help="with --data, the student family (configs/Custom): vgg = VGG-1-4 -> VGG-1-32 R-FCN, "
        "c4 = ResNet18 -> ResNet18-1-16 Faster R-CNN C4, fpn = the same with FPN (default: c4)",
    )
    p.add_argument(
        "--preset",
        help=f"built-in benches: {' | '.join(_presets('voc'))}; with --data (schedules in "
        f"epochs): {' | '.join(_presets('custom_c4'))}; or a preset yaml file",
    )
    p.add_argument("--seeds", type=int, default=1, help="runs of every student stage (SEED 0..K-1)")
    p.add_argument("--out", help="output folder")
    p.add_argument(
        "--stages",
        nargs="+",
        metavar="STAGE",
        help=f"default: {DEFAULT_STAGES}; optional: {OPTIONAL_STAGES}; with --data: {DATA_STAGES}",
    )
    p.add_argument(
        "--init",
        choices=["random", "pretrained"],
        help="how student stages start: random weights, or the pretrain stage's backbone.pth "
        "(run first when missing; paper Table 7, §3.5). Default: the preset's init, 'pretrained' "
        "when --stages names pretrain, else random",
    )
    p.add_argument("--force", action="store_true", help="redo the selected stages")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per stage (train_net.py)")
    p.add_argument("--no-mismatch", action="store_true", help="skip the Fig. 5 evaluation pass")
    p.add_argument(
        "--no-teacher-cache",
        action="store_true",
        help="run the teacher at every mimic step instead of caching its maps "
        "(DIR/teacher_cache/<teacher stage>, shared by every seed, λ and row)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show each stage's own output (detectron2's config and iteration logs) here too; "
        "by default it goes to the stage's console.txt and log.txt",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every stage")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The pipeline's arguments; ``--stages a b KEY VALUE ...``: the stage names end where the
    overrides begin."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.compare and not args.report:
        p.error("--compare needs --report")
    if args.report:
        return args
    if args.data and args.bench:
        p.error("--bench names a built-in synthetic benchmark; with --data use --family")
    if args.data:
        args.bench = FAMILIES[args.family]
    for name in ("bench", "preset", "out"):
        if getattr(args, name) is None:
            p.error(f"--{name} (or --data)" if name == "bench" else f"--{name} is required")
    if args.stages:
        n = next((i for i, x in enumerate(args.stages) if x not in STAGES), len(args.stages))
        if n == 0:
            p.error(f"--stages: unknown stage {args.stages[0]!r}; choose from {STAGES}")
        args.opts = args.stages[n:] + list(args.opts)
        args.stages = args.stages[:n]
    if args.seeds < 1:
        p.error("--seeds must be ≥ 1")
    if len(args.opts) % 2:
        p.error(f"overrides must be KEY VALUE pairs, got {args.opts}")
    return args


def main(argv=None, train=None) -> int:
    """``--report`` prints tables; otherwise runs the
    pipeline (``train``: see :func:`~quant_mimic.pipeline.runner.run`)."""
    args = parse_args(argv)
    if args.report:  # a bad file or row: a user error (quant_mimic.errors), exit 2 from the tool
        print(report(args.report, args.compare))
    else:
        run(args, train=train)
    return 0
