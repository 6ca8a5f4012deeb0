"""Model registry (timm-style): names map to builders with their default input size and attention."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torchvision
from torch import nn

from ..card import DEFAULT_FOV_UM, IMAGENET_MEAN, IMAGENET_STD, ModelCard
from ..errors import WbcError
from .attention import ATTENTIONS
from .trunks import load_backbone
from .wbcnet import WBCNet
from .weights import PretrainedSpec, wants_imagenet


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture: how to build it and what it expects."""

    name: str
    description: str
    default_input_size: int
    default_attention: str | None  # None: the architecture takes no attention block
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def takes_attention(self) -> bool:
        return self.default_attention is not None


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, description: str, input_size: int, attention: str | None, builder: Callable[..., nn.Module], **defaults: Any) -> None:
    """Add an architecture to the registry."""
    _REGISTRY[name] = ModelInfo(name, description, input_size, attention, builder, dict(defaults))


def list_models() -> list[ModelInfo]:
    """Every registered architecture, in registration order."""
    return list(_REGISTRY.values())


def get_model_info(arch: str) -> ModelInfo:
    """The registry entry for ``arch`` (WbcError listing the choices if unknown)."""
    try:
        return _REGISTRY[arch]
    except KeyError:
        raise WbcError(f"unknown architecture {arch!r}; choose one of: {', '.join(_REGISTRY)}") from None


def create_model(
    arch: str,
    num_classes: int,
    attention: str | None = None,
    pretrained: PretrainedSpec = None,
    backbone_weights: dict[str, Path] | None = None,
    **arch_options: Any,
) -> nn.Module:
    """Build ``arch`` with ``num_classes`` outputs (logits).

    ``attention=None`` takes the architecture's default. ``pretrained`` is "imagenet"/"none" or per branch
    (``{"resnet": "imagenet", "densenet": "none"}``); ``backbone_weights`` maps a branch or torchvision arch
    name to a local state-dict file and wins over ``pretrained``. ``arch_options`` override the registered
    defaults (e.g. ``resnet="resnet18", stage=3``).
    """
    info = get_model_info(arch)
    if num_classes < 2:
        raise WbcError(f"a classifier needs at least 2 classes, got {num_classes}")
    options = {**info.defaults, **arch_options}
    if info.takes_attention:
        att = (attention or info.default_attention).lower()
        if att not in ATTENTIONS:
            raise WbcError(f"unknown attention {attention!r}; choose one of: {', '.join(ATTENTIONS)}")
        options["attention"] = att
    elif attention not in (None, "none"):
        raise WbcError(f"{arch} is a plain baseline and takes no attention block (got --attention {attention})")
    names = backbone_names(info, options)
    unknown = sorted(set(backbone_weights or {}) - set(names))
    if unknown:
        raise WbcError(
            f"--backbone-weights {unknown[0]}=...: {arch} has no backbone of that name; use one of: {', '.join(names)}"
        )
    return info.builder(num_classes=num_classes, pretrained=pretrained, backbone_weights=backbone_weights, **options)


def backbone_names(info: ModelInfo, options: dict[str, Any]) -> list[str]:
    """Names ``backbone_weights``/``pretrained`` may use for this model's trunks (branch and torchvision names)."""
    if "tv_arch" in options:
        return [options["tv_arch"]]
    names: list[str] = []
    for branch, default in (("resnet", "resnet50"), ("densenet", "densenet121")):
        if branch in options.get("branches", ("resnet", "densenet")):
            names += [branch, options.get(branch, default)]
    return names


def resolved_attention(arch: str, attention: str | None) -> str | None:
    """The attention a model of ``arch`` gets for the requested ``attention`` (None for baselines)."""
    info = get_model_info(arch)
    return (attention or info.default_attention).lower() if info.takes_attention else None


