"""Confidence calibration (numpy/SciPy, torch-free): temperature scaling, ECE, the unidentified rule.

* **Temperature scaling** (Guo et al., "On calibration of modern neural networks", ICML 2017): one
  scalar T > 0 divides the logits before the softmax; it is fitted on the validation split by minimising
  the negative log-likelihood, so probabilities match observed accuracy without changing any arg-max.
  It is stored in the model card and applied by every runtime (:mod:`wbc_deploy.runtime.base`).
* **ECE** (expected calibration error): the confidence-weighted gap between confidence and accuracy
  over 15 equal-width confidence bins, as in Guo et al.
* **Unidentified**: a cell whose calibrated top probability is below the card's
  ``confidence_threshold`` is reported as ``unidentified`` (CellaVision's term), kept in the per-cell
  output with its probabilities and left out of the differential.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Default threshold on the calibrated top probability below which ``count`` says ``unidentified``:
#: a cell the model gives less than even odds to its best class.
DEFAULT_THRESHOLD: float = 0.5
ECE_BINS: int = 15


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, labels: Sequence[int]) -> float:
    """The temperature minimising the NLL of ``labels`` under softmax(logits / T), T in [0.05, 20]."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t))[np.arange(len(y)), y].mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / float(temperature)))


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width bins of the top probability (0 for an empty set)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return 0.0
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


def unidentified_summary(probs: np.ndarray, labels: Sequence[int], threshold: float | None) -> dict[str, Any]:
    """The share of cells below ``threshold`` and the overall accuracy of the others (the identified)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return {"threshold": threshold, "unidentified_rate": 0.0, "oa_identified": None, "n_identified": 0}
    keep = np.ones(len(y), bool) if threshold is None else p.max(axis=1) >= float(threshold)
    correct = p.argmax(axis=1) == y
    return {
        "threshold": threshold,
        "unidentified_rate": float(1.0 - keep.mean()),
        "n_identified": int(keep.sum()),
        "oa_identified": float(correct[keep].mean()) if keep.any() else None,
    }


def calibration_report(logits: np.ndarray, labels: Sequence[int], temperature: float, threshold: float | None) -> dict[str, Any]:
    """ECE before and after scaling by ``temperature``, and the unidentified summary at ``threshold``."""
    raw = probabilities(logits)
    cal = probabilities(logits, temperature)
    return {
        "n": int(len(labels)),
        "ece_uncalibrated": expected_calibration_error(raw, labels),
        "ece_calibrated": expected_calibration_error(cal, labels),
        **unidentified_summary(cal, labels, threshold),
    }
