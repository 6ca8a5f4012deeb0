"""WBC segmentation on synthetic smears rendered by the project's scene model (no real data).

Scenes hold WBCs of every class on a grid, a quarter of the grid points holding a touching pair
(outlines touching with a little overlap, nuclei at least 1.5 um apart, as the synthetic slides
place them), among red cells and platelets, with a random stain. Each scene is rendered at
0.25 um/px (a scan) and 1.0 um/px (the pyramid level the slide pipeline detects on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from wbc_deploy.data.synth_cells import (
    RBC_DIAMETER_UM,
    Scene,
    Stain,
    WbcSpec,
    make_wbc,
    render_field,
    scatter_red_cells,
)
from wbc_deploy.segment import SegmentParams, estimate_mpp, segment_wbcs

CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
RESOLUTIONS = (0.25, 1.0)
MATCH_UM = 5.0


@dataclass
class Field:
    mpp: float
    specs: list[WbcSpec]
    pairs: list[tuple[int, int]]  # 0-based indices into specs
    rgb: np.ndarray
    cells: np.ndarray  # true whole-cell labels (spec k -> k + 1)
    nuclei: np.ndarray  # true nucleus labels


def _nucleus_points(spec: WbcSpec, step: float = 0.25) -> np.ndarray:
    g = np.arange(-spec.extent_um, spec.extent_um, step)
    dx, dy = np.meshgrid(g, g)
    inside = spec.nucleus_sdf(dx, dy) <= 0
    return np.stack([dx[inside] + spec.x_um, dy[inside] + spec.y_um], axis=1)


def _scene(seed: int, n_side: int = 5, spacing_um: float = 40.0, pair_every: int = 4,
           ) -> tuple[Scene, list[WbcSpec], list[tuple[int, int]], float]:
    """A grid of WBCs (classes in turn), every ``pair_every``-th grid point a touching pair."""
    rng = np.random.default_rng(seed)
    specs: list[WbcSpec] = []
    pairs: list[tuple[int, int]] = []
    for i in range(n_side):
        for j in range(n_side):
            k = i * n_side + j
            cx = (j + 0.5) * spacing_um + rng.uniform(-4, 4)
            cy = (i + 0.5) * spacing_um + rng.uniform(-4, 4)
            a = make_wbc(CLASSES[(k + seed) % 5], cx, cy, rng)
            if k % pair_every != 0:
                specs.append(a)
                continue
            for _ in range(100):
                b = make_wbc(CLASSES[int(rng.integers(5))], 0.0, 0.0, rng)
                t = rng.uniform(0, 2 * np.pi)
                d = a.radius_at(t) + b.radius_at(t + np.pi) - rng.uniform(0.3, 0.8)
                b = b.moved(cx + d * math.cos(t), cy + d * math.sin(t))
                if cKDTree(_nucleus_points(a)).query(_nucleus_points(b))[0].min() >= 1.5:
                    break
            specs += [a, b]
            pairs.append((len(specs) - 2, len(specs) - 1))
    size = n_side * spacing_um
    m = RBC_DIAMETER_UM[1]
    rbcs, platelets = scatter_red_cells((-m, -m, size + m, size + m), rng, specs)
    scene = Scene(specs, rbcs, platelets, Stain.random(rng), noise_seed=int(rng.integers(2**31)))
    return scene, specs, pairs, size


@pytest.fixture(scope="session")
def fields() -> dict[float, list[Field]]:
    """Three scenes, each rendered at 0.25 and 1.0 um/px."""
    out: dict[float, list[Field]] = {mpp: [] for mpp in RESOLUTIONS}
    for seed in (1, 2, 3):
        scene, specs, pairs, size = _scene(seed)
        for mpp in RESOLUTIONS:
            n = int(round(size / mpp))
            rgb, cells, nuclei = scene.render(0.0, 0.0, n, n, mpp, with_masks=True)
            out[mpp].append(Field(mpp, specs, pairs, rgb, cells, nuclei))
    return out


@pytest.fixture(scope="session")
def segmented(fields) -> dict[float, list]:
    return {mpp: [segment_wbcs(f.rgb, f.mpp) for f in fs] for mpp, fs in fields.items()}


def _match(field: Field, seg) -> tuple[int, dict[int, int]]:
    """One-to-one matching of true centres and detections within MATCH_UM: (matches, truth -> cell id)."""
    truth = np.array([(s.x_um, s.y_um) for s in field.specs]) / field.mpp
    det = np.array([(c.x, c.y) for c in seg.cells]).reshape(-1, 2)
    if len(det) == 0:
        return 0, {}
    dist = np.hypot(truth[:, None, 0] - det[None, :, 0], truth[:, None, 1] - det[None, :, 1]) * field.mpp
    rows, cols = linear_sum_assignment(dist)
    ok = dist[rows, cols] <= MATCH_UM
    return int(ok.sum()), {int(r): seg.cells[c].cell_id for r, c, good in zip(rows, cols, ok) if good}


#: Required detection recall and precision (match within 5 um) per resolution. 0.98 is the slide
#: pipeline's target; at 1 um/px a touching pair is a few pixels wide and is sometimes found as one
#: cell (the pipeline reads such windows again at full resolution), so all cells only need 0.93
#: there, while cells that touch no other WBC must still reach 0.98.
TARGETS = {0.25: (0.98, 0.98), 1.0: (0.93, 0.98)}


@pytest.mark.parametrize("mpp", RESOLUTIONS)
def test_detection_recall_and_precision(fields, segmented, mpp):
    n_true = n_det = n_match = n_single = n_single_found = 0
    for field, seg in zip(fields[mpp], segmented[mpp]):
        m, matched = _match(field, seg)
        n_true += len(field.specs)
        n_det += len(seg.cells)
        n_match += m
        in_pair = {k for pair in field.pairs for k in pair}
        singles = [k for k in range(len(field.specs)) if k not in in_pair]
        n_single += len(singles)
        n_single_found += sum(k in matched for k in singles)
    assert n_true >= 90 and n_single >= 50
    overall, single = TARGETS[mpp]
    assert n_match / n_true >= overall, f"recall {n_match}/{n_true}"
    assert n_match / n_det >= 0.98, f"precision {n_match}/{n_det}"
    assert n_single_found / n_single >= single, f"recall of isolated WBCs {n_single_found}/{n_single}"


def _ids_on_nucleus(field: Field, seg, k: int) -> set[int]:
    """Detected cell ids covering a real share (>10%) of true cell k's nucleus."""
    ids, counts = np.unique(seg.labels[field.nuclei == k + 1], return_counts=True)
    total = counts.sum()
    return {int(i) for i, c in zip(ids, counts) if i > 0 and c > 0.1 * total}


