"""Shared rich console and progress bars for every long operation."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

#: Normal output (tables, results) goes to stdout.
console = Console()
#: Errors and warnings go to stderr so scripts can parse stdout.
err_console = Console(stderr=True)


def make_progress(quiet: bool = False, *extra_columns) -> Progress:
    """A rich progress bar with the project's standard columns; disabled when ``quiet``."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
        transient=False,
    )


def warn(message: str) -> None:
    """Print a one-line warning to stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def per_input_table(title: str, name_header: str = "slide") -> Table:
    """A table with one row per slide or image that fits an 80-column terminal: no vertical rules, and
    long names fold onto more lines so that numbers (add them with ``no_wrap=True``) are never cut."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column(name_header, overflow="fold", min_width=12)
    return table
