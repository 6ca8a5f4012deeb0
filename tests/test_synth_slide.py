"""Synthetic whole-slide images: pyramid layout, truth file, seams, touching pairs, smear, CLI."""
from __future__ import annotations

import re

import numpy as np
import openslide
import pytest
from scipy.ndimage import binary_dilation, uniform_filter

from wbc_deploy.classes import CLASSES
from wbc_deploy.cli import main
from wbc_deploy.errors import WbcError
from wbc_deploy.slide import open_slide
from wbc_deploy.slide.synth import (
    SmearZones,
    allocate_classes,
    build_slide_scene,
    pyramid_sizes,
    read_truth,
    truth_path,
    write_synthetic_slide,
)

SIZE, CELLS, SEED, MPP = 2048, 40, 1, 0.25


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "smear.svs"
    truth = write_synthetic_slide(path, SIZE, SIZE, CELLS, mpp=MPP, seed=SEED)
    assert truth == path.with_name("smear.truth.csv")
    return path


@pytest.fixture(scope="module")
def layout():
    slide = build_slide_scene(SIZE, SIZE, CELLS, mpp=MPP, seed=SEED)
    _, cells, nuclei = slide.scene.render(0.0, 0.0, SIZE, SIZE, MPP, with_masks=True)
    return slide, cells, nuclei


def test_pyramid_and_class_allocation():
    assert pyramid_sizes(2048, 2048) == [(2048, 2048), (512, 512)]
    assert pyramid_sizes(30000, 20000) == [(30000, 20000), (7500, 5000), (1875, 1250), (469, 313)]
    assert pyramid_sizes(900, 5000) == [(900, 5000)]
    for n in (20, 21, 37, 200, 3200):
        c = allocate_classes(n)
        assert sum(c.values()) == n and set(c) == set(CLASSES) and min(c.values()) >= 1
        assert c["neutrophil"] == max(c.values()) and c["basophil"] == min(c.values())
    assert sum(allocate_classes(3).values()) == 3


