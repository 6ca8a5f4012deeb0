"""WBC segmentation: colour deconvolution, nucleus markers, watershed (Chen et al. 2022, physical units).

Steps, at a working resolution no finer than ``params.work_mpp`` um/px:

1. colour deconvolution (:mod:`.stain`) into nucleus-stain, eosin and total optical densities;
2. a cheap gate: a field whose nucleus stain never reaches ``nucleus_core_od`` returns at once;
3. binarisation of the nucleus stain (Otsu, clipped to a physical range, with hysteresis), hole
   filling and a morphological opening give the chromatin mask. Everything after this runs only in
   windows around chromatin candidates;
4. the cell mask: chromatin plus cytoplasm (stained pixels whose stain is largely nucleus stain:
   WBC cytoplasm is bluish-lilac, red cells are almost pure eosin), within ``cytoplasm_max_um``
   of chromatin, holes filled. The lobes of one nucleus are joined by a dilation of half the
   lobe gap, so they always flood into the same cell;
5. touching cells: markers are the h-maxima of the cell mask's distance transform (morphological
   reconstruction), and the watershed of the distance transform splits the mask; pieces of one
   nucleus cut by that split are merged back, and a region still holding two separate nuclei is
   split between them;
6. when colour finds no cytoplasm (eosinophil granules are as red as red cells), the cell is the
   round stained object around its nucleus, from the same watershed on the stained mask;
7. a cell left too small by the field's colour (two touching WBCs of different kinds: the field's
   cytoplasm colour is the other one's) gets its own, from the stained ring around its nucleus,
   unless that colour is the red cells';
8. candidates are kept by physical nucleus and cell area and by cell shape.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

from .colour import ColourModel, Gaussian, fit_colour_model, od_channels, od_table, separation
from .finalise import finalise_fields
from .illumination import flatten_illumination
from .masks import CROSS as _CROSS
from .masks import bbox as _bbox
from .masks import block_mean_rgb as _block_mean_rgb
from .masks import disk as _disk
from .masks import fill_holes as _fill_holes
from .masks import label as _label
from .masks import lut as _lut
from .masks import otsu as _otsu
from .masks import shape_stats as _shape_stats
from .params import SegmentParams
from .stain import apply_table, as_rgb_uint8, density_tables, estimate_background, stain_matrix
from .types import Segmentation

try:  # scikit-image's own inner loop of ``reconstruction``, fed a faster sort (see _domes)
    from skimage.morphology._grayreconstruct import reconstruction_loop as _reconstruction_loop
except ImportError:  # pragma: no cover - a scikit-image without it: the public function is used
    _reconstruction_loop = None


#: Radius (um) of the opening that keeps nucleus bodies and removes strands and granule chains.
THICK_CHROMATIN_UM = 0.8

@dataclass
class _Found:
    """A cell accepted at the working resolution (shape statistics measured there)."""

    n_lobes: int
    solidity: float
    eccentricity: float


def segment_wbcs(rgb: np.ndarray, mpp: float, params: SegmentParams | None = None) -> Segmentation:
    """Find and delimit every white blood cell of an RGB field at ``mpp`` micrometres per pixel.

    ``rgb`` is H x W x 3 (uint8, or float in 0..1). Returns whole-cell and nucleus instance labels
    (int32 at the input resolution, ids 1..n ordered by centroid row then column) and a
    :class:`Cell` per id. Raises ValueError for a bad ``mpp`` or image shape.
    """
    return segment_fields([rgb], mpp, params)[0]


def segment_fields(fields: Sequence[np.ndarray], mpp: float, params: SegmentParams | None = None) -> list[Segmentation]:
    """:func:`segment_wbcs` of several RGB fields at the same ``mpp``, in one batch: the same results.

    Each field keeps its own background, thresholds and candidate windows. The windows of all the
    fields are then segmented together: packed side by side with glass between them, wider than
    any step can see across, and run through the steps once, so a batch costs a fixed number of
    array operations instead of that many per window (the slide scan segments the dozens of small
    windows of a tile this way; Python overhead per window is what limits it, and it holds the GIL).
    """
    params = params or SegmentParams()
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp must be a positive number of micrometres per pixel, got {mpp!r}")
    work = [_prepare_field(rgb, float(mpp), params) for rgb in fields]
    items = [(f, sl) for f in work for sl in f.windows]
    if items:
        work_mpp = float(mpp) * _work_factor(float(mpp), params)  # the same for every field (an empty one records none)
        reach_px = int(math.ceil(params.cytoplasm_max_um / work_mpp)) + 1
        batch: list[_Window] = []
        area = 0
        for f, sl in items:
            core = _core(f, sl, reach_px + 1)
            if core is None:  # a cell may reach the field's edge: segment the window as it is
                _segment_windows([(f, sl, sl)], work_mpp, params, guard=0)
                continue
            batch.append((f, core, sl))
            area += f.window_area(core)
            if area >= _BATCH_MAX_PX:
                _segment_windows(batch, work_mpp, params, guard=1)
                batch, area = [], 0
        if batch:
            _segment_windows(batch, work_mpp, params, guard=1)
    return finalise_fields(work, params)


#: Largest batch of windows segmented at once (working-resolution pixels), so memory stays bounded.
_BATCH_MAX_PX = 1 << 22


@dataclass(eq=False)
class _FieldWork:
    """One field on its way through :func:`segment_fields`: what its windows need, and its cells so far."""

    rgb: np.ndarray
    result: Segmentation
    factor: int = 1
    work_mpp: float = 0.0
    work_rgb: np.ndarray | None = None
    tables: np.ndarray | None = None
    nuc_od: np.ndarray | None = None
    candidates: np.ndarray | None = None
    stained_od: float = 0.0
    windows: list[tuple[slice, slice]] = field(default_factory=list)
    window_od: dict[tuple[int, int, int, int], np.ndarray] = field(default_factory=dict)  # smoothed OD per window
    colour: ColourModel | None = None
    far: Gaussian | None = None  # colour of the stained matter beyond every cell's reach (red cells)
    labels: np.ndarray | None = None  # working resolution
    nuclei: np.ndarray | None = None
    found: dict[int, _Found] = field(default_factory=dict)

    @staticmethod
    def window_area(sl: tuple[slice, slice]) -> int:
        return (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start)


#: A window to segment: its field, the part of it to segment (its core) and the whole window.
_Window = tuple[_FieldWork, tuple[slice, slice], tuple[slice, slice]]


def _work_factor(mpp: float, params: SegmentParams) -> int:
    """Block-averaging factor from ``mpp`` to the working resolution (``params.work_mpp``, never finer than the input)."""
    return max(1, int(math.floor(params.work_mpp / mpp + 1e-6)))


def field_nucleus_threshold(rgb: np.ndarray, mpp: float, params: SegmentParams | None = None) -> float | None:
    """The nucleus-stain threshold :func:`segment_wbcs` gives this whole field (its Otsu threshold, clipped to
    the physical chromatin range), or None when the field holds no chromatin-dark pixel.

    ``count`` thresholds the windows it cuts out of a photograph at the photograph's threshold
    (``SegmentParams.nucleus_threshold``), as ``segment`` does, instead of each window's own.
    """
    params = params or SegmentParams()
    return _field_threshold(_field_densities(rgb, float(mpp), params), params)


def _field_threshold(fw: _FieldWork, params: SegmentParams) -> float | None:
    """A prepared field's nucleus threshold (``params.nucleus_threshold``, else its Otsu threshold), or None
    when no pixel is chromatin-dark (the cheap gate: no WBC)."""
    if fw.nuc_od is None or float(fw.nuc_od.max()) < params.nucleus_core_od:
        return None
    return params.nucleus_threshold if params.nucleus_threshold is not None else _nucleus_threshold(fw.nuc_od, params)


def _prepare_field(rgb: np.ndarray, mpp: float, params: SegmentParams) -> _FieldWork:
    """Validate a field, deconvolve its stains and find its candidate windows (none: nothing to segment)."""
    fw = _field_densities(rgb, mpp, params)
    threshold = _field_threshold(fw, params)
    if threshold is None:
        return fw
    nuc_od, result = fw.nuc_od, fw.result
    result.threshold = threshold
    fw.candidates = candidates = _hysteresis(nuc_od, threshold, max(threshold, params.nucleus_core_od))
    if not candidates.any():
        return fw
    margin = int(math.ceil((params.cytoplasm_max_um + params.lobe_gap_um) / fw.work_mpp)) + 3
    min_px = params.nucleus_area_min_um2 / (fw.work_mpp * fw.work_mpp)
    # not enough chromatin in a window for even one nucleus: nothing to do there
    fw.windows = [sl for sl in _candidate_windows(candidates, margin) if candidates[sl].sum() >= min_px]
    if fw.windows:
        fw.stained_od = _stained_threshold(apply_table(fw.tables[2], fw.work_rgb[::4, ::4]), params)
        fw.labels = np.zeros(nuc_od.shape, np.int32)
        fw.nuclei = np.zeros(nuc_od.shape, np.int32)
        fw.colour = _fit_colour(fw, np.asarray(result.background, np.float64), params)
    return fw


def _field_densities(rgb: np.ndarray, mpp: float, params: SegmentParams) -> _FieldWork:
    """Validate a field, even out its illumination (``params.flat_field``), block-average it to the working
    resolution and deconvolve its nucleus stain (``nuc_od``; None for an empty field)."""
    rgb = as_rgb_uint8(rgb)
    if params.flat_field:
        rgb = flatten_illumination(rgb, mpp)
    height, width = rgb.shape[:2]
    bg = np.asarray(params.background_rgb if params.background_rgb is not None else estimate_background(rgb),
                    dtype=np.float64)
    result = Segmentation(
        labels=np.zeros((height, width), np.int32), nuclei=np.zeros((height, width), np.int32),
        mpp=float(mpp), threshold=params.nucleus_od_max, background=(float(bg[0]), float(bg[1]), float(bg[2])),
    )
    fw = _FieldWork(rgb=rgb, result=result)
    if height == 0 or width == 0:
        return fw

    factor = _work_factor(mpp, params)
    fw.factor, fw.work_mpp = factor, mpp * factor
    fw.work_rgb = work_rgb = _block_mean_rgb(rgb, factor) if factor > 1 else rgb
    fw.tables = tables = density_tables(bg, params)
    fw.nuc_od = apply_table(tables[0], work_rgb)
    return fw


def _window_key(sl: tuple[slice, slice]) -> tuple[int, int, int, int]:
    return (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)


def _smooth_od(rgb: np.ndarray, table: np.ndarray, work_mpp: float) -> np.ndarray:
    """Per-channel optical density smoothed over 0.3 um (no smoothing when that is under half a pixel)."""
    od = od_channels(rgb, table)
    sigma = 0.3 / work_mpp
    if sigma >= 0.5:
        for c in range(3):
            od[..., c] = ndi.gaussian_filter(od[..., c], sigma)
    return od


def _fit_colour(f: _FieldWork, bg: np.ndarray, params: SegmentParams) -> ColourModel:
    """The field's colour model (:mod:`.colour`), fitted to its windows' smoothed OD (kept for the windows' steps)."""
    table = od_table(bg)
    stride = max(1, int(round(0.5 / f.work_mpp)))  # samples ~0.5 um apart
    ods, dists, chrom = [], [], []
    for sl in f.windows:
        od = _smooth_od(f.work_rgb[sl], table, f.work_mpp)
        f.window_od[_window_key(sl)] = od
        cand = f.candidates[sl]
        dist = ndi.distance_transform_edt(~cand) * f.work_mpp
        ods.append(od[::stride, ::stride].reshape(-1, 3))
        dists.append(dist[::stride, ::stride].ravel())
        chrom.append(cand[::stride, ::stride].ravel())
    inverse = np.linalg.inv(stain_matrix(params.nucleus_od, params.eosin_od))  # concentration = OD @ inverse
    od_all, dist_all = np.concatenate(ods), np.concatenate(dists)
    model = fit_colour_model(od_all, dist_all, np.concatenate(chrom), blue_axis=inverse[:, :2].T)
    # stained matter beyond any cell's reach from chromatin: red cells, platelets (see _own_colour_cell)
    far = (dist_all > params.cytoplasm_max_um + 1.0) & model.stained(od_all)
    f.far = Gaussian.fit(od_all[far]) if far.sum() >= 30 else None
    return model


def _core(f: _FieldWork, sl: tuple[slice, slice], margin: int) -> tuple[slice, slice] | None:
    """The part of window ``sl`` that its steps can see: its candidates' bounding box grown by
    ``margin`` (more than a cell's reach), or None when that leaves the window (the field's edge
    cuts it: a cell may touch the edge there, and only the window as it is gives the same result).

    Nothing beyond a cell's reach from the chromatin matters to any step (holes touching the cut
    are open, as they were, through the glass around it), so the core segments as the window does.
    """
    box = _bbox(f.candidates[sl])
    if box is None:
        return None
    h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
    y0, x0, y1, x1 = box[0].start - margin, box[1].start - margin, box[0].stop + margin, box[1].stop + margin
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        return None
    return (slice(sl[0].start + y0, sl[0].start + y1), slice(sl[1].start + x0, sl[1].start + x1))


# --------------------------------------------------------------------------- steps


def _nucleus_threshold(nuc_od: np.ndarray, params: SegmentParams) -> float:
    """Otsu's threshold of the nucleus stain, clipped to the physical chromatin range."""
    try:
        t = float(_otsu(nuc_od[::2, ::2]))
    except ValueError:  # constant image
        t = params.nucleus_od_max
    return float(min(max(t, params.nucleus_od_min), params.nucleus_od_max))


def _stained_threshold(tot_od: np.ndarray, params: SegmentParams) -> float:
    """Otsu's threshold of the total OD (cells vs glass), clipped to a physical range."""
    try:
        t = float(_otsu(tot_od[::2, ::2]))
    except ValueError:
        t = params.stained_od_min
    return float(min(max(t, params.stained_od_min), params.stained_od_max))


def _hysteresis(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Pixels above ``low`` connected to a pixel above ``high``."""
    lab, n = _label(values > low)
    if n == 0:
        return np.zeros(values.shape, bool)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[values > high])] = True
    keep[0] = False
    return keep[lab]


def _chromatin_mask(candidates: np.ndarray, work_mpp: float, params: SegmentParams) -> np.ndarray:
    """Fill holes in and open the thresholded nucleus stain: the chromatin of candidate nuclei."""
    mask = _fill_holes(candidates)
    selem = _disk(params.open_radius_um / work_mpp)
    if selem is not None:
        mask = ndi.binary_opening(mask, structure=selem)
    return mask


def _candidate_windows(mask: np.ndarray, margin: int) -> list[tuple[slice, slice]]:
    """Bounding boxes of mask components grown by ``margin``, merged until no two overlap."""
    lab, _ = _label(mask)
    h, w = mask.shape
    boxes = [[max(0, sl[0].start - margin), max(0, sl[1].start - margin),
              min(h, sl[0].stop + margin), min(w, sl[1].stop + margin)]
             for sl in ndi.find_objects(lab) if sl is not None]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        out: list[list[int]] = []
        for b in boxes:
            for o in out:
                if b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]:
                    o[0], o[1], o[2], o[3] = min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3])
                    merged = True
                    break
            else:
                out.append(b)
        boxes = out
    boxes.sort()
    return [(slice(b[0], b[2]), slice(b[1], b[3])) for b in boxes]


def _split(shape: np.ndarray, h_px: float, flood: np.ndarray | None = None,
           rects: list[tuple[slice, slice]] | None = None) -> np.ndarray:
    """Split a binary mask into round objects: watershed of its distance transform from h-maxima.

    Markers are the h-maxima of the distance transform of ``shape`` (regional maxima of its
    morphological reconstruction by dilation from ``dist - h``; plateaus, so a flat or twin-peaked
    top gives one marker): two touching round objects keep one marker each, while bumps shallower
    than ``h`` (lobes, notches) do not split. The watershed floods ``flood`` (default ``shape``);
    a component of it without a marker becomes one object.

    ``rects`` (optional) are independent windows packed on one canvas: the domes do not spread
    between them (each window's background is its own) and each is flooded on its own, so the
    watershed's ties between equal values are broken as they would be for the window alone.
    """
    flood = shape if flood is None else flood
    out = np.zeros(flood.shape, np.int32)
    box = _bbox(flood, pad=1)
    if box is None:
        return out
    moat = None
    if rects is not None:
        moat = np.ones(flood.shape, bool)
        for r in rects:
            moat[r] = False
        moat = moat[box]
    # Everything happens inside the flood (and the shape within it): work on its bounding box with
    # a one-pixel frame of background, which gives the same distances, domes and basins as the
    # whole window (the frame keeps the background connected around the objects) at a fraction
    # of the cost of the reconstruction's sort.
    shape, flood = shape[box], flood[box]
    dist = ndi.distance_transform_edt(shape)
    domes = _domes(dist, h_px, moat)
    peaks = local_maxima(domes) & shape
    markers, n = _label(peaks)
    comp, nc = _label(flood)
    orphan = (comp > 0) & ~_lut(comp, nc, comp[markers > 0])[comp]
    if orphan.any():
        markers = np.where(orphan, comp + n, markers)
    if rects is None:
        out[box] = watershed(-dist, markers, mask=flood)
        return out
    view = out[box]
    for r in rects:
        r = (slice(max(r[0].start, box[0].start) - box[0].start, min(r[0].stop, box[0].stop) - box[0].start),
             slice(max(r[1].start, box[1].start) - box[1].start, min(r[1].stop, box[1].stop) - box[1].start))
        if r[0].stop > r[0].start and r[1].stop > r[1].start and flood[r].any():
            view[r] = watershed(-dist[r], markers[r], mask=flood[r])
    return out


def _domes(dist: np.ndarray, h: float, moat: np.ndarray | None = None) -> np.ndarray:
    """Morphological reconstruction by dilation of ``dist - h`` under ``dist`` (3 x 3 neighbourhood).

    The same computation as ``skimage.morphology.reconstruction(dist - h, dist)``: scikit-image's
    own inner loop, but with one stable sort of the pixel values instead of the two quicksorts the
    public function makes (a distance map has long runs of equal values, where NumPy's quicksort is
    slow: ~4x the whole loop). Falls back to the public function if the loop is not importable.
    Pixels of ``moat`` are set below everything (seed and mask), so nothing spreads across them.
    """
    seed = dist - h
    if moat is not None and moat.any():
        seed[moat] = -h - 1.0
        dist = np.where(moat, -h - 1.0, dist)
    if _reconstruction_loop is None:
        return reconstruction(seed, dist, method="dilation")
    shape = dist.shape
    padded = (shape[0] + 2, shape[1] + 2)
    images = np.full((2, *padded), seed.min(), dtype=np.float64)
    images[0, 1:-1, 1:-1] = seed
    images[1, 1:-1, 1:-1] = dist
    images = images.reshape(-1)
    size = images.size
    itype = np.result_type(np.min_scalar_type(-size), np.int32)
    order = np.argsort(images, kind="stable").astype(itype, copy=False)
    ordered = images[order]
    # rank of each pixel's value among the distinct values (what skimage's rank_order computes)
    step = np.empty(size, itype)
    step[0] = 0
    np.not_equal(ordered[1:], ordered[:-1], out=step[1:])
    rank_sorted = np.cumsum(step, dtype=itype)
    values = ordered[np.concatenate(([True], step[1:].astype(bool)))]
    ranks = np.empty(size, itype)
    ranks[order] = rank_sorted
    order = order[::-1]  # dilation goes from the largest value down
    prev = np.full(size, -1, itype)
    nxt = np.full(size, -1, itype)
    prev[order[1:]] = order[:-1]
    nxt[order[:-1]] = order[1:]
    stride = padded[1]
    strides = np.array([-stride - 1, -stride, -stride + 1, -1, 1, stride - 1, stride, stride + 1], itype)
    ranks = ranks.astype(np.dtype(itype.char.upper()), copy=False)
    try:
        _reconstruction_loop(ranks, prev, nxt, strides, order[0], padded[0] * padded[1])
    except (TypeError, ValueError):  # pragma: no cover - a scikit-image whose private loop changed signature
        return reconstruction(seed, dist, method="dilation")
    return values[ranks[: padded[0] * padded[1]]].reshape(padded)[1:-1, 1:-1]


def _pair_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) label pairs (2 x k, sorted) and how often each occurs."""
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    base = int(b.max()) + 1 if b.size else 1
    keys, counts = np.unique(a * base + b, return_counts=True)
    return np.stack([keys // base, keys % base]), counts


def _merge_by_chromatin(regions: np.ndarray, chrom: np.ndarray, work_mpp: float, params: SegmentParams) -> np.ndarray:
    """Undo a shape split that cut a small piece off a nucleus: merge it back into its owner.

    Works on "thick" chromatin, what survives an opening of radius :data:`THICK_CHROMATIN_UM`: a nucleus
    body does, thin strands and chains of granules do not. A region is merged into the region
    holding most of a thick chromatin piece when it holds a minor share (< 35%) of that piece and
    the piece is most of its own chromatin. Two touching cells whose nuclei touch keep one nucleus
    each, so neither share is minor and they stay apart.
    """
    selem = _disk(THICK_CHROMATIN_UM / work_mpp)
    if selem is None:
        return regions
    thick = ndi.binary_opening(chrom, structure=selem)
    comp, n = _label(thick)
    sel = (comp > 0) & (regions > 0)
    if n == 0 or not sel.any():
        return regions
    pairs, counts = _pair_counts(comp[sel], regions[sel])  # sorted by piece, then region
    own = np.bincount(regions[chrom & (regions > 0)], minlength=int(regions.max()) + 1)
    remap = np.arange(int(regions.max()) + 1)
    members: dict[int, list[int]] = {}  # representative -> the labels mapped to it (when more than itself)
    starts = np.flatnonzero(np.r_[True, pairs[0, 1:] != pairs[0, :-1], True])
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a < 2:
            continue
        labs, cnt = pairs[1, a:b], counts[a:b]
        owner = int(labs[np.argmax(cnt)])
        total = cnt.sum()
        for lab, k in zip(labs.tolist(), cnt):
            if lab != owner and k < 0.35 * total and k >= 0.5 * own[lab] and remap[lab] == lab:
                # everything mapped to ``lab`` (a representative) now maps to the owner's representative
                target = int(remap[owner])
                if target == lab:
                    continue
                moved = members.pop(lab, [lab])
                remap[moved] = target
                members.setdefault(target, [target]).extend(moved)
    return remap[regions]


def _split_by_nuclei(regions: np.ndarray, chrom: np.ndarray, fused: np.ndarray, min_px: float,
                     params: SegmentParams | None = None) -> np.ndarray:
    """Split a region that holds two or more separate nuclei (farther apart than the lobe gap).

    The shape split misses touching cells whose outlines show no neck (a small pale cell against a
    big one); their nuclei still mark them: the region is re-flooded from each nucleus. A region as
    round and solid as one cell (``params.single_min_solidity``, ``single_max_eccentricity``) is one
    cell whose nucleus lobes lie far apart (a neutrophil), and stays whole.
    """
    groups, n = _label(fused)
    if n < 2:
        return regions
    sizes = ndi.sum_labels(chrom, groups, np.arange(1, n + 1))
    big = np.zeros(n + 1, bool)
    big[1:] = sizes >= min_px
    sel = (regions > 0) & big[groups]
    if not sel.any():
        return regions
    pairs, _ = _pair_counts(regions[sel], groups[sel])
    labs, counts = np.unique(pairs[0], return_counts=True)
    out = regions.copy()
    next_label = int(regions.max()) + 1
    boxes = ndi.find_objects(regions)
    for lab in labs[counts >= 2]:
        box = boxes[lab - 1]  # everything below happens inside the region
        inside = regions[box] == lab
        if params is not None:
            solidity, eccentricity = _shape_stats(inside)
            if solidity >= params.single_min_solidity and eccentricity <= params.single_max_eccentricity:
                continue
        markers = np.where(inside & big[groups[box]], groups[box], 0)
        dist = ndi.distance_transform_edt(markers == 0)
        split = watershed(dist, markers, mask=inside)
        target = out[box]
        for g in np.unique(split[split > 0]):
            target[split == g] = next_label
            next_label += 1
    return out


def _basin_owners(basins: np.ndarray, chrom_labels: np.ndarray, min_px: float) -> np.ndarray:
    """For each basin id, the cell id holding the most chromatin in it (at least ``min_px``), else 0."""
    nb = int(basins.max())
    owner = np.zeros(nb + 1, np.int32)
    sel = (basins > 0) & (chrom_labels > 0)
    if nb == 0 or not sel.any():
        return owner
    pairs, counts = _pair_counts(basins[sel], chrom_labels[sel])
    best = np.zeros(nb + 1)
    for (b, k), n in zip(pairs.T, counts):
        if n >= min_px and n > best[b]:
            best[b], owner[b] = n, k
    return owner


def _granule_ring(chrom: np.ndarray, regions: np.ndarray, label: int, box: tuple[slice, slice],
                  bounds: tuple[slice, slice], stained: np.ndarray, solid: np.ndarray,
                  work_mpp: float, params: SegmentParams) -> bool:
    """Whether the nucleus of region ``label`` (bounding box ``box``, inside the window ``bounds``)
    is ringed by stained pixels that are not WBC-coloured, right up to the nucleus.

    An eosinophil's granules fill its cytoplasm with eosin-red, so the ring 0.5-2 um outside its
    nucleus is mostly stained and red and the ring within 1 um of it holds little WBC-coloured
    cytoplasm; a small lymphocyte's thin blue rim is followed by glass, or by red cells pressed
    around it (its rim is still there), and red cells touching a cell cover only part of the ring.
    """
    pad = int(math.ceil(2.0 / work_mpp)) + 1
    ring_box = (slice(max(bounds[0].start, box[0].start - pad), min(bounds[0].stop, box[0].stop + pad)),
                slice(max(bounds[1].start, box[1].start - pad), min(bounds[1].stop, box[1].stop + pad)))
    dist = ndi.distance_transform_edt(~(chrom[ring_box] & (regions[ring_box] == label))) * work_mpp
    ring = (dist > 0.5) & (dist <= 2.0)
    if not ring.any():
        return False
    red = stained[ring_box] & ~solid[ring_box]
    if float(red[ring].mean()) < params.granule_ring_min:
        return False
    rim = (dist > 0) & (dist <= 1.0)
    if not rim.any():  # a window too small to hold the rim (the nucleus at its edge)
        return False
    return float(solid[ring_box][rim].mean()) < params.granule_rim_max


def _pack(sizes: list[tuple[int, int]], guard: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Top-left corners of boxes of ``sizes`` (h, w) placed in rows, ``guard`` pixels apart and from
    the edges, and the canvas size (h, w): tallest boxes first, rows about as wide as the canvas is tall."""
    if guard == 0 and len(sizes) == 1:
        return [(0, 0)], sizes[0]
    total = sum((h + guard) * (w + guard) for h, w in sizes)
    row_width = max(max(w for _, w in sizes) + 2 * guard, int(math.sqrt(total)) + guard)
    corners: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    y, x, row_h, width = guard, guard, 0, 0
    for k in sorted(range(len(sizes)), key=lambda k: (-sizes[k][0], k)):
        h, w = sizes[k]
        if x > guard and x + w + guard > row_width:
            y, x, row_h = y + row_h + guard, guard, 0
        corners[k] = (y, x)
        x += w + guard
        row_h = max(row_h, h)
        width = max(width, x)
    return corners, (y + row_h + guard, width)


def _segment_windows(items: list[_Window], work_mpp: float, params: SegmentParams, guard: int) -> None:
    """Segment the cells of candidate windows into their fields' labels (new ids recorded in ``found``).

    The windows' cores (:func:`_core`) are packed on one canvas, ``guard`` pixels apart (0: a single
    window, on its own), and each step runs once over the canvas. Each core holds everything within
    a cell's reach of its chromatin and the steps' results are read per core, so each window gets
    what it would get alone.
    """
    corners, canvas = _pack([(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) for _, sl, _ in items], guard)
    candidates = np.zeros(canvas, bool)
    cyto = np.zeros(canvas, bool)
    tot = np.zeros(canvas, np.float32)
    stained_od = np.full(canvas, np.inf, np.float32)
    rects = []
    for (f, sl, window), (y, x) in zip(items, corners):
        rect = (slice(y, y + sl[0].stop - sl[0].start), slice(x, x + sl[1].stop - sl[1].start))
        rects.append(rect)
        # the window's smoothed OD (smoothed over the whole window: its edges reflect), cut to the core
        inner = (slice(sl[0].start - window[0].start, sl[0].stop - window[0].start),
                 slice(sl[1].start - window[1].start, sl[1].stop - window[1].start))
        od = f.window_od[_window_key(window)][inner]
        candidates[rect] = f.candidates[sl]
        # WBC cytoplasm: stained (beyond the glass noise) and closer to the field's cytoplasm colour
        # than to its glass and other stained matter (red cells, debris)
        score, stained = f.colour.classify(od)
        cyto[rect] = (score > 0) & stained
        tot[rect] = od.sum(axis=-1)
        stained_od[rect] = f.stained_od
    if len(items) == 1:
        owner_of = np.zeros(canvas, np.int32)
    else:
        owner_of = np.full(canvas, -1, np.int32)
        for i, rect in enumerate(rects):
            owner_of[rect] = i

    chrom = _chromatin_mask(candidates, work_mpp, params)
    if not chrom.any():
        return
    dist_nuc = ndi.distance_transform_edt(~chrom) * work_mpp  # um to the nearest chromatin
    fused = dist_nuc <= 0.5 * params.lobe_gap_um  # dilation by half the lobe gap (exact, Euclidean)
    # Cytoplasm reaches out from nuclei, not from a platelet or a speck beside one: chromatin groups
    # (lobes joined) smaller than half the least nucleus lend no reach.
    groups, n_groups = _label(fused)
    group_px = np.bincount(groups[chrom], minlength=n_groups + 1)
    small = group_px < 0.5 * params.nucleus_area_min_um2 / (work_mpp * work_mpp)
    small[0] = False
    if small.any():
        dist_nuc = ndi.distance_transform_edt(~(chrom & ~small[groups])) * work_mpp
    reach = dist_nuc <= params.cytoplasm_max_um
    # The cell mask; the lobes of one nucleus are joined by the dilation so that they flood
    # together, but the split is decided on the cell outline alone.
    shape = _fill_holes((chrom | cyto) & reach)
    flood = shape | fused
    comp, nc = _label(flood)
    keep = _lut(comp, nc, comp[chrom])[comp]
    h_px = params.split_h_um / work_mpp
    regions = _split(shape & keep, h_px, flood & keep, rects=None if len(items) == 1 else rects)
    regions = _merge_by_chromatin(regions, chrom, work_mpp, params)
    if params.lobe_gap_um / work_mpp < 2.0:
        # Too coarse to see a lobe gap (it spans under two pixels): touching nuclei blur together
        # through thin bridges while lobes blur into one mass, so nuclei are the chromatin pieces
        # left by an opening that breaks one-pixel bridges.
        groups = ndi.binary_opening(chrom, structure=_CROSS)
    else:
        groups = fused
    regions = _split_by_nuclei(regions, chrom & groups, groups, params.nucleus_area_min_um2 / (work_mpp * work_mpp), params)

    px_area = work_mpp * work_mpp
    solid = chrom | cyto
    smooth = _disk(params.cell_open_um / work_mpp)
    stained_mask = tot > stained_od
    basins_of: dict[int, np.ndarray] = {}  # per window, only if some cell needs them

    def window_basins(i: int) -> np.ndarray:
        """Over window i's core: the cell owning each stained object (watershed of the stained mask).

        Red cells reach beyond the core, so the stained mask's holes are filled over the whole window.
        """
        f, core, window = items[i]
        rect = rects[i]
        inner = (slice(core[0].start - window[0].start, core[0].stop - window[0].start),
                 slice(core[1].start - window[1].start, core[1].stop - window[1].start))
        t = f.window_od[_window_key(window)].sum(axis=-1)
        mask = t > f.stained_od
        mask[inner] |= chrom[rect]
        stained = _fill_holes(mask)[inner] & reach[rect]
        basins = _split(stained, h_px)
        owner = _basin_owners(basins, np.where(chrom[rect], regions[rect], 0), params.nucleus_area_min_um2 * 0.5 / px_area)
        return owner[basins]
    for label, box in enumerate(ndi.find_objects(regions), start=1):
        if box is None:
            continue
        r0, r1, c0, c1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        i = int(owner_of[r0, c0])
        f, sl, _ = items[i]
        rect = rects[i]
        inside = regions[box] == label
        nuc_area = float((chrom[box] & inside).sum()) * px_area
        if not (params.nucleus_area_min_um2 <= nuc_area <= params.nucleus_area_max_um2):
            continue
        colour_area = float((inside & solid[box]).sum()) * px_area
        grown = False
        if colour_area < params.cytoplasm_min_ratio * nuc_area and _granule_ring(
                chrom, regions, label, box, rect, stained_mask, solid, work_mpp, params):
            # No cytoplasm by colour but a ring of red granules around the nucleus (an eosinophil):
            # take the stained objects (watershed of the stained mask's distance transform) in which
            # this cell holds most of the chromatin.
            if i not in basins_of:
                basins_of[i] = window_basins(i)
            rows, cols = np.nonzero(basins_of[i] == label)
            if rows.size:
                grown = True
                r0, c0 = min(r0, rect[0].start + int(rows.min())), min(c0, rect[1].start + int(cols.min()))
                r1, c1 = max(r1, rect[0].start + int(rows.max()) + 1), max(c1, rect[1].start + int(cols.max()) + 1)
        inside = regions[r0:r1, c0:c1] == label
        nuc_mask = chrom[r0:r1, c0:c1] & inside
        cell = inside & solid[r0:r1, c0:c1]
        mine = None
        if grown:
            mine = basins_of[i][r0 - rect[0].start:r1 - rect[0].start, c0 - rect[1].start:c1 - rect[1].start] == label
            mine &= inside | (regions[r0:r1, c0:c1] == 0)
        cell_mask = _cell_mask(cell | mine if grown else cell, nuc_mask, smooth)
        cell_area = float(cell_mask.sum()) * px_area
        if not grown and cell_area < params.cell_area_min_um2:
            # Too small to be a WBC by the field's colour (little more than its nucleus): the field's
            # cytoplasm colour may be another WBC's (a lilac neutrophil beside a blue monocyte, an
            # eosinophil beside a neutrophil), so this cell's own colour is tried. Accepted cells keep
            # the field's mask (their outlines are re-estimated per cell in :mod:`.finalise`).
            own = _own_colour_cell(items[i], rect, regions, chrom, label, box, work_mpp, params)
            if own is not None:
                (r0, r1, c0, c1), cell = own
                nuc_mask = chrom[r0:r1, c0:c1] & (regions[r0:r1, c0:c1] == label)
                cell_mask = _cell_mask(cell, nuc_mask, smooth)
                cell_area = float(cell_mask.sum()) * px_area
        if not (params.cell_area_min_um2 <= cell_area <= params.cell_area_max_um2):
            continue
        h, w = f.labels.shape
        gr0, gc0 = sl[0].start + r0 - rect[0].start, sl[1].start + c0 - rect[1].start
        gr1, gc1 = gr0 + (r1 - r0), gc0 + (c1 - c0)
        border = gr0 == 0 or gc0 == 0 or gr1 >= h or gc1 >= w
        solidity, eccentricity = _shape_stats(cell_mask)
        # Shape limits apply to outlines found by colour; a cell grown from its stained object
        # has the uncertain outline of whatever touches it, and a cut cell is not round.
        if not border and not grown and (solidity < params.min_solidity or eccentricity > params.max_eccentricity):
            continue
        target = f.labels[gr0:gr1, gc0:gc1]
        free = cell_mask & (target == 0)  # a filled hole may hold an earlier cell: never overwrite it
        nuc_mask &= free
        if not nuc_mask.any():
            continue
        cell_id = len(f.found) + 1
        target[free] = cell_id
        f.nuclei[gr0:gr1, gc0:gc1][nuc_mask] = cell_id
        f.found[cell_id] = _Found(n_lobes=int(_label(nuc_mask)[1]), solidity=solidity, eccentricity=eccentricity)


#: Least share of the ring 0.4-2 um around a nucleus that must be stained for its own cytoplasm colour to be fitted.
_OWN_RING_MIN = 0.5


def _own_colour_cell(item: _Window, rect: tuple[slice, slice], regions: np.ndarray, chrom: np.ndarray, label: int,
                     box: tuple[slice, slice], work_mpp: float, params: SegmentParams
                     ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Region ``label``'s cell by its own cytoplasm colour, when the field's model gives it none.

    One field holds one cytoplasm colour; a second WBC of another kind next to the first has its
    cytoplasm scored as "other stained matter". Its own colour is the stained pixels 0.4-2 um
    from its nucleus (the field model's prior: there, stained pixels are cytoplasm), taken only
    when that ring is mostly stained and its colour is not that of the field's stained matter
    beyond every cell's reach (red cells pressed around a bare-rimmed nucleus are; a field without
    such matter uses its model's other matter instead). Returns ((r0, r1, c0, c1) on the canvas,
    the cell's pixels there: its chromatin and its own-coloured pixels within ``cytoplasm_max_um``,
    outside other regions), or None.
    """
    f, core, window = item
    model = f.colour
    if model is None or model.cytoplasm is None:
        return None
    pad = int(math.ceil(params.cytoplasm_max_um / work_mpp)) + 1
    r0, r1 = max(rect[0].start, box[0].start - pad), min(rect[0].stop, box[0].stop + pad)
    c0, c1 = max(rect[1].start, box[1].start - pad), min(rect[1].stop, box[1].stop + pad)
    oy = core[0].start - window[0].start - rect[0].start
    ox = core[1].start - window[1].start - rect[1].start
    od = f.window_od[_window_key(window)][r0 + oy:r1 + oy, c0 + ox:c1 + ox]
    reg = regions[r0:r1, c0:c1]
    mine = chrom[r0:r1, c0:c1] & (reg == label)
    free = ((reg == 0) | (reg == label)) & ~(chrom[r0:r1, c0:c1] & ~mine)
    dist = ndi.distance_transform_edt(~mine) * work_mpp
    stained = model.stained(od)
    ring = free & (dist > 0.4) & (dist <= 2.0)
    if ring.sum() < 30 or float(stained[ring].mean()) < _OWN_RING_MIN:
        return None
    own = Gaussian.fit(od[ring & stained])
    red = f.far if f.far is not None else model.other
    if red is not None and separation(own, red) < 1.0:
        return None
    score, _ = ColourModel(glass=model.glass, cytoplasm=own, other=model.other,
                           glass_weight=model.glass_weight).classify(od)
    cell = mine | ((score > 0) & stained & free & (dist <= params.cytoplasm_max_um))
    return (r0, r1, c0, c1), cell


def _cell_mask(cell: np.ndarray, nuc_mask: np.ndarray, smooth: np.ndarray | None) -> np.ndarray:
    """A cell's working-resolution mask: holes filled, thin cytoplasm-coloured spurs along red-cell
    rims cut by an opening (``smooth``), only the parts holding its chromatin."""
    cell_mask = _fill_holes(cell)
    if smooth is not None:
        pad = smooth.shape[0]
        framed = np.zeros((cell_mask.shape[0] + 2 * pad, cell_mask.shape[1] + 2 * pad), bool)
        framed[pad:-pad, pad:-pad] = cell_mask
        cell_mask = ndi.binary_opening(framed, structure=smooth)[pad:-pad, pad:-pad] | nuc_mask
    lab, n = _label(cell_mask)
    if n > 1:
        cell_mask = _lut(lab, n, lab[nuc_mask])[lab]
    return cell_mask
