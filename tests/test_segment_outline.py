"""The pieces of the final outlines: closed-contour dynamic programme, colour models, mask helpers.

All on generated data: score maps, Gaussian colour samples, random masks.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image
from skimage.segmentation import watershed

from wbc_deploy.segment import SegmentParams, core
from wbc_deploy.segment.colour import fit_colour_model
from wbc_deploy.segment.masks import convex_area, otsu, shape_stats
from wbc_deploy.segment.outline import closed_contours, contour_gain


def _disk_scores(n_angles: int, n_radii: int, radius: np.ndarray) -> np.ndarray:
    """+1 inside ``radius[a]`` (per angle), -1 outside: the contour gain of each radius."""
    r = np.arange(n_radii)[None, :]
    inside = np.where(r < radius[:, None], 1.0, -1.0)
    return contour_gain(inside, np.zeros_like(inside), r[0] * 0.25, 0.25, 0.0)


def test_closed_contour_follows_a_smooth_boundary():
    A, R = 64, 60
    th = np.arange(A) * 2 * math.pi / A
    radius = 30 + 6 * np.cos(2 * th)  # an ellipse-like star-shaped outline
    gain = _disk_scores(A, R, radius)
    got = closed_contours(gain[None], np.zeros((1, A), np.int64), max_step=2, step_cost=0.01)[0]
    assert np.abs(got + 1 - radius).max() <= 1.5  # index r: samples 0..r inside
    # closed: the first and last angle differ by no more than the allowed step
    assert abs(int(got[0]) - int(got[-1])) <= 2


def test_closed_contour_encloses_the_nucleus_and_respects_the_step_limit():
    A, R = 48, 40
    rng = np.random.default_rng(0)
    gain = _disk_scores(A, R, np.full(A, 10.0)) + rng.normal(0, 0.2, (A, R)).cumsum(axis=1)
    mins = np.full(A, 5)
    mins[10:14] = 25  # the nucleus reaches far on a few rays
    got = closed_contours(np.stack([gain, gain]), np.stack([mins, np.zeros(A, np.int64)]), max_step=3, step_cost=0.5)
    assert (got[0] >= mins).all()
    for path in got:
        steps = np.abs(np.diff(np.r_[path, path[0]]))
        assert steps.max() <= 3
    assert (got[1][:8] <= 11).all()  # the second cell, unconstrained, keeps its own radius


def test_convex_area_equals_scikit_image_hull():
    rng = np.random.default_rng(1)
    from skimage.draw import ellipse

    for _ in range(60):
        m = np.zeros((50, 60), bool)
        for _ in range(int(rng.integers(1, 4))):
            rr, cc = ellipse(rng.uniform(8, 42), rng.uniform(8, 52), rng.uniform(1, 12), rng.uniform(1, 12),
                             shape=m.shape, rotation=rng.uniform(0, 3))
            m[rr, cc] = True
        assert convex_area(m) == int(convex_hull_image(m).sum())
    line = np.zeros((5, 9), bool)
    line[2, 1:8] = True
    assert convex_area(line) == 7
    assert shape_stats(line)[0] == pytest.approx(1.0)


def _reference_merge(regions, chrom, work_mpp, params):
    """_merge_by_chromatin as it was (quadratic loops), for the equivalence test."""
    thick = ndi.binary_opening(chrom, structure=core._disk(core.THICK_CHROMATIN_UM / work_mpp))
    comp, n = core._label(thick)
    sel = (comp > 0) & (regions > 0)
    if n == 0 or not sel.any():
        return regions
    pairs, counts = core._pair_counts(comp[sel], regions[sel])
    own = np.bincount(regions[chrom & (regions > 0)], minlength=int(regions.max()) + 1)
    remap = np.arange(int(regions.max()) + 1)
    for c in np.unique(pairs[0]):
        idx = pairs[0] == c
        if idx.sum() < 2:
            continue
        labs, cnt = pairs[1, idx], counts[idx]
        owner = labs[np.argmax(cnt)]
        for lab, k in zip(labs, cnt):
            if lab != owner and k < 0.35 * cnt.sum() and k >= 0.5 * own[lab]:
                remap[remap == lab] = remap[owner]
    return remap[regions]


def test_merge_by_chromatin_equals_the_quadratic_original():
    rng = np.random.default_rng(1)
    params = SegmentParams()
    merged = 0
    for _ in range(150):
        chrom = ndi.binary_dilation(rng.random((60, 60)) < 0.02, iterations=int(rng.integers(2, 6)))
        seeds = np.zeros((60, 60), int)
        k = int(rng.integers(2, 12))
        seeds[rng.integers(0, 60, k), rng.integers(0, 60, k)] = np.arange(1, k + 1)
        regions = watershed(np.zeros((60, 60)), seeds).astype(np.int32)
        regions[rng.random((60, 60)) < 0.05] = 0
        want = _reference_merge(regions, chrom, 0.25, params)
        merged += bool((want != regions).any())
        assert np.array_equal(core._merge_by_chromatin(regions, chrom, 0.25, params), want)
    assert merged >= 20


def _samples(rng, n, mean, sd):
    return np.clip(rng.normal(mean, sd, (n, 3)), 0, None)


def test_colour_model_tells_cytoplasm_from_red_cells_and_glass():
    rng = np.random.default_rng(2)
    glass = _samples(rng, 3000, (0.0, 0.0, 0.0), 0.006)
    cyto = _samples(rng, 800, (0.20, 0.15, 0.05), 0.02)  # bluish: absorbs red
    rbc = _samples(rng, 2000, (0.05, 0.25, 0.22), 0.02)  # pink: absorbs green and blue
    od = np.concatenate([glass, cyto, rbc])
    dist = np.concatenate([rng.uniform(0, 15, 3000), rng.uniform(0.5, 3.0, 800), rng.uniform(0.5, 15, 2000)])
    axis = np.array([[1.0, 0.2, -0.5], [-0.4, 0.6, 0.6]])  # nucleus-stain share grows with red absorption
    m = fit_colour_model(od, dist, blue_axis=axis)
    assert m.cytoplasm is not None and m.other is not None
    assert (m.cytoplasm_score(cyto) > 0).mean() > 0.95
    assert (m.cytoplasm_score(rbc) < 0).mean() > 0.95
    assert (~m.stained(glass)).mean() > 0.98


def test_colour_model_with_one_stained_population():
    rng = np.random.default_rng(3)
    axis = np.array([[1.0, 0.2, -0.5], [-0.4, 0.6, 0.6]])
    # a WBC alone on glass: all stained matter lies near chromatin and is cytoplasm
    od = np.concatenate([_samples(rng, 3000, (0, 0, 0), 0.006), _samples(rng, 800, (0.15, 0.15, 0.08), 0.02)])
    dist = np.concatenate([rng.uniform(3, 15, 3000), rng.uniform(0.5, 3.5, 800)])
    m = fit_colour_model(od, dist, blue_axis=axis)
    assert m.other is None and (m.cytoplasm_score(od[3000:]) > 0).mean() > 0.95
    # a thin-rimmed cell among red cells that cover the glass far from it: the population is "other"
    rbc = _samples(rng, 3000, (0.05, 0.25, 0.22), 0.02)
    od = np.concatenate([_samples(rng, 1000, (0, 0, 0), 0.006), rbc])
    dist = np.concatenate([rng.uniform(0, 15, 1000), rng.uniform(0.5, 15, 3000)])
    m = fit_colour_model(od, dist, blue_axis=axis)
    assert m.other is not None and (m.cytoplasm_score(rbc) < 0).mean() > 0.95


def test_otsu_equals_scikit_image():
    rng = np.random.default_rng(4)
    for _ in range(100):
        v = np.concatenate([rng.normal(rng.uniform(0, 1), rng.uniform(0.01, 0.3), int(rng.integers(10, 2000))),
                            rng.normal(rng.uniform(0, 1), 0.1, int(rng.integers(10, 2000)))]).astype(np.float32)
        assert otsu(v) == pytest.approx(float(threshold_otsu(v)), rel=1e-6, abs=1e-7)
    assert otsu(np.full(10, 0.3)) == pytest.approx(0.3)
