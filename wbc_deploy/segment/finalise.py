"""Final outlines of the cells found at the working resolution, at the input resolution, and their measurements.

For every cell the watershed accepted (:mod:`.core`), at the *outline resolution* (the input's, or
no finer than ``params.outline_mpp``):

1. the whole-cell outline is the optimal closed contour around the cell (:mod:`.outline`), scored by
   the field's own colour model (:mod:`.colour`): it encloses the nucleus, never crosses glass or
   another cell's region, and follows the cytoplasm's edge instead of the blocky working-resolution
   mask. All cells of a batch of fields are traced together (one dynamic programme);
2. the nucleus is the nucleus stain above a per-cell threshold: Otsu's split of the cell's own
   pixels into chromatin and cytoplasm, placed at ``params.nucleus_edge_fraction`` of the way from
   the cytoplasm's mean to the chromatin's (the half-way point of a blurred edge when 0.5), holes
   filled, pieces kept where the working-resolution chromatin is;
3. cells are renumbered by centroid (row, then column) and measured once each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .colour import ColourModel, Gaussian, od_channels, od_table
from .masks import block_mean_rgb, fill_holes, label, shape_stats
from .masks import otsu as _otsu
from .outline import FORBIDDEN, PolarGrid, closed_contours, contour_gain
from .params import SegmentParams
from .stain import apply_table
from .types import Cell, Segmentation

#: Cells traced in one dynamic programme (bounds the memory of the score arrays).
_TRACE_BATCH = 64


@dataclass
class _Job:
    """One cell to outline: its field, working-resolution id and the polar scores of its rays."""

    field: object  # core._FieldWork
    old: int
    cy: float  # centre, outline px
    cx: float
    reach_um: float = 0.0  # the contour stays within this distance of the centre
    gain: np.ndarray | None = None  # A x R
    min_index: np.ndarray | None = None  # A
    radius: np.ndarray | None = None  # A, outline px (the contour)
    samples: np.ndarray | None = None  # A x R x 3 smoothed OD along the rays
    blocked: np.ndarray | None = None  # A x R: another cell's, or outside the image
    nucleus: np.ndarray | None = None  # A x R: this cell's working-resolution nucleus


def outline_factor(mpp: float, params: SegmentParams) -> int:
    """Block-averaging factor from the input to the outline resolution (no finer than ``params.outline_mpp``)."""
    return max(1, int(math.floor(params.outline_mpp / mpp + 1e-6)))


def polar_grid(outline_mpp: float, reach_um: float) -> PolarGrid:
    """The rays for cells at ``outline_mpp`` um/px reaching ``reach_um``: about one angle per two outline
    pixels of a 12 um cell's rim (32 to 128)."""
    n_angles = int(min(128, max(32, 8 * round(math.pi * 6.0 / outline_mpp / 8))))
    return PolarGrid(n_angles=n_angles, n_radii=int(math.ceil(reach_um / outline_mpp)) + 1, step_px=1.0)


def finalise_fields(work: list, params: SegmentParams) -> list[Segmentation]:
    """Outline, measure and renumber the cells of every field of a batch (see the module docstring)."""
    jobs: list[_Job] = []
    for f in work:
        if f.found:
            jobs += _jobs_of(f, params)
    if jobs:
        mpp = jobs[0].field.result.mpp
        ofac = outline_factor(mpp, params)
        grid = polar_grid(mpp * ofac, max(j.reach_um for j in jobs))
        for j in jobs:
            _score(j, grid, ofac, params)
        _trace(jobs, grid, mpp * ofac, params)
        for _ in range(params.outline_iterations):
            for j in jobs:
                _gain(j, _own_model(j, j.field.colour, grid, mpp * ofac), grid, mpp * ofac, params)
            _trace(jobs, grid, mpp * ofac, params)
        for j in jobs:
            j.samples = j.blocked = j.nucleus = None
    else:
        grid = None
    by_field: dict[int, list[_Job]] = {}
    for j in jobs:
        by_field.setdefault(id(j.field), []).append(j)
    return [_assemble(f, by_field.get(id(f), []), grid, params) if f.found else f.result for f in work]


