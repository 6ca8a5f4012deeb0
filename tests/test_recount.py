"""`wbc-deploy recount`: corrections from the review page (JSON) or QuPath (GeoJSON) back into the counts.

A synthetic slide is counted once (tiny linear ONNX model, a confidence threshold so that some cells are
``unidentified``); each test copies the results folder and checks the reviewed counts, percentages and
agreement figures against values computed here from cells.csv and the corrections.
"""
from __future__ import annotations

import csv
import json
import shutil
import uuid

import pytest
from test_count import write_linear_model

from wbc_deploy.classes import CLASSES, NOT_A_WBC, UNIDENTIFIED
from wbc_deploy.cli import main
from wbc_deploy.errors import WbcError
from wbc_deploy.pipeline import CountOptions, count_slides
from wbc_deploy.pipeline.outputs import cell_uuid
from wbc_deploy.pipeline.recount import recount
from wbc_deploy.slide.synth import write_synthetic_slide


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("recount")
    model = write_linear_model(root / "linear.onnx")
    slides = root / "slides"
    slides.mkdir()
    write_synthetic_slide(slides / "smear.svs", 2048, 2048, 30, mpp=0.25, seed=3)
    write_synthetic_slide(slides / "other.svs", 1024, 1024, 6, mpp=0.25, seed=4)
    out = root / "out"
    run = count_slides([slides / "smear.svs", slides / "other.svs"], model, out,
                       CountOptions(quiet=True, tile_um=128.0, workers=2, geojson=True, confidence_threshold=0.7))
    assert run.exit_code == 0
    return out