@pytest.mark.parametrize("mpp", RESOLUTIONS)
def test_lobed_neutrophils_and_bilobed_eosinophils_stay_one_cell(fields, segmented, mpp):
    checked = 0
    for field, seg in zip(fields[mpp], segmented[mpp]):
        _, matched = _match(field, seg)
        in_pair = {k for pair in field.pairs for k in pair}
        for k, spec in enumerate(field.specs):
            lobed = (spec.label == "neutrophil" and len(spec.lobes) >= 3) or (spec.label == "eosinophil" and len(spec.lobes) == 2)
            if not lobed:
                continue
            where = f"{spec.label} with {len(spec.lobes)} lobes at ({spec.x_um:.0f}, {spec.y_um:.0f}) um"
            assert len(_ids_on_nucleus(field, seg, k)) <= 1, f"{where} split into several cells"
            if k in in_pair:
                continue
            checked += 1
            assert k in matched, f"{where} not found"
            assert _ids_on_nucleus(field, seg, k) == {matched[k]}
            inside = {c.cell_id for c in seg.cells if _at(field.cells, c.x, c.y) == k + 1}
            assert inside == {matched[k]}, f"{where}: {len(inside)} detections inside it"
    assert checked >= 6


def _at(image: np.ndarray, x: float, y: float):
    return image[min(int(round(y)), image.shape[0] - 1), min(int(round(x)), image.shape[1] - 1)]


