"""Procedural Wright-Giemsa-like blood smears: a scene model in micrometres and a resolution-free renderer.

A :class:`Scene` is a set of fully resolved cell specs in physical units (micrometres): every random
choice (size, shape, nucleus lobes, granule positions, per-cell tint) is drawn once when a spec is
made, so painting is a pure function of the scene, the region and the resolution. Any region of a
scene can be rendered at any microns-per-pixel; two renders at the same resolution agree exactly
where they overlap (pixel noise comes from a texture indexed by the global pixel position). That is
what lets the slide generator paint a whole-slide image tile by tile and each pyramid level directly.

Colour model: Beer-Lambert. Each component (red cell, nucleus, cytoplasm and granules of each WBC
class, platelet) has an optical-density vector (its colour at unit density over white glass);
densities add where cells overlap and the pixel is ``background * 10**-OD`` plus mild noise. Nuclei
therefore come out haematoxylin-dark under scikit-image's ``rgb2hed`` and red cells eosin-pink.

Coordinates: a region's top-left corner is ``(x0_um, y0_um)``; pixel ``(i, j)`` of a render at
``mpp`` covers ``[x0 + i*mpp, x0 + (i+1)*mpp)``, so its centre is at ``x0 + (i + 0.5)*mpp``.

numpy / SciPy / Pillow only: no torch (the slide generator runs on scanner PCs).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy.spatial import cKDTree

from ..card import DEFAULT_FOV_UM
from ..classes import CLASSES, normalise_class_name
from ..errors import WbcError
from ..preprocess import resize_rgb

__all__ = [
    "CLASS_FREQUENCIES",
    "MAX_WBC_DIAMETER_UM",
    "RBC_DIAMETER_UM",
    "SCAN_MPP_RANGE",
    "WBC_DIAMETER_UM",
    "DiscSet",
    "Scene",
    "Stain",
    "TruthCell",
    "WbcSpec",
    "draw_label",
    "make_wbc",
    "render_cell_image",
    "render_field",
    "scatter_red_cells",
    "write_cell_dataset",
]

# -- physical constants of the model -----------------------------------------------------------------

#: Diameter range (micrometres) of each WBC class. Lymphocytes: 15% are "large" (9.5-12 um).
WBC_DIAMETER_UM: dict[str, tuple[float, float]] = {
    "basophil": (9.5, 12.0),
    "eosinophil": (11.0, 14.0),
    "lymphocyte": (7.0, 9.5),
    "monocyte": (13.0, 17.0),
    "neutrophil": (10.0, 13.0),
}
_LARGE_LYMPHOCYTE = (9.5, 12.0)
_LARGE_LYMPHOCYTE_P = 0.15
#: No WBC (outline irregularity included) is wider than this.
MAX_WBC_DIAMETER_UM = 18.0
#: Red-cell diameter range (micrometres).
RBC_DIAMETER_UM: tuple[float, float] = (6.5, 8.5)
#: Class frequencies used for slides and for neighbouring cells: realistic-ish (neutrophils and
#: lymphocytes dominate) but not extreme, so every class is present in small slides.
CLASS_FREQUENCIES: dict[str, float] = {
    "neutrophil": 0.46,
    "lymphocyte": 0.28,
    "monocyte": 0.10,
    "eosinophil": 0.09,
    "basophil": 0.07,
}
#: Microns per pixel at which :func:`render_cell_image` "scans" a cell before resizing it, the
#: range of common 40x scanners (the slide pipeline crops level-0 pixels at the slide's mpp).
SCAN_MPP_RANGE: tuple[float, float] = (0.22, 0.30)

#: Red-cell candidates per square micrometre before hard-core thinning (smear monolayer density).
_RBC_CANDIDATES_PER_UM2 = 0.02
#: Two red-cell centres closer than this are thinned (Matern II): overlaps stay partial.
_RBC_MIN_SPACING_UM = 4.6
#: Platelets per square micrometre of smear.
_PLATELETS_PER_UM2 = 0.0006
#: Grid-index cell size (micrometres).
_GRID_UM = 64.0
#: Red cells are painted in blocks of this many (global index) so sums are order-stable.
_DISC_BLOCK = 1024
_LN10 = math.log(10.0)
_NOISE_SHAPE = (521, 509)  # co-prime periods: the noise texture never visibly repeats

# Colour of each component at unit density over white glass (RGB). OD = -log10(colour / 255).
_BASE_COLOURS: dict[str, tuple[float, float, float]] = {
    "rbc": (222, 146, 146),
    "platelet": (178, 138, 200),
    "nucleus": (92, 50, 142),
    "cyto:neutrophil": (236, 214, 230),
    "cyto:eosinophil": (238, 220, 214),
    "cyto:basophil": (220, 200, 230),
    "cyto:lymphocyte": (168, 204, 240),
    "cyto:monocyte": (192, 200, 222),
    "gran:neutrophil": (196, 150, 206),
    "gran:eosinophil": (228, 98, 66),
    "gran:basophil": (52, 22, 86),
    "gran:lymphocyte": (150, 80, 170),
    "gran:monocyte": (170, 130, 190),
}
_BACKGROUND = (243.0, 239.0, 233.0)  # pale, slightly warm glass / plasma


def _od(rgb: Sequence[float]) -> np.ndarray:
    return -np.log10(np.clip(np.asarray(rgb, dtype=np.float64), 1.0, 255.0) / 255.0)


# -- stain ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Stain:
    """The optics of one image or slide: glass colour, component OD vectors, noise, blur.

    ``od`` maps a component (``rbc``, ``platelet``, ``nucleus``, ``cyto:<class>``, ``gran:<class>``)
    to its optical density per unit density (float32, RGB). ``noise`` is the half-range (in 8-bit
    levels) of the per-channel pixel noise; ``edge_um`` the width of soft cell edges (optical blur).
    """

    background: np.ndarray
    od: dict[str, np.ndarray]
    noise: float = 3.5
    edge_um: float = 0.35

    @classmethod
    def default(cls) -> Stain:
        """The nominal stain, no variation."""
        return cls(
            background=np.asarray(_BACKGROUND, dtype=np.float32),
            od={k: _od(v).astype(np.float32) for k, v in _BASE_COLOURS.items()},
        )

    @classmethod
    def random(cls, rng: np.random.Generator, strength: float = 1.0) -> Stain:
        """A stain drawn around the nominal one: brightness, hue, saturation, intensity, noise, blur."""
        s = float(strength)
        bg = np.asarray(_BACKGROUND) * (1.0 + s * rng.uniform(-0.05, 0.02)) + s * rng.uniform(-4, 4, 3)
        intensity = 1.0 + s * rng.uniform(-0.15, 0.2)
        batch_hue = 1.0 + s * rng.uniform(-0.06, 0.06, 3)  # shared by every component: stain batch
        od = {}
        for key, colour in _BASE_COLOURS.items():
            v = _od(colour) * batch_hue * (1.0 + s * rng.uniform(-0.07, 0.07, 3))
            sat = 1.0 + s * rng.uniform(-0.15, 0.15)
            v = v.mean() + sat * (v - v.mean())
            od[key] = np.clip(v * intensity, 0.0, None).astype(np.float32)
        return cls(
            background=np.clip(bg, 150, 255).astype(np.float32),
            od=od,
            noise=float(3.5 + s * rng.uniform(-1.0, 1.5)),
            edge_um=float(0.35 + s * rng.uniform(-0.1, 0.12)),
        )


# -- cell specs ------------------------------------------------------------------------------------------

_EMPTY5 = np.zeros((0, 5))
_EMPTY4 = np.zeros((0, 4))
_EMPTY3 = np.zeros((0, 3))


@dataclass(frozen=True, eq=False)
class WbcSpec:
    """One fully resolved white blood cell; all geometry in micrometres relative to its centre.

    ``outline`` rows are (harmonic order k, relative amplitude, phase) of the cell radius;
    ``lobes`` (cx, cy, a, b, angle) ellipses and ``strands`` (x1, y1, x2, y2, r) capsules make the
    nucleus, ``cuts`` (cx, cy, r) are discs removed from it (kidney shapes, notches);
    ``granules`` (x, y, r, amp); ``vacuoles`` (x, y, r); ``cyto_tex`` and ``chromatin`` are
    (kx, ky, phase, amp) plane waves modulating cytoplasm and nucleus density, ``clumps``
    (x, y, sigma, amp) Gaussian chromatin clumps added to the nucleus density; ``tint`` multiplies
    the cell's OD vectors (per-cell colour variation).
    """

    label: str
    x_um: float
    y_um: float
    radius_um: float
    outline: np.ndarray = field(default_factory=lambda: _EMPTY3)
    lobes: np.ndarray = field(default_factory=lambda: _EMPTY5)
    strands: np.ndarray = field(default_factory=lambda: _EMPTY5)
    cuts: np.ndarray = field(default_factory=lambda: _EMPTY3)
    granules: np.ndarray = field(default_factory=lambda: _EMPTY4)
    vacuoles: np.ndarray = field(default_factory=lambda: _EMPTY3)
    cyto_tex: np.ndarray = field(default_factory=lambda: _EMPTY4)
    chromatin: np.ndarray = field(default_factory=lambda: _EMPTY4)
    clumps: np.ndarray = field(default_factory=lambda: _EMPTY4)
    cyto_density: float = 1.0
    nucleus_density: float = 1.0
    granule_density: float = 1.0
    granule_key: str = ""
    tint: np.ndarray = field(default_factory=lambda: np.ones(3))

    @property
    def diameter_um(self) -> float:
        """Nominal diameter (twice the mean radius)."""
        return 2.0 * self.radius_um

    @property
    def extent_um(self) -> float:
        """Radius of a circle that contains the whole cell (outline irregularity and granules)."""
        r = self.radius_um * (1.0 + float(np.abs(self.outline[:, 1]).sum()))
        if len(self.granules):
            r = max(r, float((np.hypot(self.granules[:, 0], self.granules[:, 1]) + 3 * self.granules[:, 2]).max()))
        return r

    def radius_at(self, theta: float | np.ndarray) -> float | np.ndarray:
        """Cell radius (um) in direction ``theta`` (radians, image axes: x right, y down)."""
        theta = np.asarray(theta, dtype=np.float64)
        r = np.ones_like(theta)
        for k, amp, phase in self.outline:
            r = r + amp * np.cos(k * theta + phase)
        out = self.radius_um * r
        return float(out) if out.ndim == 0 else out

    def moved(self, x_um: float, y_um: float) -> WbcSpec:
        """The same cell centred elsewhere."""
        return replace(self, x_um=float(x_um), y_um=float(y_um))

    def nucleus_sdf(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Approximate signed distance (um, negative inside) to the nucleus at offsets from the centre."""
        dx = np.asarray(dx, dtype=np.float32)
        dy = np.asarray(dy, dtype=np.float32)
        d = np.full(np.broadcast_shapes(dx.shape, dy.shape), np.inf, dtype=np.float32)
        for cx, cy, a, b, ang in self.lobes:
            c, s = np.float32(math.cos(ang)), np.float32(math.sin(ang))
            px, py = dx - np.float32(cx), dy - np.float32(cy)
            qx = px * c + py * s
            qy = py * c - px * s
            k0 = np.sqrt((qx / np.float32(a)) ** 2 + (qy / np.float32(b)) ** 2)
            k1 = np.sqrt((qx / np.float32(a * a)) ** 2 + (qy / np.float32(b * b)) ** 2)
            np.minimum(d, k0 * (k0 - 1.0) / np.maximum(k1, np.float32(1e-6)), out=d)
        for x1, y1, x2, y2, r in self.strands:
            bx, by = np.float32(x2 - x1), np.float32(y2 - y1)
            px, py = dx - np.float32(x1), dy - np.float32(y1)
            h = np.clip((px * bx + py * by) / np.float32(bx * bx + by * by + 1e-9), 0.0, 1.0)
            np.minimum(d, np.hypot(px - bx * h, py - by * h) - np.float32(r), out=d)
        for cx, cy, r in self.cuts:
            np.maximum(d, np.float32(r) - np.hypot(dx - np.float32(cx), dy - np.float32(cy)), out=d)
        return d

    def cell_sdf(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Approximate signed distance (um, negative inside) to the cell outline."""
        dx = np.asarray(dx, dtype=np.float32)
        dy = np.asarray(dy, dtype=np.float32)
        rho = np.hypot(dx, dy)
        if len(self.outline) == 0:
            return rho - np.float32(self.radius_um)
        theta = np.arctan2(dy, dx)
        r = np.ones_like(rho)
        for k, amp, phase in self.outline:
            r += np.float32(amp) * np.cos(np.float32(k) * theta + np.float32(phase))
        return rho - np.float32(self.radius_um) * r


def _waves(rng: np.random.Generator, n: int, wl: tuple[float, float], amp: float) -> np.ndarray:
    """n random plane waves (kx, ky, phase, amp) with wavelengths in ``wl`` um, total amplitude ``amp``."""
    theta = rng.uniform(0, 2 * np.pi, n)
    k = 2 * np.pi / rng.uniform(wl[0], wl[1], n)
    w = rng.uniform(0.5, 1.0, n)
    w = amp * w / np.sqrt((w**2).sum() / 2.0)  # sum of cosines has RMS ~ amp
    return np.stack([k * np.cos(theta), k * np.sin(theta), rng.uniform(0, 2 * np.pi, n), w], axis=1)


def _outline(rng: np.random.Generator, max_amp: float) -> np.ndarray:
    ks = np.arange(2, 6, dtype=np.float64)
    amps = rng.uniform(0.0, max_amp, ks.size) / ks**0.7
    return np.stack([ks, amps, rng.uniform(0, 2 * np.pi, ks.size)], axis=1)


def _lobe_chain(
    rng: np.random.Generator, n: int, a: np.ndarray, b: np.ndarray, gaps: np.ndarray, turn: float, fit: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ellipse lobes strung along a random walk (lobes across the walk), centred, scaled to fit."""
    heading = rng.uniform(0, 2 * np.pi)
    pts = [np.zeros(2)]
    heads = [heading]
    for i in range(1, n):
        if i > 1:
            heading += rng.uniform(-turn, turn)
        step = b[i - 1] + b[i] + gaps[i - 1]
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        heads.append(heading)
    p = np.array(pts)
    p -= p.mean(axis=0)
    reach = float((np.hypot(p[:, 0], p[:, 1]) + a).max())
    if reach > fit:
        far = float(np.hypot(p[:, 0], p[:, 1]).max())
        if far > 1e-9:
            p *= max(0.0, (fit - float(a.max()))) / far if fit > a.max() else 0.0
    # each lobe lies across the local direction of the chain
    h = np.array(heads)
    if n > 1:
        h[0] = heads[1]
    ang = h + np.pi / 2 + rng.uniform(-0.35, 0.35, n)
    lobes = np.stack([p[:, 0], p[:, 1], a, b, ang], axis=1)
    return lobes, p


def _strands(rng: np.random.Generator, p: np.ndarray, r: tuple[float, float]) -> np.ndarray:
    if len(p) < 2:
        return _EMPTY5
    rr = rng.uniform(r[0], r[1], len(p) - 1)
    return np.stack([p[:-1, 0], p[:-1, 1], p[1:, 0], p[1:, 1], rr], axis=1)


def _scatter_in_cell(
    rng: np.random.Generator, spec: WbcSpec, n: int, r: tuple[float, float], frac: float,
    nucleus_keep: float = 1.0,
) -> np.ndarray:
    """n granule centres (x, y, radius) uniformly inside ``frac`` of the outline; those over the
    nucleus are kept with probability ``nucleus_keep``."""
    out: list[np.ndarray] = []
    need = n
    for _ in range(20):
        if need <= 0:
            break
        m = max(need * 3, 16)
        theta = rng.uniform(0, 2 * np.pi, m)
        rad = np.sqrt(rng.uniform(0, 1, m))
        gr = rng.uniform(r[0], r[1], m)
        lim = frac * spec.radius_at(theta) - gr
        rho = rad * np.maximum(lim, 0.0)
        x, y = rho * np.cos(theta), rho * np.sin(theta)
        keep = np.ones(m, dtype=bool)
        if nucleus_keep < 1.0 and len(spec.lobes):
            inside = spec.nucleus_sdf(x, y) < 0
            keep &= ~inside | (rng.uniform(0, 1, m) < nucleus_keep)
        pts = np.stack([x, y, gr], axis=1)[keep][:need]
        out.append(pts)
        need -= len(pts)
    return np.concatenate(out) if out else _EMPTY3


def _clumps(rng: np.random.Generator, spec: WbcSpec, rate: float, sigma: tuple[float, float],
            amp: tuple[float, float]) -> np.ndarray:
    """Chromatin clumps (x, y, sigma, amp) uniformly inside the nucleus, ``rate`` per square um."""
    R = spec.radius_um
    m = int(rng.poisson(4 * R * R * rate))
    x, y = rng.uniform(-R, R, m), rng.uniform(-R, R, m)
    sig = rng.uniform(sigma[0], sigma[1], m)
    a = rng.uniform(amp[0], amp[1], m)
    inside = spec.nucleus_sdf(x, y) < 0 if m else np.zeros(0, dtype=bool)
    return np.stack([x, y, sig, a], axis=1)[inside] if m else _EMPTY4


def _with_amp(g: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return np.concatenate([g, rng.uniform(lo, hi, (len(g), 1))], axis=1) if len(g) else _EMPTY4


def make_wbc(
    label: str, x_um: float, y_um: float, rng: np.random.Generator, diameter_um: float | None = None
) -> WbcSpec:
    """Draw one white blood cell of class ``label`` centred at ``(x_um, y_um)``.

    Orientation is uniformly random (every shape element is drawn with a random direction).
    """
    label = normalise_class_name(label) or label
    if label not in WBC_DIAMETER_UM:
        raise WbcError(f"unknown WBC class {label!r}: expected one of {', '.join(CLASSES)}")
    lo, hi = WBC_DIAMETER_UM[label]
    if label == "lymphocyte" and rng.uniform() < _LARGE_LYMPHOCYTE_P:
        lo, hi = _LARGE_LYMPHOCYTE
    d = float(diameter_um) if diameter_um is not None else float(rng.uniform(lo, hi))
    R = d / 2.0
    tint = 1.0 + rng.uniform(-0.05, 0.05, 3)
    base = WbcSpec(label=label, x_um=float(x_um), y_um=float(y_um), radius_um=R, tint=tint)

    if label == "neutrophil":
        s = R / 6.0
        n = int(rng.choice([2, 3, 4, 5], p=[0.12, 0.43, 0.33, 0.12]))
        a = rng.uniform(1.5, 2.0, n) * s
        b = rng.uniform(1.0, 1.35, n) * s
        lobes, p = _lobe_chain(rng, n, a, b, rng.uniform(0.25, 0.9, n) * s, 1.3, 0.8 * R)
        spec = replace(
            base, outline=_outline(rng, 0.035), lobes=lobes, strands=_strands(rng, p, (0.22 * s, 0.36 * s)),
            cyto_tex=_waves(rng, 5, (1.5, 4.0), 0.08), chromatin=_waves(rng, 6, (1.0, 2.5), 0.08),
            cyto_density=float(rng.uniform(0.9, 1.2)), nucleus_density=float(rng.uniform(0.85, 1.0)),
            granule_key="gran:neutrophil", granule_density=float(rng.uniform(0.8, 1.2)),
        )
        g = _scatter_in_cell(rng, spec, int(rng.integers(200, 350)), (0.12, 0.2), 0.95)
        return replace(spec, granules=_with_amp(g, rng, 0.25, 0.5),
                       clumps=_clumps(rng, spec, 0.9, (0.3, 0.55), (0.25, 0.55)))

    if label == "eosinophil":
        s = R / 6.25
        n = 2 if rng.uniform() < 0.85 else 3
        a = rng.uniform(1.7, 2.2, n) * s
        b = rng.uniform(1.25, 1.6, n) * s
        lobes, p = _lobe_chain(rng, n, a, b, rng.uniform(0.3, 1.0, n) * s, 0.8, 0.8 * R)
        spec = replace(
            base, outline=_outline(rng, 0.03), lobes=lobes, strands=_strands(rng, p, (0.28 * s, 0.42 * s)),
            cyto_tex=_waves(rng, 4, (2.0, 4.0), 0.06), chromatin=_waves(rng, 6, (1.0, 2.5), 0.08),
            cyto_density=float(rng.uniform(0.8, 1.1)), nucleus_density=float(rng.uniform(0.8, 0.95)),
            granule_key="gran:eosinophil", granule_density=float(rng.uniform(0.9, 1.25)),
        )
        gr = (0.33, 0.47)
        area = math.pi * R * R
        n_g = int(area * rng.uniform(0.6, 0.8) / (math.pi * 0.4**2))
        g = _scatter_in_cell(rng, spec, n_g, gr, 0.93, nucleus_keep=0.12)
        return replace(spec, granules=_with_amp(g, rng, 0.7, 1.1),
                       clumps=_clumps(rng, spec, 0.8, (0.3, 0.55), (0.2, 0.45)))

    if label == "basophil":
        s = R / 5.4
        n = int(rng.choice([2, 3], p=[0.6, 0.4]))
        a = rng.uniform(1.5, 2.0, n) * s
        b = rng.uniform(1.2, 1.6, n) * s
        lobes, p = _lobe_chain(rng, n, a, b, -rng.uniform(0.0, 0.8, n) * s, 1.0, 0.75 * R)
        spec = replace(
            base, outline=_outline(rng, 0.045), lobes=lobes, strands=_EMPTY5,
            cyto_tex=_waves(rng, 4, (2.0, 4.0), 0.08), chromatin=_waves(rng, 6, (1.0, 2.5), 0.08),
            cyto_density=float(rng.uniform(0.9, 1.2)), nucleus_density=float(rng.uniform(0.65, 0.8)),
            granule_key="gran:basophil", granule_density=float(rng.uniform(1.0, 1.4)),
        )
        g = _scatter_in_cell(rng, spec, int(rng.integers(35, 80)), (0.35, 0.6), 0.96)
        return replace(spec, granules=_with_amp(g, rng, 0.6, 1.2),
                       clumps=_clumps(rng, spec, 0.6, (0.3, 0.6), (0.2, 0.4)))

    if label == "lymphocyte":
        large = R > WBC_DIAMETER_UM["lymphocyte"][1] / 2.0
        rn = R * (rng.uniform(0.6, 0.72) if large else rng.uniform(0.74, 0.86))
        asp = rng.uniform(1.0, 1.08)
        a_n, b_n = rn * asp, rn / asp
        phi = rng.uniform(0, 2 * np.pi)
        off = min(rng.uniform(0.2, 0.75) * (R - rn), max(0.0, R - 0.3 - a_n))
        cx, cy = off * math.cos(phi), off * math.sin(phi)
        cuts = _EMPTY3
        if rng.uniform() < 0.3:
            t = rng.uniform(0, 2 * np.pi)
            dist = rn * rng.uniform(1.0, 1.25)
            cuts = np.array([[cx + dist * math.cos(t), cy + dist * math.sin(t), 0.38 * rn * rng.uniform(0.8, 1.2)]])
        spec = replace(
            base, outline=_outline(rng, 0.03), lobes=np.array([[cx, cy, a_n, b_n, rng.uniform(0, np.pi)]]),
            cuts=cuts, cyto_tex=_waves(rng, 4, (2.0, 4.0), 0.08), chromatin=_waves(rng, 7, (1.0, 2.2), 0.06),
            cyto_density=float(rng.uniform(0.9, 1.25)), nucleus_density=float(rng.uniform(1.15, 1.35)),
            granule_key="gran:lymphocyte", granule_density=float(rng.uniform(0.8, 1.1)),
        )
        if large and rng.uniform() < 0.6:
            g = _scatter_in_cell(rng, spec, int(rng.integers(2, 9)), (0.22, 0.32), 0.92, nucleus_keep=0.0)
            spec = replace(spec, granules=_with_amp(g, rng, 0.7, 1.0))
        return replace(spec, clumps=_clumps(rng, spec, 0.7, (0.35, 0.7), (0.25, 0.5)))

    # monocyte
    a_n = R * rng.uniform(0.56, 0.68)
    b_n = R * rng.uniform(0.42, 0.54)
    psi = rng.uniform(0, 2 * np.pi)
    off = R * rng.uniform(0.0, 0.15)
    phi = rng.uniform(0, 2 * np.pi)
    cx, cy = off * math.cos(phi), off * math.sin(phi)
    ux, uy = math.cos(psi), math.sin(psi)  # major axis
    vx, vy = -uy, ux  # minor axis: the kidney's notch side
    kind = rng.choice(["kidney", "horseshoe", "folded"], p=[0.45, 0.25, 0.30])
    cuts = _EMPTY3
    if kind == "folded":
        sep = a_n * rng.uniform(0.35, 0.5)
        tw = rng.uniform(0.3, 0.6)
        lobes = np.array([
            [cx + sep * ux, cy + sep * uy, a_n * 0.68, b_n, psi + tw],
            [cx - sep * ux, cy - sep * uy, a_n * 0.68, b_n * rng.uniform(0.85, 1.0), psi - tw],
        ])
    else:
        lobes = np.array([[cx, cy, a_n, b_n, psi]])
        if kind == "kidney":
            dist, rc = b_n * rng.uniform(0.85, 1.15), b_n * rng.uniform(0.45, 0.65)
        else:
            rc = b_n * rng.uniform(0.6, 0.8)
            dist = max(b_n * rng.uniform(0.35, 0.6), 1.15 * b_n - rc)  # the cut must open the nucleus
        cuts = np.array([[cx + dist * vx, cy + dist * vy, rc]])
    spec = replace(
        base, outline=_outline(rng, 0.06), lobes=lobes, cuts=cuts,
        cyto_tex=_waves(rng, 6, (1.2, 3.0), 0.1), chromatin=_waves(rng, 8, (0.7, 1.5), 0.06),
        cyto_density=float(rng.uniform(1.0, 1.3)), nucleus_density=float(rng.uniform(0.5, 0.62)),
        granule_key="gran:monocyte", granule_density=float(rng.uniform(0.5, 0.8)),
    )
    vac = _EMPTY3
    if rng.uniform() < 0.55:
        v = _scatter_in_cell(rng, spec, int(rng.integers(1, 7)), (0.3, 0.85), 0.85, nucleus_keep=0.0)
        vac = v
    g = _scatter_in_cell(rng, spec, int(rng.integers(20, 60)), (0.12, 0.18), 0.9)
    return replace(spec, vacuoles=vac, granules=_with_amp(g, rng, 0.4, 0.8),
                   clumps=_clumps(rng, spec, 1.6, (0.22, 0.4), (0.35, 0.7)))


# -- red cells and platelets ------------------------------------------------------------------------------

@dataclass(eq=False)
class DiscSet:
    """Elliptic discs (red cells or platelets) as arrays, micrometres.

    ``a``/``b`` semi-axes, ``cos``/``sin`` of the orientation, ``amp`` density, ``pallor`` depth of
    the pale centre (0 for none) and ``pallor_r`` its radius relative to the disc.
    """

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    amp: np.ndarray
    pallor: np.ndarray
    pallor_r: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)

    @classmethod
    def empty(cls) -> DiscSet:
        z = np.zeros(0)
        return cls(z, z, z, z, z, z, z, z, z)

    def take(self, idx: np.ndarray) -> DiscSet:
        """The discs at ``idx`` (an index array or boolean mask)."""
        return DiscSet(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @property
    def max_extent(self) -> float:
        return float(self.a.max()) if len(self) else 0.0


def _discs(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, diam: tuple[float, float],
           aspect: tuple[float, float], amp: tuple[float, float], pallor: tuple[float, float]) -> DiscSet:
    n = x.size
    r = rng.uniform(diam[0], diam[1], n) / 2.0
    asp = np.sqrt(rng.uniform(aspect[0], aspect[1], n))
    ang = rng.uniform(0, np.pi, n)
    return DiscSet(
        x=x, y=y, a=r * asp, b=r / asp, cos=np.cos(ang), sin=np.sin(ang),
        amp=rng.uniform(amp[0], amp[1], n), pallor=rng.uniform(pallor[0], pallor[1], n),
        pallor_r=rng.uniform(0.4, 0.6, n),
    )


def scatter_red_cells(
    bounds_um: tuple[float, float, float, float],
    rng: np.random.Generator,
    wbcs: Sequence[WbcSpec] = (),
    density: float = 1.0,
    keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    platelets: bool = True,
) -> tuple[DiscSet, DiscSet]:
    """Red cells and platelets over ``bounds_um`` = (x0, y0, x1, y1) at smear-monolayer density.

    Candidates are a Poisson process (``density`` scales it), optionally thinned by ``keep(x, y)``
    (a probability in 0..1, e.g. the smear outline), then hard-core thinned (Matern II) so red
    cells overlap only partially. Red cells are pushed off WBCs: one may overlap a WBC's edge by at
    most ~2/3 of its own radius. Returns ``(red_cells, platelets)``.
    """
    x0, y0, x1, y1 = bounds_um
    area = max(0.0, (x1 - x0) * (y1 - y0))

    def points(rate: float) -> tuple[np.ndarray, np.ndarray]:
        n = int(rng.poisson(rate * area * density))
        x = rng.uniform(x0, x1, n)
        y = rng.uniform(y0, y1, n)
        if keep is not None and n:
            m = rng.uniform(0, 1, n) < keep(x, y)
            x, y = x[m], y[m]
        return x, y

    x, y = points(_RBC_CANDIDATES_PER_UM2)
    marks = rng.uniform(0, 1, x.size)
    alive = np.ones(x.size, dtype=bool)
    if x.size > 1:
        pairs = cKDTree(np.stack([x, y], axis=1)).query_pairs(_RBC_MIN_SPACING_UM, output_type="ndarray")
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            alive[np.where(marks[i] > marks[j], i, j)] = False
    rbc = _discs(rng, x[alive], y[alive], RBC_DIAMETER_UM, (1.0, 1.12), (0.85, 1.1), (0.45, 0.75))
    q = rng.uniform(0.35, 1.0, len(rbc))  # how far a red cell may reach over a WBC edge
    rbc = rbc.take(_clear_of_wbcs(rbc.x, rbc.y, (rbc.a + rbc.b) / 2 * q, wbcs))

    if not platelets:
        return rbc, DiscSet.empty()
    px, py = points(_PLATELETS_PER_UM2)
    plt = _discs(rng, px, py, (1.5, 3.0), (1.0, 1.3), (0.6, 1.0), (0.0, 0.0))
    plt = plt.take(_clear_of_wbcs(plt.x, plt.y, np.full(len(plt), 1.5), wbcs))
    return rbc, plt


def _clear_of_wbcs(x: np.ndarray, y: np.ndarray, reach: np.ndarray, wbcs: Sequence[WbcSpec]) -> np.ndarray:
    """Boolean mask of points farther than (WBC radius in that direction + reach) from every WBC."""
    ok = np.ones(x.size, dtype=bool)
    if not len(wbcs) or not x.size:
        return ok
    tree = cKDTree(np.stack([x, y], axis=1))
    rmax = float(reach.max()) if reach.size else 0.0
    for w in wbcs:
        idx = np.asarray(tree.query_ball_point([w.x_um, w.y_um], w.extent_um + rmax), dtype=np.int64)
        if idx.size == 0:
            continue
        dx, dy = x[idx] - w.x_um, y[idx] - w.y_um
        bad = np.hypot(dx, dy) < w.radius_at(np.arctan2(dy, dx)) + reach[idx]
        ok[idx[bad]] = False
    return ok


# -- spatial index ---------------------------------------------------------------------------------------

class _GridIndex:
    """Uniform-grid index of points: which items have their centre in a rectangle."""

    def __init__(self, x: np.ndarray, y: np.ndarray, cell_um: float = _GRID_UM) -> None:
        self.cell = float(cell_um)
        self.x, self.y = x, y
        self.n = x.size
        if self.n == 0:
            return
        gx = np.floor(x / self.cell).astype(np.int64)
        gy = np.floor(y / self.cell).astype(np.int64)
        self.gx0, self.gy0 = int(gx.min()), int(gy.min())
        self.ncols = int(gx.max()) - self.gx0 + 1
        self.nrows = int(gy.max()) - self.gy0 + 1
        key = (gy - self.gy0) * self.ncols + (gx - self.gx0)
        self.order = np.argsort(key, kind="stable")
        self.keys = key[self.order]

    def query(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Sorted indices of the items whose centre lies in [x0, x1] x [y0, y1]."""
        if self.n == 0:
            return np.zeros(0, dtype=np.int64)
        c0 = max(int(math.floor(x0 / self.cell)) - self.gx0, 0)
        c1 = min(int(math.floor(x1 / self.cell)) - self.gx0, self.ncols - 1)
        r0 = max(int(math.floor(y0 / self.cell)) - self.gy0, 0)
        r1 = min(int(math.floor(y1 / self.cell)) - self.gy0, self.nrows - 1)
        if c0 > c1 or r0 > r1:
            return np.zeros(0, dtype=np.int64)
        rows = np.arange(r0, r1 + 1, dtype=np.int64) * self.ncols
        starts = np.searchsorted(self.keys, rows + c0, side="left")
        ends = np.searchsorted(self.keys, rows + c1, side="right")
        idx = np.concatenate([self.order[s:e] for s, e in zip(starts, ends)])
        m = (self.x[idx] >= x0) & (self.x[idx] <= x1) & (self.y[idx] >= y0) & (self.y[idx] <= y1)
        return np.sort(idx[m])


# -- painting --------------------------------------------------------------------------------------------

def _edge(d: np.ndarray, w: float) -> np.ndarray:
    """Coverage of a soft edge: 1 inside, 0 outside, linear over width ``w`` around d = 0."""
    return np.clip(np.float32(0.5) - d * np.float32(1.0 / w), 0.0, 1.0)


def _splat_discs(discs: DiscSet, idx: np.ndarray, xs: np.ndarray, ys: np.ndarray, mpp: float, w_edge: float,
                 block: int = _DISC_BLOCK) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
    """Density of discs ``idx`` (sorted) sampled at pixel centres ``xs`` x ``ys``.

    Yields ``(y0, y1, x0, x1, density)`` per block of discs (blocks of ``block`` global indices, so
    per-pixel sums are grouped the same way whatever the region: renders agree exactly).
    """
    h, w = ys.size, xs.size
    for chunk in np.split(idx, np.flatnonzero(np.diff(idx // block)) + 1):
        if chunk.size == 0:
            continue
        x, y = discs.x[chunk], discs.y[chunk]
        a, b = discs.a[chunk], discs.b[chunk]
        ext = a + w_edge
        k = int(math.ceil(2.0 * float(ext.max()) / mpp)) + 2
        ar = np.arange(k)
        ix = np.searchsorted(xs, x - ext)[:, None] + ar  # (n, k)
        iy = np.searchsorted(ys, y - ext)[:, None] + ar
        okx = (ix < w).astype(np.float32)[:, None, :]
        oky = (iy < h).astype(np.float32)[:, :, None]
        np.minimum(ix, w - 1, out=ix)
        np.minimum(iy, h - 1, out=iy)
        dx = (xs[ix] - x[:, None]).astype(np.float32)[:, None, :]  # (n, 1, k)
        dy = (ys[iy] - y[:, None]).astype(np.float32)[:, :, None]  # (n, k, 1)
        c = discs.cos[chunk].astype(np.float32)[:, None, None]
        s = discs.sin[chunk].astype(np.float32)[:, None, None]
        u = (dx * c + dy * s) * (1.0 / a).astype(np.float32)[:, None, None]
        v = (dy * c - dx * s) * (1.0 / b).astype(np.float32)[:, None, None]
        k0sq = u * u
        k0sq += v * v
        # near-circular discs: distance to the outline ~ (k0 - 1) * mean radius
        d = np.sqrt(k0sq)
        d -= 1.0
        d *= np.sqrt(a * b).astype(np.float32)[:, None, None] * np.float32(-1.0 / w_edge)
        d += 0.5
        cov = np.clip(d, 0.0, 1.0, out=d)
        pr = (1.0 / discs.pallor_r[chunk] ** 2).astype(np.float32)[:, None, None]
        t = k0sq * pr
        t *= t
        np.negative(t, out=t)
        np.exp(t, out=t)
        t *= -discs.pallor[chunk].astype(np.float32)[:, None, None]
        t += 1.0  # central pallor
        cov *= t
        np.minimum(k0sq, 1.0, out=k0sq)
        k0sq *= np.float32(0.2)
        k0sq += np.float32(0.8)  # slightly darker rim
        cov *= k0sq
        cov *= (discs.amp[chunk].astype(np.float32)[:, None, None] * okx) * oky
        x0, x1 = int(ix.min()), int(ix.max()) + 1
        y0, y1 = int(iy.min()), int(iy.max()) + 1
        flat = (iy - y0)[:, :, None] * (x1 - x0) + (ix - x0)[:, None, :]
        sums = np.bincount(flat.ravel(), weights=cov.ravel(), minlength=(y1 - y0) * (x1 - x0))
        yield y0, y1, x0, x1, sums.reshape(y1 - y0, x1 - x0)


def _splat_gaussians(acc: np.ndarray, gx: np.ndarray, gy: np.ndarray, sigma: np.ndarray, amp: np.ndarray,
                     xs: np.ndarray, ys: np.ndarray, mpp: float) -> None:
    """Add area-preserving Gaussian blobs (granules) to ``acc`` (h x w float64) sampled at xs, ys."""
    if gx.size == 0:
        return
    h, w = acc.shape
    se2 = sigma**2 + (0.4 * mpp) ** 2  # never narrower than the pixel grid can carry
    a = amp * sigma**2 / se2
    rc = 3.0 * np.sqrt(se2)
    k = int(math.ceil(2.0 * float(rc.max()) / mpp)) + 2
    ar = np.arange(k)
    ix = np.searchsorted(xs, gx - rc)[:, None] + ar
    iy = np.searchsorted(ys, gy - rc)[:, None] + ar
    okx, oky = ix < w, iy < h
    ix = np.minimum(ix, w - 1)
    iy = np.minimum(iy, h - 1)
    dx = (xs[ix] - gx[:, None])[:, None, :]
    dy = (ys[iy] - gy[:, None])[:, :, None]
    r2 = dx * dx + dy * dy
    val = a[:, None, None] * np.exp(-r2 / (2.0 * se2[:, None, None]))
    valid = (r2 <= (rc**2)[:, None, None]) & okx[:, None, :] & oky[:, :, None]
    if not valid.any():
        return
    fx = np.broadcast_to(ix[:, None, :], valid.shape)[valid]
    fy = np.broadcast_to(iy[:, :, None], valid.shape)[valid]
    acc += np.bincount(fy * w + fx, weights=val[valid], minlength=h * w).reshape(h, w)


def _waves_eval(waves: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    t = np.ones(np.broadcast_shapes(dx.shape, dy.shape), dtype=np.float32)
    for kx, ky, ph, amp in waves:
        t += np.float32(amp) * np.cos(np.float32(kx) * dx + np.float32(ky) * dy + np.float32(ph))
    return t


def _paint_wbc(od: np.ndarray, lab_cell: np.ndarray | None, lab_nuc: np.ndarray | None, spec: WbcSpec,
               cid: int, xs: np.ndarray, ys: np.ndarray, mpp: float, w_edge: float, stain: Stain) -> None:
    ext = spec.extent_um + w_edge
    i0, i1 = np.searchsorted(xs, spec.x_um - ext), np.searchsorted(xs, spec.x_um + ext, side="right")
    j0, j1 = np.searchsorted(ys, spec.y_um - ext), np.searchsorted(ys, spec.y_um + ext, side="right")
    if i0 >= i1 or j0 >= j1:
        return
    px, py = xs[i0:i1] - spec.x_um, ys[j0:j1] - spec.y_um
    dx = px.astype(np.float32)[None, :]
    dy = py.astype(np.float32)[:, None]
    d_cell = spec.cell_sdf(dx, dy)
    cov_cell = _edge(d_cell, w_edge)
    d_nuc = np.maximum(spec.nucleus_sdf(dx, dy), d_cell + np.float32(0.3))
    cov_nuc = _edge(d_nuc, w_edge)
    cyto = cov_cell * np.float32(spec.cyto_density) * _waves_eval(spec.cyto_tex, dx, dy)
    cyto *= 1.0 - np.float32(0.45) * cov_nuc
    if len(spec.vacuoles):
        vac = np.zeros_like(cyto)
        for vx, vy, vr in spec.vacuoles:
            np.maximum(vac, _edge(np.hypot(dx - np.float32(vx), dy - np.float32(vy)) - np.float32(vr), w_edge), out=vac)
        cyto *= 1.0 - np.float32(0.85) * vac
    nuc = np.float32(spec.nucleus_density) * _waves_eval(spec.chromatin, dx, dy)
    if len(spec.clumps):
        cl = np.zeros(nuc.shape, dtype=np.float64)
        c = spec.clumps
        _splat_gaussians(cl, c[:, 0], c[:, 1], c[:, 2], c[:, 3], px, py, mpp)
        nuc += cl.astype(np.float32)
    nuc *= cov_nuc
    tint = spec.tint.astype(np.float32)
    patch = cyto[..., None] * (stain.od["cyto:" + spec.label] * tint) + nuc[..., None] * (stain.od["nucleus"] * tint)
    if len(spec.granules):
        g = np.zeros(cyto.shape, dtype=np.float64)
        gr = spec.granules
        _splat_gaussians(g, gr[:, 0], gr[:, 1], 0.6 * gr[:, 2], gr[:, 3], px, py, mpp)
        patch += (g * spec.granule_density).astype(np.float32)[..., None] * (stain.od[spec.granule_key] * tint)
    od[j0:j1, i0:i1] += patch
    if lab_cell is not None and lab_nuc is not None:
        inside = d_cell <= 0
        lab_cell[j0:j1, i0:i1][inside] = cid
        lab_nuc[j0:j1, i0:i1][inside & (d_nuc <= 0)] = cid


# -- the scene -------------------------------------------------------------------------------------------

def _periodic_crop(tex: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """The (h, w) window at (y0, x0) of the infinite periodic tiling of ``tex``."""
    th, tw = tex.shape[:2]
    out = np.empty((h, w) + tex.shape[2:], dtype=tex.dtype)
    y = 0
    while y < h:
        ty = (y0 + y) % th
        nh = min(h - y, th - ty)
        x = 0
        while x < w:
            tx = (x0 + x) % tw
            nw = min(w - x, tw - tx)
            out[y:y + nh, x:x + nw] = tex[ty:ty + nh, tx:tx + nw]
            x += nw
        y += nh
    return out


def _snap(v: float) -> float:
    r = round(v)
    return float(r) if abs(v - r) < 1e-6 else float(v)


class Scene:
    """A smear in micrometres: WBC specs, red cells, platelets and a stain; render any region.

    ``wbcs`` keep their order: in label images, WBC ``k`` (0-based) has id ``k + 1``.
    """

    def __init__(self, wbcs: Sequence[WbcSpec], rbcs: DiscSet | None = None, platelets: DiscSet | None = None,
                 stain: Stain | None = None, noise_seed: int = 0) -> None:
        self.wbcs: list[WbcSpec] = list(wbcs)
        self.stain = stain or Stain.default()
        self.rbcs = self._spatially_sorted(rbcs or DiscSet.empty())
        self.platelets = self._spatially_sorted(platelets or DiscSet.empty())
        self._rbc_index = _GridIndex(self.rbcs.x, self.rbcs.y)
        self._plt_index = _GridIndex(self.platelets.x, self.platelets.y)
        wx = np.array([w.x_um for w in self.wbcs], dtype=np.float64)
        wy = np.array([w.y_um for w in self.wbcs], dtype=np.float64)
        self._wbc_index = _GridIndex(wx, wy)
        self._wbc_extent = max((w.extent_um for w in self.wbcs), default=0.0)
        self._rbc_pad = self.rbcs.max_extent
        self._plt_pad = self.platelets.max_extent
        self.noise_seed = int(noise_seed)
        self._noise_cache: dict[float, np.ndarray] = {}

    @staticmethod
    def _spatially_sorted(d: DiscSet) -> DiscSet:
        # global order follows the grid, so any region's discs form a few contiguous index runs
        if len(d) == 0:
            return d
        key = np.floor(d.y / _GRID_UM) * 1e9 + np.floor(d.x / _GRID_UM)
        return d.take(np.lexsort((d.x, key)))

    def wbcs_in(self, x0_um: float, y0_um: float, x1_um: float, y1_um: float) -> np.ndarray:
        """Indices of the WBCs whose centre lies in the rectangle (um)."""
        return self._wbc_index.query(x0_um, y0_um, x1_um, y1_um)

    def _noise(self, mpp: float) -> np.ndarray:
        """The pixel-noise texture for a resolution (periodic; scaled by the stain's noise level)."""
        key = round(mpp, 9)
        tex = self._noise_cache.get(key)
        if tex is None:
            seed = [self.noise_seed, int(round(mpp * 1e6))]
            tex = np.random.default_rng(seed).uniform(-1.0, 1.0, (*_NOISE_SHAPE, 3)).astype(np.float32)
            tex *= np.float32(self.stain.noise)
            self._noise_cache = {key: tex}  # one resolution at a time is what callers use
        return tex

    def render(self, x0_um: float, y0_um: float, width_px: int, height_px: int, mpp: float,
               with_masks: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB uint8 (height_px, width_px, 3) of the region with top-left corner (x0_um, y0_um).

        With ``with_masks``, also returns int32 whole-cell and nucleus instance labels of the WBCs
        (0 background, id = index into :attr:`wbcs` + 1; a pixel belongs to a cell when its centre is
        inside the outline; where two touching cells overlap the later one wins).
        """
        w, h = int(width_px), int(height_px)
        if w <= 0 or h <= 0 or not mpp > 0:
            raise ValueError(f"bad render request {width_px}x{height_px} at {mpp} um/px")
        ox, oy = _snap(x0_um / mpp), _snap(y0_um / mpp)
        xs = (ox + np.arange(w, dtype=np.float64) + 0.5) * mpp
        ys = (oy + np.arange(h, dtype=np.float64) + 0.5) * mpp
        st = self.stain
        w_edge = math.hypot(st.edge_um, mpp)
        xa, xb, ya, yb = xs[0] - 0.5 * mpp, xs[-1] + 0.5 * mpp, ys[0] - 0.5 * mpp, ys[-1] + 0.5 * mpp

        # red cells: one density map, then their colour
        idx = self._rbc_index.query(xa - self._rbc_pad - w_edge, ya - self._rbc_pad - w_edge,
                                    xb + self._rbc_pad + w_edge, yb + self._rbc_pad + w_edge)
        if idx.size:
            dens = np.zeros((h, w), dtype=np.float64)
            for y0, y1, x0, x1, d in _splat_discs(self.rbcs, idx, xs, ys, mpp, w_edge):
                dens[y0:y1, x0:x1] += d
            od = dens.astype(np.float32)[..., None] * st.od["rbc"]
            del dens
        else:
            od = np.zeros((h, w, 3), dtype=np.float32)
        # platelets are sparse: each painted into its own small box
        idx = self._plt_index.query(xa - self._plt_pad - w_edge, ya - self._plt_pad - w_edge,
                                    xb + self._plt_pad + w_edge, yb + self._plt_pad + w_edge)
        for y0, y1, x0, x1, d in _splat_discs(self.platelets, idx, xs, ys, mpp, w_edge, block=1):
            od[y0:y1, x0:x1] += d.astype(np.float32)[..., None] * st.od["platelet"]

        lab_cell = np.zeros((h, w), dtype=np.int32) if with_masks else None
        lab_nuc = np.zeros((h, w), dtype=np.int32) if with_masks else None
        pad = self._wbc_extent + w_edge
        for i in self._wbc_index.query(xa - pad, ya - pad, xb + pad, yb + pad):
            _paint_wbc(od, lab_cell, lab_nuc, self.wbcs[i], int(i) + 1, xs, ys, mpp, w_edge, st)

        od *= np.float32(-_LN10)
        np.exp(od, out=od)
        od *= st.background
        od += _periodic_crop(self._noise(mpp), int(math.floor(oy + 0.5)), int(math.floor(ox + 0.5)), h, w)
        np.rint(od, out=od)
        np.clip(od, 0, 255, out=od)
        rgb = od.astype(np.uint8)
        if with_masks:
            return rgb, lab_cell, lab_nuc
        return rgb


# -- single cells, fields, data sets ----------------------------------------------------------------------

class TruthCell(NamedTuple):
    """A WBC of a rendered field: id in the label images, class, centre in pixels, diameter."""

    id: int
    label: str
    x: float
    y: float
    diameter_um: float


def draw_label(rng: np.random.Generator) -> str:
    """A WBC class drawn with :data:`CLASS_FREQUENCIES`."""
    names = list(CLASS_FREQUENCIES)
    p = np.array([CLASS_FREQUENCIES[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


#: Fraction of training images with a second WBC touching or near the centre one.
NEIGHBOUR_PROBABILITY = 0.5


def render_cell_image(label: str, size_px: int, rng: np.random.Generator, fov_um: float = DEFAULT_FOV_UM,
                      scan_mpp: float | None = None) -> np.ndarray:
    """One WBC of class ``label`` near the centre of a ``fov_um`` square field, among red cells.

    The field is what the slide pipeline crops around a detected WBC: the same renderer and red-cell
    density, "scanned" at ``scan_mpp`` (default: drawn from :data:`SCAN_MPP_RANGE`) and resized to
    ``size_px`` with the deployment resize (:func:`wbc_deploy.preprocess.resize_rgb`). The cell is
    offset up to 1.5 um from the centre (detection centroids wander that much); red cells may
    overlap its edge; in a share :data:`NEIGHBOUR_PROBABILITY` of images another WBC touches or nearly touches it (the classifier must
    learn to name the centre cell, as crops of touching pairs on slides need). Stain varies per image. Returns RGB uint8 (size, size, 3).
    """
    if size_px < 8:
        raise WbcError(f"image size must be at least 8 px, got {size_px}")
    if not fov_um > 0:
        raise WbcError(f"field of view must be positive, got {fov_um} um")
    stain = Stain.random(rng)
    mpp = float(scan_mpp) if scan_mpp else float(rng.uniform(*SCAN_MPP_RANGE))
    n = max(8, int(round(fov_um / mpp)))
    t, r = rng.uniform(0, 2 * np.pi), rng.uniform(0, 1.5)
    main = make_wbc(label, r * math.cos(t), r * math.sin(t), rng)
    wbcs = [main]
    if rng.uniform() < NEIGHBOUR_PROBABILITY:
        other = make_wbc(draw_label(rng), 0.0, 0.0, rng)
        t = rng.uniform(0, 2 * np.pi)
        # From touching (cytoplasm overlapping by up to 0.8 um, as the slides' touching pairs) to 3 um apart.
        dist = main.radius_at(t) + other.radius_at(t + np.pi) + rng.uniform(-0.8, 3.0)
        wbcs.append(other.moved(main.x_um + dist * math.cos(t), main.y_um + dist * math.sin(t)))
    half = n * mpp / 2.0
    m = half + RBC_DIAMETER_UM[1]
    rbcs, plts = scatter_red_cells((-m, -m, m, m), rng, wbcs, density=float(rng.uniform(0.75, 1.2)))
    scene = Scene(wbcs, rbcs, plts, stain, noise_seed=int(rng.integers(2**31)))
    img = scene.render(-half, -half, n, n, mpp)
    return resize_rgb(img, int(size_px))


def render_field(width_px: int, height_px: int, mpp: float, wbcs: Sequence[tuple[str, float, float]],
                 rng: np.random.Generator, stain: Stain | None = None, density: float = 1.0,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[TruthCell]]:
    """A field with WBCs at given pixel positions ``(label, x_px, y_px)`` among red cells.

    Returns ``(rgb, cell_labels, nucleus_labels, truth)``: labels are int32 with WBC ``k`` of
    ``wbcs`` as id ``k + 1``; truth lists the cells with centres in pixels (pixel (i, j) spans
    [i, i+1) x [j, j+1)). The stain is drawn from ``rng`` unless given. Place WBCs closer than the
    sum of their radii to make touching pairs.
    """
    specs = [make_wbc(lab, float(x) * mpp, float(y) * mpp, rng) for lab, x, y in wbcs]
    st = stain or Stain.random(rng)
    W, H = width_px * mpp, height_px * mpp
    m = RBC_DIAMETER_UM[1]
    rbcs, plts = scatter_red_cells((-m, -m, W + m, H + m), rng, specs, density=density)
    scene = Scene(specs, rbcs, plts, st, noise_seed=int(rng.integers(2**31)))
    rgb, cells, nuclei = scene.render(0.0, 0.0, width_px, height_px, mpp, with_masks=True)
    truth = [TruthCell(k + 1, s.label, s.x_um / mpp, s.y_um / mpp, s.diameter_um) for k, s in enumerate(specs)]
    return rgb, cells, nuclei, truth


def write_cell_dataset(out_dir: str | Path, per_class: int, size_px: int, seed: int,
                       classes: Sequence[str] = CLASSES, fov_um: float = DEFAULT_FOV_UM,
                       progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write ``out_dir/<class>/<class>_00000.png ...``: ``per_class`` synthetic images per class.

    Image ``i`` of a class depends only on (seed, class, i): the same seed gives byte-identical
    files, and a larger ``per_class`` extends a smaller one. ``progress(n)`` is called after each
    image. Returns the number of images written per class.
    """
    if per_class < 1:
        raise WbcError(f"--per-class must be at least 1, got {per_class}")
    if size_px < 8:
        raise WbcError(f"--size must be at least 8 px, got {size_px}")
    names: list[str] = []
    for c in classes:
        norm = normalise_class_name(c)
        if norm is None:
            raise WbcError(f"unknown class {c!r}: expected some of {', '.join(CLASSES)}")
        if norm not in names:
            names.append(norm)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WbcError(f"cannot create output directory {out}: {exc.strerror or exc}") from None
    counts: dict[str, int] = {}
    for name in names:
        ci = CLASSES.index(name)
        folder = out / name
        folder.mkdir(exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([int(seed), ci, i])
            img = render_cell_image(name, size_px, rng, fov_um=fov_um)
            Image.fromarray(img).save(folder / f"{name}_{i:05d}.png", compress_level=4)
            if progress is not None:
                progress(1)
        counts[name] = per_class
    return counts
