"""WBC segmentation (numpy/SciPy/scikit-image only; no torch).

``segment_wbcs(rgb, mpp)`` finds and delimits every white blood cell of a Romanowsky-stained field:
colour deconvolution of the nucleus stain, nucleus markers (binarisation, hole filling, opening,
dilation, distance transform, morphological reconstruction) and the watershed, with physical
parameters (:class:`SegmentParams`) so it works from ~0.07 to ~1 um/px; ``segment_fields`` does the
same for many fields at once (what the slide scan uses). ``estimate_mpp(rgb)``
recovers the scale of an uncalibrated image from its red cells.
"""
from __future__ import annotations

from .core import segment_fields, segment_wbcs
from .params import ROMANOWSKY_EOSIN_OD, ROMANOWSKY_NUCLEUS_OD, SegmentParams
from .scale import RBC_DIAMETER_UM, estimate_mpp
from .stain import estimate_background, nucleus_density, stain_matrix
from .types import Cell, Segmentation

__all__ = [
    "Cell",
    "RBC_DIAMETER_UM",
    "ROMANOWSKY_EOSIN_OD",
    "ROMANOWSKY_NUCLEUS_OD",
    "Segmentation",
    "SegmentParams",
    "estimate_background",
    "estimate_mpp",
    "nucleus_density",
    "segment_fields",
    "segment_wbcs",
    "stain_matrix",
]
