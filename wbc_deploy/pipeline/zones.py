"""The counting area: where a smear is thick, monolayer or sparse, from the low-resolution pass.

Laboratories count WBCs in the monolayer, where red cells just touch: in the thick end cells overlap
and shrink, at the feathered edge large WBCs pile up and cells flatten. :func:`zone_slide` maps the
three zones on the slide's thumbnail (~8 um/px) by the *red-cell coverage* of the glass, in layers of
red cells: the smear's absorbance (1 - transmission, linear in covered area) relative to what one
layer of red cells absorbs. That one number is measured on the slide itself: a few fields of
``CALIBRATION_FIELD_UM`` are read at the detection resolution (~1 um/px, red cells resolved), where
the covered fraction of fields that show glass between the cells is counted directly, and related to
the thumbnail's absorbance over the same fields. So stain strength and scanner brightness cancel.

- coverage > ``THICK_LAYERS`` (more than one layer: cells overlap): **thick**;
- coverage < ``SPARSE_LAYERS``: **sparse** (feathered edge, or a thin smear);
- between: **monolayer**.

Coverage is smoothed over ``SMOOTH_UM`` within the smear outline, and a zone narrower than about
``2 * MIN_ZONE_UM`` is absorbed by its neighbours (a few cells' ring at the smear's border is no zone).
Slides with less than ``ZONING_MIN_MM2`` of smear (camera fields, small crops) or without glass are
not zoned: they are counted whole. :class:`CountingArea` turns the zones and ``--area`` into the
tiles to read, the cells to keep and the area counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..errors import WbcError
from .plan import ScanPlan, Tile, dilate_mask, tissue_mask

#: Zone codes of the zone map (``--area`` names the counting area by these).
ZONES: tuple[str, ...] = ("glass", "thick", "monolayer", "sparse")
GLASS, THICK, MONOLAYER, SPARSE = range(4)
#: Red-cell coverage (layers) above which the smear is thick, and below which it is sparse.
THICK_LAYERS: float = 1.0
SPARSE_LAYERS: float = 0.3
#: Gaussian smoothing (sigma, um) of the coverage map.
SMOOTH_UM: float = 24.0
#: Zones narrower than about twice this (um) are absorbed by their neighbours.
MIN_ZONE_UM: float = 48.0
#: Gaps between smear pixels up to about twice this (um) are smear (glass between sparse red cells).
ENVELOPE_UM: float = 48.0
#: Slides with less smear than this (mm^2) are not zoned: counted whole.
ZONING_MIN_MM2: float = 0.5
#: The default area is the monolayer when at least this much of it (mm^2) is found.
MIN_MONOLAYER_MM2: float = 0.1
#: Calibration fields: side (um), how many, at which quantiles of the smear's absorbance.
CALIBRATION_FIELD_UM: float = 128.0
CALIBRATION_QUANTILES: tuple[float, ...] = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65)
#: A field calibrates when red cells cover this fraction of it (enough glass to be one layer, enough cells).
CALIBRATION_COVERED: tuple[float, float] = (0.1, 0.8)
#: In a calibration field, glass is absorbance below this fraction of the field's 98th percentile.
GLASS_FRACTION_OF_P98: float = 0.25

AREA_CHOICES = ("monolayer", "all")


def absorbance(rgb: np.ndarray, background) -> np.ndarray:
    """Mean over the channels of 1 - transmission (``rgb / background``), clipped to [0, 1] (float32)."""
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    t = np.asarray(rgb, dtype=np.float32)[..., :3] / np.maximum(bg, 1.0)
    return np.clip(1.0 - t, 0.0, 1.0).mean(axis=2)


def smear_envelope(tissue: np.ndarray, px_um: float) -> np.ndarray:
    """The smear's outline: tissue closed over ``ENVELOPE_UM`` and its holes filled."""
    r = max(1, int(round(ENVELOPE_UM / px_um)))
    if not tissue.any():
        return tissue.copy()
    padded = np.pad(tissue, r + 1)
    closed = _dilate(padded, r)
    closed = ~_dilate(~closed, r)
    return ndi.binary_fill_holes(closed[r + 1:-(r + 1), r + 1:-(r + 1)] | tissue)


def _dilate(mask: np.ndarray, r: float) -> np.ndarray:
    """Binary dilation by a disc of radius ``r`` px (exact Euclidean, through a distance transform)."""
    if not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask) <= r


