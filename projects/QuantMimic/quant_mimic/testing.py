"""Small, fast, deterministic fixtures for tests and measurement tools (as
``detectron2.utils.testing``): overrides that keep CPU runs short, a tiny generated detection set,
a short real-trainer run and the per-iteration losses it logs, a random teacher saved to a file."""

import json
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
    "EXAMPLE_CLASSES",
    "write_coco_example",
    "write_voc_example",
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


EXAMPLE_CLASSES = ("car", "person", "dog")
_EXAMPLE_COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))  # BGR, one per class


def _example_image(rng, num_boxes: int, size=(120, 160)):
    """An image with ``num_boxes`` rectangles coloured by class; (image, [(class, x, y, w, h)])."""
    h, w = size
    img = (rng.rand(h, w, 3) * 60).astype("uint8")
    boxes = []
    for _ in range(num_boxes):
        bw, bh = rng.randint(w // 8, w // 2.5), rng.randint(h // 6, h // 2.5)
        x0, y0 = rng.randint(0, w - bw), rng.randint(0, h - bh)
        c = int(rng.randint(len(EXAMPLE_CLASSES)))
        img[y0 : y0 + bh, x0 : x0 + bw] = _EXAMPLE_COLOURS[c]
        boxes.append((c, int(x0), int(y0), int(bw), int(bh)))
    return img, boxes


def write_coco_example(
    root: str, num_train: int = 8, num_val: int = 4, seed: int = 0, size=(120, 160)
):
    """
    A 3-class COCO-json set as labelling tools export it, under ``root``: category ids 3, 7, 11
    (not contiguous), the first image of each split without annotations, a crowd box on the
    second, and ``root/coco.yaml``, its data file. Returns the data file's path.
    """
    import cv2
    import numpy as np

    rng = np.random.RandomState(seed)
    ids = (3, 7, 11)
    for split, n in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, boxes = _example_image(rng, 0 if i == 0 else 1 + i % 3, size)
            name = f"{split}_{i}.jpg"
            cv2.imwrite(os.path.join(root, "images", split, name), img)
            images.append({"id": 100 + i, "file_name": name, "height": size[0], "width": size[1]})
            for c, x, y, w, h in boxes:
                anns.append(
                    {"id": len(anns) + 1, "image_id": 100 + i, "category_id": ids[c],
                     "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
                )  # fmt: skip
            if i == 1:
                anns.append(
                    {"id": len(anns) + 1, "image_id": 101, "category_id": ids[1],
                     "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 1}
                )  # fmt: skip
        cats = [{"id": i, "name": n} for i, n in zip(ids, EXAMPLE_CLASSES)]
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    path = os.path.join(root, "coco.yaml")
    with open(path, "w") as f:
        f.write(
            f"names: [{', '.join(EXAMPLE_CLASSES)}]\n"
            "train:\n  coco: annotations/instances_train.json\n  images: images/train\n"
            "val:\n  coco: annotations/instances_val.json\n  images: images/val\n"
        )
    return path


def write_voc_example(
    root: str, num_train: int = 8, num_val: int = 4, seed: int = 1, size=(120, 160)
):
    """
    A 3-class VOC-xml set as labelling tools write it, under ``root/VOCdevkit/MyVOC``: ``.png``
    images named by ``<filename>``, no ``<pose>``/``<truncated>``/``<difficult>`` on every other
    file, decimal coordinates, and ``root/voc.yaml``, its data file (no ``names``: read from the
    xml). Returns the data file's path.
    """
    import cv2
    import numpy as np

    rng = np.random.RandomState(seed)
    voc = os.path.join(root, "VOCdevkit", "MyVOC")
    for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, d), exist_ok=True)
    splits = {"train": [], "val": []}
    for i in range(num_train + num_val):
        split = "train" if i < num_train else "val"
        fileid = f"img{i:04d}"
        splits[split].append(fileid)
        img, boxes = _example_image(rng, 1 + i % 3, size)
        cv2.imwrite(os.path.join(voc, "JPEGImages", fileid + ".png"), img)
        extra = (
            ""
            if i % 2
            else "<pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        )
        objects = "".join(
            f"<object><name>{EXAMPLE_CLASSES[c]}</name>{extra}<bndbox><xmin>{x + 0.5}</xmin>"
            f"<ymin>{y + 1.25}</ymin><xmax>{x + w + 0.5}</xmax><ymax>{y + h}</ymax></bndbox>"
            "</object>"
            for c, x, y, w, h in boxes
        )
        with open(os.path.join(voc, "Annotations", fileid + ".xml"), "w") as f:
            f.write(
                f"<annotation><folder>MyVOC</folder><filename>{fileid}.png</filename><size>"
                f"<width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>"
                f"{objects}</annotation>"
            )
    for split, ids in splits.items():
        with open(os.path.join(voc, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    path = os.path.join(root, "voc.yaml")
    with open(path, "w") as f:
        f.write("train:\n  voc: VOCdevkit/MyVOC\n  split: train\n")
        f.write("val:\n  voc: VOCdevkit/MyVOC\n  split: val\n")
    return path
