"""Timing one callable: warm-up excluded, per-call latencies, and how busy the rest of the machine was.

Each measurement also records the CPU time other processes used while it ran (system-wide busy CPU
seconds minus this process's own, divided by the wall time): on a shared machine that number, in
cores, says whether a figure is contaminated, point by point. The 1-minute load average cannot: it
includes the benchmark itself and lags by a minute.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Per-call latencies of one measured run (warm-up excluded)."""

    latencies_s: tuple[float, ...]
    warmup: int
    other_load_cores: float | None  # CPU cores' worth of work other processes did during the run

    @property
    def iterations(self) -> int:
        return len(self.latencies_s)

    @property
    def total_s(self) -> float:
        return float(sum(self.latencies_s))

    def percentile_ms(self, q: float) -> float:
        """Latency percentile ``q`` (0..100) in milliseconds (linear interpolation)."""
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1e3)

    @property
    def mean_ms(self) -> float:
        return self.total_s / self.iterations * 1e3

    def items_per_s(self, batch_size: int) -> float:
        """Throughput: items processed per second of measured time (= batch / mean latency)."""
        return batch_size * self.iterations / self.total_s


class CpuMeter:
    """CPU seconds used by other processes between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._t0 = self._sys0 = self._own0 = 0.0

    @staticmethod
    def _busy(t) -> float:
        idle = getattr(t, "idle", 0.0) + getattr(t, "iowait", 0.0)
        return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def _own(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._sys0 = self._busy(self._psutil.cpu_times())
        self._own0 = self._own()

    def stop(self) -> float | None:
        """Other processes' average CPU use over the interval, in cores (None if unmeasurable)."""
        wall = time.perf_counter() - self._t0
        if wall <= 0:
            return None
        other = (self._busy(self._psutil.cpu_times()) - self._sys0) - (self._own() - self._own0)
        return round(max(0.0, other / wall), 2)


def measure(
    fn: Callable[[], object],
    seconds: float,
    warmup: int = 2,
    min_iters: int = 3,
    max_iters: int | None = None,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time calls until ``seconds`` of measured time and
    at least ``min_iters`` calls have passed (at most ``max_iters``)."""
    for _ in range(max(0, int(warmup))):
        fn()
    meter = CpuMeter()
    meter.start()
    lat: list[float] = []
    clock = time.perf_counter
    spent = 0.0
    while len(lat) < max(1, min_iters) or spent < seconds:
        if max_iters is not None and len(lat) >= max_iters:
            break
        t0 = clock()
        fn()
        dt = clock() - t0
        lat.append(dt)
        spent += dt
    return Timing(tuple(lat), int(warmup), meter.stop())
