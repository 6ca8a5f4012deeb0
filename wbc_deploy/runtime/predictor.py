"""Adapters from a :class:`Backend` to the callables other modules consume (evaluate, count).

``wbc_deploy.trainer.evaluate`` scores a folder with a "predict probabilities over RGB crops" function;
:func:`backend_predictor` builds that function for any exported artefact (``.onnx``, ``.engine``), so an
exported model is scored with exactly the metrics code a checkpoint is. Torch-free for ONNX models.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..errors import WbcError
from . import backend_for_path, canonical_backend, open_backend
from .base import Backend

PredictProba = Callable[[Sequence[np.ndarray]], np.ndarray]


def backend_options_for_device(kind: str, device: str | None) -> dict[str, Any]:
    """Map a ``--device`` string (``cpu``, ``cuda``, ``cuda:1``) to backend options.

    ort: ``cpu`` pins the CPU EP (bit-stable results); ``cuda[:N]`` prefers TensorRT/CUDA EPs on GPU N.
    trt: the GPU index. torch: the device string itself.
    """
    dev = (device or "").strip().lower()
    index = 0
    if dev.startswith("cuda"):
        _, _, num = dev.partition(":")
        if num and not num.isdigit():
            raise WbcError(f"--device {device!r}: expected cpu, cuda or cuda:N")
        index = int(num or 0)
    elif dev not in ("", "cpu", "auto"):
        raise WbcError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if kind == "ort":
        if dev == "cpu":
            return {"providers": ["CPUExecutionProvider"]}
        return {"device_id": index} if dev.startswith("cuda") else {}
    if kind == "trt":
        if dev == "cpu":
            raise WbcError("a TensorRT engine runs on an NVIDIA GPU only: use --device cuda (or evaluate the .onnx model on the CPU)")
        return {"device": index}
    return {"device": None if dev in ("", "auto") else dev}


def predictor_from_backend(backend: Backend) -> PredictProba:
    """``images -> probabilities`` over an open backend, preprocessing with the backend's card."""

    def predict(images: Sequence[np.ndarray]) -> np.ndarray:
        return backend.predict_images(list(images), batch_size=max(1, len(images)))

    return predict


def backend_predictor(model_path: str | Path, device: str | None = "cpu", backend: str | None = None, **options: Any) -> tuple[PredictProba, ModelCard]:
    """(predict function, card) for any model file, loaded through :func:`open_backend`."""
    kind = canonical_backend(backend) if backend else backend_for_path(model_path)
    opts = {**backend_options_for_device(kind, device), **options}
    be = open_backend(model_path, backend=kind, **opts)
    return predictor_from_backend(be), be.card
