"""Helpers shared by the tests: configs from the project's yaml files, tiny inputs, no weights."""

import glob
import os

import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import quant_mimic  # noqa: F401  (registers the project's components)
from quant_mimic import setup_cfg

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")

# Keeps CPU tests fast without changing what is built: fewer proposals and RoIs.
FAST_OPTS = [
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 300,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 300,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
    "MODEL.DEVICE", "cpu",
    "MODEL.MIMIC.TEACHER.WEIGHTS", "",  # random teachers in tests
]  # fmt: skip


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
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
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


def write_tiny_dataset(root, num_images=4, num_classes=20, size=(96, 128), seed=0):
    """Write a few images with coloured rectangles; return detectron2 dataset dicts for them."""
    import cv2
    import numpy as np

    from detectron2.structures import BoxMode

    os.makedirs(root, exist_ok=True)
    rng = np.random.RandomState(seed)
    h, w = size
    dicts = []
    for i in range(num_images):
        img = (rng.rand(h, w, 3) * 60).astype("uint8")
        annos = []
        for _ in range(1 + i % 3):
            bw, bh = rng.randint(16, w // 2), rng.randint(16, h // 2)
            x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
            c = int(rng.randint(num_classes))
            img[y0 : y0 + bh, x0 : x0 + bw] = (40 + 200 * rng.rand(3)).astype("uint8")
            annos.append(
                {
                    "bbox": [x0, y0, x0 + bw, y0 + bh],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": c,
                }
            )
        path = os.path.join(root, f"{i}.png")
        cv2.imwrite(path, img)
        dicts.append(
            {"file_name": path, "image_id": i, "height": h, "width": w, "annotations": annos}
        )
    return dicts


def register_tiny_dataset(name, root, num_classes=20):
    """Register (once) a tiny training set under ``name``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        dicts = write_tiny_dataset(root, num_classes=num_classes)
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(thing_classes=[f"c{i}" for i in range(num_classes)])
    return name


def trainer_opts(dataset, output_dir, max_iter=3):
    """Overrides for a short real-Trainer run on a tiny dataset."""
    return [
        "DATASETS.TRAIN", (dataset,),
        "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TRAIN", (96,),
        "INPUT.MAX_SIZE_TRAIN", 160,
        "INPUT.MIN_SIZE_TEST", 96,
        "INPUT.MAX_SIZE_TEST", 160,
        "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.IMS_PER_BATCH", 2,
        "SOLVER.MAX_ITER", max_iter,
        "SOLVER.WARMUP_ITERS", 0,
        "SOLVER.CHECKPOINT_PERIOD", 1000,
        "OUTPUT_DIR", output_dir,
        "SEED", 1,
    ]  # fmt: skip
