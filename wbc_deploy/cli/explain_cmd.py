"""`wbc-deploy explain`: Grad-CAM heatmaps and overlays for cell images (PyTorch checkpoints only)."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("explain")
def explain_command(
    model: Path = typer.Argument(..., help="Training RUN directory or its model.safetensors (ONNX/TensorRT cannot be explained)."),
    images: list[Path] = typer.Argument(..., help="Cell images and/or folders of them (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for <stem>.cam.npy, <stem>.overlay.png and explain.csv."),
    layer: str = typer.Option(None, "--layer", help="Layer to explain (a named_modules() name); default: the attention block "
                                                    "of wbcnet models, the last convolutional stage of baselines."),
    target: str = typer.Option("predicted", "--target", help="'predicted' or a class name to explain."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward/backward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Grad-CAM heatmaps (.npy, 0..1, at each image's size) and overlay PNGs for cell images."""
    from ..console import console, err_console, make_progress, warn
    from ..errors import WbcError
    from ..explain.run import collect_images, explain_images, load_explainable

    net, card = load_explainable(model)
    paths = collect_images(images, exclude=out)
    progress = make_progress(quiet)
    with progress:
        task = progress.add_task("explaining", total=len(paths))
        summary = explain_images(
            net, card, paths, out, layer=layer, target=target, batch_size=batch_size, device=device,
            on_progress=lambda done, total: progress.update(task, completed=done),
            on_skip=lambda p, reason: warn(f"skipped: {reason}"),
        )
    empty = sum(r.empty for r in summary.results)
    if empty:
        warn(f"{empty} heatmap(s) are zero everywhere: nothing at layer {summary.layer!r} supports the target class")
    console.print(f"wrote {len(summary.results)} heatmap(s) and overlay(s) to {summary.out_dir} "
                  f"(layer {summary.layer!r}, target {target}); table: {summary.csv_path}", highlight=False, soft_wrap=True)
    if summary.failed:  # each was warned about as it was skipped
        first, reason = summary.failed[0]
        message = f"{len(summary.failed)} of {len(paths)} image(s) could not be explained (first: {reason})"
        if not summary.results:
            raise WbcError(message)
        err_console.print(f"[red]error:[/red] {message}; the other {len(summary.results)} were written to {summary.out_dir}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(code=3)  # as count and segment: some inputs failed, the others were written
