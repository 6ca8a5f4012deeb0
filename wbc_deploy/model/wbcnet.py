"""WBCNet: the reference paper's ResNet + DenseNet + SCAM classifier, and its single-branch ablations."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import create_attention
from .trunks import densenet_trunk, resnet_trunk
from .weights import PretrainedSpec, wants_imagenet


def _projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv + BN + ReLU that brings a trunk's map to ``out_channels``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class WBCNet(nn.Module):
    """ResNet and DenseNet trunks in parallel -> 1x1 conv to ``fuse_channels`` each -> concatenation ->
    attention -> global average pooling -> FC -> ReLU -> dropout -> FC(num_classes). Returns logits.

    ``branches`` selects the ablations: ("resnet", "densenet") is the paper's model, a single name keeps one
    branch. The attention block is ``self.attention`` (Grad-CAM's default target layer).
    """

    def __init__(
        self,
        num_classes: int,
        attention: str = "scam",
        resnet: str = "resnet50",
        densenet: str = "densenet121",
        stage: int = 4,
        fuse_channels: int = 512,
        hidden: int = 512,
        dropout: float = 0.5,
        branches: tuple[str, ...] = ("resnet", "densenet"),
        pretrained: PretrainedSpec = None,
        backbone_weights: dict[str, Path] | None = None,
    ) -> None:
        super().__init__()
        weights = backbone_weights or {}
        self.branches = tuple(branches)
        self.resnet: nn.Module | None = None
        self.densenet: nn.Module | None = None
        if "resnet" in self.branches:
            self.resnet, ch = resnet_trunk(
                resnet, stage, wants_imagenet(pretrained, "resnet", resnet), weights.get(resnet, weights.get("resnet"))
            )
            self.resnet_proj = _projection(ch, fuse_channels)
        if "densenet" in self.branches:
            self.densenet, ch = densenet_trunk(
                densenet, stage, wants_imagenet(pretrained, "densenet", densenet), weights.get(densenet, weights.get("densenet"))
            )
            self.densenet_proj = _projection(ch, fuse_channels)
        fused = fuse_channels * len(self.branches)
        self.attention = create_attention(attention, fused)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(fused, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused, attention-refined feature map (N, C, h, w)."""
        maps = []
        if self.resnet is not None:
            maps.append(self.resnet_proj(self.resnet(x)))
        if self.densenet is not None:
            d = self.densenet_proj(self.densenet(x))
            if maps and d.shape[-2:] != maps[0].shape[-2:]:  # odd input sizes round differently in the two trunks
                d = F.interpolate(d, size=maps[0].shape[-2:], mode="bilinear", align_corners=False)
            maps.append(d)
        fused = maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)
        return self.attention(fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))
