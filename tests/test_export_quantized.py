"""Exported artefacts of a *trained* model scored with `wbc-deploy evaluate`: the FP32 ONNX model gives the
checkpoint's confusion matrix, FP16 loses <= 0.5 and INT8 <= 1.0 OA points on the synthetic test set.

The trained model comes from the shared ``trained_run`` / ``trained_test_dir`` fixtures of ``tests/conftest.py``.
"""
from __future__ import annotations

import json

import pytest

from wbc_deploy.converters.onnx_meta import read_onnx_card
from wbc_deploy.converters.quantize import PRECISION_KEY



def _cli(args: list) -> int:
    """Run ``wbc-deploy ARGS`` in-process; the exit code (errors are on the captured stderr)."""
    from wbc_deploy.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="session")
def trained(trained_run, trained_train_dir, trained_test_dir):
    """(RUN directory, training images for calibration, labelled synthetic test folder) from tests/conftest.py."""
    return trained_run, trained_train_dir, trained_test_dir


@pytest.fixture(scope="session")
def scored(trained, tmp_path_factory):
    """Export FP32/FP16/INT8 and evaluate them and the checkpoint on the test folder (JSON per model)."""
    run, train_dir, test_dir = trained
    out = tmp_path_factory.mktemp("quantised-export")
    assert _cli(["export", run, "--out", out, "--verify", "--fp16", "--int8", "--calib", train_dir,
                 "--n-images", "16", "--n-random", "2", "-q"]) == 0
    results = {}
    for name, model in (("run", run), ("fp32", out / "model.onnx"), ("fp16", out / "model.fp16.onnx"), ("int8", out / "model.int8.onnx")):
        metrics = out / f"{name}.json"
        assert _cli(["evaluate", model, test_dir, "--out", metrics, "-q"]) == 0, name
        results[name] = json.loads(metrics.read_text())
    return out, results


def test_model_is_trained_well_enough_for_the_comparison_to_mean_something(scored):
    _, r = scored
    assert r["run"]["OA"] >= 0.5 and r["run"]["n"] >= 200


def test_onnx_gives_the_checkpoints_confusion_matrix(scored):
    _, r = scored
    assert r["fp32"]["confusion"] == r["run"]["confusion"]
    assert r["fp32"]["classes"] == r["run"]["classes"]


def test_fp16_loses_at_most_half_an_oa_point(scored):
    _, r = scored
    assert 100 * (r["fp32"]["OA"] - r["fp16"]["OA"]) <= 0.5 + 1e-9


def test_int8_loses_at_most_one_oa_point(scored):
    _, r = scored
    assert 100 * (r["fp32"]["OA"] - r["int8"]["OA"]) <= 1.0 + 1e-9


def test_reduced_precision_models_carry_the_card_and_their_precision(scored):
    import onnx

    out, _ = scored
    card = read_onnx_card(out / "model.onnx")
    for name, precision in (("model.fp16.onnx", "fp16"), ("model.int8.onnx", "int8-qdq")):
        assert read_onnx_card(out / name) == card
        props = {p.key: p.value for p in onnx.load(str(out / name), load_external_data=False).metadata_props}
        assert props[PRECISION_KEY] == precision
    sizes = {p.name: p.stat().st_size for p in out.glob("model*.onnx")}
    assert sizes["model.int8.onnx"] < 0.35 * sizes["model.onnx"] and sizes["model.fp16.onnx"] < 0.6 * sizes["model.onnx"]
