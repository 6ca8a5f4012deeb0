"""Failure paths of `count` on real files: a slide whose pixels turn out unreadable in the middle of the scan
(it opens, its thumbnail and first tiles read, then OpenSlide fails to decode a tile), and a partial slide
resumed with another model.

The damaged slide is a real synthetic ``.svs`` whose level-0 TIFF tiles in the bottom quarter are overwritten
with bytes that are not deflate data: OpenSlide opens it and reads the top of the slide normally.
"""
from __future__ import annotations

import csv
import shutil

import pytest
import tifffile

from wbc_deploy.cli import main
from wbc_deploy.errors import WbcError
from wbc_deploy.pipeline import CountInterrupted, CountOptions, count_slides
from wbc_deploy.slide.synth import write_synthetic_slide

try:
    from test_runtime_common import make_onnx, tiny_card
except ImportError:  # tests/ as a package
    from .test_runtime_common import make_onnx, tiny_card

SIDE = 2048
#: Level-0 rows from here down are unreadable: scan tiles of the top three rows (of four) are fine.
BAD_FROM_Y = 1536


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def damage_bottom(path, from_y: int = BAD_FROM_Y) -> int:
    """Overwrite the compressed data of level 0's TIFF tiles at y >= from_y; returns how many."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert page.is_tiled and page.imagewidth == SIDE
        per_row = -(-page.imagewidth // page.tilewidth)
        spans = [(o, n) for k, (o, n) in enumerate(zip(page.dataoffsets, page.databytecounts))
                 if (k // per_row) * page.tilelength >= from_y]
    blob = bytearray(path.read_bytes())
    for offset, n in spans:
        blob[offset : offset + n] = (b"\x00not-zlib" * (n // 9 + 1))[:n]
    path.write_bytes(bytes(blob))
    return len(spans)


def opts(**kw) -> CountOptions:
    kw.setdefault("quiet", True)
    kw.setdefault("tile_um", 128.0)  # 16 scan tiles of 512 px
    kw.setdefault("workers", 2)
    return CountOptions(**kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("failures")
    good = root / "slides" / "b_good.svs"
    good.parent.mkdir()
    write_synthetic_slide(good, SIDE, SIDE, 30, mpp=0.25, seed=3)
    bad = root / "slides" / "a_bad.svs"
    shutil.copy(good, bad)
    assert damage_bottom(bad) == 16
    model = make_onnx(root / "model.onnx", tiny_card(32))
    other = make_onnx(root / "other.onnx", tiny_card(32), opset=18)  # same card and weights, other bytes
    reference = root / "reference"
    count_slides([good], model, reference, opts())
    return {"root": root, "good": good, "bad": bad, "model": model, "other": other, "reference": reference}


def test_a_slide_failing_mid_scan_gets_an_error_row_and_the_next_slide_is_counted(files, capsys):
    out = files["root"] / "mixed"
    committed = []
    run = count_slides([files["bad"], files["good"]], files["model"], out,
                       opts(tile_hook=lambda slide, n: committed.append((slide, n))))
    assert [(s.slide, s.status) for s in run.slides] == [("a_bad", "error"), ("b_good", "ok")]
    assert run.exit_code == 3
    bad_tiles = [n for slide, n in committed if slide == "a_bad"]
    assert bad_tiles and max(bad_tiles) < 16, "the damaged slide should fail during the scan, after some tiles"
    err = run.slides[0].error
    assert "a_bad" in err and "corrupt" in err and "\n" not in err
    summary = rows(out / "summary.csv")
    assert [(r["slide"], r["status"]) for r in summary] == [("a_bad", "error"), ("b_good", "ok")]
    assert summary[0]["error"] == err and summary[0]["n_wbc"] in ("", "0")
    # nothing of the failed slide's results, not even a partial cells.csv; the good slide's are whole
    assert not any(p.name.startswith("a_bad.") for p in out.iterdir())
    assert (out / "b_good.cells.csv").read_bytes() == (files["reference"] / "b_good.cells.csv").read_bytes()


def test_the_cli_names_the_failed_slide_in_one_line_and_exits_3(files, capsys):
    out = files["root"] / "mixed-cli"
    with pytest.raises(SystemExit) as exc:
        main(["count", str(files["bad"].parent), "--model", str(files["model"]), "--out", str(out), "-q"])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line.split(":")[1].strip() for line in err.splitlines() if line.startswith("error:")] == ["a_bad"]
    assert [r["status"] for r in rows(out / "summary.csv")] == ["error", "ok"]


def test_a_partial_slide_resumed_with_another_model_is_refused_and_kept(files):
    out = files["root"] / "partial"

    def stop_after_three(slide, n):
        if n == 3:
            raise CountInterrupted()

    run = count_slides([files["good"]], files["model"], out, opts(tile_hook=stop_after_three))
    assert run.exit_code == 130
    tiles = out / ".b_good.partial" / "tiles.jsonl"
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert tiles.read_text().count("\n") == 3

    with pytest.raises(WbcError, match=r"cannot resume b_good: .*different model"):
        count_slides([files["good"]], files["other"], out, opts(resume=True))
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # refused before writing

    run = count_slides([files["good"]], files["model"], out, opts(resume=True))  # the right model resumes
    assert run.exit_code == 0 and run.slides[0].tiles_resumed == 3
    assert (out / "b_good.cells.csv").read_bytes() == (files["reference"] / "b_good.cells.csv").read_bytes()
