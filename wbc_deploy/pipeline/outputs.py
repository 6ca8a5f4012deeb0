"""Output files of a count run: cells.csv, summary.csv, GeoJSON and the truth comparison (all atomic)."""
from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..classes import COLOURS, UNIDENTIFIED
from .result import SlideResult, TruthComparison
from ..files import AtomicWriter, atomic_write_text
from .store import StoredCell

SUMMARY_NAME = "summary.csv"
REQUIRED_SUMMARY = ("slide", "status", "error", "n_wbc")
SUMMARY_TAIL = ("mean_confidence", "seconds", "backend")
#: Extra summary columns after the required ones.
SUMMARY_EXTRAS = ("mpp", "mpp_source", "tiles_total", "tiles_scanned", "truth_n", "detection_recall", "detection_precision",
                  "model_sha256", "settings_sha256")


def cells_header(classes: list[str]) -> list[str]:
    """cells.csv columns: ``cell_id,x,y,area_um2,label,confidence`` then ``p_<class>`` per class.

    x, y: the cell's centroid in level-0 pixels, continuous (pixel (i, j) spans [i, i+1) x [j, j+1));
    area_um2: the segmented cell (nucleus and cytoplasm); confidence: the (calibrated) top class probability,
    the probability of ``label`` unless ``label`` is ``unidentified`` (confidence below the threshold).
    """
    return ["cell_id", "x", "y", "area_um2", "label", "confidence", *[f"p_{c}" for c in classes]]


def summary_header(classes: list[str]) -> list[str]:
    """summary.csv columns: required, counts, differential, timing/backend, then the extras.

    ``n_wbc`` is every WBC detected; ``n_unidentified`` those below the confidence threshold; ``n_counted``
    the rest, the denominator of every ``pct_<class>``.
    """
    return [*REQUIRED_SUMMARY, *[f"n_{c}" for c in classes], "n_unidentified", "n_counted", *[f"pct_{c}" for c in classes],
            *SUMMARY_TAIL, *SUMMARY_EXTRAS]


def label_of(probs: list[float], classes: list[str], threshold: float | None = None) -> tuple[str, float]:
    """Predicted class (first maximum) and its probability; ``unidentified`` when that is below ``threshold``."""
    i = int(np.argmax(probs))
    conf = float(probs[i])
    if threshold is not None and conf < threshold:
        return UNIDENTIFIED, conf
    return classes[i], conf


def write_cells_csv(path: Path, cells: Iterable[StoredCell], classes: list[str],
                    threshold: float | None = None) -> tuple[dict[str, int], float | None]:
    """Stream ``cells`` (in their final order) to ``path`` atomically, ids 1..n; returns (counts, mean confidence).

    ``counts`` has every class and ``unidentified`` (cells whose confidence is below ``threshold``).
    """
    counts = {c: 0 for c in classes}
    counts[UNIDENTIFIED] = 0
    conf_sum, n = 0.0, 0
    with AtomicWriter(path) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cells_header(classes))
        for cell in cells:
            n += 1
            label, conf = label_of(cell.probs, classes, threshold)
            counts[label] += 1
            conf_sum += conf
            w.writerow([n, f"{cell.x:.1f}", f"{cell.y:.1f}", f"{cell.area_um2:.2f}", label, f"{conf:.6f}",
                        *[f"{p:.6f}" for p in cell.probs]])
    return counts, (conf_sum / n if n else None)


def _rgb(colour: str) -> list[int]:
    h = colour.lstrip("#")
    return [int(h[i : i + 2], 16) for i in (0, 2, 4)]


#: Namespace of the GeoJSON feature ids (:func:`cell_uuid`); fixed forever, or ids change across versions.
CELL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "wbc-deploy:cell")


def cell_uuid(slide: str, cell_id: int, x: float | str, y: float | str) -> str:
    """The GeoJSON ``id`` of a cell: a UUID (version 5) of the slide name, cell id and level-0 centre.

    x and y enter as cells.csv writes them (one decimal), so ``recount`` recomputes the same id from
    ``DIR/<slide>.cells.csv`` alone; reruns of the same slide with the same options give the same cells,
    hence the same ids, and a QuPath export is matched back to its cells by them.
    """
    xs = x if isinstance(x, str) else f"{x:.1f}"
    ys = y if isinstance(y, str) else f"{y:.1f}"
    return str(uuid.uuid5(CELL_NAMESPACE, f"{slide}\n{int(cell_id)}\n{xs}\n{ys}"))


def _ring_geometry(outline) -> dict | None:
    ring = [[float(x), float(y)] for x, y in (outline or [])]
    return {"type": "Polygon", "coordinates": [ring]} if len(ring) >= 4 else None


