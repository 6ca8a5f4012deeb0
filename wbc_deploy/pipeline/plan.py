"""Scan geometry of one slide: detection level, tiles with overlap and ownership, tissue mask, crop level.

Coordinates: *detection pixels* are pixels of the detection image (pyramid level ``level``, block-
averaged in memory by ``factor``); one detection pixel covers ``det_ds`` level-0 pixels per side.
A tile's *core* partitions the detection image; its *pad* box adds the overlap on every side and is
what is read and segmented. A cell belongs to the tile whose core holds its centroid, so a cell on
a seam is counted exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi

from ..card import DEFAULT_FOV_UM
from ..segment import SegmentParams
from ..segment.core import field_nucleus_threshold
from ..segment.illumination import Illumination
from ..segment.stain import estimate_background
from ..slide.crop import field_side
from .options import (CANDIDATE_MIN_UM2, CANDIDATE_OD, MASK_MAX_PX, MASK_MPP, MIN_TILES, REFINE_LEVEL_TOLERANCE,
                      TILE_MAX_READ_PX, WINDOW_MARGIN_UM,
                      CountOptions)

#: Glass vs smear on the thumbnail: total optical density (sum over channels, log10) above this.
TISSUE_OD: float = 0.06


@dataclass(frozen=True)
class Tile:
    """One detection tile: ``core`` (owned) and ``pad`` (read) boxes, (x0, y0, x1, y1) half-open, detection px."""

    index: int
    core: tuple[int, int, int, int]
    pad: tuple[int, int, int, int]

    def owns(self, x: float, y: float) -> bool:
        """Whether a centroid (detection px, slide frame) lies in this tile's core."""
        x0, y0, x1, y1 = self.core
        return x0 <= x < x1 and y0 <= y < y1


@dataclass(frozen=True)
class CropGeometry:
    """Where cell crops are read: pyramid level, its downsample and the crop side in that level's pixels."""

    level: int
    downsample: float
    side: int
    level_mpp: float
    fov_um: float
    input_size: int


@dataclass(frozen=True)
class Resolution:
    """A working resolution: pyramid ``level`` block-averaged in memory by ``factor``."""

    level: int
    level_downsample: float
    factor: int
    mpp: float  # um per pixel of this resolution

    @property
    def ds(self) -> float:
        """Level-0 pixels per pixel of this resolution."""
        return self.level_downsample * self.factor

    def to_level0(self, x: float, y: float) -> tuple[float, float]:
        """Pixel coordinates (pixel-centre convention) at this resolution to level-0 coordinates."""
        d = self.ds
        return (x + 0.5) * d - 0.5, (y + 0.5) * d - 0.5

    def from_level0(self, x: float, y: float) -> tuple[float, float]:
        """Level-0 coordinates to pixel coordinates at this resolution."""
        d = self.ds
        return (x + 0.5) / d - 0.5, (y + 0.5) / d - 0.5


@dataclass
class ScanPlan:
    """Everything a worker needs to read, detect and crop the tiles of one slide.

    ``detect`` is the coarse pass's resolution (tiles, candidate nuclei), ``refine`` the resolution
    candidates are segmented at, ``crop`` where model crops are read.
    """

    mpp: float
    detect: Resolution
    refine: Resolution
    det_size: tuple[int, int]  # width, height in detection px
    tile_px: int
    overlap_px: int
    margin_px: int  # refinement window margin, detection px
    candidate_od: float
    candidate_min_px: float  # least chromatin area of a candidate, detection px
    crop: CropGeometry
    background: tuple[float, float, float] | None
    refine_all: bool = False
    outlines: bool = True  # keep cell outlines (for GeoJSON)
    #: A plain image (a photograph of one field) is a crop of the smear: cells cut by its edge are
    #: partial and are not counted. A slide's own edge is the smear's, so slides keep them.
    drop_edge_cells: bool = False
    #: The photograph's illumination correction (:mod:`wbc_deploy.segment.illumination`), which every
    #: reader of it applies (worker processes open their own); None for slides and evenly lit images.
    illumination: Illumination | None = None
    #: A photograph's nucleus-stain thresholds at the detection and refinement resolutions, as ``segment``
    #: sets them for the whole image at each; the windows cut out of it use them instead of their own
    #: (None: each window its own, as on slides, whose tiles the scan sees one at a time).
    detect_threshold: float | None = None
    refine_threshold: float | None = None
    tiles: list[Tile] = field(default_factory=list)
    tiles_total: int = 0

    @property
    def det_mpp(self) -> float:
        return self.detect.mpp

    def to_level0(self, x: float, y: float) -> tuple[float, float]:
        """Detection-pixel coordinates to level-0 pixel coordinates."""
        return self.detect.to_level0(x, y)

    def describe(self) -> dict:
        """Geometry as plain values (stored with the progress store, printed by the benchmark)."""
        return {
            "mpp": self.mpp, "detect_level": self.detect.level, "detect_factor": self.detect.factor,
            "detect_mpp": self.detect.mpp, "refine_level": self.refine.level, "refine_factor": self.refine.factor,
            "refine_mpp": self.refine.mpp, "det_size": list(self.det_size), "tile_px": self.tile_px,
            "overlap_px": self.overlap_px, "margin_px": self.margin_px, "candidate_od": self.candidate_od,
            "candidate_min_px": self.candidate_min_px, "refine_all": self.refine_all, "outlines": self.outlines,
            "drop_edge_cells": self.drop_edge_cells,
            "tiles_total": self.tiles_total, "tiles_scanned": len(self.tiles),
            "crop_level": self.crop.level, "crop_side": self.crop.side, "crop_level_mpp": self.crop.level_mpp,
            "background": None if self.background is None else [round(v, 3) for v in self.background],
            "illumination": None if self.illumination is None else [[round(a, 6) for a in c] for c in self.illumination.coefficients],
            "nucleus_thresholds": [None if t is None else round(t, 6) for t in (self.detect_threshold, self.refine_threshold)],
        }


