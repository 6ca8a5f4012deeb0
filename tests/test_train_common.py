"""Shared helpers for the trainer and evaluate tests (no tests here).

The tiny training run is made once per session and shared by test_train.py and test_evaluate.py:
both define thin session fixtures over :func:`tiny_cells` / :func:`tiny_run`, which cache their result.
"""
from __future__ import annotations

from pathlib import Path

from wbc_deploy.cli import main
from wbc_deploy.data.synth_cells import write_cell_dataset

TRAIN_CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]  # BCCD-like: no basophils
TINY = ["--preset", "tiny", "--img-size", "32", "--batch-size", "8", "--seed", "0", "-q"]

_CACHE: dict[str, Path] = {}


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """Run ``wbc-deploy ARGS`` in-process; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_cells(tmp_path_factory) -> Path:
    """4 classes x 8 synthetic 32 px cells, plus one corrupt image and one stray text file (made once)."""
    if "cells" not in _CACHE:
        root = tmp_path_factory.mktemp("cells")
        write_cell_dataset(root, per_class=8, size_px=32, seed=0, classes=TRAIN_CLASSES)
        (root / "monocyte" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        (root / "neutrophil" / "README.txt").write_text("scanner export notes")
        _CACHE["cells"] = root
    return _CACHE["cells"]


def tiny_run(tmp_path_factory) -> Path:
    """One epoch of the tiny preset on :func:`tiny_cells`, through the CLI (made once)."""
    if "run" not in _CACHE:
        run = tmp_path_factory.mktemp("runs") / "tiny"
        try:
            main(["train", str(tiny_cells(tmp_path_factory)), "--out", str(run), "--epochs", "1", *TINY])
        except SystemExit as exc:
            raise AssertionError(f"wbc-deploy train exited with {exc.code}") from None
        _CACHE["run"] = run
    return _CACHE["run"]
