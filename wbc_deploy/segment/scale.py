"""Estimate the physical scale of an image with no calibration from its red cells (~7.5 um across)."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.feature import canny, peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import EllipseModel, regionprops
from skimage.transform import downscale_local_mean

from .params import SegmentParams
from .stain import as_rgb_uint8, densities, estimate_background

#: Mean diameter of a normal red cell on a dried, stained smear (micrometres).
RBC_DIAMETER_UM: float = 7.5

# -- crowded-field method: tuning constants (pixels are those of the pyramid level searched) ------------
_HOUGH_BASE = 7.0  # each pyramid level searches radii base .. 2 * base (level 1 from _HOUGH_MIN_R)
_HOUGH_MIN_R = 3.5  # smallest red-cell radius searched, full-resolution pixels (~1 um/px)
_HOUGH_STEP = 1.06  # ratio between successive radii
_HOUGH_MIN_SCORE = 0.3  # votes of a peak / circumference
_ARC_BINS = 16
_MIN_ARC = 0.6  # a circle's supporting edges must span this share of the 16 directions
_MIN_CONTRAST = 0.08  # median OD just inside the circle minus just outside it
_MAX_NUCLEUS = 0.1  # nucleus-stain density that marks a WBC or a platelet
_MODE_WIDTH = 0.12  # half-width in log radius of the consensus window
_MIN_MODE_SHARE = 0.45  # share of all circle evidence (score x area) the consensus radius must hold
_RAYS = 48
_EDGE_LEVEL = 0.25  # outline: where OD falls a quarter of the way from the cell's level to the glass
_OVERLAP = 1.5  # OD (over the glass) this many times the cell's darkest decile: two cells overlap
_MIN_OPEN_RAYS = 0.5  # a measured cell shows glass along at least half of its rays
_MIN_FIT_RAYS = 0.3  # ... and at least this share of its rays fit the ellipse it is measured by
_MAX_ASPECT = 1.6
_MAX_SPREAD = 0.15  # std of log diameters of the measured cells
_MIN_MEASURED_R = 6.0  # smallest consensus radius (px) whose cells are measured
_MAX_PEAKS = 300  # strongest Hough peaks examined per pyramid level
_MAX_MEASURED = 60  # circles measured at most (the strongest, one per cell)
_AGREE = 1.25  # the two measurements, when both are made, must agree within this factor


def estimate_mpp(rgb: np.ndarray, rbc_diameter_um: float = RBC_DIAMETER_UM, min_cells: int = 5) -> float | None:
    """Microns per pixel estimated from the red cells of an RGB field, or None if it cannot be told.

    The typical red-cell diameter in pixels is measured two ways and taken as ``rbc_diameter_um``:

    * Isolated cells (the original fast path): stained pixels (total OD above Otsu's threshold,
      clipped to the glass/cell range; pallor filled) split into connected objects; round objects
      without nucleus stain that do not touch the border are single red cells; the area-weighted
      median equivalent diameter of at least ``min_cells`` that agree (spread under 15%).
    * Crowded fields (overlapping, deformed cells, pallor open to the outside), scale-free:
      a circular Hough transform on Canny edges of the total OD over an image pyramid (each level
      searches radii of 7-14 of its own pixels, the full-resolution level from 3.5 px, up to a
      sixth of the shorter side), each edge pixel voting only along its gradient towards the
      darker side, so pallor, gaps between cells and bright specks cast no consistent votes.
      A circle counts when its supporting edges span most directions, it is darker just inside
      than just outside, and its disc holds no nucleus stain (WBCs). The consensus radius is the
      mode of the circle radii weighted by score x area (red cells hold most of the stained area;
      dust and platelets are small). Every circle near that radius is then measured at full
      resolution: 48 rays from its centre find where the OD falls a quarter of the way from the
      cell's level to the glass's, rays through an overlap (darker than one cell) or ending far
      out are dropped, an ellipse is fitted to the outline points (refitted without points off
      it, then again from the fitted centre) and its mean semi-axis is the cell's radius. Cells
      seen against glass along fewer than half their rays or more elongated than 1.6:1 are not
      measured; the estimate is the mean diameter of the measured cells (one per cell).

    The isolated-cell measurement is dropped when the circles' consensus contradicts it (its
    diameter is not 1.5-3.5 consensus radii: uniform dust specks taken for cells). When both
    measurements remain they must agree within 25% and their geometric mean is used; otherwise
    the one made is used. Declines (returns None: the caller should ask for ``--mpp``) when
    neither is made, that is for the crowded method: the consensus radius holds under 45% of the
    circle evidence (no dominant cell size), it is under 6 px (outlines too blurred by the pixels
    to measure; only isolated cells can tell such a scale), fewer than ``max(3, min_cells // 2)``
    cells could be measured, or their diameters spread more than 15% (std of logs); and when the
    two measurements disagree. Blank glass, WBC-only fields and fields covered by cells give None.
    """
    rgb = as_rgb_uint8(rgb)
    h, w = rgb.shape[:2]
    if h < 16 or w < 16:
        return None
    params = SegmentParams()
    nuc, _eos, total = densities(rgb, estimate_background(rgb), params)
    isolated = _isolated_diameter(nuc, total, params, min_cells)
    crowded, circle_radius = _crowded_diameter(nuc, total, max(3, min_cells // 2))
    if isolated is not None and circle_radius is not None and not 0.75 <= isolated / (2 * circle_radius) <= 1.75:
        isolated = None  # uniform specks (dust, debris) the circles' consensus says are not the red cells
    if isolated is not None and crowded is not None:
        if abs(math.log(isolated / crowded)) > math.log(_AGREE):
            return None
        diameter = math.sqrt(isolated * crowded)
    elif isolated is not None or crowded is not None:
        diameter = isolated if isolated is not None else crowded
    else:
        return None
    return float(rbc_diameter_um / diameter)


def _isolated_diameter(nuc: np.ndarray, total: np.ndarray, params: SegmentParams, min_cells: int) -> float | None:
    """Typical diameter (px) of isolated, round red cells, or None when fewer than ``min_cells`` agree."""
    h, w = total.shape
    try:
        t = float(threshold_otsu(total[::2, ::2]))
    except ValueError:  # a constant image
        return None
    t = min(max(t, params.stained_od_min), params.stained_od_max)
    stained = ndi.binary_opening(ndi.binary_fill_holes(total > t), iterations=1)
    lab, n = ndi.label(stained)
    if n == 0:
        return None
    diameters = []
    for region in regionprops(lab, intensity_image=nuc):
        r0, c0, r1, c1 = region.bbox
        if r0 == 0 or c0 == 0 or r1 >= h or c1 >= w or region.area < 20:
            continue
        if region.solidity < 0.9 or region.eccentricity > 0.8:  # clumps and overlapping cells
            continue
        if region.intensity_max > params.nucleus_core_od:  # a WBC, or a platelet on a red cell
            continue
        diameters.append(region.equivalent_diameter_area)
    if len(diameters) < min_cells:
        return None
    d = np.sort(np.asarray(diameters))
    weight = np.cumsum(d * d) / np.sum(d * d)
    typical = d[min(int(np.searchsorted(weight, 0.5)), d.size - 1)]
    cells = d[(d > 0.75 * typical) & (d < 1.3 * typical)]
    if cells.size < min_cells or np.std(cells) > 0.15 * np.mean(cells):
        return None
    return float(np.median(cells))


def _crowded_diameter(nuc: np.ndarray, total: np.ndarray, min_cells: int) -> tuple[float | None, float | None]:
    """(typical red-cell diameter in px or None, consensus circle radius in px or None)."""
    h, w = total.shape
    circles = _circles(nuc, total, r_max=min(h, w) / 6.0)
    if len(circles) < min_cells:
        return None, None
    radius = circles[:, 0]
    weight = circles[:, 3] * radius**2
    log_r = np.log(radius)
    centres = np.arange(log_r.min(), log_r.max() + 0.01, 0.01)
    density = (np.abs(log_r[None, :] - centres[:, None]) < _MODE_WIDTH) @ weight
    in_mode = np.abs(log_r - centres[int(np.argmax(density))]) < _MODE_WIDTH
    if weight[in_mode].sum() < _MIN_MODE_SHARE * weight.sum():
        return None, None
    r0 = float(np.exp(np.median(log_r[in_mode])))
    if r0 < _MIN_MEASURED_R:  # outlines of cells this small are too blurred by the pixels to measure
        return None, r0
    near = circles[(radius > 0.6 * r0) & (radius < 1.6 * r0)]
    near = near[np.argsort(-near[:, 3], kind="stable")]
    picked: list[int] = []  # the strongest circles, one per cell, at most _MAX_MEASURED
    for i, (_r, x, y, _s) in enumerate(near):
        if len(picked) == _MAX_MEASURED:
            break
        if not picked or np.hypot(near[picked, 1] - x, near[picked, 2] - y).min() > 0.5 * r0:
            picked.append(i)
    cells = np.log(_measure_cells(total, near[picked, 1:3], r0))
    if cells.size < min_cells or np.std(cells) > _MAX_SPREAD:
        return None, r0
    return float(2.0 * np.mean(np.exp(cells))), r0


def _circles(nuc: np.ndarray, total: np.ndarray, r_max: float) -> np.ndarray:
    """Red-cell-like circles over an image pyramid: rows (radius, x, y, score) in full-resolution px."""
    out = []
    od, nu, f = total, nuc, 1
    while True:
        lo = (_HOUGH_MIN_R if f == 1 else _HOUGH_BASE) / _HOUGH_STEP
        hi = min(2 * _HOUGH_BASE, r_max / f) * _HOUGH_STEP
        if hi < lo * _HOUGH_STEP**2 or min(od.shape) < 8:
            break
        radii = lo * _HOUGH_STEP ** np.arange(int(math.log(hi / lo) / math.log(_HOUGH_STEP)) + 1)
        for r, x, y, s in _level_circles(od, nu, radii):
            out.append((r * f, (x + 0.5) * f - 0.5, (y + 0.5) * f - 0.5, s))
        hh, ww = (od.shape[0] // 2) * 2, (od.shape[1] // 2) * 2
        od = downscale_local_mean(od[:hh, :ww], (2, 2))
        nu = downscale_local_mean(nu[:hh, :ww], (2, 2))
        f *= 2
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def _level_circles(od: np.ndarray, nuc: np.ndarray, radii: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Circles of one pyramid level: a Hough transform where each Canny edge pixel votes only along its
    gradient (towards higher OD, i.e. into a cell), then checks of each peak (see estimate_mpp)."""
    h, w = od.shape
    edges = canny(od, sigma=1.0)
    ys, xs = np.nonzero(edges)
    if ys.size < 8:
        return []
    smooth = ndi.gaussian_filter(od, 1.0)
    gy, gx = ndi.sobel(smooth, 0)[ys, xs], ndi.sobel(smooth, 1)[ys, xs]
    norm = np.hypot(gx, gy) + 1e-12
    uy, ux = gy / norm, gx / norm
    best = np.zeros((h, w), np.float32)
    best_k = np.zeros((h, w), np.int32)
    for k, r in enumerate(radii):
        cy = np.rint(ys + r * uy).astype(np.int64)
        cx = np.rint(xs + r * ux).astype(np.int64)
        ok = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
        votes = np.bincount(cy[ok] * w + cx[ok], minlength=h * w).reshape(h, w).astype(np.float32)
        score = ndi.uniform_filter(votes, 3) * np.float32(9.0 / (2.0 * math.pi * r))
        better = score > best
        best[better] = score[better]
        best_k[better] = k
    peaks = peak_local_max(best, min_distance=max(2, int(0.7 * radii[0])), threshold_abs=_HOUGH_MIN_SCORE,
                           exclude_border=False, num_peaks=_MAX_PEAKS)  # the strongest first
    if len(peaks) == 0:
        return []
    tree = cKDTree(np.stack([ys, xs], axis=1))
    theta = np.linspace(0.0, 2.0 * math.pi, 36, endpoint=False)
    out = []
    for y, x in peaks:
        k = int(best_k[y, x])
        if k == 0 or k == radii.size - 1:  # the true radius may lie outside this level's range
            continue
        r = float(radii[k])
        idx = np.asarray(tree.query_ball_point((y, x), 1.15 * r + 1.5), dtype=np.int64)
        if idx.size == 0:
            continue
        dy, dx = y - ys[idx], x - xs[idx]
        dist = np.hypot(dy, dx) + 1e-9
        facing = (dy * uy[idx] + dx * ux[idx]) / dist > 0.9
        support = facing & (np.abs(dist - r) < 0.15 * r + 1.0)
        angle = np.arctan2(-dy[support], -dx[support])
        arc = np.unique(np.floor((angle + math.pi) / (2 * math.pi) * _ARC_BINS).astype(int) % _ARC_BINS).size
        if arc < _MIN_ARC * _ARC_BINS:
            continue
        ring_y, ring_x = y + r * np.sin(theta), x + r * np.cos(theta)
        inner = ndi.map_coordinates(od, [y + 0.7 * (ring_y - y), x + 0.7 * (ring_x - x)], order=1, mode="nearest")
        outer = ndi.map_coordinates(od, [y + 1.3 * (ring_y - y), x + 1.3 * (ring_x - x)], order=1, mode="nearest")
        if np.median(inner - outer) < _MIN_CONTRAST:
            continue
        disk = np.array([0.0, 0.3, 0.6, 0.85])[:, None]  # nucleus stain over the disk, not just its centre
        stain = ndi.map_coordinates(nuc, [y + disk * (ring_y - y), x + disk * (ring_x - x)], order=1, mode="nearest")
        if np.percentile(stain, 90) >= _MAX_NUCLEUS:
            continue
        out.append((r, float(x), float(y), float(best[y, x])))
    return out


def _measure_cells(total: np.ndarray, centres: np.ndarray, r0: float) -> np.ndarray:
    """Mean radii (px) of the cells around ``centres`` (x, y) whose outline is mostly against glass."""
    h, w = total.shape
    step = max(r0 / 40.0, 0.5)
    radii = np.arange(0.35 * r0, 2.0 * r0, step)
    run = max(2, int(round(0.25 * r0 / step)))  # glass must last this many samples past the outline
    theta = np.linspace(0.0, 2.0 * math.pi, _RAYS, endpoint=False)
    cos_t, sin_t = np.cos(theta)[:, None], np.sin(theta)[:, None]
    found: list[tuple[float, float, float, int]] = []
    for x0, y0 in centres:
        fit = None
        for _ in range(2):  # the second pass starts from the fitted centre
            yy, xx = y0 + radii * sin_t, x0 + radii * cos_t
            inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            prof = ndi.map_coordinates(total, [yy, xx], order=1, mode="nearest")
            cell = float(np.median(prof[:, radii < 0.8 * r0]))
            glass = np.where(inside, prof, np.inf).min(axis=1)
            glass = np.where(np.isfinite(glass), glass, cell)  # a ray wholly off the image
            level = glass + _EDGE_LEVEL * (cell - glass)
            below = (prof < level[:, None]) & inside
            c = np.cumsum(np.pad(below, ((0, 0), (1, 0))).astype(np.int32), axis=1)
            lasting = (c[:, run:] - c[:, :-run]) == run  # samples j .. j + run - 1 all below
            has = lasting.any(axis=1) & (cell - glass > 0.08)
            j = np.argmax(lasting, axis=1)
            has &= j > 0
            # a ray through an overlap (densities add) crossed into another cell before the glass
            dark = float(np.percentile(prof[:, radii < 0.8 * r0], 90))
            peak = np.maximum.accumulate(prof, axis=1)[np.arange(_RAYS), np.maximum(j - 1, 0)]
            has &= peak < glass + _OVERLAP * (dark - glass)
            if has.sum() < _MIN_OPEN_RAYS * _RAYS:
                fit = None
                break
            rows = np.flatnonzero(has)
            jj = j[rows]
            a, b = prof[rows, jj - 1], prof[rows, jj]
            rr = radii[jj - 1] + np.clip((a - level[rows]) / np.maximum(a - b, 1e-9), 0, 1) * step
            # a ray that crossed a neighbouring cell before the glass ends far out: not this cell's outline
            mid = float(np.median(rr))
            own = (rr > 0.6 * mid) & (rr < 1.6 * mid)
            if own.sum() < _MIN_OPEN_RAYS * _RAYS:
                fit = None
                break
            rows, rr = rows[own], rr[own]
            pts = np.stack([x0 + rr * cos_t[rows, 0], y0 + rr * sin_t[rows, 0]], axis=1)
            fit = _fit_outline(pts, _MIN_FIT_RAYS * _RAYS)
            if fit is None:
                break
            x0, y0 = fit[0], fit[1]
        if fit is None:
            continue
        xc, yc, major, minor = fit
        if not (0.3 * r0 < minor and major < 3.0 * r0) or major > _MAX_ASPECT * minor:
            continue
        found.append((xc, yc, 0.5 * (major + minor), int(rows.size)))
    # one cell may carry several circles: keep the best-seen measurement per cell
    found.sort(key=lambda c: -c[3])
    kept: list[tuple[float, float, float, int]] = []
    for c in found:
        if all(math.hypot(c[0] - k[0], c[1] - k[1]) > 0.5 * r0 for k in kept):
            kept.append(c)
    return np.asarray([c[2] for c in kept], dtype=np.float64)


def _fit_outline(points: np.ndarray, min_points: float) -> tuple[float, float, float, float] | None:
    """(x centre, y centre, major, minor semi-axis) of an ellipse fitted to outline points, refitted
    twice without the points more than 20%, then 10%, of its radius off it (rays that grazed a touching
    cell); None if fewer than ``min_points`` remain or no ellipse fits."""
    fit = _fit_ellipse(points)
    for tolerance in (0.2, 0.1):
        if fit is None:
            return None
        xc, yc, a, b, theta = fit
        dx, dy = points[:, 0] - xc, points[:, 1] - yc
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = -dx * math.sin(theta) + dy * math.cos(theta)
        k = np.hypot(u / a, v / b)
        off = np.hypot(dx, dy) * np.abs(1.0 - 1.0 / np.maximum(k, 1e-9))  # along the ray from the centre
        close = off <= max(1.0, tolerance * 0.5 * (a + b))
        if close.sum() < min_points:
            return None
        if not close.all():
            points = points[close]
            fit = _fit_ellipse(points)
    if fit is None:
        return None
    xc, yc, a, b, _theta = fit
    return xc, yc, max(a, b), min(a, b)


def _fit_ellipse(points: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """(x centre, y centre, semi-axis a, semi-axis b, angle of a) of the ellipse fitted to ``points``."""
    if hasattr(EllipseModel, "from_estimate"):  # scikit-image >= 0.26
        model = EllipseModel.from_estimate(points)
        if not model:
            return None
        (xc, yc), (a, b), theta = model.center, model.axis_lengths, model.theta
    else:
        model = EllipseModel()
        if not model.estimate(points):
            return None
        xc, yc, a, b, theta = model.params
    values = np.array([xc, yc, a, b, theta], dtype=np.float64)
    if not np.isfinite(values).all() or min(a, b) <= 0:
        return None
    return tuple(float(v) for v in values)
