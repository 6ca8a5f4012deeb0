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
7. candidates are kept by physical nucleus and cell area and by cell shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import disk, local_maxima, reconstruction
from skimage.segmentation import watershed

from .params import SegmentParams
from .stain import as_rgb_uint8, densities, estimate_background


@dataclass(frozen=True)
class Cell:
    """One segmented WBC. Coordinates are pixels of the input image, where pixel (i, j) spans
    [i, i+1) x [j, j+1) (so a centroid is continuous); ``bbox`` is half-open.

    ``solidity`` and ``eccentricity`` describe the whole-cell outline and ``n_lobes`` counts the
    nucleus pieces, all measured at the working resolution. ``touches_border``: the cell is cut by
    the image edge (its area is then partial).
    """

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
    params = params or SegmentParams()
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"mpp must be a positive number of micrometres per pixel, got {mpp!r}")
    rgb = as_rgb_uint8(rgb)
    height, width = rgb.shape[:2]
    bg = np.asarray(params.background_rgb if params.background_rgb is not None else estimate_background(rgb),
                    dtype=np.float64)
    result = Segmentation(
        labels=np.zeros((height, width), np.int32), nuclei=np.zeros((height, width), np.int32),
        mpp=float(mpp), threshold=params.nucleus_od_max, background=(float(bg[0]), float(bg[1]), float(bg[2])),
    )
    if height == 0 or width == 0:
        return result

    factor = max(1, int(math.floor(params.work_mpp / mpp + 1e-6)))
    work_mpp = mpp * factor
    work_rgb = _block_mean_rgb(rgb, factor) if factor > 1 else rgb
    nuc_od, eos_od, tot_od = densities(work_rgb, bg, params)

    # Cheap gate: no chromatin-dark pixel at all -> no WBC.
    if float(nuc_od.max()) < params.nucleus_core_od:
        return result
    threshold = _nucleus_threshold(nuc_od, params)
    result.threshold = threshold
    chromatin = _chromatin_mask(nuc_od, threshold, work_mpp, params)
    if not chromatin.any():
        return result

    work_labels = np.zeros(nuc_od.shape, np.int32)
    work_nuclei = np.zeros(nuc_od.shape, np.int32)
    found: dict[int, _Found] = {}
    margin = int(math.ceil((params.cytoplasm_max_um + params.lobe_gap_um) / work_mpp)) + 3
    stained_od = _stained_threshold(tot_od, params)
    for sl in _candidate_windows(chromatin, margin):
        _segment_window(sl, chromatin, nuc_od, eos_od, tot_od, stained_od, work_mpp, params,
                        work_labels, work_nuclei, found)
    if not found:
        return result
    return _finalise(work_labels, work_nuclei, found, rgb, bg, factor, params, result)


# --------------------------------------------------------------------------- steps


def _block_mean_rgb(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (Pillow's box reduction; partial edge blocks too)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor), dtype=np.uint8)


def _nucleus_threshold(nuc_od: np.ndarray, params: SegmentParams) -> float:
    """Otsu's threshold of the nucleus stain, clipped to the physical chromatin range."""
    try:
        t = float(threshold_otsu(nuc_od[::2, ::2]))
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
    """Binarise (hysteresis: above ``threshold``, connected to a core above ``nucleus_core_od``),
    fill holes, open: the chromatin of every candidate nucleus."""
    low = nuc_od > threshold
    lab, n = ndi.label(low)
    if n == 0:
        return low
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[nuc_od > max(threshold, params.nucleus_core_od)])] = True
    keep[0] = False
    mask = ndi.binary_fill_holes(keep[lab])
    selem = _disk(params.open_radius_um / work_mpp)
    if selem is not None:
        mask = ndi.binary_opening(mask, structure=selem)
    return mask


def _candidate_windows(mask: np.ndarray, margin: int) -> list[tuple[slice, slice]]:
    """Bounding boxes of mask components grown by ``margin``, merged until no two overlap."""
    lab, _ = ndi.label(mask)
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
    sel = (regions > 0) & big[groups]
    if not sel.any():
        return regions
    pairs = np.unique(np.stack([regions[sel], groups[sel]]), axis=1)
    labs, counts = np.unique(pairs[0], return_counts=True)
    out = regions.copy()
    next_label = int(regions.max()) + 1
    for lab in labs[counts >= 2]:
        inside = regions == lab
        markers = np.where(inside & big[groups], groups, 0)
        dist = ndi.distance_transform_edt(markers == 0)
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


