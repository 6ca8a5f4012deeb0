"""Compare a counted slide with its truth file (``<slide>.truth.csv``: ``x,y,label`` in level-0 px)."""
from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..classes import normalise_class_name
from ..errors import WbcError
from .result import TruthComparison


def truth_path_for(slide: Path) -> Path:
    """The truth file that lies beside a slide: ``dir/s1.svs`` -> ``dir/s1.truth.csv``."""
    return slide.with_name(f"{slide.name[: -len(slide.suffix) or None]}.truth.csv")


def read_truth(path: Path) -> tuple[np.ndarray, list[str]]:
    """Points (N x 2, level-0 px) and canonical labels of a truth CSV; WbcError if it is malformed."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise WbcError(f"cannot read truth file {path}: {exc.strerror or exc}") from None
    pts, labels = [], []
    for i, row in enumerate(rows, start=2):
        try:
            x, y, raw = float(row["x"]), float(row["y"]), row["label"]
        except (KeyError, TypeError, ValueError):
            raise WbcError(f"truth file {path} line {i}: expected columns x,y,label with numbers in x and y") from None
        pts.append((x, y))
        labels.append(normalise_class_name(raw) or raw.strip().lower())
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2), labels


def match_points(found: np.ndarray, truth: np.ndarray, radius: float) -> list[tuple[int, int]]:
    """One-to-one (found index, truth index) pairs closer than ``radius``, closest pairs first (deterministic)."""
    if len(found) == 0 or len(truth) == 0:
        return []
    pairs = cKDTree(found).sparse_distance_matrix(cKDTree(truth), radius, output_type="ndarray")
    if len(pairs) == 0:
        return []
    order = np.lexsort((pairs["j"], pairs["i"], pairs["v"]))
    used_f, used_t = set(), set()
    out = []
    for k in order:
        i, j = int(pairs["i"][k]), int(pairs["j"][k])
        if i in used_f or j in used_t:
            continue
        used_f.add(i)
        used_t.add(j)
        out.append((i, j))
    return sorted(out)


def compare_with_truth(found_xy: Iterable[tuple[float, float]], found_labels: list[str], truth_file: Path,
                       mpp: float, classes: list[str], radius_um: float,
                       region: Callable[[np.ndarray], np.ndarray] | None = None) -> TruthComparison:
    """Match counted cells to the truth within ``radius_um`` and tally per-class counts and agreement.

    ``region``: keeps the true cells of the area that was counted (N x 2 level-0 points -> bool).
    """
    truth_xy, truth_labels = read_truth(truth_file)
    if region is not None and len(truth_xy):
        keep = np.asarray(region(truth_xy), bool)
        truth_xy, truth_labels = truth_xy[keep], [lab for lab, k in zip(truth_labels, keep) if k]
    found = np.asarray(list(found_xy), dtype=np.float64).reshape(-1, 2)
    pairs = match_points(found, truth_xy, radius_um / mpp)
    truth_counts = {c: 0 for c in classes}
    unknown = 0
    for lab in truth_labels:
        if lab in truth_counts:
            truth_counts[lab] += 1
        else:
            unknown += 1
    counted = {c: 0 for c in classes}
    for lab in found_labels:
        counted[lab] = counted.get(lab, 0) + 1
    correct = {c: 0 for c in classes}
    for i, j in pairs:
        if found_labels[i] == truth_labels[j] and truth_labels[j] in correct:
            correct[truth_labels[j]] += 1
    return TruthComparison(n_truth=len(truth_labels), n_detected=len(found), n_matched=len(pairs),
                           truth_counts=truth_counts, counted=counted, correct=correct, unknown_labels=unknown)
