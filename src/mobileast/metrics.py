"""Classification metrics of the evaluation, as pure numpy functions.

Conventions: `labels` and `pred` are integer class indices (0 .. n_classes-1, the
order of mobileast.labels.SCENES); `probs` are rows of class probabilities. A class
or device without any evaluation clip has no accuracy: functions return NaN for it,
and `evaluate_predictions` reports it as None so the result stays valid JSON.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mobileast.labels import DEVICES


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (shifted by the row maximum, so it never overflows)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Share of clips whose predicted class is the true one (NaN for no clips)."""
    labels, pred = _check_pair(labels, pred)
    return float(np.mean(labels == pred)) if labels.size else float("nan")


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, shape (n_classes, n_classes): row = true class, column = predicted class."""
    labels, pred = _check_pair(labels, pred)
    for name, values in (("labels", labels), ("predictions", pred)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} must lie in 0..{n_classes - 1}")
    counts = np.bincount(labels * n_classes + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def class_accuracy(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class recall (accuracy on the clips of each true class); NaN for absent classes."""
    cm = confusion_matrix(labels, pred, n_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def macro_accuracy(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean of the per-class accuracies of the classes present: the DCASE ranking metric
    (equals sklearn's balanced_accuracy_score), insensitive to class imbalance."""
    per_class = class_accuracy(labels, pred, n_classes)
    present = per_class[~np.isnan(per_class)]
    return float(present.mean()) if present.size else float("nan")


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class (natural log).

    Probabilities are clipped to [eps, 1 - eps] with eps the machine precision of
    their dtype, as sklearn.metrics.log_loss does, so a confident wrong prediction
    costs a large but finite amount.
    """
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must have shape (n_clips, n_classes) with n_clips = "
                         f"{labels.shape[0]}, got {probs.shape}")
    if not labels.size:
        return float("nan")
    eps = np.finfo(probs.dtype).eps
    p_true = np.clip(probs[np.arange(labels.size), labels], eps, 1 - eps)
    return float(-np.mean(np.log(p_true)))


def device_order(devices: Iterable[str]) -> list[str]:
    """Devices sorted as in mobileast.labels.DEVICES, unknown ones alphabetically after; plain str
    (not numpy.str_, whose repr would show in logs and run params)."""
    rank = {d: i for i, d in enumerate(DEVICES)}
    return sorted({str(d) for d in devices}, key=lambda d: (rank.get(d, len(rank)), d))


def evaluate_predictions(logits: np.ndarray, labels: np.ndarray, devices: Sequence[str],
                         train_devices: Iterable[str], classes: Sequence[str]) -> dict:
    """All evaluation metrics of one model on one fold, as a JSON-ready dict.

    logits: (n_clips, n_classes) raw model outputs; labels: (n_clips,) true class
    indices; devices: (n_clips,) recording device of each clip; train_devices: the
    devices present in the training fold. A device of the evaluation fold is "unseen"
    when it never occurs in the training fold; that is how TAU22's s4..s6
    (mobileast.labels.UNSEEN_DEVICES) are defined, and it stays right for datasets
    or demo settings with other device sets. `accuracy_seen` / `accuracy_unseen` are
    accuracies over all clips of seen / unseen devices (pooled, not a mean of
    per-device accuracies; the two agree on TAU22's device-balanced evaluate fold).

    Keys: n_clips, classes, accuracy, macro_accuracy, log_loss, accuracy_seen,
    accuracy_unseen, seen_devices, unseen_devices, per_device {device: {n_clips,
    accuracy, log_loss, seen}}, per_class {class: {n_clips, accuracy}},
    confusion_matrix (rows true class, columns predicted class, in `classes` order).
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    devices = np.asarray(devices, dtype=str)
    n_classes = len(classes)
    if logits.ndim != 2 or logits.shape[1] != n_classes:
        raise ValueError(f"logits must have shape (n_clips, {n_classes}), got {logits.shape}")
    if not (logits.shape[0] == labels.shape[0] == devices.shape[0]):
        raise ValueError(f"logits, labels and devices differ in length: "
                         f"{logits.shape[0]}, {labels.shape[0]}, {devices.shape[0]}")
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    train_devices = set(train_devices)
    order = device_order(devices)
    seen = [d for d in order if d in train_devices]
    unseen = [d for d in order if d not in train_devices]
    is_seen = np.isin(devices, seen)
    per_device = {}
    for d in order:
        m = devices == d
        per_device[d] = {"n_clips": int(m.sum()), "accuracy": _json(accuracy(labels[m], pred[m])),
                         "log_loss": _json(log_loss(labels[m], probs[m])), "seen": d in train_devices}
    cm = confusion_matrix(labels, pred, n_classes)
    per_class = {c: {"n_clips": int(cm[i].sum()), "accuracy": _json(acc)}
                 for i, (c, acc) in enumerate(zip(classes, class_accuracy(labels, pred, n_classes)))}
    return {
        "n_clips": int(labels.size),
        "classes": list(classes),
        "accuracy": _json(accuracy(labels, pred)),
        "macro_accuracy": _json(macro_accuracy(labels, pred, n_classes)),
        "log_loss": _json(log_loss(labels, probs)),
        "accuracy_seen": _json(accuracy(labels[is_seen], pred[is_seen])),
        "accuracy_unseen": _json(accuracy(labels[~is_seen], pred[~is_seen])),
        "seen_devices": seen,
        "unseen_devices": unseen,
        "per_device": per_device,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def _check_pair(labels: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, pred = np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if labels.shape != pred.shape or labels.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-D of equal length, "
                         f"got shapes {labels.shape} and {pred.shape}")
    return labels, pred


def _json(value: float) -> float | None:
    """NaN (no clips) -> None, so the metrics dict serialises as strict JSON."""
    return None if np.isnan(value) else float(value)


SUMMARY_KEYS = ("accuracy", "macro_accuracy", "log_loss", "accuracy_seen", "accuracy_unseen")


def summary(results: Mapping[str, Mapping[str, Any]], digits: int = 5) -> dict[str, dict[str, Any]]:
    """{model: {accuracy, macro_accuracy, log_loss, accuracy_seen, accuracy_unseen,
    per_device_accuracy: {device: accuracy}}}, rounded: the DVC metrics of the evaluation.

    A figure without clips (e.g. accuracy_unseen when every device was seen) is left
    out rather than written as null, which `dvc metrics diff` cannot compare.
    """
    def figures(r: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(r[k], digits) for k in SUMMARY_KEYS if r.get(k) is not None}
        devices = {d: round(v["accuracy"], digits) for d, v in r.get("per_device", {}).items()
                   if v["accuracy"] is not None}
        if devices:
            out["per_device_accuracy"] = devices
        return out

    return {name: figures(r) for name, r in results.items()}
