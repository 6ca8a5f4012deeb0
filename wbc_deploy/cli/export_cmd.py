"""`wbc-deploy export`: ONNX (FP32/FP16/INT8) and TensorRT engines, verified against PyTorch."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("export")
def export_command(
    model: Path = typer.Argument(..., help="A run directory, a .safetensors checkpoint, an exported .onnx (to derive FP16/INT8/TensorRT "
                                           "from), or a bundled model's name (default)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (model.onnx, model.fp16.onnx, ...) or a .onnx file name whose stem names the rest."),
    onnx: bool = typer.Option(True, "--onnx", help="FP32 ONNX (always written: every other format derives from it)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write an FP16 ONNX model (float32 inputs/outputs) and report its agreement with FP32."),
    int8: bool = typer.Option(False, "--int8", help="Also write a static INT8 ONNX model for CPUs, calibrated on --calib DIR."),
    calib: Path = typer.Option(None, "--calib", help="Folder of cell crops for INT8 calibration (and comparisons when --data is not given)."),
    data: Path = typer.Option(None, "--data", help="Folder of cell crops to verify and compare on [default: --calib, else synthetic cells]."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT FP16 engine (NVIDIA GPU + TensorRT 10 or 11: the trt-cu12 / trt-cu13 extras)."),
    trt_int8: bool = typer.Option(False, "--trt-int8", help="INT8 TensorRT engine, calibrated on --calib DIR (TensorRT 10: calibrator; 11: QDQ explicit quantisation)."),
    min_batch: int = typer.Option(1, "--min-batch", help="TensorRT profile: smallest batch."),
    opt_batch: int = typer.Option(64, "--opt-batch", help="TensorRT profile: batch the kernels are tuned for."),
    max_batch: int = typer.Option(256, "--max-batch", help="TensorRT profile: largest batch."),
    workspace_mb: int = typer.Option(4096, "--workspace-mb", help="TensorRT builder workspace limit (MB)."),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="TensorRT timing cache base path, keyed by TensorRT version and GPU [default: <out>/model.timing.cache -> model.timing.<trt>-<gpu>.cache]."),
    device: int = typer.Option(0, "--device", help="CUDA device index for --trt."),
    verify: bool = typer.Option(False, "--verify", help="Compare ONNX Runtime with PyTorch (max |logit diff| <= 1e-4, top-1 100%) and fail otherwise."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17 or newer)."),
    exporter: str = typer.Option("torchscript", "--exporter", help="torchscript (default: fast, exact opset) or dynamo."),
    n_images: int = typer.Option(64, "--n-images", help="Images used to verify and compare."),
    n_random: int = typer.Option(8, "--n-random", help="Random N(0,1) inputs added to the verification."),
    n_calib: int = typer.Option(128, "--n-calib", help="Images sampled from --calib for INT8 calibration."),
    int8_format: str = typer.Option("qdq", "--int8-format", help="INT8 graph format: qdq or qoperator."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Export a trained model for deployment and print what was written and how it verified."""
    from rich import box
    from rich.table import Table

    from ..console import console, err_console, make_progress, warn
    from ..converters.export import ExportOptions, count_steps, export_model
    from ..converters.verify import comparisons_table
    from ..errors import WbcError

    if not onnx:
        raise WbcError("the FP32 ONNX model is always written (FP16, INT8 and TensorRT are derived from it): drop --no-onnx")
    options = ExportOptions(
        fp16=fp16, int8=int8, trt=trt, verify=verify, calib=calib, data=data, opset=opset, exporter=exporter,
        n_verify=n_images, n_random=n_random, n_calib=n_calib, int8_format=int8_format, trt_min_batch=min_batch, trt_opt_batch=opt_batch,
        trt_max_batch=max_batch, trt_workspace_mb=workspace_mb, trt_int8=trt_int8, trt_timing_cache=timing_cache, device=device,
    )
    with make_progress(quiet) as progress:
        total = count_steps(options, from_onnx=model.suffix.lower() == ".onnx")
        task = progress.add_task("export", total=total)
        report = export_model(model, out, options, step=lambda msg: progress.update(task, description=msg, advance=1))
        progress.update(task, description="export", completed=total)

    if report.comparisons:
        console.print(comparisons_table(report.comparisons, title="Verification"))
    if report.artefacts:
        folder = report.artefacts[0].path.parent
        table = Table(title=f"Artefacts in {folder}", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for col in ("file", "format", "precision", "size MB", "seconds", "check"):
            table.add_column(col, justify="right" if col in ("size MB", "seconds") else "left")
        for a in report.artefacts:
            table.add_row(a.path.name, a.format, a.precision, f"{a.size_mb:.1f}", f"{a.seconds:.1f}", a.check)
        console.print(table)
    for note in report.notes:
        warn(note)
    if not quiet:
        err_console.print(f"card: {report.card.arch}, classes {', '.join(report.card.classes)}, {report.card.input_size} px, output {report.card.output}")
    report.raise_for_failure()
