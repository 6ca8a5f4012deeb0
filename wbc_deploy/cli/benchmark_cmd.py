"""`wbc-deploy benchmark`: model throughput of every backend and precision, side by side."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("benchmark")
def benchmark_command(
    model: str = typer.Option(..., "--model", "-m", help="Architecture name (e.g. wbcnet, wbcnet-tiny), RUN directory, .safetensors or .onnx file."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="RUN directory whose trained weights to benchmark (default: random-init weights of --model)."),
    backends: str = typer.Option(
        "ort,ort-fp16,ort-int8,torch,torch-cuda,ort-cuda,trt", "--backends", "-b",
        help="Comma list of: ort, ort-default, ort-fp16, ort-int8, torch, torch-nhwc, torch-cuda, torch-cuda-fp16, ort-cuda, ort-trt, trt; or all, cpu, gpu.",
    ),
    batch_sizes: str = typer.Option("1,8,32,64,128", "--batch-sizes", help="Comma list of batch sizes."),
    seconds: float = typer.Option(10.0, "--seconds", help="Measured seconds per backend and batch size (warm-up excluded)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed calls before each measurement."),
    min_iters: int = typer.Option(3, "--min-iters", help="At least this many timed calls per point, however long they take."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for ONNX Runtime and PyTorch alike (default: physical cores)."),
    tune: bool = typer.Option(False, "--tune", help="Sweep ONNX Runtime session settings on this machine first and use the fastest."),
    agreement_cells: int = typer.Option(32, "--agreement-cells", help="Synthetic cells for each backend's top-1 agreement with ORT FP32 (0: skip)."),
    int8_accuracy: int = typer.Option(0, "--int8-accuracy", help="Also score FP32 vs INT8 overall accuracy on N synthetic test cells per class (0: skip)."),
    cpu_ghz: float = typer.Option(None, "--cpu-ghz", help="CPU clock for the FP32 peak estimate (default: what the OS reports; VMs report the nominal clock)."),
    calib: Path = typer.Option(None, "--calib", help="Folder of cell crops to calibrate INT8 on (default: synthetic cells)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Where exported/quantised models are cached (default ~/.cache/wbc-deploy/bench)."),
    out: Path = typer.Option(..., "--out", "-o", help="Results JSON to write."),
    markdown_out: Path = typer.Option(None, "--markdown", help="Also write the results as a Markdown table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Time every backend at every batch size: cells/s, p50/p90/p99 latency, GFLOP/s against the CPU's FP32 peak."""
    from ..bench import BenchmarkConfig, parse_backends, parse_batch_sizes, run_benchmark, write_json, write_markdown
    from ..bench.report import ensure_writable, not_run_table, rich_table
    from rich.markup import escape

    from ..console import console

    config = BenchmarkConfig(
        model=model, checkpoint=checkpoint, backends=parse_backends(backends), batch_sizes=parse_batch_sizes(batch_sizes),
        seconds=seconds, warmup=warmup, min_iters=min_iters, threads=threads, cache_dir=cache_dir, calib_dir=calib,
        agreement_cells=agreement_cells, tune=tune, int8_accuracy_per_class=int8_accuracy, cpu_ghz=cpu_ghz,
    )
    config.validate()
    ensure_writable(out, markdown_out)
    report = run_benchmark(config, quiet=quiet)
    console.print(rich_table(report))
    skipped = not_run_table(report)
    if skipped is not None:
        console.print(skipped)
    for comp in report.comparisons():
        console.print(f"{comp['backend']} / {comp['baseline']} at batch {comp['batch_size']}: {comp['speedup']:.2f}x")
    peak = report.machine["cpu_fp32_peak"]
    console.print(f"CPU FP32 peak estimate: {peak['gflops']} GFLOP/s ({peak['formula']})", highlight=False)
    for note in report.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    write_json(report, out)
    console.print(f"wrote {out}")
    if markdown_out is not None:
        write_markdown(report, markdown_out)
        console.print(f"wrote {markdown_out}")
