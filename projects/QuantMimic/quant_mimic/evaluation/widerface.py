"""WIDER FACE evaluation: the official protocol (eval_tools / its widely used Python port).

Per subset (easy, medium, hard): predictions of every val image, sorted by score, scores min-max
normalised over the whole set; a detection is matched to the ground-truth face of highest IoU; IoU ≥
0.5 with a face outside the subset's keep list makes the detection ignored (neither TP nor FP);
recall over the kept faces; precision/recall at 1000 score thresholds; all-point AP.

Standalone, on a folder of official-layout predictions (``<event>/<image>.txt``):

    python -m quant_mimic.evaluation.widerface --pred DIR --gt eval_tools/ground_truth \
        [--allow-missing]

What is read is checked, so that no input yields a wrong AP silently: malformed prediction files
(count line vs rows, non-numeric or non-finite values) are errors naming ``file:line``; a prediction
for an image outside the ground truth is an error (it would enter the score normalisation); ground-
truth images without predictions are an error giving their count unless ``--allow-missing``; the
keep lists must match the image list.
"""

import argparse
import copy
import itertools
import logging
import os
from collections import OrderedDict, defaultdict
from typing import Dict, List, Tuple

import numpy as np
import scipy.io

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_ap
from detectron2.utils import comm

__all__ = [
    "SUBSETS",
    "WiderFaceFormatError",
    "load_widerface_gt",
    "write_widerface_predictions",
    "read_widerface_predictions",
    "evaluate_widerface",
    "WiderFaceEvaluator",
]

logger = logging.getLogger(__name__)

SUBSETS = ("easy", "medium", "hard")
Predictions = Dict[str, Dict[str, np.ndarray]]  # event -> image stem -> (K, 5) x y w h score


class WiderFaceFormatError(ValueError):
    """Predictions or ground truth that the WIDER FACE protocol cannot score as they are."""


def _cell_str(x) -> str:
    return str(np.asarray(x).reshape(-1)[0])


def load_widerface_gt(gt_dir: str):
    """
    Read ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``; the keep lists must
    match the image list (same events, same number of images per event, indices within each
    image's faces).

    Returns:
        list[(event, stem, boxes (K, 4) x y w h, {subset: keep indices (0-based)})]

    Raises:
        WiderFaceFormatError: naming the .mat file that disagrees.
    """
    face_file = os.path.join(gt_dir, "wider_face_val.mat")
    face = scipy.io.loadmat(face_file)
    keeps = {}
    for s in SUBSETS:
        path = os.path.join(gt_dir, f"wider_{s}_val.mat")
        keeps[s] = (path, scipy.io.loadmat(path)["gt_list"])
        if len(keeps[s][1]) != len(face["event_list"]):
            raise WiderFaceFormatError(
                f"{path}: {len(keeps[s][1])} events in gt_list, {face_file} has "
                f"{len(face['event_list'])}"
            )
    out = []
    for i in range(len(face["event_list"])):
        event = _cell_str(face["event_list"][i][0])
        files = face["file_list"][i][0]
        boxes = face["face_bbx_list"][i][0]
        for s, (path, gt_list) in keeps.items():
            if len(gt_list[i][0]) != len(files):
                raise WiderFaceFormatError(
                    f"{path}: event {event!r} has {len(gt_list[i][0])} keep lists for "
                    f"{len(files)} images in {face_file}"
                )
        for j in range(len(files)):
            stem = _cell_str(files[j][0])
            b = np.asarray(boxes[j][0], dtype=np.float64).reshape(-1, 4)
            keep = {}
            for s, (path, gt_list) in keeps.items():
                k = np.asarray(gt_list[i][0][j][0]).reshape(-1).astype(np.int64) - 1
                if len(k) and (k.min() < 0 or k.max() >= len(b)):
                    raise WiderFaceFormatError(
                        f"{path}: keep list of {event}/{stem} has indices outside 1..{len(b)}: "
                        f"{sorted(set((k + 1).tolist()))}"
                    )
                keep[s] = k
            out.append((event, stem, b, keep))
    return out


