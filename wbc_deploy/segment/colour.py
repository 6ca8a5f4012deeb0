"""Per-field colour models of glass, WBC cytoplasm and other stained matter, estimated from the field itself.

Stains differ between labs, analysers and slides (a Tecom rapid stain is pale and bluish, a
CellaVision Wright-Giemsa smear has dense pink red cells), so fixed colour rules either leak into red
cells or miss pale cytoplasm. Here each field gets its own three-class model in optical-density
space (OD per RGB channel, relative to the field's glass, smoothed over ~0.3 um):

* **glass**: a Gaussian around OD 0 whose spread is the field's own noise (its faintest pixels);
  a pixel is *stained* when it lies beyond the 99% ellipsoid of that Gaussian;
* **cytoplasm** and **other stained matter** (red cells, platelets, debris, a neighbour's granules):
  two Gaussians fitted by EM to the stained pixels, with a spatial prior in micrometres: near
  chromatin a stained pixel is probably cytoplasm, far from any chromatin it is not.

:func:`fit_colour_model` returns the fitted model; :meth:`ColourModel.cytoplasm_score` the log
likelihood ratio of cytoplasm against glass and other matter (colour only, no prior), which the
watershed's cell mask and the outline contours use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: chi-square quantile (3 degrees of freedom, 99%): beyond it a pixel is not glass noise.
_CHI2_3_99 = 11.34
#: Smallest glass noise (OD units, per channel): saturated channels have no noise at all.
_GLASS_SD_MIN = 0.012
#: Share of the glass beyond a cell's reach that a single stained population must cover to be red cells.
_FAR_COVERAGE = 0.25
#: Fewest stained pixels a class needs to be fitted.
_MIN_SAMPLES = 30


@dataclass(frozen=True)
class Gaussian:
    """A 3-D Gaussian in OD space: mean, inverse covariance and log-determinant."""

    mean: np.ndarray
    inv_cov: np.ndarray
    log_det: float

    @staticmethod
    def fit(x: np.ndarray, weights: np.ndarray | None = None, floor: float = 1e-4) -> Gaussian:
        """Maximum-likelihood Gaussian of samples ``x`` (n x 3), optionally weighted; ``floor`` is added to the variances."""
        w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
        s = float(w.sum()) + 1e-12
        mean = (w @ x) / s
        d = x - mean
        # 3 x n by n x 3 products: ~4x faster than einsum's loop, and far below the size at which
        # OpenBLAS uses a second thread (measured: CPU time equals wall time up to n = 40000)
        cov = ((d * w[:, None]).T @ d) / s + floor * np.eye(x.shape[1])
        inv, det = _inverse3(cov)
        return Gaussian(mean=mean, inv_cov=inv, log_det=math.log(max(det, 1e-300)))

    def mahalanobis2(self, x: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of samples (..., 3)."""
        d = [x[..., i] - self.mean[i] for i in range(3)]
        a = self.inv_cov
        out = a[0, 0] * d[0] * d[0] + a[1, 1] * d[1] * d[1] + a[2, 2] * d[2] * d[2]
        out += 2.0 * (a[0, 1] * d[0] * d[1] + a[0, 2] * d[0] * d[2] + a[1, 2] * d[1] * d[2])
        return out

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        """Log density up to the constant shared by all 3-D Gaussians."""
        return -0.5 * (self.mahalanobis2(x) + self.log_det)


