"""Reduced-precision ONNX variants: FP16 (float32 inputs/outputs kept) and static INT8 for CPUs.

* FP16: ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``: weights and
  activations in half precision, ``images`` stays float32 in and ``probabilities`` float32 out. Runs on
  ONNX Runtime's CPU EP (ops without FP16 CPU kernels get casts inserted by ORT) and natively on CUDA.
* INT8: ONNX Runtime static quantisation: ``quant_pre_process`` (shape inference + graph optimisation,
  BN folding), then ``quantize_static`` with per-channel INT8 weights and activations calibrated
  (MinMax) on crops preprocessed by ``prepare_batch``, QDQ format by default (QOperator selectable).
  The final Softmax stays float so probabilities keep their resolution. ``wbc-deploy export --int8``
  calls this through the CPU recipe measured in :mod:`wbc_deploy.converters.int8_cpu` (uint8 activations, i.e.
  U8S8, and DenseNet's stand-alone BatchNorms rewritten as depthwise 1x1 convolutions first): with
  ORT's default S8S8 many convolutions stay unfused and INT8 is no faster than FP32 on x86.

QDQ vs QOperator on this CPU (2-core AMD EPYC Zen 4, AVX-512 VNNI, shared with other jobs so only the
ratios mean much; batch 16, 2 ORT threads, cells/s, median of 3):

=================  =====  ==========  ================  ==========  ================
model              FP32   QDQ U8S8    QOperator U8S8    QDQ S8S8    QOperator S8S8
=================  =====  ==========  ================  ==========  ================
wbcnet-tiny 64 px  41     115         113               43          10
wbcnet 224 px      2.7    6.3         5.7               -           -
=================  =====  ==========  ================  ==========  ================

Once U8S8 lets ORT fuse every convolution the two formats run alike; QDQ is the default (portable to
the TensorRT and CUDA EPs). S8S8 QOperator is the slow case ORT itself warns about on x86.

Both keep the model card in the metadata and add ``wbc_deploy.precision``.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..errors import WbcError

PRECISION_KEY = "wbc_deploy.precision"
QUANT_FORMATS = ("qdq", "qoperator")

#: Ops quantised to INT8. BatchNormalization (DenseNet's pre-activation BN, which cannot be folded into
#: a following conv) stays float: ONNX Runtime has no INT8 BN kernel, so quantising it only adds
#: dequantise/quantise pairs; Softmax stays float so probabilities keep their resolution.
INT8_OP_TYPES: tuple[str, ...] = (
    "Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Relu", "Clip", "Sigmoid", "Flatten", "Reshape", "Resize", "Transpose", "Squeeze", "Unsqueeze", "Split", "Pad",
)


@contextmanager
def _quiet_tools() -> Iterator[None]:
    """Silence the quantisation tools' per-tensor logging and warnings (noise to a lab user)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


@dataclass
class QuantisedModel:
    """A reduced-precision artefact: where, what precision, how long it took."""

    path: Path
    precision: str
    seconds: float
    details: dict[str, Any]


def _restore_metadata(proto: Any, card: ModelCard, precision: str) -> None:
    from .onnx_meta import write_metadata

    write_metadata(proto, card)
    entry = proto.metadata_props.add()
    entry.key, entry.value = PRECISION_KEY, precision


def _save_atomic(proto: Any, out: Path) -> None:
    import onnx

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def convert_fp16(src: str | Path, out: str | Path, card: ModelCard) -> QuantisedModel:
    """FP16 copy of the FP32 export ``src`` with float32 I/O, written to ``out``."""
    import onnx
    from onnxconverter_common import float16

    t0 = time.perf_counter()
    proto = onnx.load(str(src))
    try:
        with _quiet_tools():  # one warning per tiny weight clamped to the FP16 range
            half = float16.convert_float_to_float16(proto, keep_io_types=True)
    except Exception as exc:  # noqa: BLE001
        raise WbcError(f"FP16 conversion of {src} failed ({type(exc).__name__}: {exc})") from None
    _restore_metadata(half, card, "fp16")
    out = Path(out)
    _save_atomic(half, out)
    return QuantisedModel(out, "fp16", time.perf_counter() - t0, {"keep_io_types": True})


class BatchCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over a preprocessed N x 3 x S x S array, in chunks."""

    def __init__(self, batch: np.ndarray, input_name: str = "images", batch_size: int = 8) -> None:
        self.batch = np.ascontiguousarray(batch, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next chunk as ``{input name: array}``, or None when all were given."""
        if self._pos >= self.batch.shape[0]:
            return None
        chunk = self.batch[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return -(-self.batch.shape[0] // self.batch_size)


def quantize_int8(
    src: str | Path,
    out: str | Path,
    card: ModelCard,
    calibration: np.ndarray,
    *,
    quant_format: str = "qdq",
    per_channel: bool = True,
    activation_type: str = "int8",
    activation_symmetric: bool = False,
    calibrate_method: str = "minmax",
    batch_size: int = 8,
    op_types: tuple[str, ...] | None = None,
) -> QuantisedModel:
    """Static INT8 quantisation of the FP32 export ``src``, calibrated on ``calibration`` (preprocessed).

    ``activation_type`` ``int8`` (S8S8, ORT's QDQ default) or ``uint8`` (U8S8); ``activation_symmetric``
    forces zero points of 0 (what TensorRT's explicit quantisation takes). Only ``op_types``
    (default :data:`INT8_OP_TYPES`) are quantised; the final Softmax is excluded so the probabilities
    output stays float32 at full resolution.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from .onnx_meta import INPUT_NAME, OUTPUT_NAME

    fmt = quant_format.lower()
    if fmt not in QUANT_FORMATS:
        raise WbcError(f"unknown INT8 format {quant_format!r}; choose qdq or qoperator")
    if calibration.ndim != 4 or calibration.shape[0] == 0:
        raise WbcError("INT8 calibration needs at least one image (pass --calib DIR with cell crops)")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise WbcError(f"unknown calibration method {calibrate_method!r}; choose one of: {', '.join(methods)}")
    act = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}.get(activation_type)
    if act is None:
        raise WbcError(f"activation type must be int8 or uint8, got {activation_type!r}")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inner = BatchCalibrationReader(calibration, INPUT_NAME, batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return self.inner.get_next()

        def rewind(self) -> None:
            self.inner.rewind()

    t0 = time.perf_counter()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="wbc-int8-") as tmpdir, _quiet_tools():
        pre = Path(tmpdir) / "preprocessed.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001 - symbolic shape inference can fail on exotic graphs
            from ..console import warn

            warn(f"quant_pre_process with symbolic shapes failed ({type(exc).__name__}); retrying without")
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        pre_proto = onnx.load(str(pre))
        softmax = [n.name for n in pre_proto.graph.node if n.op_type == "Softmax" and OUTPUT_NAME in n.output]
        op_types = sorted({n.op_type for n in pre_proto.graph.node} & set(op_types or INT8_OP_TYPES))
        tmp_out = Path(tmpdir) / "int8.onnx"
        try:
            quantize_static(
                str(pre),
                str(tmp_out),
                calibration_data_reader=_Reader(),
                quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                per_channel=per_channel,
                activation_type=act,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=softmax,
                op_types_to_quantize=op_types,
                calibrate_method=methods[calibrate_method],
                extra_options={"ActivationSymmetric": bool(activation_symmetric), "WeightSymmetric": True},
            )
        except Exception as exc:  # noqa: BLE001
            raise WbcError(f"INT8 quantisation of {src} failed ({type(exc).__name__}: {exc})") from None
        proto = onnx.load(str(tmp_out))
    _restore_metadata(proto, card, f"int8-{fmt}")
    _save_atomic(proto, out)
    return QuantisedModel(
        out,
        "int8",
        time.perf_counter() - t0,
        {"format": fmt, "per_channel": per_channel, "activation_type": activation_type, "activation_symmetric": bool(activation_symmetric),
         "calibration_images": int(calibration.shape[0]), "calibrate_method": calibrate_method},
    )
