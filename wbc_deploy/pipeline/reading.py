"""The reading order of ``--max-wbc``: a meander over the tiles of the counting area.

A technologist counting a differential moves the stage in a meander (battlement) pattern over the
monolayer, so no field is counted twice and the fields follow one another; analysers do the same.
:func:`meander` orders tiles that way: rows of tile cores from top to bottom, left to right on the
first row, right to left on the next, and so on. The order depends only on the tiles' positions, so a
slide is always read the same way, and the first N WBCs in that order (cells in raster order within a
tile) are the same whatever the workers, the timing, or a resumption.
"""
from __future__ import annotations

from .plan import Tile


def meander(tiles: list[Tile]) -> list[Tile]:
    """``tiles`` in meander order: rows (by the top of their core) downwards, alternating direction."""
    rows: dict[int, list[Tile]] = {}
    for t in tiles:
        rows.setdefault(t.core[1], []).append(t)
    out: list[Tile] = []
    for k, y in enumerate(sorted(rows)):
        row = sorted(rows[y], key=lambda t: (t.core[0], t.index))
        out.extend(row if k % 2 == 0 else row[::-1])
    return out