def _jobs_of(f, params: SegmentParams) -> list[_Job]:
    """A job per working-resolution cell of field ``f``, centred on its working-resolution centroid."""
    ofac = outline_factor(f.result.mpp, params)
    if not hasattr(f, "outline_rgb"):
        f.outline_rgb = block_mean_rgb(f.rgb, ofac) if ofac > 1 else f.rgb
    jobs = []
    for old, wsl in enumerate(ndi.find_objects(f.labels, max_label=len(f.found)), start=1):
        if wsl is None:
            continue
        rows, cols = np.nonzero(f.labels[wsl] == old)
        cy_w, cx_w = rows.mean(), cols.mean()
        extent = float(np.sqrt(((rows - cy_w) ** 2 + (cols - cx_w) ** 2).max())) * f.work_mpp
        cy_full = (wsl[0].start + cy_w + 0.5) * f.factor - 0.5
        cx_full = (wsl[1].start + cx_w + 0.5) * f.factor - 0.5
        jobs.append(_Job(field=f, old=old, cy=(cy_full + 0.5) / ofac - 0.5, cx=(cx_full + 0.5) / ofac - 0.5,
                         reach_um=min(params.outline_max_radius_um, extent + params.outline_slack_um)))
    return jobs


def _score(job: _Job, grid: PolarGrid, ofac: int, params: SegmentParams) -> None:
    """Fill ``job.gain`` (contour gain per angle and radius) and ``job.min_index`` (the nucleus on each ray)."""
    f = job.field
    orgb = f.outline_rgb
    omp = f.result.mpp * ofac
    h, w = orgb.shape[:2]
    rows, cols = grid.points(job.cy, job.cx)
    sigma = params.outline_smooth_um / omp
    pad = int(math.ceil(4 * sigma)) + 2 if sigma >= 0.5 else 1
    r_max = grid.n_radii * grid.step_px
    y0, y1 = max(0, int(math.floor(job.cy - r_max)) - pad), min(h, int(math.ceil(job.cy + r_max)) + pad + 1)
    x0, x1 = max(0, int(math.floor(job.cx - r_max)) - pad), min(w, int(math.ceil(job.cx + r_max)) + pad + 1)
    od = od_channels(orgb[y0:y1, x0:x1], od_table(np.asarray(f.result.background)))
    if sigma >= 0.5:
        for c in range(3):
            od[..., c] = ndi.gaussian_filter(od[..., c], sigma)
    inside = (rows >= -0.5) & (rows <= h - 0.5) & (cols >= -0.5) & (cols <= w - 0.5)
    coords = np.stack([np.clip(rows - y0, 0, y1 - y0 - 1).ravel(), np.clip(cols - x0, 0, x1 - x0 - 1).ravel()])
    samples = np.stack([ndi.map_coordinates(od[..., c], coords, order=1, mode="nearest") for c in range(3)], axis=-1)
    samples = samples.reshape(*rows.shape, 3)
    # which cell each sample belongs to at the working resolution (nearest working pixel)
    fy = np.clip(np.floor(((rows + 0.5) * ofac) / f.factor).astype(np.int64), 0, f.labels.shape[0] - 1)
    fx = np.clip(np.floor(((cols + 0.5) * ofac) / f.factor).astype(np.int64), 0, f.labels.shape[1] - 1)
    owner = f.labels[fy, fx]
    job.samples = samples
    beyond = grid.radii[None, :] * omp > job.reach_um
    job.blocked = ((owner != 0) & (owner != job.old)) | ~inside | beyond
    job.nucleus = (f.nuclei[fy, fx] == job.old) & inside
    last = np.where(job.nucleus.any(axis=1), job.nucleus.shape[1] - 1 - np.argmax(job.nucleus[:, ::-1], axis=1), 0)
    job.min_index = np.minimum(last, grid.n_radii - 1)
    # the cell's own cytoplasm colour, from its working-resolution region (a field may hold WBCs of
    # several kinds, blue lymphocytes beside lilac neutrophils and red-granular eosinophils)
    model: ColourModel = f.colour
    own = (owner == job.old) & ~job.nucleus & model.stained(samples)
    if own.sum() >= 30:
        model = ColourModel(glass=model.glass, cytoplasm=Gaussian.fit(samples[own]), other=model.other,
                            glass_weight=model.glass_weight)
    _gain(job, model, grid, omp, params)


def _gain(job: _Job, model: ColourModel, grid: PolarGrid, omp: float, params: SegmentParams) -> None:
    """``job.gain`` from the samples' scores under ``model`` (see :mod:`.outline`)."""
    samples = job.samples
    score, stained = model.classify(samples, clip=params.outline_score_clip)
    score = np.where(~stained & (score < 0), -params.outline_glass_cost, score)
    score = np.where(job.blocked, FORBIDDEN, score)
    total = samples.sum(axis=-1)
    edge = np.zeros_like(total)
    # the cell's edge: density falling outwards onto something that is not cytoplasm (not the
    # nucleus's own edge, which lies inside the cell)
    edge[:, :-1] = np.clip(total[:, :-1] - total[:, 1:], 0.0, None) * (score[:, 1:] < 0)
    job.gain = contour_gain(score, edge, grid.radii * omp, grid.step_px * omp, params.outline_edge_weight)


