"""Result types of WBC segmentation: one :class:`Cell` per WBC and the :class:`Segmentation` of a field."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Cell:
    """One segmented WBC. ``x``, ``y``: centroid in pixels of the input image, pixel-centre
    convention (pixel column i, row j is centred at (i, j)); ``bbox`` is half-open pixel indices.

    ``solidity`` and ``eccentricity`` describe the whole-cell outline and ``n_lobes`` counts the
    nucleus pieces, measured on the final outline. ``touches_border``: the outline reaches the image's
    first or last row or column; ``edge``: the cell is cut by the image border (its outline reaches it
    and its nucleus comes within ``SegmentParams.edge_nucleus_um`` of it: its area is then partial;
    ``segment`` writes it as the ``edge`` column and ``count`` does not count it on plain images).
    ``nucleus_bbox`` is the nucleus's half-open bounding box (x0, y0, x1, y1).
    """

    cell_id: int
    x: float
    y: float
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    area_um2: float
    nucleus_area_um2: float
    n_lobes: int = 1
    solidity: float = 1.0
    eccentricity: float = 0.0
    nucleus_od: float = 0.0
    touches_border: bool = False
    edge: bool = False
    nucleus_bbox: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class Segmentation:
    """Result of :func:`segment_wbcs`: instance labels at the input resolution and one Cell per id."""

    labels: np.ndarray  # int32, 0 = background, k = whole cell k
    nuclei: np.ndarray  # int32, same ids, nucleus pixels only
    cells: list[Cell] = field(default_factory=list)
    mpp: float = 0.0
    threshold: float = 0.0  # nucleus-stain threshold used (OD)
    background: tuple[float, float, float] = (255.0, 255.0, 255.0)

    def __len__(self) -> int:
        return len(self.cells)
