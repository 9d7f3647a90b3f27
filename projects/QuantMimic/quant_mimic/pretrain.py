"""ImageNet-style classification pretraining of a detection config's backbone (paper Table 7).

The paper's Table 7 compares "ResNet18-1-16 with Faster R-CNN detector finetuned on Imagenet" with
Quantization Mimic, and §3.5 finetunes every student from ImageNet weights at LR 0.001. Nobody
publishes ImageNet weights for channel-divided networks, so this module makes them: the backbone
the detection config builds (for C4 models also the res5 stage its ROI head runs per RoI), a
global-average-pool and a linear classifier, trained with the recipe of torchvision's
classification references (SGD momentum 0.9, weight decay 1e-4 off BN and biases, linear warm-up
then cosine, RandomResizedCrop + flip, optional label smoothing, AMP on CUDA, DDP).

The input is exactly what the detector sees: pixels 0-255 in the config's ``INPUT.FORMAT`` channel
order ("L": one grey channel), normalised by ``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``.

``tools/pretrain_backbone.py`` is the command line; the result ``backbone.pth`` holds the detection
model's own names (``backbone.*``, ``roi_heads.res5.*``) for ``MODEL.WEIGHTS``.

The LR schedule is detectron2's ``WarmupParamScheduler`` over fvcore's ``CosineParamScheduler``
(:func:`lr_schedule`). The loop itself stays a plain epoch loop, not detectron2's ``TrainerBase``
with hooks: it is epoch-based (a ``DistributedSampler`` epoch, then top-1/top-5 on the held-out
split and one metrics line per epoch, a checkpoint per epoch that ``--resume`` continues from),
its loader skips unreadable images by a collate that counts them, and it runs under
``torch.autocast`` with a ``GradScaler`` on CUDA; detectron2's iteration-based trainer would keep
these only through an evaluation hook per epoch, a custom data iterator and an AMP trainer that
knows no classification loss, as many lines as the loop and less direct to read.
"""

import json
import logging
import os
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)
from torch import nn
from torch.nn import functional as F

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.solver import WarmupParamScheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .config import detector_in_features, student_architecture
from .engine import get_config
from .errors import ConfigError
from .fileio import atomic_torch_save, atomic_write_text
from .timing import fmt_s

__all__ = [
    "PretrainError",
    "build_parser",
    "main",
    "PRETRAINABLE_BACKBONES",
    "IMAGE_EXTENSIONS",
    "check_image_folder",
    "pretrain_detection_cfg",
    "BackboneClassifier",
    "build_classifier",
    "ImageFolderChecked",
    "build_transforms",
    "param_groups",
    "lr_schedule",
    "lr_at",
    "detection_weights",
    "check_detection_weights",
    "run_pretraining",
]

logger = logging.getLogger(__name__)

