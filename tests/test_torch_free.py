"""What a scanner PC runs works without torch: `count`, `segment` and `evaluate` of an ONNX model, each in a
fresh Python process where torch cannot be imported, give the same files as in this (torch-equipped) process.

torch is made unimportable with an import hook that raises ``ModuleNotFoundError`` for ``torch`` and
``torchvision`` (what Python raises when they are not installed). ``sys.modules["torch"] = None`` is not
used: SciPy's array-API helpers look ``torch`` up in ``sys.modules`` and fail on a ``None`` there, which an
uninstalled torch never does.
"""
from __future__ import annotations

import csv
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wbc_deploy
from wbc_deploy.cli import main
from wbc_deploy.data.synth_cells import write_cell_dataset
from wbc_deploy.slide import open_slide
from wbc_deploy.slide.synth import write_synthetic_slide

try:
    from test_runtime_common import make_onnx, tiny_card
except ImportError:  # tests/ as a package
    from .test_runtime_common import make_onnx, tiny_card

ROOT = Path(wbc_deploy.__file__).resolve().parent.parent

NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoTorch())
    assert "torch" not in sys.modules
""")

#: The packages and modules the architecture says are torch-free (a scanner PC installs only these' deps).
TORCH_FREE_PACKAGES = ("runtime", "slide", "segment", "pipeline")
TORCH_FREE_MODULES = ("card", "preprocess", "stain", "metrics", "calibration", "files", "images", "classes",
                      "data.synth_cells", "explain.review", "explain.gallery", "explain.report", "explain.montage",
                      "trainer.evaluate", "cli")


def run_without_torch(code: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter where torch is unimportable; returns the finished process."""
    script = tmp / "no_torch_script.py"
    script.write_text(NO_TORCH + textwrap.dedent(code) + "\nassert 'torch' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp, timeout=600)


def cli_without_torch(argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    return run_without_torch(f"""
        from wbc_deploy.cli import main
        try:
            main({[str(a) for a in argv]!r})
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    """, tmp)


def cli_here(argv: list[str]) -> None:
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code


def rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-torch")
    model = make_onnx(root / "linear.onnx", tiny_card(32))
    slide = root / "smear.svs"
    write_synthetic_slide(slide, 1024, 1024, 8, mpp=0.25, seed=4)
    with open_slide(slide) as reader:
        Image.fromarray(reader.read_region((0, 0), 0, (768, 768))).save(root / "field.png")
    write_cell_dataset(root / "cells", per_class=3, size_px=32, seed=1)
    return {"root": root, "model": model, "slide": slide, "png": root / "field.png", "cells": root / "cells"}


def test_the_blocker_really_blocks_torch(tmp_path):
    proc = run_without_torch("import torch\n", tmp_path)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def test_torch_free_modules_import_without_torch(tmp_path):
    code = f"""
        import importlib, pkgutil, wbc_deploy
        names = [f"wbc_deploy.{{m}}" for m in {TORCH_FREE_MODULES!r}]
        for pkg in {TORCH_FREE_PACKAGES!r}:
            mod = importlib.import_module(f"wbc_deploy.{{pkg}}")
            names += [m.name for m in pkgutil.walk_packages(mod.__path__, mod.__name__ + ".")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
    """
    proc = run_without_torch(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = len(TORCH_FREE_MODULES)
    for pkg in TORCH_FREE_PACKAGES:
        mod = importlib.import_module(f"wbc_deploy.{pkg}")
        expected += len(list(pkgutil.walk_packages(mod.__path__, mod.__name__ + ".")))
    assert int(proc.stdout.split()[-1]) == expected > 40


def test_count_without_torch_gives_the_same_files(inputs, tmp_path):
    args = [inputs["slide"], "--model", inputs["model"], "--workers", "1", "--geojson", "--review", "--gallery", "-q"]
    here, there = tmp_path / "here", tmp_path / "there"
    cli_here(["count", *args, "--out", here])
    proc = cli_without_torch(["count", *args, "--out", there], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = rows(there / "smear.cells.csv")
    assert len(cells) >= 6 and {c["label"] for c in cells} <= set(tiny_card().classes)
    for name in ("smear.cells.csv", "smear.geojson"):
        assert (there / name).read_bytes() == (here / name).read_bytes(), name
    assert rows(there / "summary.csv", drop=("seconds",)) == rows(here / "summary.csv", drop=("seconds",))
    assert rows(there / "summary.csv")[0]["status"] == "ok"
    assert (there / "smear.review.html").stat().st_size > 1000 and (there / "smear.report.html").exists()


def test_segment_without_torch_gives_the_same_files(inputs, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    cli_here(["segment", inputs["png"], "--out", here, "--mpp", "0.25", "-q"])
    proc = cli_without_torch(["segment", inputs["png"], "--out", there, "--mpp", "0.25", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(rows(there / "field.cells.csv")) >= 2
    for name in ("field.cells.csv", "field.labels.png", "field.nuclei.png"):
        assert (there / name).read_bytes() == (here / name).read_bytes(), name


def test_evaluate_of_an_onnx_model_without_torch_gives_the_same_metrics(inputs, tmp_path):
    here, there = tmp_path / "here" / "metrics.json", tmp_path / "there" / "metrics.json"
    cli_here(["evaluate", inputs["model"], inputs["cells"], "--out", here, "-q"])
    proc = cli_without_torch(["evaluate", inputs["model"], inputs["cells"], "--out", there, "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

    a, b = json.loads(here.read_text()), json.loads(there.read_text())
    assert a == b and b["n"] == 15 and np.isfinite(b["OA"]) and len(b["confusion"]) == 5
