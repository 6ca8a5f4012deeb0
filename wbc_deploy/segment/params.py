"""Physical parameters of WBC segmentation (micrometres, optical densities), resolution independent."""
from __future__ import annotations

from dataclasses import dataclass

#: Optical-density direction of the Romanowsky (Wright-Giemsa) nucleus stain, azure B-eosinate:
#: purple chromatin absorbs red and green light and passes blue. Measured (k-means on log10 OD,
#: background-normalised) on real Wright-stained smears; ``rgb2hed``'s haematoxylin vector
#: (0.65, 0.70, 0.29) absorbs too much blue and lets red cells leak into the nucleus channel.
ROMANOWSKY_NUCLEUS_OD: tuple[float, float, float] = (0.626, 0.773, 0.101)
#: OD direction of eosin-stained red cells (pink: absorbs green and blue, passes red).
ROMANOWSKY_EOSIN_OD: tuple[float, float, float] = (0.352, 0.650, 0.673)


@dataclass(frozen=True)
class SegmentParams:
    """Parameters of :func:`wbc_deploy.segment.segment_wbcs`, in physical units.

    Lengths are micrometres, areas square micrometres, densities log10 optical densities
    relative to the slide background, so one set of values works from ~0.07 to ~1 um/px.
    """

    #: Nucleus-stain and counterstain OD vectors of the colour deconvolution (normalised inside).
    nucleus_od: tuple[float, float, float] = ROMANOWSKY_NUCLEUS_OD
    eosin_od: tuple[float, float, float] = ROMANOWSKY_EOSIN_OD
    #: Background (glass) RGB; None estimates it from the brightest pixels of the image.
    background_rgb: tuple[float, float, float] | None = None
    #: Even out the field's illumination (vignetting) from its own glass first (:mod:`.illumination`).
    #: The slide scan turns it off for the windows it segments: it evens out a photograph once, whole,
    #: when it opens it, and a slide scanner flat-fields its own tiles.
    flat_field: bool = True
    #: Lowest nucleus-stain density ever accepted as chromatin (guard for fields with no WBC):
    #: red cells reach ~0.05, pale WBC cytoplasm ~0.08, chromatin 0.2-0.6.
    nucleus_od_min: float = 0.12
    #: Highest threshold Otsu may choose, so faint nuclei next to very dark ones are kept.
    nucleus_od_max: float = 0.25
    #: Nucleus-stain threshold to use instead of the field's own (Otsu, clipped as above): ``count`` gives the
    #: windows it cuts out of a photograph the whole photograph's (:func:`~wbc_deploy.segment.core.field_nucleus_threshold`).
    nucleus_threshold: float | None = None
    #: A nucleus candidate must reach this density somewhere (hysteresis high threshold).
    nucleus_core_od: float = 0.18
    #: Total OD above which a pixel is stained (cell) rather than glass.
    cell_od_min: float = 0.08
    #: Range of the (Otsu) threshold of total OD that tells stained cells from glass, for the
    #: shape-based split of the stained mask (glass with uneven illumination reaches ~0.12).
    stained_od_min: float = 0.12
    stained_od_max: float = 0.25
    #: When the cytoplasm found by colour is smaller than this multiple of the nucleus area and at
    #: least ``granule_ring_min`` of the ring 0.5-2 um around the nucleus is stained but not
    #: WBC-coloured (an eosinophil's granules are as red as red cells), the round stained object
    #: around the nucleus is taken as the cell instead.
    cytoplasm_min_ratio: float = 1.6
    granule_ring_min: float = 0.6
    #: ... and no more than this share of the ring within 1 um of the nucleus is WBC-coloured (a
    #: thin-rimmed lymphocyte among red cells has its rim there; granules reach the nucleus).
    granule_rim_max: float = 0.25
    #: Share of nucleus stain, N / (|N| + |E|), above which a stained pixel is WBC cytoplasm
    #: (bluish-lilac, ~0.5-0.9) rather than a red cell (nearly pure eosin, ~0-0.15).
    cytoplasm_min_share: float = 0.25
    #: Work at no finer than this resolution (um/px); finer inputs are block-averaged first.
    work_mpp: float = 0.25
    #: Radius of the opening that removes specks and thin strands from the nucleus mask.
    open_radius_um: float = 0.4
    #: Nucleus fragments (lobes) closer than this gap belong to one cell.
    lobe_gap_um: float = 1.5
    #: Dynamics (um of the cell mask's distance transform) that separate touching cells.
    split_h_um: float = 1.5
    #: Radius of the opening that smooths the cell outline (cuts spurs along red-cell rims).
    cell_open_um: float = 1.0
    #: How far cytoplasm may extend beyond its nucleus.
    cytoplasm_max_um: float = 5.0
    #: Accepted total nucleus area per cell (platelets are 3-8 um^2, lymphocyte nuclei ~40).
    nucleus_area_min_um2: float = 8.0
    nucleus_area_max_um2: float = 250.0
    #: Accepted whole-cell area (a 6 um small lymphocyte to a 22 um monocyte).
    cell_area_min_um2: float = 18.0
    cell_area_max_um2: float = 450.0
    #: A cell whose outline reaches the image border is cut by it (``edge``) only when its nucleus comes
    #: within this distance of the border: a WBC's cytoplasm is seldom a thinner rim than this, and an
    #: outline reaching the border farther from its nucleus has leaked into tinted glass or a neighbour
    #: (the cell itself is whole, and a neighbouring photograph cannot see its nucleus to count it).
    edge_nucleus_um: float = 1.5
    #: ... and an outline within this distance of the border reaches it (outlines are traced on blurred
    #: pixels, and the count reads a photograph's cells at a coarser resolution than ``segment``).
    edge_outline_um: float = 1.0
    #: Shape limits of the whole cell (cut cells at the image border are exempt).
    min_solidity: float = 0.75
    max_eccentricity: float = 0.95
    #: A region holding several nucleus pieces farther apart than the lobe gap is one cell (a
    #: neutrophil's lobes) when it is this solid and round; otherwise it is split between them.
    single_min_solidity: float = 0.9
    single_max_eccentricity: float = 0.75
    #: Final outlines (:mod:`wbc_deploy.segment.finalise`) are traced at the input resolution, or
    #: no finer than this (um/px), on rays reaching at most this far from the cell's centre ...
    outline_mpp: float = 0.15
    outline_max_radius_um: float = 15.0
    #: ... and no farther than this beyond the working-resolution cell's farthest pixel.
    outline_slack_um: float = 3.0
    #: Optical densities along the rays are smoothed over this (um, Gaussian sigma).
    outline_smooth_um: float = 0.1
    #: Contour scores: the colour log-likelihood ratio is clipped to +-this; glass inside costs this.
    outline_score_clip: float = 4.0
    outline_glass_cost: float = 20.0
    #: Weight of the edge term (optical density falling outwards across the contour).
    outline_edge_weight: float = 40.0
    #: Times the contour is traced again with the cell's own colours (inside vs outside its last contour).
    outline_iterations: int = 1
    #: Smoothness of the contour: the radius may change by at most this slope (radius change over
    #: arc length on a 6 um radius) between neighbouring rays, and each um of change costs this.
    outline_max_slope: float = 1.2
    outline_step_cost: float = 2.0
    #: The nucleus edge lies this far from the cytoplasm's mean nucleus stain to the chromatin's (0.5: half way).
    nucleus_edge_fraction: float = 0.4

    def px(self, um: float, mpp: float) -> float:
        """A length in micrometres as pixels at ``mpp``."""
        return um / mpp
