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
    """Microns per pixel estimated from the red cells of an RGB field, or None if it cannot be told.

    Stained pixels (total OD above Otsu's threshold, clipped to the glass/cell range; red-cell
    pallor filled) are split into connected objects. Isolated, round objects without nucleus stain
    that do not touch the border are single red cells; their area-weighted median equivalent
    diameter (specks and platelets weigh little) is taken as ``rbc_diameter_um``. Returns None when
    fewer than ``min_cells`` such cells agree (crowded fields where red cells overlap, blank fields):
    the caller should then ask for ``--mpp``.
    """
    rgb = as_rgb_uint8(rgb)
    h, w = rgb.shape[:2]
    if h < 16 or w < 16:
        return None
    params = SegmentParams()
    nuc, _eos, total = densities(rgb, estimate_background(rgb), params)
    try:
        t = float(threshold_otsu(total[::2, ::2]))
    except ValueError:  # a constant image
        return None
    t = min(max(t, params.stained_od_min), params.stained_od_max)
    stained = ndi.binary_opening(ndi.binary_fill_holes(total > t), iterations=1)
    lab, n = ndi.label(stained)
    if n == 0:
        return None
    diameters = []
    for region in regionprops(lab, intensity_image=nuc):
        r0, c0, r1, c1 = region.bbox
        if r0 == 0 or c0 == 0 or r1 >= h or c1 >= w or region.area < 20:
            continue
        if region.solidity < 0.9 or region.eccentricity > 0.8:  # clumps and overlapping cells
            continue
        if region.intensity_max > params.nucleus_core_od:  # a WBC, or a platelet on a red cell
            continue
        diameters.append(region.equivalent_diameter_area)
    if len(diameters) < min_cells:
        return None
    d = np.sort(np.asarray(diameters))
    weight = np.cumsum(d * d) / np.sum(d * d)
    typical = d[min(int(np.searchsorted(weight, 0.5)), d.size - 1)]
    cells = d[(d > 0.75 * typical) & (d < 1.3 * typical)]
    if cells.size < min_cells or np.std(cells) > 0.15 * np.mean(cells):
        return None
    return float(rbc_diameter_um / np.median(cells))
