"""Per-class review galleries of counted cells and the evaluation montage of misclassified images.

Torch-free: ``count --gallery`` calls :func:`write_class_galleries` on scanner PCs, ``evaluate
--gallery`` calls :func:`write_misclassified_montage`. Inputs are plain: numpy crops (or image paths
for the montage), confidences and labels.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import WbcError
from ..images import load_rgb
from .montage import MontageLayout, MontageSection, MontageTile, render_montage, save_png


@dataclass(frozen=True)
class CellTile:
    """A counted cell for a gallery.

    ``image``: the cell crop, H x W x 3 uint8 RGB (grey, RGBA and float 0..1 arrays are accepted).
    ``confidence``: the model's probability for the class the cell was assigned to, 0..1.
    ``cell_id``: the cell's id in the per-cell CSV (shown in the caption; tiles with the same id are
    drawn once, so the pipeline may pass a cell that is both among the most and least confident).
    """

    image: np.ndarray
    confidence: float
    cell_id: int | str | None = None


@dataclass(frozen=True)
class MisclassifiedItem:
    """An evaluation image whose predicted class differs from its true class.

    ``image`` is an RGB array or an image path (read only when drawn); ``confidence`` is the probability
    of the predicted class; ``name`` (e.g. the file name) is shown under the labels when given.
    """

    image: np.ndarray | str | Path
    true_label: str
    predicted: str
    confidence: float | None = None
    name: str | None = None


def safe_name(text: str) -> str:
    """``text`` with path separators, characters Windows forbids and control characters replaced by ``_``
    (a plain slide or class name comes back unchanged, so ``<stem>`` matches the slide's other outputs)."""
    cleaned = re.sub(r'[\x00-\x1f/\\:*?"<>|]', "_", text).strip(" .")
    return cleaned or "unnamed"


def gallery_path(out_dir: str | Path, stem: str, class_name: str) -> Path:
    """Where :func:`write_class_galleries` writes the gallery of ``class_name``: ``<stem>.gallery.<class>.png``."""
    return Path(out_dir) / f"{safe_name(stem)}.gallery.{safe_name(class_name)}.png"


def _caption(tile: CellTile) -> tuple[str, ...]:
    text = f"{100 * float(tile.confidence):.1f}%"
    if tile.cell_id is not None:
        text += f" #{tile.cell_id}"
    return (text,)


def gallery_sections(tiles: Iterable[CellTile], k: int | None, total: int | None = None) -> list[tuple[str, list[CellTile]]]:
    """Split a class's tiles into the sections a gallery shows.

    Tiles are de-duplicated by ``cell_id``. ``total`` is how many cells the class has (default: the
    tiles given). When every cell is given and there are at most ``2 * k`` of them (or ``k`` is None),
    one section shows them all, highest confidence first. Otherwise the ``k`` most confident (highest
    first) and, from the rest, up to ``k`` least confident (lowest first).
    """
    seen: set = set()
    unique: list[CellTile] = []
    for t in tiles:
        conf = float(t.confidence)
        if not np.isfinite(conf):
            raise WbcError(f"cell {t.cell_id} has a non-finite confidence {t.confidence!r}")
        if t.cell_id is not None:
            if t.cell_id in seen:
                continue
            seen.add(t.cell_id)
        unique.append(t)
    ranked = sorted(unique, key=lambda t: -float(t.confidence))  # stable: ties keep the caller's order
    if k is not None and k < 1:
        raise WbcError(f"gallery size per section must be at least 1, got {k}")
    n = len(ranked) if total is None else max(int(total), len(ranked))
    if k is None or len(ranked) <= k or (n == len(ranked) and n <= 2 * k):
        return [(f"all {len(ranked)} cells, highest confidence first", ranked)]
    least = ranked[k:][::-1][:k]
    return [
        (f"{k} most confident, highest first", ranked[:k]),
        (f"{len(least)} least confident, lowest first", least),
    ]


def write_class_galleries(
    out_dir: str | Path,
    stem: str,
    tiles_by_class: Mapping[str, Iterable[CellTile]],
    k: int | None = None,
    counts: Mapping[str, int] | None = None,
    layout: MontageLayout | None = None,
) -> list[Path]:
    """Write one PNG montage per class with at least one tile, for reviewing a slide's cells.

    Args:
        out_dir: folder for the PNGs (created if needed).
        stem: the slide's name; files are ``<stem>.gallery.<class>.png`` (see :func:`gallery_path`).
        tiles_by_class: class name -> the cells kept for review (any order; see :class:`CellTile`).
        k: tiles per section: a class shows its ``k`` most confident cells (highest first) and up to ``k``
            least confident (lowest first), or all its cells in one section when they are all given and
            number at most ``2 * k`` (see :func:`gallery_sections`).
        counts: class name -> how many cells the slide has in that class (for the title, and to tell
            whether the tiles are all of them); defaults to the number of tiles given.
        layout: tile size, columns and caption geometry (default 96 px tiles, 8 columns).

    Returns the paths written, in the order of ``tiles_by_class``. Each tile is captioned with its
    confidence in percent and its cell id.
    """
    layout = layout or MontageLayout()
    paths: list[Path] = []
    total = sum(int(v) for v in counts.values()) if counts else None
    for class_name, tiles in tiles_by_class.items():
        given = int(counts[class_name]) if counts and class_name in counts else None
        sections = gallery_sections(tiles, k, given)
        shown = sum(len(s) for _, s in sections)
        if shown == 0:
            continue
        n = max(given, shown) if given is not None else shown
        share = f" ({100 * n / total:.1f}% of {total})" if total else ""
        title = f"{stem}: {class_name}, {n} cell{'s' if n != 1 else ''}{share}"
        montage = render_montage(
            title,
            [MontageSection(t, [MontageTile(tile.image, _caption(tile)) for tile in s]) for t, s in sections],
            layout,
            subtitle="caption: confidence, cell id",
        )
        paths.append(save_png(montage, gallery_path(out_dir, stem, class_name)))
    return paths


def _load_item_image(item: MisclassifiedItem) -> tuple[np.ndarray | Image.Image, bool]:
    """(image, readable): an unreadable file becomes a grey placeholder so one bad file cannot sink the montage."""
    if isinstance(item.image, (str, Path)):
        try:
            return load_rgb(item.image), True
        except (OSError, ValueError):
            return Image.new("RGB", (8, 8), (160, 160, 160)), False
    return item.image, True


def write_misclassified_montage(
    path: str | Path,
    items: Sequence[MisclassifiedItem],
    max_items: int = 200,
    title: str = "misclassified images",
    layout: MontageLayout | None = None,
) -> Path:
    """Write a PNG montage of misclassified images captioned "true: X" / "pred: Y" / "NN% name".

    The most confidently wrong come first (items without a confidence last, in the given order); at most
    ``max_items`` are drawn, and the title says how many there were. An empty ``items`` still writes a
    montage that says there were none. Returns ``path``.
    """
    layout = layout or MontageLayout(tile_px=112, columns=8, caption_lines=3)
    ranked = sorted(items, key=lambda it: (it.confidence is None, -float(it.confidence or 0.0)))
    drawn = ranked[:max_items]
    tiles = []
    for it in drawn:
        image, readable = _load_item_image(it)
        name = (it.name or "") if readable else f"unreadable: {it.name or Path(str(it.image)).name}"
        last = " ".join(t for t in ((f"{100 * float(it.confidence):.0f}%" if it.confidence is not None else ""), name) if t)
        caption = (f"true: {it.true_label}", f"pred: {it.predicted}") + ((last,) if last else ())
        tiles.append(MontageTile(image, caption))
    shown = f"showing the {len(drawn)} most confident of {len(items)}" if len(drawn) < len(items) else f"{len(items)} image(s)"
    section = f"{shown}, most confidently wrong first" if items else "no misclassified images"
    montage = render_montage(title, [MontageSection(section, tiles)], layout)
    return save_png(montage, path)