# Backbones whose classifier this module knows how to build (the FPN ones through their bottom-up).
PRETRAINABLE_BACKBONES = (
    "build_divided_vgg_backbone",
    "build_divided_resnet_backbone",
    "build_divided_resnet_fpn_backbone",
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_divided_retinanet_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BACKBONE_FILE, CLASSIFIER_FILE, METRICS_FILE = (
    "backbone.pth",
    "classifier.pth",
    "pretrain_metrics.json",
)


class PretrainError(ConfigError):
    """A bad input of the pretraining (data layout, image, config): the message names it."""


def _class_counts(split_dir: str) -> Dict[str, int]:
    counts = {}
    for name in sorted(os.listdir(split_dir)):
        path = os.path.join(split_dir, name)
        if os.path.isdir(path):
            counts[name] = sum(
                1
                for _, _, files in os.walk(path, followlinks=True)
                for f in files
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
    return counts


def check_image_folder(root: str) -> List[str]:
    """
    Check the ImageFolder layout ``root/{train,val}/<class>/<image>``; return the class names.

    Raises:
        PretrainError: a missing or empty split, a class in one split only (named), a class folder
            without images (named).
    """
    counts = {}
    for split in ("train", "val"):
        d = os.path.join(root, split)
        if not os.path.isdir(d):
            raise PretrainError(f"{d} is missing: --data needs {split}/<class>/<image> folders")
        counts[split] = _class_counts(d)
        if not counts[split]:
            raise PretrainError(f"{d} is empty: it has no class folder")
    train, val = set(counts["train"]), set(counts["val"])
    for a, b, names in (("train", "val", train - val), ("val", "train", val - train)):
        if names:
            raise PretrainError(
                f"Classes {sorted(names)} are in {root}/{a}/ but not in {root}/{b}/: both splits "
                "need the same class folders"
            )
    for split in ("train", "val"):
        empty = [c for c, n in counts[split].items() if n == 0]
        if empty:
            raise PretrainError(
                f"Class folders {empty} of {root}/{split}/ hold no image "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
    return sorted(train)


def pretrain_detection_cfg(cfg: CfgNode) -> CfgNode:
    """
    The detection config whose backbone is pretrained: a mimic student becomes its plain detector
    (``MimicRCNN`` → ``GeneralizedRCNN`` ...; no teacher is built), ``MODEL.WEIGHTS`` is cleared.

    Raises:
        PretrainError: the backbone cannot be pretrained this way (which, and why).
    """
    name = cfg.MODEL.BACKBONE.NAME
    if name == "build_quantized_backbone":
        raise PretrainError(
            "MODEL.BACKBONE.NAME build_quantized_backbone (the quantized-output wrapper) cannot be "
            "pretrained this way: pretrain the full-precision config it wraps "
            f"(MODEL.QUANTIZATION.BACKBONE_NAME {cfg.MODEL.QUANTIZATION.BACKBONE_NAME})"
        )
    if name not in PRETRAINABLE_BACKBONES:
        raise PretrainError(
            f"MODEL.BACKBONE.NAME {name} cannot be pretrained this way: the classifier is built "
            f"for {', '.join(PRETRAINABLE_BACKBONES)}"
        )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = student_architecture(cfg)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return cfg


class BackboneClassifier(nn.Module):
    """
    backbone → (res5, for C4 models) → global average pool → linear, on detector-format input.
    Submodule names are the detection model's: ``backbone`` (``backbone.bottom_up`` for an FPN)
    and ``roi_heads.res5``, so the state dict's keys are the detection checkpoint's.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature: str,
        channels: int,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        res5: Optional[nn.Module] = None,
        fpn: bool = False,
    ):
        """
        Args:
            backbone: the detection backbone (for an FPN: its bottom-up network).
            feature (str): the backbone output the classifier reads.
            channels (int): channels after ``res5`` (or of ``feature`` without it).
            pixel_mean / pixel_std: ``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD`` (one value: grey).
            res5: the C4 ROI head's res5 stage, or None.
            fpn (bool): ``backbone`` is the bottom-up of an FPN (named ``backbone.bottom_up``).
        """
        super().__init__()
        if fpn:
            self.backbone = nn.Module()
            self.backbone.bottom_up = backbone
        else:
            self.backbone = backbone
        self._net = backbone
        self.feature = feature
        if res5 is not None:
            self.roi_heads = nn.Module()
            self.roi_heads.res5 = res5
        self.has_res5 = res5 is not None
        self.fc = nn.Linear(channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images (Tensor): (B, C, H, W) uint8 or float 0-255 in the config's INPUT.FORMAT order.
        Returns:
            Tensor: (B, num_classes) logits.
        """
        x = (images.float() - self.pixel_mean) / self.pixel_std
        x = self._net(x)[self.feature]
        if self.has_res5:
            x = self.roi_heads.res5(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_classifier(cfg: CfgNode, num_classes: int) -> Tuple[BackboneClassifier, CfgNode]:
    """
    The classifier of a detection config's backbone (:class:`BackboneClassifier`), and the plain
    detection config (:func:`pretrain_detection_cfg`) whose model its weights load into.
    FrozenBN in the config is trained as BN here (its statistics and affine are what FrozenBN
    loads).
    """
    det_cfg = pretrain_detection_cfg(cfg)
    train_cfg = det_cfg.clone()
    for node in (train_cfg.MODEL.RESNETS, train_cfg.MODEL.get("VGG", {})):
        if node and node.get("NORM") == "FrozenBN":
            node.NORM = "BN"
    model = build_model(train_cfg)
    backbone = model.backbone
    fpn = hasattr(backbone, "bottom_up") and hasattr(backbone, "in_features")
    net = backbone.bottom_up if fpn else backbone
    shapes = net.output_shape()
    wanted = [f for f in detector_in_features(cfg) if f in shapes]
    feature = wanted[0] if wanted and not fpn else max(shapes, key=lambda k: shapes[k].stride)
    res5 = getattr(getattr(model, "roi_heads", None), "res5", None)
    channels = shapes[feature].channels
    if res5 is not None:
        with torch.no_grad():
            probe = torch.zeros(1, channels, 8, 8)
            channels = res5.eval()(probe).shape[1]
        res5.train()
    num_in = len(cfg.MODEL.PIXEL_MEAN)
    clf = BackboneClassifier(
        net,
        feature,
        channels,
        num_classes,
        list(cfg.MODEL.PIXEL_MEAN),
        list(cfg.MODEL.PIXEL_STD),
        res5=res5,
        fpn=fpn,
    )
    clf.input_channels = num_in
    return clf, det_cfg


class ImageFolderChecked:
    """
    torchvision's ``ImageFolder`` whose unreadable images are an error naming the file, or (with
    ``skip_bad``) a ``None`` sample that :func:`collate_skip` drops and counts.
    """

    def __init__(self, root: str, transform, classes: Sequence[str], skip_bad: bool = False):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root, transform=transform, allow_empty=False)
        if list(self.folder.classes) != list(classes):
            raise PretrainError(f"{root}: classes {self.folder.classes} != train's {list(classes)}")
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, idx: int):
        path = self.folder.samples[idx][0]
        try:
            return self.folder[idx]
        except Exception as e:  # PIL raises several types for a file that is not an image
            if self.skip_bad:
                return None
            raise PretrainError(
                f"Unreadable image {path} ({type(e).__name__}: {e}); --skip-bad-images skips and "
                "counts such files"
            ) from e


def collate_skip(batch):
    """Default collate of the readable samples, plus the number of skipped (None) ones."""
    from torch.utils.data import default_collate

    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images, labels = default_collate(good)
    return images, labels, skipped


class _ToDetectorPixels:
    """PIL image → uint8 (C, H, W) tensor in the detector's ``INPUT.FORMAT`` channel order."""

    def __init__(self, fmt: str):
        self.fmt = fmt

    def __call__(self, img):
        from torchvision.transforms.functional import pil_to_tensor

        if self.fmt == "L":
            return pil_to_tensor(img.convert("L"))
        t = pil_to_tensor(img.convert("RGB"))
        return t.flip(0) if self.fmt == "BGR" else t


def build_transforms(fmt: str, image_size: int, train: bool):
    """torchvision's reference transforms: RandomResizedCrop + flip (train), resize to
    size/0.875 + centre crop (val); then detector pixels (:class:`_ToDetectorPixels`)."""
    from torchvision import transforms as T

    if train:
        ops = [T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()]
    else:
        ops = [T.Resize(int(round(image_size / 0.875)), antialias=True), T.CenterCrop(image_size)]
    return T.Compose(ops + [_ToDetectorPixels(fmt)])


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """Weight decay on conv / linear weights only, not on norm parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_schedule(total: int, warmup: int) -> ParamScheduler:
    """The LR multiplier over training progress ``step / total`` in [0, 1): a linear warm-up from
    1/100 over ``warmup`` steps, then cosine to 0 at ``total`` over the steps after the warm-up
    (detectron2's ``WarmupParamScheduler`` over fvcore's ``CosineParamScheduler``; a warm-up as
    long as training or longer is the linear part alone)."""
    if warmup >= total:
        return LinearParamScheduler(0.01, 0.01 + 0.99 * total / max(1, warmup))
    return WarmupParamScheduler(
        CosineParamScheduler(1.0, 0.0), 0.01, warmup / total, "linear", rescale_interval=True
    )


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """The LR at ``step`` of ``total`` (:func:`lr_schedule`; 0 from ``total`` on)."""
    if step >= total:
        return 0.0
    return base_lr * lr_schedule(total, warmup)(step / max(1, total))


def detection_weights(clf: BackboneClassifier, det_model: nn.Module) -> Dict[str, torch.Tensor]:
    """The classifier's tensors under the detection model's names that the model has."""
    det_keys = set(det_model.state_dict())
    return {
        k: v.detach().cpu().clone()
        for k, v in clf.state_dict().items()
        if k in det_keys and not k.startswith("fc.")
    }


def check_detection_weights(det_model: nn.Module, weights: Dict[str, torch.Tensor]) -> Dict:
    """
    Check that ``weights`` cover every ``backbone.*`` tensor of ``det_model`` with its shape.

    Returns:
        dict: ``loaded`` (count), ``left_to_heads`` (the model's other top-level modules whose
        tensors stay at their initialisation, with counts).
    Raises:
        PretrainError: a backbone tensor missing or mis-shaped (named).
    """
    state = det_model.state_dict()
    missing = [k for k in state if k.startswith("backbone.") and k not in weights]
    # an FPN's lateral / output convs are detection layers: only its bottom-up is pretrained
    missing = [k for k in missing if not _fpn_head_key(det_model, k)]
    shapes = [k for k, v in weights.items() if tuple(state[k].shape) != tuple(v.shape)]
    if missing or shapes:
        raise PretrainError(
            f"backbone.pth would not initialise the detection backbone: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, shape mismatch {shapes[:8]}"
        )
    left = Counter(
        ".".join(k.split(".")[:2]) if k.startswith("backbone.") else k.split(".")[0]
        for k in state
        if k not in weights
    )
    return {"loaded": len(weights), "left_to_heads": dict(sorted(left.items()))}


def _fpn_head_key(model: nn.Module, key: str) -> bool:
    return hasattr(model.backbone, "bottom_up") and not key.startswith("backbone.bottom_up.")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> Tuple[int, int]:
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hit = topk.eq(labels[:, None])
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


def _loader(dataset, batch_size: int, workers: int, train: bool, seed: int):
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = None
    if comm.get_world_size() > 1:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip,
        drop_last=train,
        generator=g,
        persistent_workers=workers > 0,
    )


def _evaluate(model, loader, device) -> Tuple[float, float, int]:
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64)  # top1, top5, count, skipped
    with torch.no_grad():
        for images, labels, skipped in loader:
            stats[3] += skipped
            if images is None:
                continue
            logits = model(images.to(device))
            t1, t5 = _accuracy(logits.float(), labels.to(device), 5)
            stats[:3] += torch.tensor([t1, t5, len(labels)], dtype=torch.float64)
    if comm.get_world_size() > 1:
        stats = stats.to(device)
        torch.distributed.all_reduce(stats)
        stats = stats.cpu()
    n = max(1.0, float(stats[2]))
    return 100.0 * float(stats[0]) / n, 100.0 * float(stats[1]) / n, int(stats[3])


def run_pretraining(cfg: CfgNode, args) -> Dict:
    """
    Train the classifier of ``cfg``'s backbone on ``args.data`` and write ``args.output``
    (``backbone.pth``, ``classifier.pth``, ``pretrain_metrics.json``); see
    ``tools/pretrain_backbone.py`` for the arguments. Runs in every process of a ``launch``.

    Returns:
        dict: the summary (last metrics, images/s, the weights check).
    """
    classes = check_image_folder(args.data)
    fmt = cfg.INPUT.FORMAT
    if (fmt == "L") != (len(cfg.MODEL.PIXEL_MEAN) == 1):
        raise PretrainError(
            f"INPUT.FORMAT {fmt} and MODEL.PIXEL_MEAN {list(cfg.MODEL.PIXEL_MEAN)} disagree on the "
            "number of input channels"
        )
    world, rank = comm.get_world_size(), comm.get_rank()
    if args.batch_size % world:
        raise PretrainError(f"--batch-size {args.batch_size} is not divisible by {world} processes")
    torch.manual_seed(args.seed + rank)
    device = torch.device("cuda", comm.get_local_rank()) if torch.cuda.is_available() else "cpu"
    clf, det_cfg = build_classifier(cfg, len(classes))
    clf.to(device)
    train_set = ImageFolderChecked(
        os.path.join(args.data, "train"),
        build_transforms(fmt, args.image_size, True),
        classes,
        args.skip_bad_images,
    )
    val_set = ImageFolderChecked(
        os.path.join(args.data, "val"),
        build_transforms(fmt, args.image_size, False),
        classes,
        args.skip_bad_images,
    )
    per_proc = args.batch_size // world
    if per_proc * world > len(train_set):  # a tiny set: one batch of all of it per epoch
        logger.warning(
            f"--batch-size {args.batch_size} is larger than the {len(train_set)} training images: "
            f"using {len(train_set) // world * world}"
        )
        per_proc = max(1, len(train_set) // world)
        lr_scale = per_proc * world / args.batch_size
        args.lr = args.lr * lr_scale  # the linear scaling rule, for the batch actually used
    train_loader = _loader(train_set, per_proc, args.workers, True, args.seed)
    val_loader = _loader(val_set, per_proc, args.workers, False, args.seed)
    steps_per_epoch = len(train_loader)
    total, warmup = steps_per_epoch * args.epochs, int(steps_per_epoch * args.warmup_epochs)
    schedule = lr_schedule(total, warmup)
    optimizer = torch.optim.SGD(
        param_groups(clf, args.weight_decay), lr=args.lr, momentum=0.9, nesterov=False
    )
    amp = device != "cpu" and torch.cuda.is_available()
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    model = clf
    if world > 1:
        if any(isinstance(m, nn.BatchNorm2d) for m in clf.modules()):
            clf = nn.SyncBatchNorm.convert_sync_batchnorm(clf)
            model = clf
        model = nn.parallel.DistributedDataParallel(
            clf, device_ids=[device.index] if device != "cpu" else None
        )
    os.makedirs(args.output, exist_ok=True)
    ckpt_path = os.path.join(args.output, CLASSIFIER_FILE)
    metrics: List[Dict] = []
    start_epoch = 0
    if args.resume:
        if not os.path.isfile(ckpt_path):
            raise PretrainError(f"--resume: {ckpt_path} does not exist")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("classes") != classes:
            raise PretrainError(
                f"--resume: {ckpt_path} was trained on classes {state.get('classes')}, "
                f"--data has {classes}"
            )
        clf.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        metrics, start_epoch = list(state["metrics"]), int(state["epoch"]) + 1
        logger.info(f"Resumed {ckpt_path} after epoch {start_epoch}")
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    t_begin, seen, train_seconds = time.perf_counter(), 0, 0.0
    skipped_total = 0
    for epoch in range(start_epoch, args.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        model.train()
        t0, loss_sum, n_sum = time.perf_counter(), 0.0, 0
        for i, (images, labels, skipped) in enumerate(train_loader):
            skipped_total += skipped
            lr = args.lr * schedule((epoch * steps_per_epoch + i) / total)
            for g in optimizer.param_groups:
                g["lr"] = lr
            if images is None:
                continue
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            with torch.autocast("cuda", enabled=amp):
                loss = criterion(model(images), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Classification loss is {loss.item()} at epoch {epoch + 1}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += float(loss.detach()) * len(labels)
            n_sum += len(labels)
        epoch_train = time.perf_counter() - t0
        top1, top5, skipped_val = _evaluate(model, val_loader, device)
        skipped_total += skipped_val
        seconds = time.perf_counter() - t0
        train_seconds += epoch_train
        seen += n_sum * world
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(1, n_sum),
            "top1": top1,
            "top5": top5,
            "lr": lr,
            "seconds": seconds,
            "images_per_s": n_sum * world / max(epoch_train, 1e-9),
            "skipped_images": skipped_total,
        }
        metrics.append(record)
        done = epoch + 1 - start_epoch
        eta = (time.perf_counter() - t_begin) / done * (args.epochs - epoch - 1)
        if comm.is_main_process():
            state = {
                "model": clf.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "metrics": metrics,
                "classes": classes,
                "config": cfg.dump(),
            }
            atomic_torch_save(state, ckpt_path)
            atomic_write_text(
                os.path.join(args.output, METRICS_FILE), json.dumps(metrics, indent=1)
            )
            print(
                f"epoch {epoch + 1}/{args.epochs}: loss {record['train_loss']:.3f}, top-1 "
                f"{top1:.1f} %, top-5 {top5:.1f} %, lr {lr:.4g}, {seconds:.1f} s "
                f"({record['images_per_s']:.0f} images/s), ETA {fmt_s(eta)}"
                + (f", {skipped_total} unreadable images skipped" if skipped_total else ""),
                flush=True,
            )
    summary = {"metrics": metrics[-1] if metrics else None, "classes": classes}
    if comm.is_main_process():
        det_model = build_model(det_cfg)
        weights = detection_weights(clf, det_model)
        summary["check"] = check_detection_weights(det_model, weights)
        atomic_torch_save(
            {"model": weights},
            os.path.join(args.output, BACKBONE_FILE),
        )
        summary["images_per_s"] = seen / max(train_seconds, 1e-9)
        left = summary["check"]["left_to_heads"]
        print(
            f"Wrote {os.path.join(args.output, BACKBONE_FILE)}: {summary['check']['loaded']} "
            "tensors of the detection model, no backbone tensor missing; left to the detection "
            "heads: " + ", ".join(f"{k} ({n})" for k, n in left.items()),
            flush=True,
        )
    comm.synchronize()
    return summary


def build_parser():
    """The command line of ``tools/pretrain_backbone.py``: detectron2's
    ``default_argument_parser`` (launch flags, KEY VALUE opts) plus the recipe."""
    parser = default_argument_parser()
    parser.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--batch-size", type=int, default=256, help="total over all processes")
    parser.add_argument("--lr", type=float, default=0.1, help="peak LR for --batch-size")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="not on norms and biases")
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--image-size", type=int, default=224, help="training crop side")
    parser.add_argument("--workers", type=int, default=4, help="data-loader workers per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images and count them instead of stopping",
    )
    return parser


def main(args) -> dict:
    """Check the arguments, load the config, :func:`run_pretraining` (one process of ``launch``)."""
    setup_logger(name="quant_mimic", distributed_rank=comm.get_rank())
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            raise PretrainError(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.workers < 0:
        raise PretrainError("--workers must be ≥ 0")
    try:
        cfg = get_config(args.config_file, args.opts)
    except FileNotFoundError as e:
        raise PretrainError(str(e)) from e
    return run_pretraining(cfg, args)
