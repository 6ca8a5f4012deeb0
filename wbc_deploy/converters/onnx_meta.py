"""The torch-free half of the ONNX contract: tensor names, opset bounds, the card in ``metadata_props``.

Used by export (with torch) and by FP16/INT8 conversion, verification and TensorRT builds from an
existing ``.onnx`` (without torch).
"""
from __future__ import annotations

from pathlib import Path

import onnx

from .. import __version__
from ..card import ModelCard
from ..errors import WbcError

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
DEFAULT_OPSET = 17
MIN_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")


def logits_tensor_name(model: onnx.ModelProto) -> str:
    """Name of the tensor the final Softmax reads (the model's logits)."""
    for node in model.graph.node:
        if node.op_type == "Softmax" and OUTPUT_NAME in node.output:
            return node.input[0]
    raise WbcError(f"{OUTPUT_NAME!r} is not produced by a Softmax in this graph: not a wbc-deploy export")


def write_metadata(model: onnx.ModelProto, card: ModelCard) -> None:
    """Replace the graph's metadata_props with the card (and a readable doc string)."""
    del model.metadata_props[:]
    for key, value in card.to_onnx_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    s = card.input_size
    model.producer_name = "wbc-deploy"
    model.producer_version = __version__
    model.doc_string = (
        f"wbc-deploy {card.arch} white-blood-cell classifier. Input '{INPUT_NAME}': float32 N x 3 x {s} x {s}, "
        f"{card.color_order} scaled to 0..1 then (x - mean) / std with mean={list(card.mean)}, std={list(card.std)}, "
        f"crop covering {card.fov_um} um. Output '{OUTPUT_NAME}': float32 N x {len(card.classes)} softmax over "
        f"{', '.join(card.classes)}. Full card in metadata key 'wbc_deploy.card'."
    )


def read_onnx_card(path: str | Path) -> ModelCard:
    """The card stored in an ONNX file's metadata (WbcError if it has none)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise WbcError(f"ONNX model not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors
        raise WbcError(f"{path} is not a readable ONNX model ({_first_line(exc)})") from None
    return ModelCard.from_onnx_metadata({p.key: p.value for p in proto.metadata_props}, source=f"ONNX model {path}")



def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
