#!/usr/bin/env python
"""
The paper's whole pipeline on a built-in synthetic benchmark, in one command, with seeds.

    python tools/run_pipeline.py --bench faces|voc --preset smoke|cpu|gpu --seeds K --out DIR \
        [--stages STAGE ...] [--force] [--num-gpus N] [--no-mismatch] [KEY VALUE ...]
    python tools/run_pipeline.py --report RESULTS_JSON ... [--compare ROW_A ROW_B ...]

A thin front end: the pipeline (stages, presets, records, tables, plots, ETA) is the importable
package :mod:`quant_mimic.pipeline`, whose docstring lists the stages and the files written.
"""

import sys

from quant_mimic import pipeline
from quant_mimic.errors import run_cli
from quant_mimic.pipeline import *  # noqa: F401,F403  (the names scripts used from here)
from quant_mimic.pipeline.records import divergence_message as _divergence_message  # noqa: F401
from quant_mimic.pipeline.runner import train_stage


def run(args):
    """:func:`quant_mimic.pipeline.run` with this module's ``train_stage`` (patchable)."""
    return pipeline.run(args, train=lambda *a: train_stage(*a))


def main(argv=None) -> int:
    return pipeline.main(argv, train=lambda *a: train_stage(*a))


if __name__ == "__main__":
    sys.exit(run_cli(main))
