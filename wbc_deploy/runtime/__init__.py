"""Inference runtimes behind one interface: ONNX Runtime, native TensorRT engines, PyTorch checkpoints.

``open_backend(path)`` accepts a bundled model's name (``default``, see :mod:`wbc_deploy.zoo`) and picks the backend from the file type (``.onnx`` -> ort, ``.engine``/``.plan`` ->
trt, RUN directory / ``.safetensors`` -> torch) or from ``backend=``. Importing this package and running
ONNX Runtime inference never imports torch, tensorrt or pycuda; those load only when their backend is built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import WbcError
from .base import Backend, softmax
from .engine_meta import EngineInfo, sidecar_path

__all__ = ["BACKENDS", "Backend", "EngineInfo", "backend_for_path", "open_backend", "sidecar_path", "softmax"]

#: Backend names and their accepted aliases.
BACKENDS: dict[str, tuple[str, ...]] = {
    "ort": ("ort", "onnx", "onnxruntime"),
    "trt": ("trt", "tensorrt", "engine"),
    "torch": ("torch", "pytorch", "eager"),
}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


def canonical_backend(name: str) -> str:
    """``onnxruntime`` -> ``ort`` etc.; WbcError listing the choices for an unknown name."""
    key = name.strip().lower()
    for canon, aliases in BACKENDS.items():
        if key in aliases:
            return canon
    raise WbcError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


def backend_for_path(model_path: str | Path) -> str:
    """The backend a model file's type calls for."""
    from ..zoo import resolve_model

    p = resolve_model(model_path)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return "ort"
    if suffix in ENGINE_SUFFIXES:
        return "trt"
    if p.is_dir() or suffix in CHECKPOINT_SUFFIXES:
        return "torch"
    raise WbcError(
        f"cannot tell what kind of model {p} is: expected a .onnx file, a TensorRT .engine/.plan, a RUN directory "
        "or a .safetensors checkpoint (or pass --backend)"
    )


def open_backend(model_path: str | Path, backend: str | None = None, **options: Any) -> Backend:
    """Load ``model_path`` with the backend its file type calls for, or the one named.

    ``options`` go to the backend: ort takes ``providers``, ``intra_op_threads``, ``inter_op_threads``,
    ``graph_optimization``, ...; trt takes ``device``; torch takes ``device``, ``half``, ``threads``.
    """
    from ..zoo import resolve_model, unknown_model_message

    p = resolve_model(model_path, canonical_backend(backend) if backend else None)
    if not p.exists():
        raise WbcError(unknown_model_message(model_path))
    by_type = backend_for_path(p) if backend is None or p.suffix.lower() in (".onnx", *ENGINE_SUFFIXES) or p.is_dir() else None
    name = canonical_backend(backend) if backend else by_type
    if by_type is not None and name != by_type:
        raise WbcError(f"{p.name} is a {by_type} model and cannot run on the {name} backend; drop --backend or pass a matching model")
    if name == "ort":
        from .ort_backend import OrtBackend

        return OrtBackend(p, **options)
    if name == "trt":
        from .trt_backend import TrtBackend

        return TrtBackend(p, **options)
    from .torch_backend import TorchBackend

    return TorchBackend(p, **options)
