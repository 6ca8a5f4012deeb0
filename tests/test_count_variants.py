"""`count` beyond the 5-class thread-pool case: a 4-class model (BCCD-like, no basophils) gives 4-class
columns and a summary over those classes, and the process executor with two workers writes the same files as
the thread pool."""
from __future__ import annotations

import csv

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from wbc_deploy.card import ModelCard
from wbc_deploy.cli import main
from wbc_deploy.pipeline import CountOptions, count_slides
from wbc_deploy.pipeline.outputs import cells_header, summary_header
from wbc_deploy.slide.synth import write_synthetic_slide

try:
    from test_runtime_common import make_onnx, tiny_card
except ImportError:  # tests/ as a package
    from .test_runtime_common import make_onnx, tiny_card

FOUR = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
#: Weights under which the slide's cells fall in more than one class.
SEED = 3


def linear_model(path, classes: list[str], seed: int, input_size: int = 32):
    """A real ONNX classifier (mean colour -> Gemm -> Softmax) with a wbc-deploy card for ``classes``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 8, (3, len(classes))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "linear",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(classes)])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(len(classes), np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    card = ModelCard(arch="test-linear", classes=list(classes), input_size=input_size, output="probabilities")
    for k, v in card.to_onnx_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def header(path):
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def opts(**kw) -> CountOptions:
    kw.setdefault("quiet", True)
    kw.setdefault("tile_um", 128.0)
    kw.setdefault("workers", 2)
    return CountOptions(**kw)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    path = root / "smear.svs"
    write_synthetic_slide(path, 2048, 2048, 30, mpp=0.25, seed=3)
    return path


def test_a_four_class_model_counts_into_four_class_columns(slide, tmp_path, capsys):
    model = linear_model(tmp_path / "four.onnx", FOUR, seed=SEED)
    out = tmp_path / "out"
    try:
        main(["count", str(slide), "--model", str(model), "--out", str(out), "--truth", "--geojson", "--workers", "2"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    printed = capsys.readouterr().out
    assert "WBC differential" in printed and "basophil" not in printed.split("counted vs truth")[0]

    cells = rows(out / "smear.cells.csv")
    assert header(out / "smear.cells.csv") == cells_header(FOUR)
    assert [c for c in header(out / "smear.cells.csv") if c.startswith("p_")] == [f"p_{c}" for c in FOUR]
    assert len(cells) >= 25
    labels = [r["label"] for r in cells]
    assert set(labels) <= set(FOUR) and len(set(labels)) >= 2
    for r in cells:
        p = np.array([float(r[f"p_{c}"]) for c in FOUR])
        assert abs(p.sum() - 1) < 1e-4 and r["label"] == FOUR[int(p.argmax())]

    (s,) = rows(out / "summary.csv")
    assert header(out / "summary.csv") == summary_header(FOUR)
    assert not any("basophil" in c for c in header(out / "summary.csv"))
    assert s["status"] == "ok" and int(s["n_wbc"]) == len(cells) == int(s["n_counted"])
    for c in FOUR:
        assert int(s[f"n_{c}"]) == labels.count(c)
        assert float(s[f"pct_{c}"]) == pytest.approx(100 * labels.count(c) / len(cells), abs=0.01)
    assert sum(float(s[f"pct_{c}"]) for c in FOUR) == pytest.approx(100, abs=0.05)
    assert {r["class"] for r in rows(out / "smear.truth_comparison.csv")} >= {*FOUR, "all", "detection"}


@pytest.mark.slow
def test_two_process_workers_write_what_two_threads_write(slide, tmp_path):
    model = make_onnx(tmp_path / "model.onnx", tiny_card(32))
    threads = count_slides([slide], model, tmp_path / "threads", opts(geojson=True, executor="thread"))
    procs = count_slides([slide], model, tmp_path / "procs", opts(geojson=True, executor="process"))
    assert threads.slides[0].tiles_total == 16 and procs.slides[0].status == "ok"
    assert procs.slides[0].n_wbc == threads.slides[0].n_wbc >= 25
    for name in ("smear.cells.csv", "smear.geojson"):
        assert (tmp_path / "procs" / name).read_bytes() == (tmp_path / "threads" / name).read_bytes(), name
    a, b = rows(tmp_path / "threads" / "summary.csv"), rows(tmp_path / "procs" / "summary.csv")
    for r in a + b:
        r.pop("seconds")
    assert a == b


def test_a_script_without_a_main_guard_counts_once_with_process_workers(slide, tmp_path):
    """Library use from a plain script (no ``if __name__ == "__main__":``): the default executor scans this
    16-tile slide with worker processes, which must not run the script again (multiprocessing's workers
    import the parent's main script unless it is hidden from them)."""
    import subprocess
    import sys
    from pathlib import Path

    import wbc_deploy

    model = make_onnx(tmp_path / "model.onnx", tiny_card(32))
    script = tmp_path / "count_it.py"
    script.write_text(
        "from wbc_deploy.pipeline import CountOptions, count_slides\n"
        "print('counting', flush=True)\n"
        f"run = count_slides([{str(slide)!r}], {str(model)!r}, {str(tmp_path / 'out')!r}, "
        "CountOptions(quiet=True, tile_um=128.0, workers=2))\n"
        "print('status', run.slides[0].status, run.slides[0].n_wbc, flush=True)\n")
    root = str(Path(wbc_deploy.__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": root})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines.count("counting") == 1 and len(lines) == 2, proc.stdout
    status, n = lines[1].split()[1:]
    assert status == "ok" and int(n) >= 25

