"""Options of a count run and the constants that define the scan (documented, physical units)."""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import WbcError

#: The scan's coarse pass (finding candidate nuclei) runs at the coarsest resolution no coarser than
#: this (um/px): the coarsest pyramid level within it is read, and finer pixels (plain images,
#: slides without such a level) are block-averaged in memory. A 4x pyramid of a 0.25 um/px scan has
#: its level 1 at 1.0 um/px, so the coarse pass reads 1/16 of the level-0 pixels; WBC nuclei
#: (6-15 um) are still 6-15 px across there.
DETECT_MPP: float = 1.0
#: Candidates are segmented (colour deconvolution, markers, watershed) at this finer resolution,
#: the segmenter's own working resolution (``SegmentParams.work_mpp``), reading full-resolution pixels
#: only in windows around them. Coarser refinement loses touching WBC pairs (measured on synthetic
#: slides: 29/30 found at 0.5 um/px, 30/30 at 0.25; 37/40 vs 39/40) for ~30% less detection time.
REFINE_MPP: float = 0.25
#: ... but a pyramid level up to this much coarser than ``REFINE_MPP`` is read as it is: level 1 of a
#: 4x pyramid over a 0.074 um/px scan is 0.296 um/px, and block-averaging level 0 instead reads 16x the
#: pixels (on the real-pixel BCCD slide: 16.2 CPU s -> 7.8 CPU s to count, 209 -> 208 of 203 boxes' WBCs).
REFINE_LEVEL_TOLERANCE: float = 1.25
#: Coarse pass: nucleus-stain density (OD) above which a pixel is candidate chromatin, and the least
#: chromatin area (um^2, lobes within ~1 px fused) a candidate nucleus has (platelets are smaller).
CANDIDATE_OD: float = 0.12
CANDIDATE_MIN_UM2: float = 6.0
#: Refinement windows extend this far around a candidate nucleus (cytoplasm + context).
WINDOW_MARGIN_UM: float = 12.0
#: A window's detection-resolution segmentation is kept without refinement only for a lone WBC this
#: round and solid (a merged touching pair is elongated or concave), of a single-cell area, whose
#: cell holds all but this much of the window's candidate chromatin.
COARSE_MIN_SOLIDITY: float = 0.9
COARSE_MAX_ECCENTRICITY: float = 0.8
COARSE_AREA_UM2: tuple[float, float] = (25.0, 300.0)
COARSE_UNEXPLAINED_UM2: float = 2.0
#: Core (owned area) of a detection tile, micrometres: 1024 um = 1024 px at 1 um/px.
TILE_UM: float = 1024.0
#: ... and at most this many pixels on a side at the resolution the refinement reads (its pyramid
#: level, before block-averaging): work grows with the pixels read, not with micrometres, so a fine
#: scan (0.074 um/px: 1024 um is 13,800 px) is cut into several tiles that the workers share, while a
#: 0.25 um/px scan keeps its 1024 um tiles (4096 px).
TILE_MAX_READ_PX: int = 4096
#: ... and a slide that 1024 um tiles would cut into fewer than this many is cut into this many (tiles
#: not under 4x the overlap), so both cores of a small or high-resolution slide are busy: the
#: real-pixel BCCD slide (0.6 x 0.5 mm at 0.074 um/px) was one tile, scanned by one core.
MIN_TILES: int = 4
#: Overlap added on every side of a tile core. Wider than the largest WBC (a ~22 um monocyte), so a
#: cell whose centroid lies in a core is whole inside its padded tile.
OVERLAP_UM: float = 32.0
#: Thumbnail resolution for the tissue/background mask (um/px), and its largest side in pixels.
MASK_MPP: float = 8.0
MASK_MAX_PX: int = 4096
#: Crops kept per class and per end (most and least confident) for --gallery.
GALLERY_K: int = 16
#: Detections match a true cell when their centres are within this distance (--truth).
MATCH_UM: float = 5.0

EXECUTORS = ("auto", "thread", "process")


