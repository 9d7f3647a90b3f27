"""A cache of the frozen teacher's maps at the mimic layer (ours; the paper runs the teacher).

The teacher of eq. 5-6 is frozen, so its map f_t at ``MODEL.MIMIC.TEACHER_FEATURES`` is a pure
function of (teacher weights, preprocessed image). With one training scale and flips as the only
augmentation, each training image has at most two such maps (as read, and flipped). This module
stores them once and reads them back every later epoch, seed, λ and row, so a mimic step costs
about a scratch step.

* **Storage.** A quantized teacher's map is integer levels times s (eq. 1-2): it is stored exactly
  as uint8 level indices (level k of the uniform code book {0, s, 2s, ...}, or index e - e_min + 1
  of the power-of-2 level s·2^e) and decoded by the quantizer's own arithmetic, so the decoded map
  is bit-identical to the teacher's; a level index above 255 is an error. A full-precision
  teacher's map is stored as float16 (relative rounding error ≤ 2^-11 = 4.9e-4 per entry).
* **Entries.** One file per (image file, size after resize, size of the padded batch, exact
  preprocessed input): the key includes a BLAKE2b digest of the input tensor the model receives,
  so a flipped image, another scale or a changed file on disk is another entry, never a wrong one.
  The teacher reads a batch padded to one size, like the student, and an image's map near its
  border depends on that padding, so the map is stored as computed in its padded batch and read
  only for batches padded the same way: always, with one image per batch (the paper's one image
  per GPU) or images of one size (the synthetic benchmarks); with mixed sizes several images a
  batch, each padding an image meets is an entry of its own (more misses, never a wrong map).
  Each file is a safetensors file (format 2): its JSON header holds the maps' shapes, dtypes and
  offsets and, as metadata, the entry's key and a CRC-32 of every map; it is read memory-mapped
  (``safe_open``): ranks read entries on demand, never the whole cache. Format 1 (a hand-written
  header of the same content) was replaced after a side-by-side measurement
  (``tools/measure_cache_format.py``, docs/TEACHER_CACHE.md): the same bytes on disk, faster
  reads, a format other tools read, and no layout code of our own; a cache of another format is
  refused, naming both versions. Writes go to a temporary
  file renamed into place (atomic): a run killed while filling leaves no entry that reads back
  wrong, and two ranks writing the same entry write the same bytes. An entry whose header, size or
  CRC does not check out is treated as missing: recomputed and rewritten.
* **Identity.** ``manifest.json`` records what the cache was built from: the teacher checkpoint's
  SHA-256 (the teacher pin), the teacher's ``MODEL`` config, its quantizer and quantized maps, the
  mimicked maps, the input format and the size rules of training. Opening a cache with anything
  else is an error naming every difference.
* **Filling.** Training fills the cache lazily; ``tools/cache_teacher.py`` fills it ahead for a
  dataset (:func:`quant_mimic.teacher_cache_fill.fill_teacher_cache`, which runs the trainer's
  model over it: this module is the file format only, below the model and the trainer).
* **Augmentation.** Several training scales (``INPUT.MIN_SIZE_TRAIN`` with more than one value, or
  ``MIN_SIZE_TRAIN_SAMPLING`` "range") and random crops (``INPUT.CROP.ENABLED``) are refused at
  start-up; any other augmentation that changes the input from epoch to epoch (colour jitter in a
  custom mapper) is refused when an image reaches the teacher in more forms than the flips allow.
"""

import hashlib
import json
import logging
import os
import zlib
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as safetensors_bytes

from detectron2.config import CfgNode

from .fileio import atomic_write_bytes

