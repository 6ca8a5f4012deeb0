"""``count --review``: every counted cell's thumbnail, read from the slide, into ``<slide>.review.html``.

The pipeline keeps one small :class:`~wbc_deploy.explain.review.ReviewCell` (id, label, confidence,
runner-up) and the level-0 centre per cell while it writes cells.csv; once the slide is counted the
crops are read again over the model's field of view, straight at thumbnail size, on the run's reading
threads, JPEG-encoded there, and handed to the page writer in cell order, a chunk at a time.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..classes import UNIDENTIFIED

#: Crops read and encoded per batch of work handed to the reading threads.
CHUNK = 256


def review_cell(cell_id: int, probs: Sequence[float], classes: Sequence[str], label: str, confidence: float):
    """The page's record of a cell: its label and confidence, and as a hint the runner-up class (for an
    ``unidentified`` cell, the model's best guess)."""
    from ..explain.review import ReviewCell

    order = np.argsort(-np.asarray(probs, dtype=float), kind="stable")
    k = order[0] if label == UNIDENTIFIED else (order[1] if len(order) > 1 else None)
    return ReviewCell(int(cell_id), label, float(confidence),
                      classes[int(k)] if k is not None else None, float(probs[int(k)]) if k is not None else None)


def _thumbnails(reader, plan, xy: Sequence[tuple[float, float]], executor: Executor | None, px: int) -> Iterator[bytes]:
    from ..explain.review import encode_thumbnail
    from .detect import read_crop

    crop = dataclasses.replace(plan.crop, input_size=int(px))

    def one(p: tuple[float, float]) -> bytes:
        return encode_thumbnail(read_crop(reader, crop, p[0], p[1], plan.background), px)

    threaded = isinstance(executor, ThreadPoolExecutor)
    for i in range(0, len(xy), CHUNK):
        part = xy[i : i + CHUNK]
        yield from (executor.map(one, part) if threaded else map(one, part))


def write_review(out_dir: Path, name: str, reader, plan, cells: Sequence, xy: Sequence[tuple[float, float]],
                 classes: Sequence[str], executor: Executor | None = None, images: str = "inline") -> Path:
    """Write ``out_dir/<name>.review.html`` for ``cells`` (ReviewCell, cell order) centred at level-0 ``xy``."""
    from ..explain.review import THUMB_PX, write_review_page

    return write_review_page(Path(out_dir) / f"{name}.review.html", name, classes, cells,
                             _thumbnails(reader, plan, xy, executor, THUMB_PX), images=images)
