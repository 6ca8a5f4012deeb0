"""Scale estimation on real smears: how often and how well ``estimate_mpp`` answers on a BCCD-style folder.

Usage:
    python benchmarks/estimate_mpp_bccd.py FOLDER [--limit N] [--list]

FOLDER has ``images/*.jpg`` and Pascal-VOC ``annotations/*.xml`` with ``<name>RBC</name>`` boxes (the
layout of the BCCD data set). Reference diameter of an image: the median of ((x1-x0)+(y1-y0))/2 over
its RBC boxes that keep 2 px clear of the image border; the global reference is the median over the
images (BCCD: 104.5 px, i.e. 7.5 / 104.5 = 0.0718 um/px). An estimate is judged against both (within
15%). Boxes are drawn loosely and around overlapping, deformed cells, so the per-image reference is noisy.
Only for development: nothing from FOLDER is copied anywhere, and tests never read it.
"""
from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from wbc_deploy.segment import RBC_DIAMETER_UM, estimate_mpp


def rbc_diameter(xml_path: Path, margin: float = 2.0) -> float:
    """Median box diameter (px) of the RBCs of one annotation file clear of the border; NaN if none."""
    root = ET.parse(xml_path).getroot()
    w = float(root.findtext("size/width") or 0)
    h = float(root.findtext("size/height") or 0)
    sizes = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip().upper() != "RBC":
            continue
        b = obj.find("bndbox")
        x0, y0, x1, y1 = (float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x0 < margin or y0 < margin or x1 > w - margin or y1 > h - margin:
            continue
        sizes.append(((x1 - x0) + (y1 - y0)) / 2)
    return float(np.median(sizes)) if sizes else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--limit", type=int, default=0, help="only the first N images")
    ap.add_argument("--list", action="store_true", help="print every image's estimate and reference")
    args = ap.parse_args(argv)

    images = sorted((args.folder / "images").glob("*.jpg"))[: args.limit or None]
    if not images:
        print(f"error: no images/*.jpg under {args.folder}", file=sys.stderr)
        return 2
    est, ref, times = [], [], []
    for path in images:
        ref.append(rbc_diameter(args.folder / "annotations" / (path.stem + ".xml")))
        rgb = np.asarray(Image.open(path).convert("RGB"))
        t0 = time.perf_counter()
        e = estimate_mpp(rgb)
        times.append(time.perf_counter() - t0)
        est.append(np.nan if e is None else e)
        if args.list:
            print(f"{path.stem}  estimate {'-' if e is None else f'{e:.4f}'}  "
                  f"reference {RBC_DIAMETER_UM / ref[-1]:.4f} um/px")
    est, ref_mpp = np.asarray(est), RBC_DIAMETER_UM / np.asarray(ref)
    made = np.isfinite(est)
    glob = RBC_DIAMETER_UM / np.nanmedian(ref)
    print(f"images {len(images)}  estimates made {made.sum()}  declined {(~made).sum()} "
          f"({np.mean(~made):.1%})  global reference {glob:.4f} um/px")
    if made.any():
        e = est[made]
        per = made & np.isfinite(ref_mpp)
        print(f"of the estimates made: within 15% of {glob:.4f}: {np.mean(np.abs(e / glob - 1) <= 0.15):.1%}; "
              f"within 15% of the image's own reference: {np.mean(np.abs(est[per] / ref_mpp[per] - 1) <= 0.15):.1%} "
              f"(of {per.sum()} with RBC boxes)")
        print(f"estimates: median {np.median(e):.4f} um/px, p5 {np.percentile(e, 5):.4f}, p95 {np.percentile(e, 95):.4f}")
    ms = 1000 * np.asarray(times)
    print(f"time per image: median {np.median(ms):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms, max {ms.max():.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
