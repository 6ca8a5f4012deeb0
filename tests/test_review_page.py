"""`count --review`: the review page in a real headless Chromium (system package, driven by Playwright).

The browser test counts a synthetic slide with ``--review``, opens ``smear.review.html`` from a file://
URL, reclassifies two cells with the keyboard (a class key, an arrow, another class key), checks the
live differential, exports the corrections through the page's download, runs ``recount`` on them and
checks the counts changed exactly so. A screenshot is kept in ``test-artifacts/`` (git-ignored).

It skips, saying why, only where no Chromium can be found and ``.ci/run`` did not manage to install one
(``.ci/run`` sets WBC_DEPLOY_REQUIRE_BROWSER=1 once Chromium is installed, and then a missing browser fails).
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from test_count import write_linear_model

from wbc_deploy.classes import CLASSES, NOT_A_WBC, UNIDENTIFIED
from wbc_deploy.explain.browser import chromium_executable, launch_chromium
from wbc_deploy.explain.review import ReviewCell, encode_thumbnail, page_order, review_keys, review_labels, write_review_page
from wbc_deploy.pipeline import CountOptions, count_slides
from wbc_deploy.pipeline.recount import recount
from wbc_deploy.slide.synth import write_synthetic_slide

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- the page file (no browser)


def test_one_key_per_label_and_the_page_order():
    labels = review_labels(list(CLASSES))
    keys = review_keys(labels)
    assert keys == {"basophil": "b", "eosinophil": "e", "lymphocyte": "l", "monocyte": "m", "neutrophil": "n",
                    UNIDENTIFIED: "u", NOT_A_WBC: "x"}
    odd = review_keys(["band", "basophil", "blast", "bb", UNIDENTIFIED, NOT_A_WBC])
    assert len(set(odd.values())) == len(odd)
    cells = [ReviewCell(1, "neutrophil", 0.9), ReviewCell(2, UNIDENTIFIED, 0.5), ReviewCell(3, "basophil", 0.8),
             ReviewCell(4, "neutrophil", 0.6), ReviewCell(5, UNIDENTIFIED, 0.4), ReviewCell(6, "neutrophil", 0.6)]
    assert page_order(cells, list(CLASSES)) == [(UNIDENTIFIED, [4, 1]), ("basophil", [2]), ("neutrophil", [3, 5, 0])]


@pytest.mark.parametrize("images", ["inline", "folder"])
def test_the_page_is_self_contained_and_offline(tmp_path, images):
    rng = np.random.default_rng(0)
    cells = [ReviewCell(i, CLASSES[i % 5], float(rng.uniform(0.3, 1))) for i in range(1, 21)]
    thumbs = [encode_thumbnail(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in cells]
    page = write_review_page(tmp_path / "s.review.html", "s", list(CLASSES), cells, iter(thumbs), images=images)
    text = page.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), "the page must not load anything from a network"
    folder = tmp_path / "s.review"
    if images == "folder":
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.jpg" for i in range(1, 21))
        assert (folder / "3.jpg").read_bytes() == thumbs[2]
    else:
        assert not folder.exists() and text.count("/9j/") == 20  # 20 inline JPEGs (base64 of FF D8 FF)


# --------------------------------------------------------------------------- in Chromium


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("WBC_DEPLOY_REQUIRE_BROWSER") == "1":
            raise
        pytest.skip("the Python package playwright is not installed (pip install 'wbc-deploy[dev]')")
    if chromium_executable() is None:
        if os.environ.get("WBC_DEPLOY_REQUIRE_BROWSER") == "1":
            pytest.fail("WBC_DEPLOY_REQUIRE_BROWSER=1 but no Chromium was found")
        pytest.skip("no Chromium on this machine and it could not be installed (apt-get install chromium; .ci/run tries)")
    return sync_playwright


@pytest.mark.parametrize("images", ["inline", "folder"])
def test_thumbnails_load_lazily_from_a_file_url(tmp_path, images):
    sync_playwright = _browser_or_skip()
    rng = np.random.default_rng(1)
    cells = [ReviewCell(i, CLASSES[i % 5], float(rng.uniform(0.3, 1))) for i in range(1, 401)]
    thumbs = [encode_thumbnail(np.full((8, 8, 3), i % 255, np.uint8)) for i in range(len(cells))]
    page_path = write_review_page(tmp_path / "s.review.html", "s", list(CLASSES), cells, iter(thumbs), images=images)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(page_path.as_uri())
            page.wait_for_selector("html[data-built='1']", state="attached", timeout=30000)
            sizes = page.eval_on_selector_all(".cell img", """els => Promise.all(els.filter(i => i.getAttribute('src'))
                .map(i => i.decode().then(() => i.naturalWidth, () => 0)))""")
        finally:
            browser.close()
    assert 0 < len(sizes) < len(cells), "only the tiles near the viewport get their image"
    assert set(sizes) == {80}


@pytest.fixture(scope="module")
def reviewed_slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    model = write_linear_model(root / "linear.onnx")
    slide = root / "slides" / "smear.svs"
    slide.parent.mkdir()
    write_synthetic_slide(slide, 2048, 2048, 30, mpp=0.25, seed=3)
    out = root / "out"
    run = count_slides([slide], model, out, CountOptions(quiet=True, tile_um=128.0, workers=2, review=True, confidence_threshold=0.7))
    assert run.exit_code == 0 and (out / "smear.review.html").is_file()
    return out


@pytest.mark.slow
def test_reclassify_two_cells_with_the_keyboard_export_and_recount(reviewed_slide, tmp_path):
    sync_playwright = _browser_or_skip()
    out = reviewed_slide
    cells = {int(r["cell_id"]): r for r in rows(out / "smear.cells.csv")}
    before = next(iter(rows(out / "summary.csv")))
    keys = review_keys(review_labels(list(CLASSES)))
    requests: list[str] = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            ctx = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
            page = ctx.new_page()
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "smear.review.html").as_uri())
            page.wait_for_selector("html[data-ready='1']", state="attached", timeout=30000)
            page.wait_for_selector("html[data-built='1']", state="attached", timeout=30000)
            assert page.locator(".cell").count() == len(cells)
            # unidentified first, least confident first within it
            first_ids = [int(x.split("-")[1]) for x in page.eval_on_selector_all(".cell", "els => els.map(e => e.id)")]
            unid = sorted((float(r["confidence"]), i) for i, r in cells.items() if r["label"] == UNIDENTIFIED)
            assert unid and first_ids[: len(unid)] == [i for _, i in unid]

            changes = {}
            for step in range(2):
                cid = int(page.evaluate("document.documentElement.dataset.selected"))
                new = next(c for c in ("eosinophil", "basophil", "monocyte") if c != cells[cid]["label"] and c not in changes.values())
                page.keyboard.press(keys[new])
                changes[cid] = new
                if step == 0:
                    page.keyboard.press("ArrowRight")  # skip one cell: it keeps its class
            # a third key press, then back to that cell and Backspace: it gets its predicted class again
            page.keyboard.press(keys[NOT_A_WBC])
            assert page.evaluate("document.documentElement.dataset.corrected") == "3"
            page.keyboard.press("ArrowLeft")
            page.keyboard.press("Backspace")
            assert page.evaluate("document.documentElement.dataset.corrected") == "2"
            # the live differential: reviewed column of the table
            for lab in set(changes.values()):
                row = page.locator(f"#diff tr[data-l='{review_labels(list(CLASSES)).index(lab)}'] td")
                predicted = sum(r["label"] == lab for r in cells.values())
                assert int(row.nth(3).inner_text()) == predicted + sum(v == lab for v in changes.values())
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "review_page.png"), full_page=False)
            with page.expect_download() as dl:
                page.click("#export")
            download = dl.value
            assert download.suggested_filename == "smear.corrections.json"
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            assert not errors, errors
        finally:
            browser.close()
    assert all(u.startswith(("file:", "data:", "blob:")) for u in requests), [u for u in requests if not u.startswith("file:")][:3]
    exported = json.loads(saved.read_text())
    assert exported == {"slide": "smear", "corrections": [{"cell_id": c, "label": lab} for c, lab in sorted(changes.items())]}

    res = recount(out, saved)
    after = next(iter(rows(out / "summary.csv")))
    assert res.n_corrected == 2 and after["reviewed"] == "1" and after["n_corrected"] == "2"
    for lab in [*CLASSES, UNIDENTIFIED]:
        delta = sum(v == lab for v in changes.values()) - sum(cells[c]["label"] == lab for c in changes)
        assert int(after[f"n_{lab}"]) == int(before[f"n_{lab}"]) + delta, lab
    assert after["n_wbc"] == before["n_wbc"]
    assert after["agreement"] == f"{(len(cells) - 2) / len(cells):.4f}"
    reviewed = {int(r["cell_id"]): r["label_reviewed"] for r in rows(out / "smear.cells.csv")}
    assert reviewed == {c: changes.get(c, r["label"]) for c, r in cells.items()}
