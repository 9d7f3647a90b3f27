"""The one handler of user errors at the entry points (``train_net.py``, ``tools/*.py``).

:func:`run_cli` runs an entry point's ``main(argv)``: a :class:`~.types.UserError` (or an argparse
mistake) ends the program with its one line on stderr and exit code 2, no traceback; anything else
is a bug and keeps its traceback and exit code 1. ``QUANT_MIMIC_DEBUG=1`` or ``--debug`` anywhere on
the command line prints the traceback of a user error too (still exit 2).

Several processes (detectron2's ``launch``): a spawned worker turns its user error into a
:class:`WorkerUserError`, whose text torch.multiprocessing hands to the parent inside a
``ProcessRaisedException``; the parent prints its line once (:func:`worker_user_error_line`).
"""

import argparse
import contextlib
import os
import re
import sys
import traceback
from typing import Callable, List, Optional, Sequence

from .types import ConfigError, UserError

__all__ = [
    "DEBUG_ENV",
    "EXIT_USER_ERROR",
    "WorkerUserError",
    "debug_enabled",
    "worker_user_error_line",
    "run_cli",
]

DEBUG_ENV = "QUANT_MIMIC_DEBUG"
EXIT_USER_ERROR = 2
_WORKER_MARK = "QUANT_MIMIC_USER_ERROR:"


class WorkerUserError(RuntimeError):
    """A spawned worker's user error on its way to the parent (its text carries the line)."""

    def __init__(self, line: str):
        super().__init__(f"{_WORKER_MARK}{line}")


def debug_enabled() -> bool:
    """``QUANT_MIMIC_DEBUG`` is set to something other than "" or "0"."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def worker_user_error_line(exc: BaseException) -> Optional[str]:
    """The user-error line inside a worker's exception as the parent receives it (the worker's
    traceback text), or None when the worker failed otherwise."""
    found = re.findall(re.escape(_WORKER_MARK) + r"(error: [^\n]*)", str(exc))
    return found[-1] if found else None


@contextlib.contextmanager
def _argparse_errors_are_user_errors(prog: str):
    """Every ``ArgumentParser.error`` of the process (detectron2's parser included) raises a
    :class:`ConfigError` instead of printing the usage and exiting."""

    def error(parser, message):
        raise ConfigError(
            parser.prog or prog, message, f"see {parser.prog or prog} --help for the options"
        )

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run_cli(
    main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None
) -> int:
    """
    Run ``main(argv)`` as a command and return its exit code: the int ``main`` returns (anything
    else: 0), 2 after a user error (its line on stderr); a bug propagates (its traceback, exit 1).

    Args:
        main: the entry point; takes the arguments without the program name.
        argv (list[str] or None): default ``sys.argv[1:]``; ``--debug`` is taken out of it (and
            sets ``QUANT_MIMIC_DEBUG=1`` for this process and the workers it spawns).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "quant_mimic"
    try:
        with _argparse_errors_are_user_errors(prog):
            code = main(argv)
    except UserError as e:
        return _user_error(e.line())
    except Exception as e:  # noqa: BLE001  a worker's user error, wrapped by torch.multiprocessing
        line = worker_user_error_line(e)
        if line is None:
            raise  # a bug: its traceback, exit code 1
        return _user_error(line)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _user_error(line: str) -> int:
    if debug_enabled():
        traceback.print_exc()
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