@pytest.fixture
def out(results, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(results, dst)
    return dst


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def summary_row(out, slide="smear"):
    return next(r for r in rows(out / "summary.csv") if r["slide"] == slide)


def write_json(path, slide, corrections):
    path.write_text(json.dumps({"slide": slide, "corrections": [{"cell_id": c, "label": lab} for c, lab in corrections]}))
    return path


def pick_corrections(cells):
    """Four corrections of different kinds: to another class, to not_a_wbc, to unidentified, and from unidentified."""
    classed = [r for r in cells if r["label"] != UNIDENTIFIED]
    unid = [r for r in cells if r["label"] == UNIDENTIFIED]
    assert len(classed) >= 3 and unid, "the fixture needs both classified and unidentified cells"
    other = next(c for c in CLASSES if c != classed[0]["label"])
    return [(int(classed[0]["cell_id"]), other), (int(classed[1]["cell_id"]), NOT_A_WBC),
            (int(classed[2]["cell_id"]), UNIDENTIFIED), (int(unid[0]["cell_id"]), "eosinophil")]


def expected(cells, corrections):
    """Reviewed counts, percentages and agreement computed independently of recount."""
    fix = dict(corrections)
    pred = [r["label"] for r in cells]
    rev = [fix.get(int(r["cell_id"]), r["label"]) for r in cells]
    n = len(cells)
    counts = {c: rev.count(c) for c in [*CLASSES, UNIDENTIFIED, NOT_A_WBC]}
    n_wbc = n - counts[NOT_A_WBC]
    n_counted = n_wbc - counts[UNIDENTIFIED]
    same = sum(p == r for p, r in zip(pred, rev))
    per_class = {}
    for c in CLASSES:
        k = pred.count(c)
        per_class[c] = f"{sum(p == r == c for p, r in zip(pred, rev)) / k:.4f}" if k else ""
    return {"n_wbc": str(n_wbc), "n_unidentified": str(counts[UNIDENTIFIED]), "n_counted": str(n_counted),
            "n_not_a_wbc": str(counts[NOT_A_WBC]), "n_corrected": str(n - same), "reviewed": "1",
            "agreement": f"{same / n:.4f}", **{f"n_{c}": str(counts[c]) for c in CLASSES},
            **{f"pct_{c}": f"{100 * counts[c] / n_counted:.2f}" for c in CLASSES},
            **{f"agreement_{c}": per_class[c] for c in CLASSES}}, rev


def check(out, corrections, slide="smear"):
    cells = rows(out / f"{slide}.cells.csv")
    want, rev = expected(cells, corrections)
    got = summary_row(out, slide)
    assert {k: got[k] for k in want} == want
    assert [r["label_reviewed"] for r in cells] == rev
    return want


# --------------------------------------------------------------------------- the page's JSON


def test_page_json_corrections_give_the_reviewed_counts_exactly(out, tmp_path):
    before = summary_row(out)
    other_before = summary_row(out, "other")
    cells = rows(out / "smear.cells.csv")
    corr = pick_corrections(cells)
    res = recount(out, write_json(tmp_path / "c.json", "smear", corr))
    want = check(out, corr)
    assert res.changed and res.n_corrected == 4 and int(want["n_wbc"]) == len(cells) - 1
    assert res.agreement == pytest.approx((len(cells) - 4) / len(cells))
    after = summary_row(out)
    for k in ("mean_confidence", "seconds", "backend", "mpp", "model_sha256", "settings_sha256", "status"):
        assert after[k] == before[k]  # columns recount does not own are kept as they were
    other = summary_row(out, "other")
    assert other.pop("reviewed") == "0" and {k: other[k] for k in other_before} == other_before
    assert [r[k] for r in rows(out / "smear.cells.csv") for k in cells[0]] == [r[k] for r in cells for k in cells[0]]


def test_applying_the_same_file_twice_changes_nothing(out, tmp_path):
    corr = pick_corrections(rows(out / "smear.cells.csv"))
    f = write_json(tmp_path / "c.json", "smear", corr)
    recount(out, f)
    snap = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = recount(out, f)
    assert not res.changed
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == snap


def test_a_newer_file_replaces_the_older_review(out, tmp_path):
    original = summary_row(out)
    recount(out, write_json(tmp_path / "a.json", "smear", pick_corrections(rows(out / "smear.cells.csv"))))
    res = recount(out, write_json(tmp_path / "b.json", "smear", []))
    assert res.n_corrected == 0 and res.agreement == 1.0
    after = summary_row(out)
    for k in ("n_wbc", "n_unidentified", "n_counted", *[f"n_{c}" for c in CLASSES], *[f"pct_{c}" for c in CLASSES]):
        assert after[k] == original[k]
    assert after["n_corrected"] == "0" and after["agreement"] == "1.0000"


@pytest.mark.parametrize("corrections, message", [
    ([(99999, "neutrophil")], "cells that smear.cells.csv does not have (99999)"),
    ([(1, "megakaryocyte")], "unknown class 'megakaryocyte'"),
])
def test_an_unknown_cell_or_class_is_one_error_and_nothing_is_written(out, tmp_path, corrections, message):
    snap = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    f = write_json(tmp_path / "bad.json", "smear", [(2, "monocyte"), *corrections])
    with pytest.raises(WbcError, match="nothing written") as exc:
        recount(out, f)
    assert message in str(exc.value)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == snap


def test_cli_errors_are_one_line_with_exit_code_2(out, tmp_path, capsys):
    cases = [write_json(tmp_path / "a.json", "no-such-slide", []),
             write_json(tmp_path / "b.json", "smear", [(1, "platelet")])]
    (tmp_path / "c.json").write_text("{not json")
    (tmp_path / "d.json").write_text(json.dumps({"slide": "smear", "corrections": [{"cell_id": "1", "label": "neutrophil"}]}))
    for f in [*cases, tmp_path / "c.json", tmp_path / "d.json", tmp_path / "missing.json"]:
        with pytest.raises(SystemExit) as exc:
            main(["recount", str(out), "--corrections", str(f)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


def test_cli_prints_the_reviewed_differential(out, tmp_path, capsys):
    corr = pick_corrections(rows(out / "smear.cells.csv"))
    main(["recount", str(out), "--corrections", str(write_json(tmp_path / "c.json", "smear", corr))])
    text = capsys.readouterr().out
    assert "4 of 30 cells reclassified" in text and "agreement" in text
    main(["recount", str(out), "-c", str(tmp_path / "c.json")])
    assert "already applied" in capsys.readouterr().out


def test_other_summary_columns_are_kept_and_wilson_intervals_recomputed(out, tmp_path):
    """Columns another version of count adds (here: issue 13's) survive; the interval columns follow the new counts."""
    path = out / "summary.csv"
    srows = rows(path)
    fields = list(srows[0]) + ["area_mm2", "ci95_lo_neutrophil", "ci95_hi_neutrophil"]
    for r in srows:
        r.update({"area_mm2": "0.2621", "ci95_lo_neutrophil": "x", "ci95_hi_neutrophil": "y"})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(srows)
    corr = pick_corrections(rows(out / "smear.cells.csv"))
    recount(out, write_json(tmp_path / "c.json", "smear", corr))
    from wbc_deploy.explain.report import wilson_interval

    r = summary_row(out)
    lo, hi = wilson_interval(int(r["n_neutrophil"]), int(r["n_counted"]))
    assert (r["area_mm2"], r["ci95_lo_neutrophil"], r["ci95_hi_neutrophil"]) == ("0.2621", f"{100 * lo:.2f}", f"{100 * hi:.2f}")
    assert list(rows(path)[0])[: len(fields)] == fields


def test_a_resumed_count_keeps_the_review(out, tmp_path, results):
    """`count --resume` re-emits finished slides' rows: the review columns and label_reviewed stay."""
    corr = pick_corrections(rows(out / "smear.cells.csv"))
    recount(out, write_json(tmp_path / "c.json", "smear", corr))
    reviewed = summary_row(out)
    cells = (out / "smear.cells.csv").read_bytes()
    root = results.parent  # the fixture's model and slides
    run = count_slides([root / "slides" / "smear.svs", root / "slides" / "other.svs"], root / "linear.onnx", out,
                       CountOptions(quiet=True, tile_um=128.0, workers=2, geojson=True, confidence_threshold=0.7, resume=True))
    assert run.exit_code == 0
    assert summary_row(out) == reviewed and (out / "smear.cells.csv").read_bytes() == cells


# --------------------------------------------------------------------------- QuPath's GeoJSON


def test_geojson_ids_are_stable_uuids_of_the_cells(results):
    gj = json.loads((results / "smear.geojson").read_text())
    cells = rows(results / "smear.cells.csv")
    ids = [f["id"] for f in gj["features"]]
    assert len(set(ids)) == len(ids) == len(cells)
    for f, r in zip(gj["features"], cells):
        assert uuid.UUID(f["id"]).version == 5
        assert f["id"] == cell_uuid("smear", int(r["cell_id"]), r["x"], r["y"])
        props = f["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == r["label"]
        m = props["measurements"]
        assert m["cell_id"] == int(r["cell_id"]) and m["confidence"] == pytest.approx(float(r["confidence"]), abs=1e-6)
        assert set(m) == {"cell_id", "confidence", "area_um2", *[f"p_{c}" for c in CLASSES]}
    other = json.loads((results / "other.geojson").read_text())
    assert not set(ids) & {f["id"] for f in other["features"]}


def qupath_export(gj, changes):
    """What QuPath's "Export as GeoJSON" gives after reclassifying: same ids, new classification, pretty-printed,
    plus an annotation the technologist drew (ignored by recount)."""
    feats = []
    for f in gj["features"]:
        f = json.loads(json.dumps(f))
        cid = f["properties"]["measurements"]["cell_id"]
        if cid in changes:
            f["properties"]["classification"] = {"name": changes[cid], "color": [1, 2, 3]}
        feats.append(f)
    feats.append({"type": "Feature", "id": str(uuid.uuid4()), "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
                  "properties": {"objectType": "annotation", "classification": {"name": "Region*", "color": [0, 0, 0]}}})
    return {"type": "FeatureCollection", "features": feats}


def test_qupath_geojson_corrections_give_the_same_counts_as_the_page(out, tmp_path, results):
    cells = rows(out / "smear.cells.csv")
    corr = pick_corrections(cells)
    gj = json.loads((out / "smear.geojson").read_text())
    # QuPath users type class names their own way: capitals and spaces are accepted
    names = {NOT_A_WBC: "Not a WBC", UNIDENTIFIED: "Unidentified"}
    f = tmp_path / "qupath.geojson"
    f.write_text(json.dumps(qupath_export(gj, {c: names.get(lab, lab.capitalize()) for c, lab in corr}), indent=2))
    res = recount(out, f)  # the slide is found from the feature ids
    assert res.slide == "smear" and res.ignored_features == 1
    check(out, corr)
    gj_json = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    page = tmp_path / "page"
    shutil.copytree(results, page)
    recount(page, write_json(tmp_path / "c.json", "smear", corr))
    assert {p.name: p.read_bytes() for p in page.iterdir() if p.is_file()} == gj_json


def test_geojson_of_another_slide_or_with_unknown_ids_is_refused(out, tmp_path):
    gj = json.loads((out / "smear.geojson").read_text())
    f = tmp_path / "q.geojson"
    f.write_text(json.dumps(qupath_export(gj, {})))
    with pytest.raises(WbcError, match="not 'other'"):
        recount(out, write_json(tmp_path / "c.json", "smear", []), slide="other")
    with pytest.raises(WbcError, match="does not have"):
        recount(out, f, slide="other")
    gj["features"][0]["id"] = str(uuid.uuid4())
    f.write_text(json.dumps(gj))
    with pytest.raises(WbcError, match="1 correction"):
        recount(out, f)
