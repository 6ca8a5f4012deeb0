"""Synthetic whole-slide images: a smear scene written as a tiled, pyramidal TIFF that OpenSlide opens.

``write_synthetic_slide("slide.svs", ...)`` writes an Aperio-style file (OpenSlide vendor ``aperio``:
tiled level 0 whose ImageDescription starts with ``Aperio`` and carries ``AppMag`` and ``MPP``, a
stripped thumbnail as the second directory, then the tiled reduced levels); any other suffix
(``.tif``/``.tiff``) writes a generic tiled TIFF (OpenSlide vendor ``generic-tiff``) whose
resolution tags (pixels per centimetre) give ``openslide.mpp-x``/``-y``.

Tiles are 256 x 256, deflate-compressed (TIFF compression 8, "Adobe deflate"): lossless, so the
pixels OpenSlide returns are exactly the rendered ones, encoded by tifffile with Python's zlib (no
``imagecodecs`` needed; JPEG and LZW encoding would need it) and decoded by the libtiff inside
``openslide-bin``. Each pyramid level (downsample 4 per level until the smaller side is under
1000 px) is rendered directly from the scene at its own resolution, one band of tiles at a time,
so memory stays bounded whatever the slide size.

The scene: red cells and platelets over an irregular smear blob covering 60-80% of the slide (a
feathered edge, plain glass outside), WBCs of every class with fixed, realistic-ish frequencies,
some straddling tile seams at multiples of 512 and 1000 px (some at seam crossings), some in
touching pairs (cytoplasm touching, nuclei apart); otherwise WBCs keep at least 2 um apart. The
truth file ``<stem>.truth.csv`` (``x,y,label``; WBC centres in level-0 pixels, where pixel (i, j)
spans [i, i+1) x [j, j+1)) lists the WBCs sorted by (y, x); row k is WBC id k+1 of the scene.

With ``zones`` (:class:`SmearZones`, ``synth slide --zones``) the smear has the three areas of a
wedge smear along x: a thick end (several overlapping layers of red cells), a monolayer (red cells
just touching, the single layer of the plain slides) and a feathered edge (red cells thinning out to
glass); WBCs are spread over all three and the truth file gains a ``zone`` column.
"""
from __future__ import annotations

import csv
import io
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..classes import CLASSES
from ..data.synth_cells import CLASS_FREQUENCIES, DiscSet, Scene, Stain, WbcSpec, make_wbc, scatter_red_cells
from ..errors import WbcError
from ..files import atomic_path

__all__ = [
    "SEAM_PERIODS_PX",
    "SMEAR_ZONES",
    "SmearZones",
    "SyntheticSlide",
    "allocate_classes",
    "build_slide_scene",
    "pyramid_sizes",
    "read_truth",
    "truth_path",
    "write_synthetic_slide",
]

#: Tile sizes (level-0 px) whose seams some WBCs are placed across.
SEAM_PERIODS_PX: tuple[int, ...] = (512, 1000)
TILE_PX = 256
_MIN_GAP_UM = 2.0  # WBCs that are not a touching pair keep at least this far apart
_NUCLEUS_GAP_UM = 1.5  # nuclei of a touching pair stay at least this far apart
_BLOCK_PX = 2048  # columns rendered at once (bounds memory on wide slides)
_AXIS = ("x", "y")
_ENCODE_BUFFER = 16 * 2**20  # tiles handed to the compressing threads at once (bounds memory)


def truth_path(slide_path: str | Path) -> Path:
    """``slide.svs`` -> ``slide.truth.csv`` (beside it, named after the stem)."""
    p = Path(slide_path)
    return p.with_name(p.stem + ".truth.csv")


def read_truth(path: str | Path) -> list[tuple[float, float, str]]:
    """Read a truth CSV: a list of ``(x, y, label)`` in level-0 pixels."""
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise WbcError(f"truth file not found: {p}") from None
    try:
        return [(float(r["x"]), float(r["y"]), r["label"]) for r in rows]
    except (KeyError, ValueError, TypeError):
        raise WbcError(f"{p}: not a truth CSV (expected columns x,y,label)") from None


