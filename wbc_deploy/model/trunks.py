"""Feature trunks cut from torchvision classifiers at a chosen stage.

Stage k (1..4) keeps a ResNet up to ``layer{k}`` and a DenseNet up to ``denseblock{k}`` followed by the
next BatchNorm+ReLU (the transition's, or ``norm5`` at stage 4), so both trunks end at stride 2**(k+1)
and, at the same input size, produce maps of the same spatial size. Stage 4 is the paper's choice
(the full trunks, 7x7 maps at 224 px); earlier stages give larger maps and smaller, faster models.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torchvision
from torch import nn

from ..errors import WbcError
from .weights import imagenet_state_dict, load_into, load_state_dict_file

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DENSENETS = ("densenet121", "densenet169", "densenet201", "densenet161")


def load_backbone(arch: str, imagenet: bool, weights_file: Path | None, skip_prefixes: tuple[str, ...]) -> nn.Module:
    """A torchvision classifier ``arch`` with ImageNet weights, local weights, or random init."""
    extra = {"init_weights": False} if arch == "inception_v3" else {}
    model = torchvision.models.get_model(arch, weights=None, **extra)
    if weights_file is not None:
        load_into(model, load_state_dict_file(weights_file), str(weights_file), skip_prefixes)
    elif imagenet:
        load_into(model, imagenet_state_dict(arch), f"torchvision {arch} ImageNet weights", skip_prefixes)
    return model


def resnet_trunk(arch: str, stage: int = 4, imagenet: bool = False, weights_file: Path | None = None) -> tuple[nn.Module, int]:
    """ResNet ``arch`` cut after ``layer{stage}``; returns (trunk, output channels)."""
    if arch not in RESNETS:
        raise WbcError(f"unknown ResNet trunk {arch!r}; choose one of {', '.join(RESNETS)}")
    _check_stage(stage)
    net = load_backbone(arch, imagenet, weights_file, skip_prefixes=("fc.",))
    parts = [("conv1", net.conv1), ("bn1", net.bn1), ("relu", net.relu), ("maxpool", net.maxpool)]
    parts += [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, stage + 1)]
    last = getattr(net, f"layer{stage}")[-1]
    channels = (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
    return nn.Sequential(OrderedDict(parts)), channels


def densenet_trunk(arch: str, stage: int = 4, imagenet: bool = False, weights_file: Path | None = None) -> tuple[nn.Module, int]:
    """DenseNet ``arch`` cut after ``denseblock{stage}`` (+ BN + ReLU); returns (trunk, output channels)."""
    if arch not in DENSENETS:
        raise WbcError(f"unknown DenseNet trunk {arch!r}; choose one of {', '.join(DENSENETS)}")
    _check_stage(stage)
    net = load_backbone(arch, imagenet, weights_file, skip_prefixes=("classifier.",))
    feats = net.features
    parts: list[tuple[str, nn.Module]] = [(n, getattr(feats, n)) for n in ("conv0", "norm0", "relu0", "pool0")]
    for i in range(1, stage + 1):
        parts.append((f"denseblock{i}", getattr(feats, f"denseblock{i}")))
        if i < stage:
            parts.append((f"transition{i}", getattr(feats, f"transition{i}")))
    norm = feats.norm5 if stage == 4 else getattr(feats, f"transition{stage}").norm
    parts += [("norm", norm), ("relu", nn.ReLU(inplace=True))]
    return nn.Sequential(OrderedDict(parts)), norm.num_features


def _check_stage(stage: int) -> None:
    if stage not in (1, 2, 3, 4):
        raise WbcError(f"trunk stage must be 1, 2, 3 or 4, got {stage}")
