"""The classic differential (``--max-wbc``) against a whole count, and the zoning against the synthetic truth.

Usage:
    python benchmarks/differential.py [--model MODEL.onnx] [--width 16384 --height 6144 --mpp 0.5 --cells 1200]
        [--max-wbc 100] [--workers 2] [--work DIR] [--out benchmarks/results/differential.json]

It synthesises a zoned smear once (``synth slide --zones``: thick end, monolayer, feathered edge; cached
in --work), then:

* zoning: :func:`wbc_deploy.pipeline.zones.zone_slide` against the designed zones, the share of the
  smear's area where they agree (target >= 90%), per zone too;
* ``count --area all``, every WBC of the slide (the whole-slide count), and ``count`` of the monolayer
  (the default area): wall seconds, tiles read, area read;
* ``count --max-wbc N``, twice (1 and ``--workers`` workers): exactly N cells, byte-identical
  cells.csv, and the fraction of the whole-slide count's (and the monolayer count's) tiles, area and time.

Without ``--model`` it writes a tiny linear ONNX classifier (mean colour -> 5 classes; tests/test_count.py's),
so the figures are the scan's, not a real model's inference. Not a test: figures depend on the machine
and its load (recorded).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def linear_model(path: Path) -> Path:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_count import write_linear_model

    return write_linear_model(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--height", type=int, default=6144)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--cells", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-wbc", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "wbc-bench-differential"))
    ap.add_argument("--out", default=str(HERE / "results" / "differential.json"))
    args = ap.parse_args()

    import numpy as np

    from wbc_deploy.bench.machine import load_average, machine_info
    from wbc_deploy.card import ModelCard
    from wbc_deploy.classes import CLASSES
    from wbc_deploy.pipeline import CountOptions, count_slides
    from wbc_deploy.pipeline.plan import plan_scan, thumbnail_size
    from wbc_deploy.pipeline.scale import thumbnail
    from wbc_deploy.pipeline.zones import ZONES, zone_slide
    from wbc_deploy.slide import open_slide
    from wbc_deploy.slide.synth import SmearZones, build_slide_scene, write_synthetic_slide

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    slide = work / f"zoned-{args.width}x{args.height}-{args.mpp}-{args.cells}-{args.seed}.svs"
    if not slide.exists():
        t0 = time.perf_counter()
        write_synthetic_slide(slide, args.width, args.height, args.cells, mpp=args.mpp, seed=args.seed, zones=SmearZones())
        print(f"synthesised {slide.name} in {time.perf_counter() - t0:.0f} s")
    model = Path(args.model) if args.model else linear_model(work / "linear.onnx")

    # zoning vs the designed zones
    t0 = time.perf_counter()
    with open_slide(slide) as r:
        thumb = thumbnail(r, thumbnail_size(r.dimensions, args.mpp))
        card = ModelCard(arch="bench", classes=list(CLASSES), input_size=32)
        z = zone_slide(r, thumb, plan_scan(r, args.mpp, card, CountOptions(), thumb))
    zoning_s = time.perf_counter() - t0
    truth = build_slide_scene(args.width, args.height, args.cells, mpp=args.mpp, seed=args.seed,
                              zones=SmearZones()).zone_map(z.zones.shape)
    tissue = truth > 0
    zoning = {"agreement": float((z.zones[tissue] == truth[tissue]).mean()), "seconds": zoning_s,
              "per_zone": {ZONES[c]: float((z.zones[truth == c] == c).mean()) for c in (1, 2, 3)},
              "layer_absorbance": z.layer_absorbance, "calibration_fields": z.fields_used,
              "zone_mm2": {ZONES[c]: z.area_mm2(c) for c in (1, 2, 3)}}
    print(f"zoning: agrees with the designed zones on {100 * zoning['agreement']:.1f}% of the smear "
          f"({', '.join(f'{k} {100 * v:.1f}%' for k, v in zoning['per_zone'].items())}) in {zoning_s:.1f} s")

    def count(name: str, **kw) -> dict:
        out = work / name
        t = time.perf_counter()
        run = count_slides([slide], model, out, CountOptions(quiet=True, **kw))
        wall = time.perf_counter() - t
        s = run.slides[0]
        if s.status != "ok":
            raise SystemExit(f"{name}: {s.error}")
        return {"wall_s": wall, "n_wbc": s.n_wbc, "tiles_total": s.tiles_total, "tiles_scanned": s.tiles_scanned,
                "area": s.area, "area_mm2": s.area_mm2, "wbc_per_mm2": s.wbc_per_mm2, "stopped_early": s.stopped_early,
                "cells_csv": (out / f"{slide.stem}.cells.csv").read_bytes()}

    whole = count("all", workers=args.workers, area="all")
    full = count("full", workers=args.workers)
    short = count("max", workers=args.workers, max_wbc=args.max_wbc)
    again = count("max-1worker", workers=1, max_wbc=args.max_wbc)
    identical = short["cells_csv"] == again["cells_csv"]
    for r in (whole, full, short, again):
        r.pop("cells_csv")
    result = {
        "slide": {"width": args.width, "height": args.height, "mpp": args.mpp, "cells": args.cells, "seed": args.seed,
                  "zones": "SmearZones() defaults"},
        "model": str(model) if args.model else "tiny linear ONNX (tests/test_count.py)",
        "zoning": zoning, "whole_slide": whole, "monolayer": full, "max_wbc": {"n": args.max_wbc, **short},
        "max_wbc_deterministic_across_workers": identical,
        "fraction_of_whole_slide": {"tiles": short["tiles_scanned"] / whole["tiles_scanned"],
                                    "area": short["area_mm2"] / whole["area_mm2"], "time": short["wall_s"] / whole["wall_s"]},
        "fraction_of_monolayer": {"tiles": short["tiles_scanned"] / full["tiles_scanned"],
                                  "area": short["area_mm2"] / full["area_mm2"], "time": short["wall_s"] / full["wall_s"]},
        "machine": machine, "load_avg_1m_end": load_average(),
    }
    for name, r in (("whole slide (--area all)", whole), ("monolayer (default)", full)):
        print(f"count of the {name}: {r['n_wbc']} WBCs, {r['tiles_scanned']} of {r['tiles_total']} tiles, "
              f"{r['area_mm2']:.2f} mm2, {r['wall_s']:.1f} s")
    f, g = result["fraction_of_whole_slide"], result["fraction_of_monolayer"]
    print(f"--max-wbc {args.max_wbc}: {short['n_wbc']} WBCs (stopped early: {short['stopped_early']}), "
          f"{short['tiles_scanned']} tiles, {short['area_mm2']:.2f} mm2, {short['wall_s']:.1f} s: of the whole-slide count "
          f"{100 * f['tiles']:.0f}% of the tiles, {100 * f['area']:.0f}% of the area, {100 * f['time']:.0f}% of the time; "
          f"of the monolayer count {100 * g['tiles']:.0f}%, {100 * g['area']:.0f}%, {100 * g['time']:.0f}%; "
          f"byte-identical with 1 worker: {identical}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
