"""Physical scale in training, evaluation and counting (``--mpp``), calibration in the card, fine-tuning.

The same cell must look the same to the model whether it comes through ``train --mpp``, ``evaluate --mpp``
or ``count`` (a crop of a slide): one cutting function, one preprocessing.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from wbc_deploy.card import ModelCard
from wbc_deploy.data.transforms import eval_transform, finish_batch, train_transform
from wbc_deploy.pipeline.detect import crop_fill, read_crop
from wbc_deploy.pipeline.options import CountOptions
from wbc_deploy.pipeline.plan import plan_scan
from wbc_deploy.pipeline.scale import thumbnail
from wbc_deploy.preprocess import prepare_batch, prepare_resized
from wbc_deploy.slide import open_slide
from wbc_deploy.slide.crop import image_field

try:
    from test_train_common import TINY, run_cli, tiny_cells, tiny_run
except ImportError:  # tests/ as a package
    from .test_train_common import TINY, run_cli, tiny_cells, tiny_run


def _smear_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (no flat regions), so any shift or rescale of a crop shows."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w + 16, h + 16), Image.BICUBIC))[8 : 8 + h, 8 : 8 + w].copy()


@pytest.mark.parametrize("mpp, shape", [(0.1, (363, 360)), (0.15, (120, 120)), (0.074, (480, 640))])
@pytest.mark.parametrize("stain", ["none", "glass"])
def test_the_same_cell_gives_the_same_input_in_train_evaluate_and_count(tmp_path, mpp, shape, stain):
    """At the image centre: the training/validation transform, evaluate's field and count's crop of the image
    read as a one-level slide are the same numbers (24 um field; smaller images are mirrored at the border)."""
    rgb = _smear_like(*shape)
    path = tmp_path / "cell.png"
    Image.fromarray(rgb).save(path)
    card = ModelCard(arch="x", classes=["lymphocyte", "neutrophil"], input_size=64, fov_um=24.0, stain={"normalise": stain})
    # training's validation/test path (and the unaugmented training path)
    trained = eval_transform(card, mpp)(Image.open(path)).numpy()
    ctx = train_transform(card, mpp)(Image.open(path))
    assert ctx.shape == (3, 96, 96)  # 1.5 fields of context for augmentation
    # evaluate --mpp
    evaluated = prepare_batch([image_field(rgb, mpp, 24.0, 64)], card)[0]
    # count: the image as a slide, the crop centred on the image centre
    with open_slide(path, mpp=mpp) as reader:
        plan = plan_scan(reader, mpp, card, CountOptions(workers=1), thumbnail(reader, 256))
        h, w = shape
        counted = prepare_resized(read_crop(reader, plan.crop, w / 2, h / 2, crop_fill(reader, plan))[None], card)[0]
    assert plan.crop.side == round(24.0 / mpp)
    np.testing.assert_array_equal(trained, evaluated)
    np.testing.assert_array_equal(evaluated, counted)


def test_the_field_spans_the_field_of_view_at_any_scale():
    """A disc of 10 um diameter fills the same share of the model's view at 0.1 and at 0.2 um/px."""
    shares = []
    for mpp in (0.1, 0.2):
        n = int(round(40 / mpp))
        yy, xx = np.mgrid[:n, :n] + 0.5
        rgb = np.full((n, n, 3), 230, np.uint8)
        rgb[np.hypot(yy - n / 2, xx - n / 2) < 5.0 / mpp] = 40
        view = image_field(rgb, mpp, 24.0, 96)
        dark = view[..., 0] < 135
        ys, xs = np.nonzero(dark)
        assert abs(ys.mean() - 47.5) < 0.6 and abs(xs.mean() - 47.5) < 0.6  # centred
        shares.append(dark.mean())
    expected = np.pi * 5.0**2 / 24.0**2
    assert shares == pytest.approx([expected, expected], abs=0.01)


def test_finish_batch_rounds_like_a_camera_then_applies_the_cards_preprocessing():
    card = ModelCard(arch="x", classes=["a_cls", "b_cls"], input_size=8, stain={"normalise": "glass"})
    x = torch.rand(2, 3, 8, 8)
    u8 = (x * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert torch.equal(finish_batch(x, card), torch.from_numpy(prepare_resized(u8, card)))


@pytest.fixture(scope="module")
def mpp_run(tmp_path_factory):
    """One epoch with --mpp, stain augmentation and glass normalisation on the tiny synthetic cells."""
    cells = tiny_cells(tmp_path_factory)
    run = tmp_path_factory.mktemp("mpp") / "run"
    args = ["train", cells, "--out", run, "--epochs", "1", "--mpp", "0.75", "--colour-aug", "stain", "--stain", "glass", *TINY]
    from wbc_deploy.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        raise AssertionError(f"train exited with {exc.code}") from None
    return run


def test_train_with_mpp_records_the_scale_the_stain_and_the_calibration(mpp_run):
    card = json.loads((mpp_run / "card.json").read_text())
    assert card["train_mpp"] == 0.75 and card["fov_um"] == 24.0
    assert card["stain"] == {"normalise": "glass"}
    assert card["temperature"] > 0 and card["confidence_threshold"] == 0.5
    hp = card["training"]["hyperparameters"]
    assert hp["colour_aug"] == "stain" and hp["scale_jitter"] == 0.15 and hp["mpp"] == 0.75
    cal = card["metrics"]["val"]["calibration"]
    assert set(cal) >= {"ece_uncalibrated", "ece_calibrated", "unidentified_rate", "oa_identified", "threshold"}


def test_evaluate_with_mpp_reports_calibration_and_unidentified(mpp_run, tmp_path_factory, tmp_path, capsys):
    cells = tiny_cells(tmp_path_factory)
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(["evaluate", mpp_run, cells, "--out", out, "--mpp", "0.75", "-q"], capsys)
    assert code == 0, err
    m = json.loads(out.read_text())
    assert m["mpp"] == 0.75
    cal = m["calibration"]
    card = json.loads((mpp_run / "card.json").read_text())
    assert cal["temperature"] == pytest.approx(card["temperature"]) and cal["threshold"] == 0.5
    assert 0.0 <= cal["unidentified_rate"] <= 1.0 and cal["n_identified"] <= m["n"]
    assert "unidentified (confidence < 0.5)" in stdout


def test_fine_tuning_from_a_model_with_other_classes(tmp_path_factory, tmp_path, capsys):
    """--init keeps MODEL's architecture and preprocessing; a class set without one of MODEL's classes gets a new head."""
    init = tiny_run(tmp_path_factory)
    cells = tiny_cells(tmp_path_factory)
    three = tmp_path / "three"
    for cls in ("eosinophil", "lymphocyte", "neutrophil"):
        (three / cls).mkdir(parents=True)
        for p in sorted((cells / cls).glob("*.png"))[:8]:
            (three / cls / p.name).write_bytes(p.read_bytes())
    run = tmp_path / "ft"
    code, _, err = run_cli(["train", three, "--out", run, "--init", init, "--epochs", "1", "--lr", "1e-4", "-q",
                            "--batch-size", "8"], capsys)
    assert code == 0, err
    card = json.loads((run / "card.json").read_text())
    base = json.loads((init / "card.json").read_text())
    assert card["classes"] == ["eosinophil", "lymphocyte", "neutrophil"]
    assert (card["arch"], card["input_size"], card["fov_um"]) == (base["arch"], base["input_size"], base["fov_um"])
    assert card["training"]["hyperparameters"]["init"] == str(init)
