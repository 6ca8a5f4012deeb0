"""Slides per hour of `wbc-deploy count` on the local path vs Dask (`--cluster local:N`) on the same machine.

Usage:
    python benchmarks/cluster_throughput.py --model MODEL.onnx [--slides 6] [--size 16384] [--wbc-per-mpx 1.0]
        [--repeats 2] [--work DIR] [--out benchmarks/results/cluster_throughput.json]

It synthesises ``--slides`` slides once (cached in --work; level 0 at 0.25 um/px) and counts all of them
with each configuration, each in a fresh process, on the same cores:

* ``local``: the local path, ``--workers`` = the machine's cores (threads), ONNX Runtime on every core;
* ``local:1``: one Dask worker process that runs one slide at a time with the same threads: the
  difference from ``local`` is Dask's own overhead (task, transfer of the outputs, client-side writes);
* ``local:N``: N single-threaded worker processes, N slides at a time, each with cores/N threads.

For each Dask configuration it times a cold run (``ClusterOptions(local_workers=N)``: starting the
LocalCluster, worker imports and model load included, as a user's first command) and, on a cluster
started beforehand and warmed with one slide, ``--repeats`` warm runs (the steady state, the figure that
matters for thousands of slides). The local path is warmed the same way (one slide first, same process).
Figures: slides/h (best and median of the warm runs), seconds per slide, Dask's overhead per slide
((warm wall - local wall) / slides, same cores) and its share, the cold start-up cost. Every run's
cells.csv are checked byte-identical to the local path's. Not a test: the figures depend on the machine
and its load (recorded as the load average before and after each run).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MPP = 0.25
HERE = Path(__file__).resolve().parent


def loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def cells_digest(out: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.cells.csv"))}


def timed_count(slides: list[str], model: str, cluster=None, workers: int | None = None) -> dict:
    from wbc_deploy.pipeline import CountOptions, count_slides

    out = Path(tempfile.mkdtemp(prefix="wbc-bench-cluster-"))
    opts = CountOptions(quiet=True) if workers is None else CountOptions(quiet=True, workers=workers)
    la0, t0 = loadavg(), time.perf_counter()
    run = count_slides(slides, model, out, opts, cluster=cluster)
    wall = time.perf_counter() - t0
    bad = [f"{s.slide}: {s.error}" for s in run.slides if s.status != "ok"]
    if bad:
        raise SystemExit("count failed: " + "; ".join(bad))
    return {"wall_s": round(wall, 3), "slides": len(run.slides), "n_wbc": sum(s.n_wbc for s in run.slides),
            "slide_seconds": [round(s.seconds, 3) for s in run.slides], "load_before": la0, "load_after": loadavg(),
            "cells_sha256": cells_digest(out)}


# --------------------------------------------------------------------------- child tasks


def task_local(slides: list[str], model: str, repeats: int) -> dict:
    warm = timed_count(slides[:1], model)
    return {"warmup": warm, "runs": [timed_count(slides, model) for _ in range(repeats)]}


def task_cluster(slides: list[str], model: str, repeats: int, n_workers: int) -> dict:
    import logging

    from distributed import LocalCluster

    from wbc_deploy.pipeline.cluster import ClusterOptions

    cold = timed_count(slides, model, cluster=ClusterOptions(local_workers=n_workers))
    t0 = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as lc:
        start_s = time.perf_counter() - t0
        on = ClusterOptions(scheduler=lc.scheduler_address)
        warm = timed_count(slides[: n_workers], model, cluster=on)  # every worker imports and loads the model
        runs = [timed_count(slides, model, cluster=on) for _ in range(repeats)]
    return {"cold": cold, "cluster_start_s": round(start_s, 3), "warmup": warm, "runs": runs}


def child(args: list[str]) -> None:
    task, params = args[0], json.loads(args[1])
    fn = {"local": task_local, "cluster": task_cluster}[task]
    print("RESULT " + json.dumps(fn(**params)))


def run_child(task: str, **params) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, json.dumps(params)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{task} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- main


def ensure_slides(work: Path, n: int, size: int, wbc_per_mpx: float) -> list[Path]:
    from wbc_deploy.slide.synth import write_synthetic_slide

    cells = max(1, int(round(wbc_per_mpx * size * size / 1e6)))
    paths = []
    for seed in range(n):
        path = work / f"slide-{size}-n{cells}-s{seed}.svs"
        if not path.exists():
            print(f"synthesising {path.name} ...", flush=True)
            write_synthetic_slide(path, size, size, cells, mpp=MPP, seed=seed)
        paths.append(path)
    return paths


def machine() -> dict:
    try:
        from wbc_deploy.bench.machine import machine_info

        return machine_info()
    except Exception as exc:  # noqa: BLE001 - the record is best effort
        return {"error": str(exc), "cpus": os.cpu_count()}


def summarise(name: str, runs: list[dict], n: int) -> dict:
    walls = [r["wall_s"] for r in runs]
    best, med = min(walls), statistics.median(walls)
    return {"config": name, "best_wall_s": best, "median_wall_s": med, "slides_per_h_best": round(3600 * n / best, 1),
            "slides_per_h_median": round(3600 * n / med, 1), "s_per_slide_best": round(best / n, 3)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Exported ONNX model (e.g. demo-out/export/model.onnx).")
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--size", type=int, default=16384, help="Slide side in level-0 pixels (0.25 um/px).")
    ap.add_argument("--wbc-per-mpx", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", default="2", help="Dask worker process counts to compare, comma-separated (1 is always run).")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "wbc-bench-cluster")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cluster_throughput.json")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    slides = [str(p) for p in ensure_slides(args.work, args.slides, args.size, args.wbc_per_mpx)]
    model = str(Path(args.model).resolve())
    n = len(slides)
    results: dict = {"machine": machine(), "slides": n, "size_px": args.size, "mpp": MPP, "wbc_per_mpx": args.wbc_per_mpx,
                     "model": model, "repeats": args.repeats, "configs": {}}
    print(f"local path: {n} slides of {args.size} px ...", flush=True)
    local = run_child("local", slides=slides, model=model, repeats=args.repeats)
    results["configs"]["local"] = local
    reference = local["runs"][0]["cells_sha256"]
    table = [summarise("local", local["runs"], n)]
    for w in sorted({1, *(int(x) for x in args.workers.split(","))}):
        print(f"--cluster local:{w} ...", flush=True)
        res = run_child("cluster", slides=slides, model=model, repeats=args.repeats, n_workers=w)
        for r in [res["cold"], *res["runs"]]:
            if r["cells_sha256"] != reference:
                raise SystemExit(f"local:{w}: cells.csv differ from the local path's")
        results["configs"][f"local:{w}"] = res
        row = summarise(f"local:{w}", res["runs"], n)
        row["cold_wall_s"] = res["cold"]["wall_s"]
        row["cold_slides_per_h"] = round(3600 * n / res["cold"]["wall_s"], 1)
        table.append(row)
    base = table[0]
    for row in table[1:]:
        row["overhead_s_per_slide_best"] = round((row["best_wall_s"] - base["best_wall_s"]) / n, 3)
        row["overhead_pct_best"] = round(100 * (row["best_wall_s"] / base["best_wall_s"] - 1), 1)
        row["overhead_s_per_slide_median"] = round((row["median_wall_s"] - base["median_wall_s"]) / n, 3)
        row["overhead_pct_median"] = round(100 * (row["median_wall_s"] / base["median_wall_s"] - 1), 1)
    results["table"] = table
    results["cells_identical"] = True
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")

    lines = [f"# Cluster throughput: {n} synthetic slides of {args.size} x {args.size} px at {MPP} um/px "
             f"(~{int(args.wbc_per_mpx * args.size ** 2 / 1e6)} WBCs each)", "",
             "| config | warm slides/h (best) | warm slides/h (median) | s/slide (best) | Dask overhead s/slide (best, median) "
             "| overhead % (best, median) | cold run slides/h |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in table:
        oh = (f"{row['overhead_s_per_slide_best']:+.2f}, {row['overhead_s_per_slide_median']:+.2f}"
              if "overhead_s_per_slide_best" in row else "")
        pct = f"{row['overhead_pct_best']:+.1f}, {row['overhead_pct_median']:+.1f}" if "overhead_pct_best" in row else ""
        lines.append(f"| {row['config']} | {row['slides_per_h_best']:.0f} | {row['slides_per_h_median']:.0f} | "
                     f"{row['s_per_slide_best']:.2f} | {oh} | {pct} | {row.get('cold_slides_per_h', '')} |")
    lines += ["", "cells.csv of every run byte-identical to the local path's: yes",
              f"load average (1 min) during the runs: {sorted({r['load_before'] for c in results['configs'].values() for r in c['runs']})}"]
    md = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
