"""Trustworthy checkpoints.

* :func:`load_checkpoint_strict`: detectron2/fvcore only warn on mismatched tensors and keep random
  weights; this fails, naming the file and the keys.
* :class:`SafeCheckpointer`: the training checkpointer. Every file (``model_*.pth``,
  ``model_final.pth``, ``last_checkpoint``) is written atomically (temporary file, fsync, rename), a
  model with non-finite tensors is never written (``FloatingPointError`` instead, so the last
  checkpoint stays good), ``--resume`` falls back from an unreadable (truncated, empty) or
  non-finite checkpoint to the newest good one with a warning, and resuming weights of another
  architecture is an error naming the tensors, raised before any optimizer state is touched.
"""

import glob
import logging
import os
import zipfile
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .errors import BadFileError, MissingFileError
from .fileio import atomic_torch_save, atomic_write_text

__all__ = [
    "check_weights_file",
    "checkpoint_file_problem",
    "ADAPTER_PREFIX",
    "load_checkpoint_strict",
    "load_student_weights",
    "describe_incompatible",
    "non_finite_tensors",
    "SafeCheckpointer",
]

logger = logging.getLogger(__name__)

# MimicRCNN's adapters r (mimic_head.RoIMimicHead): in a training checkpoint, unused at inference.
ADAPTER_PREFIX = "mimic_adapters."


def describe_incompatible(incompatible, optional_prefixes: Sequence[str] = ()) -> List[str]:
    """Human-readable problems of fvcore's ``_IncompatibleKeys`` ([] when the file fits)."""
    problems = []
    if incompatible.incorrect_shapes:
        problems.append(
            "shape mismatch: "
            + ", ".join(
                f"{k} {tuple(a)} in file vs {tuple(b)} in model"
                for k, a, b in incompatible.incorrect_shapes
            )
        )
    misshaped = {k for k, _, _ in incompatible.incorrect_shapes}  # fvcore lists them as missing too
    missing = [
        k
        for k in incompatible.missing_keys
        if not k.startswith(tuple(optional_prefixes)) and k not in misshaped
    ]
    if missing:
        problems.append(f"missing in file: {sorted(missing)}")
    if incompatible.unexpected_keys:
        problems.append(f"not in the model: {sorted(incompatible.unexpected_keys)}")
    return problems


