"""Uneven illumination (vignetting) of photographed fields: estimated from the field's own glass and evened out,
in ``segment`` and in ``count`` (every worker the same). Synthetic fields from the project's scene model,
darkened towards the corners as a microscope camera's are."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from wbc_deploy.data.synth_cells import render_field
from wbc_deploy.pipeline import CountOptions, count_slides
from wbc_deploy.segment import SegmentParams, segment_wbcs
from wbc_deploy.segment.illumination import estimate_illumination, flatten_illumination
from wbc_deploy.slide import open_slide

try:
    from test_runtime_common import make_onnx, tiny_card
except ImportError:  # pragma: no cover - run as a package
    from .test_runtime_common import make_onnx, tiny_card

MPP = 0.25
#: five WBCs (pixel positions) on a 120 um field: one in each quarter and one in the middle
WBCS = [("neutrophil", 120, 120), ("lymphocyte", 360, 120), ("monocyte", 120, 360), ("lymphocyte", 360, 360),
        ("eosinophil", 240, 240)]


def vignette(rgb: np.ndarray, loss: float = 0.18) -> np.ndarray:
    """``rgb`` darkened radially: the corners get ``1 - loss`` of the light (0.18: 0.086 OD, like the BCCD photographs)."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    gain = 1.0 - loss * r2
    return np.clip(rgb * gain[..., None] + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def field() -> tuple[np.ndarray, np.ndarray]:
    """(evenly lit field, the same field vignetted)."""
    rgb = render_field(480, 480, MPP, WBCS, np.random.default_rng(5))[0]
    return rgb, vignette(rgb)


def block_means(rgb: np.ndarray, side: int = 40) -> np.ndarray:
    h, w = rgb.shape[0] // side, rgb.shape[1] // side
    return rgb[: h * side, : w * side].astype(np.float64).reshape(h, side, w, side, 3).mean(axis=(1, 3, 4))


def test_an_evenly_lit_field_is_left_as_it_is(field):
    even, _ = field
    assert estimate_illumination(even, MPP) is None
    assert flatten_illumination(even, MPP) is even
    a = segment_wbcs(even, MPP)
    b = segment_wbcs(even, MPP, SegmentParams(flat_field=False))
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.nuclei, b.nuclei)


def test_a_single_cell_crop_is_too_small_to_show_its_illumination(field):
    _, vignetted = field
    assert estimate_illumination(vignetted[:60, :60], MPP) is None  # 15 um: three blocks a side


def test_vignetting_is_estimated_and_evened_out(field):
    even, vignetted = field
    illum = estimate_illumination(vignetted, MPP)
    assert illum is not None
    assert 0.06 <= illum.range() <= 0.11  # 1 - 0.18 at the corners is 0.086 OD
    corrected = illum.correct(vignetted)
    before = block_means(vignetted) / block_means(even)
    after = block_means(corrected) / block_means(even)
    assert before.std() / before.mean() > 0.03
    assert after.std() / after.mean() < 0.01, "the correction leaves the field's light uneven"


def test_cells_in_a_vignetted_field_keep_their_outlines(field):
    """Without the correction the darker glass reads as pale cytoplasm and outlines leak into it."""
    even, vignetted = field
    truth = segment_wbcs(even, MPP)
    assert len(truth.cells) == len(WBCS)

    def areas(seg):
        return sorted((round(c.y * MPP / 30), round(c.x * MPP / 30), c.area_um2) for c in seg.cells)

    leaked = areas(segment_wbcs(vignetted, MPP, SegmentParams(flat_field=False)))
    evened = areas(segment_wbcs(vignetted, MPP))
    reference = areas(truth)
    assert len(evened) == len(reference)
    assert max(a[2] / b[2] for a, b in zip(leaked, reference) if a[:2] == b[:2]) > 1.5  # what the correction fixes
    for (ry, rx, area), (ey, ex, evened_area) in zip(reference, evened):
        assert (ry, rx) == (ey, ex)
        assert abs(evened_area / area - 1.0) < 0.1, f"cell at ({rx}, {ry}): {evened_area:.0f} um2, even light {area:.0f}"


