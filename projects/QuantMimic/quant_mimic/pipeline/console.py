"""What the pipeline shows a person: its own lines on the console, each stage's output in a file.

Without ``--verbose``, everything a stage prints (detectron2's config dump and iteration logs,
evaluation tables, tracer warnings during export) goes to ``<stage dir>/console.txt``, beside the
``log.txt`` detectron2 writes there, and the console gets only the pipeline's lines: what runs, a
progress line every ``step`` percent with the ETA, each stage's result, the results table. Spawned
processes (``--num-gpus`` > 1) send theirs to the same file (:data:`STAGE_OUTPUT_ENV`).
"""

import contextlib
import os
import sys
from typing import Optional, TextIO

from ..engine import STAGE_OUTPUT_ENV  # a spawned worker of a quiet stage writes there
from ..fileio import redirect_output

__all__ = ["Console"]


class Console:
    """
    The pipeline's console.

    Args:
        verbose (bool): show the stages' own output too (no redirection).
        stream (file): where the pipeline's lines go (default: standard output when made).
    """

    def __init__(self, verbose: bool = False, stream: Optional[TextIO] = None):
        self.verbose = verbose
        self.stream = stream if stream is not None else sys.stdout

    def say(self, line: str) -> None:
        """One line of the pipeline's own."""
        print(line, file=self.stream, flush=True)

    @contextlib.contextmanager
    def quiet(self, path: str):
        """A stage's output to ``path`` (and its spawned processes'), unless verbose."""
        if self.verbose:
            yield
            return
        before = os.environ.get(STAGE_OUTPUT_ENV)
        os.environ[STAGE_OUTPUT_ENV] = path
        try:
            with redirect_output(path):
                yield
        finally:
            if before is None:
                os.environ.pop(STAGE_OUTPUT_ENV, None)
            else:
                os.environ[STAGE_OUTPUT_ENV] = before
