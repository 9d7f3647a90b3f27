#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint (e.g. ImageNet ResNet18) into detectron2's format.

Usage:
    python tools/convert_torchvision_resnet.py resnet18-f37072fd.pth models/R-18-torchvision.pkl

The output is a pickle in detectron2's "matching heuristics" format, loadable through MODEL.WEIGHTS
by the divided ResNet (CHANNEL_DIVISOR 1) and by its C4 res5 head. torchvision weights expect RGB
input normalised with mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375), as set in
configs/Base-Divided-RCNN-C4.yaml.
"""

import argparse
import pickle
import re
import sys
from typing import Dict

import torch

__all__ = ["convert_torchvision_resnet"]

from quant_mimic.errors import run_cli


def convert_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> Dict[str, "object"]:
    """
    Rename torchvision ResNet keys to detectron2's ResNet names; drops the classifier ``fc``.

    Returns:
        dict[str->np.ndarray]: e.g. ``layer1.0.bn1.weight`` -> ``res2.0.conv1.norm.weight``.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
        new = re.sub(r"^conv1\.", "stem.conv1.", new)
        new = re.sub(r"^bn1\.", "stem.conv1.norm.", new)
        new = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", new)
        new = new.replace(".downsample.0.", ".shortcut.").replace(
            ".downsample.1.", ".shortcut.norm."
        )
        out[new] = value.detach().cpu().numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="torchvision state_dict (.pth)")
    parser.add_argument("output", help="detectron2 weights (.pkl)")
    args = parser.parse_args()
    state = torch.load(args.input, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    model = convert_torchvision_resnet(state)
    with open(args.output, "wb") as f:
        pickle.dump({"model": model, "__author__": "torchvision", "matching_heuristics": True}, f)
    print(f"Wrote {len(model)} tensors to {args.output}")


if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: main()))
