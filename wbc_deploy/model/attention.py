"""Attention blocks for the fused feature map, chosen by name from a registry.

CAM and SAM are the two halves of CBAM (Woo et al. 2018): channel attention is a shared MLP over the
global-average- and global-max-pooled descriptors; spatial attention is a 7x7 convolution over the
channel-wise mean and max maps. The paper's SCAM applies SAM first, then CAM (CBAM's order reversed).
Every block maps (N, C, H, W) -> (N, C, H, W) and is a small ``nn.Module`` built as ``block(channels)``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ..errors import WbcError


class ChannelAttention(nn.Module):
    """CBAM channel attention (CAM): x * sigmoid(MLP(GAP(x)) + MLP(GMP(x)))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=True),
        )

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, 1, 1) channel weights in 0..1."""
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class SpatialAttention(nn.Module):
    """CBAM spatial attention (SAM): x * sigmoid(conv7x7([mean_c(x), max_c(x)]))."""

    def __init__(self, channels: int | None = None, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 1, H, W) spatial weights in 0..1."""
        desc = torch.cat([torch.mean(x, dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(desc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): x * sigmoid(FC(ReLU(FC(GAP(x)))))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(torch.mean(x, dim=(2, 3), keepdim=True))


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al. 2020): a 1-D convolution across the pooled channel descriptor, kernel size from C."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        k = int(abs((math.log2(channels) + b) / gamma))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.mean(x, dim=(2, 3))  # (N, C)
        y = self.conv(y.unsqueeze(1)).squeeze(1)  # (N, C)
        return x * torch.sigmoid(y)[:, :, None, None]


class ParallelChannelSpatial(nn.Module):
    """CAM and SAM in parallel on the same input; the two refined maps are averaged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cam = ChannelAttention(channels)
        self.sam = SpatialAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.cam(x) + self.sam(x))


def _sequence(*parts: tuple[str, Callable[[int], nn.Module]]) -> Callable[[int], nn.Module]:
    def build(channels: int) -> nn.Module:
        return nn.Sequential(OrderedDict((name, make(channels)) for name, make in parts))

    return build


#: Attention name -> constructor taking the number of channels. Order follows the paper's comparison.
ATTENTIONS: dict[str, Callable[[int], nn.Module]] = {
    "none": lambda channels: nn.Identity(),
    "se": SqueezeExcitation,
    "eca": EfficientChannelAttention,
    "cam": ChannelAttention,
    "sam": SpatialAttention,
    "cam||sam": ParallelChannelSpatial,
    "csam": _sequence(("cam", ChannelAttention), ("sam", SpatialAttention)),
    "scam": _sequence(("sam", SpatialAttention), ("cam", ChannelAttention)),
}

ATTENTION_DESCRIPTIONS: dict[str, str] = {
    "none": "no attention",
    "se": "squeeze-and-excitation",
    "eca": "efficient channel attention",
    "cam": "CBAM channel attention",
    "sam": "CBAM spatial attention",
    "cam||sam": "CAM and SAM in parallel (averaged)",
    "csam": "CAM then SAM (CBAM order)",
    "scam": "SAM then CAM (the paper's SCAM)",
}


def create_attention(name: str, channels: int) -> nn.Module:
    """Build the attention block ``name`` for a ``channels``-channel feature map."""
    key = name.strip().lower()
    if key not in ATTENTIONS:
        raise WbcError(f"unknown attention {name!r}; choose one of: {', '.join(ATTENTIONS)}")
    return ATTENTIONS[key](channels)
