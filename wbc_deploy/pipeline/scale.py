"""The physical scale of a slide: its metadata, ``--mpp``, or an estimate from its red cells."""
from __future__ import annotations

import math

import numpy as np

from ..errors import WbcError
from ..segment import estimate_mpp
from ..slide.crop import read_level


def thumbnail(reader, side: int) -> np.ndarray:
    """An RGB uint8 thumbnail of the whole slide whose longest side is at most ``side``."""
    thumb = reader.get_thumbnail((side, side))
    return np.asarray(thumb.convert("RGB") if hasattr(thumb, "convert") else thumb)[..., :3]


def estimate_slide_mpp(reader, thumb: np.ndarray, mask: np.ndarray, region_px: int = 1536) -> float | None:
    """Estimate level-0 um/px from red cells in level-0 regions on the smear (a few spots tried)."""
    w, h = reader.dimensions
    if w * h <= 2048 * 2048:
        return estimate_mpp(read_level(reader, 0, 0, 0, w, h))
    sx, sy = w / thumb.shape[1], h / thumb.shape[0]
    ys, xs = np.nonzero(mask) if mask.any() else (np.array([thumb.shape[0] // 2]), np.array([thumb.shape[1] // 2]))
    spots = []
    cy, cx = ys.mean(), xs.mean()
    nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    spots.append((xs[nearest], ys[nearest]))
    for q in (0.25, 0.75, 0.1, 0.9):
        i = int(q * (len(xs) - 1))
        spots.append((xs[i], ys[i]))
    for tx, ty in spots:
        x0 = int(min(max(0, (tx + 0.5) * sx - region_px / 2), max(0, w - region_px)))
        y0 = int(min(max(0, (ty + 0.5) * sy - region_px / 2), max(0, h - region_px)))
        est = estimate_mpp(read_level(reader, 0, x0, y0, min(region_px, w), min(region_px, h)))
        if est is not None:
            return est
    return None


def resolve_mpp(reader, option_mpp: float | None, thumb: np.ndarray, mask: np.ndarray) -> tuple[float, str]:
    """(level-0 um/px, source): ``option`` (--mpp), ``slide`` (its metadata) or ``estimated`` (red cells)."""
    if option_mpp is not None:
        return float(option_mpp), "option"
    mpp = getattr(reader, "mpp", None)
    if mpp is not None and math.isfinite(float(mpp)) and float(mpp) > 0:
        return float(mpp), "slide"
    est = estimate_slide_mpp(reader, thumb, mask)
    if est is None:
        raise WbcError("the slide records no microns per pixel and its red cells did not give a reliable estimate (too few measurable, or their sizes disagree): pass --mpp")
    return round(est, 4), "estimated"
