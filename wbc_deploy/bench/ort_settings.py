"""ONNX Runtime CPU session settings: the tuned defaults the benchmark uses, and a sweep to re-tune them.

Every knob the CPU execution provider offers that changes speed is one field of :class:`OrtSettings`:
intra-/inter-op threads, graph optimisation level, sequential or parallel execution, the memory arena
and memory-pattern planning, thread spinning, flushing denormals, and the layout transformers
(``NchwcTransformer`` puts FP32 convolutions in MLAS's blocked NCHWc layout; ``NhwcTransformer`` puts
quantised ones in NHWC). :func:`sweep` measures one-knob variations around a base on a real model,
so a machine can be re-tuned with ``wbc-deploy benchmark --tune``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WbcError
from .timing import Timing, measure

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


def tuned_settings(threads: int) -> OrtSettings:
    """The settings the benchmark's ``ort*`` backends use on ``threads`` cores (re-measure with :func:`sweep`).

    Two sweeps of the full ``wbcnet`` at batch 16 on the idle 2-core dev VM (onnxruntime 1.32;
    ``benchmarks/results/model_throughput.md``), as ratios to these settings, FP32 / INT8:
    ``SessionOptions()`` untouched 0.99-1.00 / 0.99; graph optimisation ``basic`` 0.66-0.73 / 0.15-0.21,
    ``extended`` 0.65-0.73 / 0.51-0.53, no layout transformer (``NchwcTransformer`` for FP32,
    ``NhwcTransformer`` for INT8) 0.66-0.74 / 0.51-0.73; parallel execution 0.48 / 0.57-0.60 (both
    branches already fill both cores); one thread 0.51 / 0.58; no arena 0.92-0.96 / 0.92-1.01; no memory
    patterns 1.00-1.03 / 0.99-1.11; no spinning 0.96-0.99 / 1.04-1.09; denormals as zero 0.99-1.01 /
    1.03-1.06. So on this machine ORT's defaults already are the optimum (its default intra-op pool is one
    thread per physical core; all optimisations, whose NCHWc/NHWC layouts are the largest single gain):
    "tuned" pins them down explicitly rather than changing them, and the INT8 recipe
    (:mod:`wbc_deploy.converters.int8_cpu`) is where the CPU speed-up comes from. Under CPU contention (one core
    busy elsewhere) fewer threads (1.24x) and no spinning (1.2x) win, because spinning threads fight
    the other process: when inference shares the CPU with other work (segmentation in ``count``),
    pass ``allow_spinning=False``.
    """
    return OrtSettings(label="tuned", intra_op_threads=int(threads), inter_op_threads=1)


def session_options(settings: OrtSettings) -> Any:
    """An ``onnxruntime.SessionOptions`` for ``settings``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if settings.graph_optimization is not None:
        if settings.graph_optimization not in GRAPH_LEVELS:
            raise WbcError(f"graph optimisation level must be one of {', '.join(GRAPH_LEVELS)}, got {settings.graph_optimization!r}")
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


def make_session(model: str | Path | bytes, settings: OrtSettings, providers: Sequence[Any] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session on ``model`` with ``settings`` (WbcError with one line if it cannot load)."""
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    kwargs: dict[str, Any] = {}
    if settings.disabled_optimizers:
        kwargs["disabled_optimizers"] = list(settings.disabled_optimizers)
    try:
        return ort.InferenceSession(src, sess_options=session_options(settings), providers=list(providers), **kwargs)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        text = str(exc).strip().splitlines()
        raise WbcError(f"ONNX Runtime cannot load {model if not isinstance(model, bytes) else 'the model'}: "
                       f"{text[0] if text else type(exc).__name__}") from None


def sweep_candidates(threads: int, logical: int, quantised: bool = False) -> list[OrtSettings]:
    """One-knob variations around :func:`tuned_settings`, plus ORT's untouched defaults."""
    base = tuned_settings(threads)
    layout = "NhwcTransformer" if quantised else "NchwcTransformer"
    cands = [
        default_settings(),
        base,
        replace(base, label="1 thread", intra_op_threads=1),
        replace(base, label="opt basic", graph_optimization="basic"),
        replace(base, label="opt extended", graph_optimization="extended"),
        replace(base, label=f"no {layout}", disabled_optimizers=(layout,)),
        replace(base, label="parallel", parallel=True, inter_op_threads=2),
        replace(base, label="no arena", enable_mem_arena=False),
        replace(base, label="no mem pattern", enable_mem_pattern=False),
        replace(base, label="no spinning", allow_spinning=False),
        replace(base, label="denormals as zero", denormal_as_zero=True),
    ]
    if logical > threads:
        cands.insert(3, replace(base, label=f"{logical} threads (logical)", intra_op_threads=logical))
    return cands


@dataclass
class SweepPoint:
    """One configuration's measured throughput in a sweep."""

    settings: OrtSettings
    timing: Timing | None
    batch_size: int
    error: str | None = None

    @property
    def cells_per_s(self) -> float | None:
        return self.timing.items_per_s(self.batch_size) if self.timing else None

    def to_dict(self) -> dict[str, Any]:
        t = self.timing
        return {
            "label": self.settings.label,
            "settings": self.settings.to_dict(),
            "batch_size": self.batch_size,
            "cells_per_s": None if t is None else round(self.cells_per_s, 3),
            "latency_ms_p50": None if t is None else round(t.percentile_ms(50), 2),
            "iterations": None if t is None else t.iterations,
            "other_load_cores": None if t is None else t.other_load_cores,
            "status": self.error or "ok",
        }


def sweep(
    model: str | Path,
    batch: np.ndarray,
    candidates: Sequence[OrtSettings],
    seconds: float = 5.0,
    warmup: int = 1,
    min_iters: int = 3,
    on_point: Callable[[SweepPoint], None] | None = None,
) -> list[SweepPoint]:
    """Measure ``batch`` through ``model`` under each settings candidate (same input for all)."""
    points = []
    for cand in candidates:
        try:
            sess = make_session(model, cand)
        except WbcError as exc:
            point = SweepPoint(cand, None, batch.shape[0], error=str(exc))
        else:
            name = sess.get_inputs()[0].name
            feed = {name: batch}
            point = SweepPoint(cand, measure(lambda: sess.run(None, feed), seconds, warmup, min_iters), batch.shape[0])
            del sess
        points.append(point)
        if on_point:
            on_point(point)
    return points


def best_of(points: Sequence[SweepPoint], baseline: str = "tuned", margin: float = 0.05) -> OrtSettings | None:
    """The fastest settings, but the ``baseline`` ones unless another beats them by more than ``margin``.

    Identical sessions differ by a few percent from run to run (by up to 30% at batch 1 on a shared
    VM host), so a sweep's winner by less than the margin is noise, not a better configuration.
    """
    ran = [p for p in points if p.timing is not None]
    if not ran:
        return None
    best = max(ran, key=lambda p: p.cells_per_s or 0.0)
    base = next((p for p in ran if p.settings.label == baseline), None)
    if base is not None and (best.cells_per_s or 0.0) <= (1 + margin) * (base.cells_per_s or 0.0):
        return base.settings
    return best.settings