def _own_model(job: _Job, model: ColourModel, grid: PolarGrid, omp: float) -> ColourModel:
    """The field's model with this cell's own cytoplasm (stained samples inside its contour) and, when
    there is enough of it, the stained matter outside it (GrabCut-style re-estimation)."""
    r = np.arange(grid.n_radii)[None, :]
    radius_idx = (job.radius / grid.step_px)[:, None]
    ok = ~job.blocked & ~job.nucleus & model.stained(job.samples)
    inside = ok & (r <= radius_idx)
    outside = ok & (r > radius_idx + 0.5 / omp / grid.step_px)
    cyto, other = model.cytoplasm, model.other
    if inside.sum() >= 30:
        cyto = Gaussian.fit(job.samples[inside])
    if outside.sum() >= 30:
        other = Gaussian.fit(job.samples[outside])
    return ColourModel(glass=model.glass, cytoplasm=cyto, other=other, glass_weight=model.glass_weight)


def _trace(jobs: list[_Job], grid: PolarGrid, omp: float, params: SegmentParams) -> None:
    """Best closed contour of every job, ``_TRACE_BATCH`` cells per dynamic programme."""
    dtheta = 2.0 * math.pi / grid.n_angles
    max_step = max(1, int(round(params.outline_max_slope * 6.0 * dtheta / (grid.step_px * omp))))
    step_cost = params.outline_step_cost * grid.step_px * omp
    for k in range(0, len(jobs), _TRACE_BATCH):
        chunk = jobs[k:k + _TRACE_BATCH]
        gain = np.stack([j.gain for j in chunk])
        mins = np.stack([j.min_index for j in chunk])
        radius = closed_contours(gain, mins, max_step, step_cost)
        for j, r in zip(chunk, radius):
            j.radius = r * grid.step_px + 0.5 * grid.step_px  # the contour passes half a sample beyond the last one inside
            j.gain = None