@dataclass(frozen=True)
class ColourModel:
    """A field's glass, cytoplasm and other-stained Gaussians (OD space) and the weight of glass among the non-cytoplasm."""

    glass: Gaussian
    cytoplasm: Gaussian | None
    other: Gaussian | None
    glass_weight: float = 0.5

    def stained(self, od: np.ndarray) -> np.ndarray:
        """Pixels (..., 3 OD) outside the glass noise ellipsoid."""
        return self.glass.mahalanobis2(od) > _CHI2_3_99

    def cytoplasm_score(self, od: np.ndarray, clip: float = 4.0) -> np.ndarray:
        """log p(od | cytoplasm) - log p(od | glass or other matter), clipped to +-``clip`` (float32).

        Without a cytoplasm class every stained pixel scores +clip/2 and glass -clip.
        """
        return self.classify(od, clip)[0]

    def classify(self, od: np.ndarray, clip: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
        """(:meth:`cytoplasm_score`, :meth:`stained`) of OD samples (..., 3), sharing the glass distances."""
        m2 = self.glass.mahalanobis2(od)
        stained = m2 > _CHI2_3_99
        if self.cytoplasm is None:
            return np.where(stained, 0.5 * clip, -clip).astype(np.float32), stained
        outside = -0.5 * (m2 + self.glass.log_det) + math.log(self.glass_weight)
        if self.other is not None:
            outside = np.logaddexp(outside, self.other.log_pdf(od) + math.log(1.0 - self.glass_weight))
        return np.clip(self.cytoplasm.log_pdf(od) - outside, -clip, clip).astype(np.float32), stained


def _inverse3(a: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverse and determinant of a symmetric positive-definite 3 x 3 matrix (cofactors: no LAPACK call)."""
    c00 = a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1]
    c01 = a[1, 2] * a[2, 0] - a[1, 0] * a[2, 2]
    c02 = a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0]
    det = float(a[0, 0] * c00 + a[0, 1] * c01 + a[0, 2] * c02)
    adj = np.array([[c00, a[0, 2] * a[2, 1] - a[0, 1] * a[2, 2], a[0, 1] * a[1, 2] - a[0, 2] * a[1, 1]],
                    [c01, a[0, 0] * a[2, 2] - a[0, 2] * a[2, 0], a[0, 2] * a[1, 0] - a[0, 0] * a[1, 2]],
                    [c02, a[0, 1] * a[2, 0] - a[0, 0] * a[2, 1], a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]]])
    return adj / det, det


def od_channels(rgb: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Optical density per channel (H x W x 3 float32) of an RGB uint8 image through a :func:`od_table`."""
    out = np.empty(rgb.shape, np.float32)
    for c in range(3):
        out[..., c] = table[c][rgb[..., c]]
    return out


def od_table(background) -> np.ndarray:
    """3 x 256 lookup table of per-channel optical density relative to the ``background`` RGB (clipped at 0)."""
    bg = np.asarray(background, np.float64).reshape(3, 1)
    values = np.arange(256, dtype=np.float64).reshape(1, 256)
    return np.clip(-np.log10((values + 1.0) / (bg + 1.0)), 0.0, None).astype(np.float32)


def fit_colour_model(od: np.ndarray, dist_um: np.ndarray, exclude: np.ndarray | None = None, *,
                     blue_axis: np.ndarray | None = None, near_um: float = 3.0, spread_um: float = 1.0, far_um: float = 5.0,
                     max_samples: int = 40000, iterations: int = 8, min_separation: float = 1.0) -> ColourModel:
    """Fit a field's colour model to its smoothed OD samples (n x 3) and their distances to chromatin (um).

    ``exclude`` marks samples to leave out of the cytoplasm/other fit (chromatin itself); samples
    within 0.4 um of chromatin (its blurred edge) are left out too. The prior that a stained pixel
    is cytoplasm falls from 0.98 at the chromatin to 0.02 far away, with its midpoint at ``near_um``
    and a logistic width of ``spread_um``. ``blue_axis`` (2 x 3: the nucleus-stain and eosin
    concentration per OD channel) orders stained matter by its share of nucleus stain: WBC
    cytoplasm takes up more of the blue (azure) dye than red cells do, whatever the stain's
    strength. EM starts from the bluer half of the stained pixels 0.4-2 um from chromatin
    (cytoplasm) and the redder rest (other). Two classes closer than ``min_separation``
    (:func:`separation`) are one: cytoplasm. Samples are thinned to at most ``max_samples`` on a
    regular stride (deterministic).
    """
    od = np.asarray(od, np.float64).reshape(-1, 3)
    dist = np.asarray(dist_um, np.float64).reshape(-1)
    keep = np.ones(len(od), bool) if exclude is None else ~np.asarray(exclude, bool).reshape(-1)
    stride = max(1, int(math.ceil(len(od) / max_samples)))
    od, dist, keep = od[::stride], dist[::stride], keep[::stride] & (dist[::stride] >= 0.4)
    glass = _glass_model(od)
    model = ColourModel(glass=glass, cytoplasm=None, other=None)
    stained = model.stained(od) & keep
    x, d = od[stained], dist[stained]
    if len(x) < _MIN_SAMPLES:
        return model
    blue = _blue_share(x, blue_axis)
    near = d <= 2.0
    if near.sum() < _MIN_SAMPLES:
        near = d <= np.quantile(d, 0.2)
    cut = float(np.median(blue[near]))
    first, rest = near & (blue >= cut), blue < cut
    if first.sum() < _MIN_SAMPLES or rest.sum() < _MIN_SAMPLES:
        return _one_population(glass, x, od, dist, stained, far_um)
    cyto, other = Gaussian.fit(x[first]), Gaussian.fit(x[rest])
    prior = np.clip(1.0 / (1.0 + np.exp((d - near_um) / spread_um)), 0.02, 0.98)
    log_prior = np.log(prior)
    log_rest = np.log1p(-prior)
    p = prior
    for _ in range(iterations):
        a = log_prior + cyto.log_pdf(x)
        b = log_rest + other.log_pdf(x)
        p = 1.0 / (1.0 + np.exp(np.clip(b - a, -50, 50)))
        if p.sum() < 5 or (1 - p).sum() < 5:
            break
        cyto, other = Gaussian.fit(x, p), Gaussian.fit(x, 1.0 - p)
    if separation(cyto, other) < min_separation:
        return _one_population(glass, x, od, dist, stained, far_um)
    n_glass = float(len(od) - stained.sum())
    n_other = float((1.0 - p).sum())
    weight = min(0.95, max(0.05, n_glass / max(1.0, n_glass + n_other)))
    return ColourModel(glass=glass, cytoplasm=cyto, other=other, glass_weight=weight)


def _one_population(glass: Gaussian, x: np.ndarray, od: np.ndarray, dist: np.ndarray, stained: np.ndarray,
                    far_um: float) -> ColourModel:
    """A field whose stained matter is one colour population: a WBC alone on glass (cytoplasm), or a
    thin-rimmed WBC among red cells (other matter: it covers the glass far beyond any cell's reach).

    In the second case cytoplasm is what is stained but unlike that population (a Gaussian with
    the same mean and four times its spread).
    """
    pop = Gaussian.fit(x)
    far = dist >= far_um
    coverage = float(stained[far].mean()) if far.sum() >= _MIN_SAMPLES else 0.0
    if coverage < _FAR_COVERAGE:
        return ColourModel(glass=glass, cytoplasm=pop, other=None, glass_weight=1.0 - 1e-6)
    broad = Gaussian(mean=pop.mean, inv_cov=pop.inv_cov / 16.0, log_det=pop.log_det + 3 * math.log(16.0))
    n_glass = float(len(od) - stained.sum())
    weight = min(0.95, max(0.05, n_glass / max(1.0, float(len(od)))))
    return ColourModel(glass=glass, cytoplasm=broad, other=pop, glass_weight=weight)


def _blue_share(x: np.ndarray, axis: np.ndarray | None) -> np.ndarray:
    """Share of nucleus stain, N / (|N| + |E|), of OD samples (n x 3); red minus blue OD over total without an axis."""
    if axis is None:
        return (x[:, 0] - x[:, 2]) / np.maximum(x.sum(axis=1), 1e-6)
    n, e = x @ axis[0], x @ axis[1]
    return n / np.maximum(np.abs(n) + np.abs(e), 1e-6)


def separation(a: Gaussian, b: Gaussian) -> float:
    """Distance between two Gaussians' means in units of their average spread (Mahalanobis, pooled covariance)."""
    pooled = 0.5 * (np.linalg.inv(a.inv_cov) + np.linalg.inv(b.inv_cov))
    d = a.mean - b.mean
    return float(math.sqrt(max(0.0, d @ np.linalg.solve(pooled, d))))


def _glass_model(od: np.ndarray) -> Gaussian:
    """Glass: OD around 0 with the spread of the field's faintest 10% of pixels (at least _GLASS_SD_MIN)."""
    tot = od.sum(axis=1)
    faint = od[tot <= np.quantile(tot, 0.1)] if len(od) else od
    if len(faint) < 3:
        return Gaussian(mean=np.zeros(3), inv_cov=np.eye(3) / _GLASS_SD_MIN**2, log_det=3 * math.log(_GLASS_SD_MIN**2))
    return Gaussian.fit(faint, floor=_GLASS_SD_MIN**2)
