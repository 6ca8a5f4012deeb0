"""Parameter counts and FLOPs of registered models, computed on the meta device (no memory, no init cost)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model, get_model_info, resolved_attention


@dataclass(frozen=True)
class ModelSummary:
    """Size and cost of one architecture/attention at its input size."""

    arch: str
    attention: str | None
    input_size: int
    params: int
    gflops: float  # floating-point operations per image (a multiply-add counts 2)

    @property
    def gmacs(self) -> float:
        """Multiply-accumulates per image (what torchvision's docs call GFLOPS)."""
        return self.gflops / 2


def summarise(arch: str, attention: str | None = None, input_size: int | None = None, num_classes: int = 5, **arch_options) -> ModelSummary:
    """Parameters and FLOPs per image of ``arch`` for one forward pass at ``input_size``."""
    size = int(input_size or get_model_info(arch).default_input_size)
    with torch.device("meta"):
        model = create_model(arch, num_classes, attention=attention, **arch_options).eval()
        params = sum(p.numel() for p in model.parameters())
        x = torch.empty(1, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
    return ModelSummary(arch, resolved_attention(arch, attention), size, params, counter.get_total_flops() / 1e9)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of a built model."""
    return sum(p.numel() for p in model.parameters())
