"""ONNX Runtime CPU session settings: the tuned defaults the benchmark uses, and a sweep to re-tune them.

:class:`OrtSettings` and the session builder live in :mod:`wbc_deploy.runtime.ort_options` (one builder for
the runtime, the benchmark and export verification). :func:`sweep` measures one-knob variations around a
base on a real model, so a machine can be re-tuned with ``wbc-deploy benchmark --tune``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WbcError
from ..runtime.ort_options import OrtSettings, default_settings, ort_session
from .timing import Timing, measure

__all__ = ["OrtSettings", "SweepPoint", "best_of", "default_settings", "sweep", "sweep_candidates", "tuned_settings"]


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
            sess = ort_session(model, cand)
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
