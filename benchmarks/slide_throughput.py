"""Slide throughput of `wbc-deploy count`, end to end, on synthetic slides of two sizes, against the I/O floor.

Usage:
    python benchmarks/slide_throughput.py --model MODEL.onnx [--sizes 8192,16384] [--wbc-per-mpx 1.0]
        [--workers N] [--executor thread|process|both] [--work DIR] [--out benchmarks/results/slide_throughput.json]

For each size (square, level 0 at 0.25 um/px; the two sizes should be 4x apart in area) it synthesises a
slide once (cached in --work), then runs, each in a fresh process so peak RSS is per run:

* ``count``: the whole pipeline (``count_slides``, its backend warmed up first with two batches, as
  throughput benchmarks do: ONNX Runtime's arena and speed settle over its first runs) -> seconds per stage (read, detect, crop: summed over
  the workers; infer, write: the main thread), wall and CPU seconds, WBCs/s, megapixels/s, peak RSS,
  and the stage that bounds the run;
* ``scan``: the scan stage alone (reading + WBC detection, no crops, no inference) with the same
  workers -> its area rate (level-0 megapixels of slide per second);
* ``floor``: reading every level-0 pixel once with OpenSlide ``read_region`` in tile-sized calls and
  doing nothing else, single-threaded and with the same number of threads; the faster is the floor.

It prints the scan-vs-floor ratio (target >= 2x), the peak-RSS growth for the area growth (target
<= 1.3x for 4x) and the time growth (linear: ~4x), and writes a JSON with the machine recorded.
Not a test: the figures depend on the machine and its load (recorded as the load average).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MPP = 0.25
HERE = Path(__file__).resolve().parent


def peak_rss_mib() -> float:
    """Peak resident set size of this process and of its finished children (MiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def cpu_seconds() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


# --------------------------------------------------------------------------- child tasks


def task_count(slide: str, model: str, workers: int, executor: str, batch_size: int) -> dict:
    """The whole pipeline on one slide, after warming the backend (its memory and speed reach steady state)."""
    import numpy as np

    from wbc_deploy.pipeline import CountOptions, count_slides
    from wbc_deploy.runtime import open_backend

    out = tempfile.mkdtemp(prefix="wbc-bench-out-")
    backend = open_backend(model)
    s = int(backend.card.input_size)
    t0 = time.perf_counter()
    for _ in range(2):  # ONNX Runtime allocates its arena over the first two runs of a shape
        backend.predict(np.zeros((batch_size, 3, s, s), np.float32))
    warmup = time.perf_counter() - t0
    c0, t0 = cpu_seconds(), time.perf_counter()
    run = count_slides([slide], model, out, CountOptions(quiet=True, workers=workers, executor=executor, batch_size=batch_size),
                       backend=backend)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    s = run.slides[0]
    if s.status != "ok":
        raise SystemExit(f"count failed on {slide}: {s.error}")
    return {"wall_s": wall, "cpu_s": cpu, "n_wbc": s.n_wbc, "stage_s": s.stage_seconds, "tiles_total": s.tiles_total,
            "tiles_scanned": s.tiles_scanned, "windows": s.windows, "refined": s.refined, "backend": s.backend,
            "backend_warmup_s": warmup, "batch_size": batch_size, "peak_rss_mib": peak_rss_mib()}


def _warm(_: int) -> int:
    import wbc_deploy.pipeline.detect  # noqa: F401

    time.sleep(0.2)  # keep each worker busy long enough that every worker gets started
    return os.getpid()


def task_scan(slide: str, workers: int, executor: str) -> dict:
    """The scan stage alone: thumbnail, plan, then read + detect every tile (no crops) on the workers."""
    import functools
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    from wbc_deploy.card import ModelCard
    from wbc_deploy.classes import CLASSES
    from wbc_deploy.pipeline.detect import job_without_tiles, process_scan, scan_tile
    from wbc_deploy.pipeline.options import CountOptions
    from wbc_deploy.pipeline.plan import plan_scan, thumbnail_size, tissue_mask
    from wbc_deploy.pipeline.scale import resolve_mpp, thumbnail
    from wbc_deploy.segment import SegmentParams
    from wbc_deploy.slide import open_slide

    card = ModelCard(arch="any", classes=list(CLASSES), input_size=224)
    opts = CountOptions(quiet=True, workers=workers, executor=executor)
    pool = (ProcessPoolExecutor(workers, mp_context=__import__("multiprocessing").get_context("spawn"))
            if executor == "process" else ThreadPoolExecutor(workers))
    if executor == "process":  # start the workers and import the scan code before timing (count pays it once per run)
        list(pool.map(_warm, range(workers * 4)))
    with open_slide(slide):  # load the slide libraries before timing, as the floor does (count pays it once per run)
        pass
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = 0
    with open_slide(slide) as reader, pool:
        thumb = thumbnail(reader, thumbnail_size(reader.dimensions, reader.mpp or MPP))
        mpp, _ = resolve_mpp(reader, None, thumb, tissue_mask(thumb)[0])
        plan = plan_scan(reader, mpp, card, opts, thumb)
        job = job_without_tiles(slide, plan, SegmentParams())
        fn = (functools.partial(process_scan, job, crops=False) if executor == "process"
              else functools.partial(scan_tile, reader, job, crops=False))
        pending: deque = deque()
        tiles = iter(plan.tiles)
        while True:
            while len(pending) < 2 * workers:
                t = next(tiles, None)
                if t is None:
                    break
                pending.append(pool.submit(fn, t))
            if not pending:
                break
            n += len(pending.popleft().result().cells)
        w, h = reader.dimensions
    return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "n_wbc": n, "area_mpx": w * h / 1e6,
            "tiles_scanned": len(plan.tiles), "tiles_total": plan.tiles_total, "peak_rss_mib": peak_rss_mib()}


