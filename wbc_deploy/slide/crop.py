"""Cell fields of view: the one function that cuts the square a classifier sees around a cell.

``count`` (around each detected WBC of a slide), ``train --mpp`` and ``evaluate --mpp`` (around the
centre of each labelled image) all call :func:`read_field`, so a cell looks the same to the model in
all three: a square of ``fov_um`` micrometres centred on the cell, read at a pyramid level with at
least the model's input resolution, padded with the glass colour where it leaves the image, and
resized to the model's input with the project's one resize (:func:`wbc_deploy.preprocess.resize_rgb`).
Torch-free.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..preprocess import resize_rgb
from .reader import SlideReader


def field_side(fov_um: float, mpp: float) -> int:
    """Pixels across a ``fov_um`` field at ``mpp`` um/px (at least 1)."""
    return max(1, int(round(float(fov_um) / float(mpp))))


def field_origin(x: float, y: float, side: int) -> tuple[int, int]:
    """Top-left pixel of the ``side``-pixel square centred on continuous (x, y) (pixel (i, j) spans [i, i+1))."""
    half = side / 2.0
    return int(math.floor(x - half + 0.5)), int(math.floor(y - half + 0.5))


#: ``fill`` value that mirrors the image at its borders instead of painting a colour (plain images).
REFLECT = "reflect"


def read_level(reader, level: int, x: int, y: int, w: int, h: int, fill: Sequence[float] | str | None = None) -> np.ndarray:
    """RGB uint8 region of pyramid ``level`` at level pixels (x, y), size (w, h); outside the slide is ``fill``.

    ``fill`` is a glass colour (default white), or :data:`REFLECT` to mirror the image at its borders
    (plain images: a field or crop photographed on its own continues beyond its edge as smear, not
    as a coloured frame). Only the part inside the slide is read.
    """
    lw, lh = reader.level_dimensions[level]
    ds = float(reader.level_downsamples[level])
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(lw, x + w), min(lh, y + h)
    region = None
    if x1 > x0 and y1 > y0:
        region = np.asarray(reader.read_region((int(round(x0 * ds)), int(round(y0 * ds))), level, (x1 - x0, y1 - y0)))
        if region.shape == (h, w, 3) and region.dtype == np.uint8:
            return region  # wholly inside the slide: no copy
    if isinstance(fill, str):
        if fill != REFLECT:
            raise ValueError(f"fill must be a colour or {REFLECT!r}, got {fill!r}")
        if region is not None:
            pads = ((y0 - y, y + h - y1), (x0 - x, x + w - x1), (0, 0))
            return np.pad(np.ascontiguousarray(region[..., :3]), pads, mode="symmetric")
        fill = None
    out = np.empty((h, w, 3), np.uint8)
    out[:] = np.asarray(fill if fill is not None else (255, 255, 255), dtype=np.float64).round().astype(np.uint8)
    if region is not None:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = region[..., :3]
    return out


def read_field(reader, level: int, downsample: float, side: int, size: int, x: float, y: float,
               fill: Sequence[float] | str | None = None) -> np.ndarray:
    """The ``side``-pixel square of ``level`` centred on level-0 (x, y), resized to ``size`` (RGB uint8).

    (x, y) are continuous level-0 coordinates, as in cells.csv.
    """
    left, top = field_origin(x / downsample, y / downsample, side)
    rgb = read_level(reader, level, left, top, side, side, fill)
    return resize_rgb(rgb, size)


class ArrayReader(SlideReader):
    """An RGB array already in memory as a one-level slide (training and evaluation images)."""

    vendor = "array"

    def __init__(self, rgb: np.ndarray, mpp: float | None = None, name: str = "image") -> None:
        from pathlib import Path

        super().__init__(Path(name), mpp)
        self._img = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        h, w = self._img.shape[:2]
        return ((w, h),)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def properties(self) -> Mapping[str, str]:
        return {}

    def _file_mpp(self) -> float | None:
        return None

    def _read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        H, W = self._img.shape[:2]
        if 0 <= x and 0 <= y and x + w <= W and y + h <= H:
            return self._img[y : y + h, x : x + w]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x0 < x1 and y0 < y1:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._img[y0:y1, x0:x1]
        return out


def image_field(rgb: np.ndarray, mpp: float, fov_um: float, size: int, fill: Sequence[float] | str = REFLECT,
                x: float | None = None, y: float | None = None) -> np.ndarray:
    """The model's view of a labelled cell image at ``mpp`` um/px: the ``fov_um`` square centred on (x, y)
    (default: the image centre), mirrored at the image's borders (or ``fill``), resized to ``size``.

    This is ``count``'s crop of a plain image (:func:`read_field` at level 0, mirrored borders).
    """
    h, w = rgb.shape[:2]
    side = field_side(fov_um, mpp)
    cx = w / 2.0 if x is None else x
    cy = h / 2.0 if y is None else y
    return read_field(ArrayReader(rgb, mpp), 0, 1.0, side, int(size), cx, cy, fill)