def test_svs_is_an_aperio_pyramid(svs):
    with open_slide(svs) as s:
        assert s.vendor == "aperio"
        assert s.level_dimensions == ((SIZE, SIZE), (SIZE // 4, SIZE // 4))
        assert s.mpp == pytest.approx(MPP)
        assert s.properties["aperio.MPP"] == "0.25"
    with openslide.OpenSlide(str(svs)) as raw:
        assert "thumbnail" in raw.associated_images
        assert raw.properties["openslide.objective-power"] == "40"


def test_truth_file(svs, layout):
    text = truth_path(svs).read_text()
    lines = text.splitlines()
    assert lines[0] == "x,y,label"
    assert len(lines) == CELLS + 1
    pattern = re.compile(r"^\d+\.\d{2},\d+\.\d{2},(%s)$" % "|".join(CLASSES))
    assert all(pattern.match(line) for line in lines[1:])
    rows = read_truth(truth_path(svs))
    assert {lab for _, _, lab in rows} == set(CLASSES)  # every class when N >= 20
    assert [(y, x) for x, y, _ in rows] == sorted((y, x) for x, y, _ in rows)
    assert all(0 < x < SIZE and 0 < y < SIZE for x, y, _ in rows)
    # row k is WBC id k+1: its mask is centred on the truth position
    slide, cells, _ = layout
    for k, (x, y, lab) in enumerate(rows):
        ys, xs = np.nonzero(cells == k + 1)
        assert slide.scene.wbcs[k].label == lab
        assert abs(xs.mean() + 0.5 - x) < 2 / MPP and abs(ys.mean() + 0.5 - y) < 2 / MPP


def test_cells_straddle_seams(layout):
    slide, cells, _ = layout
    seams = sorted({k * p for p in (512, 1000) for k in range(1, SIZE // p + 1) if k * p < SIZE})
    straddling = set()
    for s in seams:
        for a, b in ((cells[:, s - 1], cells[:, s]), (cells[s - 1, :], cells[s, :])):
            both = (a == b) & (a > 0)
            straddling |= set(np.unique(a[both]).tolist())
    assert len(straddling) >= 3
    assert set(slide.seam_ids) <= straddling
    assert any(s % 1000 == 0 for s in seams)


def test_touching_pairs_have_separate_nuclei(layout):
    slide, cells, nuclei = layout
    touching = set()
    for a, b in ((cells[:, :-1], cells[:, 1:]), (cells[:-1, :], cells[1:, :])):
        m = (a != b) & (a > 0) & (b > 0)
        touching |= {tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist())}
    assert len(touching) >= 1
    assert touching == set(slide.pairs)  # all other WBCs keep apart
    for i, j in touching:
        grown = binary_dilation(nuclei == i, iterations=int(1.0 / MPP))
        assert not (grown & (nuclei == j)).any(), "nuclei of a touching pair must stay apart"


def test_smear_blob_and_glass(svs):
    with open_slide(svs) as s:
        low = s.read_region((0, 0), 1, s.level_dimensions[1]).astype(np.float32)  # 1 um/px
    glass = np.percentile(low.reshape(-1, 3), 95, axis=0)
    content = (np.abs(low - glass).max(axis=2) > 30).astype(np.float32)
    smear = uniform_filter(content, size=21) > 0.05
    frac = smear.mean()
    assert 0.5 < frac < 0.9, frac
    corners = [smear[:20, :20], smear[:20, -20:], smear[-20:, :20], smear[-20:, -20:]]
    assert sum(not c.any() for c in corners) >= 3  # plain glass outside the blob


def test_same_seed_same_bytes(tmp_path):
    a = tmp_path / "a" / "s.svs"
    b = tmp_path / "b" / "s.svs"
    a.parent.mkdir()
    b.parent.mkdir()
    write_synthetic_slide(a, 768, 640, 6, seed=4)
    write_synthetic_slide(b, 768, 640, 6, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert truth_path(a).read_bytes() == truth_path(b).read_bytes()
    c = tmp_path / "a" / "c.svs"
    write_synthetic_slide(c, 768, 640, 6, seed=5)
    assert truth_path(c).read_bytes() != truth_path(a).read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))


def test_synth_slide_cli(tmp_path, capsys):
    out = tmp_path / "cli.svs"
    main(["synth", "slide", str(out), "--width", "640", "--height", "512", "--cells", "5", "--seed", "2", "--quiet"])
    assert out.exists() and (tmp_path / "cli.truth.csv").exists()
    assert "5 WBCs" in capsys.readouterr().out
    for args, match in [
        (["synth", "slide", str(tmp_path / "x.png")], ".svs, .tif or .tiff"),
        (["synth", "slide", str(tmp_path / "y.svs"), "--width", "300", "--height", "300", "--cells", "400"], "do not fit"),
        (["synth", "slide", str(tmp_path / "z.tiff"), "--mpp", "0"], "--mpp"),
        (["synth", "slide", str(tmp_path / "nodir" / "z.tiff")], "does not exist"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(args + ["--quiet"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and match in err, err
    assert not (tmp_path / "y.svs").exists()


def test_zoned_slide_cli_and_zone_layout(tmp_path, capsys):
    out = tmp_path / "zoned.tiff"
    main(["synth", "slide", str(out), "--width", "1024", "--height", "512", "--cells", "6", "--seed", "2", "--zones", "--quiet"])
    assert "thick end, monolayer, feathered edge" in " ".join(capsys.readouterr().out.split())
    assert truth_path(out).read_text().splitlines()[0] == "x,y,label,zone"
    zones = SmearZones()
    assert zones.code(np.array([0.1, 0.5, 0.9])).tolist() == [1, 2, 3]
    assert zones.monolayer_keep(np.array([0.5, 0.7, 1.0])).tolist() == pytest.approx([1.0, 0.45, 0.08])
    plain = build_slide_scene(1024, 512, 6, seed=2)
    zoned = build_slide_scene(1024, 512, 6, seed=2, zones=zones)
    assert [w.x_um for w in plain.scene.wbcs] == [w.x_um for w in zoned.scene.wbcs]  # same cells, other red cells
    m = zoned.zone_map((16, 32))
    assert set(np.unique(m)) <= {0, 1, 2, 3} and (m[:, :9] != 2).all() and (plain.zone_map((16, 32)) <= 2).all()
    # red cells: the thick end holds several layers, the feathered edge fewer than the monolayer
    x = zoned.scene.rbcs.x / (1024 * 0.25)
    thick, mono, sparse = ((x < 0.3).sum() / 0.3, ((x >= 0.3) & (x < 0.7)).sum() / 0.4, (x >= 0.7).sum() / 0.3)
    assert thick > 2.5 * mono and sparse < 0.5 * mono
    with pytest.raises(WbcError, match="thick_end"):
        SmearZones(thick_end=0.8)


def test_errors_are_wbc_errors():
    with pytest.raises(WbcError, match="at least 256"):
        build_slide_scene(100, 100, 1)
    with pytest.raises(WbcError, match="--cells"):
        build_slide_scene(512, 512, -1)
