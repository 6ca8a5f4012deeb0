"""Slide readers: OpenSlide formats (synthetic .svs and .tiff), plain images, and bad files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from wbc_deploy.errors import WbcError
from wbc_deploy.slide import ImageReader, OpenSlideReader, open_slide
from wbc_deploy.slide.synth import build_slide_scene, write_synthetic_slide

SIZE, CELLS, SEED, MPP = 1024, 8, 5, 0.25


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    write_synthetic_slide(d / "s.svs", SIZE, SIZE, CELLS, mpp=MPP, seed=SEED)
    write_synthetic_slide(d / "s.tiff", SIZE, SIZE, CELLS, mpp=MPP, seed=SEED)
    return d


@pytest.fixture(scope="module")
def scene():
    return build_slide_scene(SIZE, SIZE, CELLS, mpp=MPP, seed=SEED).scene


@pytest.mark.parametrize("name,vendor", [("s.svs", "aperio"), ("s.tiff", "generic-tiff")])
def test_openslide_geometry_and_mpp(slides, name, vendor):
    with open_slide(slides / name) as s:
        assert isinstance(s, OpenSlideReader)
        assert s.vendor == vendor
        assert s.dimensions == (SIZE, SIZE)
        assert s.level_count == 2
        assert s.level_dimensions == ((SIZE, SIZE), (SIZE // 4, SIZE // 4))
        assert s.level_downsamples == pytest.approx((1.0, 4.0))
        assert s.mpp == pytest.approx(MPP)
        assert s.mpp_source == "file"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        if vendor == "aperio":
            assert s.properties["aperio.AppMag"] == "40"
        assert s.best_level_for_downsample(1.0) == 0
        assert s.best_level_for_downsample(3.9) == 0
        assert s.best_level_for_downsample(6.0) == 1
        assert s.best_level_for_downsample(100.0) == 1
    with open_slide(slides / name, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "override"


@pytest.mark.parametrize("name", ["s.svs", "s.tiff"])
def test_read_region_returns_the_rendered_pixels(slides, scene, name):
    """Lossless tiles: OpenSlide gives back exactly what the scene renders, across tile seams."""
    with open_slide(slides / name) as s:
        x, y, w, h = 200, 230, 120, 90  # crosses the 256-px tile seams in x and y
        got = s.read_region((x, y), 0, (w, h))
        assert got.shape == (h, w, 3) and got.dtype == np.uint8
        assert np.array_equal(got, scene.render(x * MPP, y * MPP, w, h, MPP))
        # level 1: level-0 location, level-1 size, rendered at 4x the mpp
        got1 = s.read_region((400, 80), 1, (64, 48))
        assert np.array_equal(got1, scene.render(400 * MPP, 80 * MPP, 64, 48, 4 * MPP))
        # partly outside the slide: the outside is white, the inside is the image
        edge = s.read_region((SIZE - 30, -20), 0, (60, 50))
        assert np.all(edge[:20] == 255) and np.all(edge[:, 30:] == 255)
        assert np.array_equal(edge[20:, :30], scene.render((SIZE - 30) * MPP, 0.0, 30, 30, MPP))
        with pytest.raises(WbcError, match="level 5"):
            s.read_region((0, 0), 5, (10, 10))


def test_thumbnail(slides):
    with open_slide(slides / "s.svs") as s:
        th = s.get_thumbnail(200)
        assert th.shape == (200, 200, 3) and th.dtype == np.uint8
        th2 = s.get_thumbnail((100, 60))
        assert th2.shape == (60, 60, 3)
        # the glass around the smear is pale, the smear has darker cells
        assert th[:4, :4].mean() > 200 and th.min() < 200


def test_plain_images(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "f.png", dpi=(25400 / 0.3, 25400 / 0.3))
    Image.fromarray(img).save(tmp_path / "f.bmp")
    Image.fromarray(img).save(tmp_path / "f.jpg", dpi=(300, 300), quality=95)
    tifffile.imwrite(tmp_path / "f.tif", img, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    rgba = np.dstack([img, np.full((50, 60), 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")

    with open_slide(tmp_path / "f.png") as s:
        assert isinstance(s, ImageReader)
        assert s.dimensions == (60, 50) and s.level_count == 1 and s.level_downsamples == (1.0,)
        assert s.mpp == pytest.approx(0.3)  # from the PNG pHYs chunk
        assert np.array_equal(s.read_region((0, 0), 0, (60, 50)), img)
        out = s.read_region((50, 40), 0, (20, 20))
        assert np.array_equal(out[:10, :10], img[40:, 50:]) and np.all(out[10:] == 255)
        assert s.get_thumbnail(30).shape == (25, 30, 3)
    with open_slide(tmp_path / "f.bmp") as s:
        assert np.array_equal(s.read_region((0, 0), 0, (60, 50)), img) and s.mpp is None
    with open_slide(tmp_path / "f.jpg") as s:
        assert s.mpp is None  # 300 dpi is a print resolution, not a microscope's
        decoded = np.asarray(Image.open(tmp_path / "f.jpg").convert("RGB"))
        assert np.array_equal(s.read_region((0, 0), 0, (60, 50)), decoded)
    with open_slide(tmp_path / "f.tif") as s:  # untiled TIFF: not an OpenSlide format
        assert isinstance(s, ImageReader) and s.mpp == pytest.approx(0.5)
        assert np.array_equal(s.read_region((0, 0), 0, (60, 50)), img)
    with open_slide(tmp_path / "a.png") as s:  # transparent pixels composite on white
        px = s.read_region((0, 0), 0, (60, 50))
        assert np.all(px[:10, :10] == 255) and np.array_equal(px[20:, 20:], img[20:, 20:])
    with open_slide(tmp_path / "f.png", mpp=0.1) as s:
        assert s.mpp == 0.1


def _one_line_error(path, match):
    with pytest.raises(WbcError) as exc:
        open_slide(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(path.name + ":")
    assert match in msg, msg
    return msg


def test_bad_files(slides, tmp_path):
    data = (slides / "s.svs").read_bytes()
    (tmp_path / "half.svs").write_bytes(data[: len(data) // 2])
    (tmp_path / "tail.svs").write_bytes(data[:-100])  # only the last level's data is cut
    tdata = (slides / "s.tiff").read_bytes()
    (tmp_path / "half.tiff").write_bytes(tdata[: len(tdata) // 2])
    (tmp_path / "garbage.svs").write_bytes(os.urandom(4096))
    (tmp_path / "notes.txt").write_text("not a slide\n")
    (tmp_path / "empty.ndpi").write_bytes(b"")
    png = tmp_path / "p.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(png)
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:60])

    _one_line_error(tmp_path / "half.svs", "truncated file")
    _one_line_error(tmp_path / "tail.svs", "truncated file")
    _one_line_error(tmp_path / "half.tiff", "truncated file")
    _one_line_error(tmp_path / "garbage.svs", "not a readable slide (OpenSlide:")
    _one_line_error(tmp_path / "notes.txt", "unsupported file type")
    _one_line_error(tmp_path / "empty.ndpi", "empty file")
    _one_line_error(tmp_path / "cut.png", "not a readable image")
    _one_line_error(tmp_path / "missing.svs", "file not found")
    with pytest.raises(WbcError, match="--mpp"):
        open_slide(slides / "s.svs", mpp=-1.0)