def _segment_window(sl, chromatin, nuc_od, eos_od, tot_od, stained_od, work_mpp, params,
                    out_labels, out_nuclei, found: dict[int, _Found]) -> None:
    """Segment the cells of one window into ``out_labels``/``out_nuclei`` (new ids recorded in ``found``)."""
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
    fused = dist_nuc <= 0.5 * params.lobe_gap_um  # dilation by half the lobe gap (exact, Euclidean)
    # The cell mask; the lobes of one nucleus are joined by the dilation so that they flood
    # together, but the split is decided on the cell outline alone.
    shape = ndi.binary_fill_holes((chrom | cyto) & reach)
    flood = shape | fused
    comp, _ = ndi.label(flood)
    keep = np.isin(comp, np.unique(comp[chrom]))
    h_px = params.split_h_um / work_mpp
    regions = _split(shape & keep, h_px, flood & keep)
    regions = _merge_by_chromatin(regions, chrom, work_mpp, params)
    regions = _split_by_nuclei(regions, chrom, fused, params.nucleus_area_min_um2 / (work_mpp * work_mpp))

    px_area = work_mpp * work_mpp
    h, w = out_labels.shape
    solid = chrom | cyto
    smooth = _disk(params.cell_open_um / work_mpp)
    by_basin: np.ndarray | None = None  # computed once, only if some cell needs it
    for region in regionprops(regions):
        r0, c0, r1, c1 = region.bbox
        inside = region.image
        nuc_area = float((chrom[r0:r1, c0:c1] & inside).sum()) * px_area
        if not (params.nucleus_area_min_um2 <= nuc_area <= params.nucleus_area_max_um2):
            continue
        colour_area = float((inside & solid[r0:r1, c0:c1]).sum()) * px_area
        grown = False
        if colour_area < params.cytoplasm_min_ratio * nuc_area:
            # No cytoplasm by colour: take the stained objects (watershed of the stained mask's
            # distance transform) in which this cell holds most of the chromatin.
            if by_basin is None:
                stained = ndi.binary_fill_holes((tot > stained_od) | chrom) & reach
                basins = _split(stained, h_px)
                owner = _basin_owners(basins, np.where(chrom, regions, 0), params.nucleus_area_min_um2 * 0.5 / px_area)
                by_basin = owner[basins]
            mine = by_basin == region.label
            if mine.any():
                grown = True
                rows, cols = np.nonzero(mine)
                r0, c0 = min(r0, int(rows.min())), min(c0, int(cols.min()))
                r1, c1 = max(r1, int(rows.max()) + 1), max(c1, int(cols.max()) + 1)
        inside = regions[r0:r1, c0:c1] == region.label
        nuc_mask = chrom[r0:r1, c0:c1] & inside
        cell = inside & solid[r0:r1, c0:c1]
        if grown:
            cell |= (by_basin[r0:r1, c0:c1] == region.label) & (inside | (regions[r0:r1, c0:c1] == 0))
        cell_mask = ndi.binary_fill_holes(cell)
        if smooth is not None:  # cut thin cytoplasm-coloured spurs along red-cell rims
            pad = smooth.shape[0]
            cell_mask = ndi.binary_opening(np.pad(cell_mask, pad), structure=smooth)[pad:-pad, pad:-pad] | nuc_mask
        lab, n = ndi.label(cell_mask)
        if n > 1:  # keep the parts that hold chromatin, drop stray cytoplasm-coloured bits
            cell_mask = np.isin(lab, np.unique(lab[nuc_mask]))
        cell_area = float(cell_mask.sum()) * px_area
        if not (params.cell_area_min_um2 <= cell_area <= params.cell_area_max_um2):
            continue
        gr0, gc0 = sl[0].start + r0, sl[1].start + c0
        gr1, gc1 = gr0 + (r1 - r0), gc0 + (c1 - c0)
        border = gr0 == 0 or gc0 == 0 or gr1 >= h or gc1 >= w
        props = regionprops(cell_mask.astype(np.uint8))[0]
        # Shape limits apply to outlines found by colour; a cell grown from its stained object
        # has the uncertain outline of whatever touches it, and a cut cell is not round.
        if not border and not grown and (props.solidity < params.min_solidity
                                         or props.eccentricity > params.max_eccentricity):
            continue
        target = out_labels[gr0:gr1, gc0:gc1]
        free = cell_mask & (target == 0)  # a filled hole may hold an earlier cell: never overwrite it
        nuc_mask &= free
        if not nuc_mask.any():
            continue
        cell_id = len(found) + 1
        target[free] = cell_id
        out_nuclei[gr0:gr1, gc0:gc1][nuc_mask] = cell_id
        found[cell_id] = _Found(n_lobes=int(ndi.label(nuc_mask)[1]), solidity=float(props.solidity),
                                eccentricity=float(props.eccentricity))


