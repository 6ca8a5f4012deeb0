"""PyTorch eager backend: the reference every exported artefact is compared with, and the fallback.

Runs a checkpoint (a RUN directory or a ``.safetensors`` file) through ``load_checkpoint``. torch is
imported only when this backend is built, never by ``wbc_deploy.runtime`` itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WbcError
from .base import Backend


def import_torch() -> Any:
    """``import torch`` or a WbcError naming the training extra."""
    try:
        import torch
    except Exception as exc:
        raise WbcError(
            f"PyTorch is not installed ({exc}): the torch backend runs checkpoints and needs `pip install wbc-deploy[train]`; "
            "on a scanner PC use an exported .onnx model instead"
        ) from None
    return torch


class TorchBackend(Backend):
    """Eager PyTorch inference on a checkpoint.

    Args:
        model_path: RUN directory (``model.safetensors`` + ``card.json``) or a ``.safetensors`` file.
        device: ``cuda``, ``cuda:1``, ``cpu`` or None (CUDA when available, else CPU).
        half: run in FP16 autocast on CUDA (what ``gpu_check.sh`` compares with FP32).
        threads: torch intra-op threads on CPU (None: torch's default).
    """

    name = "torch"

    def __init__(self, model_path: str | Path, device: str | None = None, half: bool = False, threads: int | None = None) -> None:
        torch = import_torch()
        from ..trainer.checkpoint import load_checkpoint

        self.model_path = Path(model_path)
        if not self.model_path.exists():
            raise WbcError(f"checkpoint not found: {self.model_path}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise WbcError(f"device {device!r} requested but PyTorch sees no CUDA GPU here; use --device cpu")
        if half and not device.startswith("cuda"):
            raise WbcError("FP16 (half) inference with the torch backend needs a CUDA device")
        if threads:
            torch.set_num_threads(int(threads))
        model, card = load_checkpoint(self.model_path)
        self._torch = torch
        self._device = torch.device(device)
        self.model = model.eval().to(self._device)
        self.card = card
        self.half = bool(half)
        self.device = str(self._device) + (f" ({torch.cuda.get_device_name(self._device)})" if self._device.type == "cuda" else "")

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits (N x C float32) of a checked batch: what export verification compares."""
        from ..model.outputs import split_logits

        torch = self._torch
        x = torch.from_numpy(self.check_batch(batch)).to(self._device)
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=torch.float16, enabled=self.half):
            out = split_logits(self.model(x))[0]
        return out.float().cpu().numpy()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        from ..model.outputs import split_logits

        torch = self._torch
        x = torch.from_numpy(batch).to(self._device)
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=torch.float16, enabled=self.half):
            out = split_logits(self.model(x))[0].float()
        if self.card.output == "probabilities":  # a checkpoint whose module already ends in a softmax
            return out.cpu().numpy()
        return torch.softmax(out, dim=1).cpu().numpy()

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
