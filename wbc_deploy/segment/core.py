"""WBC segmentation: colour deconvolution, nucleus markers, watershed (Chen et al. 2022, physical units).

Steps, all at a working resolution of at most ``params.work_mpp`` um/px:

1. colour deconvolution (:mod:`.stain`) into nucleus-stain, eosin and total optical densities;
2. a cheap gate: fields whose nucleus stain never reaches ``nucleus_core_od`` return at once;
3. binarisation of the nucleus stain (Otsu clipped to a physical range, with hysteresis), hole
   filling and a morphological opening give the chromatin mask;
4. per window around each candidate group only: dilation by half the lobe gap (lobes of one
   nucleus fuse), distance transform, h-maxima by morphological reconstruction (one marker per
   nucleus, so touching cells keep one marker each), watershed of the distance transform
   to split fused nuclei;
5. the watershed of the eosin-density gradient, plus a distance term so touching WBCs split
   on their midline, from the nucleus markers against red-cell markers, delimits each cell
   (nucleus + cytoplasm) within ``cytoplasm_max_um`` of its nucleus;
6. candidates are kept by physical nucleus and cell area and by cell shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import sobel, threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import disk, local_maxima, reconstruction
from skimage.segmentation import watershed

from .params import SegmentParams
from .stain import as_rgb_uint8, densities, estimate_background


@dataclass(frozen=True)
class Cell:
    """One segmented WBC. Coordinates are pixels of the input image; ``bbox`` is half-open."""

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


def segment_wbcs(rgb: np.ndarray, mpp: float, params: SegmentParams | None = None) -> Segmentation:
    """Find and delimit every white blood cell of an RGB field at ``mpp`` micrometres per pixel.

    ``rgb`` is H x W x 3 (uint8, or float in 0..1). Returns whole-cell and nucleus instance labels
    (int32, ids 1..n in raster order of the cell centroids) and a :class:`Cell` per id.
    """
    params = params or SegmentParams()
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of micrometres per pixel, got {mpp!r}")
    rgb = as_rgb_uint8(rgb)
    height, width = rgb.shape[:2]
    bg = np.asarray(params.background_rgb if params.background_rgb is not None else estimate_background(rgb), dtype=np.float64)
    empty = Segmentation(
        labels=np.zeros((height, width), np.int32), nuclei=np.zeros((height, width), np.int32),
        mpp=float(mpp), threshold=params.nucleus_od_max, background=tuple(float(v) for v in bg),
    )
    if height == 0 or width == 0:
        return empty

    factor = max(1, int(math.floor(params.work_mpp / mpp + 1e-6)))
    work_mpp = mpp * factor
    if factor > 1:
        small = _block_mean_rgb(rgb, factor)
        nuc_od, eos_od, tot_od = densities(small, bg, params)
    else:
        nuc_od, eos_od, tot_od = densities(rgb, bg, params)

    # Cheap gate: no chromatin-dark pixel at all -> no WBC.
    if float(nuc_od.max()) < params.nucleus_core_od:
        return empty
    threshold = _nucleus_threshold(nuc_od, params)
    empty.threshold = threshold
    chromatin = _chromatin_mask(nuc_od, threshold, work_mpp, params)
    if not chromatin.any():
        return empty

    work_labels = np.zeros(nuc_od.shape, np.int32)
    work_nuclei = np.zeros(nuc_od.shape, np.int32)
    next_id = 1
    margin = int(math.ceil((params.cytoplasm_max_um + params.lobe_gap_um) / work_mpp)) + 3
    stained_od = _stained_threshold(tot_od, params)
    for sl in _candidate_windows(chromatin, margin):
        next_id = _segment_window(
            sl, chromatin, nuc_od, eos_od, tot_od, stained_od, work_mpp, params, work_labels, work_nuclei, next_id,
        )
    if next_id == 1:
        return empty
    return _finalise(work_labels, work_nuclei, nuc_od, rgb, bg, factor, mpp, threshold, params, empty)


# --------------------------------------------------------------------------- steps


def _block_mean_rgb(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (edges replicated up to a whole block), rounded to uint8."""
    h, w = rgb.shape[:2]
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hh, ww = rgb.shape[0] // factor, rgb.shape[1] // factor
    blocks = rgb.reshape(hh, factor, ww, factor, 3).astype(np.uint32).sum(axis=(1, 3))
    n = factor * factor
    return ((blocks + n // 2) // n).astype(np.uint8)


def _nucleus_threshold(nuc_od: np.ndarray, params: SegmentParams) -> float:
    """Otsu's threshold of the nucleus stain, clipped to the physical chromatin range."""
    sample = nuc_od[::2, ::2]
    try:
        t = float(threshold_otsu(sample))
    except ValueError:  # constant image
        t = params.nucleus_od_max
    return float(min(max(t, params.nucleus_od_min), params.nucleus_od_max))


def _stained_threshold(tot_od: np.ndarray, params: SegmentParams) -> float:
    """Otsu's threshold of the total OD (cells vs glass), clipped to a physical range."""
    try:
        t = float(threshold_otsu(tot_od[::2, ::2]))
    except ValueError:
        t = params.stained_od_min
    return float(min(max(t, params.stained_od_min), params.stained_od_max))


def _disk(radius_px: float) -> np.ndarray | None:
    r = int(round(radius_px))
    return disk(r).astype(bool) if r >= 1 else None


def _chromatin_mask(nuc_od: np.ndarray, threshold: float, work_mpp: float, params: SegmentParams) -> np.ndarray:
    """Binarise (hysteresis), fill holes, open: the chromatin of every candidate nucleus."""
    low = nuc_od > threshold
    high = nuc_od > max(threshold, params.nucleus_core_od)
    lab, n = ndi.label(low)
    if n == 0:
        return low
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[high])] = True
    keep[0] = False
    mask = keep[lab]
    mask = ndi.binary_fill_holes(mask)
    selem = _disk(params.open_radius_um / work_mpp)
    if selem is not None:
        mask = ndi.binary_opening(mask, structure=selem)
    return mask


