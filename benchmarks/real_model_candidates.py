"""Size, cost and ONNX Runtime speed of the architectures considered for the shipped real-cell model.

Usage: .venv/bin/python benchmarks/real_model_candidates.py [--batch 64] [--seconds 15]

Each candidate is built at its input size (random weights: speed does not depend on them), exported to ONNX
FP32 and to INT8 with the project's CPU recipe (calibrated on synthetic cells), and timed through
``OrtBackend`` (what ``count`` runs) at ``--batch`` on this machine's cores. Accuracy figures of the candidates
come from training runs, recorded in the README. Results: benchmarks/results/real_model_candidates.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wbc_deploy.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [  # (arch, input px)
    ("wbcnet-tiny", 64),
    ("wbcnet-s", 64),
    ("wbcnet-s", 96),
    ("wbcnet", 96),
    ("wbcnet", 224),
]


def load_avg() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return float("nan")


def time_backend(path: Path, batch: int, seconds: float) -> float:
    from wbc_deploy.runtime import open_backend

    with open_backend(path) as be:
        x = np.random.default_rng(0).normal(0, 1, (batch, 3, be.input_size, be.input_size)).astype(np.float32)
        be.predict(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n == 0:
            be.predict(x)
            n += batch
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args(argv)

    from wbc_deploy.classes import CLASSES
    from wbc_deploy.converters.export import ExportOptions, export_model
    from wbc_deploy.data.synth_cells import write_cell_dataset
    from wbc_deploy.model import card_for, count_parameters, create_model
    from wbc_deploy.model.summary import summarise
    from wbc_deploy.trainer.checkpoint import save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calib = tmp / "calib"
        write_cell_dataset(calib, per_class=16, size_px=96, seed=0)
        for arch, size in CANDIDATES:
            run = tmp / f"{arch}-{size}"
            model = create_model(arch, len(CLASSES)).eval()
            card = card_for(arch, list(CLASSES), size)
            card.params = count_parameters(model)
            save_checkpoint(run, model, card)
            export_model(run, run / "export", ExportOptions(int8=True, calib=calib))
            s = summarise(arch, input_size=size)
            row = {"arch": arch, "input": size, "params": s.params, "gflops": round(s.gflops, 3),
                   "ort_fp32": round(time_backend(run / "export" / "model.onnx", args.batch, args.seconds), 1),
                   "ort_int8": round(time_backend(run / "export" / "model.int8.onnx", args.batch, args.seconds), 1),
                   "int8_mb": round((run / "export" / "model.int8.onnx").stat().st_size / 1e6, 1), "load": load_avg()}
            rows.append(row)
            print(row, flush=True)
    res = {"batch": args.batch, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    out = ROOT / "benchmarks" / "results"
    atomic_write_text(out / "real_model_candidates.json", json.dumps(res, indent=2) + "\n")
    lines = [f"# Candidate architectures: ONNX Runtime cells/s at batch {args.batch} ({os.cpu_count()} cores, {res['date']})", "",
             "| arch | input | params | GFLOPs | ORT FP32 | ORT INT8 | INT8 MB | load avg |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['input']} | {r['params'] / 1e6:.2f}M | {r['gflops']:.2f} | {r['ort_fp32']} | "
                     f"{r['ort_int8']} | {r['int8_mb']} | {r['load']:.1f} |")
    atomic_write_text(out / "real_model_candidates.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