def write_geojson(path: Path, cells: Iterable[StoredCell], classes: list[str], threshold: float | None = None,
                  slide: str = "") -> int:
    """A GeoJSON FeatureCollection in QuPath's object format (QuPath >= 0.4 reads and writes it), streamed, atomic.

    Each feature: ``id`` a UUID stable across reruns (:func:`cell_uuid`); ``geometry`` the cell outline
    (a point if none) in level-0 pixels; ``properties.objectType`` ``detection``, or ``cell`` with a
    feature-level ``nucleusGeometry`` (where QuPath puts it) when the cell carries a ``nucleus_outline``;
    ``classification = {name, color: [r, g, b]}``; ``measurements`` a map of numbers (cell_id,
    confidence, area_um2, p_<class>).
    """
    n = 0
    with AtomicWriter(path) as fh:
        fh.write('{"type":"FeatureCollection","features":[\n')
        for cell in cells:
            label, conf = label_of(cell.probs, classes, threshold)
            n += 1
            geometry = _ring_geometry(cell.outline) or {"type": "Point", "coordinates": [cell.x, cell.y]}
            nucleus = _ring_geometry(getattr(cell, "nucleus_outline", None))
            feature = {"type": "Feature", "id": cell_uuid(slide, n, cell.x, cell.y), "geometry": geometry}
            if nucleus is not None:
                feature["nucleusGeometry"] = nucleus
            feature["properties"] = {
                "objectType": "cell" if nucleus is not None else "detection",
                "name": f"{label} {n}",
                "classification": {"name": label, "color": _rgb(COLOURS.get(label, "#808080"))},
                "measurements": {"cell_id": n, "confidence": round(conf, 6), "area_um2": cell.area_um2,
                                 **{f"p_{c}": round(float(p), 6) for c, p in zip(classes, cell.probs)}},
            }
            fh.write(("," if n > 1 else "") + json.dumps(feature, separators=(",", ":")) + "\n")
        fh.write("]}\n")
    return n


def _fmt(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def summary_row(r: SlideResult, classes: list[str]) -> list[str]:
    """One summary.csv row (same column order as :func:`summary_header`)."""
    if r.previous_row is not None and r.status == "ok":
        return [r.previous_row.get(col, "") or "" for col in summary_header(classes)]
    ok = r.status == "ok"
    pct = r.percentages(classes)
    t = r.truth
    return [
        r.slide, r.status, " ".join(r.error.split()), str(r.n_wbc) if ok else "",
        *[str(r.counts.get(c, 0)) if ok else "" for c in classes],
        str(r.n_unidentified) if ok else "", str(r.n_counted) if ok else "",
        *[f"{pct[c]:.2f}" if ok else "" for c in classes],
        _fmt(r.mean_confidence, 4) if ok else "", f"{r.seconds:.2f}" if r.seconds else "", r.backend,
        _fmt(r.mpp, 4), r.mpp_source, str(r.tiles_total) if r.tiles_total else "", str(r.tiles_scanned) if r.tiles_total else "",
        str(t.n_truth) if t else "", _fmt(t.recall, 4) if t else "", _fmt(t.precision, 4) if t else "",
        r.model_sha256, r.settings_sha256,
    ]


def write_summary(path: Path, results: list[SlideResult], classes: list[str]) -> None:
    """Rewrite summary.csv atomically with one row per slide.

    Columns a finished slide's earlier row has beyond :func:`summary_header` (``recount``'s review columns)
    are kept after the others, so ``--resume`` does not drop a slide's review.
    """
    header = summary_header(classes)
    kept = [r.previous_row for r in results if r.previous_row is not None and r.status == "ok"]
    extra = list(dict.fromkeys(k for row in kept for k in row if k and k not in header))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header + extra)
    for r in results:
        prev = r.previous_row if r.previous_row is not None and r.status == "ok" else {}
        w.writerow(summary_row(r, classes) + [prev.get(k, "") or "" for k in extra])
    atomic_write_text(path, buf.getvalue())


def write_truth_comparison(path: Path, cmp: TruthComparison, classes: list[str]) -> None:
    """Truth vs counted per class (count and %), then an ``all`` row and a ``detection`` row, atomically.

    Per class: ``correct_n`` true cells of the class detected and labelled with it; ``recall`` =
    correct_n / truth_n, ``precision`` = correct_n / counted_n. ``all``: the same over every class.
    ``detection``: class-blind, ``correct_n`` = detections matched to a true cell within MATCH_UM,
    with detection recall and precision.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "truth_n", "truth_pct", "counted_n", "counted_pct", "diff_pct", "correct_n", "recall", "precision"])
    nt = sum(cmp.truth_counts.values())
    nc = sum(cmp.counted.values())

    def ratio(a: int, b: int) -> str:
        return f"{a / b:.4f}" if b else ""

    for c in classes:
        t, k, ok = cmp.truth_counts.get(c, 0), cmp.counted.get(c, 0), cmp.correct.get(c, 0)
        tp = 100.0 * t / nt if nt else 0.0
        cp = 100.0 * k / nc if nc else 0.0
        w.writerow([c, t, f"{tp:.2f}", k, f"{cp:.2f}", f"{cp - tp:+.2f}", ok, ratio(ok, t), ratio(ok, k)])
    w.writerow(["all", nt, "100.00", nc, "100.00", "+0.00", cmp.n_correct, ratio(cmp.n_correct, nt), ratio(cmp.n_correct, nc)])
    w.writerow(["detection", cmp.n_truth, "", cmp.n_detected, "", "", cmp.n_matched, ratio(cmp.n_matched, cmp.n_truth),
                ratio(cmp.n_matched, cmp.n_detected)])
    atomic_write_text(path, buf.getvalue())