def _candidate_windows(mask: np.ndarray, margin: int) -> list[tuple[slice, slice]]:
    """Bounding boxes of mask components grown by ``margin``, merged until no two overlap."""
    lab, n = ndi.label(mask)
    h, w = mask.shape
    boxes = []
    for sl in ndi.find_objects(lab):
        if sl is None:
            continue
        boxes.append([max(0, sl[0].start - margin), max(0, sl[1].start - margin),
                      min(h, sl[0].stop + margin), min(w, sl[1].stop + margin)])
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


def _split(shape: np.ndarray, h_px: float, flood: np.ndarray | None = None) -> np.ndarray:
    """Split a binary mask into round objects: watershed of its distance transform from h-maxima.

    Markers are the h-maxima of the distance transform of ``shape`` (regional maxima of its
    morphological reconstruction by dilation from ``dist - h``; plateaus, so a flat or twin-peaked
    top gives one marker): two touching round objects keep one marker each, while bumps shallower
    than ``h`` (lobes, notches) do not split. The watershed floods ``flood`` (default ``shape``);
    a component of it without a marker becomes one object.
    """
    flood = shape if flood is None else flood
    dist = ndi.distance_transform_edt(shape)
    domes = reconstruction(dist - h_px, dist, method="dilation")
    peaks = local_maxima(domes) & shape
    markers, n = ndi.label(peaks)
    comp, _ = ndi.label(flood)
    orphan = (comp > 0) & ~np.isin(comp, np.unique(comp[markers > 0]))
    if orphan.any():
        markers = np.where(orphan, comp + n, markers)
    return watershed(-dist, markers, mask=flood)