@pytest.mark.parametrize("mpp, required", [(0.25, 0.85), (1.0, 0.7)])
def test_touching_wbcs_become_two(fields, segmented, mpp, required):
    n_pairs = n_split = 0
    for field, seg in zip(fields[mpp], segmented[mpp]):
        _, matched = _match(field, seg)
        for a, b in field.pairs:
            n_pairs += 1
            if a in matched and b in matched:
                assert matched[a] != matched[b]
                assert _ids_on_nucleus(field, seg, a) == {matched[a]}
                assert _ids_on_nucleus(field, seg, b) == {matched[b]}
                n_split += 1
    assert n_pairs >= 18
    assert n_split / n_pairs >= required, f"{n_split}/{n_pairs} touching pairs split"


@pytest.mark.parametrize("mpp", RESOLUTIONS)
def test_red_cells_only_give_no_wbc(mpp):
    for seed in (1, 2):
        n = int(round(120 / mpp))
        rgb, _cells, _nuclei, truth = render_field(n, n, mpp, [], np.random.default_rng(seed))
        assert truth == []
        seg = segment_wbcs(rgb, mpp)
        assert seg.cells == []
        assert not seg.labels.any() and not seg.nuclei.any()


def test_blank_glass_gives_no_wbc():
    seg = segment_wbcs(np.full((64, 80, 3), 235, np.uint8), 0.5)
    assert seg.cells == [] and seg.labels.shape == (64, 80) and seg.labels.dtype == np.int32


@pytest.mark.parametrize("mpp", RESOLUTIONS)
def test_labels_nuclei_and_cells_are_consistent(fields, segmented, mpp):
    field, seg = fields[mpp][0], segmented[mpp][0]
    n = len(seg.cells)
    assert n > 0
    assert seg.labels.dtype == np.int32 and seg.nuclei.dtype == np.int32
    assert seg.labels.shape == field.rgb.shape[:2] == seg.nuclei.shape
    assert [c.cell_id for c in seg.cells] == list(range(1, n + 1))
    assert set(np.unique(seg.labels)) == set(range(n + 1))
    assert set(np.unique(seg.nuclei)) == set(range(n + 1))
    # nucleus pixels of cell k lie inside cell k
    nz = seg.nuclei > 0
    assert np.array_equal(seg.nuclei[nz], seg.labels[nz])
    ys, xs = [c.y for c in seg.cells], [c.x for c in seg.cells]
    assert sorted(zip(ys, xs)) == list(zip(ys, xs))  # ids ordered by centroid row, then column
    for c in seg.cells:
        mask = seg.labels == c.cell_id
        rows, cols = np.nonzero(mask)
        assert c.bbox == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert c.x == pytest.approx(cols.mean()) and c.y == pytest.approx(rows.mean())
        assert c.area_um2 == pytest.approx(mask.sum() * mpp * mpp)
        assert c.nucleus_area_um2 == pytest.approx((seg.nuclei == c.cell_id).sum() * mpp * mpp)
        assert 0 < c.nucleus_area_um2 < c.area_um2


def test_cell_areas_are_physical_at_both_resolutions(fields, segmented):
    """Isolated cells measured at 0.25 and 1.0 um/px: areas in um^2 agree with the true outlines."""
    ratios = {}
    for mpp in RESOLUTIONS:
        ratios[mpp] = []
        for field, seg in zip(fields[mpp], segmented[mpp]):
            _, matched = _match(field, seg)
            in_pair = {k for pair in field.pairs for k in pair}
            for k, cid in matched.items():
                if k not in in_pair:
                    ratios[mpp].append(seg.cells[cid - 1].area_um2 / ((field.cells == k + 1).sum() * mpp * mpp))
    for mpp, r in ratios.items():
        r = np.asarray(r)
        assert 0.85 <= np.median(r) <= 1.15, mpp
        assert np.mean((r > 0.6) & (r < 1.5)) >= 0.9, mpp


@pytest.mark.parametrize("mpp", (0.25, 0.5, 1.0))
def test_estimate_mpp_within_15_percent(mpp):
    rgb, *_ = render_field(int(round(150 / mpp)), int(round(150 / mpp)), mpp,
                           [("neutrophil", 40 / mpp, 40 / mpp), ("lymphocyte", 110 / mpp, 100 / mpp)],
                           np.random.default_rng(7))
    est = estimate_mpp(rgb)
    assert est is not None
    assert abs(est / mpp - 1) <= 0.15


