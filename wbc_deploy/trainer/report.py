"""Metrics table (rich) and figures (matplotlib, Agg): confusion matrix and training curves. Torch-free."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from ..files import atomic_save_figure


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def metrics_table(metrics: Mapping[str, Any], title: str = "metrics") -> Table:
    """A table with one row per class (precision, recall, F1, one-vs-rest accuracy in %, support) and a
    last row with AP, AR, AF1 and OA (the paper's Eqs. 4-6) in the same columns."""
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    for col in ("precision %", "recall %", "F1 %", "accuracy %", "support"):
        table.add_column(col, justify="right")
    for name in metrics["classes"]:
        pc = metrics["per_class"][name]
        table.add_row(name, _pct(pc["precision"]), _pct(pc["recall"]), _pct(pc["f1"]), _pct(pc["accuracy"]), str(pc["support"]))
    table.add_section()
    table.add_row(
        "[bold]AP / AR / AF1 / OA[/bold]",
        f"[bold]{_pct(metrics['AP'])}[/bold]",
        f"[bold]{_pct(metrics['AR'])}[/bold]",
        f"[bold]{_pct(metrics['AF1'])}[/bold]",
        f"[bold]{_pct(metrics['OA'])}[/bold]",
        str(metrics["n"]),
    )
    if metrics.get("absent_classes"):
        table.caption = f"absent from the data (left out of AP/AR/AF1): {', '.join(metrics['absent_classes'])}"
    return table


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(metrics: Mapping[str, Any], path: str | Path, title: str = "confusion matrix") -> Path:
    """Save the confusion matrix (rows true, columns predicted; counts and row %) as a PNG."""
    cm = np.asarray(metrics["confusion"], dtype=float)
    classes = list(metrics["classes"])
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    fig = _figure(1.2 + 1.0 * k, 1.0 + 0.9 * k)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=35, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (OA {100 * metrics['OA']:.2f}%)")
    for i in range(k):
        for j in range(k):
            colour = "white" if frac[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(cm[i, j])}\n{100 * frac[i, j]:.0f}%", ha="center", va="center", fontsize=8, color=colour)
    fig.tight_layout()
    return atomic_save_figure(path, fig)


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Save loss and accuracy per epoch (train and validation) as a PNG."""
    epochs = [int(r["epoch"]) for r in history]
    fig = _figure(9, 3.6)
    ax1 = fig.add_subplot(1, 2, 1)
    ax1.plot(epochs, [float(r["train_loss"]) for r in history], "o-", label="train")
    ax1.plot(epochs, [float(r["val_loss"]) for r in history], "o-", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(epochs, [100 * float(r["train_acc"]) for r in history], "o-", label="train")
    ax2.plot(epochs, [100 * float(r["val_acc"]) for r in history], "o-", label="val")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy %")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_save_figure(path, fig)