def write_widerface_predictions(preds: Predictions, out_dir: str) -> None:
    """Write ``<out_dir>/<event>/<stem>.txt``: the name line, the count, ``x y w h score`` lines."""
    for event, images in preds.items():
        os.makedirs(os.path.join(out_dir, event), exist_ok=True)
        for stem, dets in images.items():
            lines = [stem, str(len(dets))] + [
                f"{x:.1f} {y:.1f} {w:.1f} {h:.1f} {s:.6f}"
                for x, y, w, h, s in np.asarray(dets).tolist()
            ]
            with open(os.path.join(out_dir, event, stem + ".txt"), "w") as f:
                f.write("\n".join(lines) + "\n")


def read_widerface_predictions(pred_dir: str) -> Predictions:
    """
    Read a folder written by :func:`write_widerface_predictions` or for the official tool.

    Raises:
        FileNotFoundError: the folder does not exist.
        WiderFaceFormatError: no prediction file in it, or a malformed file, naming ``file:line``
            (missing or non-integer count, a count that disagrees with the rows, a row that is not
            ``x y w h score`` numbers, a non-finite value, a negative width or height).
    """
    if not os.path.isdir(pred_dir):
        raise FileNotFoundError(f"WIDER FACE prediction folder not found: {pred_dir}")
    preds: Predictions = defaultdict(dict)
    for event in sorted(os.listdir(pred_dir)):
        event_dir = os.path.join(pred_dir, event)
        if not os.path.isdir(event_dir):
            continue
        for name in sorted(os.listdir(event_dir)):
            if name.endswith(".txt"):
                path = os.path.join(event_dir, name)
                preds[event][os.path.splitext(name)[0]] = _read_prediction_file(path)
    if not preds:
        raise WiderFaceFormatError(
            f"{pred_dir}: no predictions (expected <event>/<image>.txt files)"
        )
    return dict(preds)


def _read_prediction_file(path: str) -> np.ndarray:
    """(K, 5) ``x y w h score`` rows of one prediction file (format checked, see the caller)."""
    with open(path) as f:
        numbered = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    if len(numbered) < 2:
        raise WiderFaceFormatError(f"{path}: expected an image name line and a count line")
    n, text = numbered[1]
    try:
        count = int(text)
    except ValueError:
        raise WiderFaceFormatError(
            f"{path}:{n}: expected a detection count, got {text!r}"
        ) from None
    rows = numbered[2:]
    if count < 0 or count != len(rows):
        raise WiderFaceFormatError(
            f"{path}:{n}: the count line says {count} detections, the file has {len(rows)} rows"
        )
    out = np.zeros((count, 5), dtype=np.float64)
    for k, (n, text) in enumerate(rows):
        fields = text.split()
        try:
            values = [float(v) for v in fields[:5]]
        except ValueError:
            raise WiderFaceFormatError(f"{path}:{n}: non-numeric detection {text!r}") from None
        if len(values) < 5:
            raise WiderFaceFormatError(f"{path}:{n}: expected 'x y w h score', got {text!r}")
        if not all(np.isfinite(values)):
            raise WiderFaceFormatError(f"{path}:{n}: non-finite value in {text!r}")
        if values[2] < 0 or values[3] < 0:
            raise WiderFaceFormatError(f"{path}:{n}: negative width or height in {text!r}")
        out[k] = values
    return out


def _overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes with the official tool's inclusive-pixel (+1) convention. (A, B)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(inter > 0, inter / np.maximum(union, 1e-12), 0.0)


def _image_eval(pred: np.ndarray, gt: np.ndarray, kept: np.ndarray, iou_thresh: float):
    """Per detection (score order): kept faces recalled so far, and whether the detection counts."""
    p = pred[:, :4].copy()
    g = gt.copy()
    p[:, 2:] += p[:, :2]
    g[:, 2:] += g[:, :2]
    overlaps = _overlaps(p, g)
    recalled = np.zeros(len(g))
    counts = np.ones(len(p))
    pred_recall = np.zeros(len(p))
    for h in range(len(p)):
        j = int(overlaps[h].argmax())
        if overlaps[h, j] >= iou_thresh:
            if not kept[j]:  # a face outside this subset: the detection is ignored
                recalled[j] = -1
                counts[h] = -1
            elif recalled[j] == 0:
                recalled[j] = 1
        pred_recall[h] = np.sum(recalled == 1)
    return pred_recall, counts


