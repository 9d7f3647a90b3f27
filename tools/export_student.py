#!/usr/bin/env python
"""Write a deployable checkpoint: the model weights only, without MimicRCNN's adapters r.

    python tools/export_student.py output/voc/R18-1-16_C4_quant_mimic/model_final.pth student.pth

The result loads with no missing or unexpected key into the plain student config (GeneralizedRCNN),
e.g. ``train_net.py --config-file configs/PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml
--eval-only MODEL.WEIGHTS student.pth``. Also drops optimizer/scheduler state (smaller files).
"""

import argparse
import os
import sys
from typing import Dict

import torch

__all__ = ["student_state_dict"]

ADAPTER_PREFIX = "mimic_adapters."


def student_state_dict(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The ``model`` tensors of a detectron2 checkpoint without the mimic adapters."""
    model = checkpoint.get("model", checkpoint)
    return {k: v for k, v in model.items() if not k.startswith(ADAPTER_PREFIX)}


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input):
        parser.error(f"input checkpoint not found: {args.input}")
    if _same_file(args.input, args.output):
        parser.error(f"output {args.output} is the input checkpoint: refusing to overwrite it")
    try:
        ckpt = torch.load(args.input, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        parser.error(f"{args.input} is not a readable torch checkpoint ({type(e).__name__}: {e})")
    model = student_state_dict(ckpt)
    tmp = args.output + ".tmp"
    torch.save({"model": model}, tmp)
    os.replace(tmp, args.output)  # atomic: a kill never leaves a truncated output
    dropped = len(ckpt.get("model", ckpt)) - len(model)
    print(f"Wrote {len(model)} tensors to {args.output} (dropped {dropped} adapter tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