def _merge_by_chromatin(regions: np.ndarray, chrom: np.ndarray, work_mpp: float, params: SegmentParams) -> np.ndarray:
    """Undo a shape split that cut a small piece off a nucleus: merge it back into its owner.

    Works on "thick" chromatin, what survives an opening of radius ``lobe_gap_um / 3``: a nucleus
    body does, thin strands and chains of granules do not. A region is merged into the region
    holding most of a thick chromatin piece when it holds a minor share (< 35%) of that piece and
    the piece is most of its own chromatin. Two touching cells whose nuclei touch keep one nucleus
    each, so neither share is minor and they stay apart.
    """
    selem = _disk(params.lobe_gap_um / 3.0 / work_mpp)
    if selem is None:
        return regions
    thick = ndi.binary_opening(chrom, structure=selem)
    comp, n = ndi.label(thick)
    sel = (comp > 0) & (regions > 0)
    if n == 0 or not sel.any():
        return regions
    pairs, counts = np.unique(np.stack([comp[sel], regions[sel]]), axis=1, return_counts=True)
    own = np.bincount(regions[chrom & (regions > 0)], minlength=int(regions.max()) + 1)
    remap = np.arange(int(regions.max()) + 1)
    for c in np.unique(pairs[0]):
        idx = pairs[0] == c
        if idx.sum() < 2:
            continue
        labs, cnt = pairs[1, idx], counts[idx]
        owner = labs[np.argmax(cnt)]
        total = cnt.sum()
        for lab, k in zip(labs, cnt):
            if lab != owner and k < 0.35 * total and k >= 0.5 * own[lab]:
                remap[remap == lab] = remap[owner]
    return remap[regions]


def _split_by_nuclei(regions: np.ndarray, chrom: np.ndarray, fused: np.ndarray, min_px: float) -> np.ndarray:
    """Split a region that holds two or more separate nuclei (farther apart than the lobe gap).

    The shape split misses touching cells whose outlines show no neck (a small pale cell against a
    big one); their nuclei still mark them: the region is re-flooded from each nucleus.
    """
    groups, n = ndi.label(fused)
    if n < 2:
        return regions
    sizes = ndi.sum_labels(chrom, groups, np.arange(1, n + 1))
    big = np.zeros(n + 1, bool)
    big[1:] = sizes >= min_px
    sel = (regions > 0) & (groups > 0) & big[groups]
    pairs = np.unique(np.stack([regions[sel], groups[sel]]), axis=1)
    labs, counts = np.unique(pairs[0], return_counts=True)
    out = regions.copy()
    next_label = int(regions.max()) + 1
    for lab in labs[counts >= 2]:
        inside = regions == lab
        markers = np.where(inside & big[groups] & (groups > 0), groups, 0)
        dist = ndi.distance_transform_edt(~(markers > 0))
        split = watershed(dist, markers, mask=inside)
        for g in np.unique(split[split > 0]):
            out[split == g] = next_label
            next_label += 1
    return out


def _basin_owners(basins: np.ndarray, chrom_labels: np.ndarray, min_px: float) -> np.ndarray:
    """For each basin id, the cell id holding the most chromatin in it (at least ``min_px``), else 0."""
    nb = int(basins.max())
    owner = np.zeros(nb + 1, np.int32)
    sel = (basins > 0) & (chrom_labels > 0)
    if nb == 0 or not sel.any():
        return owner
    pairs, counts = np.unique(np.stack([basins[sel], chrom_labels[sel]]), axis=1, return_counts=True)
    best = np.zeros(nb + 1)
    for (b, k), n in zip(pairs.T, counts):
        if n >= min_px and n > best[b]:
            best[b], owner[b] = n, k
    return owner


