"""Helpers shared by the tests: configs from the project's yaml files, tiny inputs, no weights."""

import glob
import os

import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import quant_mimic  # noqa: F401  (registers the project's components)
from quant_mimic import setup_cfg
from quant_mimic.data.data_file import num_classes as num_classes_of
from quant_mimic.testing import (  # noqa: F401  (shared with tools)
    FAST_OPTS,
    register_tiny_dataset,
    trainer_opts,
    write_tiny_dataset,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")


def all_config_files(include_base: bool = False):
    files = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))
    # Pipeline presets (tools/run_pipeline.py) are not detectron2 configs.
    files = [f for f in files if os.sep + "presets" + os.sep not in f]
    if not include_base:
        files = [f for f in files if not os.path.basename(f).startswith("Base-")]
    return files


def get_config(relpath: str, opts=()):
    path = relpath if os.path.isabs(relpath) else os.path.join(CONFIG_DIR, relpath)
    return setup_cfg(path, ["MODEL.WEIGHTS", ""] + FAST_OPTS + list(opts))


def build_model_no_weights(cfg):
    """Build on CPU with random weights, in train mode."""
    torch.manual_seed(0)
    return build_model(cfg)


def random_inputs(cfg, sizes=((200, 249), (160, 128)), num_boxes=(3, 0), seed=0):
    """
    One dict per image in detectron2's model input format: random pixels in the model's channel
    count, random ground truth (``num_boxes[i]`` boxes; 0 = an image without ground truth).
    """
    g = torch.Generator().manual_seed(seed)
    channels = len(cfg.MODEL.PIXEL_MEAN)
    num_classes = num_classes_of(cfg)  # the head's: ROI, RetinaNet or FCOS
    inputs = []
    for (h, w), n in zip(sizes, num_boxes):
        image = torch.rand(channels, h, w, generator=g) * 255
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 16 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(num_classes, (n,), generator=g)
        inputs.append({"image": image, "instances": inst, "height": h, "width": w})
    return inputs


def train_step(model, inputs):
    """One forward/backward in training mode inside an EventStorage; returns the loss dict."""
    model.train()
    with EventStorage():
        losses = model(inputs)
        total = sum(losses.values())
        total.backward()
    return losses
