"""Estimate the physical scale of an image with no calibration from its red cells (~7.5 um across)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import regionprops

from .params import SegmentParams
from .stain import as_rgb_uint8, densities, estimate_background

#: Mean diameter of a normal red cell on a dried, stained smear (micrometres).
RBC_DIAMETER_UM: float = 7.5


def estimate_mpp(rgb: np.ndarray, rbc_diameter_um: float = RBC_DIAMETER_UM, min_cells: int = 5) -> float | None:
    """Microns per pixel estimated from the red cells of an RGB field, or None if too few are seen.

    Stained pixels (total OD above Otsu's threshold, red-cell pallor filled) are split into
    components; isolated, round components that are not WBCs (little nucleus stain) and do not
    touch the border are red cells. Their median equivalent diameter is ``rbc_diameter_um``.
    """
    rgb = as_rgb_uint8(rgb)
    h, w = rgb.shape[:2]
    if h < 16 or w < 16:
        return None
    params = SegmentParams()
    bg = estimate_background(rgb)
    nuc, _eos, total = densities(rgb, bg, params)
    try:
        t = float(threshold_otsu(total[::2, ::2]))
    except ValueError:
        return None
    t = max(t, params.cell_od_min)
    stained = ndi.binary_fill_holes(total > t)
    stained = ndi.binary_opening(stained, iterations=1)
    lab, n = ndi.label(stained)
    if n == 0:
        return None
    diameters = []
    for region in regionprops(lab, intensity_image=nuc):
        r0, c0, r1, c1 = region.bbox
        if r0 == 0 or c0 == 0 or r1 >= h or c1 >= w or region.area < 50:
            continue
        if region.solidity < 0.93 or region.eccentricity > 0.75:
            continue
        if region.intensity_max > params.nucleus_core_od:  # a WBC or a cell with a platelet on it
            continue
        diameters.append(region.equivalent_diameter_area)
    if len(diameters) < min_cells:
        return None
    d = np.asarray(diameters)
    # Isolated round cells dominate; drop outliers (fragments, doublets that passed the shape test).
    med = np.median(d)
    d = d[(d > 0.7 * med) & (d < 1.3 * med)]
    if len(d) < min_cells:
        return None
    return float(rbc_diameter_um / np.median(d))