def _segment_window(sl, chromatin, nuc_od, eos_od, tot_od, stained_od, work_mpp, params, out_labels, out_nuclei,
                    next_id) -> int:
    """Segment the cells of one window into ``out_labels``/``out_nuclei``; returns the next free id."""
    chrom = chromatin[sl]
    sigma = 0.3 / work_mpp
    if sigma >= 0.5:
        nuc, eos, tot = (ndi.gaussian_filter(a[sl], sigma) for a in (nuc_od, eos_od, tot_od))
    else:
        nuc, eos, tot = nuc_od[sl], eos_od[sl], tot_od[sl]
    # WBC cytoplasm is stained and bluish-lilac: a large share of its stain is the nucleus stain,
    # whereas red cells (and glass noise) are almost pure eosin.
    share = nuc / np.maximum(np.abs(nuc) + np.abs(eos), 1e-3)
    cyto = (tot > params.cell_od_min) & (share > params.cytoplasm_min_share)
    dist_nuc = ndi.distance_transform_edt(~chrom) * work_mpp  # um to the nearest chromatin
    reach = dist_nuc <= params.cytoplasm_max_um
    selem = _disk(0.5 * params.lobe_gap_um / work_mpp)
    fused = ndi.binary_dilation(chrom, structure=selem) if selem is not None else chrom
    # The cell mask (chromatin + cytoplasm by colour); the lobes of one nucleus are joined by the
    # dilation so they flood together, but the split is decided on the cell outline alone.
    shape = ndi.binary_fill_holes((chrom | cyto) & reach)
    flood = shape | fused
    comp, _ = ndi.label(flood)
    keep = np.isin(comp, np.unique(comp[chrom]))
    # Touching cells: one marker per maximum of the cell mask's distance transform, watershed of it.
    regions = _split(shape & keep, params.split_h_um / work_mpp, flood & keep)
    regions = _merge_by_chromatin(regions, chrom, work_mpp, params)
    regions = _split_by_nuclei(regions, chrom, fused, params.nucleus_area_min_um2 / (work_mpp * work_mpp))

    px_area = work_mpp * work_mpp
    h, w = out_labels.shape
    solid = chrom | cyto
    # Cytoplasm whose colour is no help (eosinophil granules are as red as red cells): split the
    # stained mask into round objects (watershed of its distance transform) and give each cell the
    # objects in which it holds most of the chromatin.
    stained = ndi.binary_fill_holes((tot > stained_od) | chrom) & reach
    basins = _split(stained, params.split_h_um / work_mpp)
    owner = _basin_owners(basins, np.where(chrom, regions, 0), params.nucleus_area_min_um2 * 0.5 / px_area)
    by_basin = owner[basins]
    smooth = _disk(params.cell_open_um / work_mpp)
    for region in regionprops(regions):
        r0, c0, r1, c1 = region.bbox
        inside = region.image
        nuc_mask = chrom[r0:r1, c0:c1] & inside
        nuc_area = float(nuc_mask.sum()) * px_area
        if not (params.nucleus_area_min_um2 <= nuc_area <= params.nucleus_area_max_um2):
            continue
        colour_area = float((inside & solid[r0:r1, c0:c1]).sum()) * px_area
        mine = by_basin == region.label
        if colour_area >= params.cytoplasm_min_ratio * nuc_area:
            mine = np.zeros_like(mine)  # the cytoplasm was found by colour: trust it
        if mine.any():
            rows, cols = np.nonzero(mine)
            r0, c0 = min(r0, rows.min()), min(c0, cols.min())
            r1, c1 = max(r1, rows.max() + 1), max(c1, cols.max() + 1)
        inside = regions[r0:r1, c0:c1] == region.label
        nuc_mask = chrom[r0:r1, c0:c1] & inside
        others = (regions[r0:r1, c0:c1] > 0) & ~inside
        grown = (inside & solid[r0:r1, c0:c1]) | (mine[r0:r1, c0:c1] & ~others)
        cell_mask = ndi.binary_fill_holes(grown)
        if smooth is not None:  # cut thin cytoplasm-coloured spurs along red-cell rims
            cell_mask = ndi.binary_opening(np.pad(cell_mask, smooth.shape[0]), structure=smooth)
            cell_mask = cell_mask[smooth.shape[0]:-smooth.shape[0], smooth.shape[0]:-smooth.shape[0]] | nuc_mask
        lab, n = ndi.label(cell_mask)
        if n > 1:  # keep the parts that hold chromatin, drop stray cytoplasm-coloured bits
            cell_mask = np.isin(lab, np.unique(lab[nuc_mask]))
        cell_area = float(cell_mask.sum()) * px_area
        if not (params.cell_area_min_um2 <= cell_area <= params.cell_area_max_um2):
            continue
        gr0, gc0 = sl[0].start + r0, sl[1].start + c0
        gr1, gc1 = gr0 + (r1 - r0), gc0 + (c1 - c0)
        border = gr0 == 0 or gc0 == 0 or gr1 >= h or gc1 >= w
        # Shape limits apply to outlines found by colour; a cell grown from its stained object
        # (cytoplasm invisible by colour) has the uncertain outline of whatever touches it.
        if not border and not mine.any():
            props = regionprops(cell_mask.astype(np.uint8))[0]
            if props.solidity < params.min_solidity or props.eccentricity > params.max_eccentricity:
                continue
        target = out_labels[gr0:gr1, gc0:gc1]
        free = cell_mask & (target == 0)
        nuc_mask &= free
        target[free] = next_id
        out_nuclei[gr0:gr1, gc0:gc1][nuc_mask] = next_id
        next_id += 1
    return next_id