def test_estimate_mpp_declines_without_red_cells():
    assert estimate_mpp(np.full((200, 200, 3), 230, np.uint8)) is None


def _crowded_field(mpp: float, seed: int, size_um: float = 150.0) -> np.ndarray:
    """Red cells in chains of 2-4 (centres 5.5-6.5 um apart: each overlaps its neighbours, none is
    isolated), slightly oval, with pallor, on a 22 um grid; one neutrophil; a random stain."""
    from wbc_deploy.data.synth_cells import DiscSet

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for gy in np.arange(11.0, size_um, 22.0):
        for gx in np.arange(11.0, size_um, 22.0):
            x, y, t = gx + rng.uniform(-3, 3), gy + rng.uniform(-3, 3), rng.uniform(0, math.pi)
            for _ in range(int(rng.integers(2, 5))):
                xs.append(x)
                ys.append(y)
                t += rng.uniform(-0.6, 0.6)
                step = rng.uniform(5.5, 6.5)
                x, y = x + step * math.cos(t), y + step * math.sin(t)
    n = len(xs)
    r = rng.uniform(*RBC_DIAMETER_UM, n) / 2
    aspect = np.sqrt(rng.uniform(1.0, 1.2, n))
    angle = rng.uniform(0, math.pi, n)
    rbcs = DiscSet(x=np.array(xs), y=np.array(ys), a=r * aspect, b=r / aspect, cos=np.cos(angle), sin=np.sin(angle),
                   amp=rng.uniform(0.85, 1.1, n), pallor=rng.uniform(0.45, 0.75, n), pallor_r=rng.uniform(0.4, 0.6, n))
    wbcs = [make_wbc("neutrophil", size_um / 2, size_um / 2, rng)]
    scene = Scene(wbcs, rbcs, None, Stain.random(rng), noise_seed=int(rng.integers(2**31)))
    side = int(round(size_um / mpp))
    return scene.render(0.0, 0.0, side, side, mpp)


@pytest.mark.parametrize("mpp", (0.25, 0.5))
@pytest.mark.parametrize("seed", (1, 2))
def test_estimate_mpp_on_crowded_fields_within_15_percent(mpp, seed):
    from wbc_deploy.segment.scale import _isolated_diameter
    from wbc_deploy.segment.stain import densities, estimate_background

    rgb = _crowded_field(mpp, seed)
    params = SegmentParams()
    nuc, _eos, total = densities(rgb, estimate_background(rgb), params)
    assert _isolated_diameter(nuc, total, params, 5) is None  # the isolated-cell method alone declines here
    est = estimate_mpp(rgb)
    assert est is not None
    assert abs(est / mpp - 1) <= 0.15


@pytest.mark.parametrize("mpp", (0.25, 0.5, 1.0))
def test_estimate_mpp_declines_on_white_cells_without_red_cells(mpp):
    for seed in (1, 2, 3):
        rng = np.random.default_rng(seed)
        wbcs = [make_wbc(CLASSES[(i + j) % 5], 15 + 30 * i + rng.uniform(-3, 3), 15 + 30 * j + rng.uniform(-3, 3), rng)
                for i in range(5) for j in range(5)]
        side = int(round(150 / mpp))
        rgb = Scene(wbcs, None, None, Stain.random(rng), noise_seed=seed).render(0.0, 0.0, side, side, mpp)
        assert estimate_mpp(rgb) is None, seed


def test_bad_inputs_raise_clear_errors():
    rgb = np.full((32, 32, 3), 230, np.uint8)
    for bad in (0, -1.0, float("nan"), float("inf"), None, "0.25"):
        with pytest.raises(ValueError, match="mpp"):
            segment_wbcs(rgb, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="RGB"):
        segment_wbcs(np.zeros((32, 32), np.uint8), 0.5)


def test_parameters_are_physical():
    """Raising the minimum nucleus area above every real nucleus removes every cell."""
    rgb, *_ = render_field(240, 240, 0.25, [("lymphocyte", 120, 120)], np.random.default_rng(3))
    assert len(segment_wbcs(rgb, 0.25)) == 1
    assert len(segment_wbcs(rgb, 0.25, SegmentParams(nucleus_area_min_um2=500.0, nucleus_area_max_um2=600.0))) == 0


