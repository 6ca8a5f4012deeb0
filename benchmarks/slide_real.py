"""`wbc-deploy count` on a slide of real pixels: BCCD smear fields tiled into a pyramidal TIFF at 0.074 um/px.

Usage:
    python benchmarks/slide_real.py --bccd ../shared/data/bccd-dev --model MODEL.onnx [--cols 13 --rows 15]
        [--workers 2] [--tag after] [--profile] [--work DIR] [--out benchmarks/results/slide_real.json]

The slide is built once (cached in --work) the way a scanner stores one: the BCCD photographs (640 x 480,
~0.074 um/px; image k of the sorted folder at field k modulo its size) placed edge to edge in ``rows`` x
``cols`` fields (13 x 15 = 8320 x 7200 px, 59.9 Mpx), written as a tiled (256 px, deflate), pyramidal
(downsample 4 per level) generic TIFF whose resolution tags record the um/px (OpenSlide reads them as
``openslide.mpp-x``). ``<slide>.truth.csv`` holds the annotated WBC box centres (labels from labels.csv
where an image has one category). Nothing from the data set is written anywhere but --work.

Then, each in a fresh process (so peak RSS is per run):

* ``floor``: reading every level-0 pixel once with OpenSlide (``read_region`` in 1024 px calls), one
  thread and --workers threads; the faster is the floor;
* ``count``: ``count_slides`` with ``--truth`` after warming the backend (as slide_throughput.py does):
  wall and CPU seconds, WBC/s, per-stage seconds, detection recall/precision against the boxes;
  with --profile also the top functions by cumulative time (cProfile, all threads' work is not seen:
  run it with --workers 1 for a full profile).

``--tag`` names the run in the JSON (e.g. ``before`` with ``PYTHONPATH`` pointing at older code,
``after`` for this tree), so the figures of two code versions measured in the same session sit side
by side; each run records the load average (other jobs on the machine slow wall-clock figures).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from slide_throughput import cpu_seconds, machine, peak_rss_mib, task_floor  # noqa: E402

MPP = 0.074
FIELD = (640, 480)
TILE = 256


# --------------------------------------------------------------------------- building the slide


def wbc_boxes(xml_path: Path) -> list[tuple[float, float, float, float]]:
    """The WBC boxes (x0, y0, x1, y1) of a Pascal-VOC annotation file."""
    root = ET.parse(xml_path).getroot()
    out = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip().upper() == "WBC":
            b = obj.find("bndbox")
            out.append(tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out


def build_slide(bccd: Path, path: Path, cols: int, rows: int) -> dict:
    """Write the mosaic slide and its truth file (atomically); returns what it holds."""
    import tifffile
    from PIL import Image

    images = sorted((bccd / "images").glob("*.jpg"))
    if not images:
        raise SystemExit(f"error: no images/*.jpg under {bccd}")
    labels = {}
    if (bccd / "labels.csv").is_file():
        with open(bccd / "labels.csv", newline="") as fh:
            labels = {r["image"]: r["categories"] for r in csv.DictReader(fh)}
    fw, fh_ = FIELD
    width, height = cols * fw, rows * fh_
    mosaic = np.empty((height, width, 3), np.uint8)
    truth = []
    for k in range(rows * cols):
        img_path = images[k % len(images)]
        r, c = divmod(k, cols)
        rgb = np.asarray(Image.open(img_path).convert("RGB"))
        if rgb.shape[:2] != (fh_, fw):
            rgb = np.asarray(Image.fromarray(rgb).resize((fw, fh_)))
        mosaic[r * fh_:(r + 1) * fh_, c * fw:(c + 1) * fw] = rgb
        boxes = wbc_boxes(bccd / "annotations" / (img_path.stem + ".xml"))
        cats = [x for x in labels.get(img_path.stem, "").split(";") if x]
        for x0, y0, x1, y1 in boxes:
            label = cats[0] if len(cats) == 1 and len(boxes) == 1 else "unknown"
            truth.append((c * fw + (x0 + x1) / 2.0, r * fh_ + (y0 + y1) / 2.0, label))
    levels = [mosaic]
    while min(levels[-1].shape[:2]) >= 1000:
        levels.append(np.asarray(Image.fromarray(levels[-1]).reduce(4)))
    tmp = path.with_name(path.name + ".part")
    ppcm = 1e4 / MPP
    with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
        for i, lev in enumerate(levels):
            ds = 4 ** i
            tw.write(lev, tile=(TILE, TILE), photometric="rgb", compression="zlib", compressionargs={"level": 6},
                     resolution=(ppcm / ds, ppcm / ds), resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1,
                     description=f"BCCD mosaic {cols}x{rows} fields, level {i}, mpp={MPP * ds:.6g}", metadata=None,
                     maxworkers=2)
    truth_path = path.with_name(path.stem + ".truth.csv")
    with open(truth_path.with_name(truth_path.name + ".part"), "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["x", "y", "label"])
        for x, y, lab in sorted(truth, key=lambda t: (t[1], t[0])):
            w.writerow([f"{x:.1f}", f"{y:.1f}", lab])
    os.replace(truth_path.with_name(truth_path.name + ".part"), truth_path)
    os.replace(tmp, path)
    return {"width": width, "height": height, "fields": rows * cols, "images": len(images), "truth_wbc": len(truth)}


# --------------------------------------------------------------------------- child tasks


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (user, nice, system; /proc/stat), so the scan's worker
    processes count too: they are the forkserver's children, which ``RUSAGE_CHILDREN`` never sees. Only
    meaningful on an otherwise idle machine (the JSON records the load average)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return float("nan")
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


def task_count(slide: str, model: str, workers: int, batch_size: int, profile: bool) -> dict:
    """count_slides on the slide (backend warmed first), with the truth comparison; optionally profiled."""
    from wbc_deploy.pipeline import CountOptions, count_slides
    from wbc_deploy.runtime import open_backend

    out = tempfile.mkdtemp(prefix="wbc-bench-real-")
    backend = open_backend(model)
    s = int(backend.card.input_size)
    for _ in range(2):
        backend.predict(np.zeros((batch_size, 3, s, s), np.float32))
    opts = CountOptions(quiet=True, workers=workers, batch_size=batch_size, truth=True)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    c0, m0, t0 = cpu_seconds(), machine_cpu_seconds(), time.perf_counter()
    run = count_slides([slide], model, out, opts, backend=backend)
    wall, cpu, mcpu = time.perf_counter() - t0, cpu_seconds() - c0, machine_cpu_seconds() - m0
    top = []
    if prof is not None:
        import pstats

        prof.disable()
        st = pstats.Stats(prof)
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][3])[:25]
        top = [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "cum_s": round(v[3], 3), "own_s": round(v[2], 3),
                "calls": v[1]} for k, v in rows]
    r = run.slides[0]
    if r.status != "ok":
        raise SystemExit(f"count failed: {r.error}")
    t = r.truth
    return {"wall_s": wall, "cpu_s": cpu, "machine_cpu_s": mcpu, "n_wbc": r.n_wbc, "stage_s": r.stage_seconds, "tiles_total": r.tiles_total,
            "tiles_scanned": r.tiles_scanned, "windows": r.windows, "refined": r.refined, "peak_rss_mib": peak_rss_mib(),
            "truth_n": t.n_truth if t else None, "recall": t.recall if t else None,
            "precision": t.precision if t else None, "profile": top, "load_avg_1m": os.getloadavg()[0]}


def child(args: list[str]) -> None:
    task, params = args[0], json.loads(args[1])
    fn = {"count": task_count, "floor": task_floor}[task]
    print("RESULT " + json.dumps(fn(**params)))


def run_child(task: str, **params) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, json.dumps(params)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{task} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bccd", type=Path, required=True, help="the bccd-dev folder (images/, annotations/, labels.csv)")
    ap.add_argument("--model", required=True, help="exported .onnx model")
    ap.add_argument("--cols", type=int, default=13)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1, help="count runs (the fastest is kept; all are recorded)")
    ap.add_argument("--tag", default="after", help="name of this code version's run in the JSON")
    ap.add_argument("--profile", action="store_true", help="also profile one count run (cProfile, main thread)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wbc-bench-real")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "slide_real.json")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    slide = args.work / f"bccd-mosaic-{args.cols}x{args.rows}.tif"
    info_path = slide.with_suffix(".json")
    if not slide.exists() or not info_path.exists():
        t0 = time.perf_counter()
        info = build_slide(args.bccd, slide, args.cols, args.rows)
        info["build_s"] = round(time.perf_counter() - t0, 1)
        info_path.write_text(json.dumps(info))
        print(f"built {slide} ({info['width']} x {info['height']} px, {info['truth_wbc']} annotated WBCs) in {info['build_s']} s")
    info = json.loads(info_path.read_text())
    area = info["width"] * info["height"] / 1e6

    floors = [run_child("floor", slide=str(slide), tile=1024, threads=t) for t in sorted({1, args.workers})]
    floor = min(floors, key=lambda f: f["wall_s"])
    counts = [run_child("count", slide=str(slide), model=str(args.model), workers=args.workers,
                        batch_size=args.batch_size, profile=False) for _ in range(args.repeat)]
    best = min(counts, key=lambda c: c["wall_s"])
    prof = run_child("count", slide=str(slide), model=str(args.model), workers=args.workers,
                     batch_size=args.batch_size, profile=True)["profile"] if args.profile else []
    ratio = best["wall_s"] / floor["wall_s"]
    entry = {"tag": args.tag, "pythonpath": os.environ.get("PYTHONPATH", ""), "workers": args.workers,
             "floor": floors, "floor_s": floor["wall_s"], "count": counts, "count_s": best["wall_s"],
             "count_vs_floor": ratio, "wbc_per_s": best["n_wbc"] / best["wall_s"], "mpx_per_s": area / best["wall_s"],
             "profile": prof, "load_avg_1m_end": os.getloadavg()[0]}
    print(f"[{args.tag}] slide {info['width']} x {info['height']} px ({area:.1f} Mpx, {MPP} um/px), "
          f"{info['truth_wbc']} annotated WBCs")
    print(f"[{args.tag}] OpenSlide level-0 read: {floor['wall_s']:.2f} s ({floor['threads']} thread(s)); "
          f"count: {best['wall_s']:.2f} s = {ratio:.2f}x the read, {best['n_wbc']} WBCs, "
          f"{entry['wbc_per_s']:.1f} WBC/s, {entry['mpx_per_s']:.1f} Mpx/s, CPU {best['cpu_s']:.1f} s (this process and "
          f"its children; the whole machine {best['machine_cpu_s']:.1f} s), "
          f"tiles {best['tiles_scanned']}, peak RSS {best['peak_rss_mib']:.0f} MiB")
    if best.get("recall") is not None:
        print(f"[{args.tag}] against the boxes: recall {best['recall']:.3f}, precision {best['precision']:.3f}")
    print(f"[{args.tag}] stage seconds (read/detect/crop summed over workers): "
          + ", ".join(f"{k} {v:.2f}" for k, v in best["stage_s"].items()))
    for row in prof[:15]:
        print(f"    {row['cum_s']:8.2f} s cum {row['own_s']:8.2f} s own {row['calls']:7d}  {row['function']}")
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    record.setdefault("runs", {})[args.tag] = entry
    record["slide"] = {**info, "name": slide.name, "mpp": MPP, "tile": TILE, "compression": "deflate (zlib 6)"}
    record["machine"] = machine()
    record["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
