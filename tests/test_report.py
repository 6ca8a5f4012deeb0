"""The one-page slide report: PNG and self-contained HTML, the differential and its intervals; torch-free."""
from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from wbc_deploy.classes import COLOURS
from wbc_deploy.errors import WbcError
from wbc_deploy.explain.report import differential, wilson_interval, write_slide_report


def _slide(n=120, seed=0):
    rng = np.random.default_rng(seed)
    thumb = np.full((60, 80, 3), 235, np.uint8)
    names = rng.choice(["neutrophil", "lymphocyte", "monocyte", "eosinophil"], n, p=[0.6, 0.3, 0.07, 0.03])
    xy = np.column_stack([rng.uniform(0, 8000, n), rng.uniform(0, 6000, n)])
    counts = {c: int((names == c).sum()) for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil")}
    counts["basophil"] = 0
    return thumb, xy, names, counts


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.scripts, self.rows, self._row, self._cell = [], [], 0, [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("a", "link") or (tag != "img" and "src" in a):
            self.links.append(a)
        if tag == "script":
            self.scripts += 1
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        if tag == "tr":
            self.rows.append(self._row)
            self._row = None


def test_html_report_is_self_contained_with_counts_and_settings(tmp_path):
    thumb, xy, names, counts = _slide()
    path = write_slide_report(tmp_path / "r" / "slide.html", slide="<b>slide&1</b>", counts=counts, thumbnail=thumb,
                              downsample=100.0, cell_xy=xy, cell_labels=list(names),
                              settings={"model": "run/model.onnx", "backend": "ort", "thresholds": {"min_area_um2": 20}})
    text = path.read_text()
    assert "<b>slide" not in text and "&lt;b&gt;slide&amp;1&lt;/b&gt;" in text
    page = _Collect()
    page.feed(text)
    assert len(page.imgs) == 2 and not page.links and page.scripts == 0
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
    n = len(names)
    table = {r[0]: r for r in page.rows if r and r[0] in counts}
    assert set(table) == set(counts)
    for c, k in counts.items():
        assert table[c][1] == str(k) and float(table[c][2]) == pytest.approx(100 * k / n, abs=0.05)
    total = [r for r in page.rows if r and r[0] == "total"][0]
    assert total[1] == str(n)
    settings = {r[0]: r[1] for r in page.rows if r and len(r) == 2}
    assert settings["backend"] == "ort" and settings["thresholds"] == '{"min_area_um2": 20}'


def _colour_pixels(path, colour_hex):
    rgb = np.array([int(colour_hex[i:i + 2], 16) for i in (1, 3, 5)])
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return int((arr == rgb).all(axis=2).sum())


def test_png_report_marks_cells_in_class_colours(tmp_path):
    thumb, xy, names, counts = _slide()
    classes = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
    idx = np.array([classes.index(c) for c in names])
    marked = write_slide_report(tmp_path / "slide.png", slide="s1", counts=counts, classes=classes, thumbnail=thumb,
                                downsample=100.0, cell_xy=xy, cell_labels=idx, settings={"model": "m.onnx"})
    bare = write_slide_report(tmp_path / "bare.png", slide="s1", counts=counts, classes=classes, thumbnail=thumb,
                              downsample=100.0, settings={"model": "m.onnx"})
    with Image.open(marked) as im:
        assert im.format == "PNG" and im.size == (1100, 800)
    for c in classes:
        extra = _colour_pixels(marked, COLOURS[c]) - _colour_pixels(bare, COLOURS[c])
        assert (extra > 0) == (counts[c] > 0), c  # every class with cells, and only those, is marked


def test_report_without_thumbnail_or_cells(tmp_path):
    path = write_slide_report(tmp_path / "empty.png", slide="s", counts={"neutrophil": 0})
    with Image.open(path) as im:
        im.verify()
    path = write_slide_report(tmp_path / "few.html", slide="s", counts={"neutrophil": 2, "lymphocyte": 1},
                              cell_xy=[[10, 10], [20, 30], [5, 5]], cell_labels=["neutrophil", "neutrophil", "lymphocyte"])
    assert len(re.findall(r'src="data:image/png;base64,', path.read_text())) == 2


def test_differential_and_wilson_interval():
    rows = differential({"neutrophil": 60, "lymphocyte": 35, "monocyte": 5, "basophil": 0}, ["basophil", "neutrophil", "lymphocyte", "monocyte"])
    assert [r.name for r in rows] == ["basophil", "neutrophil", "lymphocyte", "monocyte"]
    assert sum(r.percent for r in rows) == pytest.approx(100)
    mono = rows[3]
    # Wilson 95% interval for 5/100, worked by hand from the formula: 0.0215 to 0.1118.
    assert (mono.ci_low, mono.ci_high) == pytest.approx((2.15, 11.18), abs=0.01)
    assert rows[0].ci_low == 0 and 0 < rows[0].ci_high < 4
    assert wilson_interval(0, 0) == (0.0, 0.0)
    for k, n in ((1, 7), (50, 100), (99, 100)):
        lo, hi = wilson_interval(k, n)
        assert 0 <= lo < k / n < hi <= 1


def test_report_refuses_bad_inputs(tmp_path):
    with pytest.raises(WbcError, match=".png or .html"):
        write_slide_report(tmp_path / "r.pdf", slide="s", counts={"neutrophil": 1})
    with pytest.raises(WbcError, match="2 cell positions but 1 cell labels"):
        write_slide_report(tmp_path / "r.png", slide="s", counts={"neutrophil": 1}, cell_xy=[[0, 0], [1, 1]], cell_labels=["neutrophil"])
    with pytest.raises(WbcError, match="indices must be"):
        write_slide_report(tmp_path / "r.png", slide="s", counts={"neutrophil": 1}, cell_xy=[[0, 0]], cell_labels=[3])
    with pytest.raises(WbcError, match="negative"):
        write_slide_report(tmp_path / "r.png", slide="s", counts={"neutrophil": -1})
    assert not list(tmp_path.iterdir())


def test_report_tints_the_zones_and_lists_the_count_and_quality_facts(tmp_path):
    thumb, xy, names, counts = _slide()
    zones = np.zeros((30, 40), np.uint8)
    zones[5:25, 2:12], zones[5:25, 12:28], zones[5:25, 28:38] = 1, 2, 3  # thick, monolayer, sparse
    facts = {"n_wbc": 130, "n_counted": 120, "area": "the monolayer, 0.45 mm2 (default: monolayer found)",
             "area_mm2": 0.4511, "max_wbc": None, "out_of_focus_fraction": 0.25, "unidentified_rate": 10 / 130}
    path = write_slide_report(tmp_path / "zones.html", slide="s", counts=counts, thumbnail=thumb, downsample=100.0,
                              cell_xy=xy, cell_labels=list(names), zones=zones, facts=facts)
    page = _Collect()
    page.feed(path.read_text())
    shown = {r[0]: r[1] for r in page.rows if r and len(r) == 2}
    assert shown["WBCs counted (denominator)"] == "120"
    assert shown["counting area"].startswith("the monolayer") and shown["area counted (mm2)"] == "0.45"
    assert shown["tiles out of focus"] == "25.0%" and shown["unidentified rate"] == "7.7%"
    assert "--max-wbc" not in shown  # None values are left out
    tinted = write_slide_report(tmp_path / "zones.png", slide="s", counts=counts, thumbnail=thumb, downsample=100.0, zones=zones)
    plain = write_slide_report(tmp_path / "plain.png", slide="s", counts=counts, thumbnail=thumb, downsample=100.0)
    with Image.open(tinted) as a, Image.open(plain) as b:
        assert (np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB"))).any()
    with pytest.raises(WbcError, match="zone map"):
        write_slide_report(tmp_path / "bad.png", slide="s", counts=counts, zones=np.zeros((2, 2, 2)))


def test_one_class_report_has_no_negative_error_bar(tmp_path):
    """Issue 17: every counted cell one class (k == n) used to give an upper bound below the estimate."""
    for n in (4, 10, 14, 19, 24, 29, 33, 34, 44, 45, 50, 51, 58, 59):
        rows = differential({"neutrophil": n, "lymphocyte": 0})
        assert rows[0].ci_high == 100.0 and rows[0].ci_low < rows[0].percent == 100.0
    path = write_slide_report(tmp_path / "one.png", slide="s", counts={"neutrophil": 59, "lymphocyte": 0})
    with Image.open(path) as im:
        im.verify()
