"""WBC detection on real smears: recall, precision and speed of ``segment_wbcs`` on a BCCD-style folder.

Usage:
    python benchmarks/segment_bccd.py FOLDER [--mpp 0.074] [--stain romanowsky|hed] [--set key=value ...]
                                             [--estimate-mpp] [--overlays DIR]

FOLDER has ``images/*.jpg`` and Pascal-VOC ``annotations/*.xml`` where ``<name>WBC</name>`` boxes mark
the white cells (the layout of the BCCD data set). A detection matches a true box when its centroid
lies inside the box; each box and each detection is matched at most once (a maximum bipartite
matching, so two detections in one box count one true positive and one false positive).
Only for development: nothing from FOLDER is copied anywhere, and tests never read it.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from wbc_deploy.segment import SegmentParams, estimate_mpp, segment_wbcs

#: skimage.color.rgb_from_hed rows (Ruifrok & Johnston): haematoxylin and eosin OD vectors.
HED_NUCLEUS_OD = (0.65, 0.70, 0.29)
HED_EOSIN_OD = (0.07, 0.99, 0.11)


def wbc_boxes(xml_path: Path) -> list[tuple[int, int, int, int]]:
    """The WBC boxes (x0, y0, x1, y1) of one Pascal-VOC annotation file."""
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip().upper() != "WBC":
            continue
        b = obj.find("bndbox")
        boxes.append(tuple(int(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def match(points: list[tuple[float, float]], boxes: list[tuple[int, int, int, int]]) -> int:
    """Number of matched (point, box) pairs: centroid inside the box, one-to-one, maximum matching."""
    if not points or not boxes:
        return 0
    big = 1e6
    cost = np.full((len(points), len(boxes)), big)
    for i, (x, y) in enumerate(points):
        for j, (x0, y0, x1, y1) in enumerate(boxes):
            if x0 <= x <= x1 and y0 <= y <= y1:
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                cost[i, j] = np.hypot(x - cx, y - cy)
    rows, cols = linear_sum_assignment(cost)
    return int(sum(cost[r, c] < big for r, c in zip(rows, cols)))


def parse_sets(items: list[str]) -> dict:
    """``key=value`` overrides of SegmentParams fields (floats)."""
    names = {f.name for f in dataclasses.fields(SegmentParams)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in names:
            raise SystemExit(f"error: unknown SegmentParams field {key!r} (known: {', '.join(sorted(names))})")
        out[key] = float(value)
    return out


def overlay(rgb: np.ndarray, seg, boxes, path: Path) -> None:
    """Save the image with cell outlines (green), nuclei (blue tint) and true boxes (yellow)."""
    from skimage.segmentation import find_boundaries
    from PIL import ImageDraw

    out = rgb.copy()
    out[seg.nuclei > 0] = (0.5 * out[seg.nuclei > 0] + [0, 0, 120]).astype(np.uint8)
    out[find_boundaries(seg.labels, mode="outer")] = (0, 200, 0)
    im = Image.fromarray(out)
    d = ImageDraw.Draw(im)
    for b in boxes:
        d.rectangle(b, outline=(255, 220, 0), width=2)
    for c in seg.cells:
        d.ellipse((c.x - 4, c.y - 4, c.x + 4, c.y + 4), fill=(255, 0, 0))
    im.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--mpp", type=float, default=0.074, help="micrometres per pixel of the photographs")
    ap.add_argument("--stain", choices=("romanowsky", "hed"), default="romanowsky",
                    help="stain vectors of the colour deconvolution (hed = skimage rgb2hed's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a SegmentParams field")
    ap.add_argument("--estimate-mpp", action="store_true", help="also report estimate_mpp per image")
    ap.add_argument("--overlays", type=Path, help="write overlay PNGs of failures to this folder (outside the repo)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    args = ap.parse_args(argv)

    images = sorted((args.folder / "images").glob("*.jpg"))
    if args.limit:
        images = images[: args.limit]
    if not images:
        print(f"error: no images/*.jpg under {args.folder}", file=sys.stderr)
        return 2
    overrides = parse_sets(args.set)
    if args.stain == "hed":
        overrides.update(nucleus_od=HED_NUCLEUS_OD, eosin_od=HED_EOSIN_OD)
    params = SegmentParams(**overrides)
    if args.overlays:
        args.overlays.mkdir(parents=True, exist_ok=True)

    tp = n_true = n_det = n_cut = tp_cut = 0
    times, mpps, failures = [], [], []
    for path in images:
        boxes = wbc_boxes(args.folder / "annotations" / (path.stem + ".xml"))
        rgb = np.asarray(Image.open(path).convert("RGB"))
        t0 = time.perf_counter()
        seg = segment_wbcs(rgb, args.mpp, params)
        times.append(time.perf_counter() - t0)
        points = [(c.x, c.y) for c in seg.cells]
        m = match(points, boxes)
        tp += m
        cut = [(c.x, c.y) for c in seg.cells if c.edge]
        n_cut += len(cut)
        tp_cut += m - match([(c.x, c.y) for c in seg.cells if not c.edge], boxes)
        n_true += len(boxes)
        n_det += len(points)
        if m < len(boxes) or m < len(points):
            failures.append((path.stem, len(boxes), len(points), m))
            if args.overlays:
                overlay(rgb, seg, boxes, args.overlays / f"{path.stem}.png")
        if args.estimate_mpp:
            est = estimate_mpp(rgb)
            mpps.append(np.nan if est is None else est)

    recall = tp / n_true if n_true else float("nan")
    precision = tp / n_det if n_det else float("nan")
    ms = 1000 * np.asarray(times)
    mp = rgb.shape[0] * rgb.shape[1] / 1e6
    print(f"images {len(images)}  true WBC boxes {n_true}  detections {n_det}  matched {tp}")
    print(f"recall {recall:.3f}  precision {precision:.3f}  (centroid inside an unmatched true box)")
    inner = n_det - n_cut
    if inner:
        print(f"precision of detections not cut by the image border {(tp - tp_cut) / inner:.3f} "
              f"({n_cut} detections touch the border, {tp_cut} of them matched; the annotations box few cut cells)")
    print(f"time per image: median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, "
          f"max {ms.max():.1f} ms  ({np.median(ms) / mp:.1f} ms per megapixel at {args.mpp} um/px)")
    if args.estimate_mpp:
        a = np.asarray(mpps)
        ok = a[np.isfinite(a)]
        if ok.size:
            err = np.abs(ok / args.mpp - 1)
            print(f"estimate_mpp: {ok.size}/{a.size} images, median {np.median(ok):.4f} um/px, "
                  f"median |error| {100 * np.median(err):.1f}%, within 15%: {np.mean(err <= 0.15):.1%}")
        else:
            print("estimate_mpp: no estimate on any image")
    if failures:
        print(f"images with a miss or an extra detection ({len(failures)}): image true/detected/matched")
        for stem, nt, nd, m in failures:
            print(f"  {stem}  {nt}/{nd}/{m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