def _open(mask: np.ndarray, r: float) -> np.ndarray:
    """Binary opening by a disc of radius ``r`` px."""
    if not mask.any():
        return mask.copy()
    eroded = ndi.distance_transform_edt(np.pad(mask, 1)) [1:-1, 1:-1] > r
    return _dilate(eroded, r)


def smooth_within(values: np.ndarray, mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-weighted mean of ``values`` over ``mask`` pixels (normalised convolution); NaN outside."""
    m = mask.astype(np.float32)
    num = ndi.gaussian_filter(values.astype(np.float32) * m, sigma_px, mode="constant")
    den = ndi.gaussian_filter(m, sigma_px, mode="constant")
    out = np.full(values.shape, np.nan, np.float32)
    ok = mask & (den > 1e-6)
    out[ok] = num[ok] / den[ok]
    return out


def classify(coverage: np.ndarray, envelope: np.ndarray, px_um: float) -> np.ndarray:
    """Zone codes from a coverage map (layers of red cells); narrow zones absorbed by their neighbours."""
    raw = np.zeros(coverage.shape, np.uint8)
    c = np.nan_to_num(coverage, nan=0.0)
    raw[envelope] = MONOLAYER
    raw[envelope & (c > THICK_LAYERS)] = THICK
    raw[envelope & (c < SPARSE_LAYERS)] = SPARSE
    r = MIN_ZONE_UM / px_um
    kept = np.zeros_like(raw)
    for code in (THICK, MONOLAYER, SPARSE):
        kept[_open(raw == code, r)] = code
    if not kept.any():
        return raw
    idx = ndi.distance_transform_edt(kept == 0, return_indices=True)[1]
    return np.where(envelope, kept[idx[0], idx[1]], GLASS).astype(np.uint8)


@dataclass
class Zoning:
    """The zone map of one slide on its thumbnail grid (codes :data:`ZONES`) and how it was made."""

    zones: np.ndarray  # uint8, thumbnail rows x cols; 0 glass
    envelope: np.ndarray  # bool: the smear's outline
    px_um: tuple[float, float]  # size of a zone-map pixel in um (x, y)
    coverage: np.ndarray | None = None  # float32 red-cell layers (NaN off the smear); None when not zoned
    layer_absorbance: float | None = None  # one red-cell layer's absorbance on the thumbnail (calibration)
    fields_used: int = 0
    reason: str = ""  # why the slide was not zoned ("" when it was)

    @property
    def zoned(self) -> bool:
        return self.coverage is not None

    def area_mm2(self, code: int | None = None) -> float:
        """Area of a zone (None: the whole smear) in mm^2."""
        m = self.envelope if code is None else (self.zones == code)
        return float(m.sum()) * self.px_um[0] * self.px_um[1] / 1e6

    def describe(self) -> dict:
        """Plain values (progress-store settings, the report)."""
        return {"zoned": self.zoned, "reason": self.reason, "layer_absorbance": None if self.layer_absorbance is None
                else round(self.layer_absorbance, 4), "fields": self.fields_used,
                **{f"{ZONES[c]}_mm2": round(self.area_mm2(c), 4) for c in (THICK, MONOLAYER, SPARSE)}}


def calibrate_layer(reader, plan: ScanPlan, a_thumb: np.ndarray, envelope: np.ndarray, background,
                    px_um: tuple[float, float]) -> tuple[float | None, int]:
    """One red-cell layer's absorbance on the thumbnail, from fields read at the detection resolution.

    Fields are centred where the smoothed thumbnail absorbance takes each of ``CALIBRATION_QUANTILES``
    (thin to middling smear: where glass shows between cells). In a field, red cells are the pixels
    above ``GLASS_FRACTION_OF_P98`` of its 98th percentile, pale centres filled; a field whose covered
    fraction lies in ``CALIBRATION_COVERED`` gives thumbnail absorbance / covered fraction. Returns
    (median of those, fields used), or (None, n) with fewer than two fields.
    """
    from .detect import read_at

    det = plan.detect
    h, w = a_thumb.shape
    w0, h0 = reader.dimensions
    rx, ry = CALIBRATION_FIELD_UM / 2 / px_um[0], CALIBRATION_FIELD_UM / 2 / px_um[1]
    inner = envelope.copy()
    inner[: int(math.ceil(ry)), :] = inner[h - int(math.ceil(ry)):, :] = False
    inner[:, : int(math.ceil(rx))] = inner[:, w - int(math.ceil(rx)):] = False
    inner &= ~_dilate(~envelope, max(rx, ry))
    if not inner.any():
        return None, 0
    smooth = smooth_within(a_thumb, envelope, max(1.0, CALIBRATION_FIELD_UM / 4 / min(px_um)))
    ys, xs = np.nonzero(inner)
    vals = smooth[ys, xs]
    side = max(8, int(round(CALIBRATION_FIELD_UM / det.mpp)))
    ratios, seen = [], set()
    for q in CALIBRATION_QUANTILES:
        i = int(np.argmin(np.abs(vals - np.quantile(vals, q))))
        cx, cy = int(xs[i]), int(ys[i])
        if (cx, cy) in seen:
            continue
        seen.add((cx, cy))
        # the field at the detection resolution, centred on the thumbnail pixel's centre
        lx, ly = (cx + 0.5) * w0 / w, (cy + 0.5) * h0 / h
        dx, dy = det.from_level0(lx, ly)
        x0, y0 = int(round(dx - side / 2)), int(round(dy - side / 2))
        rgb = read_at(reader, det, (x0, y0, x0 + side, y0 + side), background)
        af = absorbance(rgb, background)
        tau = GLASS_FRACTION_OF_P98 * float(np.percentile(af, 98))
        if tau <= 0.01:
            continue
        covered = float(ndi.binary_fill_holes(af > tau).mean())
        if not (CALIBRATION_COVERED[0] <= covered <= CALIBRATION_COVERED[1]):
            continue
        fx0, fx1 = int(round(cx + 0.5 - rx)), int(round(cx + 0.5 + rx))
        fy0, fy1 = int(round(cy + 0.5 - ry)), int(round(cy + 0.5 + ry))
        ratios.append(float(a_thumb[max(0, fy0):fy1, max(0, fx0):fx1].mean()) / covered)
    if len(ratios) < 2:
        return None, len(ratios)
    return float(np.median(ratios)), len(ratios)


def zone_slide(reader, thumb: np.ndarray, plan: ScanPlan) -> Zoning:
    """The zone map of a slide (see the module docstring); not zoned (``reason`` set) when it cannot be."""
    th, tw = thumb.shape[:2]
    w0, h0 = reader.dimensions
    px_um = (plan.mpp * w0 / tw, plan.mpp * h0 / th)
    tissue, background = tissue_mask(thumb)
    envelope = smear_envelope(tissue, math.sqrt(px_um[0] * px_um[1]))
    zones = np.where(envelope, MONOLAYER, GLASS).astype(np.uint8)
    z = Zoning(zones=zones, envelope=envelope, px_um=px_um)
    smear_mm2 = z.area_mm2()
    if background is None:
        z.reason = "no glass seen on the slide (a camera field?)"
        return z
    if smear_mm2 < ZONING_MIN_MM2:
        z.reason = f"{smear_mm2:.2f} mm2 of smear, less than the {ZONING_MIN_MM2:g} mm2 zoning needs"
        return z
    a = absorbance(thumb, background)
    layer, used = calibrate_layer(reader, plan, a, envelope, background, px_um)
    z.fields_used = used
    if layer is None or layer <= 0:
        z.reason = f"no calibration: {used} of {len(CALIBRATION_QUANTILES)} fields showed glass between single red cells"
        return z
    coverage = smooth_within(a, envelope, SMOOTH_UM / math.sqrt(px_um[0] * px_um[1])) / np.float32(layer)
    z.coverage, z.layer_absorbance = coverage, layer
    z.zones = classify(coverage, envelope, math.sqrt(px_um[0] * px_um[1]))
    return z


@dataclass
class CountingArea:
    """Where a slide is counted: ``mode`` monolayer or all, the mask (None: no restriction) and why.

    ``mask`` is on the zone map's grid and already reaches ``dilate_px`` beyond the smear (as the tissue
    mask of the scan plan does) so cells at the area's edge are read whole.
    """

    mode: str
    note: str
    zoning: Zoning
    mask: np.ndarray | None = None
    counted: np.ndarray = field(default=None)  # bool: the area counted (no dilation), for area_mm2
    dims: tuple[int, int] = (1, 1)  # level-0 width, height

    def _to_grid(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.counted.shape
        gx = np.clip((np.asarray(x, np.float64) * w / self.dims[0]).astype(np.int64), 0, w - 1)
        gy = np.clip((np.asarray(y, np.float64) * h / self.dims[1]).astype(np.int64), 0, h - 1)
        return gx, gy

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether level-0 points (continuous coordinates) lie in the counting area (all True without a mask)."""
        if self.mask is None:
            return np.ones(np.shape(x), bool)
        gx, gy = self._to_grid(x, y)
        return self.mask[gy, gx]

    def tiles(self, plan: ScanPlan) -> list[Tile]:
        """The plan's tiles whose padded box touches the counting area (all of them without a mask)."""
        if self.mask is None:
            return list(plan.tiles)
        keep = []
        for t in plan.tiles:
            g = self._box_slices(plan, t.pad)
            if self.mask[g].any():
                keep.append(t)
        return keep

    def _box_slices(self, plan: ScanPlan, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
        h, w = self.counted.shape
        sx, sy = w / self.dims[0] * plan.detect.ds, h / self.dims[1] * plan.detect.ds
        x0, y0, x1, y1 = box
        gx0, gy0 = int(math.floor(x0 * sx)), int(math.floor(y0 * sy))
        gx1, gy1 = int(math.ceil(x1 * sx)), int(math.ceil(y1 * sy))
        return slice(max(0, gy0), max(gy1, gy0 + 1)), slice(max(0, gx0), max(gx1, gx0 + 1))

    def area_mm2(self, plan: ScanPlan, tiles: list[Tile]) -> float:
        """Area counted (mm^2): the counting area's pixels whose centre lies in the cores of ``tiles``."""
        h, w = self.counted.shape
        sx, sy = w / self.dims[0] * plan.detect.ds, h / self.dims[1] * plan.detect.ds
        inside = np.zeros(self.counted.shape, bool)
        for t in tiles:
            x0, y0, x1, y1 = t.core
            # grid pixel i has its centre at (i + 0.5) / s detection px: inside [x0, x1) when ...
            gx0, gx1 = int(math.ceil(x0 * sx - 0.5)), int(math.ceil(x1 * sx - 0.5))
            gy0, gy1 = int(math.ceil(y0 * sy - 0.5)), int(math.ceil(y1 * sy - 0.5))
            inside[max(0, gy0):max(0, gy1), max(0, gx0):max(0, gx1)] = True
        px = self.zoning.px_um
        return float((inside & self.counted).sum()) * px[0] * px[1] / 1e6


def counting_area(zoning: Zoning, requested: str | None, plan: ScanPlan, dims: tuple[int, int],
                  dilate_px: float) -> CountingArea:
    """The counting area for ``--area`` (``None``: the monolayer when one is found, else the whole smear).

    WbcError when ``--area monolayer`` is asked for and the slide has none.
    """
    mono_mm2 = zoning.area_mm2(MONOLAYER) if zoning.zoned else 0.0
    found = zoning.zoned and mono_mm2 >= MIN_MONOLAYER_MM2
    if requested == "all":
        return CountingArea("all", "all of the smear (--area all)", zoning, None, zoning.envelope, dims)
    if not found:
        why = zoning.reason or f"{mono_mm2:.2f} mm2 of monolayer, less than {MIN_MONOLAYER_MM2:g}"
        if requested == "monolayer":
            raise WbcError(f"--area monolayer: no monolayer found ({why}); use --area all to count the whole smear")
        return CountingArea("all", f"all of the smear: no monolayer found ({why})", zoning, None, zoning.envelope, dims)
    # the zone of the nearest smear pixel, over the smear and the margin the scan plan adds around it
    idx = ndi.distance_transform_edt(zoning.zones == GLASS, return_indices=True)[1]
    nearest = zoning.zones[idx[0], idx[1]]
    reach = dilate_mask(zoning.envelope, dilate_px)
    mask = (nearest == MONOLAYER) & reach
    how = "--area monolayer" if requested == "monolayer" else "default: monolayer found"
    return CountingArea("monolayer", f"the monolayer, {mono_mm2:.2f} mm2 ({how})", zoning, mask,
                        zoning.zones == MONOLAYER, dims)
