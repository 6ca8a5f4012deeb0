"""Synthetic cells: the scene model, the renderer, the data set writer and `wbc-deploy synth cells`."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hed

from wbc_deploy.classes import CLASSES
from wbc_deploy.cli import main
from wbc_deploy.data.synth_cells import (
    MAX_WBC_DIAMETER_UM,
    WBC_DIAMETER_UM,
    Scene,
    Stain,
    make_wbc,
    render_cell_image,
    render_field,
    scatter_red_cells,
    write_cell_dataset,
)
from wbc_deploy.errors import WbcError

MPP = 0.25


@pytest.fixture(scope="module")
def field():
    """A 400x320 px field: one WBC of each class among red cells."""
    rng = np.random.default_rng(7)
    wbcs = [("neutrophil", 60, 60), ("eosinophil", 200, 70), ("basophil", 330, 70),
            ("lymphocyte", 70, 220), ("monocyte", 200, 230)]
    return render_field(400, 320, MPP, wbcs, rng), wbcs


def test_render_cell_image_deterministic_and_varied():
    a = render_cell_image("eosinophil", 64, np.random.default_rng(3))
    b = render_cell_image("eosinophil", 64, np.random.default_rng(3))
    c = render_cell_image("eosinophil", 64, np.random.default_rng(4))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(WbcError):
        render_cell_image("platelet", 64, np.random.default_rng(0))


def test_region_render_equals_crop_of_larger_render():
    """Any region of a scene renders exactly like the same crop of a larger render (tile seams)."""
    rng = np.random.default_rng(11)
    wbcs = [make_wbc(lab, x, y, rng) for lab, x, y in
            [("neutrophil", 30.0, 25.0), ("basophil", 52.0, 48.0), ("monocyte", 18.0, 60.0)]]
    rbcs, plts = scatter_red_cells((-10, -10, 90, 90), rng, wbcs)
    scene = Scene(wbcs, rbcs, plts, Stain.random(rng), noise_seed=5)
    big, cells, nuclei = scene.render(0.0, 0.0, 320, 300, MPP, with_masks=True)
    # sub-regions whose borders cut through WBCs and red cells
    for x0, y0, w, h in [(97, 61, 128, 100), (0, 150, 320, 150), (200, 0, 33, 290)]:
        sub, sc, sn = scene.render(x0 * MPP, y0 * MPP, w, h, MPP, with_masks=True)
        assert np.array_equal(sub, big[y0:y0 + h, x0:x0 + w])
        assert np.array_equal(sc, cells[y0:y0 + h, x0:x0 + w])
        assert np.array_equal(sn, nuclei[y0:y0 + h, x0:x0 + w])
    # tiles painted separately reassemble into the whole
    tiles = [[scene.render(c * MPP, r * MPP, 64, 60, MPP) for c in range(0, 320, 64)] for r in range(0, 300, 60)]
    assert np.array_equal(np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0), big)


def test_masks_line_up_with_stains(field):
    (rgb, cells, nuclei, truth), wbcs = field
    assert rgb.shape == (320, 400, 3) and cells.shape == nuclei.shape == (320, 400)
    assert [t.label for t in truth] == [w[0] for w in wbcs]
    hed = rgb2hed(rgb)
    h = hed[..., 0]
    grey = rgb.astype(float).mean(axis=2)
    wbc_any = np.zeros(cells.shape, bool)
    for t in truth:
        cell = cells == t.id
        nuc = nuclei == t.id
        assert nuc.any() and np.all(cells[nuc] == t.id), "nucleus inside its own cell"
        wbc_any |= cell
        # the cell's centre is where the truth says, and its size matches its class
        ys, xs = np.nonzero(cell)
        assert abs(xs.mean() + 0.5 - t.x) < 2.5 / MPP and abs(ys.mean() + 0.5 - t.y) < 2.5 / MPP
        d_um = 2 * np.sqrt(cell.sum() / np.pi) * MPP
        lo, hi = WBC_DIAMETER_UM[t.label]
        assert 0.85 * lo <= d_um <= max(hi * 1.1, 12.5) and d_um <= MAX_WBC_DIAMETER_UM
    # red cells: dark-ish pixels outside every WBC (grown by a margin)
    from scipy.ndimage import binary_dilation

    outside = ~binary_dilation(wbc_any, iterations=8)
    rbc = outside & (grey < np.percentile(grey[outside], 30))
    nuc_px = nuclei > 0
    assert rbc.sum() > 1000
    # nuclei are haematoxylin-dark, red cells are not
    assert np.median(h[nuc_px]) > np.percentile(h[rbc], 95)
    assert np.median(hed[..., 1][rbc]) > np.median(hed[..., 1][outside & ~rbc])  # red cells take eosin


def test_class_sizes_are_physical():
    rng = np.random.default_rng(0)
    for label in CLASSES:
        for _ in range(20):
            w = make_wbc(label, 0, 0, rng)
            assert 2 * w.extent_um <= MAX_WBC_DIAMETER_UM + 0.5
            lo, hi = WBC_DIAMETER_UM[label]
            assert lo <= w.diameter_um <= (12.0 if label == "lymphocyte" else hi)
    lymph = np.mean([make_wbc("lymphocyte", 0, 0, rng).diameter_um for _ in range(50)])
    mono = np.mean([make_wbc("monocyte", 0, 0, rng).diameter_um for _ in range(50)])
    assert lymph < mono


def test_write_cell_dataset_layout_and_determinism(tmp_path):
    counts = write_cell_dataset(tmp_path / "a", per_class=2, size_px=32, seed=1)
    assert counts == {c: 2 for c in CLASSES}
    for c in CLASSES:
        files = sorted(p.name for p in (tmp_path / "a" / c).iterdir())
        assert files == [f"{c}_00000.png", f"{c}_00001.png"]
        im = Image.open(tmp_path / "a" / c / files[0])
        assert im.size == (32, 32) and im.mode == "RGB"
    # same seed -> byte-identical; more per class extends the set; another seed differs
    write_cell_dataset(tmp_path / "b", per_class=3, size_px=32, seed=1, classes=["Lymphocytes", "neutrophil"])
    for c in ("lymphocyte", "neutrophil"):
        for i in range(2):
            name = f"{c}/{c}_{i:05d}.png"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["lymphocyte", "neutrophil"]
    write_cell_dataset(tmp_path / "c", per_class=1, size_px=32, seed=2, classes=["basophil"])
    other = (tmp_path / "c/basophil/basophil_00000.png").read_bytes()
    assert other != (tmp_path / "a/basophil/basophil_00000.png").read_bytes()
    with pytest.raises(WbcError, match="unknown class"):
        write_cell_dataset(tmp_path / "d", per_class=1, size_px=32, seed=0, classes=["platelet"])
    with pytest.raises(WbcError, match="per-class"):
        write_cell_dataset(tmp_path / "d", per_class=0, size_px=32, seed=0)


def test_synth_cells_cli(tmp_path, capsys):
    main(["synth", "cells", str(tmp_path / "ds"), "--per-class", "1", "--size", "24", "--seed", "3", "--quiet"])
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == sorted(CLASSES)
    assert "wrote 5 images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["synth", "cells", str(tmp_path / "ds2"), "--per-class", "0", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
