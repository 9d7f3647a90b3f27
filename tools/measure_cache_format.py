#!/usr/bin/env python
"""
The teacher cache's entry format against safetensors, side by side on this host: bytes on disk,
write time and read time per entry, with the same checks on both sides (the entry's key, a CRC-32
of every map, the quantizer's exact decoding), for the maps of the project's benchmarks.

    python tools/measure_cache_format.py [--entries 200] [--rounds 5] [--json results/....json]

``ours``: :class:`quant_mimic.teacher_cache.TeacherMapCache` as it stands in the checkout the tool
runs in (format 1 until fe0e3a1: a hand-written JSON header and 64-byte aligned raw maps read
through ``numpy.memmap``; since then format 2, safetensors itself). The decision to move to
safetensors was measured against format 1 (``results/cache_format_cpu.json`` records the command).
``safetensors``: the same encoded arrays in a safetensors file (its JSON header holds the key and
the CRCs as metadata), written through the same atomic write, read with ``safe_open``
(memory-mapped). Times are medians per entry over ``--rounds``
alternating rounds (warm page cache: what every epoch after the first reads).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zlib

import numpy as np
import torch

from quant_mimic.errors import run_cli
from quant_mimic.fileio import atomic_write_bytes, atomic_write_text
from quant_mimic.teacher_cache import MapCodec, TeacherMapCache
from quant_mimic.timing import host_info

UNIFORM = {"stride": 1.0, "method": "uniform", "clip": None, "pow2_min_exp": -8}
# name -> ({map: (C, H, W)}, quantized teacher?): the maps each benchmark's teacher caches
CASES = {
    "faces VGG-1-4 quantized vgg5 (uint8)": ({"vgg5": (128, 38, 50)}, True),
    "VOC R18 C4 res4 (float16)": ({"res4": (256, 12, 16)}, False),
    "VOC R18 FPN p2-p6 (float16)": (
        {f"p{k}": (256, 192 >> k, 256 >> k) for k in range(2, 7)},
        False,
    ),
}


def _identity(shapes, quantized):
    names = sorted(shapes)
    return {
        "features": names,
        "quantized_features": names if quantized else [],
        "quantizer": UNIFORM,
        "format": "measure_cache_format",
    }


def _maps(shapes, quantized, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        x = torch.relu(torch.randn(shape, generator=g) * 3)
        out[name] = torch.round(x).clamp(max=40) if quantized else x
    return out


class SafetensorsEntries:
    """The same entries as safetensors files, with the same checks."""

    def __init__(self, root, identity):
        from safetensors.numpy import save

        self.save = save
        self.root = root
        self.quantized = set(identity["quantized_features"])
        self.codecs = {
            n: MapCodec(identity["quantizer"], n in self.quantized) for n in identity["features"]
        }

    def put(self, path, key, maps):
        arrays = {n: np.ascontiguousarray(c.encode(maps[n], n)) for n, c in self.codecs.items()}
        meta = {"key": key, "crc32": json.dumps({n: zlib.crc32(a) for n, a in arrays.items()})}
        atomic_write_bytes(path, self.save(arrays, metadata=meta))

    def get(self, path, key):
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            meta = f.metadata()
            if meta.get("key") != key:
                raise ValueError("another key")
            crcs = json.loads(meta["crc32"])
            maps = {}
            for n, codec in self.codecs.items():
                arr = f.get_tensor(n)
                if zlib.crc32(arr) != crcs[n]:
                    raise ValueError("CRC mismatch")
                maps[n] = codec.decode(arr)
        return maps


def _median_us(fn, items, rounds):
    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for it in items:
            fn(*it)
        per_round.append(1e6 * (time.perf_counter() - start) / len(items))
    return round(statistics.median(per_round), 1)


def measure(entries: int, rounds: int):
    rows = []
    for case, (shapes, quantized) in CASES.items():
        identity = _identity(shapes, quantized)
        with tempfile.TemporaryDirectory() as d:
            ours = TeacherMapCache(os.path.join(d, "ours"), identity, max_forms=entries)
            st = SafetensorsEntries(os.path.join(d, "st"), identity)
            maps = [_maps(shapes, quantized, i) for i in range(entries)]
            keys = [f"image_{i}.jpg|600x800|padded 608x800|{i:032x}" for i in range(entries)]
            ours_items = [(os.path.join(d, "ours", f"{i}.qmt"), k) for i, k in enumerate(keys)]
            st_items = [(os.path.join(d, "st", f"{i}.safetensors"), k) for i, k in enumerate(keys)]
            os.makedirs(os.path.join(d, "st"), exist_ok=True)
            from quant_mimic.teacher_cache import Entry

            write = {
                "ours": _median_us(
                    lambda p, k, m: ours.put(Entry(k, p, "x"), m),
                    [(p, k, m) for (p, k), m in zip(ours_items, maps)],
                    1,
                ),
                "safetensors": _median_us(
                    st.put, [(p, k, m) for (p, k), m in zip(st_items, maps)], 1
                ),
            }
            # the same decoded maps from both, bit for bit
            for (po, k), (ps, _) in zip(ours_items[:3], st_items[:3]):
                a, b = ours._read(po, k), st.get(ps, k)
                assert all(torch.equal(a[n], b[n]) for n in a), "formats decode differently"
            read = {"ours": [], "safetensors": []}
            for _ in range(rounds):  # alternating, so a slow spell falls on both alike
                read["ours"].append(_median_us(ours._read, ours_items, 1))
                read["safetensors"].append(_median_us(st.get, st_items, 1))
            size = {
                "ours": sum(os.path.getsize(p) for p, _ in ours_items) / entries,
                "safetensors": sum(os.path.getsize(p) for p, _ in st_items) / entries,
            }
        row = {
            "case": case,
            "entries": entries,
            "raw_bytes_per_entry": int(
                sum(np.prod(s) for s in shapes.values()) * (1 if quantized else 2)
            ),
            "bytes_per_entry": {k: round(v) for k, v in size.items()},
            "write_us_per_entry": write,
            "read_us_per_entry": {k: statistics.median(v) for k, v in read.items()},
        }
        rows.append(row)
        print(
            f"{case}: bytes/entry ours {row['bytes_per_entry']['ours']}, safetensors "
            f"{row['bytes_per_entry']['safetensors']} (raw {row['raw_bytes_per_entry']}); read "
            f"µs/entry ours {row['read_us_per_entry']['ours']}, safetensors "
            f"{row['read_us_per_entry']['safetensors']}; write µs/entry ours {write['ours']}, "
            f"safetensors {write['safetensors']}"
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--entries", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import safetensors

    result = {
        "host": dict(host_info(), safetensors=safetensors.__version__),
        "rows": measure(args.entries, args.rounds),
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
