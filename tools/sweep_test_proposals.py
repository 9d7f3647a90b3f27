#!/usr/bin/env python
"""AP of a trained detector at several test-time RPN proposal counts (the accuracy side of the
speed settings in README "Speed"): ``--eval-only`` for each (PRE_NMS_TOPK_TEST,
POST_NMS_TOPK_TEST) pair and each test size, through train_net.py's own evaluation.

    python tools/sweep_test_proposals.py --config-file CFG --weights W --json OUT \\
        [--pairs 6000:300 1000:300 1000:100 300:100] [--test-sizes 0 576] [KEY VALUE ...]

``--test-sizes``: INPUT.MIN_SIZE_TEST values (0 = native image size). Synthetic 192×256 images
have 768 anchors at stride 16 (4 per position), fewer than most PRE_NMS_TOPK_TEST values: a larger
test size (e.g. 576, the benchmark's height) is where the pre-NMS count binds.
"""

import argparse
import json
import sys
import tempfile

from quant_mimic.errors import run_cli
from quant_mimic.fileio import atomic_write_text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument(
        "--pairs", nargs="+", default=["6000:300", "1000:300", "1000:100", "300:100"]
    )
    parser.add_argument("--test-sizes", nargs="+", type=int, default=[0, 576])
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    from quant_mimic import engine

    rows = []
    for size in args.test_sizes:
        for pair in args.pairs:
            pre, post = (int(v) for v in pair.split(":"))
            with tempfile.TemporaryDirectory() as out:
                opts = list(args.opts) + [
                    "MODEL.WEIGHTS", args.weights,
                    "MODEL.RPN.PRE_NMS_TOPK_TEST", str(pre),
                    "MODEL.RPN.POST_NMS_TOPK_TEST", str(post),
                    "INPUT.MIN_SIZE_TEST", str(size),
                    "INPUT.MAX_SIZE_TEST", "10000",
                    "OUTPUT_DIR", out,
                ]  # fmt: skip
                a = engine.build_parser().parse_args(
                    ["--config-file", args.config_file, "--eval-only"] + opts
                )
                res = engine.main(a)
            flat = {f"{t}/{k}": float(v) for t, d in res.items() for k, v in d.items()}
            rows.append(
                {"pre_nms_topk_test": pre, "post_nms_topk_test": post, "min_size_test": size,
                 "weights": args.weights, "metrics": flat}
            )  # fmt: skip
            print(pre, post, size, flat, flush=True)
    atomic_write_text(args.json, json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main))
