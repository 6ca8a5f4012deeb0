"""The streaming core of one slide: tiles -> workers (read, detect, crop) -> batched inference -> store.

Workers (a thread or process pool) scan tiles concurrently, at most ``window`` tiles ahead of the
oldest unfinished one (a bounded queue), so memory does not grow with the slide. Results are taken
in tile order; their crops are batched for the backend with batch boundaries at fixed multiples of
the batch size in the slide's cell sequence, so the batches (and the floating-point results) are the
same whatever the worker count or timing, and after a resume. A tile is committed to the progress
store once all its cells have probabilities.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field

import numpy as np

from ..preprocess import prepare_resized
from .detect import TileResult
from .plan import Tile
from .store import ProgressStore, StoredCell


@dataclass
class StreamStats:
    """What streaming one slide did: tiles and cells committed, and seconds per stage."""

    tiles_done: int = 0
    cells: int = 0
    windows: int = 0  # candidate windows segmented at the detection resolution
    refined: int = 0  # of which segmented again at the refinement resolution
    seconds: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "detect": 0.0, "crop": 0.0, "infer": 0.0, "write": 0.0})


@dataclass
class _Pending:
    result: TileResult
    probs: np.ndarray  # n x C, filled as batches finish
    filled: int = 0


def stream_slide(
    tiles: Iterable[Tile],
    scan: Callable[[Tile], TileResult],
    executor: Executor,
    backend,
    store: ProgressStore,
    *,
    batch_size: int,
    window: int,
    start_cells: int = 0,
    on_commit: Callable[[int, int], None] | None = None,
    stats: StreamStats | None = None,
) -> StreamStats:
    """Scan ``tiles`` with ``scan`` on ``executor``, classify their crops and commit them to ``store`` in order.

    ``start_cells`` is the number of cells already committed (resume), which fixes where the batch
    boundaries fall. ``on_commit(tiles committed, cells committed)`` is called after each commit; an
    exception from it (or from a worker) stops the stream, cancelling the tiles not yet started.
    """
    stats = stats or StreamStats()
    card = backend.card
    n_cls = len(card.classes)
    submitted: deque[Future] = deque()
    tile_iter = iter(tiles)
    awaiting: deque[_Pending] = deque()
    buf: list[tuple[_Pending, int]] = []  # cells waiting for inference: (tile, row)
    n_inferred = start_cells
    exhausted = False

    def submit_more() -> None:
        nonlocal exhausted
        while not exhausted and len(submitted) < window:
            t = next(tile_iter, None)
            if t is None:
                exhausted = True
                return
            submitted.append(executor.submit(scan, t))

    def run_batch(n: int) -> None:
        nonlocal n_inferred, buf
        take, buf = buf[:n], buf[n:]
        t0 = time.perf_counter()
        crops = np.stack([p.result.crops[row] for p, row in take])
        probs = backend.predict(prepare_resized(crops, card))
        stats.seconds["infer"] += time.perf_counter() - t0
        for (p, row), pr in zip(take, probs):
            p.probs[row] = pr
            p.filled += 1
        n_inferred += n

    def commit_ready() -> None:
        while awaiting and awaiting[0].filled == len(awaiting[0].result.cells):
            p = awaiting.popleft()
            t0 = time.perf_counter()
            cells = [StoredCell(x=c.x, y=c.y, area_um2=c.area_um2, probs=[float(v) for v in p.probs[i]],
                                outline=[list(pt) for pt in c.outline]) for i, c in enumerate(p.result.cells)]
            store.append(p.result.index, cells)
            stats.seconds["write"] += time.perf_counter() - t0
            stats.tiles_done += 1
            stats.cells += len(cells)
            p.result.crops = np.empty((0,), np.uint8)  # free the crops now
            if on_commit is not None:
                on_commit(stats.tiles_done, stats.cells)

    try:
        submit_more()
        while submitted:
            result: TileResult = submitted.popleft().result()
            submit_more()
            for k in ("read", "detect", "crop"):
                stats.seconds[k] += result.seconds.get(k, 0.0)
            stats.windows += result.windows
            stats.refined += result.refined
            pending = _Pending(result=result, probs=np.zeros((len(result.cells), n_cls), np.float32))
            awaiting.append(pending)
            buf.extend((pending, i) for i in range(len(result.cells)))
            while buf and len(buf) >= batch_size - (n_inferred % batch_size):
                run_batch(batch_size - (n_inferred % batch_size))
            commit_ready()
        if buf:
            run_batch(len(buf))
        commit_ready()
    finally:
        # Stop: cancel what has not started and let running tiles end before the reader is closed.
        for f in submitted:
            f.cancel()
        wait(submitted)
    return stats
