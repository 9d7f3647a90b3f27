#!/usr/bin/env python
"""Draw a detector's boxes and scores on images (in the shape of detectron2's demo/demo.py).

    python tools/demo.py --config-file configs/WIDERFace/rfcn_VGG-1-32_scratch.yaml \\
        --input IMAGE_OR_DIR --output OUT_DIR [--onnx student.onnx] [--confidence 0.5] \\
        MODEL.WEIGHTS student.pth

Each image is read in ``INPUT.FORMAT``, resized as ``INPUT.MIN/MAX_SIZE_TEST`` say, run through
the PyTorch model (``MODEL.WEIGHTS``, loaded strictly; adapters of a MimicRCNN checkpoint are
ignored) or, with ``--onnx``, through the exported file in onnxruntime, and drawn with detectron2's
``Visualizer`` at its original size: one PNG per image in OUT_DIR.
"""

import argparse
import os
import sys
from typing import List

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import Visualizer

from quant_mimic import get_config
from quant_mimic.checkpoint import load_student_weights
from quant_mimic.data.data_file import data_opts
from quant_mimic.engine import config_of_run
from quant_mimic.export import StudentInference, onnx_session, run_onnx

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(path: str) -> List[str]:
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise FileNotFoundError(f"No image ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
        return [os.path.join(path, n) for n in names]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input not found: {path}")
    return [path]


def build_runner(cfg, onnx_path: str = ""):
    """``image (C, H, W) float tensor -> (boxes, scores, classes)`` numpy, from ONNX or PyTorch."""
    if onnx_path:
        session = onnx_session(onnx_path)
        return lambda image: run_onnx(session, image)
    model = build_model(cfg).eval()
    load_student_weights(model, cfg.MODEL.WEIGHTS, model_name="--config-file")
    module = StudentInference(model)

    def run(image):
        with torch.inference_mode():
            return tuple(x.numpy() for x in module(image))

    return run


def predict(cfg, run, original: np.ndarray) -> Instances:
    """Detections of one HWC image (``INPUT.FORMAT``), in its own pixel coordinates."""
    h, w = original.shape[:2]
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    image = (
        original
        if cfg.INPUT.MIN_SIZE_TEST == 0
        else resize.get_transform(original).apply_image(original)
    )
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
    boxes, scores, classes = run(tensor)
    sy, sx = h / image.shape[0], w / image.shape[1]
    boxes = np.asarray(boxes, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)
    out = Instances((h, w))
    out.pred_boxes = Boxes(torch.as_tensor(boxes))
    out.scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    out.pred_classes = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    return out


def draw(cfg, original: np.ndarray, instances: Instances, confidence: float) -> np.ndarray:
    """RGB drawing of the detections with score ≥ ``confidence``."""
    if cfg.INPUT.FORMAT == "L":
        rgb = np.repeat(original, 3, axis=2)
    elif cfg.INPUT.FORMAT == "BGR":
        rgb = original[:, :, ::-1]
    else:
        rgb = original
    names = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
    vis = Visualizer(rgb, MetadataCatalog.get(names), scale=1.0)
    return vis.draw_instance_predictions(instances[instances.scores >= confidence]).get_image()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config-file",
        default="",
        help="the detector's config; default: the config.yaml of the run whose MODEL.WEIGHTS "
        "are given",
    )
    parser.add_argument("--data", default="", metavar="FILE", help="a data file (class names)")
    parser.add_argument("--input", required=True, help="an image or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the drawn PNGs")
    parser.add_argument("--onnx", default="", help="run this exported file in onnxruntime")
    parser.add_argument("--confidence", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    weights = dict(zip(args.opts[::2], args.opts[1::2])).get("MODEL.WEIGHTS", "")
    config_file = config_of_run(args.config_file, weights)
    if not config_file:
        parser.error("--config-file is required (or MODEL.WEIGHTS of a run with its config.yaml)")
    opts = list(args.opts) + data_opts(args.data) + ["MODEL.DEVICE", "cpu"]
    cfg = get_config(config_file, opts)
    run = build_runner(cfg, args.onnx)
    os.makedirs(args.output, exist_ok=True)
    import cv2

    for path in list_images(args.input):
        original = read_image(path, format=cfg.INPUT.FORMAT)
        instances = predict(cfg, run, original)
        drawing = draw(cfg, original, instances, args.confidence)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out, drawing[:, :, ::-1])
        kept = int((instances.scores >= args.confidence).sum())
        print(f"{path}: {kept} detections with score >= {args.confidence} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
