"""The crop `count` gives the model is centred on the cell and spans exactly the card's field of view, whatever
the scan's microns per pixel.

A field is rendered with one WBC at a known position and size (``render_field``: centre and diameter in
physical units, plus its mask), at 0.25 and at 0.5 um/px, saved as a PNG and counted with ``--mpp``. The
crops are the real inputs of a real ONNX Runtime session: the backend is an ``OrtBackend`` that also keeps a
copy of each batch it runs. Each crop must equal (to the uint8 rounding of the normalisation) the card's
``fov_um`` square around the cell's cells.csv position, cut and resized here with Pillow; that position
must lie on the cell's true centre; and the cell's mask, cut the same way, must be centred in the crop and
as wide, in crop pixels, as its diameter over the field of view.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from wbc_deploy.data.synth_cells import render_field
from wbc_deploy.pipeline import CountOptions, count_slides
from wbc_deploy.runtime.ort_backend import OrtBackend

try:
    from test_runtime_common import make_onnx, tiny_card
except ImportError:  # tests/ as a package
    from .test_runtime_common import make_onnx, tiny_card

SIZE = 64
FOV_UM = 24.0
FIELD_UM = 96.0
CELL_UM = (41.3, 52.9)  # off every pixel grid


class RecordingOrtBackend(OrtBackend):
    """ONNX Runtime, unchanged, keeping each batch it is given (the model's real inputs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[np.ndarray] = []

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        return super()._run(batch)


def _denormalise(batch: np.ndarray, card) -> np.ndarray:
    """N x 3 x S x S model input -> N x S x S x 3 RGB in 0..255 (float)."""
    mean = np.asarray(card.mean, np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(card.std, np.float64).reshape(1, 3, 1, 1)
    return ((batch.astype(np.float64) * std + mean) * 255.0).transpose(0, 2, 3, 1)


def _window(img: np.ndarray, x: float, y: float, side: int) -> np.ndarray:
    """The side x side square of ``img`` whose centre is nearest (x, y) (pixel (i, j) spans [i, i+1))."""
    left, top = int(round(x - side / 2.0)), int(round(y - side / 2.0))
    assert 0 <= left and 0 <= top and left + side <= img.shape[1] and top + side <= img.shape[0]
    return img[top : top + side, left : left + side]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    card = tiny_card(SIZE)
    assert card.fov_um == FOV_UM
    return make_onnx(tmp_path_factory.mktemp("geometry") / "model.onnx", card)


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_the_crop_is_centred_on_the_cell_and_spans_the_field_of_view(model, tmp_path, mpp):
    n = int(FIELD_UM / mpp)
    rgb, cells, _, truth = render_field(n, n, mpp, [("lymphocyte", CELL_UM[0] / mpp, CELL_UM[1] / mpp)],
                                        np.random.default_rng(5), density=0.6)
    (cell,) = truth
    png = tmp_path / "field.png"
    Image.fromarray(rgb).save(png)

    backend = RecordingOrtBackend(model)
    run = count_slides([png], model, tmp_path / "out", CountOptions(mpp=mpp, quiet=True, workers=1), backend=backend)
    assert run.slides[0].status == "ok"
    with open(tmp_path / "out" / "field.cells.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))  # the one WBC, nothing else
    x, y = float(row["x"]), float(row["y"])
    assert np.hypot(x - cell.x, y - cell.y) * mpp < 1.0, "the detected centre should be on the cell (< 1 um)"

    (batch,) = backend.batches
    assert batch.shape == (1, 3, SIZE, SIZE)
    crop = _denormalise(batch, backend.card)[0]

    side = int(round(FOV_UM / mpp))  # the card's field of view in this scan's pixels: 96 or 48
    expected = np.asarray(Image.fromarray(_window(rgb, x, y, side)).resize((SIZE, SIZE), Image.BILINEAR), np.float64)
    assert np.abs(crop - expected).max() <= 0.51, "the crop is not the field of view around the cell"

    # The cell itself, cut the same way: centred in the crop and its diameter / field of view of the crop wide.
    mask = ((cells == cell.id) * 255).astype(np.uint8)
    cut = np.asarray(Image.fromarray(_window(mask, x, y, side)).resize((SIZE, SIZE), Image.BILINEAR)) > 127
    ys, xs = np.nonzero(cut)
    um_per_crop_px = FOV_UM / SIZE
    assert abs(xs.mean() + 0.5 - SIZE / 2) * um_per_crop_px < 1.0 and abs(ys.mean() + 0.5 - SIZE / 2) * um_per_crop_px < 1.0
    width_um = np.sqrt(cut.sum() * 4 / np.pi) * um_per_crop_px  # the equivalent diameter of the mask in the crop
    assert width_um == pytest.approx(cell.diameter_um, rel=0.12)
    assert 8.0 < cell.diameter_um < FOV_UM
