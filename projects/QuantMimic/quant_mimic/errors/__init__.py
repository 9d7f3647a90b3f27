"""User errors (:mod:`.types`) and the one handler that prints them as one line (:mod:`.handler`).
A leaf package: it imports nothing of the project, so every part of it may raise these."""

from .handler import (
    DEBUG_ENV,
    EXIT_USER_ERROR,
    WorkerUserError,
    debug_enabled,
    run_cli,
    worker_user_error_line,
)
from .types import DATA_FIX, BadFileError, ConfigError, DataError, MissingFileError, UserError

__all__ = [
    "UserError",
    "ConfigError",
    "DataError",
    "DATA_FIX",
    "MissingFileError",
    "BadFileError",
    "DEBUG_ENV",
    "EXIT_USER_ERROR",
    "WorkerUserError",
    "debug_enabled",
    "run_cli",
    "worker_user_error_line",
]
