#!/usr/bin/env python
"""Draw a student's named boxes on images or a video, and write them as JSON (in the shape of
detectron2's demo/demo.py).

    python tools/demo.py --onnx student.onnx --input IMAGE|DIR|VIDEO --output OUT \\
        [--score-thresh T]
    python tools/demo.py [--config-file CFG] --input ... --output OUT \\
        MODEL.WEIGHTS RUN/model_final.pth

With ``--onnx`` the exported file alone is enough: its contract (classes, input format, resize rule,
threshold; ``quant_mimic.export.Detector``) drives everything. Otherwise the PyTorch student runs,
built from CFG (default: the ``config.yaml`` of the run the weights come from), its weights loaded
strictly, class names from its data (``--data FILE`` or the config's datasets).

For each image: ``OUT/<name>.png`` (detectron2's ``Visualizer``, original size, boxes with score ≥
``--score-thresh``, labelled by class name) and ``OUT/<name>.json`` (the image, its size and one
``{"box": [x0, y0, x1, y1], "score", "class_id", "class"}`` per detection, in the image's
pixels). For a video (any file OpenCV opens that is not an image): ``OUT/<name>.mp4`` with the
boxes drawn and ``OUT/<name>.jsonl``, one line per frame. A progress line per image, or every 25
frames.
"""

import argparse
import json
import os
import sys
import time
from typing import Callable, List

import numpy as np

