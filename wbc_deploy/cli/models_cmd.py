"""`wbc-deploy models`: the architectures and attention variants with their size and cost."""
from __future__ import annotations

import typer

from .app import app


@app.command("models")
def models_command(
    input_size: int = typer.Option(None, "--input-size", help="Compute GFLOPs at this input size instead of each model's default."),
) -> None:
    """List the bundled (ready to count) models, then the architectures and attention variants with
    parameter count and GFLOPs at their input size."""
    from rich.table import Table

    from ..console import console

    print_bundled(console)
    try:
        from ..model import ATTENTION_DESCRIPTIONS, ATTENTIONS, list_models, summarise
    except ImportError:
        console.print("architectures for training: install the training extra (pip install 'wbc-deploy[train]') to list them")
        return

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


def print_bundled(console) -> None:
    """The bundled models: name (MODEL / --model), architecture, classes, scale, test figures, licence."""
    from rich.table import Table

    from ..zoo import bundled_models

    models = bundled_models()
    if not models:
        console.print("no bundled models in this installation")
        return
    table = Table(title="Bundled models (MODEL / --model NAME; count uses `default`)", title_justify="left")
    for col in ("name", "arch", "input", "fov um", "classes", "test OA", "AF1", "trained on"):
        table.add_column(col, justify="right" if col in ("input", "fov um", "test OA", "AF1") else "left")
    for m in models:
        test = (m.card.metrics or {}).get("test") or {}
        name = f"{m.name} (default)" if m.is_default else m.name
        data = (m.card.training or {}).get("data_name", "")
        table.add_row(name, m.card.arch, str(m.card.input_size), f"{m.card.fov_um:g}" if m.card.fov_um else "-",
                      ", ".join(m.card.classes), f"{test['OA']:.4f}" if "OA" in test else "-",
                      f"{test['AF1']:.4f}" if "AF1" in test else "-", data)
    console.print(table)
