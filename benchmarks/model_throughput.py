#!/usr/bin/env python3
"""Model throughput of the full ``wbcnet`` at 224 px: every backend and precision, written to benchmarks/results/.

Runs ``wbc_deploy.bench.run_benchmark`` (what ``wbc-deploy benchmark`` runs) with the ONNX Runtime
settings sweep (``--tune``), PyTorch eager in NCHW and channels_last, ONNX Runtime FP32 (tuned and
untuned), FP16 and INT8, the GPU backends (listed with the reason where there is no GPU), and the
INT8 accuracy check. Then writes ``model_throughput.json`` and ``model_throughput.md``.

Timings are only worth committing from an idle machine: when other processes used more than 0.25 CPU
cores during any measurement, the files are written as ``model_throughput.contaminated.{json,md}``
instead and the script exits with status 3 (``--accept-load`` overrides).

    .venv/bin/python benchmarks/model_throughput.py                 # ~15-20 min on a 2-core CPU
    .venv/bin/python benchmarks/model_throughput.py --batch-sizes 16 --seconds 5   # the target point only
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wbc_deploy.bench import BenchmarkConfig, parse_backends, parse_batch_sizes, run_benchmark, write_json, write_markdown  # noqa: E402
from wbc_deploy.bench.report import not_run_table, rich_table  # noqa: E402
from wbc_deploy.bench.run import CONTAMINATION_CORES  # noqa: E402
from wbc_deploy.console import console  # noqa: E402
from wbc_deploy.errors import WbcError  # noqa: E402

BACKENDS = "ort,ort-default,ort-fp16,ort-int8,torch,torch-nhwc,torch-cuda,ort-cuda,trt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wbcnet", help="architecture, RUN dir or .onnx (default: wbcnet)")
    ap.add_argument("--checkpoint", default=None, help="RUN directory with trained weights")
    ap.add_argument("--backends", default=BACKENDS)
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-tune", action="store_true", help="skip the ONNX Runtime settings sweep")
    ap.add_argument("--int8-accuracy", type=int, default=100, help="synthetic test cells per class for FP32 vs INT8 OA (0: skip)")
    ap.add_argument("--agreement-cells", type=int, default=64)
    ap.add_argument("--cpu-ghz", type=float, default=None, help="CPU clock for the FP32 peak (default: OS-reported)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="model_throughput", help="file name stem")
    ap.add_argument("--accept-load", action="store_true", help="write the final file names even if the machine was busy")
    args = ap.parse_args(argv)

    try:
        config = BenchmarkConfig(
            model=args.model, checkpoint=args.checkpoint, backends=parse_backends(args.backends),
            batch_sizes=parse_batch_sizes(args.batch_sizes), seconds=args.seconds, warmup=args.warmup,
            min_iters=args.min_iters, threads=args.threads, tune=not args.no_tune,
            agreement_cells=args.agreement_cells, int8_accuracy_per_class=args.int8_accuracy, cpu_ghz=args.cpu_ghz,
        )
        report = run_benchmark(config)
    except WbcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console.print(rich_table(report))
    skipped = not_run_table(report)
    if skipped is not None:
        console.print(skipped)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)

    loads = [r.other_load_cores or 0.0 for r in report.results if r.ok]
    busy = max(loads, default=0.0) > CONTAMINATION_CORES
    stem = args.name + (".contaminated" if busy and not args.accept_load else "")
    json_path = write_json(report, args.out_dir / f"{stem}.json")
    md_path = write_markdown(report, args.out_dir / f"{stem}.md")
    console.print(f"wrote {json_path} and {md_path}", markup=False)
    if busy and not args.accept_load:
        console.print(f"other processes used up to {max(loads):.2f} CPU cores while measuring: not final; "
                      "rerun on an idle machine (or pass --accept-load)", markup=False)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
