"""Calibration: temperature scaling fitted and applied by the runtimes, ECE, the unidentified summary."""
from __future__ import annotations

import numpy as np
import pytest

from wbc_deploy.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    probabilities,
    unidentified_summary,
)
from wbc_deploy.card import ModelCard
from wbc_deploy.classes import CLASSES
from wbc_deploy.runtime import open_backend
from wbc_deploy.runtime.base import apply_temperature, softmax


def test_apply_temperature_equals_softmax_of_scaled_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (50, 5)).astype(np.float32)
    for t in (0.5, 1.0, 1.7, 3.0):
        got = apply_temperature(softmax(logits), t)
        want = softmax(logits / t)
        assert np.abs(got - want).max() < 1e-5
        assert np.allclose(got.sum(1), 1.0, atol=1e-5)
        assert (got.argmax(1) == logits.argmax(1)).all()  # calibration never changes the class


def test_fit_temperature_recovers_the_temperature_of_the_labels():
    """Labels drawn from softmax(z / 2.5): the NLL-optimal temperature of z is close to 2.5."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 5, (4000, 5))
    p = probabilities(z, 2.5)
    y = np.array([rng.choice(5, p=row) for row in p])
    t = fit_temperature(z, y)
    assert 2.2 < t < 2.8, t
    rep = calibration_report(z, y, t, None)
    assert rep["ece_calibrated"] < 0.03 < rep["ece_uncalibrated"], rep


def test_ece_by_hand():
    # 4 cells: confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # bins: {0.9: acc 0.5, gap 0.4, weight 0.5}, {0.6: acc 1.0, gap 0.4, weight 0.5} -> 0.4
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    s = unidentified_summary(probs, labels, 0.7)
    assert s["unidentified_rate"] == 0.5 and s["n_identified"] == 2 and s["oa_identified"] == 0.5
    assert unidentified_summary(probs, labels, None)["unidentified_rate"] == 0.0


def _linear_onnx(path, card: ModelCard, w: np.ndarray):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "linear",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, card.input_size, card.input_size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(card.classes)])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in card.to_onnx_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))


def test_onnx_runtime_applies_the_cards_temperature(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.normal(0, 3, (3, 5)).astype(np.float32)
    x = rng.normal(0, 1, (8, 3, 16, 16)).astype(np.float32)
    logits = x.mean(axis=(2, 3)) @ w
    for t in (1.0, 2.0):
        card = ModelCard(arch="test-linear", classes=list(CLASSES), input_size=16, output="probabilities", temperature=t)
        _linear_onnx(tmp_path / f"m{t}.onnx", card, w)
        with open_backend(tmp_path / f"m{t}.onnx") as be:
            got = be.predict(x)
        assert np.abs(got - softmax(logits / t)).max() < 1e-5
