"""Checkpoints: safetensors weights + model card, and the resumable training state.

A run directory holds ``model.safetensors`` (the best model's state dict; the card JSON also sits in
the file's metadata under ``wbc_deploy.card``) and ``card.json`` (the same card plus the checkpoint's
sha256). ``last.pt`` holds the state to resume training: tensors, numbers and strings only, written
with ``torch.save`` and read with ``torch.load(weights_only=True)``: no arbitrary pickles anywhere.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import sha256_file
from ..card import ONNX_CARD_KEY, ModelCard
from ..errors import WbcError

CHECKPOINT_NAME = "model.safetensors"
CARD_NAME = "card.json"
LAST_NAME = "last.pt"



def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def save_checkpoint(run_dir: str | Path, model: nn.Module | Mapping[str, torch.Tensor], card: ModelCard) -> Path:
    """Write ``model.safetensors`` (weights + card metadata) and ``card.json`` into ``run_dir``.

    Both files are replaced atomically. The card's ``params`` and ``checkpoint_sha256`` are filled
    in (the sha only in ``card.json``: a file cannot contain its own hash). Returns the weights path.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    if isinstance(model, nn.Module):
        card.params = sum(p.numel() for p in model.parameters())
    card.checkpoint_sha256 = None
    meta_card = card.to_dict()
    path = run_dir / CHECKPOINT_NAME
    tmp = _tmp(path)
    save_file(tensors, str(tmp), metadata={ONNX_CARD_KEY: json.dumps(meta_card), "format": "pt"})
    os.replace(tmp, path)
    card.checkpoint_sha256 = sha256_file(path)
    tmp_card = _tmp(run_dir / CARD_NAME)
    card.to_json(tmp_card)
    os.replace(tmp_card, run_dir / CARD_NAME)
    return path


def _resolve(path: str | Path) -> tuple[Path, Path | None]:
    """(weights file, card.json candidate) for a run directory, a .safetensors file or a bundled model name."""
    from ..zoo import resolve_model

    path = resolve_model(path, "torch")
    if path.is_dir():
        weights = path / CHECKPOINT_NAME
        if not weights.is_file():
            raise WbcError(
                f"{path} holds no {CHECKPOINT_NAME}: not a finished wbc-deploy run "
                "(train with `wbc-deploy train DATA --out RUN`, or pass the .safetensors file)"
            )
        return weights, path / CARD_NAME
    if not path.exists():
        raise WbcError(f"model not found: {path}")
    if path.suffix != ".safetensors":
        raise WbcError(f"{path}: expected a run directory or a .safetensors checkpoint (ONNX models: use the ONNX backend)")
    return path, path.with_name(CARD_NAME)


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """The state dict and card of a run directory or ``.safetensors`` checkpoint (no model built)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights, card_path = _resolve(path)
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise WbcError(f"cannot read checkpoint {weights}: {exc} (the file is damaged or not a safetensors file)") from None
    card: ModelCard | None = None
    if card_path is not None and card_path.is_file():
        beside = ModelCard.from_json(card_path)
        # card.json belongs to these weights if its hash matches (or it records none).
        if beside.checkpoint_sha256 in (None, "") or beside.checkpoint_sha256 == sha256_file(weights):
            card = beside
    if card is None:
        if ONNX_CARD_KEY not in meta:
            raise WbcError(f"{weights} carries no model card (no {CARD_NAME} beside it, none in its metadata): cannot rebuild the model")
        try:
            card = ModelCard.from_dict(json.loads(meta[ONNX_CARD_KEY]), source=str(weights))
        except json.JSONDecodeError as exc:
            raise WbcError(f"{weights}: model card metadata is not valid JSON ({exc})") from None
    return state, card


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model of a run directory or ``.safetensors`` file, load its weights, eval mode, CPU.

    The card comes from ``card.json`` beside the weights (when its sha256 matches them) or from the
    safetensors metadata. Raises WbcError for a missing/damaged file or weights that do not fit.
    """
    from ..model import build_from_card

    state, card = load_state(path)
    model = build_from_card(card)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise WbcError(f"the weights in {path} do not fit a {card.arch} model as its card describes: {first}") from None
    return model.eval(), card


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a dict of tensors/state dicts/numbers/strings (resume state)."""
    path = Path(path)
    tmp = _tmp(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a resume state with ``weights_only=True`` (refuses arbitrary pickled objects)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WbcError(f"no training state to resume: {path} not found") from None
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise WbcError(f"cannot read training state {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise WbcError(f"{path} is not a wbc-deploy training state")
    return state
