"""`wbc-deploy segment`: WBC segmentation alone, per image, for checking it against hand-drawn masks."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app

_EPILOG = (
    "Outputs in --out, per input <stem> (its file name without the extension): <stem>.cells.csv "
    "(cell_id,x,y,bbox_x0,bbox_y0,bbox_x1,bbox_y1,area_um2,edge; level-0 pixels, x/y pixel-centre convention, "
    "bbox x1/y1 exclusive; edge 1 where the cell is cut by the image border: it reaches the border with its nucleus within 1.5 um of it), <stem>.labels.png (16-bit instance labels: 0 background, k = the whole of cell k) and "
    "<stem>.nuclei.png (same ids, nucleus pixels only). Level 0 is read whole: for whole-slide images use "
    "`wbc-deploy count`. Exit codes: 0 every input segmented; 2 bad options, or every input failed; "
    "3 some inputs failed (one line each on stderr; the others were written)."
)


@app.command("segment", epilog=_EPILOG)
def segment_command(
    inputs: list[Path] = typer.Argument(..., help="Images (PNG, JPEG, TIFF ...) or slides small enough to read whole."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if missing)."),
    mpp: float = typer.Option(None, "--mpp", help="Microns per pixel, overriding the file's (default: the file's, "
                                                   "else estimated from red cells, ~7.5 um across)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Find and delimit the white blood cells of each image: cells CSV, cell and nucleus label images."""

    from ..console import console, err_console, make_progress, per_input_table
    from ..segment.files import prepare_output, segment_files

    inputs = list(inputs)
    prepare_output(out, mpp)  # bad options: one line, exit 2, before any progress is shown
    with make_progress(quiet) as progress:
        task = progress.add_task("segment", total=len(inputs))

        def on_result(res) -> None:
            if res.status == "error":
                err_console.print(f"[red]error:[/red] {res.error}", highlight=False, soft_wrap=True)
            elif res.mpp_source == "estimated":
                err_console.print(f"{res.path.name}: {res.mpp:.4f} um/px estimated from red cells (pass --mpp to set it)",
                                  highlight=False, soft_wrap=True)
            progress.advance(task)

        results = segment_files(inputs, out, mpp=mpp, on_result=on_result)

    if not quiet:
        table = per_input_table(f"WBC segmentation ({out})", "input")
        for col, just in (("status", "left"), ("WBCs", "right"), ("um/px", "right"), ("size", "right"), ("s", "right")):
            table.add_column(col, justify=just, no_wrap=True)
        for r in results:
            ok = r.status == "ok"
            table.add_row(
                r.path.name, "[green]ok[/green]" if ok else "[red]error[/red]", str(r.n_cells) if ok else "",
                (f"{r.mpp:.4f}" + ("*" if r.mpp_source == "estimated" else "")) if ok and r.mpp else "",
                f"{r.width}x{r.height}" if ok else "", f"{r.seconds:.2f}" if ok else "",
            )
        console.print(table)
        if any(r.mpp_source == "estimated" for r in results):
            console.print("* estimated from red cells", highlight=False)
    failed = sum(r.status != "ok" for r in results)
    if failed:
        raise typer.Exit(code=2 if failed == len(results) else 3)
