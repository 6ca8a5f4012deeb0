"""How fast a review page of N cells (default 2,000) opens in headless Chromium, inline vs folder thumbnails.

Usage:
    python benchmarks/review_page.py [--cells 2000] [--runs 5] [--out benchmarks/results/review_page.json]

It renders synthetic WBC crops with the project's cell renderer (``--distinct`` different ones, cycled
over the N cells: the browser decodes every tile's image separately either way), encodes them as the
pipeline does (80 px JPEG), writes the page twice (``images="inline"``: base64 in the HTML;
``"folder"``: ``<slide>.review/<cell_id>.jpg`` beside it), then, per mode and run, opens it from a
file:// URL in a fresh browser context of the system Chromium (Playwright) and records:

* ``ready_ms``: from navigation start to the page's ready mark (the galleries, differential and key
  handling are set up and the first frame with them is painted: ``window.wbcReviewReadyMs``);
* ``wall_ms``: the same seen from Python (``page.goto`` to the ready mark), browser IPC included;
* ``images_ms``: from navigation start until every thumbnail the first screen asked for is decoded;
* ``key_ms``: one reclassification by key press until the next frame (the live differential updated).

Medians over the runs are printed and written to JSON with the machine recorded. Not a test: the
figures depend on the machine and its load. Target: ready in under 2 s for 2,000 cells.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wbc_deploy.classes import CLASSES, UNIDENTIFIED  # noqa: E402
from wbc_deploy.explain.review import ReviewCell, encode_thumbnail, write_review_page  # noqa: E402
from wbc_deploy.files import atomic_write_text  # noqa: E402

#: A healthy differential, to give the page realistic section sizes.
MIX = {"neutrophil": 0.60, "lymphocyte": 0.30, "monocyte": 0.06, "eosinophil": 0.03, "basophil": 0.01}


def make_cells(n: int, distinct: int, seed: int = 0) -> tuple[list[ReviewCell], list[bytes]]:
    """n cells with labels drawn from MIX (5% unidentified), confidences in 0.3-1, and their JPEG thumbnails."""
    import numpy as np

    from wbc_deploy.data.synth_cells import render_cell_image

    rng = np.random.default_rng(seed)
    labels = rng.choice(list(MIX), size=n, p=list(MIX.values()))
    jpegs = {}
    for c in CLASSES:
        k = max(1, int(round(distinct * MIX[c])))
        jpegs[c] = [encode_thumbnail(render_cell_image(c, 96, rng)) for _ in range(k)]
    cells, thumbs = [], []
    for i, lab in enumerate(labels, start=1):
        conf = float(rng.uniform(0.3, 1.0))
        shown = UNIDENTIFIED if rng.uniform() < 0.05 else str(lab)
        other = CLASSES[(CLASSES.index(lab) + 1) % len(CLASSES)]
        cells.append(ReviewCell(i, shown, conf, other, round((1 - conf) * 0.8, 3)))
        pool = jpegs[str(lab)]
        thumbs.append(pool[i % len(pool)])
    return cells, thumbs


def measure(browser, url: str) -> dict:
    """One fresh context: open the page, wait for the ready mark and the first screen's images, press a key."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_selector("html[data-ready='1']", state="attached", timeout=60000)
    wall = (time.perf_counter() - t0) * 1000
    ready = page.evaluate("window.wbcReviewReadyMs")
    images = page.evaluate("""() => new Promise(resolve => {
        const imgs = [...document.querySelectorAll('.cell img')].filter(i => i.getAttribute('src'));
        Promise.all(imgs.map(i => i.decode().catch(() => null)))
          .then(() => resolve([performance.now(), imgs.length, imgs.filter(i => i.naturalWidth > 0).length]));
    })""")
    key = page.evaluate("""() => new Promise(resolve => {
        const t = performance.now();
        document.dispatchEvent(new KeyboardEvent('keydown', {key: 'n', bubbles: true}));
        requestAnimationFrame(() => resolve(performance.now() - t));
    })""")
    ok = page.evaluate("document.documentElement.dataset.corrected") is not None
    ctx.close()
    if images[2] != images[1]:
        raise SystemExit(f"{url}: only {images[2]} of {images[1]} thumbnails loaded")
    return {"ready_ms": ready, "wall_ms": wall, "images_ms": images[0], "images_requested": images[1], "key_ms": key, "ok": ok}


def machine() -> dict:
    try:
        from wbc_deploy.bench.machine import machine_info

        return machine_info()
    except Exception as exc:  # noqa: BLE001 - the record is still useful without it
        return {"cpu_count": os.cpu_count(), "note": f"machine_info unavailable ({exc})"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--distinct", type=int, default=250, help="distinct synthetic crops rendered (cycled over the cells)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "review_page.json")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from wbc_deploy.explain.browser import chromium_executable, launch_chromium

    t = time.perf_counter()
    cells, thumbs = make_cells(args.cells, args.distinct)
    print(f"{len(cells)} cells, {len(thumbs)} thumbnails ({time.perf_counter() - t:.1f} s to render and encode)")
    record = {"machine": machine(), "cells": args.cells, "distinct_crops": args.distinct, "runs": args.runs,
              "viewport": [1400, 900], "thumb_px": 80, "chromium": None, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = launch_chromium(p)
        record["chromium"] = {"executable": chromium_executable(), "version": browser.version}
        for mode in ("inline", "folder"):
            page_path = Path(tmp) / mode / "slide.review.html"
            page_path.parent.mkdir()
            t = time.perf_counter()
            write_review_page(page_path, "slide", list(CLASSES), cells, iter(thumbs), images=mode)
            write_s = time.perf_counter() - t
            folder = page_path.with_name("slide.review")
            size = page_path.stat().st_size + (sum(f.stat().st_size for f in folder.iterdir()) if folder.is_dir() else 0)
            measure(browser, page_path.as_uri())  # warm-up: the first page of a fresh browser pays its start-up
            runs = [measure(browser, page_path.as_uri()) for _ in range(args.runs)]
            med = {k: round(statistics.median(r[k] for r in runs), 1) for k in ("ready_ms", "wall_ms", "images_ms", "key_ms")}
            record["modes"][mode] = {"bytes": size, "html_bytes": page_path.stat().st_size, "write_s": round(write_s, 2),
                                     "median": med, "runs": runs}
            print(f"{mode:6s}: {size / 1e6:.1f} MB, written in {write_s:.2f} s; median ready {med['ready_ms']:.0f} ms "
                  f"(wall {med['wall_ms']:.0f} ms), first screen's images decoded {med['images_ms']:.0f} ms, "
                  f"reclassify by key {med['key_ms']:.1f} ms")
        browser.close()
    record["load_avg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