def _finalise(work_labels, work_nuclei, nuc_od_work, rgb, bg, factor, mpp, threshold, params, empty) -> Segmentation:
    """Bring labels to the input resolution, renumber in raster order of centroids, measure cells."""
    height, width = rgb.shape[:2]
    if factor > 1:
        rows = np.minimum(np.arange(height) // factor, work_labels.shape[0] - 1)
        cols = np.minimum(np.arange(width) // factor, work_labels.shape[1] - 1)
        labels = work_labels[rows[:, None], cols[None, :]]
        coarse_nuc = work_nuclei[rows[:, None], cols[None, :]]
        # Crisp nucleus outline at full resolution, inside the (blocky) working-resolution nucleus.
        nuc_full = densities(rgb, bg, params)[0]
        nuclei = np.where(nuc_full > threshold, coarse_nuc, 0).astype(np.int32)
    else:
        labels, nuclei, nuc_full = work_labels, work_nuclei, nuc_od_work

    n = int(labels.max())
    ids = np.arange(1, n + 1)
    ones = np.ones(labels.shape, np.float64)
    count = ndi.sum_labels(ones, labels, ids)
    present = count > 0
    cy, cx = (np.asarray(c) for c in zip(*ndi.center_of_mass(ones, labels, ids))) if n else ([], [])
    # Renumber by centroid (row, then column) so ids are deterministic and readable.
    order = [i for i in np.lexsort((cx, cy)) if present[i]]
    remap = np.zeros(n + 1, np.int32)
    for new, old in enumerate(order, start=1):
        remap[old + 1] = new
    labels = remap[labels]
    nuclei = remap[nuclei]
    px_area = mpp * mpp
    objects = ndi.find_objects(labels)
    nuc_count = ndi.sum_labels(np.ones(labels.shape, np.float64), nuclei, np.arange(1, len(order) + 1))
    nuc_mean_od = ndi.mean(nuc_full, nuclei, np.arange(1, len(order) + 1)) if order else []
    cells: list[Cell] = []
    for new, old in enumerate(order, start=1):
        sl = objects[new - 1]
        region = labels[sl] == new
        lobes = ndi.label(nuclei[sl] == new)[1]
        props = regionprops(region.astype(np.uint8))[0]
        y0, x0, y1, x1 = sl[0].start, sl[1].start, sl[0].stop, sl[1].stop
        cells.append(Cell(
            cell_id=new, x=float(cx[old]), y=float(cy[old]), bbox=(int(x0), int(y0), int(x1), int(y1)),
            area_um2=float(count[old]) * px_area, nucleus_area_um2=float(nuc_count[new - 1]) * px_area,
            n_lobes=int(lobes), solidity=float(props.solidity), eccentricity=float(props.eccentricity),
            nucleus_od=float(nuc_mean_od[new - 1]) if nuc_count[new - 1] else 0.0,
            touches_border=bool(x0 == 0 or y0 == 0 or x1 >= labels.shape[1] or y1 >= labels.shape[0]),
        ))
    return Segmentation(labels=labels.astype(np.int32), nuclei=nuclei.astype(np.int32), cells=cells,
                        mpp=float(mpp), threshold=float(threshold), background=empty.background)
