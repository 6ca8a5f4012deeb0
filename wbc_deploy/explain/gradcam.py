"""Grad-CAM (Selvaraju et al. 2017) on any layer of a PyTorch classifier (needs torch).

For a target class c and a layer with output A (N x K x h x w): the channel weights are the spatial
means of d(logit_c)/dA, the map is ReLU(sum_k w_k A_k), upsampled bilinearly to the image's size and
divided by its maximum, so it lies in 0..1 (all zeros when nothing in the layer supports the class).
The default layer is WBCNet's attention block (the paper's choice: the SCAM output); for other
models it is the last module whose output is still a spatial map (ResNet ``layer4``, DenseNet
``features``, Inception ``Mixed_7c``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..classes import normalise_class_name
from ..errors import WbcError
from ..model.outputs import split_logits


@dataclass
class CamBatch:
    """Grad-CAM of a batch, before upsampling.

    ``maps``: N x h x w float32, ReLU'd but not normalised (the layer's resolution);
    ``probs``: N x C softmax probabilities; ``targets``: the class index explained for each image.
    """

    maps: np.ndarray
    probs: np.ndarray
    targets: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def default_layer(model: nn.Module, input_size: int = 224) -> str:
    """The layer Grad-CAM explains by default: ``attention`` for WBCNet, else the last spatial map.

    "Last spatial map" is the last module (in the order modules finish their forward pass) whose
    output is N x C x h x w with h * w > 1, found with one forward pass on a zero image.
    """
    if isinstance(getattr(model, "attention", None), nn.Module):
        return "attention"
    order: list[str] = []
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
                order.append(name)
        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        was_training = model.training
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise WbcError("the model has no layer with a spatial output to explain; pass --layer NAME")
    return order[-1]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (a ``named_modules()`` name); WbcError with suggestions if absent."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    top = [n for n in modules if n and "." not in n]
    close = [n for n in modules if n and name and (n.endswith(name) or name in n)][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise WbcError(f"the model has no layer {name!r}{hint} (top-level layers: {', '.join(top)}; "
                   "any name from model.named_modules() works, e.g. 'attention' or 'resnet.layer2')")


def resolve_target(target: str | int | None, classes: Sequence[str]) -> int | None:
    """None for "predicted"; else the index of the class ``target`` names (aliases allowed)."""
    if target is None or (isinstance(target, str) and target.strip().lower() in ("predicted", "pred", "")):
        return None
    if isinstance(target, int):
        if 0 <= target < len(classes):
            return target
        raise WbcError(f"target class index {target} is out of range 0..{len(classes) - 1}")
    if target in classes:
        return list(classes).index(target)
    canonical = normalise_class_name(target)
    if canonical in classes:
        return list(classes).index(canonical)
    raise WbcError(f"--target {target!r} is not one of the model's classes ({', '.join(classes)}) or 'predicted'")


class GradCAM:
    """Grad-CAM on one layer of ``model``; call it on a preprocessed batch.

    The model is put in eval mode (dropout off, BatchNorm on running statistics, so every image in a
    batch is explained independently). The hooked layer's output is cloned before the rest of the
    network sees it, so later in-place operations cannot alter the activations Grad-CAM reads. When the
    layer runs several times in one forward pass (a shared ReLU), its last call is explained.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, input_size: int = 224) -> None:
        self.model = model.eval()
        self.layer = layer or default_layer(model, input_size)
        self.module = resolve_layer(model, self.layer)
        self._activation: torch.Tensor | None = None

    def _hook(self, _module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise WbcError(f"layer {self.layer!r} outputs {shape}, not a spatial N x C x H x W map: "
                           "choose a convolutional layer or block for Grad-CAM")
        self._activation = output
        return output.clone()

    def __call__(self, batch: torch.Tensor | np.ndarray, target: int | Sequence[int] | None = None) -> CamBatch:
        """Grad-CAM for each image of ``batch`` (N x 3 x S x S, preprocessed), for ``target`` (None: predicted)."""
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.as_tensor(batch, dtype=torch.float32, device=device).detach().requires_grad_(True)
        handle = self.module.register_forward_hook(self._hook)
        self._activation = None
        try:
            with torch.enable_grad():
                logits, _ = split_logits(self.model(x))
                if self._activation is None:
                    raise WbcError(f"layer {self.layer!r} did not run in the forward pass: choose a layer the model uses")
                act = self._activation
                n = logits.shape[0]
                if target is None:
                    idx = logits.argmax(dim=1)
                else:
                    idx = torch.as_tensor(np.broadcast_to(np.asarray(target), (n,)).copy(), device=logits.device, dtype=torch.long)
                score = logits.gather(1, idx[:, None]).sum()
                (grads,) = torch.autograd.grad(score, act)
            with torch.no_grad():
                weights = grads.mean(dim=(2, 3), keepdim=True)
                cams = F.relu((weights * act).sum(dim=1))
                probs = torch.softmax(logits.detach().float(), dim=1)
        finally:
            handle.remove()
            self._activation = None
        return CamBatch(cams.float().cpu().numpy(), probs.cpu().numpy(), idx.detach().cpu().numpy())


def upsample_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A layer-resolution map upsampled bilinearly to ``size`` = (H, W) and scaled to 0..1 (float32)."""
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    up = F.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0, 0]
    up = up.clamp_(min=0.0).numpy()
    peak = float(up.max(initial=0.0))
    if peak > 0:
        up = up / peak
    return np.clip(up, 0.0, 1.0).astype(np.float32)
