"""Shared rich console and progress bars for every long operation."""
from __future__ import annotations

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