def default_workers() -> int:
    """Reading/segmentation workers: one per core, at least 1, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class CountOptions:
    """Everything that configures :func:`wbc_deploy.pipeline.count_slides`.

    Fields that change results (mpp, batch size, scan geometry) are part of the settings hash that
    guards ``--resume``; ``workers``, ``executor``, ``quiet`` and the hooks do not change results.
    """

    backend: str | None = None
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    #: ``auto``: worker processes for a slide with 2+ tiles and workers > 1, else threads (see :mod:`.workers`).
    executor: str = "auto"
    mpp: float | None = None
    resume: bool = False
    geojson: bool = False
    gallery: bool = False
    gallery_k: int = GALLERY_K
    #: Write ``<slide>.review.html``: every counted cell's crop, to confirm or reclassify (``recount``).
    review: bool = False
    truth: bool = False
    quiet: bool = False
    detect_mpp: float = DETECT_MPP
    refine_mpp: float = REFINE_MPP
    #: Refine every candidate window at ``refine_mpp`` (slower), not only those the coarse pass cannot settle.
    refine_all: bool = False
    tile_um: float = TILE_UM
    #: A slide that ``tile_um`` tiles would cut into fewer tiles than this is cut into this many.
    min_tiles: int = MIN_TILES
    overlap_um: float = OVERLAP_UM
    #: Cells whose calibrated confidence is below this are ``unidentified``; None: the model card's
    #: ``confidence_threshold`` (0 turns it off).
    confidence_threshold: float | None = None
    #: Count the first this many WBCs in the meander reading order over the counting area, then stop
    #: scanning (the classic 100/200-cell differential); None: every WBC of the area.
    max_wbc: int | None = None
    #: The counting area: ``monolayer``, ``all`` (the whole smear) or None (the monolayer when one is
    #: found, else all; see :mod:`wbc_deploy.pipeline.zones`).
    area: str | None = None
    #: Extra keyword arguments for :func:`wbc_deploy.runtime.open_backend` (e.g. ``intra_op_threads``).
    backend_options: dict = field(default_factory=dict)
    #: Library hook, called after each tile is committed to the progress store with
    #: (slide name, number of tiles committed so far for that slide). Raising from it stops the run
    #: as an interruption would (tests use it to simulate a killed run).
    tile_hook: Callable[[str, int], None] | None = None

    def validate(self) -> None:
        """Raise WbcError naming the first bad option."""
        if int(self.batch_size) < 1:
            raise WbcError(f"--batch-size must be at least 1, got {self.batch_size}")
        if int(self.workers) < 1:
            raise WbcError(f"--workers must be at least 1, got {self.workers}")
        if self.executor not in EXECUTORS:
            raise WbcError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.mpp is not None and not (math.isfinite(self.mpp) and 0.01 <= self.mpp <= 10.0):
            raise WbcError(f"--mpp must be micrometres per pixel between 0.01 and 10 (e.g. 0.25 for a 40x scan), got {self.mpp}")
        if self.confidence_threshold is not None and not (0.0 <= self.confidence_threshold <= 1.0):
            raise WbcError(f"--confidence-threshold must be within 0..1 (0 turns unidentified off), got {self.confidence_threshold}")
        if self.max_wbc is not None and int(self.max_wbc) < 1:
            raise WbcError(f"--max-wbc must be at least 1 (e.g. 100 or 200 for a classic differential), got {self.max_wbc}")
        if self.area is not None and self.area not in ("monolayer", "all"):
            raise WbcError(f"--area must be monolayer or all, got {self.area!r}")
        if int(self.gallery_k) < 1:
            raise WbcError(f"--gallery-k must be at least 1, got {self.gallery_k}")
        if not (0.1 <= self.detect_mpp <= 4.0):
            raise WbcError(f"detection resolution must be 0.1-4 um/px, got {self.detect_mpp}")
        if not (0.05 <= self.refine_mpp <= self.detect_mpp):
            raise WbcError(f"refinement resolution must be 0.05 um/px up to the detection resolution, got {self.refine_mpp}")
        if self.overlap_um < 25.0:
            raise WbcError(f"tile overlap must be wider than the largest WBC (>= 25 um), got {self.overlap_um}")
        if int(self.min_tiles) < 1:
            raise WbcError(f"min_tiles must be at least 1, got {self.min_tiles}")
        if self.tile_um < 4 * self.overlap_um:
            raise WbcError(f"tile size must be at least 4x the overlap ({4 * self.overlap_um} um), got {self.tile_um}")

    def result_settings(self) -> dict:
        """The options that change the cells found or their probabilities (for the resume guard)."""
        return {
            "batch_size": int(self.batch_size),
            "mpp_option": self.mpp,
            "detect_mpp": float(self.detect_mpp),
            "refine_mpp": float(self.refine_mpp),
            "refine_all": bool(self.refine_all),
            "outlines": bool(self.geojson),
            "tile_um": float(self.tile_um),
            "min_tiles": int(self.min_tiles),
            "overlap_um": float(self.overlap_um),
            "confidence_threshold": self.confidence_threshold,
            "max_wbc": None if self.max_wbc is None else int(self.max_wbc),
            "area": self.area or "auto",
        }

    def threshold_for(self, card) -> float | None:
        """The confidence below which a cell is ``unidentified``: this option, else the card's (None: never)."""
        t = self.confidence_threshold if self.confidence_threshold is not None else getattr(card, "confidence_threshold", None)
        return float(t) if t else None
