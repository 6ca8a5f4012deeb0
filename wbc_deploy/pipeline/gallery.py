"""``count --gallery``: keep, per class, the K most and K least confident cells in bounded memory.

The pipeline feeds every counted cell (final id, label, confidence, level-0 centre) through a
:class:`GalleryCollector`, which keeps two heaps of at most K entries per class. Crops are read from
the slide only for the kept cells, at the end (so memory is O(classes x K) whatever the slide size,
and a resumed slide gets the same gallery). What goes to the explain package:

- ``wbc_deploy.explain.gallery.write_class_galleries(out_dir, stem, tiles_by_class, k=K, counts=counts)``
  with ``tiles_by_class``: class -> list of ``CellTile(image, confidence, cell_id)``, where ``image`` is
  the model-input-size RGB uint8 crop (the field of view the model classified), most confident first,
  then the least confident; a cell may appear in both lists (the gallery draws it once).
- ``wbc_deploy.explain.report.write_slide_report(DIR/<slide>.report.html, slide=, counts=, classes=,
  thumbnail=, downsample=, cell_xy=, cell_labels=, settings=)``.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import WbcError


@dataclass(frozen=True, order=True)
class GalleryEntry:
    """A cell kept for review (no pixels: crops are read once the slide is finished)."""

    confidence: float
    cell_id: int
    x: float
    y: float
    label: str


class GalleryCollector:
    """Per class, the ``k`` most and ``k`` least confident cells (ties: lower cell id wins)."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise WbcError(f"gallery size must be at least 1, got {k}")
        self.k = int(k)
        self._top: dict[str, list[tuple[float, int, GalleryEntry]]] = {}
        self._bottom: dict[str, list[tuple[float, int, GalleryEntry]]] = {}

    def add(self, cell_id: int, label: str, confidence: float, x: float, y: float) -> None:
        """Offer one cell; O(log k)."""
        e = GalleryEntry(confidence=float(confidence), cell_id=int(cell_id), x=float(x), y=float(y), label=label)
        top = self._top.setdefault(label, [])
        # min-heap on (confidence, -id): the root is the weakest of the kept most-confident cells
        item = (e.confidence, -e.cell_id, e)
        if len(top) < self.k:
            heapq.heappush(top, item)
        elif item[:2] > top[0][:2]:
            heapq.heapreplace(top, item)
        bottom = self._bottom.setdefault(label, [])
        # max-heap via negation: the root is the most confident of the kept least-confident cells
        item_b = (-e.confidence, -e.cell_id, e)
        if len(bottom) < self.k:
            heapq.heappush(bottom, item_b)
        elif item_b[:2] > bottom[0][:2]:
            heapq.heapreplace(bottom, item_b)

    def most_confident(self, label: str) -> list[GalleryEntry]:
        """Kept cells of ``label``, highest confidence first."""
        return [e for _, _, e in sorted(self._top.get(label, []), key=lambda t: (-t[0], -t[1]))]

    def least_confident(self, label: str) -> list[GalleryEntry]:
        """Kept cells of ``label``, lowest confidence first."""
        return [e for _, _, e in sorted(self._bottom.get(label, []), key=lambda t: (-t[0], -t[1]))]

    def entries(self, label: str) -> list[GalleryEntry]:
        """Most confident then least confident, without repeating a cell."""
        out, seen = [], set()
        for e in self.most_confident(label) + self.least_confident(label):
            if e.cell_id not in seen:
                seen.add(e.cell_id)
                out.append(e)
        return out

    def labels(self) -> list[str]:
        return list(self._top)


def require_explain() -> None:
    """Fail ``--gallery`` early, with one line, if the gallery/report writers are not installed."""
    try:
        from ..explain import gallery, report  # noqa: F401
    except ImportError as exc:
        raise WbcError(f"--gallery needs wbc_deploy.explain (gallery and report writers), which cannot be imported: {exc}") from None
    if not hasattr(gallery, "write_class_galleries") or not hasattr(report, "write_slide_report"):
        raise WbcError("--gallery needs wbc_deploy.explain.gallery.write_class_galleries and report.write_slide_report")


def write_gallery(out_dir: Path, name: str, reader, plan, collector: GalleryCollector, counts: dict[str, int],
                  classes: list[str], xy: list[tuple[float, float]], labels: list[str], settings: dict) -> dict[str, Path]:
    """Read the kept cells' crops and call the explain package's gallery and report writers.

    Returns the files written (``gallery_<class>`` and ``report``).
    """
    from ..explain.gallery import CellTile, write_class_galleries
    from ..explain.report import write_slide_report
    from .detect import crop_fill, read_crop
    from .scale import thumbnail

    tiles_by_class = {}
    for label in classes:
        entries = collector.entries(label)
        if entries:
            tiles_by_class[label] = [CellTile(image=read_crop(reader, plan.crop, e.x, e.y, crop_fill(reader, plan)),
                                              confidence=e.confidence, cell_id=e.cell_id) for e in entries]
    written: dict[str, Path] = {}
    for p in write_class_galleries(out_dir, name, tiles_by_class, k=collector.k, counts=counts):
        written[f"gallery_{Path(p).stem.split('.')[-1]}"] = Path(p)
    w0, _ = reader.dimensions
    thumb = thumbnail(reader, 1024)
    written["report"] = Path(write_slide_report(
        Path(out_dir) / f"{name}.report.html", slide=name, counts=counts, classes=classes, thumbnail=thumb,
        downsample=w0 / thumb.shape[1], cell_xy=np.asarray(xy, dtype=float).reshape(-1, 2), cell_labels=labels,
        settings=settings,
    ))
    return written
