"""`wbc-deploy count`: stream whole-slide images (or plain images) into per-cell and per-slide differential counts."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app

_EPILOG = (
    "Outputs in --out: <slide>.cells.csv (one row per WBC), summary.csv (one row per slide: counts, differential with "
    "95% Wilson intervals, counting area, quality flags, status), and with --geojson <slide>.geojson (QuPath detections), "
    "with --truth <slide>.truth_comparison.csv, with --gallery <slide>.gallery.<class>.png and <slide>.report.html, with "
    "--review <slide>.review.html. "
    "Exit codes: 0 every slide counted; 2 bad model or options (nothing written); 3 some slides failed "
    "(status=error and the reason in summary.csv; the others were counted); 130 interrupted (rerun with --resume)."
)


@app.command("count", epilog=_EPILOG)
def count_command(
    inputs: list[Path] = typer.Argument(..., help="Slides, images, or folders (searched recursively for known extensions)."),
    model: str = typer.Option("default", "--model", "-m", help="Exported .onnx model, TensorRT .engine, a training RUN directory, "
                                                               "or a bundled model's name (see `wbc-deploy models`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    backend: str = typer.Option(None, "--backend", help="ort, trt or torch (default: from the model file's type)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Cell crops per inference batch."),
    workers: int = typer.Option(None, "--workers", help="Reading/segmentation workers (default: one per CPU core, at most 8); "
                                                          "on a cluster, per slide on each worker (default: its host's cores over its worker threads)."),
    executor: str = typer.Option("auto", "--executor", help="Worker kind: auto (processes for a slide of 2+ tiles), thread or process."),
    mpp: float = typer.Option(None, "--mpp", help="Microns per level-0 pixel, overriding the slide's (default: the slide's, "
                                                   "else estimated from red cells)."),
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted slides from their last finished tiles; skip finished slides."),
    geojson: bool = typer.Option(False, "--geojson", help="Also write <slide>.geojson (QuPath detections with class and outline)."),
    gallery: bool = typer.Option(False, "--gallery", help="Also write per-class review galleries and a slide report."),
    gallery_k: int = typer.Option(16, "--gallery-k", help="Cells per gallery section (most and least confident)."),
    review: bool = typer.Option(False, "--review", help="Also write <slide>.review.html: every counted cell to confirm or "
                                "reclassify in a browser; its exported corrections go to `wbc-deploy recount`."),
    confidence_threshold: float = typer.Option(None, "--confidence-threshold", help="Label cells below this calibrated "
                                                "confidence 'unidentified' (left out of the differential; default: the model card's; 0: off)."),
    max_wbc: int = typer.Option(None, "--max-wbc", help="Count the first N WBCs in a meander over the counting area, "
                                "then stop scanning (the classic 100/200-cell differential; default: every WBC)."),
    area: str = typer.Option(None, "--area", help="Where to count: monolayer or all (the whole smear). Default: the "
                             "monolayer when one is found, else all (the output says which)."),
    truth: bool = typer.Option(False, "--truth", help="Compare with <slide>.truth.csv beside each slide (x,y,label)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables (summary.csv is still written)."),
    cluster: str = typer.Option(None, "--cluster", help="local:N: count the slides on a Dask LocalCluster of N worker processes "
                                                          "here (needs wbc-deploy[cluster])."),
    scheduler: str = typer.Option(None, "--scheduler", help="Count on a running Dask cluster: its scheduler's address "
                                                              "(tcp://host:8786) or scheduler file. Workers must see the slides "
                                                              "and the model at the same paths."),
) -> None:
    """Count the white blood cells of slides into a differential (per-cell and per-slide CSVs)."""
    from ..console import console, err_console
    from ..pipeline import CountOptions, count_slides
    from ..pipeline.cluster import ClusterOptions
    from ..pipeline.options import default_workers

    options = CountOptions(
        backend=backend, batch_size=batch_size, workers=workers if workers is not None else default_workers(),
        executor=executor, mpp=mpp, resume=resume, geojson=geojson, gallery=gallery, gallery_k=gallery_k,
        review=review, truth=truth, quiet=quiet, confidence_threshold=confidence_threshold, max_wbc=max_wbc, area=area,
    )
    # on a cluster --workers is per slide on a worker (default: the worker host's cores over its slide slots)
    cluster_options = ClusterOptions.from_cli(cluster, scheduler, slide_threads=workers)
    run = count_slides(inputs, model, out, options, cluster=cluster_options)
    if not quiet:
        print_run(run, console)
    for r in run.slides:  # failures reach stderr even with --quiet: scripts see why the exit code is not 0
        if r.error:
            err_console.print(f"[red]error:[/red] {r.slide}: {r.error}", highlight=False, soft_wrap=True)
    if run.exit_code:
        raise typer.Exit(code=run.exit_code)


def print_run(run, console) -> None:
    """The end-of-run tables: one row per slide (counts and differential), then truth comparisons."""
    from rich.table import Table

    from ..classes import SHORT
    from ..console import per_input_table

    classes = run.classes
    table = per_input_table(f"WBC differential ({run.summary_path})")
    table.add_column("status", no_wrap=True)
    for header in ("WBCs", *[f"{SHORT.get(c, c)} %" for c in classes], "unid", "conf", "s", "mpp"):
        table.add_column(header, justify="right", no_wrap=True)
    intervals = per_input_table("95% Wilson intervals (% of the counted WBCs)")
    for header in ("counted", *[f"{SHORT.get(c, c)} %" for c in classes]):
        intervals.add_column(header, justify="right", no_wrap=True)
    for r in run.slides:
        ok = r.status == "ok"
        pct = r.percentages(classes)
        status = {"ok": "[green]ok[/green]", "error": "[red]error[/red]"}.get(r.status, f"[yellow]{r.status}[/yellow]")
        if ok:
            ci = r.intervals(classes)
            intervals.add_row(r.slide, str(r.n_counted), *[f"{_num(ci[c][0])}-{_num(ci[c][1])}" if ci[c] else "" for c in classes])
        table.add_row(
            r.slide, status, str(r.n_wbc) if ok else "",
            *[f"{pct[c]:.1f}" if ok else "" for c in classes],
            str(r.n_unidentified) if ok else "",
            f"{r.mean_confidence:.3f}" if ok and r.mean_confidence is not None else "",
            f"{r.seconds:.1f}" if r.seconds else "",
            (f"{r.mpp:.3f}" + ("*" if r.mpp_source == "estimated" else "")) if r.mpp else "",
        )
    console.print(table)
    if any(r.mpp_source == "estimated" for r in run.slides):
        console.print("* microns per pixel estimated from red cells", highlight=False)
    if intervals.row_count:
        console.print(intervals)
    for r in run.slides:
        if r.status == "ok":
            console.print(f"{r.slide}: {area_line(r)}", highlight=False, soft_wrap=True)
    for r in run.slides:
        t = r.truth
        if t is None:
            continue
        tt = Table(title=f"{r.slide}: counted vs truth (match within 5 um)", title_justify="left")
        for col in ("class", "truth", "truth %", "counted", "counted %", "diff %"):
            tt.add_column(col, justify="left" if col == "class" else "right")
        nt = sum(t.truth_counts.values()) or 1
        nc = sum(t.counted.values()) or 1
        for c in classes:
            tp, cp = 100 * t.truth_counts.get(c, 0) / nt, 100 * t.counted.get(c, 0) / nc
            tt.add_row(c, str(t.truth_counts.get(c, 0)), f"{tp:.1f}", str(t.counted.get(c, 0)), f"{cp:.1f}", f"{cp - tp:+.1f}")
        console.print(tt)
        console.print(f"detection: recall {t.recall:.3f}, precision {t.precision:.3f} ({t.n_matched} of {t.n_truth} true WBCs "
                      f"found, {t.n_detected} detections); class agreement on matched cells {t.accuracy:.3f}", highlight=False)


def area_line(r) -> str:
    """One line on where a slide was counted and its quality flags."""
    parts = [f"counted in {r.area_note or r.area or 'the whole slide'}"]
    if r.area_mm2:
        parts.append(f"{r.area_mm2:.3f} mm2 read" + (f", {r.wbc_per_mm2:.1f} WBC/mm2" if r.wbc_per_mm2 is not None else ""))
    if r.max_wbc is not None:
        parts.append(f"stopped at {r.max_wbc} WBCs (--max-wbc)" if r.stopped_early else
                     f"--max-wbc {r.max_wbc} not reached: every WBC of the area counted")
    if r.out_of_focus_fraction is not None:
        parts.append(f"{100 * r.out_of_focus_fraction:.0f}% of tiles out of focus")
    if r.unidentified_rate is not None:
        parts.append(f"{100 * r.unidentified_rate:.1f}% unidentified")
    return "; ".join(parts)


def _num(v: float) -> str:
    """A percentage with one decimal, without a trailing .0 (100, 4.8)."""
    return f"{v:.1f}".removesuffix(".0")
