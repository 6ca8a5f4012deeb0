"""`wbc-deploy recount`: apply a technologist's corrections (review page JSON or QuPath GeoJSON) to a count's results."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app

_EPILOG = (
    "FILE: the review page's export ({\"slide\": NAME, \"corrections\": [{\"cell_id\": 12, \"label\": \"eosinophil\"}, ...]}) "
    "or a GeoJSON exported by QuPath from the detections `count --geojson` wrote (matched on the feature ids). "
    "Labels: the model's classes, unidentified, or not_a_wbc (leaves the count). A file is the slide's whole review: "
    "applying it again changes nothing. Exit codes: 0 applied; 2 bad folder, file, cell or class (nothing written)."
)


@app.command("recount", epilog=_EPILOG)
def recount_command(
    out_dir: Path = typer.Argument(..., help="Results folder written by `wbc-deploy count` (summary.csv, <slide>.cells.csv)."),
    corrections: Path = typer.Option(..., "--corrections", "-c", help="Corrections: the review page's JSON or a QuPath GeoJSON."),
    slide: str = typer.Option(None, "--slide", help="The slide a GeoJSON belongs to (default: found from its feature ids)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing (summary.csv and cells.csv are still rewritten)."),
) -> None:
    """Bring reviewed classes back into the counts: cells.csv gains label_reviewed, summary.csv the reviewed differential."""
    from ..console import console
    from ..pipeline.recount import recount

    res = recount(out_dir, corrections, slide=slide)
    if not quiet:
        print_recount(res, console)


def print_recount(res, console) -> None:
    """Predicted vs reviewed counts and differential, and the agreement, as a table."""
    from ..classes import NOT_A_WBC, UNIDENTIFIED
    from ..console import per_input_table

    table = per_input_table(f"{res.slide}: predicted vs reviewed", name_header="class")
    for col in ("predicted", "pred %", "reviewed", "rev %", "agreement"):
        table.add_column(col, justify="right", no_wrap=True)
    p_pct, r_pct = res.percentages(res.predicted), res.percentages(res.reviewed)
    for c in res.classes:
        a = res.agreement_by_class[c]
        table.add_row(c, str(res.predicted[c]), f"{p_pct[c]:.1f}", str(res.reviewed[c]), f"{r_pct[c]:.1f}", "" if a is None else f"{100 * a:.1f}%")
    for c in (UNIDENTIFIED, NOT_A_WBC):
        table.add_row(c, str(res.predicted.get(c, 0)), "", str(res.reviewed.get(c, 0)), "", "")
    console.print(table)
    agreement = "" if res.agreement is None else f"; preclassification agreement {100 * res.agreement:.1f}%"
    note = (f"; updated {res.cells_path} and {res.summary_path}" if res.changed
            else " (already applied: nothing changed)")
    ignored = f"; {res.ignored_features} non-detection objects ignored" if res.ignored_features else ""
    console.print(f"{res.n_corrected} of {res.n_cells} cells reclassified{agreement}{ignored}{note}", highlight=False, soft_wrap=True)
