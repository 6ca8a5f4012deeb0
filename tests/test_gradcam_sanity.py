"""Grad-CAM sanity checks with a margin (Adebayo et al. 2018, model randomisation), on the shared trained model.

The single-seed check in test_explain.py compares the trained model's heatmaps with one re-initialised
model's: its mean Spearman rho went from 0.06-0.15 to 0.43 against a 0.5 limit after one retrain. One
random model is a noisy reference: over four re-initialisations of a model trained like the fixture, the
mean rho was -0.13, 0.16, 0.29 and 0.39 for the same 20 fields. Here the reference is the average over
four re-initialised models, each explaining the class the trained model predicts (so only the weights
differ): measured 0.19 (0.08-0.30 per model). A Grad-CAM that dropped the gradient weighting (plain or
absolute channel weights) gave 0.45-0.46 there, while the single-seed check still passed (0.48-0.50 < 0.5).
A second, independent measure: the share of heatmap mass on the cell must drop clearly when the weights
are random (trained 0.66, random 0.25-0.48, mean 0.34: a gap of 0.31 against a 0.15 limit).
Figures from a wbcnet-tiny trained like the shared fixture (tiny preset, 7 epochs), 2-core VM.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from wbc_deploy.classes import CLASSES
from wbc_deploy.data.synth_cells import render_field
from wbc_deploy.explain.gradcam import GradCAM, upsample_cam
from wbc_deploy.explain.run import load_explainable
from wbc_deploy.model import build_from_card
from wbc_deploy.preprocess import prepare_batch

SEEDS = (1, 2, 3, 1234)
#: Mean rho (trained vs re-initialised, four seeds, same target): measured 0.19; random single seeds reach 0.39.
MAX_MEAN_RHO = 0.4
#: Heatmap mass on the cell, trained minus the randomised models' mean: measured 0.31.
MIN_MASS_GAP = 0.15


@pytest.fixture(scope="module")
def fields():
    """Twenty 24 um fields (four per class) with one WBC in the centre, and its mask dilated by 1 um."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(4):
        for c in CLASSES:
            rgb, cells, _nuclei, _truth = render_field(96, 96, 0.25, [(c, 48, 48)], rng)
            out.append((rgb, ndimage.binary_dilation(cells == 1, iterations=4)))
    return out


def _cams(model, card, images, target=None):
    res = GradCAM(model, None, card.input_size)(prepare_batch(images, card), target)
    return res, [upsample_cam(res.maps[i], im.shape[:2]) for i, im in enumerate(images)]


def _mean_rho(a, b) -> float:
    rhos = [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]
    return float(np.mean([0.0 if np.isnan(r) else r for r in rhos]))


def _mass_on_cell(cams, fields) -> float:
    return float(np.mean([cam[region].sum() / max(float(cam.sum()), 1e-12) for cam, (_, region) in zip(cams, fields)]))


@pytest.fixture(scope="module")
def heatmaps(trained_run, fields):
    model, card = load_explainable(trained_run)
    images = [f[0] for f in fields]
    res, trained = _cams(model, card, images)
    randomised = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        randomised.append(_cams(build_from_card(card).eval(), card, images, list(res.targets))[1])
    return trained, randomised


def test_heatmaps_of_random_weights_are_unlike_the_trained_ones_on_average(heatmaps):
    trained, randomised = heatmaps
    rhos = [_mean_rho(trained, r) for r in randomised]
    assert np.mean(rhos) < MAX_MEAN_RHO, rhos
    assert all(_mean_rho(trained, t) > 0.999 for t in [trained])  # the measure itself: identical maps give 1


def test_random_weights_lose_the_heatmaps_focus_on_the_cell(heatmaps, fields):
    trained, randomised = heatmaps
    on_cell = _mass_on_cell(trained, fields)
    random_on_cell = [_mass_on_cell(r, fields) for r in randomised]
    assert on_cell - np.mean(random_on_cell) >= MIN_MASS_GAP, (on_cell, random_on_cell)
