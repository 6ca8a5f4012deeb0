"""Small binary-mask helpers shared by the segmentation steps (SciPy/scikit-image underneath)."""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.morphology import disk as _skdisk

#: 4-connectivity, built once (SciPy would rebuild its default on every call).
CROSS = ndi.generate_binary_structure(2, 1)


def disk(radius_px: float) -> np.ndarray | None:
    return disk_of(int(round(radius_px)))


@functools.lru_cache(maxsize=64)
def disk_of(r: int) -> np.ndarray | None:
    if r < 1:
        return None
    d = _skdisk(r).astype(bool)
    d.flags.writeable = False
    return d


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a 2-D mask (int32 labels, count)."""
    return ndi.label(mask, structure=CROSS)


def lut(labels: np.ndarray, n: int, present: np.ndarray) -> np.ndarray:
    """Boolean table over label ids 0..n: True for the ids in ``present`` except 0."""
    table = np.zeros(n + 1, bool)
    table[present] = True
    table[0] = False
    return table


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes: background components that do not touch the border (faster than iterative filling)."""
    lab, n = label(~mask)
    if n == 0:
        return mask
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    hole = np.ones(n + 1, bool)
    hole[border] = False
    hole[0] = False
    return mask | hole[lab]


def bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice] | None:
    """Bounding box of a 2-D mask grown by ``pad`` pixels (clipped to the array), or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (slice(max(0, int(rows[0]) - pad), min(h, int(rows[-1]) + 1 + pad)),
            slice(max(0, int(cols[0]) - pad), min(w, int(cols[-1]) + 1 + pad)))


def shape_stats(mask: np.ndarray) -> tuple[float, float]:
    """Solidity (area over convex-hull area) and eccentricity of a non-empty 2-D mask.

    The same definitions as ``skimage.measure.regionprops`` (hull of the pixel corners; the
    ellipse with the same second central moments), without its per-region machinery.
    """
    img = mask[bbox(mask)]
    rows, cols = np.nonzero(img)
    area = rows.size
    solidity = area / convex_area(img)
    r = rows - rows.mean()
    c = cols - cols.mean()
    # elementwise sums, not BLAS dot products (a multi-threaded BLAS spins on a busy machine)
    rr, cc, rc = float(np.sum(r * r)) / area, float(np.sum(c * c)) / area, float(np.sum(r * c)) / area
    l2, l1 = np.clip(np.linalg.eigvalsh(np.array([[cc, -rc], [-rc, rr]])), 0.0, None)
    eccentricity = math.sqrt(1.0 - l2 / l1) if l1 != 0 else 0.0
    return float(solidity), float(eccentricity)


def convex_area(img: np.ndarray) -> int:
    """Pixels of ``skimage.morphology.convex_hull_image(img)`` (the hull of the pixel edges' midpoints), counted
    row by row from the hull polygon instead of testing every pixel of the bounding box."""
    h, w = img.shape
    rows = np.flatnonzero(img.any(axis=1))
    cols = np.flatnonzero(img.any(axis=0))
    if rows.size <= 1 or cols.size <= 1:
        return int(np.count_nonzero(img)) if rows.size else 0
    # candidate hull points: the first and last pixel of every row (the rest lie between them)
    first_c, last_c = img[rows].argmax(axis=1), w - 1 - img[rows, ::-1].argmax(axis=1)
    pts = np.concatenate([np.stack([rows, first_c], 1), np.stack([rows, last_c], 1)]).astype(np.float64)
    diamond = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
    pts = np.unique((pts[:, None, :] + diamond[None]).reshape(-1, 2), axis=0)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # all points on a line: the mask is its own hull
        return int(np.count_nonzero(img))
    poly = pts[hull.vertices]
    a, b = poly, np.roll(poly, -1, axis=0)
    ys = np.arange(h, dtype=np.float64)[:, None]
    lo, hi = np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 0], b[:, 0])
    crosses = (ys >= lo - 1e-9) & (ys <= hi + 1e-9)
    dy = b[:, 0] - a[:, 0]
    t = np.where(np.abs(dy) > 1e-12, (ys - a[:, 0]) / np.where(np.abs(dy) > 1e-12, dy, 1.0), 0.0)
    x = a[:, 1] + t * (b[:, 1] - a[:, 1])
    flat = np.abs(dy) <= 1e-12  # horizontal edges: both ends
    x_lo = np.where(crosses, np.where(flat, np.minimum(a[:, 1], b[:, 1]), x), np.inf).min(axis=1)
    x_hi = np.where(crosses, np.where(flat, np.maximum(a[:, 1], b[:, 1]), x), -np.inf).max(axis=1)
    ok = np.isfinite(x_lo) & np.isfinite(x_hi)
    first = np.maximum(np.ceil(x_lo[ok] - 1e-9), 0)
    last = np.minimum(np.floor(x_hi[ok] + 1e-9), w - 1)
    return int(np.clip(last - first + 1, 0, None).sum())


def otsu(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of an array: ``skimage.filters.threshold_otsu``'s computation (256-bin histogram
    over the data's range, the threshold at a bin centre) in float64, without its input checks (it
    is called for every field and cell). A constant array gives its value."""
    v = np.asarray(values).ravel()
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(v, bins=nbins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2.0
    hist = hist.astype(np.float64)
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    m1 = np.cumsum(hist * centres) / np.maximum(w1, 1e-300)
    m2 = (np.cumsum((hist * centres)[::-1]) / np.maximum(w2[::-1], 1e-300))[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[int(np.argmax(between))])


def block_mean_rgb(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (Pillow's box reduction; partial edge blocks too)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor), dtype=np.uint8)