def card_for(
    arch: str,
    classes: list[str],
    input_size: int | None = None,
    attention: str | None = None,
    arch_options: dict[str, Any] | None = None,
    fov_um: float | None = DEFAULT_FOV_UM,
) -> ModelCard:
    """The model card for a model built with these settings (what ``build_from_card`` rebuilds)."""
    info = get_model_info(arch)
    return ModelCard(
        arch=arch,
        classes=list(classes),
        input_size=int(input_size or info.default_input_size),
        attention=resolved_attention(arch, attention),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        fov_um=fov_um,
        arch_options=dict(arch_options or {}),
    )


def build_from_card(card: ModelCard) -> nn.Module:
    """Rebuild the architecture a card describes (random init; load the weights afterwards)."""
    return create_model(card.arch, len(card.classes), attention=card.attention, **card.arch_options)


# --------------------------------------------------------------------------------------------------
# Builders


def _wbcnet(num_classes: int, pretrained: PretrainedSpec, backbone_weights: dict[str, Path] | None, **options: Any) -> nn.Module:
    return WBCNet(num_classes, pretrained=pretrained, backbone_weights=backbone_weights, **options)


def _torchvision_classifier(
    num_classes: int, pretrained: PretrainedSpec, backbone_weights: dict[str, Path] | None, tv_arch: str, **options: Any
) -> nn.Module:
    """A torchvision classifier with its head replaced for ``num_classes`` (optionally ImageNet/local weights)."""
    weights_file = (backbone_weights or {}).get(tv_arch)
    head_prefixes = ("fc.", "classifier.", "AuxLogits.fc.")
    model = load_backbone(tv_arch, wants_imagenet(pretrained, tv_arch, tv_arch), weights_file, head_prefixes)
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    if hasattr(model, "classifier") and isinstance(model.classifier, nn.Linear):
        model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    if tv_arch == "inception_v3":
        model.AuxLogits.fc = nn.Linear(model.AuxLogits.fc.in_features, num_classes)
        # ImageNet-normalised input -> the [-1, 1] scaling torchvision's Inception weights were trained on.
        model.transform_input = True
    return model


register_model("wbcnet", "ResNet50+DenseNet121, the paper's model", 224, "scam", _wbcnet)
register_model(
    "wbcnet-resnet", "ablation: ResNet50 branch only", 224, "scam", _wbcnet, branches=("resnet",)
)
register_model(
    "wbcnet-densenet", "ablation: DenseNet121 branch only", 224, "scam", _wbcnet, branches=("densenet",)
)
register_model(
    "wbcnet-tiny",
    "ResNet18+DenseNet121 to stage 1, for CPUs",
    64,
    "scam",
    _wbcnet,
    resnet="resnet18",
    densenet="densenet121",
    # Stage 1 (stride 4, 16x16 maps at 64 px): as accurate as stage 2 on synthetic cells, ~40% fewer
    # FLOPs, and the Grad-CAM layer's receptive field stays smaller than the image, so heatmaps localise
    # (measured heatmap mass on the cell 0.63 at stage 1 vs 0.42 at stage 2, cell area 0.25).
    stage=1,
    fuse_channels=128,
    hidden=128,
)
register_model(
    "wbcnet-s",
    "ResNet18+DenseNet121 to stage 3, for real cells on CPUs",
    64,
    "scam",
    _wbcnet,
    resnet="resnet18",
    densenet="densenet121",
    # Stage 3 (stride 16, 4x4 maps at 64 px): a receptive field that spans the whole cell, so the shape of
    # the nucleus, not only its colour and texture, is what the classifier can use (stain varies by lab).
    stage=3,
    fuse_channels=128,
    hidden=128,
)
for _name in ("resnet18", "resnet34", "resnet50", "densenet121"):
    register_model(_name, f"baseline {_name}", 224, None, _torchvision_classifier, tv_arch=_name)
register_model("inception_v3", "baseline Inception v3", 299, None, _torchvision_classifier, tv_arch="inception_v3")

# torchvision is imported for its side effect of registering model builders used by load_backbone.
_ = torchvision
