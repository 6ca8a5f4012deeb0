"""ONNX Runtime backend: TensorRT EP -> CUDA EP -> CPU EP, with the model card validated on load.

An exported wbc-deploy ONNX model carries its card in ``metadata_props``; a model without it, whose
input size differs from the card, or whose class count differs from the card's classes is refused.
Torch-free: this is the backend scanner PCs count with.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..errors import WbcError
from .base import Backend, softmax
from .ort_options import OrtSettings, ort_session

#: Default provider preference, fastest first; only the available ones are used.
DEFAULT_PROVIDERS: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

PROVIDER_ALIASES: dict[str, str] = {
    "trt": "TensorrtExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def resolve_providers(providers: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Turn a provider choice (None, ``"cpu"``, ``"trt,cuda,cpu"`` or full EP names) into EP names.

    None means the default order restricted to what this onnxruntime build offers. An explicitly
    requested provider that is not available is an error naming the fix.
    """
    if providers is None:
        chosen = [p for p in DEFAULT_PROVIDERS if p in available]
        return chosen or list(available)
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p.strip()]
    chosen = []
    for p in providers:
        name = PROVIDER_ALIASES.get(p.strip().lower(), p.strip())
        if name not in available:
            hint = (
                "install onnxruntime-gpu (`pip install wbc-deploy[gpu]`) on a machine with an NVIDIA GPU"
                if name in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
                else "choose one of the available providers"
            )
            raise WbcError(f"ONNX Runtime provider {p!r} is not available here (available: {', '.join(available)}): {hint}")
        if name not in chosen:
            chosen.append(name)
    return chosen


def read_onnx_card(session: Any, source: str) -> ModelCard:
    """The ModelCard stored in an ONNX Runtime session's model metadata (WbcError if absent)."""
    props = dict(session.get_modelmeta().custom_metadata_map)
    return ModelCard.from_onnx_metadata(props, source=source)


def _static_dim(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def validate_session(session: Any, card: ModelCard, source: str) -> tuple[str, str]:
    """Check the graph's input/output against the card; return (input name, output name)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise WbcError(f"{source} has {len(inputs)} inputs; a wbc-deploy classifier has exactly one (`images`)")
    inp = inputs[0]
    if inp.type != "tensor(float)":
        raise WbcError(f"{source}: input {inp.name!r} is {inp.type}, expected float32 (tensor(float)): re-export with `wbc-deploy export`")
    shape = list(inp.shape)
    if len(shape) != 4:
        raise WbcError(f"{source}: input {inp.name!r} has shape {shape}, expected N x 3 x H x W")
    c, h, w = (_static_dim(d) for d in shape[1:])
    s = int(card.input_size)
    if c not in (None, 3) or any(d is not None and d != s for d in (h, w)):
        raise WbcError(
            f"{source}: the graph's input is {shape[1]} x {shape[2]} x {shape[3]} but its metadata says "
            f"3 x {s} x {s}: the metadata does not belong to this model; re-export it with `wbc-deploy export`"
        )
    outputs = session.get_outputs()
    out = next((o for o in outputs if o.name == ("logits" if card.output == "logits" else "probabilities")), outputs[0])
    oshape = list(out.shape)
    n_cls = _static_dim(oshape[-1]) if oshape else None
    if len(oshape) != 2 or (n_cls is not None and n_cls != len(card.classes)):
        raise WbcError(
            f"{source}: output {out.name!r} has shape {oshape} but the metadata lists {len(card.classes)} classes "
            f"({', '.join(card.classes)}): the class list does not match the model; re-export it with `wbc-deploy export`"
        )
    return inp.name, out.name


class OrtBackend(Backend):
    """ONNX Runtime inference on an exported wbc-deploy model.

    Args:
        model_path: ``.onnx`` file written by ``wbc-deploy export``.
        providers: None (TensorRT EP -> CUDA EP -> CPU EP, whichever exist), a comma list of short names
            (``trt``, ``cuda``, ``cpu``) or full EP names.
        intra_op_threads / inter_op_threads: ONNX Runtime thread pools (0 or None: ORT's default, one per core).
        graph_optimization: ``disable``, ``basic``, ``extended`` or ``all``.
        parallel: run independent graph branches in parallel (``ORT_PARALLEL``; needs inter_op_threads > 1).
        enable_mem_arena: ONNX Runtime's CPU memory arena.
        trt_fp16: let the TensorRT EP build FP16 kernels (as the native engine does).
        trt_cache_dir: where the TensorRT EP caches engines and timing (default ``~/.cache/wbc-deploy/ort-trt``).
        device_id: GPU index for the CUDA/TensorRT EPs.
        settings: every session knob at once (:class:`~wbc_deploy.runtime.ort_options.OrtSettings`, what the
            benchmark times); when given, the five session arguments above are not used.
        trt_options: extra TensorRT EP provider options (e.g. ``trt_profile_min_shapes``).
    """

    name = "ort"

    def __init__(
        self,
        model_path: str | Path,
        providers: str | Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        graph_optimization: str = "all",
        parallel: bool = False,
        enable_mem_arena: bool = True,
        trt_fp16: bool = True,
        trt_cache_dir: str | Path | None = None,
        device_id: int = 0,
        settings: OrtSettings | None = None,
        trt_options: dict[str, Any] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise WbcError(f"ONNX model not found: {self.model_path}")
        if settings is None:  # ORT's own defaults for every knob not named here
            settings = OrtSettings(
                label="runtime", intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                graph_optimization=graph_optimization, parallel=bool(parallel), enable_mem_arena=bool(enable_mem_arena),
                enable_mem_pattern=None, allow_spinning=None, denormal_as_zero=None,
            )
        settings.check()
        chosen = resolve_providers(providers, ort.get_available_providers())

        provider_args: list[Any] = []
        for p in chosen:
            if p == "TensorrtExecutionProvider":
                cache = Path(trt_cache_dir or Path.home() / ".cache" / "wbc-deploy" / "ort-trt")
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    cache_opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                  "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}
                except OSError:
                    cache_opts = {}
                provider_args.append((p, {"device_id": device_id, "trt_fp16_enable": bool(trt_fp16), **cache_opts, **(trt_options or {})}))
            elif p == "CUDAExecutionProvider":
                provider_args.append((p, {"device_id": device_id}))
            else:
                provider_args.append(p)
        self.session = ort_session(self.model_path, settings, provider_args)

        source = f"ONNX model {self.model_path}"
        self.card = read_onnx_card(self.session, source)
        self.input_name, self.output_name = validate_session(self.session, self.card, source)
        self.providers = list(self.session.get_providers())
        self.device = self.providers[0]
        self.requested_providers = chosen
        self.settings = settings
        self.options = {
            "intra_op_threads": settings.intra_op_threads or 0,
            "inter_op_threads": settings.inter_op_threads or 0,
            "graph_optimization": settings.graph_optimization or "all",
            "parallel": bool(settings.parallel),
            "enable_mem_arena": settings.enable_mem_arena is not False,
        }

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return softmax(out) if self.card.output == "logits" else out

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

