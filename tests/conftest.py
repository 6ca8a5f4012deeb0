"""Session fixtures shared across test modules: one trained demo-sized model and its ONNX export.

The model is what `make demo` trains: `wbcnet-tiny` with the `tiny` preset on synthetic cells. It is
trained once per test session (about a minute on 2 cores) and used wherever a test needs a model that
has really learned the classes: quantised-export accuracy, Grad-CAM localisation, slide counts vs truth.
"""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_train_dir(tmp_path_factory) -> Path:
    """5 classes x 120 synthetic 64 px cells (the training data; also INT8 calibration images)."""
    from wbc_deploy.data.synth_cells import write_cell_dataset

    root = tmp_path_factory.mktemp("trained-cells")
    write_cell_dataset(root, per_class=120, size_px=64, seed=0)
    return root


@pytest.fixture(scope="session")
def trained_test_dir(tmp_path_factory) -> Path:
    """An independent labelled test folder: 5 classes x 40 cells from another seed (1 image = 0.5 OA points)."""
    from wbc_deploy.data.synth_cells import write_cell_dataset

    root = tmp_path_factory.mktemp("trained-test")
    write_cell_dataset(root, per_class=40, size_px=64, seed=123)
    return root


@pytest.fixture(scope="session")
def trained_run(trained_train_dir, tmp_path_factory) -> Path:
    """A RUN directory: `wbc-deploy train --preset tiny` on :func:`trained_train_dir`."""
    from wbc_deploy.trainer.fit import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(trained_train_dir, run, preset="tiny", seed=0, quiet=True)
    return run


@pytest.fixture(scope="session")
def trained_onnx(trained_run, tmp_path_factory) -> Path:
    """The trained model exported to ONNX (FP32, verified against PyTorch)."""
    from wbc_deploy.cli import main

    out = tmp_path_factory.mktemp("trained-onnx")
    main(["export", str(trained_run), "--out", str(out), "--verify", "-q"])
    return out / "model.onnx"