def _check_predictions(preds: Predictions, gts, gt_dir: str, allow_missing: bool) -> None:
    """The scoring contract: finite ``x y w h score`` rows, only images of the ground truth, and
    (unless ``allow_missing``) every image of it."""
    known = {(event, stem) for event, stem, _, _ in gts}
    extra, bad = [], []
    for event, images in preds.items():
        for stem, dets in images.items():
            d = np.asarray(dets)
            if d.ndim != 2 or (d.size and d.shape[1] < 5):
                bad.append(f"{event}/{stem}: shape {d.shape}, expected (K, 5)")
            elif not np.isfinite(d[:, :5]).all():
                bad.append(f"{event}/{stem}: non-finite value")
            if (event, stem) not in known:
                extra.append(f"{event}/{stem}")
    if bad:
        raise WiderFaceFormatError(
            f"{len(bad)} prediction(s) cannot be scored: " + "; ".join(bad[:5])
        )
    if extra:
        raise WiderFaceFormatError(
            f"{len(extra)} predicted image(s) are not in the ground truth {gt_dir} (wrong split or "
            f"names?): {extra[:5]}" + (" ..." if len(extra) > 5 else "")
        )
    missing = [f"{e}/{s}" for e, s in sorted(known) if s not in preds.get(e, {})]
    if missing:
        events = {m.split("/")[0] for m in missing}
        message = (
            f"{len(missing)} of {len(known)} ground-truth images ({len(events)} events) have no "
            f"prediction, e.g. {missing[:3]}"
        )
        if not allow_missing:
            raise WiderFaceFormatError(
                message + "; they would count as images without detections. Pass "
                "allow_missing=True (--allow-missing) to score them so."
            )
        logger.warning(message + ": scored as images without detections (allow_missing)")


