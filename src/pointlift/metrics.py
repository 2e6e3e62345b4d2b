"""Evaluation metrics shared by every task: accuracy for shapes, confusion matrix and IoU for scenes."""

from __future__ import annotations

import math

import numpy as np

from pointlift.errors import PointliftDataError


def accuracy_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Overall accuracy and mean of the per-class accuracies (classes present in `labels`)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    overall = float((predictions == labels).mean()) if len(labels) else float("nan")
    per_class = [float((predictions[labels == c] == c).mean()) for c in range(num_classes) if (labels == c).any()]
    return {"overall_acc": overall, "mean_class_acc": float(np.mean(per_class)) if per_class else float("nan")}


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; points labelled IGNORE (or any id
    outside 0..C-1) are left out."""
    predictions = np.asarray(predictions).astype(np.int64).ravel()
    labels = np.asarray(labels).astype(np.int64).ravel()
    if predictions.shape != labels.shape:
        raise PointliftDataError("<predictions>", f"{predictions.shape[0]} predictions for {labels.shape[0]} labels")
    keep = (labels >= 0) & (labels < num_classes)
    if keep.any() and (predictions[keep].min() < 0 or predictions[keep].max() >= num_classes):
        raise PointliftDataError("<predictions>", f"predicted ids must lie in 0..{num_classes - 1}")
    flat = labels[keep] * num_classes + predictions[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: np.ndarray, class_names: tuple[str, ...] | list[str]) -> dict:
    """IoU_c = TP / (TP + FP + FN) for every class; mIoU = the mean over classes present in the ground
    truth (a class never labelled and never predicted has no IoU, NaN; one predicted but absent counts
    its false positives in the classes it took them from); overall accuracy = trace / labelled points;
    mean accuracy = mean recall over present classes."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    gt = confusion.sum(1)
    union = gt + confusion.sum(0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(gt > 0, tp / gt, np.nan)
    present = gt > 0
    total = confusion.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "overall_acc": float(tp.sum() / total) if total else float("nan"),
        "mean_acc": float(recall[present].mean()) if present.any() else float("nan"),
        "per_class_iou": {name: (None if math.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
        "classes_present": int(present.sum()),
        "labelled_points": int(total),
    }