def choose_resolution(mpp: float, downsamples: list[float], max_mpp: float, level_tolerance: float = 1.05) -> Resolution:
    """The coarsest resolution no coarser than ``max_mpp`` (5% tolerance for scanners' rounded mpp).

    The coarsest pyramid level within the limit is read; when it is finer than half the limit it is
    block-averaged in memory by the largest integer factor that stays within it. A slide coarser
    than the limit everywhere is used at level 0 as it is. A pyramid level up to ``level_tolerance``
    times ``max_mpp`` is read as it is (the refinement passes 1.25: level 1 of a 0.074 um/px scan
    is 0.296 um/px, and reading 16x its pixels from level 0 for a 25% finer image is not worth it).
    """
    limit = max_mpp * 1.05
    level = 0
    for i, ds in enumerate(downsamples):
        if mpp * ds <= max_mpp * max(1.05, level_tolerance) and ds >= downsamples[level]:
            level = i
    if mpp * downsamples[level] > limit:  # a level within the tolerance: read as it is
        return Resolution(level=level, level_downsample=float(downsamples[level]), factor=1, mpp=mpp * downsamples[level])
    level_mpp = mpp * downsamples[level]
    factor = max(1, int(math.floor(limit / level_mpp + 1e-9)))
    return Resolution(level=level, level_downsample=float(downsamples[level]), factor=factor, mpp=level_mpp * factor)


def choose_crop_level(mpp: float, downsamples: list[float], fov_um: float, input_size: int) -> CropGeometry:
    """The coarsest level that still has at least ``input_size`` pixels over ``fov_um`` (level 0 if none)."""
    need = fov_um / float(input_size)
    level = 0
    for i, ds in enumerate(downsamples):
        if mpp * ds <= need * 1.0001 and ds >= downsamples[level]:
            level = i
    ds = float(downsamples[level])
    level_mpp = mpp * ds
    side = field_side(fov_um, level_mpp)
    return CropGeometry(level=level, downsample=ds, side=side, level_mpp=level_mpp, fov_um=fov_um, input_size=int(input_size))


def tissue_mask(thumb: np.ndarray, od_threshold: float = TISSUE_OD) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """Smear (True) vs glass on an RGB thumbnail, and the glass colour (None if no glass is seen).

    Total optical density relative to the brightest pixels (the glass) above ``od_threshold``.
    """
    rgb = np.asarray(thumb)[..., :3].astype(np.uint8)
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], bool), None
    bg = estimate_background(rgb)
    od = -np.log10((rgb.astype(np.float32) + 1.0) / (bg.astype(np.float32) + 1.0))
    total = np.clip(od, 0, None).sum(axis=2)
    mask = total > od_threshold
    has_glass = float(bg.min()) >= 120 and not bool(mask.all())
    return mask, (tuple(float(v) for v in bg) if has_glass else None)


def thumbnail_size(dimensions: tuple[int, int], mpp: float) -> int:
    """Longest side (px) of the mask thumbnail: about MASK_MPP um/px, between 64 and MASK_MAX_PX."""
    longest_um = max(dimensions) * mpp
    return int(min(MASK_MAX_PX, max(64, math.ceil(longest_um / MASK_MPP))))


def tile_size(det: Resolution, ref: Resolution, tile_um: float, max_read_px: int = TILE_MAX_READ_PX) -> int:
    """Tile core side in detection px: ``tile_um``, capped at ``max_read_px`` pixels of the level the
    refinement reads (so the work per tile, which follows the pixels read, stays bounded at any um/px)."""
    by_um = tile_um / det.mpp
    by_work = max_read_px * ref.level_downsample / det.ds
    return max(64, int(round(min(by_um, by_work))))


def split_small_slide(det_size: tuple[int, int], tile_px: int, min_tile_px: int, min_tiles: int = MIN_TILES) -> int:
    """``tile_px``, or less for a slide it would cut into fewer than ``min_tiles`` tiles: the largest side
    (not under ``min_tile_px``) that gives it that many, so a small slide still keeps every worker busy."""
    def count(t: int) -> int:
        return math.ceil(det_size[0] / t) * math.ceil(det_size[1] / t)

    t = tile_px
    while t > min_tile_px and count(t) < min_tiles:
        t -= 1
    return t


