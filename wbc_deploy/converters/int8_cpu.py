"""The INT8 recipe for ONNX Runtime on x86 CPUs: the defaults of the converters' static quantisation.

Measured on the full ``wbcnet`` (224 px) on the 2-core dev VM (AMD EPYC Zen 4, AVX-512 VNNI),
onnxruntime 1.32; variants timed interleaved in one process (1 thread, batch 8, busy machine, so read
the ratios), the recipe also on an idle machine (2 threads, batch 16):

==========================================  ==========  ========
variant                                     s/batch     vs FP32
==========================================  ==========  ========
FP32 (ORT, NCHWc)                           1.77        1.00x
S8S8 QDQ, per-channel                       1.60        1.11x
S8S8 QDQ, per-channel, BN as conv           1.86        0.95x
U8S8 QDQ, per-channel                       0.85        2.08x
**U8S8 QDQ, per-channel, BN as conv**       **0.72**    **2.46x**
U8S8 QOperator, per-channel, BN as conv     0.71        2.49x
idle machine, 2 threads, batch 16: FP32 14.3 cells/s, recipe 40.0 cells/s  -> 2.80x
==========================================  ==========  ========

* **Activations uint8 (U8S8), not int8 (S8S8).** ORT's x86 QDQ fusion turns only part of the S8S8
  ``DQ -> Conv -> Q`` groups into ``QLinearConv``; with S8S8, 76 of 180 convolutions stayed float
  with their weights dequantised on every run (1,100+ ``DequantizeLinear`` nodes), and the model was
  no faster than FP32. U8S8 fuses all of them (MLAS's VNNI kernels are u8 x s8).
* **Stand-alone BatchNormalization as a depthwise 1x1 convolution before quantising** (``bn_as_conv``).
  DenseNet is pre-activation (BN -> ReLU -> Conv after every concatenation): those 62 BNs cannot be
  folded into a preceding convolution and have no quantised kernel, so each one was left in float,
  wrapped in Dequantize/Quantize pairs and NHWC<->NCHW transposes (about a quarter of the INT8 run
  time). Written as ``Conv(group=C, 1x1)`` with the same arithmetic, they quantise to ``QLinearConv``
  with the ReLU fused, and the whole network stays in the int8 NHWC path. The rewrite is exact in FP32.
* Per-channel symmetric int8 weights, MinMax calibration on 32 preprocessed crops, Softmax kept float.
  These are :func:`~wbc_deploy.converters.quantize.quantize_int8`'s defaults; :class:`Int8Recipe` names them
  for the benchmark's cache key and ``export``'s options. QDQ and QOperator run at the same speed once fused; QDQ is kept (the
  portable format). Per-tensor weights were no faster beyond noise and are less accurate.

Accuracy (OA on 500 synthetic test cells, :mod:`wbc_deploy.bench.accuracy` proxy model): FP32 96.8%;
this recipe 96.0% (-0.8 points, 98.4% top-1 agreement); without the BN rewrite 95.6% (-1.2); attention
and head kept in float 95.8% (-1.0); 128 calibration cells 96.8% (0.0, 97.8% agreement). The
differences between variants are within the noise of 500 cells (about +-0.6 points).

The rewrite is generic ONNX: it only touches ``BatchNormalization`` nodes whose statistics are constant.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard


@dataclass(frozen=True)
class Int8Recipe:
    """How ``ort-int8`` models are made (see the module docstring for why these defaults)."""

    quant_format: str = "qdq"
    activation_type: str = "uint8"
    per_channel: bool = True
    bn_as_conv: bool = True
    calibrate_method: str = "minmax"
    calib_images: int = 32

    def key(self) -> str:
        """A short, file-name-safe identity of the recipe (cache key)."""
        return (
            f"{self.quant_format}-{'u8' if self.activation_type == 'uint8' else 's8'}"
            f"{'-pc' if self.per_channel else ''}{'-bnconv' if self.bn_as_conv else ''}"
            f"-{self.calibrate_method}{self.calib_images}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _constant_tensors(graph: Any) -> dict[str, Any]:
    """Initialisers by name, including names that are only ``Identity`` aliases of an initialiser."""
    consts = {init.name: init for init in graph.initializer}
    changed = True
    while changed:  # resolve Identity chains (the exporter aliases identical tensors this way)
        changed = False
        for node in graph.node:
            if node.op_type == "Identity" and node.input[0] in consts and node.output[0] not in consts:
                consts[node.output[0]] = consts[node.input[0]]
                changed = True
    return consts


def batchnorm_to_depthwise_conv(model: Any) -> int:
    """Rewrite every inference ``BatchNormalization`` with constant statistics as ``Conv(group=C, 1x1)``.

    ``y = (x - mean) / sqrt(var + eps) * scale + bias`` becomes a depthwise convolution with weight
    ``scale / sqrt(var + eps)`` (C x 1 x 1 x 1) and bias ``bias - mean * weight``, computed in float64 and
    stored as float32. Works on a ``onnx.ModelProto`` in place; returns the number of nodes rewritten.
    Only 4-D (NCHW) inputs are rewritten; nodes whose input rank is unknown are left alone unless
    shape inference says 4-D.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = _constant_tensors(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        ranks = {
            vi.name: len(vi.type.tensor_type.shape.dim)
            for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
        }
    except Exception:  # noqa: BLE001 - shape inference is a refinement only
        ranks = {}
    new_nodes = []
    rewritten = 0
    taken = {init.name for init in graph.initializer}
    for idx, node in enumerate(graph.node):
        stats = list(node.input[1:5])
        if (
            node.op_type != "BatchNormalization"
            or len(node.output) != 1
            or len(stats) != 4
            or not all(s in consts for s in stats)
            or ranks.get(node.input[0], 4) != 4
            or any(a.name == "training_mode" and a.i for a in node.attribute)
        ):
            new_nodes.append(node)
            continue
        scale, bias, mean, var = (numpy_helper.to_array(consts[s]).astype(np.float64) for s in stats)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        weight = scale / np.sqrt(var + eps)
        shift = bias - mean * weight
        channels = int(weight.shape[0])
        base = (node.name or f"bn{idx}").strip("/").replace("/", "_") or f"bn{idx}"
        w_name, b_name = f"{base}_dw_weight", f"{base}_dw_bias"
        k = 0
        while w_name in taken or b_name in taken:
            k += 1
            w_name, b_name = f"{base}_dw_weight_{k}", f"{base}_dw_bias_{k}"
        taken.update((w_name, b_name))
        graph.initializer.extend([
            numpy_helper.from_array(weight.astype(np.float32).reshape(channels, 1, 1, 1), w_name),
            numpy_helper.from_array(shift.astype(np.float32), b_name),
        ])
        new_nodes.append(
            helper.make_node("Conv", [node.input[0], w_name, b_name], list(node.output), name=f"{base}_as_dwconv",
                             group=channels, kernel_shape=[1, 1])
        )
        rewritten += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    if rewritten:
        prune_unused(graph)
    return rewritten


def prune_unused(graph: Any) -> None:
    """Drop initialisers and ``Identity`` nodes that nothing reads any more (graph outputs are kept)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Identity" and not any(o in used for o in n.output)]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def quantize_for_cpu(src: str | Path, out: str | Path, card: ModelCard, calibration: np.ndarray, recipe: Int8Recipe) -> dict[str, Any]:
    """Make the ``ort-int8`` model: the converters' ``quantize_int8`` (whose defaults are :class:`Int8Recipe`'s)
    with ``recipe``'s choices. Returns the recipe and what was done (JSON-ready)."""
    from .quantize import quantize_int8

    details: dict[str, Any] = {"recipe": recipe.to_dict()}
    result = quantize_int8(
        src, out, card, calibration,
        quant_format=recipe.quant_format,
        per_channel=recipe.per_channel,
        activation_type=recipe.activation_type,
        bn_as_conv=recipe.bn_as_conv,
        calibrate_method=recipe.calibrate_method,
    )
    details.update(result.details)
    details["seconds"] = round(result.seconds, 1)
    return details
