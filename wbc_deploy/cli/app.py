"""The Typer application object that every command module registers on."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="wbc-deploy",
    help="White-blood-cell classification: train, export, count whole-slide images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
synth_app = typer.Typer(help="Generate synthetic data (cells, slides) for offline demos and tests.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")