def test_count_evens_out_a_photograph_in_every_worker(field, tmp_path):
    """``count`` corrects a plain image once when it opens it; worker processes open their own copy and must
    apply the same correction (the plan carries it): threads and processes count the same cells, and the
    photograph's cells are those of its evenly lit twin."""
    even, vignetted = field
    photo = tmp_path / "photo.png"
    Image.fromarray(vignetted).save(photo)
    with open_slide(photo) as reader:
        illum = reader.even_illumination(MPP)
        assert illum is not None and reader.illumination is illum
        assert np.array_equal(reader.read_region((0, 0), 0, (480, 480)), illum.correct(vignetted))
    model = make_onnx(tmp_path / "model.onnx", tiny_card(32))

    def count(name: str, path=photo, **kw) -> list[dict]:
        run = count_slides([path], model, tmp_path / name, CountOptions(quiet=True, mpp=MPP, **kw))
        assert run.slides[0].status == "ok", run.slides[0].error
        with open(tmp_path / name / f"{path.stem}.cells.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    threads = count("threads", workers=1, executor="thread")
    procs = count("procs", workers=2, executor="process")
    assert [(r["x"], r["y"], r["area_um2"]) for r in threads] == [(r["x"], r["y"], r["area_um2"]) for r in procs]
    twin = tmp_path / "even.png"
    Image.fromarray(even).save(twin)
    reference = count("even", twin, workers=1, executor="thread")
    assert len(threads) == len(reference) == len(WBCS)
    for r in reference:
        x, y, area = float(r["x"]), float(r["y"]), float(r["area_um2"])
        near = min(threads, key=lambda t: np.hypot(float(t["x"]) - x, float(t["y"]) - y))
        assert np.hypot(float(near["x"]) - x, float(near["y"]) - y) * MPP < 1.0
        assert abs(float(near["area_um2"]) / area - 1.0) < 0.1, f"cell at ({x}, {y}): {near['area_um2']} um2, even light {area}"


def test_a_tall_photograph_is_corrected_in_bands_without_seams(field, monkeypatch):
    """The gain is built band by band (a gigapixel photograph needs no gigapixel array); the bands join
    without visible seams: within one grey level of the gain built whole."""
    from wbc_deploy.segment import illumination

    _, vignetted = field
    illum = estimate_illumination(vignetted, MPP)
    whole = illum.correct(vignetted).astype(int)
    monkeypatch.setattr(illumination, "_STRIP_ROWS", 64)
    banded = illum.correct(vignetted).astype(int)
    assert np.abs(banded - whole).max() <= 1
    assert np.abs(banded - whole).mean() < 0.05


def test_segment_evens_out_photographs_but_reads_slides_as_stored(field, tmp_path):
    """As ``count``: a plain image (a camera's photograph) is evened out, a slide (here a tiled TIFF, which
    OpenSlide opens) is segmented as stored, since scanners flat-field their own tiles."""
    import tifffile

    from wbc_deploy.segment.files import segment_file

    _, vignetted = field
    Image.fromarray(vignetted).save(tmp_path / "photo.png")
    tifffile.imwrite(tmp_path / "slide.tif", vignetted, tile=(256, 256), photometric="rgb")
    with open_slide(tmp_path / "slide.tif") as reader:
        assert reader.vendor != "image"

    def cells(path):
        res = segment_file(path, tmp_path / "out", mpp=MPP, stem=path.stem)
        with open(res.outputs[0], newline="") as fh:
            return [(round(float(r["x"])), round(float(r["y"])), float(r["area_um2"])) for r in csv.DictReader(fh)]

    def expected(seg):
        return [(round(c.x), round(c.y), c.area_um2) for c in seg.cells]

    evened = expected(segment_wbcs(vignetted, MPP))
    as_stored = expected(segment_wbcs(vignetted, MPP, SegmentParams(flat_field=False)))
    assert evened != as_stored
    assert [c[:2] for c in cells(tmp_path / "photo.png")] == [c[:2] for c in evened]
    assert [c[:2] for c in cells(tmp_path / "slide.tif")] == [c[:2] for c in as_stored]
