"""An operating point for deployment: the score threshold a deployed student keeps detections above,
chosen by the user or on the val set from a stated target, and the precision and recall it gives.

AP sums over every threshold, so evaluation exports keep the configs' low threshold (0.01-0.05) and
many detections per image; a deployed detector needs one threshold. :func:`precision_recall` matches
detections to ground truth as Pascal VOC does (per class, by descending score, IoU ≥ 0.5, each box
matched once, ``difficult`` and ``iscrowd`` boxes neither counted nor penalised) and gives precision
and recall at every threshold; :func:`choose_threshold` picks one for a target:

* ``precision=P``: the lowest threshold whose precision is at least P (the most recall at P);
* ``recall=R``: the highest threshold whose recall is at least R (the most precision at R);
* ``f1``: the threshold of the highest F1.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = [
    "precision_recall",
    "parse_target",
    "choose_threshold",
    "at_threshold",
    "ground_truth_of",
    "val_curve",
    "set_score_threshold",
    "operating_point",
]


def _iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    ix = np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0])
    iy = np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / np.maximum(
        area + (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]) - inter, 1e-9
    )


def precision_recall(
    detections: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
) -> Dict[str, np.ndarray]:
    """
    Args:
        detections: per image (boxes (N, 4) x0 y0 x1 y1, scores (N,), classes (N,)).
        ground_truth: per image (boxes (M, 4), classes (M,), ignore (M,) bool: difficult / crowd).

    Returns:
        dict: ``thresholds`` (descending scores), ``precision`` and ``recall`` when keeping the
        detections scoring at least each threshold, ``num_gt`` (counted boxes).
    """
    rows = []  # (score, is true positive) of every detection that is not on an ignored box
    num_gt = 0
    for (boxes, scores, classes), (gt_boxes, gt_classes, ignore) in zip(detections, ground_truth):
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        gt_classes, ignore = np.asarray(gt_classes), np.asarray(ignore, dtype=bool)
        num_gt += int((~ignore).sum())
        matched = np.zeros(len(gt_boxes), dtype=bool)
        for i in np.argsort(-np.asarray(scores), kind="stable"):
            same = np.nonzero(gt_classes == classes[i])[0]
            if len(same) == 0:
                rows.append((scores[i], 0.0))
                continue
            iou = _iou(np.asarray(boxes[i], dtype=np.float64), gt_boxes[same])
            j = int(np.argmax(iou))
            if iou[j] < iou_threshold:
                rows.append((scores[i], 0.0))
            elif ignore[same[j]]:
                continue  # on an ignored box: neither a true nor a false positive
            elif matched[same[j]]:
                rows.append((scores[i], 0.0))
            else:
                matched[same[j]] = True
                rows.append((scores[i], 1.0))
    if not rows:
        empty = np.zeros(0)
        return {"thresholds": empty, "precision": empty, "recall": empty, "num_gt": num_gt}
    rows.sort(key=lambda r: -r[0])
    scores = np.array([r[0] for r in rows], dtype=np.float64)
    tp = np.cumsum([r[1] for r in rows])
    precision = tp / np.arange(1, len(rows) + 1)
    recall = tp / max(num_gt, 1)
    # one point per distinct score: keeping "score ≥ t" keeps every tie
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    return {
        "thresholds": scores[last],
        "precision": precision[last],
        "recall": recall[last],
        "num_gt": num_gt,
    }


def parse_target(target: str) -> Tuple[str, float]:
    """``"precision=0.9"`` -> ("precision", 0.9); ``"recall=0.8"``; ``"f1"`` -> ("f1", 0.0)."""
    name, _, value = target.partition("=")
    name = name.strip().lower()
    if name == "f1" and not value:
        return "f1", 0.0
    if name in ("precision", "recall") and value:
        v = float(value)
        if 0.0 < v <= 1.0:
            return name, v
    raise ValueError(f"Unknown operating-point target {target!r}: use precision=P, recall=R or f1")


def choose_threshold(curve: Dict[str, np.ndarray], target: str) -> Dict[str, float]:
    """The threshold of ``curve`` (:func:`precision_recall`) for ``target`` (module docstring), with
    its precision, recall and F1; an unreachable target is an error naming the best reachable."""
    name, value = parse_target(target)
    t, p, r = curve["thresholds"], curve["precision"], curve["recall"]
    if len(t) == 0:
        raise ValueError("no detection on the val set: no operating point to choose")
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    if name == "f1":
        i = int(np.argmax(f1))
    elif name == "precision":
        ok = np.nonzero(p >= value)[0]
        if len(ok) == 0:
            raise ValueError(
                f"precision {value} is not reached on the val set (best {p.max():.3f})"
            )
        i = int(ok[-1])  # the lowest such threshold: the most recall
    else:
        ok = np.nonzero(r >= value)[0]
        if len(ok) == 0:
            raise ValueError(f"recall {value} is not reached on the val set (best {r.max():.3f})")
        i = int(ok[0])  # the highest such threshold: the most precision
    return {
        "threshold": float(t[i]),
        "precision": float(p[i]),
        "recall": float(r[i]),
        "f1": float(f1[i]),
    }


def at_threshold(curve: Dict[str, np.ndarray], threshold: float) -> Dict[str, float]:
    """Precision and recall of ``curve`` when keeping the detections scoring ≥ ``threshold``."""
    keep = np.nonzero(curve["thresholds"] >= threshold)[0]
    if len(keep) == 0:
        return {"threshold": float(threshold), "precision": 1.0, "recall": 0.0}
    i = int(keep[-1])
    return {
        "threshold": float(threshold),
        "precision": float(curve["precision"][i]),
        "recall": float(curve["recall"][i]),
    }


def ground_truth_of(dicts: List[Dict], image_sizes=None):
    """Per dataset dict: (boxes XYXY_ABS, classes, ignore) for :func:`precision_recall`."""
    from detectron2.structures import BoxMode

    out = []
    for d in dicts:
        annos = d.get("annotations", [])
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
        classes = [a["category_id"] for a in annos]
        ignore = [bool(a.get("difficult", 0) or a.get("iscrowd", 0)) for a in annos]
        out.append(
            (np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(classes), np.array(ignore))
        )
    return out


def val_curve(cfg, model) -> Dict[str, np.ndarray]:
    """:func:`precision_recall` of ``model`` (a detectron2 model in eval mode: the PyTorch student
    or an ``ExportedDetector``) on ``DATASETS.TEST[0]``, detections in the images' own pixels."""
    import torch

    from detectron2.data import DatasetCatalog, build_detection_test_loader
    from detectron2.evaluation.evaluator import inference_context

    name = cfg.DATASETS.TEST[0]
    by_id = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    detections, dicts = [], []
    with inference_context(model), torch.no_grad():
        for inputs in build_detection_test_loader(cfg, name):
            for x, out in zip(inputs, model(inputs)):
                inst = out["instances"].to("cpu")
                detections.append(
                    (inst.pred_boxes.tensor.numpy(), inst.scores.numpy(), inst.pred_classes.numpy())
                )
                dicts.append(by_id[x["image_id"]])
    return precision_recall(detections, ground_truth_of(dicts))


