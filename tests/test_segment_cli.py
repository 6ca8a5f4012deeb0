"""`wbc-deploy segment`: output files and formats, scale sources, bad inputs (synthetic fields only)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbc_deploy.cli import main
from wbc_deploy.data.synth_cells import render_field
from wbc_deploy.errors import WbcError
from wbc_deploy.segment import segment_wbcs
from wbc_deploy.segment.files import CSV_COLUMNS, read_label_png, segment_file

MPP = 0.25
WBCS = [("neutrophil", 90.0, 100.0), ("eosinophil", 260.0, 120.0), ("lymphocyte", 150.0, 260.0)]


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> tuple[Path, np.ndarray, list]:
    """A 360 x 340 px field at 0.25 um/px with three WBCs, saved as PNG without any scale."""
    rgb, _cells, _nuclei, truth = render_field(360, 340, MPP, WBCS, np.random.default_rng(5))
    path = tmp_path_factory.mktemp("in") / "field.png"
    Image.fromarray(rgb).save(path)
    return path, rgb, truth


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_writes_csv_and_16_bit_labels_with_consistent_ids(field, tmp_path, capsys):
    path, rgb, truth = field
    out = tmp_path / "out"
    assert _run(["segment", str(path), "--out", str(out), "--mpp", str(MPP), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["field.cells.csv", "field.labels.png", "field.nuclei.png"]

    for name in ("field.labels.png", "field.nuclei.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.mode == "I;16" and im.size == (rgb.shape[1], rgb.shape[0])
    labels, nuclei = read_label_png(out / "field.labels.png"), read_label_png(out / "field.nuclei.png")
    header, rows = _read_csv(out / "field.cells.csv")
    assert tuple(header) == CSV_COLUMNS
    ids = [int(r["cell_id"]) for r in rows]
    assert ids == list(range(1, len(truth) + 1))
    assert set(np.unique(labels)) == set(np.unique(nuclei)) == {0, *ids}
    nz = nuclei > 0
    assert np.array_equal(nuclei[nz], labels[nz])  # nucleus k lies inside cell k

    expected = segment_wbcs(rgb, MPP)  # the CLI writes what the library finds
    assert np.array_equal(labels, expected.labels) and np.array_equal(nuclei, expected.nuclei)
    for r, cell in zip(rows, expected.cells):
        k = int(r["cell_id"])
        ys, xs = np.nonzero(labels == k)
        x, y = float(r["x"]), float(r["y"])
        assert (int(r["bbox_x0"]), int(r["bbox_y0"]), int(r["bbox_x1"]), int(r["bbox_y1"])) == \
            (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert x == pytest.approx(xs.mean(), abs=0.01) and y == pytest.approx(ys.mean(), abs=0.01)
        assert float(r["area_um2"]) == pytest.approx(len(xs) * MPP * MPP, abs=0.01)
        assert float(r["area_um2"]) == pytest.approx(cell.area_um2, abs=0.01)
    # every true WBC is one row, within 5 um of its centre
    for t in truth:
        d = [np.hypot(float(r["x"]) - t.x, float(r["y"]) - t.y) * MPP for r in rows]
        assert min(d) <= 5.0


def test_scale_from_the_file_or_estimated(field, tmp_path, capsys):
    path, rgb, truth = field
    # PNG resolution tags carry the scale: 0.25 um/px = 101600 dpi
    tagged = tmp_path / "tagged.png"
    Image.fromarray(rgb).save(tagged, dpi=(25400 / MPP, 25400 / MPP))
    assert _run(["segment", str(tagged), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr()
    assert "estimated" not in out.err and "0.2500" in out.out
    _, rows = _read_csv(tmp_path / "a" / "tagged.cells.csv")
    assert len(rows) == len(truth)

    # no scale anywhere: estimated from the red cells, and said so
    assert _run(["segment", str(path), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "field.png" in err and "estimated from red cells" in err
    _, rows = _read_csv(tmp_path / "b" / "field.cells.csv")
    assert len(rows) == len(truth)


def test_bad_inputs_fail_one_line_each_and_the_rest_is_written(field, tmp_path, capsys):
    path, _rgb, truth = field
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    code = _run(["segment", str(bad), str(path), str(missing), str(text), "--out", str(out), "--mpp", "0.25", "-q"])
    assert code == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert any("broken.png" in line for line in err) and any("missing.jpg" in line and "not found" in line for line in err)
    assert any("notes.txt" in line for line in err)
    assert "Traceback" not in "\n".join(err)
    # the good input is complete, nothing half-written is left behind
    assert sorted(p.name for p in out.iterdir()) == ["field.cells.csv", "field.labels.png", "field.nuclei.png"]
    assert len(_read_csv(out / "field.cells.csv")[1]) == len(truth)

    assert _run(["segment", str(bad), "--out", str(tmp_path / "c"), "-q"]) == 2  # nothing succeeded


def test_bad_options_are_one_line_and_exit_2(field, tmp_path, capsys):
    path, _rgb, _truth = field
    assert _run(["segment", str(path), "--out", str(tmp_path / "o"), "--mpp", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mpp" in err[0]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert _run(["segment", str(path), "--out", str(not_a_dir)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_same_output_name_is_refused(field, tmp_path, capsys):
    path, rgb, _truth = field
    (tmp_path / "a").mkdir()
    other = tmp_path / "a" / "field.jpg"
    Image.fromarray(rgb).save(other, quality=95)
    assert _run(["segment", str(path), str(other), "--out", str(tmp_path / "o"), "--mpp", "0.25", "-q"]) == 3
    assert "same output name" in capsys.readouterr().err


def test_level_zero_too_big_is_refused_with_a_pointer_to_count(field, tmp_path):
    path, _rgb, _truth = field
    with pytest.raises(WbcError, match="wbc-deploy count"):
        segment_file(path, tmp_path, mpp=MPP, max_pixels=10_000)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_svs_slide_uses_its_recorded_scale(tmp_path, capsys):
    from wbc_deploy.slide.synth import read_truth, write_synthetic_slide

    slide = tmp_path / "small.svs"
    truth_csv = write_synthetic_slide(slide, 640, 512, n_cells=3, mpp=MPP, seed=4)
    result = segment_file(slide, tmp_path / "out")
    assert result.mpp_source == "file" and result.mpp == pytest.approx(MPP, rel=1e-3)
    _, rows = _read_csv(tmp_path / "out" / "small.cells.csv")
    truth = read_truth(truth_csv)
    assert len(rows) == len(truth)
    for x, y, _label in truth:
        assert min(np.hypot(float(r["x"]) - x, float(r["y"]) - y) for r in rows) * MPP <= 5.0


def test_edge_column_marks_cells_cut_by_the_image_border(tmp_path):
    """Cells cut by the left and right borders get edge=1, the whole one in the middle edge=0."""
    wbcs = [("lymphocyte", 6.0, 170.0), ("neutrophil", 180.0, 168.0), ("lymphocyte", 354.0, 170.0)]  # pixels
    rgb, _cells, _nuclei, _truth = render_field(360, 340, MPP, wbcs, np.random.default_rng(7))
    path = tmp_path / "cut.png"
    Image.fromarray(rgb).save(path)
    segment_file(path, tmp_path / "out", mpp=MPP)
    _, rows = _read_csv(tmp_path / "out" / "cut.cells.csv")
    by_x = sorted(rows, key=lambda r: float(r["x"]))
    assert len(by_x) == 3
    assert [int(r["edge"]) for r in by_x] == [1, 0, 1]
    assert int(by_x[0]["bbox_x0"]) == 0 and int(by_x[2]["bbox_x1"]) == rgb.shape[1]
