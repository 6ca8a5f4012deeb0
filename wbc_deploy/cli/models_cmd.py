"""`wbc-deploy models`: placeholder until the model registry lands."""
from __future__ import annotations

from .app import app


@app.command("models")
def models_command() -> None:
    """List the architectures and attention variants with parameters and GFLOPs."""
    from ..console import console

    console.print("models: not yet implemented")