def test_dome_reconstruction_matches_scikit_image():
    """The fast reconstruction (scikit-image's loop, one stable sort) equals the public function."""
    from scipy import ndimage as ndi
    from skimage.morphology import reconstruction

    from wbc_deploy.segment import core

    rng = np.random.default_rng(7)
    blobs = ndi.gaussian_filter(rng.random((96, 128)), 4) > 0.5
    dist = ndi.distance_transform_edt(blobs).round(1)  # long runs of equal values, as in real maps
    expected = reconstruction(dist - 1.5, dist, method="dilation")
    assert np.allclose(core._domes(dist, 1.5), expected)
    moat = np.zeros_like(blobs)
    moat[:, 60:62] = True
    walled = core._domes(dist, 1.5, moat)
    low = -1.5 - 1.0
    expected_walled = reconstruction(np.where(moat, low, dist - 1.5), np.where(moat, low, dist), method="dilation")
    assert np.allclose(walled, expected_walled)


@pytest.mark.parametrize("mpp", RESOLUTIONS)
def test_segment_fields_batch_equals_one_field_at_a_time(fields, segmented, mpp):
    """A batch (with an empty field first, which records no working scale) gives each field's own result."""
    from wbc_deploy.segment import core

    batch = core.segment_fields([np.zeros((0, 0, 3), np.uint8), *[f.rgb for f in fields[mpp]]], mpp)
    assert batch[0].cells == [] and batch[0].labels.shape == (0, 0)
    for got, alone in zip(batch[1:], segmented[mpp]):
        assert np.array_equal(got.labels, alone.labels) and np.array_equal(got.nuclei, alone.nuclei)
        assert got.cells == alone.cells


def _touching_pair(first: str, second: str, seed: int) -> tuple[np.ndarray, list[WbcSpec]]:
    """A 40 um field at 0.25 um/px: WBCs of two kinds touching at its centre, among red cells."""
    rng = np.random.default_rng(seed)
    a = make_wbc(first, 20.0, 20.0, rng)
    for _ in range(100):
        b = make_wbc(second, 0.0, 0.0, rng)
        t = rng.uniform(0, 2 * np.pi)
        d = a.radius_at(t) + b.radius_at(t + np.pi) - rng.uniform(0.3, 0.8)
        b = b.moved(20.0 + d * math.cos(t), 20.0 + d * math.sin(t))
        if cKDTree(_nucleus_points(a)).query(_nucleus_points(b))[0].min() >= 1.5:
            break
    shift = 20.0 - 0.5 * (a.x_um + b.x_um), 20.0 - 0.5 * (a.y_um + b.y_um)
    a, b = (s.moved(s.x_um + shift[0], s.y_um + shift[1]) for s in (a, b))
    m = RBC_DIAMETER_UM[1]
    rbcs, platelets = scatter_red_cells((-m, -m, 40.0 + m, 40.0 + m), rng, [a, b])
    scene = Scene([a, b], rbcs, platelets, Stain.random(rng), noise_seed=int(rng.integers(2**31)))
    return scene.render(0.0, 0.0, 160, 160, 0.25), [a, b]


@pytest.mark.parametrize("kinds", [("neutrophil", "monocyte"), ("neutrophil", "eosinophil"),
                                   ("lymphocyte", "neutrophil")])
def test_touching_wbcs_of_different_colours_are_both_found(kinds):
    """One field, two cytoplasm colours: the field's colour model fits one of them, and the other
    cell must still get its own cytoplasm (found, not dropped as a bare nucleus)."""
    found = 0
    for seed in range(6):
        rgb, specs = _touching_pair(*kinds, seed)
        seg = segment_wbcs(rgb, 0.25)
        det = np.array([(c.x, c.y) for c in seg.cells]).reshape(-1, 2) * 0.25
        found += sum(bool(len(det)) and float(np.hypot(*(det - (s.x_um, s.y_um)).T).min()) <= MATCH_UM
                     for s in specs)
    assert found == 12, f"{found} of 12 {kinds[0]}-{kinds[1]} pair cells found"
