"""The student file's contract: what an exported ONNX file records about itself in its metadata
(``quant_mimic.contract``, JSON), so that a person with only the file can run it right
(:class:`~quant_mimic.export.detector.Detector`; docs/SPEED.md, "The file's contract").

* ``input``: the tensor ``image`` (float32, (C, H, W), pixel values 0-255), its channel order
  (``INPUT.FORMAT``: "BGR", "RGB" or "L" = one grey channel) and channel count, and the pixel mean
  and std, which the graph applies itself (``normalization: "in_graph"``);
* ``resize``: detectron2's test-time rule, ``ResizeShortestEdge`` to ``min_size`` (0: no resize)
  with the longer side at most ``max_size``; the graph pads to a multiple of
  ``size_divisibility`` itself (0: no padding);
* ``classes``: the class names, index = the ``classes`` output;
* ``score_threshold`` and ``detections_per_image`` baked into the graph, and where the threshold
  comes from (``threshold_source``: the config's, for AP, or an operating point chosen by the user
  or on the val set, with its precision and recall there);
* ``outputs``: ``boxes`` (N, 4) x0 y0 x1 y1 in the pixels of the (resized) input, ``scores`` (N,),
  ``classes`` (N,) int64, sorted by score within each image;
* ``provenance``: the config's SHA-256 (of its full dump), the weights' SHA-256, the project
  version, the ONNX opset, the meta-architecture.
"""

import hashlib
import json
import logging
import os
from typing import Dict, List, Optional

from detectron2.config import CfgNode

from ..config import student_architecture
from ..errors import BadFileError, MissingFileError
from ..fileio import atomic_output, file_sha256
from ..version import __version__

__all__ = [
    "CONTRACT_KEY",
    "CONTRACT_VERSION",
    "RT_INFO_PATH",
    "class_names",
    "build_contract",
    "write_contract",
    "read_contract",
    "openvino_contract",
]

logger = logging.getLogger(__name__)

CONTRACT_KEY = "quant_mimic.contract"
CONTRACT_VERSION = 1
RT_INFO_PATH = ["quant_mimic", "contract"]  # where an OpenVINO IR (int8) keeps the contract


def class_names(cfg: CfgNode) -> List[str]:
    """The detector's class names: the ``thing_classes`` of its test (else train) dataset when one
    is registered with the right count, else ``class_0`` …"""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data.data_file import num_classes

    n = num_classes(cfg)
    registered = set(DatasetCatalog.list())
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        if name in registered:
            names = MetadataCatalog.get(name).get("thing_classes")
            if names is not None and len(names) == n:
                return list(names)
    logger.warning(
        f"No registered dataset names the {n} classes: exporting class_0 … class_{n - 1}"
    )
    return [f"class_{i}" for i in range(n)]


def _score_threshold(cfg: CfgNode) -> float:
    arch = student_architecture(cfg)
    if arch == "RetinaNet":
        return float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
    if arch == "FCOS":
        return float(cfg.MODEL.FCOS.SCORE_THRESH_TEST)
    return float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)


def build_contract(
    cfg: CfgNode,
    weights: str,
    opset: int,
    threshold_source: Optional[Dict] = None,
    size_divisibility: int = 0,
) -> Dict:
    """The contract of the file exported from ``cfg`` and ``weights`` (module docstring)."""
    return {
        "version": CONTRACT_VERSION,
        "input": {
            "name": "image",
            "layout": "CHW",
            "dtype": "float32",
            "range": [0, 255],
            "format": cfg.INPUT.FORMAT,
            "channels": len(cfg.MODEL.PIXEL_MEAN),
            "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
            "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
            "normalization": "in_graph",
        },
        "resize": {
            "rule": "ResizeShortestEdge",
            "min_size": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size": int(cfg.INPUT.MAX_SIZE_TEST),
            "size_divisibility": int(size_divisibility),
            "padding": "in_graph",
        },
        "classes": class_names(cfg),
        "score_threshold": _score_threshold(cfg),
        "detections_per_image": int(cfg.TEST.DETECTIONS_PER_IMAGE),
        "threshold_source": threshold_source or {"kind": "config", "for": "AP"},
        "outputs": {
            "boxes": "(N, 4) float32 x0 y0 x1 y1, pixels of the resized input",
            "scores": "(N,) float32, descending",
            "classes": "(N,) int64, index into classes",
        },
        "provenance": {
            "config_sha256": hashlib.sha256(cfg.dump().encode()).hexdigest(),
            "weights_sha256": file_sha256(weights) if weights else "",
            "quant_mimic": __version__,
            "opset": int(opset),
            "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        },
    }


def write_contract(path: str, contract: Dict) -> None:
    """Record ``contract`` in the ONNX file's metadata (``quant_mimic.contract``), atomically; the
    file's other metadata (the tuned runtime options) is kept."""
    import onnx

    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    props[CONTRACT_KEY] = json.dumps(contract, sort_keys=True)
    onnx.helper.set_model_props(model, props)
    with atomic_output(path) as tmp:
        onnx.save(model, tmp)


def openvino_contract(xml_path: str) -> Optional[Dict]:
    """The contract an OpenVINO IR carries (the ONNX file's, in its rt_info; None without)."""
    import openvino as ov

    model = ov.Core().read_model(xml_path)
    if not model.has_rt_info(RT_INFO_PATH):
        return None
    return json.loads(model.get_rt_info(RT_INFO_PATH).astype(str))


_EXPORT_FIX = "export the student with tools/export_student.py --format onnx"


def read_contract(path: str) -> Dict:
    """The contract recorded in an exported file (an ONNX file, or the OpenVINO int8 IR ``.xml``
    of :mod:`quant_mimic.export.int8`); a file that is neither, or one without the contract, is an
    error naming what is missing."""
    import onnx

    if not os.path.isfile(path):
        raise MissingFileError(path, "the exported student does not exist", "check the path")
    if path.endswith(".xml"):
        try:
            contract = openvino_contract(path)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses for a bad IR
            raise BadFileError(
                path, f"not an OpenVINO IR ({type(e).__name__}: {e})", _EXPORT_FIX
            ) from None
        if contract is None:
            raise BadFileError(
                path, "an OpenVINO IR without QuantMimic's contract", _EXPORT_FIX + " --int8"
            )
        return contract
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises several types for a file that is not ONNX
        raise BadFileError(
            path, f"not an ONNX file ({type(e).__name__}: {e})", _EXPORT_FIX
        ) from None
    props = {p.key: p.value for p in model.metadata_props}
    if CONTRACT_KEY not in props:
        raise BadFileError(
            path,
            f"an ONNX file without QuantMimic's contract (metadata {CONTRACT_KEY!r}: class names, "
            "input format, resize rule, threshold)",
            _EXPORT_FIX,
        )
    contract = json.loads(props[CONTRACT_KEY])
    if contract.get("version") != CONTRACT_VERSION:
        raise BadFileError(
            path,
            f"records contract version {contract.get('version')!r}; this version reads "
            f"{CONTRACT_VERSION}",
            "export it again with tools/export_student.py",
        )
    return contract
