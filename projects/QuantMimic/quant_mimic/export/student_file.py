"""From a trained run to a checked deployable file: the student's weights loaded strictly, its
inference traced to ONNX (or TorchScript), the onnxruntime options tuned on this host, and the
file run against PyTorch on example images (the pipeline's ``export`` stage and
``tools/export_student.py``)."""

import os
from typing import Dict, List, Optional, Sequence

import torch

from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..checkpoint import load_student_weights
from .contract import build_contract, write_contract
from .inference import StudentInference
from .parity import parity_report
from .trace import ONNX_OPSET, export_onnx, export_torchscript
from .tuning import tune_onnx

__all__ = ["example_images", "val_images", "export_student"]


def example_images(cfg: CfgNode, sizes=((480, 640), (352, 544)), seed: int = 0):
    """Synthetic test images in the model's channel count (a bright blob on noise), (C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    channels = len(cfg.MODEL.PIXEL_MEAN)
    images = []
    for h, w in sizes:
        image = torch.rand(channels, h, w, generator=g) * 80 + 60
        image[:, h // 4 : h // 2, w // 3 : w // 2] += 100
        images.append(image)
    return images


def val_images(cfg: CfgNode, count: int = 2) -> List[torch.Tensor]:
    """The first ``count`` images of ``DATASETS.TEST[0]`` as the model receives them at test time
    (resized by ``INPUT.MIN/MAX_SIZE_TEST``, in ``INPUT.FORMAT``), (C, H, W) float."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    mapper = DatasetMapper(cfg, is_train=False)
    dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:count]
    return [mapper(dict(d))["image"].float() for d in dicts]


def export_student(
    cfg: CfgNode,
    weights: str,
    output: str,
    fmt: str = "onnx",
    fold_bn: bool = True,
    space_to_depth: bool = False,
    ort_threads: int = 2,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
    check_images: Optional[Sequence[torch.Tensor]] = None,
    threshold_source: Optional[Dict] = None,
    int8_images: Optional[Sequence[torch.Tensor]] = None,
) -> Dict:
    """
    Export the student of ``cfg`` (its own config or the MimicRCNN config it was trained with)
    with ``weights`` to ``output``.

    Args:
        fmt: "onnx" or "torchscript".
        ort_threads: onnx: tune onnxruntime's options with this many threads and record them in
            the file (0: do not tune, unless ``runtime``/``precision`` ask for a choice).
        check_images: images to compare the file with PyTorch on (default: none).
        threshold_source: where the baked score threshold comes from, recorded in the contract
            (default: the config's, for AP).
        int8_images: onnx: also write an OpenVINO int8 IR beside the file
            (``<output stem>_int8.xml``, :mod:`.int8`), calibrated on these images.

    Returns:
        dict: ``path``, ``size_mb``, ``folded`` (BN layers), ``tuned`` (:func:`tune_onnx`'s
        result or None), ``parity`` (:func:`parity_report` rows, [] unchecked), ``ok``.
    """
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"Unknown export format {fmt!r}; use 'onnx' or 'torchscript'")
    model = build_model(cfg).eval()
    load_student_weights(model, weights, model_name=cfg.OUTPUT_DIR or "the config")
    module = StudentInference(model, fold_bn=fold_bn, space_to_depth=space_to_depth)
    example = list(check_images)[0] if check_images else example_images(cfg)[0]
    (export_onnx if fmt == "onnx" else export_torchscript)(module, example, output)
    if fmt == "onnx":  # the file carries its contract (classes, input, resize, threshold)
        divisibility = getattr(module.model.backbone, "size_divisibility", 0)
        contract = build_contract(cfg, weights, ONNX_OPSET, threshold_source, divisibility)
        write_contract(output, contract)
    tuned = None
    chosen = runtime != "onnxruntime" or precision != "fp32"
    if fmt == "onnx" and (ort_threads > 0 or chosen):
        tuned = tune_onnx(output, ort_threads, runtime=runtime, precision=precision)
    int8 = ""
    if int8_images:
        from .int8 import quantize_openvino_int8

        int8 = os.path.splitext(output)[0] + "_int8.xml"
        quantize_openvino_int8(output, int8, [x.numpy().astype("float32") for x in int8_images])
    rows = []
    if check_images:
        key = "onnx_path" if fmt == "onnx" else "torchscript_path"
        # the file itself is exact: the strict check runs it in fp32 whatever precision it records
        rows = parity_report(module, list(check_images), **{key: output}, precision="fp32")
    return {
        "path": output,
        "size_mb": round(os.path.getsize(output) / 2**20, 3),
        "folded": module.num_folded,
        "tuned": tuned,
        "parity": rows,
        "ok": all(r["ok"] for r in rows),
        "int8": int8,
        "module": module,
    }
