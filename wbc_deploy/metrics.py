"""Classification metrics of the reference paper (numpy only; no torch, no scikit-learn).

Definitions (Chen et al. 2022, Eqs. 4-6 and Table 12), for the classes in ``classes`` order, with
``C`` the confusion matrix (rows = true class, columns = predicted class) and ``N`` its total:

* ``OA`` (overall accuracy) = trace(C) / N.
* per-class ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN), ``f1`` = their harmonic mean,
  ``support`` = TP + FN (images of that class in the truth).
* per-class ``accuracy`` (Table 12) = one-vs-rest accuracy (TP + TN) / N: the fraction of all images
  on which the classifier's yes/no answer for that class is right.
* ``AP`` / ``AR`` = the means of per-class precision / recall over the *evaluated* classes;
  ``AF1`` = 2 * AP * AR / (AP + AR) (Eq. 6: the harmonic mean of AP and AR, not the mean of per-class F1).

Absent classes (support 0, e.g. basophils in BCCD): recall is undefined, so the class's precision,
recall and F1 are reported as ``None`` (null in JSON) and the class is left out of AP, AR and AF1;
``absent_classes`` lists it. Any prediction of an absent class still counts as an error in OA and in
the recall of the true class. A present class the model never predicts has precision 0 (it found none
of its cells), which is included in AP. All values are fractions in 0..1.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import WbcError


def _as_indices(labels: Sequence[Any] | np.ndarray, classes: Sequence[str], what: str) -> np.ndarray:
    """Class indices from integer indices or class-name strings."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise WbcError(f"{what} must be a 1-D sequence of labels, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        idx = arr.astype(np.int64)
    else:
        lookup = {c: i for i, c in enumerate(classes)}
        try:
            idx = np.array([lookup[str(v)] for v in arr], dtype=np.int64)
        except KeyError as exc:
            raise WbcError(f"{what} contains {exc.args[0]!r}, which is not one of the classes {list(classes)}") from None
    if idx.min() < 0 or idx.max() >= len(classes):
        raise WbcError(f"{what} has a class index outside 0..{len(classes) - 1}")
    return idx


def confusion_matrix(y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[str]) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class, in ``classes`` order."""
    t = _as_indices(y_true, classes, "y_true")
    p = _as_indices(y_pred, classes, "y_pred")
    if t.shape != p.shape:
        raise WbcError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    k = len(classes)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def metrics_from_confusion(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """All metrics (see the module docstring) from a confusion matrix."""
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if cm.shape != (k, k):
        raise WbcError(f"confusion matrix shape {cm.shape} does not match {k} classes")
    n = int(cm.sum())
    if n == 0:
        raise WbcError("no images to evaluate")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class: dict[str, dict[str, Any]] = {}
    precisions: list[float] = []
    recalls: list[float] = []
    absent: list[str] = []
    for i, name in enumerate(classes):
        tpi, fn, fp = int(tp[i]), int(support[i] - tp[i]), int(predicted[i] - tp[i])
        tn = n - tpi - fn - fp
        if support[i] == 0:
            absent.append(name)
            prec = rec = f1 = None
        else:
            prec = _ratio(tpi, tpi + fp) or 0.0  # never predicted: precision 0
            rec = float(tpi) / float(support[i])
            f1 = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
            precisions.append(prec)
            recalls.append(rec)
        per_class[name] = {
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "accuracy": (tpi + tn) / n,
            "support": int(support[i]),
            "predicted": int(predicted[i]),
        }
    ap = float(np.mean(precisions))
    ar = float(np.mean(recalls))
    af1 = 0.0 if ap + ar == 0 else 2 * ap * ar / (ap + ar)
    return {
        "OA": float(tp.sum()) / n,
        "AP": ap,
        "AR": ar,
        "AF1": af1,
        "n": n,
        "classes": list(classes),
        "absent_classes": absent,
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def compute_metrics(y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
    """OA, AP, AR, AF1, per-class precision/recall/F1/accuracy/support and the confusion matrix.

    ``y_true``/``y_pred`` hold class indices into ``classes`` or class names. Returns a JSON-ready
    dict with keys ``OA``, ``AP``, ``AR``, ``AF1``, ``n``, ``classes``, ``absent_classes``,
    ``per_class`` and ``confusion`` (rows = true, columns = predicted).
    """
    classes = list(classes)
    if len(classes) < 1:
        raise WbcError("compute_metrics needs at least one class")
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, classes), classes)
