"""`wbc-deploy evaluate`: score every image of a class-per-folder directory with a trained model."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("evaluate")
def evaluate_command(
    model: str = typer.Argument(..., help="A run directory, a .safetensors checkpoint, an exported .onnx model, a TensorRT "
                                          "engine, or a bundled model's name (default; see `wbc-deploy models`)."),
    data: Path = typer.Argument(..., help="Class-per-folder images; every image is scored."),
    out: Path = typer.Option(Path("metrics.json"), "--out", "-o", help="Metrics JSON to write (a confusion PNG goes beside it)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per inference batch."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    gallery: bool = typer.Option(False, "--gallery", help="Also write a montage of the misclassified images (true vs predicted)."),
    mpp: float = typer.Option(None, "--mpp", help="Microns per pixel of the images: the model sees its field of view around "
                                                  "each image's centre, cut as `count` cuts crops [default: the whole image]."),
) -> None:
    """OA, AP, AR, AF1 (the paper's Eqs. 4-6), per-class metrics and the confusion matrix."""
    from ..console import console
    from ..trainer.evaluate import confusion_path, evaluate_model, misclassified_path
    from ..trainer.report import metrics_table

    result = evaluate_model(model, data, out, batch_size=batch_size, quiet=quiet, device=device, gallery=gallery, mpp=mpp)
    console.print(metrics_table(result, title=f"{Path(model).name} on {data}"))
    cal = result["calibration"]
    if cal.get("threshold") is not None:
        oa = cal["oa_identified"]
        console.print(f"unidentified (confidence < {cal['threshold']:g}): {100 * cal['unidentified_rate']:.1f}% of images; "
                      f"OA of the others {'-' if oa is None else f'{oa:.4f}'}; ECE {cal['ece']:.4f} "
                      f"(uncalibrated {cal['ece_uncalibrated']:.4f}, T = {cal['temperature']:g})", highlight=False)
    console.print(f"wrote {out} and {confusion_path(out)}")
    if gallery:
        console.print(f"misclassified images: {misclassified_path(out)}")
