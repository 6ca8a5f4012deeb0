"""`wbc-deploy models`: the architectures and attention variants with their size and cost."""
from __future__ import annotations

import typer

from .app import app


@app.command("models")
def models_command(
    input_size: int = typer.Option(None, "--input-size", help="Compute GFLOPs at this input size instead of each model's default."),
) -> None:
    """List the architectures and attention variants with parameter count and GFLOPs at their input size."""
    from rich.table import Table

    from ..console import console
    from ..model import ATTENTION_DESCRIPTIONS, ATTENTIONS, list_models, summarise

    table = Table(title="Architectures (--arch), 5 classes", title_justify="left")
    for col, kw in (("arch", {}), ("description", {}), ("input", {"justify": "right"}), ("attention", {}),
                    ("params", {"justify": "right"}), ("GFLOPs", {"justify": "right"})):
        table.add_column(col, **kw)
    for info in list_models():
        s = summarise(info.name, input_size=input_size)
        table.add_row(info.name, info.description, f"{s.input_size}", s.attention or "-", f"{s.params:,}", f"{s.gflops:.2f}")
    console.print(table)

    att = Table(title="Attention variants of wbcnet (--attention)", title_justify="left")
    for col, kw in (("attention", {}), ("description", {}), ("params", {"justify": "right"}), ("GFLOPs", {"justify": "right"})):
        att.add_column(col, **kw)
    for name in ATTENTIONS:
        s = summarise("wbcnet", attention=name, input_size=input_size)
        att.add_row(name, ATTENTION_DESCRIPTIONS[name], f"{s.params:,}", f"{s.gflops:.2f}")
    console.print(att)
    console.print("GFLOPs count a multiply-add as 2 operations (GMACs = GFLOPs / 2, the figure torchvision's docs quote).")