def _splits(length: int, tile_px: int) -> list[int]:
    """Edges of ``ceil(length / tile_px)`` near-equal tiles over ``length`` px (0, ..., length)."""
    n = max(1, math.ceil(length / tile_px))
    return [(k * length) // n for k in range(n + 1)]


def plan_tiles(det_size: tuple[int, int], tile_px: int, overlap_px: int,
               mask: np.ndarray | None = None, mask_scale: tuple[float, float] = (1.0, 1.0)) -> tuple[list[Tile], int]:
    """Tiles in raster order over a detection image; those whose pad box holds no tissue are skipped.

    The image is cut into ``ceil(side / tile_px)`` tiles per side of near-equal size (no tile
    larger than ``tile_px``, none a sliver). ``mask_scale`` is (mask px per detection px in x, in y).
    Returns (kept tiles, total tile count); kept tiles keep their index in the full grid.
    """
    width, height = det_size
    xs, ys = _splits(width, tile_px), _splits(height, tile_px)
    nx, ny = len(xs) - 1, len(ys) - 1
    tiles: list[Tile] = []
    for ty in range(ny):
        for tx in range(nx):
            x0, y0, x1, y1 = xs[tx], ys[ty], xs[tx + 1], ys[ty + 1]
            pad = (max(0, x0 - overlap_px), max(0, y0 - overlap_px), min(width, x1 + overlap_px), min(height, y1 + overlap_px))
            if mask is not None and mask.size:
                sx, sy = mask_scale
                mx0, my0 = int(math.floor(pad[0] * sx)), int(math.floor(pad[1] * sy))
                mx1, my1 = int(math.ceil(pad[2] * sx)), int(math.ceil(pad[3] * sy))
                if not mask[my0:max(my1, my0 + 1), mx0:max(mx1, mx0 + 1)].any():
                    continue
            tiles.append(Tile(index=ty * nx + tx, core=(x0, y0, x1, y1), pad=pad))
    return tiles, nx * ny


def dilate_mask(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Grow the tissue mask by ``radius_px`` thumbnail pixels (so cells at the smear's edge are kept)."""
    r = int(math.ceil(radius_px))
    if r < 1 or not mask.any():
        return mask
    return ndi.binary_dilation(mask, iterations=r)


def plan_scan(reader, mpp: float, card, options: CountOptions, thumb: np.ndarray,
              params: SegmentParams | None = None) -> ScanPlan:
    """Detection and refinement resolutions, crop level, tissue mask and tiles of a slide at ``mpp`` um/px.

    A plain image (a photograph of one field, held whole in memory) also gets the nucleus-stain threshold
    ``segment`` would give it (``params``' segmentation), for the windows the scan cuts out of it.
    """
    downsamples = [float(d) for d in reader.level_downsamples]
    det = choose_resolution(mpp, downsamples, options.detect_mpp)
    ref = choose_resolution(mpp, downsamples, options.refine_mpp, REFINE_LEVEL_TOLERANCE)
    lw, lh = reader.level_dimensions[det.level]
    det_size = (max(1, lw // det.factor), max(1, lh // det.factor))
    overlap_px = int(math.ceil(options.overlap_um / det.mpp))
    tile_px = split_small_slide(det_size, max(tile_size(det, ref, options.tile_um), 4 * overlap_px), 4 * overlap_px,
                                int(options.min_tiles))
    fov = float(card.fov_um) if card.fov_um else DEFAULT_FOV_UM
    crop = choose_crop_level(mpp, downsamples, fov, int(card.input_size))
    mask, background = tissue_mask(thumb)
    w0, h0 = reader.dimensions
    thumb_mpp = mpp * w0 / thumb.shape[1]
    mask = dilate_mask(mask, options.overlap_um / thumb_mpp + 1)
    scale = (det.ds * thumb.shape[1] / w0, det.ds * thumb.shape[0] / h0)
    plan = ScanPlan(mpp=mpp, detect=det, refine=ref, det_size=det_size, tile_px=tile_px, overlap_px=overlap_px,
                    margin_px=int(math.ceil(WINDOW_MARGIN_UM / det.mpp)), candidate_od=CANDIDATE_OD,
                    candidate_min_px=CANDIDATE_MIN_UM2 / det.mpp ** 2, crop=crop, background=background,
                    refine_all=options.refine_all, outlines=options.geojson,
                    drop_edge_cells=getattr(reader, "vendor", "") == "image", illumination=reader.illumination)
    if plan.drop_edge_cells:
        whole = reader.read_region((0, 0), 0, reader.dimensions)  # already evened out: not corrected again
        seg = replace(params or SegmentParams(), flat_field=False)
        plan.detect_threshold = field_nucleus_threshold(whole, mpp, replace(seg, work_mpp=det.mpp))
        plan.refine_threshold = field_nucleus_threshold(whole, mpp, replace(seg, work_mpp=ref.mpp))
    plan.tiles, plan.tiles_total = plan_tiles(det_size, tile_px, overlap_px, mask, scale)
    return plan