def pyramid_sizes(width: int, height: int, factor: int = 4, min_side: int = 1000) -> list[tuple[int, int]]:
    """Level dimensions: level 0, then each ``factor`` smaller (rounded up) until the smaller
    side is under ``min_side``."""
    sizes = [(int(width), int(height))]
    while min(sizes[-1]) >= min_side:
        w, h = sizes[-1]
        sizes.append((-(-w // factor), -(-h // factor)))
    return sizes


def allocate_classes(n: int, freqs: dict[str, float] = CLASS_FREQUENCIES) -> dict[str, int]:
    """Split ``n`` cells into classes by largest remainder; every class gets >= 1 when n >= 20."""
    names = list(freqs)
    p = np.array([freqs[k] for k in names], dtype=np.float64)
    p = p / p.sum()
    raw = p * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    if n >= 20:
        while (counts == 0).any():
            counts[int(np.argmax(counts))] -= 1
            counts[int(np.flatnonzero(counts == 0)[0])] += 1
    return {k: int(c) for k, c in zip(names, counts)}


@dataclass
class _Smear:
    """An irregular blob (polar harmonics around an ellipse) with a feathered edge, in um."""

    cx: float
    cy: float
    sx: float
    sy: float
    r0: float
    harm: np.ndarray  # (k, 3): order, amplitude, phase
    feather: float
    waves: np.ndarray  # (m, 4): kx, ky, phase, amp of the density variation

    def radius(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k, a, ph in self.harm:
            r = r + a * np.cos(k * theta + ph)
        return self.r0 * r

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0..1: 1 well inside the smear, 0 on glass, a ramp across the feathered edge."""
        u, v = (x - self.cx) / self.sx, (y - self.cy) / self.sy
        rho = np.hypot(u, v)
        return np.clip((self.radius(np.arctan2(v, u)) - rho) / self.feather + 0.5, 0.0, 1.0)

    def keep(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dens = np.full_like(x, 0.88)
        for kx, ky, ph, a in self.waves:
            dens = dens + a * np.cos(kx * x + ky * y + ph)
        return self.inside(x, y) * np.clip(dens, 0.0, 1.0)

    @classmethod
    def random(cls, rng: np.random.Generator, w_um: float, h_um: float, coverage: float) -> _Smear:
        ks = np.arange(2, 7, dtype=np.float64)
        harm = np.stack([ks, rng.uniform(0.02, 0.09, ks.size) / ks**0.5, rng.uniform(0, 2 * np.pi, ks.size)], axis=1)
        # gentle density variation across the smear (thicker and thinner areas), lengths of mm
        m = 3
        th = rng.uniform(0, 2 * np.pi, m)
        k = 2 * np.pi / rng.uniform(0.6, 1.5, m) / max(w_um, h_um)
        waves = np.stack([k * np.cos(th), k * np.sin(th), rng.uniform(0, 2 * np.pi, m), np.full(m, 0.04)], axis=1)
        smear = cls(
            cx=w_um * (0.5 + rng.uniform(-0.04, 0.04)), cy=h_um * (0.5 + rng.uniform(-0.04, 0.04)),
            sx=w_um / 2.0, sy=h_um / 2.0, r0=1.0, harm=harm, feather=0.04, waves=waves,
        )
        # scale r0 so the blob (clipped to the slide) covers the target fraction: a point is
        # inside when rho <= r0 * h(theta), so r0 is that quantile of rho / h(theta)
        g = (np.arange(256) + 0.5) / 256
        gx, gy = np.meshgrid(g * w_um, g * h_um)
        u, v = (gx - smear.cx) / smear.sx, (gy - smear.cy) / smear.sy
        smear.r0 = 1.0
        ratio = np.hypot(u, v) / np.maximum(smear.radius(np.arctan2(v, u)), 1e-9)
        smear.r0 = float(np.quantile(ratio, coverage))
        return smear


#: Zone codes of a smear, as :mod:`wbc_deploy.pipeline.zones` numbers them (0 is glass).
SMEAR_ZONES: tuple[str, ...] = ("glass", "thick", "monolayer", "sparse")


@dataclass(frozen=True)
class SmearZones:
    """The thick end, monolayer and feathered edge of a synthetic wedge smear, along x.

    Positions are fractions of the slide's width: ``x < thick_end`` is the thick end, ``x >=
    feather_start`` the feathered (sparse) edge, the monolayer lies between. The monolayer is one
    layer of red cells (hard-core spacing 4.6 um: about half the glass covered, cells touching, as on
    the plain synthetic slides); the thick end adds ``thick_layers - 1`` more independent layers on top
    (overlapping cells, about 1.3 layers' absorbance with 4); across the feathered edge the monolayer's
    red cells are thinned, their density falling linearly from ``feather_density[0]`` to
    ``feather_density[1]`` times the monolayer's (coverage about 0.2 down to 0.04 layers).
    The designed zones are the truth: each is chosen well inside the bands
    :mod:`wbc_deploy.pipeline.zones` measures (red-cell coverage above 1 layer: thick; below 0.3: sparse).
    """

    thick_end: float = 0.3
    feather_start: float = 0.7
    thick_layers: int = 4
    feather_density: tuple[float, float] = (0.45, 0.08)

    def __post_init__(self) -> None:
        if not (0.0 < self.thick_end < self.feather_start < 1.0):
            raise WbcError(f"smear zones need 0 < thick_end < feather_start < 1, got {self.thick_end}, {self.feather_start}")
        if self.thick_layers < 2:
            raise WbcError(f"the thick end needs at least 2 layers of red cells, got {self.thick_layers}")

    def code(self, x_frac: np.ndarray) -> np.ndarray:
        """Zone code (1 thick, 2 monolayer, 3 sparse) at fractions of the slide width."""
        x = np.asarray(x_frac, dtype=np.float64)
        return np.where(x < self.thick_end, 1, np.where(x < self.feather_start, 2, 3)).astype(np.uint8)

    def monolayer_keep(self, x_frac: np.ndarray) -> np.ndarray:
        """Density of the first red-cell layer relative to the monolayer (1 except across the feathered edge)."""
        x = np.asarray(x_frac, dtype=np.float64)
        t = np.clip((x - self.feather_start) / (1.0 - self.feather_start), 0.0, 1.0)
        a, b = self.feather_density
        return np.where(x < self.feather_start, 1.0, a + (b - a) * t)


@dataclass
class SyntheticSlide:
    """A synthetic slide's scene and layout (level-0 size, mpp, which WBCs straddle seams / touch)."""

    scene: Scene
    width: int
    height: int
    mpp: float
    smear: _Smear
    seam_ids: list[int]  # 1-based WBC ids placed across a tile seam
    pairs: list[tuple[int, int]]  # 1-based ids of touching pairs
    zones: SmearZones | None = None

    def truth_rows(self) -> list[tuple[float, float, str]]:
        """``(x, y, label)`` per WBC in level-0 pixels, in id order."""
        return [(w.x_um / self.mpp, w.y_um / self.mpp, w.label) for w in self.scene.wbcs]

    def zone_map(self, shape: tuple[int, int]) -> np.ndarray:
        """The designed zone codes (:data:`SMEAR_ZONES`; 0 glass) on a ``(rows, cols)`` grid over the slide.

        Pixel centres are sampled; glass is where the smear outline is below one half. Without zones
        the whole smear is monolayer.
        """
        rows, cols = shape
        w_um, h_um = self.width * self.mpp, self.height * self.mpp
        xs = (np.arange(cols) + 0.5) * (w_um / cols)
        ys = (np.arange(rows) + 0.5) * (h_um / rows)
        gx, gy = np.meshgrid(xs, ys)
        code = self.zones.code(gx / w_um) if self.zones is not None else np.full(gx.shape, 2, np.uint8)
        return np.where(self.smear.inside(gx, gy) >= 0.5, code, 0).astype(np.uint8)

    def wbc_zones(self) -> list[str]:
        """The zone name of each WBC, in id order."""
        w_um = self.width * self.mpp
        if self.zones is None:
            return [SMEAR_ZONES[2]] * len(self.scene.wbcs)
        codes = self.zones.code(np.array([w.x_um / w_um for w in self.scene.wbcs]))
        return [SMEAR_ZONES[int(c)] for c in codes]


class _Placer:
    """Places WBC centres without overlaps (a hash grid of what is placed)."""

    def __init__(self, w_um: float, h_um: float, smear: _Smear, cell_um: float) -> None:
        self.w, self.h, self.smear, self.cell = w_um, h_um, smear, cell_um
        self.grid: dict[tuple[int, int], list[int]] = {}
        self.specs: list[WbcSpec] = []

    def fits(self, spec: WbcSpec, x: float, y: float, ignore: int = -1) -> bool:
        ext = spec.extent_um
        if not (ext + 1.0 <= x <= self.w - ext - 1.0 and ext + 1.0 <= y <= self.h - ext - 1.0):
            return False
        if self.smear.inside(np.array([x]), np.array([y]))[0] < 1.0:
            return False
        gx, gy = int(x // self.cell), int(y // self.cell)
        for i in range(gx - 1, gx + 2):
            for j in range(gy - 1, gy + 2):
                for k in self.grid.get((i, j), ()):
                    if k == ignore:
                        continue
                    o = self.specs[k]
                    if math.hypot(o.x_um - x, o.y_um - y) < o.extent_um + ext + _MIN_GAP_UM:
                        return False
        return True

    def add(self, spec: WbcSpec) -> int:
        self.specs.append(spec)
        key = (int(spec.x_um // self.cell), int(spec.y_um // self.cell))
        self.grid.setdefault(key, []).append(len(self.specs) - 1)
        return len(self.specs) - 1


def _nucleus_points(spec: WbcSpec, step: float = 0.25) -> np.ndarray:
    g = np.arange(-spec.radius_um, spec.radius_um + step, step)
    xx, yy = np.meshgrid(g, g)
    inside = spec.nucleus_sdf(xx, yy) < 0
    return np.stack([xx[inside] + spec.x_um, yy[inside] + spec.y_um], axis=1)


def _nuclei_apart(a: WbcSpec, b: WbcSpec) -> bool:
    pa, pb = _nucleus_points(a), _nucleus_points(b)
    if len(pa) == 0 or len(pb) == 0:
        return True
    d, _ = cKDTree(pa).query(pb, k=1)
    return float(d.min()) >= _NUCLEUS_GAP_UM


def _concat_discs(sets: list[DiscSet]) -> DiscSet:
    return DiscSet(*(np.concatenate([getattr(d, f) for d in sets]) for f in DiscSet.__dataclass_fields__))


def build_slide_scene(width: int, height: int, n_cells: int, mpp: float = 0.25, seed: int = 0,
                      zones: SmearZones | None = None) -> SyntheticSlide:
    """The scene of a synthetic slide of ``width`` x ``height`` level-0 pixels at ``mpp``.

    Deterministic for a seed. ``zones``: a thick end, monolayer and feathered edge along x (None: one
    monolayer, the plain slides, unchanged). Raises WbcError when the cells cannot be placed without overlap.
    """
    _check_args(width, height, n_cells, mpp, seed)
    rng = np.random.default_rng([int(seed), 0x51DE])
    w_um, h_um = width * mpp, height * mpp
    stain = Stain.random(rng, strength=0.7)
    smear = _Smear.random(rng, w_um, h_um, coverage=float(rng.uniform(0.62, 0.78)))

    counts = allocate_classes(n_cells)
    labels = [c for c in CLASSES for _ in range(counts.get(c, 0))]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    specs = [make_wbc(lab, 0.0, 0.0, rng) for lab in labels]
    max_ext = max((s.extent_um for s in specs), default=1.0)
    need = sum(math.pi * (s.extent_um + _MIN_GAP_UM) ** 2 for s in specs)
    room = float(smear.inside(*np.meshgrid(np.linspace(0, w_um, 64), np.linspace(0, h_um, 64))).mean()) * w_um * h_um
    if need > 0.3 * room:  # random placement jams long before the area is full
        raise WbcError(
            f"{n_cells} WBCs do not fit on a {width}x{height} px slide at {mpp} um/px "
            f"(the smear holds about {int(0.3 * room / (need / max(1, n_cells)))}): use fewer --cells or a larger slide"
        )
    placer = _Placer(w_um, h_um, smear, cell_um=2 * max_ext + _MIN_GAP_UM)

    n_pairs = max(1, n_cells // 12) if n_cells >= 4 else 0
    n_seam = min(max(2, int(round(0.15 * n_cells))), n_cells - 2 * n_pairs) if n_cells >= 2 else 0
    pairs: list[tuple[int, int]] = []
    seam: list[int] = []
    pending = list(range(n_cells))
    tries_each = 400

    def fail() -> WbcError:
        return WbcError(
            f"cannot place {n_cells} WBCs without overlap on a {width}x{height} px slide at {mpp} um/px: "
            "use fewer --cells or a larger slide"
        )

    # touching pairs: cytoplasm touching (a little overlap), nuclei apart
    for _ in range(n_pairs):
        a = specs[pending.pop()]
        for attempt in range(tries_each):
            if attempt % 40 == 0:  # some partners cannot touch with nuclei apart (e.g. two full lymphocytes)
                j = int(rng.integers(len(pending)))
                b = specs[pending[j]]
            x, y = rng.uniform(0, w_um), rng.uniform(0, h_um)
            t = rng.uniform(0, 2 * np.pi)
            dist = a.radius_at(t) + b.radius_at(t + np.pi) - rng.uniform(0.3, 0.8)
            bx, by = x + dist * math.cos(t), y + dist * math.sin(t)
            sa, sb = a.moved(x, y), b.moved(bx, by)
            if placer.fits(sa, x, y) and placer.fits(sb, bx, by) and _nuclei_apart(sa, sb):
                pairs.append((placer.add(sa), placer.add(sb)))
                pending.pop(j)
                break
        else:
            raise fail()

    # seam straddlers: centre within 0.4 radius of a seam line (30% at a seam crossing)
    lines = {ax: [k * p for p in SEAM_PERIODS_PX for k in range(1, (width if ax == "x" else height) // p + 1)
                  if k * p < (width if ax == "x" else height)] for ax in _AXIS}
    for _ in range(n_seam if (lines["x"] or lines["y"]) else 0):
        s = specs[pending.pop()]
        for _ in range(tries_each):
            x, y = rng.uniform(0, w_um), rng.uniform(0, h_um)
            axes = list(_AXIS) if rng.uniform() < 0.3 else [_AXIS[int(rng.integers(2))]]
            for ax in axes:
                if lines[ax]:
                    px = lines[ax][int(rng.integers(len(lines[ax])))] * mpp + rng.uniform(-0.4, 0.4) * s.radius_um
                    x, y = (px, y) if ax == "x" else (x, px)
            if placer.fits(s, x, y):
                seam.append(placer.add(s.moved(x, y)))
                break
        else:
            raise fail()

    for k in pending[::-1]:
        s = specs[k]
        for _ in range(tries_each):
            x, y = rng.uniform(0, w_um), rng.uniform(0, h_um)
            if placer.fits(s, x, y):
                placer.add(s.moved(x, y))
                break
        else:
            raise fail()

    # ids follow (y, x) order, the truth file's row order
    order = sorted(range(len(placer.specs)), key=lambda i: (placer.specs[i].y_um, placer.specs[i].x_um))
    new_id = {old: new + 1 for new, old in enumerate(order)}
    wbcs = [placer.specs[i] for i in order]
    rbcs, plts = scatter_red_cells((0.0, 0.0, w_um, h_um), rng, wbcs, density=float(rng.uniform(0.9, 1.1)),
                                   keep=smear.keep)
    noise_seed = int(rng.integers(2**31))
    if zones is not None:
        # thin the monolayer's red cells across the feathered edge (after the hard-core spacing, so the
        # coverage falls in proportion), then add the thick end's extra layers
        rbcs = rbcs.take(rng.uniform(0, 1, len(rbcs)) < zones.monolayer_keep(rbcs.x / w_um))
        def thick(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return smear.keep(x, y) * (x < zones.thick_end * w_um)

        layers = [scatter_red_cells((0.0, 0.0, zones.thick_end * w_um, h_um), rng, wbcs, keep=thick, platelets=False)[0]
                  for _ in range(zones.thick_layers - 1)]
        rbcs = _concat_discs([rbcs, *layers])
    scene = Scene(wbcs, rbcs, plts, stain, noise_seed=noise_seed)
    return SyntheticSlide(
        scene=scene, width=int(width), height=int(height), mpp=float(mpp), smear=smear,
        seam_ids=sorted(new_id[i] for i in seam),
        pairs=sorted(tuple(sorted((new_id[a], new_id[b]))) for a, b in pairs), zones=zones,
    )


def _check_args(width: int, height: int, n_cells: int, mpp: float, seed: int) -> None:
    if width < 256 or height < 256:
        raise WbcError(f"slide must be at least 256x256 px, got {width}x{height}")
    if width * height > 200_000 * 200_000:
        raise WbcError(f"slide of {width}x{height} px is larger than any scanner produces")
    if n_cells < 0:
        raise WbcError(f"--cells must be >= 0, got {n_cells}")
    if not (0.05 <= mpp <= 2.0):
        raise WbcError(f"--mpp must be between 0.05 and 2 um/px (scanners: 0.1-1), got {mpp}")
    if seed < 0:
        raise WbcError(f"--seed must be >= 0, got {seed}")


# -- writing ------------------------------------------------------------------------------------------------

def _level_tiles(scene: Scene, w: int, h: int, mpp: float, tile: int) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order, rendered a band (one tile row) at a time.

    Bands are rendered in a background thread (numpy releases the GIL) while the writer compresses
    the previous band's tiles, with at most two bands in flight.
    """
    n_cols, n_rows = -(-w // tile), -(-h // tile)
    band_w = n_cols * tile
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def producer() -> None:
        try:
            for r in range(n_rows):
                band = np.empty((tile, band_w, 3), dtype=np.uint8)
                for c0 in range(0, band_w, _BLOCK_PX):
                    c1 = min(band_w, c0 + _BLOCK_PX)
                    band[:, c0:c1] = scene.render(c0 * mpp, r * tile * mpp, c1 - c0, tile, mpp)
                while not stop.is_set():
                    try:
                        q.put(band, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    th = threading.Thread(target=producer, name="wbc-synth-render", daemon=True)
    th.start()
    try:
        for _ in range(n_rows):
            band = q.get()
            if isinstance(band, BaseException):
                raise band
            for c in range(n_cols):
                yield band[:, c * tile:(c + 1) * tile]
    finally:
        stop.set()
        th.join()


def _aperio_description(width: int, height: int, tile: int, mpp: float, size: tuple[int, int] | None,
                        stem: str, seed: int, n_cells: int, thumbnail: bool = False) -> str:
    head = f"Aperio Image Library v12.0.15 \r\n{width}x{height} "
    if thumbnail:
        head += f"-> {size[0]}x{size[1]} - "
    else:
        head += f"[0,0 {width}x{height}] ({tile}x{tile}) "
        if size is not None:
            head += f"-> {size[0]}x{size[1]} "
        head += "Deflate"
    app_mag = max(1, int(round(10.0 / mpp)))
    fields = [
        f"AppMag = {app_mag}", f"MPP = {mpp:.6g}", f"Filename = {stem}", "ScanScope ID = wbc-deploy-synth",
        "Synthetic = 1", f"Seed = {seed}", f"WBC = {n_cells}",
    ]
    return head + "|" + "|".join(fields)


def write_synthetic_slide(path: str | Path, width: int, height: int, n_cells: int, mpp: float = 0.25,
                          seed: int = 0, *, tile: int = TILE_PX, compression_level: int = 1,
                          progress: Callable[[int, int], None] | None = None, zones: SmearZones | None = None) -> Path:
    """Write a synthetic smear as a tiled pyramidal TIFF and its truth CSV; return the truth path.

    ``path`` ending in ``.svs`` gives an Aperio-style file, anything else a generic tiled TIFF.
    ``zones``: a thick end, monolayer and feathered edge (:class:`SmearZones`); the truth CSV then has
    a ``zone`` column (thick, monolayer or sparse) after ``label``.
    ``progress(done_tiles, total_tiles)`` is called as tiles are rendered. The same arguments give
    byte-identical files. Both files are written to temporary names and renamed when complete.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".svs", ".tif", ".tiff"):
        raise WbcError(f"{path.name}: a synthetic slide must be named .svs, .tif or .tiff")
    if tile % 16 or tile < 16:
        raise WbcError(f"tile size must be a multiple of 16, got {tile}")
    if not path.parent.is_dir():
        raise WbcError(f"output directory {path.parent} does not exist")
    slide = build_slide_scene(width, height, n_cells, mpp, seed, zones=zones)
    svs = path.suffix.lower() == ".svs"
    levels = pyramid_sizes(width, height)
    total = sum(-(-w // tile) * -(-h // tile) for w, h in levels)
    done = 0
    raw = sum(w * h * 3 for w, h in levels)
    bigtiff = raw > 2**32 - 2**26  # a deflated file is smaller, but never risk the 4 GB limit
    ppcm = 1e4 / mpp
    try:
        # the slide is renamed into place first, then its truth: a truth file always has its slide
        with atomic_path(truth_path(path)) as tmp_truth, atomic_path(path) as tmp, \
                tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            for k, (lw, lh) in enumerate(levels):
                ds = 4**k
                if svs:
                    desc = _aperio_description(width, height, tile, mpp, None if k == 0 else (lw, lh),
                                               path.stem, seed, n_cells)
                else:
                    desc = f"wbc-deploy synthetic smear level {k}: seed={seed} wbc={n_cells} mpp={mpp * ds:.6g}"

                def counted(it: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
                    nonlocal done
                    for t in it:
                        yield t
                        done += 1
                        if progress is not None:
                            progress(done, total)

                tw.write(
                    counted(_level_tiles(slide.scene, lw, lh, mpp * ds, tile)),
                    shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                    compression="zlib", compressionargs={"level": int(compression_level)},
                    description=desc, metadata=None, software="wbc-deploy",
                    resolution=(ppcm / ds, ppcm / ds), resolutionunit="CENTIMETER",
                    subfiletype=0 if (k == 0 or svs) else 1, maxworkers=2, buffersize=_ENCODE_BUFFER,
                )
                if svs and k == 0:
                    # Aperio layout: the second directory is a stripped thumbnail
                    t_ds = max(1.0, max(width, height) / 768.0)
                    tw_, th_ = max(1, int(round(width / t_ds))), max(1, int(round(height / t_ds)))
                    thumb = slide.scene.render(0.0, 0.0, tw_, th_, mpp * width / tw_)
                    tw.write(
                        thumb, photometric="rgb", compression="zlib", rowsperstrip=64,
                        description=_aperio_description(width, height, tile, mpp, (tw_, th_), path.stem, seed,
                                                        n_cells, thumbnail=True),
                        metadata=None, software="wbc-deploy",
                    )
            buf = io.StringIO()
            wr = csv.writer(buf, lineterminator="\n")
            wr.writerow(["x", "y", "label", *(["zone"] if zones is not None else [])])
            for (x, y, lab), zone in zip(slide.truth_rows(), slide.wbc_zones()):
                wr.writerow([f"{x:.2f}", f"{y:.2f}", lab, *([zone] if zones is not None else [])])
            tmp_truth.write_text(buf.getvalue())
    except OSError as exc:
        raise WbcError(f"cannot write {path}: {exc.strerror or exc}") from None
    return truth_path(path)