def set_score_threshold(cfg, threshold: float) -> None:
    """Bake ``threshold`` into ``cfg``'s test-time score threshold (every head that has one)."""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(threshold)
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = float(threshold)
    if "FCOS" in cfg.MODEL:
        cfg.MODEL.FCOS.SCORE_THRESH_TEST = float(threshold)


def operating_point(cfg, weights: str, score_thresh=None, target: str = "") -> Dict:
    """
    Set ``cfg``'s score threshold for a deployment export (``cfg`` mutable) and return where it
    comes from, for the file's contract: ``score_thresh`` (the user's), or ``target`` chosen on
    ``DATASETS.TEST[0]`` with the student of ``weights`` at the config's own (low) threshold
    (:func:`choose_threshold`, with the precision and recall there). Neither: the config's, for AP.
    """
    if score_thresh is not None and target:
        raise ValueError("give a score threshold or a target to choose one, not both")
    if score_thresh is not None:
        set_score_threshold(cfg, score_thresh)
        return {"kind": "user", "for": "deployment"}
    if not target:
        return {"kind": "config", "for": "AP"}
    from detectron2.modeling import build_model

    from ..checkpoint import load_student_weights

    model = build_model(cfg).eval()
    load_student_weights(model, weights)
    chosen = choose_threshold(val_curve(cfg, model), target)
    set_score_threshold(cfg, chosen["threshold"])
    return {"kind": "val", "for": "deployment", "target": target,
            "dataset": cfg.DATASETS.TEST[0], **chosen}  # fmt: skip
