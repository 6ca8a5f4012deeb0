"""Uneven illumination (vignetting) of a photographed field, estimated from its own glass, and its correction.

A microscope camera's field is darker towards its edges and corners (vignetting, an off-centre lamp):
on the BCCD photographs the glass near the corners absorbs 0.05-0.08 more (optical density) than at the
centre. Relative to the brightest glass, that darker glass looks *stained*, pale grey-blue, the colour of
a lymphocyte's thin cytoplasm, and cell outlines leaked into it (up to twice the cell's radius). A slide
scanner flat-fields its tiles itself; a photograph needs it done here.

The glass is the brightest thing in a smear, so in each ~5 um block the brightest tenth of the pixels is
glass wherever the block holds any. A quadratic surface (per RGB channel, in optical density) is fitted to
those block values, robustly: blocks much darker than the surface (no glass: red cells cover them) are
left out, repeatedly. The correction multiplies each channel by the gain that brings the surface to its
brightest value, so glass is one colour everywhere and a pixel's density is relative to the glass around
it. Fields too small to hold a surface (a single-cell crop), with too little glass, or lit evenly already
are left as they are (:func:`estimate_illumination` returns None).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .masks import block_mean_rgb

#: Side of the blocks whose brightest pixels sample the glass (um), and the resolution they are read at.
BLOCK_UM = 5.0
ESTIMATE_MPP = 0.5
#: Share of a block's pixels taken as its glass (the brightest).
GLASS_SHARE = 0.1
#: Fewest blocks (and rows, columns of them) a surface is fitted to, and the share of them that must be glass.
MIN_BLOCKS = 12
MIN_SIDE_BLOCKS = 3
MIN_GLASS_SHARE = 0.25
#: A block is glass while its density is within this many robust standard deviations above the surface
#: (and the deviation is taken as at least MIN_SPREAD: JPEG noise of the block values).
INLIER_SD = 2.5
MIN_SPREAD = 0.006
#: Fields whose surface varies by less than this (OD, any channel: ~5% of the light) are lit evenly enough;
#: more than MAX_RANGE (a factor of 2) is not vignetting but a smear too dense to show its glass.
MIN_RANGE = 0.02
MAX_RANGE = 0.3
_ITERATIONS = 8
#: The glass is brought to this quantile of the fitted surface over the glass blocks (its brightest glass).
FLOOR_QUANTILE = 0.05
_GRID = 33  # surface sampled on this grid over the field to find its extremes
_GAIN_STEP = 8  # the correction's gain is computed every this many pixels and interpolated
_STRIP_ROWS = 2048  # ... over bands of this many rows (a multiple of _GAIN_STEP)


@dataclass(frozen=True)
class Illumination:
    """The glass's optical density over a ``width`` x ``height`` field: per RGB channel a quadratic in
    (u, v) = (x / width - 0.5, y / height - 0.5) with coefficients (1, u, v, u^2, uv, v^2), and ``floor``,
    the density the correction brings every pixel's glass to (a low quantile of the surface over the glass
    blocks it was fitted to: the brightest glass, robust to the surface's extrapolation into the corners)."""

    width: int
    height: int
    coefficients: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]
    floor: tuple[float, float, float]

    def density(self, x0: float, y0: float, width: int, height: int, scale: float = 1.0) -> np.ndarray:
        """Glass OD above ``floor``, (height, width, 3) float32, over a region whose pixel (0, 0) is field
        pixel (x0, y0) and whose pixels are ``scale`` field pixels wide."""
        u = ((x0 + (np.arange(width, dtype=np.float64) + 0.5) * scale) / self.width - 0.5)[None, :]
        v = ((y0 + (np.arange(height, dtype=np.float64) + 0.5) * scale) / self.height - 0.5)[:, None]
        return (_surface(self.coefficients, u, v) - np.asarray(self.floor)).astype(np.float32)

    def correct(self, rgb: np.ndarray) -> np.ndarray:
        """The whole field ``rgb`` (uint8) with its illumination evened out.

        The gain is computed every _GAIN_STEP pixels and interpolated (bilinear, Pillow): it changes by
        under 0.1% over that distance, and the power function over every pixel cost twice the rest.
        """
        from PIL import Image

        h, w = rgb.shape[:2]
        out = np.empty((h, w, 3), np.uint8)
        for r0 in range(0, h, _STRIP_ROWS):  # bands of rows: a gigapixel photograph needs no gigapixel gain
            rows = min(_STRIP_ROWS, h - r0)
            gh, gw = -(-rows // _GAIN_STEP), -(-w // _GAIN_STEP)
            coarse = np.power(10.0, self.density(0.0, float(r0), gw, gh, _GAIN_STEP)).astype(np.float32)
            for c in range(3):
                gain = np.asarray(Image.fromarray(np.ascontiguousarray(coarse[..., c]), "F").resize((w, rows), Image.BILINEAR))
                out[r0:r0 + rows, :, c] = np.clip(rgb[r0:r0 + rows, :, c] * gain + 0.5, 0, 255)
        return out

    def range(self) -> float:
        """Largest variation of the glass's density over the field (corners included), over the channels (OD)."""
        g = np.linspace(-0.5, 0.5, _GRID)
        d = _surface(self.coefficients, g[None, :], g[:, None])
        return float((d.max(axis=(0, 1)) - d.min(axis=(0, 1))).max())


def _surface(coefficients, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The quadratic surfaces (one per channel) at (u, v), broadcast: (..., 3)."""
    return _design(u, v) @ np.asarray(coefficients, np.float64).T


def _design(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The quadratic's terms (1, u, v, u^2, uv, v^2) at (u, v), broadcast against each other: (..., 6)."""
    u, v = np.broadcast_arrays(u, v)
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)


def estimate_illumination(rgb: np.ndarray, mpp: float) -> Illumination | None:
    """The field's glass surface (:class:`Illumination`), or None when it cannot or need not be corrected.

    ``rgb`` is the whole photograph (uint8 H x W x 3) at ``mpp`` um/px.
    """
    h, w = rgb.shape[:2]
    f = max(1, int(math.floor(ESTIMATE_MPP / mpp + 1e-6)))
    b = max(2, int(round(BLOCK_UM / (mpp * f))))
    ny, nx = (h // f) // b, (w // f) // b
    if ny < MIN_SIDE_BLOCKS or nx < MIN_SIDE_BLOCKS or ny * nx < MIN_BLOCKS:
        return None
    small = block_mean_rgb(rgb, f) if f > 1 else rgb
    blocks = small[: ny * b, : nx * b].reshape(ny, b, nx, b, 3).transpose(0, 2, 1, 3, 4).reshape(ny * nx, b * b, 3)
    k = max(1, int(round(GLASS_SHARE * b * b)))
    brightest = np.argpartition(-blocks.astype(np.int32).sum(axis=-1), k - 1, axis=-1)[:, :k]
    glass = np.median(np.take_along_axis(blocks, brightest[..., None], axis=1), axis=1)  # (blocks, 3)
    od = -np.log10((glass.astype(np.float64) + 1.0) / 256.0)
    # block centres in field coordinates
    cy = (np.arange(ny) + 0.5) * b * f / h - 0.5
    cx = (np.arange(nx) + 0.5) * b * f / w - 0.5
    v, u = np.meshgrid(cy, cx, indexing="ij")
    design = _design(u.ravel(), v.ravel())
    total = od.sum(axis=1)
    glassy = total <= np.median(total)  # start from the brighter half
    for _ in range(_ITERATIONS):
        coef = np.linalg.lstsq(design[glassy], total[glassy], rcond=None)[0]
        resid = total - design @ coef
        spread = max(MIN_SPREAD, 1.4826 * float(np.median(np.abs(resid[glassy]))))
        new = resid < INLIER_SD * spread
        if new.sum() < 6 or (new == glassy).all():
            break
        glassy = new
    if glassy.sum() < MIN_BLOCKS or glassy.mean() < MIN_GLASS_SHARE:
        return None
    coefficients = tuple(tuple(float(a) for a in np.linalg.lstsq(design[glassy], od[glassy, c], rcond=None)[0])
                         for c in range(3))
    fitted = design[glassy] @ np.asarray(coefficients).T  # the surface at the glass blocks
    floor = tuple(float(np.quantile(fitted[:, c], FLOOR_QUANTILE)) for c in range(3))
    illum = Illumination(width=int(w), height=int(h), coefficients=coefficients, floor=floor)  # type: ignore[arg-type]
    return illum if MIN_RANGE <= illum.range() <= MAX_RANGE else None


def flatten_illumination(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """``rgb`` with its illumination evened out (:func:`estimate_illumination`), or ``rgb`` itself when none is needed."""
    illum = estimate_illumination(rgb, mpp)
    return rgb if illum is None else illum.correct(rgb)
