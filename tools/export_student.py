#!/usr/bin/env python
"""Write a deployable checkpoint: the model weights only, without MimicRCNN's adapters r.

    python tools/export_student.py output/voc/R18-1-16_C4_quant_mimic/model_final.pth student.pth

The result loads with no missing or unexpected key into the plain student config (GeneralizedRCNN),
e.g. ``train_net.py --config-file configs/PascalVOC-Detection/faster_rcnn_R18-1-16_C4_scratch.yaml
--eval-only MODEL.WEIGHTS student.pth``. Also drops optimizer/scheduler state (smaller files).
"""

import argparse
from typing import Dict

import torch

__all__ = ["student_state_dict"]

ADAPTER_PREFIX = "mimic_adapters."


def student_state_dict(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The ``model`` tensors of a detectron2 checkpoint without the mimic adapters."""
    model = checkpoint.get("model", checkpoint)
    return {k: v for k, v in model.items() if not k.startswith(ADAPTER_PREFIX)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args()
    ckpt = torch.load(args.input, map_location="cpu", weights_only=True)
    model = student_state_dict(ckpt)
    torch.save({"model": model}, args.output)
    dropped = len(ckpt.get("model", ckpt)) - len(model)
    print(f"Wrote {len(model)} tensors to {args.output} (dropped {dropped} adapter tensors)")


if __name__ == "__main__":
    main()
