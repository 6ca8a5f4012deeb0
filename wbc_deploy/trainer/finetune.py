"""Fine-tuning: start a run from an existing model (``train --init MODEL``), e.g. the bundled default
adapted to a lab's own scanner with a few hundred of its labelled cells.

The architecture, input size, field of view, stain normalisation and preprocessing come from MODEL's
card; the weights are MODEL's. When the new data's classes differ from MODEL's (a 4-class set without
basophils, another class order), the trunks and attention are kept and the last layer is rebuilt for
the new classes, reusing the rows of the classes both have.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..card import ModelCard
from ..errors import WbcError
from .checkpoint import load_checkpoint


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the model's final classification layer."""
    last: tuple[nn.Module, str, nn.Linear] | None = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last = (parent, name, child)
    if last is None:
        raise WbcError("the --init model has no linear classification layer to adapt")
    return last


def initial_model(ref: str, classes: list[str], seed: int = 0) -> tuple[nn.Module, ModelCard]:
    """MODEL's network and a fresh card for a run on ``classes`` (calibration and metrics reset)."""
    model, old = load_checkpoint(ref)
    if list(old.classes) != list(classes):
        parent, name, layer = _last_linear(model)
        torch.manual_seed(seed)
        new = nn.Linear(layer.in_features, len(classes))
        with torch.no_grad():
            for i, c in enumerate(classes):
                if c in old.classes:
                    j = old.classes.index(c)
                    new.weight[i] = layer.weight[j]
                    new.bias[i] = layer.bias[j]
        setattr(parent, name, new)
    card = dataclasses.replace(
        old, classes=list(classes), temperature=1.0, confidence_threshold=None, checkpoint_sha256=None,
        training={"init": str(ref), "init_classes": list(old.classes)}, metrics={},
    )
    return model.train(), card
