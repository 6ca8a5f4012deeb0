"""``count`` on a photograph finds the cells ``segment`` finds in it: the windows it cuts out of the image are
thresholded as the whole image is, not each on its own."""
from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from wbc_deploy.data.synth_cells import render_field
from wbc_deploy.pipeline import CountOptions, count_slides
from wbc_deploy.segment import segment_wbcs
from wbc_deploy.segment.params import ROMANOWSKY_NUCLEUS_OD

try:
    from test_runtime_common import make_onnx, tiny_card
except ImportError:  # pragma: no cover - run as a package
    from .test_runtime_common import make_onnx, tiny_card

MPP = 0.25


def photograph_with_a_faint_blob() -> np.ndarray:
    """A 120 x 60 um field: a lymphocyte on the left; on the right, on glass, a faint purple blob (nucleus-stain
    OD 0.225 at its centre, 7 um across: a tinted red cell or stain debris), fainter than any chromatin of the
    field. A window holding only the blob sets its own Otsu threshold at the physical floor (0.12 OD)."""
    n = int(round(60 / MPP))
    rgb = render_field(2 * n, n, MPP, [("lymphocyte", n // 2, n // 2)], np.random.default_rng(4), density=0.0)[0]
    yy, xx = np.mgrid[0:n, 0:2 * n]
    r = np.hypot(xx - 1.5 * n, yy - n / 2) * MPP
    direction = np.array(ROMANOWSKY_NUCLEUS_OD) / np.linalg.norm(ROMANOWSKY_NUCLEUS_OD)
    od = np.clip(0.225 * (1 - (r / 3.5) ** 4), 0, None)[..., None] * direction
    return np.clip(rgb * 10.0 ** (-od), 0, 255).astype(np.uint8)


def test_count_thresholds_a_photographs_windows_as_segment_does_the_whole_image(tmp_path):
    field = photograph_with_a_faint_blob()
    seg = segment_wbcs(field, MPP)
    assert [(round(c.x), round(c.y)) for c in seg.cells] == [(120, 120)]  # the lymphocyte; the blob is too faint
    Image.fromarray(field).save(tmp_path / "photo.png")
    model = make_onnx(tmp_path / "model.onnx", tiny_card(32))
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        run = count_slides([tmp_path / "photo.png"], model, out, CountOptions(quiet=True, mpp=MPP, workers=workers))
        assert run.slides[0].status == "ok", run.slides[0].error
        with open(out / "photo.cells.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [(round(float(r["x"]) - 0.5), round(float(r["y"]) - 0.5)) for r in rows] == [(120, 120)], rows
