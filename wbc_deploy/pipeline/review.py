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
#: Up to this many cells the thumbnails are inline (one self-contained file); beyond, in ``<slide>.review/``
#: beside the page. Measured (benchmarks/review_page.py, loaded 2-core VM): inline 2,000 cells ready in
#: ~0.9 s, 10,000 in ~1.6 s (21.7 MB of HTML); the folder keeps 10,000 at ~0.65 s.
INLINE_MAX_CELLS = 5000


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
    from .detect import crop_fill, read_crop

    crop = dataclasses.replace(plan.crop, input_size=int(px))
    fill = crop_fill(reader, plan)

    def one(p: tuple[float, float]) -> bytes:
        return encode_thumbnail(read_crop(reader, crop, p[0], p[1], fill), px)

    threaded = isinstance(executor, ThreadPoolExecutor)
    for i in range(0, len(xy), CHUNK):
        part = xy[i : i + CHUNK]
        yield from (executor.map(one, part) if threaded else map(one, part))


def write_review(out_dir: Path, name: str, reader, plan, cells: Sequence, xy: Sequence[tuple[float, float]],
                 classes: Sequence[str], executor: Executor | None = None, images: str | None = None) -> Path:
    """Write ``out_dir/<name>.review.html`` for ``cells`` (ReviewCell, cell order) centred at level-0 ``xy``.

    ``images``: ``inline`` or ``folder``; default inline up to :data:`INLINE_MAX_CELLS` cells.
    """
    from ..explain.review import THUMB_PX, write_review_page

    images = images or ("inline" if len(cells) <= INLINE_MAX_CELLS else "folder")

    return write_review_page(Path(out_dir) / f"{name}.review.html", name, classes, cells,
                             _thumbnails(reader, plan, xy, executor, THUMB_PX), images=images)