def task_floor(slide: str, tile: int, threads: int) -> dict:
    """Read every level-0 pixel once with OpenSlide in ``tile`` x ``tile`` read_region calls; nothing else."""
    import openslide

    s = openslide.OpenSlide(slide)
    w, h = s.dimensions
    coords = [(x, y) for y in range(0, h, tile) for x in range(0, w, tile)]

    def read(xy):
        x, y = xy
        s.read_region((x, y), 0, (min(tile, w - x), min(tile, h - y)))

    c0, t0 = cpu_seconds(), time.perf_counter()
    if threads == 1:
        for xy in coords:
            read(xy)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(read, coords, chunksize=8))
    return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "area_mpx": w * h / 1e6,
            "tile": tile, "threads": threads, "calls": len(coords)}


def child(args: list[str]) -> None:
    task, params = args[0], json.loads(args[1])
    fn = {"count": task_count, "scan": task_scan, "floor": task_floor}[task]
    print("RESULT " + json.dumps(fn(**params)))


def run_child(task: str, **params) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, json.dumps(params)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{task} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- main


def ensure_slide(work: Path, size: int, wbc_per_mpx: float, seed: int) -> tuple[Path, float]:
    from wbc_deploy.slide.synth import write_synthetic_slide

    n = max(1, int(round(wbc_per_mpx * size * size / 1e6)))
    path = work / f"slide-{size}-n{n}-s{seed}.svs"
    if path.exists() and path.with_name(path.stem + ".truth.csv").exists():
        return path, 0.0
    t0 = time.perf_counter()
    write_synthetic_slide(path, size, size, n, mpp=MPP, seed=seed)
    return path, time.perf_counter() - t0


def bound_stage(stage_s: dict, workers: int) -> tuple[str, dict]:
    """The stage with the largest wall-clock share: worker stages divided by the worker count."""
    share = {k: (v / workers if k in ("read", "detect", "crop") else v) for k, v in stage_s.items()}
    return max(share, key=share.get), share


