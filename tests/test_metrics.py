"""Metrics against an independent computation (scikit-learn), including absent and never-predicted classes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from wbc_deploy.classes import CLASSES
from wbc_deploy.errors import WbcError
from wbc_deploy.metrics import compute_metrics

K = len(CLASSES)


def _reference(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    present = sorted(set(y_true.tolist()))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(K)), zero_division=0)
    ap = np.mean(p[present])
    ar = np.mean(r[present])
    one_vs_rest = [accuracy_score(y_true == k, y_pred == k) for k in range(K)]
    return {"p": p, "r": r, "f": f, "s": s, "ap": ap, "ar": ar, "oa": accuracy_score(y_true, y_pred),
            "cm": confusion_matrix(y_true, y_pred, labels=list(range(K))), "acc": one_vs_rest, "present": present}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, K, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, K, 300))
    m = compute_metrics(y_true, y_pred, CLASSES)
    ref = _reference(y_true, y_pred)
    assert m["OA"] == pytest.approx(ref["oa"])
    assert m["AP"] == pytest.approx(ref["ap"])
    assert m["AR"] == pytest.approx(ref["ar"])
    assert m["AF1"] == pytest.approx(2 * ref["ap"] * ref["ar"] / (ref["ap"] + ref["ar"]))
    assert m["confusion"] == ref["cm"].tolist()
    for k, name in enumerate(CLASSES):
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(ref["p"][k])
        assert pc["recall"] == pytest.approx(ref["r"][k])
        assert pc["f1"] == pytest.approx(ref["f"][k])
        assert pc["support"] == ref["s"][k]
        assert pc["accuracy"] == pytest.approx(ref["acc"][k])
    assert m["classes"] == list(CLASSES)
    assert m["absent_classes"] == []


def test_absent_class_is_null_and_left_out_of_macro_means():
    # BCCD-like: no basophils in the truth, but the model predicts some (errors that must still count).
    rng = np.random.default_rng(5)
    y_true = rng.integers(1, K, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, K, 200))
    assert (y_pred == 0).any()
    m = compute_metrics(y_true, y_pred, CLASSES)
    ref = _reference(y_true, y_pred)
    assert m["absent_classes"] == ["basophil"]
    b = m["per_class"]["basophil"]
    assert b["precision"] is None and b["recall"] is None and b["f1"] is None
    assert b["support"] == 0 and b["predicted"] == int((y_pred == 0).sum())
    assert b["accuracy"] == pytest.approx(ref["acc"][0])
    assert m["AP"] == pytest.approx(ref["ap"]) and m["AR"] == pytest.approx(ref["ar"])
    assert m["OA"] == pytest.approx(ref["oa"])
    json.dumps(m)  # JSON-ready: None -> null, no numpy scalars


def test_never_predicted_class_has_precision_zero_and_counts():
    y_true = ["neutrophil"] * 3 + ["monocyte"] * 2
    y_pred = ["neutrophil"] * 5
    m = compute_metrics(y_true, y_pred, ["monocyte", "neutrophil"])
    assert m["per_class"]["monocyte"]["precision"] == 0.0
    assert m["per_class"]["monocyte"]["recall"] == 0.0
    assert m["AP"] == pytest.approx((0 + 3 / 5) / 2)
    assert m["AR"] == pytest.approx((0 + 1) / 2)
    assert m["confusion"] == [[0, 2], [0, 3]]


def test_bad_labels_are_clear_errors():
    with pytest.raises(WbcError, match="platelet"):
        compute_metrics(["platelet"], ["neutrophil"], CLASSES)
    with pytest.raises(WbcError, match="no images"):
        compute_metrics([], [], CLASSES)
    with pytest.raises(WbcError, match="length"):
        compute_metrics([0, 1], [0], CLASSES)