def _cell_mask(job: _Job, grid: PolarGrid, ofac: int, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The contour of ``job`` filled at the input resolution: (bounding slice, mask), or None if empty.

    The contour is the star-shaped curve whose radius is interpolated linearly in angle between the
    rays; a pixel is inside when its centre is no farther from the cell's centre than the curve.
    """
    r_max = float(job.radius.max())
    cy, cx = (job.cy + 0.5) * ofac - 0.5, (job.cx + 0.5) * ofac - 0.5  # centre, input px
    reach = r_max * ofac + ofac
    y0, y1 = max(0, int(math.floor(cy - reach))), min(shape[0], int(math.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(math.floor(cx - reach))), min(shape[1], int(math.ceil(cx + reach)) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    dy = ((np.arange(y0, y1) + 0.5) / ofac - 0.5 - job.cy)[:, None]
    dx = ((np.arange(x0, x1) + 0.5) / ofac - 0.5 - job.cx)[None, :]
    pos = (np.arctan2(dy, dx) % (2.0 * math.pi)) * (grid.n_angles / (2.0 * math.pi))
    i0 = np.floor(pos).astype(np.int64) % grid.n_angles
    frac = pos - np.floor(pos)
    bound = job.radius[i0] * (1.0 - frac) + job.radius[(i0 + 1) % grid.n_angles] * frac
    mask = dy * dy + dx * dx <= bound * bound
    return (slice(y0, y1), slice(x0, x1)), mask


def _nucleus(f, sl: tuple[slice, slice], cell: np.ndarray, old: int, params: SegmentParams) -> tuple[np.ndarray, float]:
    """The nucleus inside ``cell`` (the crop ``sl`` of the input) and its mean nucleus-stain density."""
    dens = apply_table(f.tables[0], f.rgb[sl])
    wy = np.minimum((np.arange(sl[0].start, sl[0].stop) // f.factor), f.nuclei.shape[0] - 1)
    wx = np.minimum((np.arange(sl[1].start, sl[1].stop) // f.factor), f.nuclei.shape[1] - 1)
    coarse = (f.nuclei[np.ix_(wy, wx)] == old) & cell
    values = dens[cell]
    nuc = coarse
    if values.size >= 16 and float(values.max()) > float(values.min()):
        t = float(_otsu(values))
        lo, hi = values[values <= t], values[values > t]
        if lo.size and hi.size:
            t = float(lo.mean()) + params.nucleus_edge_fraction * float(hi.mean() - lo.mean())
            found = fill_holes(dens > max(t, params.nucleus_od_min)) & cell
            pieces, n = label(found)
            if n:
                keep = np.zeros(n + 1, bool)
                keep[np.unique(pieces[coarse])] = True
                keep[0] = False
                refined = keep[pieces]
                if refined.any():
                    nuc = refined
    if not nuc.any():
        nuc = coarse
    return nuc, (float(dens[nuc].mean()) if nuc.any() else 0.0)


def _assemble(f, jobs: list[_Job], grid: PolarGrid | None, params: SegmentParams) -> Segmentation:
    """Rasterise the contours of field ``f``, refine the nuclei, renumber by centroid and measure each cell once."""
    result = f.result
    height, width = f.rgb.shape[:2]
    mpp = result.mpp
    ofac = outline_factor(mpp, params)
    labels = np.zeros((height, width), np.int32)
    nuclei = np.zeros((height, width), np.int32)
    px_area = mpp * mpp
    done = []  # (cy, cx, old, slice, cell, nucleus, nucleus od)
    for j in sorted(jobs, key=lambda j: j.old):
        got = _cell_mask(j, grid, ofac, (height, width))
        if got is None:
            continue
        sl, cell = got
        cell &= labels[sl] == 0  # a cell outlined earlier keeps its pixels
        nuc, nuc_od = _nucleus(f, sl, cell, j.old, params)
        cell |= nuc & (labels[sl] == 0)
        nuc &= cell
        if not nuc.any() or not cell.any():
            continue
        area = float(cell.sum()) * px_area
        if not (params.cell_area_min_um2 <= area <= params.cell_area_max_um2):
            continue
        labels[sl][cell] = -1  # reserved until renumbered
        rows, cols = np.nonzero(cell)
        done.append((sl[0].start + rows.mean(), sl[1].start + cols.mean(), j.old, sl, cell, nuc, nuc_od))
    done.sort(key=lambda c: (round(c[0], 6), round(c[1], 6), c[2]))
    cells: list[Cell] = []
    for new, (cy, cx, old, sl, cell, nuc, nuc_od) in enumerate(done, start=1):
        labels[sl][cell] = new
        nuclei[sl][nuc] = new
        rows, cols = np.nonzero(cell)
        y0, x0 = sl[0].start + int(rows.min()), sl[1].start + int(cols.min())
        y1, x1 = sl[0].start + int(rows.max()) + 1, sl[1].start + int(cols.max()) + 1
        solidity, eccentricity = shape_stats(cell)
        nrows, ncols = np.nonzero(nuc)
        ny0, nx0 = sl[0].start + int(nrows.min()), sl[1].start + int(ncols.min())
        ny1, nx1 = sl[0].start + int(nrows.max()) + 1, sl[1].start + int(ncols.max()) + 1
        touches = bool(x0 == 0 or y0 == 0 or x1 >= width or y1 >= height)
        cells.append(Cell(
            cell_id=new, x=float(cx), y=float(cy), bbox=(x0, y0, x1, y1),
            area_um2=float(cell.sum()) * px_area, nucleus_area_um2=float(nuc.sum()) * px_area,
            n_lobes=int(label(nuc)[1]), solidity=solidity, eccentricity=eccentricity, nucleus_od=nuc_od,
            touches_border=touches, nucleus_bbox=(nx0, ny0, nx1, ny1),
            edge=is_edge_cell((x0, y0, x1, y1), (nx0, ny0, nx1, ny1), (width, height), mpp, params),
        ))
    result.labels = labels
    result.nuclei = nuclei
    result.cells = cells
    return result


def near_border(bbox: tuple[int, int, int, int], size: tuple[int, int], margin_px: float) -> bool:
    """Whether a half-open box (x0, y0, x1, y1) comes within ``margin_px`` of the border of an image of ``size`` (w, h)."""
    x0, y0, x1, y1 = bbox
    width, height = size
    return min(x0, y0, width - x1, height - y1) < margin_px


def is_edge_cell(bbox: tuple[int, int, int, int], nucleus_bbox: tuple[int, int, int, int], size: tuple[int, int],
                 mpp: float, params: SegmentParams) -> bool:
    """Whether a cell (half-open boxes of its outline and nucleus, in an image of ``size`` (w, h) at ``mpp``)
    is cut by the image border: its outline reaches it (within ``params.edge_outline_um``) and its nucleus
    comes within ``params.edge_nucleus_um`` of it."""
    return (near_border(bbox, size, max(1.0, params.edge_outline_um / mpp))
            and near_border(nucleus_bbox, size, params.edge_nucleus_um / mpp))
