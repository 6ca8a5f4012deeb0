"""`wbc-deploy synth cells` and `wbc-deploy synth slide`: synthetic data for offline demos and tests."""
from __future__ import annotations

from pathlib import Path

import typer

from ..card import DEFAULT_FOV_UM
from .app import app, synth_app


@synth_app.command("cells")
def synth_cells_command(
    out: Path = typer.Argument(..., help="Output directory: OUT/<class>/<class>_00000.png ..."),
    per_class: int = typer.Option(100, "--per-class", help="Images per class."),
    size: int = typer.Option(224, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives identical files."),
    fov_um: float = typer.Option(DEFAULT_FOV_UM, "--fov-um", help="Field of view of each image, micrometres."),
    classes: str = typer.Option("", "--classes", help="Comma-separated subset of classes (default: all five)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write labelled synthetic WBC images, one folder per class (a class-per-folder data set)."""
    from ..classes import CLASSES
    from ..console import console, make_progress
    from ..data.synth_cells import write_cell_dataset

    names = [c.strip() for c in classes.split(",") if c.strip()] or list(CLASSES)
    with make_progress(quiet) as progress:
        task = progress.add_task("synth cells", total=per_class * len(names) if per_class > 0 else None)
        counts = write_cell_dataset(out, per_class, size, seed, classes=names, fov_um=fov_um,
                                    progress=lambda n: progress.advance(task, n))
    total = sum(counts.values())
    detail = ", ".join(f"{k} {v}" for k, v in counts.items())
    console.print(f"wrote {total} images ({size}x{size} px, {fov_um:g} um field) to {out}: {detail}", highlight=False)


@synth_app.command("slide")
def synth_slide_command(
    out: Path = typer.Argument(..., help="Output slide: OUT.svs (Aperio) or OUT.tif/OUT.tiff (generic tiled TIFF)."),
    width: int = typer.Option(8192, "--width", help="Level-0 width in pixels."),
    height: int = typer.Option(8192, "--height", help="Level-0 height in pixels."),
    cells: int = typer.Option(200, "--cells", help="Number of WBCs."),
    mpp: float = typer.Option(0.25, "--mpp", help="Microns per level-0 pixel."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives byte-identical files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a synthetic tiled pyramidal smear slide and its truth file OUT.truth.csv (x,y,label)."""
    from collections import Counter

    from ..console import console, make_progress
    from ..slide.synth import pyramid_sizes, read_truth, write_synthetic_slide

    with make_progress(quiet) as progress:
        task = progress.add_task(f"synth slide {out.name}", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        truth = write_synthetic_slide(out, width, height, cells, mpp=mpp, seed=seed, progress=report)
    counts = Counter(label for _, _, label in read_truth(truth))
    levels = len(pyramid_sizes(width, height))
    kind = "Aperio .svs" if out.suffix.lower() == ".svs" else "generic tiled TIFF"
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    console.print(
        f"wrote {out} ({kind}, {width}x{height} px, {levels} levels, {mpp:g} um/px) and {truth.name} "
        f"({sum(counts.values())} WBCs: {detail})",
        highlight=False,
    )


@app.command("demo-slide")
def demo_slide_command(
    out: Path = typer.Argument(Path("bccd-demo.svs"), help="Output slide (.svs, Aperio-style pyramidal TIFF)."),
) -> None:
    """Write the bundled real-pixel demo slide: 24 BCCD smear photographs (MIT) tiled at 0.074 um/px, and its truth file."""
    from collections import Counter

    from ..console import console
    from ..demo import DEMO_MPP, write_demo_slide
    from ..slide.synth import read_truth, truth_path

    write_demo_slide(out)
    counts = Counter(label for _, _, label in read_truth(truth_path(out)))
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    console.print(f"wrote {out} (real BCCD photographs, {DEMO_MPP} um/px) and {truth_path(out).name} "
                  f"({sum(counts.values())} annotated WBCs: {detail})", highlight=False)
