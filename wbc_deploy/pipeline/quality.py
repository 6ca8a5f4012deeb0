"""Per-slide quality flags: how much of the scan is out of focus, how many cells went unidentified.

Focus is measured on each tile as it is read for detection (no extra reading), as a physical blur:
at a blurred edge of contrast C the steepest gradient is C / (sigma * sqrt(2 pi)), so the Gaussian
sigma of the blur is C / (sqrt(2 pi) * steepest gradient). :func:`tile_blur_um` takes the pixels with
the steepest absorbance gradients of the tile (red-cell and nucleus edges), the contrast around each
(maximum - minimum over ``EDGE_WINDOW_UM``), and returns the median sigma in micrometres. Sharp edges
give about the pixel size (the sampling itself), a defocused scan several micrometres. A tile is out
of focus when its blur exceeds ``OUT_OF_FOCUS_UM`` (its sharpest edges are blurred: a tile partly in
focus counts as in focus), and a tile without enough edges (glass) has no measure and is not counted
either way.
"""
from __future__ import annotations

import math

import numpy as np

#: Blur (Gaussian sigma, um) above which a tile is out of focus. At the 1 um/px detection resolution
#: sharp images measure 0.7-1.35 um (pixel sampling; synthetic tiles, and 170 BCCD and 206 PBC photographs
#: block-averaged to ~1 um/px: none above 1.35); a 1.5 um defocus blur measures about 1.9 um, 2 um about 2.2.
OUT_OF_FOCUS_UM: float = 1.6
#: Contrast is measured within this distance of an edge pixel (um): wider than a blurred edge.
EDGE_WINDOW_UM: float = 4.0
#: Edge pixels: the steepest this fraction of the tile's pixels, with at least MIN_EDGE_CONTRAST around them.
EDGE_FRACTION: float = 0.01
MIN_EDGE_CONTRAST: float = 0.1
#: Fewer measurable edge pixels than this: no measure for the tile.
MIN_EDGE_PIXELS: int = 50


def tile_blur_um(rgb: np.ndarray, mpp: float, background=None) -> float | None:
    """The median blur (Gaussian sigma, um) of a tile's steepest edges; None without enough edges."""
    img = np.asarray(rgb)
    if img.ndim != 3 or min(img.shape[:2]) < 8:
        return None
    bg = np.asarray(background if background is not None else (255.0, 255.0, 255.0), np.float32)
    # absorbance (mean over channels) is linear in the channel sum: work on the sum, scale at the end
    a = img[..., 0].astype(np.float32)
    a += img[..., 1]
    a += img[..., 2]
    a *= np.float32(-1.0 / max(float(bg.sum()), 1.0))
    gx = np.zeros_like(a)
    gy = np.zeros_like(a)
    np.subtract(a[:, 2:], a[:, :-2], out=gx[:, 1:-1])
    np.subtract(a[2:, :], a[:-2, :], out=gy[1:-1, :])
    g = np.hypot(gx, gy, out=gx)
    g *= np.float32(0.5)  # central differences: absorbance per pixel
    n_edge = max(MIN_EDGE_PIXELS, int(EDGE_FRACTION * g.size))
    if g.size <= n_edge:
        return None
    flat = np.argpartition(g.ravel(), g.size - n_edge)[g.size - n_edge:]
    ys, xs = np.unravel_index(flat, g.shape)
    r = max(1, int(math.ceil(EDGE_WINDOW_UM / mpp)))
    padded = np.pad(a, r, mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1))[ys, xs]
    contrast = win.max(axis=(1, 2)) - win.min(axis=(1, 2))
    grad = g[ys, xs]
    ok = (contrast >= MIN_EDGE_CONTRAST) & (grad > 0)
    if int(ok.sum()) < MIN_EDGE_PIXELS:
        return None
    sigma_px = contrast[ok] / (math.sqrt(2.0 * math.pi) * grad[ok])
    return float(np.median(sigma_px)) * float(mpp)


def out_of_focus_fraction(blurs: list[float | None], threshold_um: float = OUT_OF_FOCUS_UM) -> float | None:
    """Fraction of the measured tiles whose blur exceeds ``threshold_um`` (None when no tile was measured)."""
    measured = [b for b in blurs if b is not None]
    if not measured:
        return None
    return sum(b > threshold_um for b in measured) / len(measured)
