"""Backbone weights: torchvision's ImageNet weights API, or local torchvision-format state dicts (offline machines)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WbcError

#: Per-branch pretraining: "imagenet" or "none" for every branch, or a dict branch/arch name -> "imagenet"|"none".
PretrainedSpec = str | dict[str, str] | None

_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def parse_pretrained(spec: str | None) -> PretrainedSpec:
    """Parse ``--pretrained``: ``imagenet``, ``none``, or per branch ``resnet=imagenet,densenet=none``."""
    if spec is None:
        return None
    spec = spec.strip().lower()
    if "=" not in spec:
        if spec not in ("imagenet", "none"):
            raise WbcError(f"--pretrained must be imagenet, none or BRANCH=imagenet|none,...; got {spec!r}")
        return spec
    out: dict[str, str] = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if value not in ("imagenet", "none"):
            raise WbcError(f"--pretrained {part!r}: the value must be imagenet or none")
        out[name.strip()] = value
    return out


def parse_backbone_weights(items: list[str] | None) -> dict[str, Path]:
    """Parse repeated ``--backbone-weights NAME=PATH`` options into a dict."""
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise WbcError(f"--backbone-weights expects NAME=PATH (e.g. resnet50=~/weights/resnet50.pth), got {item!r}")
        out[name.strip()] = Path(path).expanduser()
    return out


def wants_imagenet(spec: PretrainedSpec, branch: str, arch: str) -> bool:
    """True if ``spec`` asks for ImageNet weights for this branch (by branch name or torchvision arch name)."""
    if spec is None:
        return False
    if isinstance(spec, str):
        return spec == "imagenet"
    value = spec.get(branch, spec.get(arch, "none"))
    return value == "imagenet"


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for ``arch`` (downloaded once into the torch cache)."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, HTTPError, socket errors: no network or no cache
        raise WbcError(
            f"ImageNet weights for {arch} are not available ({type(exc).__name__}: {exc}); this machine is offline "
            f"and they are not in the torch cache: pass --backbone-weights {arch}=PATH (a torchvision state dict) or --pretrained none"
        ) from None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a torchvision-format state dict from .pth/.pt (weights_only) or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise WbcError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WbcError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WbcError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(model: nn.Module, state: dict[str, Any], source: str, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load a torchvision state dict into ``model`` (a full torchvision classifier), ignoring its head.

    Old DenseNet key names (``norm.1``) are remapped. Every parameter of the model outside
    ``skip_prefixes`` must be provided with the right shape, else a clear error names what does not fit.
    """
    fixed: dict[str, Any] = {}
    for key, value in state.items():
        m = _DENSENET_OLD_KEY.match(key)
        fixed[m.group(1) + m.group(2) if m else key] = value
    own = model.state_dict()
    # BatchNorm's num_batches_tracked is absent from older checkpoints and unused in eval: not required.
    wanted = {k for k in own if not k.startswith(skip_prefixes) and (k in fixed or not k.endswith("num_batches_tracked"))}
    missing = sorted(k for k in wanted if k not in fixed)
    wrong = sorted(k for k in wanted if k in fixed and tuple(fixed[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        what = f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else f"{len(wrong)} keys of the wrong shape (e.g. {wrong[0]})"
        raise WbcError(f"weights from {source} do not fit {type(model).__name__}: {what}")
    model.load_state_dict({k: fixed[k] for k in wanted}, strict=False)
