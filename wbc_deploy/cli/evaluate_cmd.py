"""`wbc-deploy evaluate`: score every image of a class-per-folder directory with a trained model."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("evaluate")
def evaluate_command(
    model: Path = typer.Argument(..., help="A run directory, a .safetensors checkpoint, an exported .onnx model or a TensorRT engine."),
    data: Path = typer.Argument(..., help="Class-per-folder images; every image is scored."),
    out: Path = typer.Option(Path("metrics.json"), "--out", "-o", help="Metrics JSON to write (a confusion PNG goes beside it)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per inference batch."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    gallery: bool = typer.Option(False, "--gallery", help="Also write a montage of the misclassified images (true vs predicted)."),
) -> None:
    """OA, AP, AR, AF1 (the paper's Eqs. 4-6), per-class metrics and the confusion matrix."""
    from ..console import console
    from ..trainer.evaluate import confusion_path, evaluate_model, misclassified_path
    from ..trainer.report import metrics_table

    result = evaluate_model(model, data, out, batch_size=batch_size, quiet=quiet, device=device, gallery=gallery)
    console.print(metrics_table(result, title=f"{model.name} on {data}"))
    console.print(f"wrote {out} and {confusion_path(out)}")
    if gallery:
        console.print(f"misclassified images: {misclassified_path(out)}")