def non_finite_tensors(state: Dict[str, object]) -> List[str]:
    """Names of the floating-point tensors of a state dict holding NaN or ±inf."""
    return [
        k
        for k, v in state.items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


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
    local = check_weights_file(path, what)
    checkpointer = _RecordingCheckpointer(model)
    try:
        checkpointer.load(local, checkpointables=[])
    except Exception as e:  # torch/pickle raise many types for a file that is not a checkpoint
        raise BadFileError(
            path,
            f"{what} {path} is not a readable checkpoint ({type(e).__name__}: {e})",
            "give a .pth or .pkl checkpoint that detectron2 wrote",
        ) from e
    problems = describe_incompatible(checkpointer.incompatible, optional_prefixes)
    if problems:
        raise BadFileError(
            path,
            f"{what} {path} does not match {model_name}: " + ", ".join(problems),
            "give the weights trained with this config, or the config they were trained with",
        )


def checkpoint_file_problem(local: str) -> Optional[str]:
    """
    Why the file ``local`` cannot be a checkpoint, from its structure alone (nothing is
    unpickled, so checking a large teacher costs nothing): it must be a zip archive with an intact
    end record (``torch.save``) or a pickle stream (``.pkl`` weights, legacy ``torch.save``).
    None when it can be one; a file damaged inside is still found by the load.
    """
    if zipfile.is_zipfile(local):
        return None
    with open(local, "rb") as f:
        head = f.read(1)
    if head == b"\x80":  # a pickle's PROTO opcode
        return None
    return "empty" if not head else "neither a torch zip archive nor a pickle (or truncated)"


def check_weights_file(path: str, what: str = "MODEL.WEIGHTS") -> str:
    """
    The local file of weights ``path`` (a URL such as ``detectron2://...`` is fetched to the cache
    first), after checking that it is given and exists: an empty path or a missing file is a
    :class:`~quant_mimic.errors.MissingFileError` naming ``what``.
    """
    if not path:
        raise MissingFileError(
            what, f"{what} is empty: there are no weights to load", f"set {what} to a checkpoint"
        )
    local = PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise MissingFileError(
            path, f"{what} not found", "check the path, or train the run that writes it first"
        )
    return local


def load_student_weights(
    model: nn.Module, path: str, what: str = "MODEL.WEIGHTS", model_name: str = "the config"
) -> None:
    """
    A trained student's weights for inference (evaluation, export, demo), strictly
    (:func:`load_checkpoint_strict`); MimicRCNN's adapters r, unused at inference, may be absent
    (an exported ``.pth`` student has none).
    """
    load_checkpoint_strict(
        model, path, what=what, model_name=model_name, optional_prefixes=(ADAPTER_PREFIX,)
    )


class SafeCheckpointer(DetectionCheckpointer):
    """
    detectron2's ``DetectionCheckpointer`` for training output dirs, with the guarantees of the
    module docstring. Loading ``MODEL.WEIGHTS`` for initialisation (no resume) stays lenient, as in
    detectron2 (ImageNet backbones, a teacher's weights as the start of its quantized finetuning).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._strict_load = False
        self._preloaded: Dict[str, dict] = {}

    # ---- writing ---------------------------------------------------------------------------
    def save(self, name: str, **kwargs) -> None:
        # Every rank checks (DDP replicas are identical), so all of them stop together.
        bad = non_finite_tensors(self.model.state_dict())
        if bad:
            raise FloatingPointError(
                f"Not saving checkpoint {name!r}: the model has non-finite values in {len(bad)} "
                f"tensors ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); training "
                "diverged. The last good checkpoint is kept; lower the learning rate or clip "
                "gradients (SOLVER.CLIP_GRADIENTS) and --resume."
            )
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    # ---- resuming --------------------------------------------------------------------------
    def _resume_candidates(self) -> Iterable[str]:
        """The tagged checkpoint first, then the folder's other checkpoints, newest first."""
        tagged = self.get_checkpoint_file()
        others = sorted(
            (p for p in glob.glob(os.path.join(self.save_dir, "*.pth")) if p != tagged),
            key=os.path.getmtime,
            reverse=True,
        )
        return ([tagged] if tagged else []) + others

    def _readable(self, path: str) -> Optional[str]:
        """None if ``path`` is a finite checkpoint (kept for the load that follows), else why."""
        if not os.path.isfile(path):
            return "missing"
        if os.path.getsize(path) == 0:
            return "empty (0 bytes)"
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated zip, pickle errors, ...
            return f"unreadable ({type(e).__name__}: {e})"
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            return "not a training checkpoint (no 'model' entry)"
        bad = non_finite_tensors(checkpoint["model"])
        if bad:
            return f"non-finite values in {bad[:3]}"
        self._preloaded[path] = checkpoint
        return None

    def resume_or_load(self, path: str, *, resume: bool = True):
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        tagged = self.get_checkpoint_file()
        for candidate in self._resume_candidates():
            why = self._readable(candidate)
            if why is not None:
                self.logger.warning(f"Cannot resume from {candidate}: {why}; trying an older one")
                continue
            if candidate != tagged:
                self.logger.warning(
                    f"Resuming from {candidate} instead of the last checkpoint {tagged or '?'}"
                )
            self._strict_load = True
            try:
                return self.load(candidate)
            finally:
                self._strict_load = False
                self._preloaded.clear()
        raise BadFileError(
            self.save_dir,
            "--resume: this folder has a last_checkpoint but no readable checkpoint",
            "remove the folder (or its last_checkpoint) to start over",
        )

    def _load_file(self, filename):
        if filename in self._preloaded:
            return self._preloaded.pop(filename)
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if self._strict_load and incompatible is not None:
            problems = describe_incompatible(incompatible)
            if problems:
                raise BadFileError(
                    self.save_dir,
                    "--resume: the checkpoint in this folder was written by another "
                    "architecture than this config's: " + ", ".join(problems),
                    "use another OUTPUT_DIR, or train without --resume",
                )
        return incompatible