def _finalise(work_labels, work_nuclei, found: dict[int, _Found], rgb, bg, factor, params,
              result: Segmentation) -> Segmentation:
    """Bring labels to the input resolution, renumber by centroid, measure each cell."""
    height, width = rgb.shape[:2]
    mpp = result.mpp
    if factor > 1:
        rows = np.minimum(np.arange(height) // factor, work_labels.shape[0] - 1)
        cols = np.minimum(np.arange(width) // factor, work_labels.shape[1] - 1)
        labels = work_labels[rows[:, None], cols[None, :]]
        coarse_nuclei = work_nuclei[rows[:, None], cols[None, :]]
    else:
        labels, coarse_nuclei = work_labels, work_nuclei
    n = len(found)
    flat = labels.ravel()
    count = np.bincount(flat, minlength=n + 1).astype(np.float64)
    yy, xx = np.divmod(np.arange(flat.size, dtype=np.int64), width)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, weights=yy, minlength=n + 1) / count + 0.5  # pixel (i, j) spans [i, i+1)
        cx = np.bincount(flat, weights=xx, minlength=n + 1) / count + 0.5
    old_ids = [i for i in range(1, n + 1) if count[i] > 0]
    old_ids.sort(key=lambda i: (round(cy[i], 6), round(cx[i], 6), i))
    remap = np.zeros(n + 1, np.int32)
    for new, old in enumerate(old_ids, start=1):
        remap[old] = new
    labels = remap[labels]
    coarse_nuclei = remap[coarse_nuclei]

    nuclei = np.zeros_like(labels)
    cells: list[Cell] = []
    px_area = mpp * mpp
    threshold = result.threshold
    for new, (sl, old) in enumerate(zip(ndi.find_objects(labels, max_label=len(old_ids)), old_ids), start=1):
        coarse = coarse_nuclei[sl] == new
        if factor > 1:
            # Crisp nucleus outline at full resolution, inside the (blocky) working-resolution nucleus.
            nuc_full = densities(rgb[sl], bg, params)[0]
            nuc = coarse & (nuc_full > threshold)
            if not nuc.any():
                nuc = coarse
        else:
            nuc_full = None
            nuc = coarse
        nuclei[sl][nuc] = new
        y0, x0, y1, x1 = sl[0].start, sl[1].start, sl[0].stop, sl[1].stop
        if nuc_full is None:
            nuc_full = densities(rgb[sl], bg, params)[0]
        stats = found[old]
        cells.append(Cell(
            cell_id=new, x=float(cx[old]), y=float(cy[old]), bbox=(int(x0), int(y0), int(x1), int(y1)),
            area_um2=float(count[old]) * px_area, nucleus_area_um2=float(nuc.sum()) * px_area,
            n_lobes=stats.n_lobes, solidity=stats.solidity, eccentricity=stats.eccentricity,
            nucleus_od=float(nuc_full[nuc].mean()) if nuc.any() else 0.0,
            touches_border=bool(x0 == 0 or y0 == 0 or x1 >= width or y1 >= height),
        ))
    result.labels = labels.astype(np.int32, copy=False)
    result.nuclei = nuclei
    result.cells = cells
    return result
