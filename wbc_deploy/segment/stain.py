"""Colour deconvolution of Romanowsky-stained smears into a nucleus-stain density and a total density.

Beer-Lambert: the optical density ``OD_c = -log10(I_c / I0_c)`` of each channel is a linear mix of
stain concentrations, ``OD = C @ M`` with one row of ``M`` per stain. Inverting ``M`` (nucleus stain,
eosin, and their cross product as the residual, as in Ruifrok & Johnston and
``skimage.color.separate_stains``) gives the nucleus-stain concentration per pixel. Because the
input is uint8, ``OD`` and the deconvolution are tabulated per channel (256-entry lookup tables),
which costs three table look-ups per pixel instead of a log and a matrix product.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from .params import SegmentParams


def stain_matrix(nucleus_od: Sequence[float], eosin_od: Sequence[float]) -> np.ndarray:
    """The 3x3 stain matrix (rows: nucleus stain, eosin, residual), each row unit length."""
    n = np.asarray(nucleus_od, dtype=np.float64)
    e = np.asarray(eosin_od, dtype=np.float64)
    n = n / np.linalg.norm(n)
    e = e / np.linalg.norm(e)
    r = np.cross(n, e)
    norm = np.linalg.norm(r)
    if norm < 1e-6:
        raise ValueError("nucleus and eosin stain vectors are parallel; they cannot be separated")
    return np.stack([n, e, r / norm])


def estimate_background(rgb: np.ndarray, fraction: float = 0.03) -> np.ndarray:
    """Glass colour of a field: the median RGB of its brightest ``fraction`` of pixels.

    Falls back to white when the field has no bright pixels at all (a tile fully covered by cells).
    """
    sample = rgb[::3, ::3].reshape(-1, 3)
    if sample.size == 0:
        return np.full(3, 255.0)
    brightness = sample.astype(np.int32).sum(axis=1)
    cut = np.percentile(brightness, 100.0 * (1.0 - fraction))
    bright = sample[brightness >= cut]
    bg = np.median(bright, axis=0).astype(np.float64)
    # Very dark "backgrounds" mean there is no glass in view: OD relative to white is then safer.
    if bg.min() < 120:
        return np.full(3, 255.0)
    return bg


def density_tables(background: Sequence[float], params: SegmentParams) -> np.ndarray:
    """Per-channel lookup tables, float32 of shape (3 outputs, 3 channels, 256 values).

    Outputs: nucleus-stain concentration, eosin concentration and total OD (sum over channels);
    each output is the sum over channels of ``table[output, channel, value]``. The tables are
    cached per (background, stain vectors) and returned read-only.
    """
    bg = tuple(float(v) for v in np.asarray(background, dtype=np.float64).reshape(3))
    return _density_tables(bg, tuple(params.nucleus_od), tuple(params.eosin_od))


@functools.lru_cache(maxsize=256)
def _density_tables(background: tuple[float, float, float], nucleus_od: tuple, eosin_od: tuple) -> np.ndarray:
    bg = np.asarray(background, dtype=np.float64).reshape(3, 1)
    values = np.arange(256, dtype=np.float64).reshape(1, 256)
    od = np.clip(-np.log10((values + 1.0) / (bg + 1.0)), 0.0, None)  # channel x value
    inverse = np.linalg.inv(stain_matrix(nucleus_od, eosin_od))  # concentration = OD @ inverse
    tables = np.stack([od * inverse[:, 0:1], od * inverse[:, 1:2], od]).astype(np.float32)
    tables.flags.writeable = False
    return tables


def apply_table(table: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """One output of :func:`density_tables` (a 3 x 256 table) applied to an RGB uint8 image."""
    out = table[0][rgb[..., 0]]
    out += table[1][rgb[..., 1]]
    out += table[2][rgb[..., 2]]
    return out


def densities(rgb: np.ndarray, background: Sequence[float], params: SegmentParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus-stain density, eosin density and total OD of an RGB uint8 image (float32 each)."""
    tables = density_tables(background, params)
    return apply_table(tables[0], rgb), apply_table(tables[1], rgb), apply_table(tables[2], rgb)


def nucleus_density(rgb: np.ndarray, params: SegmentParams | None = None) -> np.ndarray:
    """The nucleus-stain (azure/haematoxylin-like) channel of an RGB uint8 image, float32 OD units."""
    params = params or SegmentParams()
    rgb = as_rgb_uint8(rgb)
    bg = params.background_rgb if params.background_rgb is not None else estimate_background(rgb)
    return apply_table(density_tables(bg, params)[0], rgb)


def as_rgb_uint8(rgb: np.ndarray) -> np.ndarray:
    """Validate an image as H x W x 3 uint8 (drops an alpha channel; grey is refused)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr
