"""The per-tile work of the scan, run by reading/segmentation workers (threads or processes).

``scan_tile`` reads a tile's pad box at the detection level, segments its WBCs, keeps the cells
whose centroid lies in the tile's core, and reads each kept cell's crop at full resolution (only
around candidates), resized to the model's input. Workers keep one open reader per slide.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from ..slide.crop import REFLECT, read_field, read_level
from ..segment import SegmentParams, segment_fields
from ..segment.finalise import is_edge_cell, near_border
from ..segment.stain import apply_table, density_tables, estimate_background
from .options import COARSE_AREA_UM2, COARSE_MAX_ECCENTRICITY, COARSE_MIN_SOLIDITY, COARSE_UNEXPLAINED_UM2
from .plan import CropGeometry, Resolution, ScanPlan, Tile
from .quality import tile_blur_um


@dataclass(frozen=True)
class Detection:
    """One WBC found by the scan: level-0 centre, area and outline (level-0 polygon, closed).

    Coordinates are continuous level-0 pixels: pixel (i, j) spans [i, i+1) x [j, j+1), so the centre
    of pixel (0, 0) is (0.5, 0.5), as in OpenSlide's region geometry, QuPath and the synthetic truth.
    """

    x: float
    y: float
    area_um2: float
    outline: tuple[tuple[float, float], ...] = ()


@dataclass
class TileResult:
    """What a worker returns for one tile: its cells in raster order and their model-size crops."""

    index: int
    cells: list[Detection]
    crops: np.ndarray  # N x S x S x 3 uint8, resized to the model's input size
    seconds: dict[str, float] = field(default_factory=dict)
    windows: int = 0  # candidate windows seen
    refined: int = 0  # windows segmented again at the refinement resolution
    focus_um: float | None = None  # blur estimate of the tile's sharpest edges (quality.tile_blur_um)


@dataclass(frozen=True)
class SlideJob:
    """What a worker needs to know about a slide (small and picklable: no reader, no tile list)."""

    path: str
    plan: ScanPlan
    params: SegmentParams


def block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` pixel blocks of an RGB uint8 image (whole blocks only).

    Pillow's box reduction (C, uint8 throughout): ~10x faster than summing in NumPy; its rounding
    can differ from exact rounding by one level for factors that are not powers of two.
    """
    if factor == 1:
        return rgb
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    whole = np.ascontiguousarray(rgb[: h * factor, : w * factor])
    return np.asarray(Image.fromarray(whole).reduce(factor))


def read_at(reader, res: Resolution, box: tuple[int, int, int, int], fill=None) -> np.ndarray:
    """The image at resolution ``res`` over ``box`` (x0, y0, x1, y1 in ``res`` pixels): read, then block-averaged."""
    x0, y0, x1, y1 = box
    f = res.factor
    rgb = read_level(reader, res.level, x0 * f, y0 * f, (x1 - x0) * f, (y1 - y0) * f, fill)
    return block_mean(rgb, f)


def crop_fill(reader, plan: ScanPlan):
    """What fills a crop beyond the image: the glass colour on a slide; a mirror image on a plain image
    (a photographed field continues as smear beyond its edge), as in training with ``--mpp``."""
    return REFLECT if getattr(reader, "vendor", "") in ("image", "array") else plan.background


def read_crop(reader, crop: CropGeometry, x: float, y: float, fill) -> np.ndarray:
    """The square field of view centred on level-0 (x, y), resized to the model's input size (RGB uint8).

    (x, y) are continuous level-0 coordinates (pixel (i, j) spans [i, i+1) x [j, j+1)), as in cells.csv.
    The cutting is :func:`wbc_deploy.slide.crop.read_field`, shared with training and evaluation.
    """
    return read_field(reader, crop.level, crop.downsample, crop.side, crop.input_size, x, y, fill)


def _outline(labels: np.ndarray, cell_id: int, bbox: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """Closed polygon (x, y in the labels' pixel frame) around one labelled cell, simplified to 0.5 px."""
    from skimage.measure import approximate_polygon, find_contours  # only with --geojson

    x0, y0, x1, y1 = bbox
    mask = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.float32)
    mask[1:-1, 1:-1] = labels[y0:y1, x0:x1] == cell_id
    contours = find_contours(mask, 0.5)
    if not contours:
        return []
    contour = max(contours, key=len)
    contour = approximate_polygon(contour, tolerance=0.5)
    pts = [(float(c) + x0 - 1, float(r) + y0 - 1) for r, c in contour]
    if pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts


def dilate_square(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of a 2-D mask by a (2r+1) x (2r+1) square, exact; fast for sparse masks.

    Separable: a maximum filter along the rows that hold pixels, then along the columns that hold
    pixels after it (candidate chromatin covers a few per mille of a tile, so most are skipped).
    """
    out = np.zeros(mask.shape, np.uint8)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return out.view(bool)
    size = 2 * r + 1
    out[rows] = ndi.maximum_filter1d(mask[rows].view(np.uint8), size, axis=1, mode="constant")
    cols = np.flatnonzero(out.any(axis=0))
    out[:, cols] = ndi.maximum_filter1d(out[:, cols], size, axis=0, mode="constant")
    return out.view(bool)


def candidate_windows(rgb: np.ndarray, plan: ScanPlan, params: SegmentParams
                      ) -> tuple[np.ndarray, np.ndarray, list[tuple[slice, slice]]]:
    """Coarse pass over a detection-resolution image.

    Returns (window label map, candidate chromatin mask, window slices).

    Candidate chromatin is nucleus-stain density above ``plan.candidate_od``; pixels within one
    pixel fuse (the lobes of one nucleus), and groups with at least ``candidate_min_px`` chromatin
    pixels are candidate nuclei. Window k is candidate k's bounding box grown by ``margin_px``
    (windows of neighbouring candidates overlap, so a crowded field never makes one huge window);
    it owns the pixels of the grown candidates nearest to candidate k (label k in the map), so a
    cell seen by several windows is kept once.
    """
    bg = plan.background if plan.background is not None else estimate_background(rgb)
    nuc = apply_table(density_tables(bg, params)[0], rgb)  # the nucleus-stain output only
    chromatin = nuc > plan.candidate_od
    empty = np.zeros(chromatin.shape, np.int32)
    if not chromatin.any():
        return empty, chromatin, []
    fused = dilate_square(chromatin, 1)
    lab, n = ndi.label(fused)
    area = np.bincount(lab[chromatin], minlength=n + 1)  # chromatin pixels per fused group
    keep = area >= plan.candidate_min_px
    keep[0] = False
    if not keep.any():
        return empty, np.zeros_like(chromatin), []
    number = np.zeros(n + 1, np.int32)
    number[keep] = np.arange(1, int(keep.sum()) + 1)
    groups_map = number[lab]  # candidate k's pixels are k, the rest 0
    candidates = (groups_map > 0) & chromatin
    grown = dilate_square(groups_map > 0, plan.margin_px)
    # each grown pixel belongs to the nearest candidate (Euclidean)
    _, (iy, ix) = ndi.distance_transform_edt(groups_map == 0, return_indices=True)
    windows = np.where(grown, groups_map[iy, ix], 0).astype(np.int32)
    h, w = chromatin.shape
    m = plan.margin_px
    slices = [(slice(max(0, sl[0].start - m), min(h, sl[0].stop + m)), slice(max(0, sl[1].start - m), min(w, sl[1].stop + m)))
              for sl in ndi.find_objects(groups_map)]
    return windows, candidates, slices


def coarse_is_enough(seg, candidates: np.ndarray, mpp: float) -> bool:
    """Whether a window's detection-resolution segmentation can stand without refinement.

    ``candidates`` is the window's own candidate chromatin. It is accepted only when that chromatin
    lies in one cell, a round, whole, single-cell-sized WBC that holds all but a little of it and
    touches no other cell of the window; touching or merged cells (their nuclei may have fused: a
    merged pair is elongated or concave), odd shapes, a cell cut by the window, or chromatin the
    segmentation did not place in a cell send the window to full-resolution refinement. Cells of
    other candidates in the window are not judged here: their own windows are.
    """
    ids = np.unique(seg.labels[candidates])
    ids = ids[ids > 0]
    if ids.size != 1:
        return False
    c = next((c for c in seg.cells if c.cell_id == int(ids[0])), None)
    if c is None or c.touches_border or c.solidity < COARSE_MIN_SOLIDITY or c.eccentricity > COARSE_MAX_ECCENTRICITY:
        return False
    if not (COARSE_AREA_UM2[0] <= c.area_um2 <= COARSE_AREA_UM2[1]):
        return False
    unexplained = int(np.count_nonzero(candidates & (seg.labels != c.cell_id)))
    if unexplained * mpp * mpp > COARSE_UNEXPLAINED_UM2:
        return False
    if len(seg.cells) > 1:  # no other cell within one pixel of this one
        near = ndi.binary_dilation(seg.labels == c.cell_id, structure=np.ones((3, 3), bool))
        if np.any((seg.labels[near] != 0) & (seg.labels[near] != c.cell_id)):
            return False
    return True


def _image_size(reader, res: Resolution) -> tuple[int, int]:
    """(width, height) of the image in ``res`` pixels (partial blocks hold edge pixels too)."""
    lw, lh = reader.level_dimensions[res.level]
    return -(-lw // res.factor), -(-lh // res.factor)


def _shifted(b: tuple[int, int, int, int], ox: int, oy: int) -> tuple[int, int, int, int]:
    return b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy


def cut_by_edge(reader, res: Resolution, cell, ox: int, oy: int, params: SegmentParams) -> bool:
    """Whether a cell (found at ``res``, offset by (ox, oy) into the slide frame) is cut by the image's edge:
    :func:`wbc_deploy.segment.finalise.is_edge_cell` (the rule of ``segment``'s ``edge`` column) in the slide frame."""
    return is_edge_cell(_shifted(cell.bbox, ox, oy), _shifted(cell.nucleus_bbox, ox, oy), _image_size(reader, res),
                        res.mpp, params)


def _near_image_edge(reader, res: Resolution, seg, ox: int, oy: int, params: SegmentParams) -> bool:
    """Whether any cell of a window segmented at ``res`` (offset (ox, oy) into the slide frame) comes within
    a nucleus's edge distance and a pixel of the image's edge: whether it is cut (:func:`cut_by_edge`)
    is decided at the refinement resolution (a pixel of the coarse pass is wider than the edge rule's slack)."""
    size, margin = _image_size(reader, res), params.edge_nucleus_um / res.mpp + 1.0
    return any(near_border(_shifted(c.bbox, ox, oy), size, margin) for c in seg.cells)


def scan_tile(reader, job: SlideJob, tile: Tile, crops: bool = True) -> TileResult:
    """Read, detect and crop one tile (see the module docstring); coordinates in the result are level 0.

    The tile's pad box is read at the detection resolution and candidate windows are found there
    (:func:`candidate_windows`). The windows that reach the tile's core are segmented at the detection
    resolution (:func:`wbc_deploy.segment.segment_fields`, all of the tile's in one batch); unless the
    window's own candidate is a clean WBC touching no other cell (:func:`coarse_is_enough`; never with
    ``plan.refine_all``) the window is read again at the refinement resolution, and those windows are
    segmented there (one batch again). A cell is kept if its centroid lies in the tile's core and in its own window's area
    (so a cell seen by two overlapping window boxes counts once). ``crops=False`` skips reading the
    model crops (the scan stage alone, for benchmarks).
    """
    plan = job.plan
    det, ref = plan.detect, plan.refine
    # windows are segmented as read: a photograph was evened out whole when opened (a window is too
    # small to see its vignetting), and a scanner flat-fields its slides
    params = replace(job.params, flat_field=False) if job.params.flat_field else job.params
    t0 = time.perf_counter()
    rgb = read_at(reader, det, tile.pad, plan.background)
    t1 = time.perf_counter()
    read_s = t1 - t0
    focus = tile_blur_um(rgb, det.mpp, plan.background)
    windows, candidates, slices = candidate_windows(rgb, plan, params)
    px, py = tile.pad[0], tile.pad[1]
    scale = det.ds / ref.ds  # refinement px per detection px
    cx0, cy0, cx1, cy1 = (tile.core[0] - px, tile.core[1] - py, tile.core[2] - px, tile.core[3] - py)
    # A window is its nuclei grown by more than a WBC radius: one that misses the core holds no owned cell.
    todo = [(k, sy, sx) for k, (sy, sx) in enumerate(slices, start=1)
            if not (sx.stop <= cx0 or sx.start >= cx1 or sy.stop <= cy0 or sy.start >= cy1)]
    settled: list[tuple[int, object, object, int, int]] = []  # (window, segmentation, resolution, x, y offsets)
    refine = todo
    if not plan.refine_all and det.ds != ref.ds:
        refine = []
        # a photograph's windows are thresholded as the whole photograph is (as ``segment`` does), not each alone
        coarse_params = params if plan.detect_threshold is None else replace(params, nucleus_threshold=plan.detect_threshold)
        for (k, sy, sx), seg in zip(todo, segment_fields([rgb[sy, sx] for _, sy, sx in todo], det.mpp, coarse_params)):
            if coarse_is_enough(seg, candidates[sy, sx] & (windows[sy, sx] == k), det.mpp) and not (
                    plan.drop_edge_cells and _near_image_edge(reader, det, seg, sx.start + px, sy.start + py, params)):
                settled.append((k, seg, det, sx.start + px, sy.start + py))
            else:
                refine.append((k, sy, sx))
    boxes, fine = [], []
    for k, sy, sx in refine:
        # window box in refinement px (slide frame)
        ox, oy = int(math.floor((sx.start + px) * scale)), int(math.floor((sy.start + py) * scale))
        rx1, ry1 = int(math.ceil((sx.stop + px) * scale)), int(math.ceil((sy.stop + py) * scale))
        tr = time.perf_counter()
        fine.append(read_at(reader, ref, (ox, oy, rx1, ry1), plan.background))
        read_s += time.perf_counter() - tr
        boxes.append((ox, oy))
    fine_params = params if plan.refine_threshold is None else replace(params, nucleus_threshold=plan.refine_threshold)
    for (k, _, _), (ox, oy), seg in zip(refine, boxes, segment_fields(fine, ref.mpp, fine_params)):
        settled.append((k, seg, ref, ox, oy))

    found: list[tuple[float, float, Detection]] = []
    for k, seg, res, ox, oy in settled:
        for cell in seg.cells:
            if plan.drop_edge_cells and cut_by_edge(reader, res, cell, ox, oy, params):
                continue
            x0, y0 = res.to_level0(cell.x + ox, cell.y + oy)
            dx, dy = det.from_level0(x0, y0)
            if not tile.owns(dx, dy):
                continue
            wy, wx = int(round(dy)) - py, int(round(dx)) - px
            if not (0 <= wy < windows.shape[0] and 0 <= wx < windows.shape[1]) or windows[wy, wx] != k:
                continue
            outline = ()
            if plan.outlines:
                outline = tuple(tuple(round(v + 0.5, 1) for v in res.to_level0(px_ + ox, py_ + oy))
                                for px_, py_ in _outline(seg.labels, cell.cell_id, cell.bbox))
            # outputs use continuous coordinates (pixel i spans [i, i+1), as OpenSlide regions and QuPath)
            found.append((dy, dx, Detection(x=round(x0 + 0.5, 1), y=round(y0 + 0.5, 1), area_um2=round(cell.area_um2, 2),
                                            outline=outline)))
    found.sort(key=lambda t: (t[0], t[1]))
    cells = [d for _, _, d in found]
    t2 = time.perf_counter()
    s = plan.crop.input_size
    images = np.empty((len(cells) if crops else 0, s, s, 3), np.uint8)
    for i in range(len(images)):
        images[i] = read_crop(reader, plan.crop, cells[i].x, cells[i].y, crop_fill(reader, plan))
    t3 = time.perf_counter()
    return TileResult(index=tile.index, cells=cells, crops=images, windows=len(slices), refined=len(refine), focus_um=focus,
                      seconds={"read": read_s, "detect": (t2 - t1) - (read_s - (t1 - t0)), "crop": t3 - t2})


# --------------------------------------------------------------------------- worker processes

#: In a worker process: (path, open reader) of the slide being scanned. Thread workers share the
#: engine's reader instead (OpenSlide and the plain-image reader are safe to read from many threads).
_process_reader: tuple[str, object] | None = None


def _reader_for(path: str, mpp: float, illumination=None):
    """This process's open reader for ``path`` (a photograph's illumination evened out by ``illumination``,
    as the counting process's reader is); the previous slide's reader is closed."""
    global _process_reader
    from ..slide.reader import open_slide

    if _process_reader is not None and _process_reader[0] == (path, illumination):
        return _process_reader[1]
    if _process_reader is not None:
        try:
            _process_reader[1].close()
        except Exception:  # noqa: BLE001 - closing a reader must never fail a run
            pass
    _process_reader = None
    reader = open_slide(path)
    if illumination is not None:
        reader.even_illumination(mpp, illumination)
    _process_reader = ((path, illumination), reader)
    return reader


def process_scan(job: SlideJob, tile: Tile, crops: bool = True) -> TileResult:
    """Process-pool entry point: scan ``tile`` of ``job`` with this process's reader."""
    return scan_tile(_reader_for(job.path, job.plan.mpp, job.plan.illumination), job, tile, crops=crops)


def job_without_tiles(path: str | Path, plan: ScanPlan, params: SegmentParams) -> SlideJob:
    """A SlideJob whose plan carries no tile list (what is shipped to worker processes)."""
    return SlideJob(path=str(path), plan=replace(plan, tiles=[]), params=params)
