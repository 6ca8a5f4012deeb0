"""WBC segmentation on real images: outline Dice against hand-drawn masks, detection on BCCD fields, speed.

Usage:
    python benchmarks/segment_real.py --segwbc ../shared/data/segwbc-dev --bccd ../shared/data/bccd-dev
        [--mpp-d1 0.15 --mpp-d2 0.086 --mpp-bccd 0.074] [--out benchmarks/results/segment_real.json]

* **Outlines** (segwbc-dev: ``d1`` Tecom crops ~0.15 um/px, ``d2`` CellaVision crops ~0.086 um/px;
  masks 0 background, 128 cytoplasm, 255 nucleus): each crop is segmented with ``segment_wbcs`` at the
  given um/px (what ``wbc-deploy segment --mpp`` and ``count`` run). The predicted cell is the one
  that overlaps the drawn cell most (none: Dice 0); cell Dice compares it with mask > 0, nucleus Dice
  its nucleus with mask == 255. Reported per set as mean, median and 10th percentile, separately for
  odd- and even-numbered images: the segmentation's parameters were chosen looking at odd-numbered
  images, so the even-numbered ones are the held-out estimate.
* **Detection** (bccd-dev: 640 x 480 smear photographs with Pascal-VOC WBC boxes, ~0.074 um/px): a
  detection matches a box when its centroid lies inside it (one-to-one, maximum matching, as
  segment_bccd.py). Recall and precision of all detections, and without the cells that touch the
  image border (``edge`` = 1 in ``segment``'s CSV; what ``count`` drops on plain images) against all
  boxes, and the same detections against the boxes that do not reach the border (a box within
  ``EDGE_BOX_PX`` of it, or within ``EDGE_BOX_UM`` for hand-drawn boxes' slack, is a cell the photograph
  cuts). Boxes under ``MIN_BOX_UM`` on a side are annotation errors (no WBC is 2 um) and are left out.
* **count on the photographs**: ``count`` with the bundled model over the same images (plain images, so
  edge cells are dropped), its cells against the whole plausible boxes (the strict rule).
* **Speed**: seconds per image, per megapixel and per WBC found (single thread, this process).

Writes a JSON and a Markdown table (same name, .md) with the machine and its load average. Only for
development: nothing from the data sets is copied anywhere, and tests never read them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from segment_bccd import match, wbc_boxes  # noqa: E402
from slide_throughput import machine  # noqa: E402

from wbc_deploy.segment import SegmentParams, segment_wbcs  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def outline_scores(folder: Path, mpp: float) -> list[dict]:
    """Per image: cell and nucleus Dice of the best-overlapping predicted cell, area ratio, seconds."""
    rows = []
    for path in sorted((folder / "images").glob("*.bmp")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        mask = np.asarray(Image.open(folder / "masks" / (path.stem + ".png")))
        if mask.ndim == 3:
            mask = mask[..., 0]
        cell, nucleus = mask > 0, mask == 255
        t0 = time.perf_counter()
        seg = segment_wbcs(rgb, mpp)
        dt = time.perf_counter() - t0
        overlap = np.bincount(seg.labels[cell], minlength=len(seg.cells) + 1)
        overlap[0] = 0
        row = {"image": path.stem, "seconds": dt, "mpx": rgb.shape[0] * rgb.shape[1] / 1e6, "n_cells": len(seg.cells)}
        if overlap.max() == 0:
            row.update(cell_dice=0.0, nucleus_dice=0.0, area_ratio=0.0)
        else:
            k = int(overlap.argmax())
            pred = seg.labels == k
            row.update(cell_dice=dice(pred, cell), nucleus_dice=dice(seg.nuclei == k, nucleus),
                       area_ratio=float(pred.sum()) / float(cell.sum()))
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for key in ("cell_dice", "nucleus_dice"):
        v = np.array([r[key] for r in rows])
        out[key] = {"mean": float(v.mean()), "median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
                    "min": float(v.min())}
    out["area_ratio_median"] = float(np.median([r["area_ratio"] for r in rows]))
    return out


#: A BCCD box whose side lies within this many pixels of the image border is a cell cut by the border
#: (strict), or within this many micrometres (hand-drawn boxes have a few pixels of slack: a box 3-4 px
#: from the border around a nucleus that reaches it is a cut cell).
EDGE_BOX_PX = 1
EDGE_BOX_UM = 0.5
#: A box smaller than this (um) on a side is not a WBC (annotation error: 1 of the 177 boxes, 2.3 x 2.0 um).
MIN_BOX_UM = 4.0


def box_is_cut(box: tuple[float, float, float, float], width: int, height: int, tolerance_px: float = EDGE_BOX_PX) -> bool:
    """Whether a box (x0, y0, x1, y1; VOC pixel coordinates) reaches the image border (within ``tolerance_px``)."""
    x0, y0, x1, y1 = box
    return min(x0, y0, width - 1 - x1, height - 1 - y1) <= tolerance_px


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes: a cell's outline box against its annotated box
    (BCCD has no masks; an outline that leaks into glass or a red cell makes its box too big)."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def bccd_scores(folder: Path, mpp: float) -> dict:
    """Recall/precision on BCCD fields with and without cells cut by the image border; seconds per image."""
    images = sorted((folder / "images").glob("*.jpg"))
    tolerances = {"strict": EDGE_BOX_PX, "slack": EDGE_BOX_UM / mpp}
    n_true = n_det = n_det_inner = tp = tp_inner = dropped_boxes = 0
    n_whole = dict.fromkeys(tolerances, 0)
    tp_whole = dict.fromkeys(tolerances, 0)
    secs, mpx, box_ious = [], 0.0, []
    for path in images:
        boxes = wbc_boxes(folder / "annotations" / (path.stem + ".xml"))
        plausible = [b for b in boxes if min(b[2] - b[0], b[3] - b[1]) * mpp >= MIN_BOX_UM]
        dropped_boxes += len(boxes) - len(plausible)
        boxes = plausible
        rgb = np.asarray(Image.open(path).convert("RGB"))
        t0 = time.perf_counter()
        seg = segment_wbcs(rgb, mpp)
        secs.append(time.perf_counter() - t0)
        mpx += rgb.shape[0] * rgb.shape[1] / 1e6
        pts = [(c.x, c.y) for c in seg.cells]
        inner = [(c.x, c.y) for c in seg.cells if not c.edge]
        box_ious += [box_iou(c.bbox, b) for c in seg.cells for b in boxes if b[0] <= c.x <= b[2] and b[1] <= c.y <= b[3]]
        n_true += len(boxes)
        n_det += len(pts)
        n_det_inner += len(inner)
        tp += match(pts, boxes)
        tp_inner += match(inner, boxes)
        for key, tol in tolerances.items():
            whole = [b for b in boxes if not box_is_cut(b, rgb.shape[1], rgb.shape[0], tol)]
            n_whole[key] += len(whole)
            tp_whole[key] += match(inner, whole)
    out = {"images": len(images), "true_wbc": n_true, "boxes_left_out_too_small": dropped_boxes,
           "with_edge_cells": {"detections": n_det, "matched": tp, "recall": tp / n_true, "precision": tp / max(1, n_det)},
           "without_edge_cells": {"detections": n_det_inner, "matched": tp_inner, "recall": tp_inner / n_true,
                                  "precision": tp_inner / max(1, n_det_inner)},
           "outline_box_iou": {"cells": len(box_ious), "median": float(np.median(box_ious)), "p10": float(np.percentile(box_ious, 10)),
                               "under_0_7": int(np.sum(np.array(box_ious) < 0.7))},
           "seconds_per_image_median": float(np.median(secs)), "seconds_total": float(np.sum(secs)),
           "ms_per_mpx": 1000 * float(np.sum(secs)) / mpx, "ms_per_wbc": 1000 * float(np.sum(secs)) / max(1, n_det)}
    for key in tolerances:
        out[f"without_edge_cells_or_cut_boxes_{key}"] = {
            "true_wbc": n_whole[key], "detections": n_det_inner, "matched": tp_whole[key],
            "recall": tp_whole[key] / max(1, n_whole[key]), "precision": tp_whole[key] / max(1, n_det_inner)}
    return out


def bccd_count_scores(folder: Path, mpp: float) -> dict:
    """``count`` (the bundled model, plain images at ``mpp``) over the BCCD photographs: the cells it counts
    against the plausible boxes that do not reach the border (strict rule), and its wall-clock seconds."""
    import csv
    import tempfile

    from wbc_deploy.pipeline import CountOptions, count_slides

    out = Path(tempfile.mkdtemp(prefix="wbc-bccd-count-"))
    t0 = time.perf_counter()
    run = count_slides([folder / "images"], "default", out, CountOptions(quiet=True, mpp=mpp))
    seconds = time.perf_counter() - t0
    n_true = n_det = tp = 0
    for slide in run.slides:
        if slide.status != "ok":
            raise SystemExit(f"count failed on {slide.slide}: {slide.error}")
        boxes = [b for b in wbc_boxes(folder / "annotations" / (slide.slide + ".xml"))
                 if min(b[2] - b[0], b[3] - b[1]) * mpp >= MIN_BOX_UM]
        width, height = Image.open(slide.path).size
        whole = [b for b in boxes if not box_is_cut(b, width, height)]
        with open(out / f"{slide.slide}.cells.csv", newline="") as fh:
            pts = [(float(r["x"]) - 0.5, float(r["y"]) - 0.5) for r in csv.DictReader(fh)]  # continuous -> pixel centres
        n_true, n_det, tp = n_true + len(whole), n_det + len(pts), tp + match(pts, whole)
    return {"true_wbc": n_true, "detections": n_det, "matched": tp, "recall": tp / max(1, n_true),
            "precision": tp / max(1, n_det), "seconds": seconds}


BCCD_ROWS = (("with_edge_cells", "counted"), ("without_edge_cells", "dropped (as `count` does on plain images)"),
             ("without_edge_cells_or_cut_boxes_strict", f"dropped, and boxes within {EDGE_BOX_PX} px of the border left out"),
             ("without_edge_cells_or_cut_boxes_slack", f"dropped, and boxes within {EDGE_BOX_UM} um of the border left out"))


def markdown(record: dict) -> str:
    lines = ["# Segmentation on real images (`benchmarks/segment_real.py`)", "",
             f"Machine: {record['machine'].get('cpu_model', '?')}, {record['machine'].get('logical_cpus', '?')} logical CPUs; "
             f"load average at the end {record['machine'].get('load_avg_1m_end', 0):.1f} (other jobs shared the machine: "
             "times are pessimistic).", "",
             "## Outlines against hand-drawn masks (Dice; parameters chosen on odd-numbered images, even = held out)", "",
             "| set | um/px | images | cell mean | cell median | cell p10 | nucleus mean | nucleus median | nucleus p10 | ms/image | ms/Mpx |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in record["segwbc"].items():
        for part in ("odd", "even", "all"):
            p = s[part]
            lines.append(f"| {name} | {s['mpp']} | {part} ({p['n']}) | {p['cell_dice']['mean']:.3f} | {p['cell_dice']['median']:.3f} | "
                         f"{p['cell_dice']['p10']:.3f} | {p['nucleus_dice']['mean']:.3f} | {p['nucleus_dice']['median']:.3f} | "
                         f"{p['nucleus_dice']['p10']:.3f} | {1000 * s['seconds_per_image']:.0f} | {s['ms_per_mpx']:.0f} |")
    b = record.get("bccd")
    if b:
        lines += ["", f"## WBC detection on {b['images']} BCCD fields ({b['true_wbc']} boxed WBCs, {record['mpp']['bccd']} um/px)", "",
                  f"Boxes smaller than {MIN_BOX_UM:g} um on a side are not WBCs and are left out ({b['boxes_left_out_too_small']}). "
                  f"A cell is an edge cell when its outline comes within {SegmentParams().edge_outline_um:g} um of the border and its "
                  f"nucleus within {SegmentParams().edge_nucleus_um:g} um. The photographs' vignetting is evened out first "
                  "(`wbc_deploy/segment/illumination.py`).", "",
                  "| cells cut by the image border | boxes | detections | matched | recall | precision |", "|---|---:|---:|---:|---:|---:|"]
        for key, label in BCCD_ROWS:
            r = b[key]
            lines.append(f"| {label} | {r.get('true_wbc', b['true_wbc'])} | {r['detections']} | {r['matched']} | "
                         f"{r['recall']:.3f} | {r['precision']:.3f} |")
        c = record.get("bccd_count")
        if c:
            lines.append(f"| `count` on the photographs (bundled model; its cells) against boxes within {EDGE_BOX_PX} px left out "
                         f"| {c['true_wbc']} | {c['detections']} | {c['matched']} | {c['recall']:.3f} | {c['precision']:.3f} |")
        o = b.get("outline_box_iou")
        if o:
            lines += ["", f"Outlines (BCCD has boxes, no masks): each detected cell's outline box against the box it lies in, "
                      f"{o['cells']} cells: IoU median {o['median']:.3f}, 10th percentile {o['p10']:.3f}, "
                      f"{o['under_0_7']} under 0.7 (an outline leaking into glass or red cells)."]
        lines += ["", f"Speed: median {1000 * b['seconds_per_image_median']:.0f} ms per 640 x 480 field, "
                  f"{b['ms_per_mpx']:.0f} ms per Mpx, {b['ms_per_wbc']:.0f} ms per WBC found (one thread)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segwbc", type=Path, required=True, help="segwbc-dev folder (d1/, d2/)")
    ap.add_argument("--bccd", type=Path, help="bccd-dev folder (images/, annotations/)")
    ap.add_argument("--mpp-d1", type=float, default=0.15)
    ap.add_argument("--mpp-d2", type=float, default=0.086)
    ap.add_argument("--mpp-bccd", type=float, default=0.074)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "segment_real.json")
    args = ap.parse_args()

    record = {"mpp": {"d1": args.mpp_d1, "d2": args.mpp_d2, "bccd": args.mpp_bccd}, "segwbc": {}}
    for name, mpp in (("d1", args.mpp_d1), ("d2", args.mpp_d2)):
        rows = outline_scores(args.segwbc / name, mpp)
        odd = [r for r in rows if int(r["image"]) % 2 == 1]
        even = [r for r in rows if int(r["image"]) % 2 == 0]
        secs = float(np.sum([r["seconds"] for r in rows]))
        record["segwbc"][name] = {"mpp": mpp, "odd": summary(odd), "even": summary(even), "all": summary(rows),
                                  "seconds_per_image": secs / len(rows),
                                  "ms_per_mpx": 1000 * secs / float(np.sum([r["mpx"] for r in rows])),
                                  "worst_cell": sorted(((r["cell_dice"], r["image"]) for r in rows))[:5],
                                  "worst_nucleus": sorted(((r["nucleus_dice"], r["image"]) for r in rows))[:5]}
        for part in ("odd", "even", "all"):
            s = record["segwbc"][name][part]
            print(f"{name} {part:4s} ({s['n']:3d}): cell Dice mean {s['cell_dice']['mean']:.3f} median {s['cell_dice']['median']:.3f} "
                  f"p10 {s['cell_dice']['p10']:.3f} | nucleus mean {s['nucleus_dice']['mean']:.3f} median "
                  f"{s['nucleus_dice']['median']:.3f} p10 {s['nucleus_dice']['p10']:.3f} | area ratio {s['area_ratio_median']:.2f}")
    if args.bccd:
        b = record["bccd"] = bccd_scores(args.bccd, args.mpp_bccd)
        for key, _ in BCCD_ROWS:
            r = b[key]
            print(f"BCCD {key}: {r['detections']} detections, {r['matched']} of {r.get('true_wbc', b['true_wbc'])} boxes matched: "
                  f"recall {r['recall']:.3f} precision {r['precision']:.3f}")
        o = b["outline_box_iou"]
        print(f"BCCD outline box vs annotated box: IoU median {o['median']:.3f} p10 {o['p10']:.3f}, {o['under_0_7']} of {o['cells']} under 0.7")
        print(f"BCCD speed: median {1000 * b['seconds_per_image_median']:.0f} ms per field, {b['ms_per_mpx']:.0f} ms/Mpx, "
              f"{b['ms_per_wbc']:.0f} ms per WBC")
        c = record["bccd_count"] = bccd_count_scores(args.bccd, args.mpp_bccd)
        print(f"BCCD count (plain images): {c['detections']} counted, {c['matched']} of {c['true_wbc']} whole boxes matched: "
              f"recall {c['recall']:.3f} precision {c['precision']:.3f} ({c['seconds']:.1f} s)")
    record["machine"] = machine()
    record["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(record))
    print(f"wrote {args.out} and {args.out.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
