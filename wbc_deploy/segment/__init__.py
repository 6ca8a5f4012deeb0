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
from .stain import estimate_background, nucleus_density, stain_matrix
from .types import Cell, Segmentation



def __getattr__(name: str):
    """``estimate_mpp`` and ``RBC_DIAMETER_UM`` load :mod:`.scale` (scikit-image's feature, filters and
    measure modules, SciPy's statistics) on first use: segmenting, what scan workers do, needs none of it."""
    if name in ("estimate_mpp", "RBC_DIAMETER_UM"):
        from . import scale

        return getattr(scale, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
