"""Small, fast, deterministic fixtures for tests and measurement tools (as
``detectron2.utils.testing``): overrides that keep CPU runs short, a tiny generated detection set,
a short real-trainer run and the per-iteration losses it logs, a random teacher saved to a file."""

import os

import torch

from detectron2.engine import hooks
from detectron2.utils.env import seed_all_rng

from .engine import Trainer, setup_cfg
from .fileio import CONFIGS_DIR

__all__ = [
    "FAST_OPTS",
    "write_tiny_dataset",
    "register_tiny_dataset",
    "trainer_opts",
    "tiny_mimic_cfg",
    "save_random_teacher",
    "train_losses",
]

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


def tiny_mimic_cfg(tmp, config, cache="", extra=(), max_iter=4, teacher=""):
    """A mimic config (``config`` relative to ``configs/``) for a short real-trainer run on a tiny
    6-class set written under ``tmp``, with a teacher cache at ``cache`` ("" = off)."""
    name = register_tiny_dataset(
        "qm_tiny_cache_" + os.path.basename(tmp), os.path.join(tmp, "data"), num_classes=6
    )
    opts = FAST_OPTS + trainer_opts(name, os.path.join(tmp, "out"), max_iter)
    opts += ["MODEL.MIMIC.TEACHER.CACHE_DIR", cache, "MODEL.MIMIC.TEACHER.WEIGHTS", teacher]
    opts += ["SOLVER.BASE_LR", 0.001, "SOLVER.CLIP_GRADIENTS.ENABLED", True]
    return setup_cfg(os.path.join(CONFIGS_DIR, config), opts + list(extra))


def save_random_teacher(cfg, path, seed):
    """A teacher checkpoint (random weights of ``cfg``'s teacher config) at ``path``."""
    torch.manual_seed(seed)
    model = Trainer.build_model(cfg, load_teacher=False)
    torch.save({"model": model.teacher.state_dict()}, path)
    return path


def train_losses(cfg, key="loss_mimic"):
    """``key`` at every iteration of a real Trainer run, seeded as ``train_net.py`` does
    (``default_setup``): the same model, batches and flips on every call. Returns (values, model).
    """
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    values = []
    trainer.register_hooks(
        [hooks.CallbackHook(after_step=lambda t: values.append(t.storage.history(key).latest()))]
    )
    trainer.train()
    model = getattr(trainer.model, "module", trainer.model)
    return values, model