def evaluate_widerface(
    preds: Predictions,
    gt_dir: str,
    iou_thresh: float = 0.5,
    thresh_num: int = 1000,
    allow_missing: bool = False,
) -> Dict[str, float]:
    """
    AP (in [0, 1]) on the easy, medium and hard subsets by the official protocol (module doc).

    Args:
        preds: event -> image stem -> (K, 5) detections ``x y w h score``.
        allow_missing: score a ground-truth image without predictions as an image without
            detections (with a warning giving the count) instead of failing.

    Raises:
        WiderFaceFormatError: non-finite or malformed detections (naming the image), predictions
            for images outside the ground truth (they would enter the min-max score
            normalisation), missing images unless ``allow_missing``.
    """
    gts = load_widerface_gt(gt_dir)
    _check_predictions(preds, gts, gt_dir, allow_missing)
    preds = copy.deepcopy(preds)
    all_scores = [d[:, 4] for images in preds.values() for d in images.values() if len(d)]
    if all_scores:
        s = np.concatenate(all_scores)
        lo, hi = float(s.min()), float(s.max())
        for images in preds.values():
            for stem, d in images.items():
                d = d[np.argsort(-d[:, 4], kind="stable")]
                # min-max normalisation over the whole set; constant scores all become 1
                d[:, 4] = (d[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
                images[stem] = d
    thresholds = 1.0 - (np.arange(thresh_num) + 1.0) / thresh_num
    results = {}
    for subset in SUBSETS:
        pr = np.zeros((thresh_num, 2))
        num_faces = 0
        for event, stem, gt, keep in gts:
            num_faces += len(keep[subset])
            pred = preds.get(event, {}).get(stem, np.zeros((0, 5)))
            if len(gt) == 0 or len(pred) == 0:
                continue
            kept = np.zeros(len(gt), dtype=bool)
            kept[keep[subset]] = True
            pred_recall, counts = _image_eval(pred, gt, kept, iou_thresh)
            # Scores are sorted descending: the last detection at or above each threshold.
            last = np.searchsorted(-pred[:, 4], -thresholds, side="right") - 1
            valid = last >= 0
            counted = np.cumsum(counts == 1)
            pr[valid, 0] += counted[last[valid]]
            pr[valid, 1] += pred_recall[last[valid]]
        precision = np.divide(pr[:, 1], pr[:, 0], out=np.zeros(thresh_num), where=pr[:, 0] > 0)
        recall = pr[:, 1] / num_faces if num_faces else np.zeros(thresh_num)
        # the official protocol's AP: area under the precision envelope (VOC 2010+)
        results[subset] = float(voc_ap(recall, precision, use_07_metric=False))
    return results


class WiderFaceEvaluator(DatasetEvaluator):
    """
    Collects detections in original-image coordinates, writes them in the official layout under
    ``<output_dir>/predictions`` and reports AP_easy, AP_medium, AP_hard (in %) against the
    dataset's ``gt_dir`` .mat files.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str = None,
        distributed: bool = True,
        allow_missing: bool = False,
    ):
        self._dataset_name = dataset_name
        self._allow_missing = allow_missing
        self._output_dir = output_dir
        self._distributed = distributed
        self._gt_dir = MetadataCatalog.get(dataset_name).gt_dir
        self._predictions: List[Tuple[str, np.ndarray]] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            boxes = inst.pred_boxes.tensor.numpy().astype(np.float64)
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            dets = np.concatenate([xywh, inst.scores.numpy()[:, None]], axis=1).reshape(-1, 5)
            if not np.isfinite(dets).all():
                raise WiderFaceFormatError(
                    f"{self._dataset_name}: non-finite box or score predicted for image "
                    f"{inp.get('file_name', inp['image_id'])}"
                )
            self._predictions.append((inp["image_id"], dets))

    def evaluate(self):
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        preds: Predictions = defaultdict(dict)
        duplicates = []
        for image_id, dets in predictions:
            event, stem = image_id.split("/")[-2:]
            if stem in preds[event]:
                duplicates.append(image_id)
            preds[event][stem] = dets
        if duplicates:  # e.g. a sampler that gives an image to two ranks
            raise WiderFaceFormatError(
                f"{self._dataset_name}: {len(duplicates)} image(s) were predicted more than once "
                f"(e.g. {duplicates[:3]}); every image must be evaluated exactly once"
            )
        self.num_images = len(predictions)
        if self._output_dir:
            out = os.path.join(self._output_dir, "predictions")
            write_widerface_predictions(preds, out)
            logger.info(f"WIDER FACE predictions written to {out} (official layout)")
        aps = evaluate_widerface(dict(preds), self._gt_dir, allow_missing=self._allow_missing)
        logger.info(
            f"WIDER FACE {self._dataset_name} (official protocol, IoU 0.5): "
            + ", ".join(f"{s} {100 * aps[s]:.2f}" for s in SUBSETS)
        )
        return OrderedDict(widerface={f"AP_{s}": 100.0 * aps[s] for s in SUBSETS})


def main(argv=None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description="WIDER FACE evaluation (official protocol)")
    parser.add_argument("--pred", required=True, help="folder of <event>/<image>.txt predictions")
    parser.add_argument(
        "--gt", required=True, help="folder with wider_face_val.mat and wider_*_val.mat"
    )
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score ground-truth images without a prediction file as images without detections "
        "(default: an error giving their count)",
    )
    args = parser.parse_args(argv)
    aps = evaluate_widerface(
        read_widerface_predictions(args.pred), args.gt, args.iou, allow_missing=args.allow_missing
    )
    print("==================== Results ====================")
    for s in SUBSETS:
        print(f"{s.capitalize():6s} Val AP: {aps[s]:.4f}")
    print("=================================================")
    return aps


if __name__ == "__main__":
    main()
