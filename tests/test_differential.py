"""A differential a haematologist can sign (issue 13) and review material that is never lost (issue 17).

Zoning against a synthetic smear with a thick end, monolayer and feathered edge; the counting area;
``--max-wbc`` (meander order, determinism, resume); the intervals in summary.csv; the out-of-focus and
unidentified flags; ``--gallery`` on a slide whose cells are all one class and a report that cannot be
written. The tiny linear ONNX model of test_count keeps the counts fast.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from wbc_deploy.card import ModelCard
from wbc_deploy.classes import CLASSES
from wbc_deploy.cli import main
from wbc_deploy.errors import WbcError
from wbc_deploy.pipeline import CountInterrupted, CountOptions, count_slides
from wbc_deploy.pipeline.outputs import SUMMARY_AREA, interval_header, summary_header
from wbc_deploy.pipeline.plan import Tile, plan_scan, thumbnail_size
from wbc_deploy.pipeline.quality import OUT_OF_FOCUS_UM, tile_blur_um
from wbc_deploy.pipeline.reading import meander
from wbc_deploy.pipeline.scale import thumbnail
from wbc_deploy.pipeline.truth import match_points, read_truth
from wbc_deploy.pipeline.zones import MONOLAYER, SPARSE, THICK, ZONES, zone_slide
from wbc_deploy.slide import open_slide
from wbc_deploy.slide.synth import SMEAR_ZONES, SmearZones, build_slide_scene, write_synthetic_slide
from wbc_deploy.stats import wilson_percent

sys.path.insert(0, str(Path(__file__).parent))
from test_count import write_linear_model  # noqa: E402

#: The zoned smear: 2 x 0.6 mm at 0.5 um/px (0.8 mm2 of smear, enough to be zoned), 60 WBCs.
ZW, ZH, ZMPP, ZCELLS, ZSEED = 4000, 1200, 0.5, 60, 1


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("differential")


@pytest.fixture(scope="module")
def model(root):
    return write_linear_model(root / "linear.onnx")


@pytest.fixture(scope="module")
def zoned(root):
    path = root / "zoned" / "zoned.svs"
    path.parent.mkdir()
    write_synthetic_slide(path, ZW, ZH, ZCELLS, mpp=ZMPP, seed=ZSEED, zones=SmearZones())
    return path


@pytest.fixture(scope="module")
def small(root):
    """A plain 0.4 x 0.4 mm slide (not zoned: too little smear), 12 WBCs."""
    path = root / "small" / "small.svs"
    path.parent.mkdir()
    write_synthetic_slide(path, 1536, 1536, 12, mpp=0.25, seed=7)
    return path


def opts(**kw) -> CountOptions:
    kw.setdefault("quiet", True)
    kw.setdefault("workers", 2)
    return CountOptions(**kw)


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def zoning_of(path, mpp):
    card = ModelCard(arch="test", classes=list(CLASSES), input_size=32)
    with open_slide(path) as r:
        thumb = thumbnail(r, thumbnail_size(r.dimensions, mpp))
        plan = plan_scan(r, mpp, card, opts(), thumb)
        return zone_slide(r, thumb, plan)


# --------------------------------------------------------------------------- zoning


def test_zoning_agrees_with_the_synthetic_truth(zoned):
    z = zoning_of(zoned, ZMPP)
    assert z.zoned and z.reason == "" and z.fields_used >= 2
    truth = build_slide_scene(ZW, ZH, ZCELLS, mpp=ZMPP, seed=ZSEED, zones=SmearZones()).zone_map(z.zones.shape)
    tissue = truth > 0
    agreement = float((z.zones[tissue] == truth[tissue]).mean())
    assert agreement >= 0.90, f"zoning agrees with the truth on {100 * agreement:.1f}% of the smear"
    for code in (THICK, MONOLAYER, SPARSE):  # each zone is mostly found as itself
        assert (z.zones[truth == code] == code).mean() >= 0.8, ZONES[code]
    # coverage in red-cell layers: the thick end overlaps (> 1), the feathered edge is sparse (< 0.3)
    assert np.nanmedian(z.coverage[truth == THICK]) > 1.1 and np.nanmedian(z.coverage[truth == SPARSE]) < 0.25
    assert SMEAR_ZONES == ZONES


def test_small_slides_are_not_zoned(small):
    z = zoning_of(small, 0.25)
    assert not z.zoned and "less than" in z.reason
    assert set(np.unique(z.zones)) <= {0, MONOLAYER}


def test_zoned_truth_file_names_each_cells_zone(zoned):
    truth = rows(zoned.with_name("zoned.truth.csv"))
    assert list(truth[0]) == ["x", "y", "label", "zone"]
    assert {r["zone"] for r in truth} == {"thick", "monolayer", "sparse"}
    for r in truth:
        x = float(r["x"]) / ZW
        assert r["zone"] == ("thick" if x < 0.3 else "monolayer" if x < 0.7 else "sparse")


# --------------------------------------------------------------------------- the counting area


@pytest.fixture(scope="module")
def zoned_counts(zoned, model, root):
    mono = count_slides([zoned], model, root / "area-default", opts(truth=True))
    whole = count_slides([zoned], model, root / "area-all", opts(truth=True, area="all"))
    return mono.slides[0], whole.slides[0]


def test_default_counts_the_monolayer_and_all_counts_the_whole_smear(zoned, zoned_counts, root):
    mono, whole = zoned_counts
    assert (mono.status, mono.area, whole.area) == ("ok", "monolayer", "all")
    assert "monolayer found" in mono.area_note and "--area all" in whole.area_note
    truth_xy, _ = read_truth(zoned.with_name("zoned.truth.csv"))
    zone = np.array([r["zone"] for r in rows(zoned.with_name("zoned.truth.csv"))])
    found = {}
    for name, r in (("mono", mono), ("all", whole)):
        cells = rows(root / f"area-{'default' if name == 'mono' else 'all'}" / "zoned.cells.csv")
        xy = np.array([(float(c["x"]), float(c["y"])) for c in cells]).reshape(-1, 2)
        found[name] = {j for _, j in match_points(xy, truth_xy, 5.0 / ZMPP)}
        assert r.n_wbc == len(cells)
    # --area all: every zone's cells are found (detection is not lowered)
    assert len(found["all"]) >= 0.98 * len(truth_xy) and whole.truth.recall >= 0.98
    # default: the monolayer's cells, not the thick end's or the feathered edge's
    in_mono = {j for j in range(len(zone)) if zone[j] == "monolayer"}
    assert len(found["mono"] & in_mono) >= 0.95 * len(in_mono)
    assert len(found["mono"] - in_mono) <= 2  # at most a cell or two across a zone boundary
    assert mono.truth.recall >= 0.9 and mono.truth.n_truth <= len(in_mono) + 2
    # physical units: area of the zone counted, and the density
    assert 0.3 < mono.area_mm2 < 0.6 and 0.7 < whole.area_mm2 < 1.0
    assert mono.wbc_per_mm2 == pytest.approx(mono.n_wbc / mono.area_mm2)
    s = rows(root / "area-default" / "summary.csv")[0]
    assert (s["area"], s["max_wbc"], s["stopped_early"]) == ("monolayer", "", "false")
    assert float(s["area_mm2"]) == pytest.approx(mono.area_mm2, abs=1e-4)
    assert float(s["out_of_focus_fraction"]) == 0.0 and s["unidentified_rate"] == ""


def test_area_monolayer_on_a_slide_without_one_fails_that_slide(small, model, root):
    run = count_slides([small], model, root / "area-none", opts(area="monolayer", mpp=0.25))
    s = run.slides[0]
    assert s.status == "error" and "no monolayer found" in s.error and run.exit_code == 3
    run = count_slides([small], model, root / "area-auto", opts(mpp=0.25))
    assert run.slides[0].area == "all" and "no monolayer found" in run.slides[0].area_note
    with pytest.raises(WbcError, match="--area must be"):
        count_slides([small], model, root / "area-bad", opts(area="thick"))


# --------------------------------------------------------------------------- --max-wbc


def test_meander_alternates_direction_row_by_row():
    tiles = [Tile(index=ty * 3 + tx, core=(tx * 10, ty * 10, tx * 10 + 10, ty * 10 + 10), pad=(0, 0, 1, 1))
             for ty in range(3) for tx in range(3) if (tx, ty) != (1, 1)]
    assert [t.index for t in meander(tiles)] == [0, 1, 2, 5, 3, 6, 7, 8]
    assert meander(list(reversed(tiles))) == meander(tiles)


def test_max_wbc_counts_exactly_n_in_meander_order_deterministically(zoned, model, root):
    small_tiles = dict(tile_um=128.0, area="all")
    n = 25
    a = count_slides([zoned], model, root / "max-a", opts(max_wbc=n, **small_tiles)).slides[0]
    full = count_slides([zoned], model, root / "max-full", opts(max_wbc=10_000, **small_tiles)).slides[0]
    assert a.status == "ok" and a.n_wbc == n and a.stopped_early and a.max_wbc == n
    assert not full.stopped_early and full.n_wbc > 2 * n
    assert a.tiles_scanned < full.tiles_scanned / 2 and a.area_mm2 < full.area_mm2 / 2
    cells_a = rows(root / "max-a" / "zoned.cells.csv")
    cells_full = rows(root / "max-full" / "zoned.cells.csv")
    assert len(cells_a) == n
    key = ("x", "y", "label")
    assert [tuple(c[k] for k in key) for c in cells_a] == [tuple(c[k] for k in key) for c in cells_full[:n]]
    s = rows(root / "max-a" / "summary.csv")[0]
    assert (s["n_wbc"], s["max_wbc"], s["stopped_early"]) == (str(n), str(n), "true")
    # same bytes with other worker counts and after an interruption
    b = root / "max-b"
    count_slides([zoned], model, b, opts(max_wbc=n, workers=1, **small_tiles))
    assert (b / "zoned.cells.csv").read_bytes() == (root / "max-a" / "zoned.cells.csv").read_bytes()

    def stop_after_two(slide, tiles_done):
        if tiles_done == 2:
            raise CountInterrupted()

    c = root / "max-resumed"
    assert count_slides([zoned], model, c, opts(max_wbc=n, tile_hook=stop_after_two, batch_size=4, **small_tiles)).exit_code == 130
    run = count_slides([zoned], model, c, opts(max_wbc=n, resume=True, batch_size=4, **small_tiles))
    assert run.exit_code == 0 and run.slides[0].tiles_resumed == 2
    assert (c / "zoned.cells.csv").read_bytes() == (root / "max-a" / "zoned.cells.csv").read_bytes()
    with pytest.raises(WbcError, match="--max-wbc must be at least 1"):
        count_slides([zoned], model, root / "max-bad", opts(max_wbc=0))


# --------------------------------------------------------------------------- summary.csv and the printed table


def test_summary_has_wilson_intervals_for_every_class(zoned_counts, root):
    header = summary_header(list(CLASSES))
    assert header[-len(SUMMARY_AREA):] == list(SUMMARY_AREA)
    assert header[-len(SUMMARY_AREA) - 2 * len(CLASSES):-len(SUMMARY_AREA)] == interval_header(list(CLASSES))
    assert interval_header(["a", "b"]) == ["ci95_lo_a", "ci95_hi_a", "ci95_lo_b", "ci95_hi_b"]
    s = rows(root / "area-all" / "summary.csv")[0]
    n = int(s["n_counted"])
    for c in CLASSES:
        lo, hi = wilson_percent(int(s[f"n_{c}"]), n)
        assert (float(s[f"ci95_lo_{c}"]), float(s[f"ci95_hi_{c}"])) == pytest.approx((lo, hi), abs=0.005)
        assert float(s[f"ci95_lo_{c}"]) <= float(s[f"pct_{c}"]) <= float(s[f"ci95_hi_{c}"])


def test_cli_prints_intervals_area_and_flags(small, model, root, capsys):
    main(["count", str(small), "--model", str(model), "--out", str(root / "cli"), "--max-wbc", "5", "--workers", "1"])
    out = capsys.readouterr().out
    assert "95% Wilson intervals" in out and "counted" in out
    assert "small: counted in all of the smear: no monolayer found" in out
    assert "stopped at 5 WBCs (--max-wbc)" in out and "of tiles out of focus" in out
    s = rows(root / "cli" / "summary.csv")[0]
    assert (s["n_wbc"], s["stopped_early"], s["area"]) == ("5", "true", "all")


# --------------------------------------------------------------------------- quality flags


def test_tile_blur_measures_defocus_in_micrometres(small):
    with open_slide(small) as r:
        rgb = r.read_region((0, 0), 1, r.level_dimensions[1])  # 1 um/px, the detection resolution
    sharp = tile_blur_um(rgb, 1.0)
    assert sharp is not None and 0.5 < sharp < 1.3
    for sigma_um, lo in ((2.0, 1.9), (3.0, 2.4)):
        blurred = np.stack([ndi.gaussian_filter(rgb[..., c].astype(np.float32), sigma_um) for c in range(3)], -1)
        b = tile_blur_um(blurred.round().astype(np.uint8), 1.0)
        assert b > max(lo, OUT_OF_FOCUS_UM), (sigma_um, b)
    assert tile_blur_um(np.full((64, 64, 3), 240, np.uint8), 1.0) is None  # glass: no measure


def test_out_of_focus_fraction_counts_blurred_tiles(small, model, root):
    with open_slide(small) as r:
        rgb = r.read_region((0, 0), 0, (1536, 1536)).astype(np.float32)
    half = rgb.copy()
    # 2 um blur (8 px at 0.25 um/px) over the right tiles' whole padded boxes (core from 192 um, pad from 160 um)
    half[:, 640:] = np.stack([ndi.gaussian_filter(rgb[:, 640:, c], 8.0) for c in range(3)], -1)
    folder = root / "focus"
    folder.mkdir()
    Image.fromarray(rgb.round().astype(np.uint8)).save(folder / "sharp.png")
    Image.fromarray(half.round().astype(np.uint8)).save(folder / "half.png")
    run = count_slides([folder], model, root / "focus-out", opts(mpp=0.25, tile_um=192.0, confidence_threshold=0.9))
    by = {s.slide: s for s in run.slides}
    assert by["sharp"].out_of_focus_fraction == 0.0
    assert 0.3 <= by["half"].out_of_focus_fraction <= 0.7
    s = {r["slide"]: r for r in rows(root / "focus-out" / "summary.csv")}
    assert float(s["half"]["out_of_focus_fraction"]) == pytest.approx(by["half"].out_of_focus_fraction, abs=1e-4)
    n_unid, n_wbc = int(s["sharp"]["n_unidentified"]), int(s["sharp"]["n_wbc"])
    assert n_wbc and float(s["sharp"]["unidentified_rate"]) == pytest.approx(n_unid / n_wbc, abs=1e-4)


# --------------------------------------------------------------------------- review material (issue 17)


def test_gallery_and_report_of_a_slide_whose_cells_are_all_one_class(small, root, capsys):
    """Every cell neutrophil: the upper bound is exactly 100%, the report and the one gallery are written."""
    one_class = write_linear_model(root / "one-class.onnx", bias={"neutrophil": 50.0})
    out = root / "one-class-out"
    main(["count", str(small), "--model", str(one_class), "--out", str(out), "--gallery", "--gallery-k", "2", "--quiet"])
    assert "warning" not in capsys.readouterr().err
    s = rows(out / "summary.csv")[0]
    assert s["status"] == "ok" and int(s["n_neutrophil"]) == int(s["n_wbc"]) > 0
    assert s["ci95_hi_neutrophil"] == "100.00" and float(s["ci95_lo_neutrophil"]) < 100
    assert (out / "small.report.html").stat().st_size > 1000
    assert [p.name for p in out.glob("small.gallery.*.png")] == ["small.gallery.neutrophil.png"]
    assert "Count and quality" in (out / "small.report.html").read_text()


def test_a_report_that_cannot_be_written_is_an_error_for_that_slide(small, zoned, model, root, capsys):
    out = root / "report-blocked"
    (out / "small.report.html").mkdir(parents=True)  # a folder where the report should go
    with pytest.raises(SystemExit) as exc:
        main(["count", str(small), str(zoned), "--model", str(model), "--out", str(out), "--gallery", "--quiet"])
    assert exc.value.code == 3
    by = {r["slide"]: r for r in rows(out / "summary.csv")}
    assert by["small"]["status"] == "error" and "gallery/report not written" in by["small"]["error"]
    assert by["zoned"]["status"] == "ok" and (out / "zoned.report.html").is_file()
    err = capsys.readouterr().err
    assert "error: small: gallery/report not written" in err and "Traceback" not in err
    # the folder in the way goes: --resume writes the review material without counting again
    (out / "small.report.html").rmdir()
    main(["count", str(small), str(zoned), "--model", str(model), "--out", str(out), "--gallery", "--quiet", "--resume"])
    assert rows(out / "summary.csv")[0]["status"] == "ok" and (out / "small.report.html").is_file()
