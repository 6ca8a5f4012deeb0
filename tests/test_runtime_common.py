"""Shared helpers for the runtime, export and TensorRT tests (no tests here): tiny ONNX classifiers built
with ``onnx.helper`` (no torch).

The graph: images (N x 3 x S x S) -> GlobalAveragePool -> Flatten -> Gemm(3 -> C) -> Softmax -> probabilities,
with a fixed weight matrix so each class responds to one colour direction. Options make it wrong on
purpose (input size, class count, missing metadata, logits output) for the refusal tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wbc_deploy.card import ModelCard
from wbc_deploy.classes import CLASSES


def tiny_card(size: int = 16, classes: list[str] | None = None, output: str = "probabilities") -> ModelCard:
    return ModelCard(arch="tiny-onnx", classes=list(classes or CLASSES), input_size=size, output=output)


def make_onnx(
    path: Path,
    card: ModelCard | None,
    graph_size: int | None = None,
    graph_classes: int | None = None,
    logits_output: bool = False,
    opset: int = 17,
) -> Path:
    """Write a tiny classifier; ``graph_*`` override the graph's shapes (to disagree with ``card``)."""
    ref = card or tiny_card()
    size = graph_size or ref.input_size
    n_cls = graph_classes or len(ref.classes)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n_cls, 3)).astype(np.float32) * 3
    bias = np.linspace(-0.5, 0.5, n_cls).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
    ]
    out_name = "logits"
    if not logits_output:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        out_name = "probabilities"
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", n_cls])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if card is not None:
        for k, v in card.to_onnx_metadata().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def random_crops(n: int, seed: int = 0, size: int = 40) -> list[np.ndarray]:
    """``n`` RGB uint8 crops with a random dominant colour each."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        base = rng.integers(0, 256, size=3)
        noise = rng.integers(-30, 30, size=(size, size, 3))
        crops.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return crops