def machine() -> dict:
    try:
        from wbc_deploy.bench.machine import machine_info

        return machine_info()
    except Exception as exc:  # noqa: BLE001 - the record is best effort
        import platform

        return {"os": platform.platform(), "python": sys.version.split()[0], "logical_cpus": os.cpu_count(),
                "note": f"wbc_deploy.bench.machine unavailable ({exc})"}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="exported .onnx model (its card sets the crop size)")
    ap.add_argument("--sizes", default="8192,16384", help="square slide sides in level-0 px (0.25 um/px)")
    ap.add_argument("--wbc-per-mpx", type=float, default=1.0,
                    help="WBCs per level-0 megapixel (a normal smear at 0.25 um/px has ~1-1.5)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--executor", default="thread", choices=("thread", "process", "both"))
    ap.add_argument("--floor-tiles", default="256,1024", help="read_region sizes tried for the I/O floor")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wbc-bench")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "slide_throughput.json")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 180))
    sizes = [int(s) for s in args.sizes.split(",")]
    executors = ("thread", "process") if args.executor == "both" else (args.executor,)
    args.work.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "model": str(args.model), "mpp": MPP, "wbc_per_mpx": args.wbc_per_mpx,
              "workers": args.workers, "sizes": []}
    for size in sizes:
        slide, gen_s = ensure_slide(args.work, size, args.wbc_per_mpx, args.seed)
        console.print(f"[bold]{size} x {size}[/bold] {slide.name}" + (f" (synthesised in {gen_s:.0f} s)" if gen_s else " (cached)"))
        entry = {"size": size, "slide": slide.name, "area_mpx": size * size / 1e6, "runs": {}}
        floors = []
        for tile in (int(t) for t in args.floor_tiles.split(",")):
            for threads in sorted({1, args.workers}):
                f = run_child("floor", slide=str(slide), tile=tile, threads=threads)
                f["mpx_per_s"] = f["area_mpx"] / f["wall_s"]
                floors.append(f)
                console.print(f"  floor: {tile}px reads, {threads} thread(s): {f['wall_s']:.2f} s, {f['mpx_per_s']:.1f} Mpx/s")
        entry["floor"] = floors
        best_floor = max(floors, key=lambda f: f["mpx_per_s"])
        for ex in executors:
            scan = run_child("scan", slide=str(slide), workers=args.workers, executor=ex)
            scan["mpx_per_s"] = scan["area_mpx"] / scan["wall_s"]
            count = run_child("count", slide=str(slide), model=str(args.model), workers=args.workers, executor=ex,
                              batch_size=args.batch_size)
            count["mpx_per_s"] = entry["area_mpx"] / count["wall_s"]
            count["wbc_per_s"] = count["n_wbc"] / count["wall_s"]
            count["bound_stage"], count["stage_wall_share_s"] = bound_stage(count["stage_s"], args.workers)
            ratio = scan["mpx_per_s"] / best_floor["mpx_per_s"]
            # CPU-seconds per area, against the single-threaded floor: robust when other jobs share the CPUs
            floor_cpu = min(f["cpu_s"] for f in floors if f["threads"] == 1)
            cpu_ratio = floor_cpu / scan["cpu_s"] if ex == "thread" else None  # process CPU includes worker start-up
            entry["runs"][ex] = {"scan": scan, "count": count, "scan_vs_floor": ratio, "scan_vs_floor_cpu": cpu_ratio}
            console.print(f"  {ex}: scan {scan['wall_s']:.2f} s ({scan['mpx_per_s']:.1f} Mpx/s, {ratio:.2f}x the floor"
                          + (f"; CPU {scan['cpu_s']:.2f} s vs {floor_cpu:.2f} s: {cpu_ratio:.2f}x" if cpu_ratio else "") + "), "
                          f"count {count['wall_s']:.2f} s, {count['n_wbc']} WBCs, peak RSS {count['peak_rss_mib']:.0f} MiB, "
                          f"bound by {count['bound_stage']}")
        record["sizes"].append(entry)

    table = Table(title="slide throughput (per executor and size)", title_justify="left")
    for col in ("executor", "size", "WBCs", "read s", "detect s", "crop s", "infer s", "write s", "wall s", "WBC/s",
                "Mpx/s", "scan Mpx/s", "floor Mpx/s", "scan/floor", "peak RSS MiB", "bound by"):
        table.add_column(col, justify="left" if col in ("executor", "bound by") else "right")
    for ex in executors:
        for e in record["sizes"]:
            r = e["runs"][ex]
            c, st = r["count"], r["count"]["stage_s"]
            fl = max(f["mpx_per_s"] for f in e["floor"])
            table.add_row(ex, f"{e['size']}", str(c["n_wbc"]), *[f"{st[k]:.2f}" for k in ("read", "detect", "crop", "infer", "write")],
                          f"{c['wall_s']:.2f}", f"{c['wbc_per_s']:.1f}", f"{c['mpx_per_s']:.1f}", f"{r['scan']['mpx_per_s']:.1f}",
                          f"{fl:.1f}", f"{r['scan_vs_floor']:.2f}x", f"{c['peak_rss_mib']:.0f}", c["bound_stage"])
    console.print(table)
    if len(record["sizes"]) >= 2:
        a, b = record["sizes"][0], record["sizes"][-1]
        area = b["area_mpx"] / a["area_mpx"]
        growth = {}
        for ex in executors:
            ca, cb = a["runs"][ex]["count"], b["runs"][ex]["count"]
            growth[ex] = {"area": area, "peak_rss": cb["peak_rss_mib"] / ca["peak_rss_mib"], "wall": cb["wall_s"] / ca["wall_s"],
                          "scan_wall": b["runs"][ex]["scan"]["wall_s"] / a["runs"][ex]["scan"]["wall_s"]}
            g = growth[ex]
            console.print(f"{ex}: area x{area:.1f} -> peak RSS x{g['peak_rss']:.2f} (target <= 1.3), count time x{g['wall']:.2f}, "
                          f"scan time x{g['scan_wall']:.2f} (linear: x{area:.1f})", highlight=False)
        record["growth"] = growth
    for ex in executors:
        worst = min(e["runs"][ex]["scan_vs_floor"] for e in record["sizes"])
        line = f"{ex}: scan stage vs I/O floor (wall): {worst:.2f}x at worst (target >= 2x)"
        if ex == "thread":
            cpu = min(e["runs"][ex]["scan_vs_floor_cpu"] for e in record["sizes"])
            line += f"; in CPU-seconds vs one reader: {cpu:.2f}x"
        console.print(line, highlight=False)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > (os.cpu_count() or 1):
        console.print(f"note: load average {load:.1f} on {os.cpu_count()} CPUs: other jobs shared the machine, wall-clock "
                      "figures are pessimistic", highlight=False)
    record["machine"]["load_avg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from wbc_deploy.files import atomic_write_text

    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
