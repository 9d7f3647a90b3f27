"""Files, written and found once for the whole project: atomic writes, a file's SHA-256, and where
the repository's ``configs/`` lie.

Every file the project writes that another process or a later run reads (checkpoints, records,
``final_metrics.json``, teacher-cache entries, exported models) goes through :func:`atomic_output`:
a temporary file in the same folder, flushed and fsync'ed, renamed over the target, the folder
fsync'ed, and the temporary removed on any error. A reader sees the old file or the whole new one,
never a part, also after a kill or a power loss.
"""

import contextlib
import hashlib
import os
import tempfile
from typing import Iterable, Iterator, Union

__all__ = [
    "redirect_output",
    "REPO_ROOT",
    "CONFIGS_DIR",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "file_sha256",
]

# projects/QuantMimic/quant_mimic/fileio.py -> the repository
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """
    ``with atomic_output(path) as tmp:`` write the whole file to ``tmp`` (any writer: ``open``,
    ``torch.save``, ``onnx.save``, ``torch.onnx.export``); on leaving the block it is synced and
    renamed to ``path``. On an exception the temporary file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str, data: Union[bytes, Iterable[bytes]]) -> None:
    """Write ``data`` (bytes, or chunks of bytes) to ``path`` atomically (:func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
            f.write(chunk)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_output`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_output`)."""
    import torch

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def redirect_output(path: str) -> Iterator[None]:
    """Python's standard output and error (prints, logging handlers made meanwhile, warnings)
    appended to ``path`` for the block (its folder made if needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", buffering=1) as f:
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield
