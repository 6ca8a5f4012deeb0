"""The one reading of a classifier's forward output: logits, plus auxiliary logits where a model has them."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import WbcError


def split_logits(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main logits, auxiliary logits or None) of a model output: a tensor, torchvision's ``InceptionOutputs``
    (``.logits``/``.aux_logits``, Inception v3 in training mode) or a tuple whose first item is the logits."""
    if isinstance(output, torch.Tensor):
        return output, None
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise WbcError(f"the model returned {type(output).__name__}, not a tensor of logits")
    return logits, getattr(output, "aux_logits", None)
