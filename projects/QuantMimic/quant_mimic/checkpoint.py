"""Strict checkpoint loading (detectron2/fvcore only warn on mismatches and keep random weights)."""

import os
from typing import Sequence

from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["load_checkpoint_strict"]


class _RecordingCheckpointer(DetectionCheckpointer):
    """Keeps the result of fvcore's lenient ``_load_model`` so that the caller can be strict."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_checkpoint_strict(
    model: nn.Module,
    path: str,
    what: str = "MODEL.WEIGHTS",
    model_name: str = "the config",
    optional_prefixes: Sequence[str] = (),
) -> None:
    """
    Load the model tensors of checkpoint ``path`` into ``model`` and fail, naming the file and the
    keys, unless every tensor of the model is loaded with the right shape and the file holds no
    other model tensor. An empty path, a missing file, or a file that is not a checkpoint is an
    error naming ``what`` and the file. Model tensors whose names start with one of
    ``optional_prefixes`` may be missing from the file.
    """
    if not path:
        raise FileNotFoundError(f"{what} is empty: there are no weights to load")
    checkpointer = _RecordingCheckpointer(model)
    local = checkpointer.path_manager.get_local_path(path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{what} not found: {path!r}")
    try:
        checkpointer.load(local, checkpointables=[])
    except Exception as e:  # torch/pickle raise many types for a file that is not a checkpoint
        raise RuntimeError(
            f"{what} {path} is not a readable checkpoint ({type(e).__name__}: {e})"
        ) from e
    incompatible = checkpointer.incompatible
    problems = []
    if incompatible.incorrect_shapes:
        problems.append(
            "shape mismatch: "
            + ", ".join(
                f"{k} {tuple(a)} in file vs {tuple(b)} in model"
                for k, a, b in incompatible.incorrect_shapes
            )
        )
    missing = [k for k in incompatible.missing_keys if not k.startswith(tuple(optional_prefixes))]
    if missing:
        problems.append(f"missing in file: {sorted(missing)}")
    if incompatible.unexpected_keys:
        problems.append(f"not in the model: {sorted(incompatible.unexpected_keys)}")
    if problems:
        raise RuntimeError(f"{what} {path} does not match {model_name}: " + "; ".join(problems))