from quant_mimic.errors import BadFileError, MissingFileError, run_cli

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_inputs(path: str) -> List[str]:
    """The images of a folder (sorted), or the one file given."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise MissingFileError(
                path,
                f"--input: no image ({', '.join(IMAGE_EXTENSIONS)}) in this folder",
                "give an image, a folder of images or a video",
            )
        return [os.path.join(path, n) for n in names]
    if not os.path.isfile(path):
        raise MissingFileError(
            path, "--input does not exist", "give an image, a folder of images or a video"
        )
    import cv2

    readable = (
        cv2.haveImageReader(path)
        if path.lower().endswith(IMAGE_EXTENSIONS)
        else cv2.VideoCapture(path).isOpened()
    )
    if not readable:
        raise BadFileError(
            path,
            "--input is neither an image nor a video OpenCV can read",
            "give an image, a folder of images or a video",
        )
    return [path]


def pytorch_detector(cfg) -> Callable:
    """The PyTorch student as a :class:`quant_mimic.export.Detections` function of a BGR image,
    with DefaultPredictor's preprocessing and detectron2's post-processing."""
    import torch

    from detectron2.data import transforms as T
    from detectron2.modeling import build_model

    from quant_mimic.checkpoint import load_student_weights
    from quant_mimic.export import Detections, class_names

    model = build_model(cfg).eval()
    load_student_weights(model, cfg.MODEL.WEIGHTS, model_name="the config")
    names = class_names(cfg)
    size = cfg.INPUT.MIN_SIZE_TEST
    resize = T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST) if size else None

    def detect(bgr: np.ndarray) -> Detections:
        from PIL import Image

        if cfg.INPUT.FORMAT == "L":
            image = np.asarray(Image.fromarray(bgr[:, :, ::-1]).convert("L"))[..., None]
        else:
            image = bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else bgr
        h, w = image.shape[:2]
        resized = image if resize is None else resize.get_transform(image).apply_image(image)
        if resized.ndim == 2:
            resized = resized[..., None]
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
        with torch.inference_mode():
            inst = model([{"image": tensor, "height": h, "width": w}])[0]["instances"]
        classes = inst.pred_classes.numpy()
        return Detections(
            inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), classes,
            [names[c] for c in classes], (h, w),
        )  # fmt: skip

    return detect, names


def draw(bgr: np.ndarray, detections, names: List[str], threshold: float) -> np.ndarray:
    """BGR drawing of the detections scoring ≥ ``threshold``, labelled by class name."""
    import torch

    from detectron2.data.catalog import Metadata
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.visualizer import Visualizer

    keep = detections.scores >= threshold
    inst = Instances(detections.image_size)
    inst.pred_boxes = Boxes(torch.as_tensor(detections.boxes[keep]))
    inst.scores = torch.as_tensor(detections.scores[keep])
    inst.pred_classes = torch.as_tensor(detections.class_ids[keep])
    vis = Visualizer(bgr[:, :, ::-1], Metadata(thing_classes=list(names)), scale=1.0)
    return vis.draw_instance_predictions(inst).get_image()[:, :, ::-1]


def _kept(detections, threshold: float) -> List[dict]:
    return [d for d in detections.to_dicts() if d["score"] >= threshold]


def run_video(path: str, out_dir: str, detect, names, threshold: float) -> int:
    """Boxes drawn on every frame of a video (``.mp4``) and one JSON line per frame."""
    import cv2

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise BadFileError(
            path,
            "--input is neither an image nor a video OpenCV can read",
            "give an image, a folder of images or a video",
        )
    stem = os.path.splitext(os.path.basename(path))[0]
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer, frames, start = None, 0, time.time()
    with open(os.path.join(out_dir, stem + ".jsonl"), "w") as lines:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            detections = detect(frame)
            drawing = draw(frame, detections, names, threshold)
            if writer is None:
                h, w = drawing.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                writer = cv2.VideoWriter(os.path.join(out_dir, stem + ".mp4"), fourcc, fps, (w, h))
            writer.write(drawing)
            lines.write(json.dumps({"frame": frames, "detections": _kept(detections, threshold)}))
            lines.write("\n")
            frames += 1
            if frames % 25 == 0:
                print(f"{path}: {frames} frames, {frames / (time.time() - start):.1f} frames/s",
                      flush=True)  # fmt: skip
    cap.release()
    if writer is not None:
        writer.release()
    print(f"{path}: {frames} frames -> {os.path.join(out_dir, stem + '.mp4')}")
    return frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="", help="default: the run's config.yaml")
    parser.add_argument("--data", default="", metavar="FILE", help="a data file (class names)")
    parser.add_argument("--input", required=True, help="an image, a folder of images or a video")
    parser.add_argument("--output", required=True, help="folder for the pictures and JSON")
    parser.add_argument("--onnx", default="", help="run this exported file (its contract)")
    parser.add_argument("--threads", type=int, default=2, help="--onnx: intra-op threads")
    parser.add_argument(
        "--score-thresh",
        "--confidence",
        type=float,
        default=None,
        help="draw and list detections scoring at least this (default: 0.5, or the file's "
        "recorded deployment threshold)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    import cv2

    paths = list_inputs(args.input)  # checked before the model is loaded and anything written
    if args.onnx:
        from quant_mimic.export import Detector

        detector = Detector(args.onnx, threads=args.threads, score_threshold=0.0)
        detect, names = detector, detector.class_names
        recorded = detector.contract["threshold_source"].get("kind") != "config"
        default = detector.contract["score_threshold"] if recorded else 0.5
    else:
        from quant_mimic import get_config
        from quant_mimic.data.data_file import data_opts
        from quant_mimic.engine import config_of_run

        weights = dict(zip(args.opts[::2], args.opts[1::2])).get("MODEL.WEIGHTS", "")
        config_file = config_of_run(args.config_file, weights)
        if not config_file:
            parser.error("--config-file is required (or MODEL.WEIGHTS of a run, or --onnx)")
        opts = list(args.opts) + data_opts(args.data) + ["MODEL.DEVICE", "cpu"]
        detect, names = pytorch_detector(get_config(config_file, opts))
        default = 0.5
    threshold = default if args.score_thresh is None else args.score_thresh
    os.makedirs(args.output, exist_ok=True)
    for k, path in enumerate(paths, 1):
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            run_video(path, args.output, detect, names, threshold)
            continue
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise BadFileError(
                path, "not an image OpenCV can read", "give a readable image, or leave it out"
            )
        start = time.time()
        detections = detect(image)
        ms = 1000 * (time.time() - start)
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        cv2.imwrite(stem + ".png", draw(image, detections, names, threshold))
        kept = _kept(detections, threshold)
        with open(stem + ".json", "w") as f:
            json.dump({"image": path, "height": image.shape[0], "width": image.shape[1],
                       "score_threshold": threshold, "detections": kept}, f, indent=1)  # fmt: skip
        counts = {}
        for d in kept:
            counts[d["class"]] = counts.get(d["class"], 0) + 1
        print(f"[{k}/{len(paths)}] {path}: {len(kept)} detections ≥ {threshold:g} {counts} "
              f"({ms:.0f} ms) -> {stem}.png, .json", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
