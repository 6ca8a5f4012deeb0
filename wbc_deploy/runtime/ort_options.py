"""ONNX Runtime session settings and the one builder of ``SessionOptions`` and sessions (torch-free).

Every knob the CPU execution provider offers that changes speed is one field of :class:`OrtSettings`:
intra-/inter-op threads, graph optimisation level, sequential or parallel execution, the memory arena
and memory-pattern planning, thread spinning, flushing denormals, and the layout transformers
(``NchwcTransformer`` puts FP32 convolutions in MLAS's blocked NCHWc layout; ``NhwcTransformer`` puts
quantised ones in NHWC). :class:`~wbc_deploy.runtime.ort_backend.OrtBackend`, the benchmark
(:mod:`wbc_deploy.bench.ort_settings`: tuned settings and the sweep) and export verification
(:mod:`wbc_deploy.converters.verify`) all build their sessions here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WbcError

GRAPH_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class OrtSettings:
    """One ONNX Runtime CPU configuration. ``None`` for a field means ORT's own default."""

    label: str = "tuned"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    graph_optimization: str | None = "all"
    parallel: bool | None = False
    enable_mem_arena: bool | None = True
    enable_mem_pattern: bool | None = True
    allow_spinning: bool | None = True
    denormal_as_zero: bool | None = False
    disabled_optimizers: tuple[str, ...] = ()
    extra_config: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """WbcError (one line) for a setting ONNX Runtime has no value for."""
        if self.graph_optimization is not None and self.graph_optimization not in GRAPH_LEVELS:
            raise WbcError(f"graph optimisation level must be one of {', '.join(GRAPH_LEVELS)}, got {self.graph_optimization!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["disabled_optimizers"] = list(self.disabled_optimizers)
        return d

    def describe(self) -> str:
        """A compact one-line description for tables."""
        parts = [f"intra={self.intra_op_threads or 'ort'}"]
        if self.inter_op_threads:
            parts.append(f"inter={self.inter_op_threads}")
        for name, value, default in (
            ("opt", self.graph_optimization, "all"), ("parallel", self.parallel, False),
            ("arena", self.enable_mem_arena, True), ("mempattern", self.enable_mem_pattern, True),
            ("spin", self.allow_spinning, True), ("daz", self.denormal_as_zero, False),
        ):
            if value is not None and value != default:
                parts.append(f"{name}={value}")
        if self.disabled_optimizers:
            parts.append("no " + "+".join(self.disabled_optimizers))
        return " ".join(parts)


def default_settings() -> OrtSettings:
    """ONNX Runtime exactly as ``SessionOptions()`` leaves it (the untuned baseline)."""
    return OrtSettings(
        label="ort-defaults", intra_op_threads=None, inter_op_threads=None, graph_optimization=None, parallel=None,
        enable_mem_arena=None, enable_mem_pattern=None, allow_spinning=None, denormal_as_zero=None,
    )


def ort_session_options(settings: OrtSettings) -> Any:
    """An ``onnxruntime.SessionOptions`` for ``settings``: the one place the package builds them."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: warnings about unused initialisers are noise to a lab
    settings.check()
    if settings.graph_optimization is not None:
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[settings.graph_optimization]
    if settings.intra_op_threads:
        so.intra_op_num_threads = int(settings.intra_op_threads)
    if settings.inter_op_threads:
        so.inter_op_num_threads = int(settings.inter_op_threads)
    if settings.parallel is not None:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if settings.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    if settings.enable_mem_arena is not None:
        so.enable_cpu_mem_arena = bool(settings.enable_mem_arena)
    if settings.enable_mem_pattern is not None:
        so.enable_mem_pattern = bool(settings.enable_mem_pattern)
    if settings.allow_spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if settings.allow_spinning else "0")
    if settings.denormal_as_zero is not None:
        so.add_session_config_entry("session.set_denormal_as_zero", "1" if settings.denormal_as_zero else "0")
    for key, value in settings.extra_config.items():
        so.add_session_config_entry(key, str(value))
    return so


def ort_session(model: str | Path | bytes, settings: OrtSettings, providers: Sequence[Any] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session on ``model`` with ``settings`` (WbcError with one line if it cannot load)."""
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    kwargs: dict[str, Any] = {}
    if settings.disabled_optimizers:
        kwargs["disabled_optimizers"] = list(settings.disabled_optimizers)
    try:
        return ort.InferenceSession(src, sess_options=ort_session_options(settings), providers=list(providers), **kwargs)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        text = str(exc).strip().splitlines()
        raise WbcError(f"ONNX Runtime cannot load {model if not isinstance(model, bytes) else 'the model'}: "
                       f"{text[0] if text else type(exc).__name__}") from None
