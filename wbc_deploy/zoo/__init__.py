"""Bundled models (package data): trained on real cells, runnable on ONNX Runtime without torch.

Each model is a folder ``wbc_deploy/zoo/<name>/`` holding ``model.onnx`` (what ``count`` and ``evaluate``
run; the model card in its metadata), ``card.json`` (the same card, readable without ONNX) and
``model.safetensors`` (the weights in float16, for ``train --init`` fine-tuning and Grad-CAM; needs torch).
``index.json`` names the default. Every MODEL / ``--model`` argument accepts a bundled model's name or
``default``; a path that exists always wins over a name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..card import ModelCard
from ..errors import WbcError

ZOO_DIR = Path(__file__).resolve().parent
INDEX_NAME = "index.json"
DEFAULT_NAME = "default"
ONNX_NAME = "model.onnx"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"


@dataclass(frozen=True)
class BundledModel:
    """One bundled model: its name, folder and card."""

    name: str
    folder: Path
    card: ModelCard
    is_default: bool = False

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX_NAME

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_NAME


@lru_cache(maxsize=1)
def _index() -> dict:
    path = ZOO_DIR / INDEX_NAME
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def default_name() -> str | None:
    """The bundled model ``default`` refers to (None if the package bundles none)."""
    return _index().get(DEFAULT_NAME)


def bundled_models() -> list[BundledModel]:
    """Every bundled model, the default first."""
    default = default_name()
    out = []
    for folder in sorted(p for p in ZOO_DIR.iterdir() if p.is_dir() and (p / CARD_NAME).is_file()):
        out.append(BundledModel(folder.name, folder, ModelCard.from_json(folder / CARD_NAME), folder.name == default))
    return sorted(out, key=lambda m: (not m.is_default, m.name))


def bundled_names() -> list[str]:
    return [DEFAULT_NAME, *[m.name for m in bundled_models()]] if default_name() else [m.name for m in bundled_models()]


def find_bundled(name: str) -> BundledModel | None:
    """The bundled model called ``name`` (or ``default``), else None."""
    key = default_name() if name == DEFAULT_NAME else name
    for m in bundled_models():
        if m.name == key:
            return m
    return None


def resolve_model(ref: str | Path, backend: str | None = None) -> Path:
    """A model argument -> a path: an existing path as is; a bundled name -> its ONNX file (or, for the
    torch backend, its folder with the safetensors weights); anything else unchanged (callers report it)."""
    p = Path(ref).expanduser()
    if p.exists() or str(ref) in ("", "."):
        return p
    model = find_bundled(str(ref))
    if model is None:
        return p
    if backend in ("torch", "pytorch", "eager"):
        if not model.weights.is_file():
            raise WbcError(f"bundled model {model.name} has no torch weights ({WEIGHTS_NAME}): use its ONNX model")
        return model.folder
    return model.onnx


def unknown_model_message(ref: str | Path) -> str:
    """The error line for a model argument that is neither a file nor a bundled name."""
    names = bundled_names()
    hint = f"; bundled models: {', '.join(names)}" if names else ""
    return f"model not found: {ref} (expected a .onnx, .engine, RUN directory or .safetensors file{hint})"