__all__ = [
    "TeacherCacheError",
    "TeacherMapCache",
    "MapCodec",
    "cache_identity",
    "check_cacheable_input",
    "tensor_digest",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# 1: a hand-written header + raw maps (.qmt); 2: safetensors entries (tools/measure_cache_format.py)
FORMAT_VERSION = 2
ENTRY_SUFFIX = ".safetensors"
FLOAT16_MAX = 65504.0


class TeacherCacheError(RuntimeError):
    """The teacher cache cannot be used as configured (identity, augmentation, storage)."""


def check_cacheable_input(cfg: CfgNode) -> None:
    """
    Refuse, at start-up, training augmentations under which the teacher's map of an image is not
    one of a fixed few (``MODEL.MIMIC.TEACHER.CACHE_DIR`` set). Raises TeacherCacheError naming
    the key.
    """
    i = cfg.INPUT
    sizes = (
        list(i.MIN_SIZE_TRAIN)
        if isinstance(i.MIN_SIZE_TRAIN, (list, tuple))
        else [i.MIN_SIZE_TRAIN]
    )
    why = (
        "the teacher's map of an image would differ from epoch to epoch, so "
        "MODEL.MIMIC.TEACHER.CACHE_DIR cannot be used with it; set it to '' (off) or use one "
        "training scale without crops"
    )
    if i.MIN_SIZE_TRAIN_SAMPLING == "range":
        raise TeacherCacheError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING is 'range' (sizes {sizes}): {why}")
    if len(set(sizes)) > 1:
        raise TeacherCacheError(f"INPUT.MIN_SIZE_TRAIN has several scales {sizes}: {why}")
    if i.CROP.ENABLED:
        raise TeacherCacheError(f"INPUT.CROP.ENABLED is True (random crops): {why}")


def _flat(node, prefix: str = "") -> Dict[str, str]:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = repr(v)
    return out


def cache_identity(
    cfg: CfgNode,
    tcfg: CfgNode,
    teacher_backbone,
    feature_names: Sequence[str],
    teacher_sha256: str,
) -> Dict:
    """
    What a cache is built from (``manifest.json``); two caches are interchangeable exactly when
    their identities are equal.

    Args:
        cfg: the student's (MimicRCNN) config: its ``INPUT`` rules make the teacher's input.
        tcfg: the teacher's config.
        teacher_backbone: the teacher's backbone (a QuantizedBackbone says which maps are Q'd).
        feature_names (list[str]): the teacher maps that are mimicked.
        teacher_sha256 (str): SHA-256 of the teacher checkpoint (the teacher pin).
    """
    model = _maps_config(_flat(tcfg.MODEL, "MODEL."))
    i = cfg.INPUT
    return {
        "format": FORMAT_VERSION,
        "teacher_sha256": teacher_sha256,
        "teacher_config": model,
        "quantizer": MapCodec.quantizer_of(teacher_backbone),
        "quantized_features": sorted(
            n for n in feature_names if n in getattr(teacher_backbone, "quantized_features", [])
        ),
        "features": list(feature_names),
        "input": {
            "INPUT.FORMAT": i.FORMAT,
            "INPUT.MIN_SIZE_TRAIN": repr(tuple(i.MIN_SIZE_TRAIN)),
            "INPUT.MAX_SIZE_TRAIN": i.MAX_SIZE_TRAIN,
            "INPUT.MIN_SIZE_TRAIN_SAMPLING": i.MIN_SIZE_TRAIN_SAMPLING,
            "INPUT.RANDOM_FLIP": i.RANDOM_FLIP,
            "size_divisibility": int(getattr(teacher_backbone, "size_divisibility", 0)),
        },
    }


def _maps_config(flat_model: Dict) -> Dict:
    """The teacher's MODEL keys that can change its maps: not its weights path or device, nor its
    own MODEL.MIMIC.* (a teacher is never a mimic student), nor MODEL.FCOS.* (keys of FCOS's
    head, which this project added; no backbone reads them), so that a new key of this project
    does not invalidate the caches built before it."""
    return {
        k: v
        for k, v in flat_model.items()
        if k not in ("MODEL.WEIGHTS", "MODEL.DEVICE") and not k.startswith(_NOT_MAPS_KEYS)
    }


_NOT_MAPS_KEYS = ("MODEL.MIMIC.", "MODEL.FCOS.")


def _differences(old: Dict, new: Dict, prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: cache {a!r}, now {b!r}")
    return out


class MapCodec:
    """Encodes a teacher map for storage and decodes it: uint8 levels (exact) or float16."""

    @staticmethod
    def quantizer_of(backbone) -> Optional[Dict]:
        """The quantizer of a QuantizedBackbone (None for a full-precision one)."""
        if not hasattr(backbone, "quantized_features"):
            return None
        return {
            "stride": float(backbone.q_stride),
            "method": backbone.q_method,
            "clip": backbone.q_clip,
            "pow2_min_exp": int(backbone.q_pow2_min_exp),
        }

    def __init__(self, quantizer: Optional[Dict], quantized: bool):
        self.q = quantizer if quantized else None

    @property
    def dtype(self) -> str:
        return "uint8" if self.q else "float16"

    def encode(self, x: torch.Tensor, name: str) -> np.ndarray:
        """(C, H, W) float32 -> stored array; raises TeacherCacheError if it cannot be exact."""
        x = x.detach().float().cpu()
        if self.q is None:
            if not torch.isfinite(x).all() or x.abs().max() > FLOAT16_MAX:
                raise TeacherCacheError(
                    f"Teacher map {name!r} has values outside float16's range (|x| ≤ 65504) or "
                    "non-finite ones: it cannot be cached; set MODEL.MIMIC.TEACHER.CACHE_DIR ''"
                )
            return x.half().numpy()
        s = self.q["stride"]
        if self.q["method"] == "uniform":
            idx = torch.round(x / s)
        else:
            pos = x > 0
            e = torch.round(torch.log2(torch.where(pos, x / s, torch.ones_like(x))))
            idx = torch.where(pos, e - self.q["pow2_min_exp"] + 1, torch.zeros_like(x))
        top = float(idx.max()) if idx.numel() else 0.0
        if top > 255 or float(idx.min() if idx.numel() else 0) < 0:
            raise TeacherCacheError(
                f"Teacher map {name!r}: level index {top:g} does not fit in uint8 (0-255) at "
                f"stride s = {s} ({self.q['method']}): the map reaches {float(x.max()):g}. Use a "
                "larger stride or a clip (MODEL.QUANTIZATION.CLIP), or set "
                "MODEL.MIMIC.TEACHER.CACHE_DIR '' (off)"
            )
        stored = idx.to(torch.uint8).numpy()
        if not torch.equal(self.decode(stored), x):
            raise TeacherCacheError(
                f"Teacher map {name!r} is not on the code book of its quantizer {self.q}: it "
                "cannot be stored exactly as levels"
            )
        return stored

    def decode(self, stored: np.ndarray) -> torch.Tensor:
        """Stored array -> float32 tensor, by the quantizer's own arithmetic (bit-exact)."""
        t = torch.from_numpy(np.array(stored))
        if self.q is None:
            return t.float()
        s = self.q["stride"]
        k = t.to(torch.float32)
        if self.q["method"] == "uniform":
            return k * s
        e = (k - 1 + self.q["pow2_min_exp"]).to(torch.int32)
        level = torch.ldexp(torch.ones_like(k), e)
        return torch.where(k > 0, level, torch.zeros_like(k)) * s


def tensor_digest(image: torch.Tensor) -> str:
    """BLAKE2b of a tensor (dtype, shape and bytes): a model input or a random teacher's weights."""
    t = image.detach().cpu().contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class Entry(NamedTuple):
    """One cache entry: its key (file, size, padded size, input digest) and file."""

    key: str
    path: str
    file_name: str


class TeacherMapCache:
    """
    The cache at ``root`` for one teacher (see the module docstring).

    Args:
        root (str): ``MODEL.MIMIC.TEACHER.CACHE_DIR``.
        identity (dict): :func:`cache_identity`; an existing cache with another is an error.
        max_forms (int): distinct inputs one image file may take at one size (the flips).
    """

    def __init__(self, root: str, identity: Dict, max_forms: int = 2):
        self.root = os.path.abspath(root)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from JSON
        self.max_forms = max_forms
        self.quantized = set(self.identity["quantized_features"])
        self.codecs = {
            n: MapCodec(self.identity["quantizer"], n in self.quantized)
            for n in self.identity["features"]
        }
        self.hits = self.misses = self.rejected = 0
        self._forms: Dict[tuple, set] = {}
        self._open()

    def _open(self) -> None:
        path = os.path.join(self.root, MANIFEST)
        if not os.path.isfile(path):
            os.makedirs(self.root, exist_ok=True)
            text = json.dumps(self.identity, indent=2, sort_keys=True) + "\n"
            atomic_write_bytes(path, text.encode())  # two ranks write the same bytes
        with open(path) as f:
            try:
                old = json.load(f)
            except json.JSONDecodeError as e:
                raise TeacherCacheError(f"{path} is not a teacher-cache manifest: {e}") from e
        if old.get("format") != FORMAT_VERSION:
            raise TeacherCacheError(
                f"The teacher cache {self.root} holds entry format {old.get('format')!r}; this "
                f"version reads format {FORMAT_VERSION} (safetensors entries). Delete the folder "
                "(it refills while training, or with tools/cache_teacher.py) or point "
                "MODEL.MIMIC.TEACHER.CACHE_DIR at another one."
            )
        if isinstance(old.get("teacher_config"), dict):  # manifests written with MIMIC keys
            old["teacher_config"] = _maps_config(old["teacher_config"])
        diff = _differences(old, self.identity)
        if diff:
            raise TeacherCacheError(
                f"The teacher cache {self.root} was built from something else; differences:\n  "
                + "\n  ".join(diff)
                + "\nPoint MODEL.MIMIC.TEACHER.CACHE_DIR at another folder (or delete this one)."
            )

    def entry(self, file_name: str, image: torch.Tensor, padded: Sequence[int]) -> Entry:
        """The :class:`Entry` of one input, for :meth:`get` and :meth:`put`; its key names the
        file, the size after resize, the size of the padded batch the teacher reads, and the
        input's digest (computed here, once)."""
        h, w = image.shape[-2:]
        ph, pw = padded
        key = f"{file_name}|{h}x{w}|padded {ph}x{pw}|{tensor_digest(image)}"
        name = hashlib.sha1(key.encode()).hexdigest()
        self._check_forms(file_name, (h, w, ph, pw), key)
        path = os.path.join(self.root, "entries", name[:2], name + ENTRY_SUFFIX)
        return Entry(key, path, file_name)

    def _check_forms(self, file_name: str, size: tuple, key: str) -> None:
        # the same file, size and padding: only the flips may differ
        forms = self._forms.setdefault((file_name, size), set())
        forms.add(key)
        if len(forms) > self.max_forms:
            raise TeacherCacheError(
                f"Image {file_name} reached the teacher in {len(forms)} different forms at size "
                f"{size[0]}x{size[1]} (at most {self.max_forms} expected: the flips): the training "
                "augmentation changes the input from epoch to epoch (e.g. colour jitter), so the "
                "teacher's map cannot be cached; set MODEL.MIMIC.TEACHER.CACHE_DIR '' (off)"
            )

    def get(self, entry: Entry) -> Optional[Dict[str, torch.Tensor]]:
        """The stored maps {name: (C, H', W') float32} of an :meth:`entry`, or None (missing or
        bad)."""
        maps = self._read(entry.path, entry.key)
        if maps is None:
            self.misses += 1
        else:
            self.hits += 1
        return maps

    def _read(self, path: str, key: str) -> Optional[Dict[str, torch.Tensor]]:
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, framework="numpy") as f:  # memory-mapped
                meta = f.metadata() or {}
                if meta.get("key") != key:
                    raise ValueError("another key")
                crcs = json.loads(meta["crc32"])
                maps = {}
                for name, codec in self.codecs.items():
                    arr = f.get_tensor(name)
                    if zlib.crc32(arr) != crcs[name]:
                        raise ValueError("CRC mismatch")
                    maps[name] = codec.decode(arr)
            return maps
        except (SafetensorError, ValueError, KeyError, TypeError, OSError) as e:
            self.rejected += 1
            logger.warning(f"Teacher cache entry {path} is unreadable ({e}): recomputed")
            return None

    def put(self, entry: Entry, maps: Dict[str, torch.Tensor]) -> None:
        """Store the maps {name: (C, H', W')} of an :meth:`entry` (atomic)."""
        key, path, file_name = entry
        arrays = {
            name: np.ascontiguousarray(self.codecs[name].encode(maps[name], name))
            for name in self.identity["features"]
        }
        crcs = {name: zlib.crc32(arr) for name, arr in arrays.items()}
        meta = {"key": key, "file_name": file_name, "crc32": json.dumps(crcs)}
        atomic_write_bytes(path, safetensors_bytes(arrays, metadata=meta))

    def size_on_disk(self) -> tuple:
        """(number of entries, bytes) of the cache."""
        count = total = 0
        for d, _, files in os.walk(os.path.join(self.root, "entries")):
            for f in files:
                if f.endswith(ENTRY_SUFFIX):
                    count += 1
                    total += os.path.getsize(os.path.join(d, f))
        return count, total
