"""PyTorch -> ONNX: dynamic batch, softmax folded in, the model card in ``metadata_props``.

The exported graph takes ``images`` (float32, N x 3 x S x S, normalised as the card says) and returns
``probabilities`` (float32, N x C, softmax over the card's classes), so no runtime post-processes.
The pre-softmax tensor stays in the graph under its own name (:func:`logits_tensor_name`) so
verification can compare logits exactly (see :mod:`wbc_deploy.converters.verify`).

Exporter choice (torch 2.14, full ``wbcnet`` at 224 px, 2-core dev CPU shared with other jobs): the
TorchScript exporter (``dynamo=False``) took 8-12 s of CPU (14-22 s wall) and honours
``opset_version=17``; the dynamo exporter took 16-17 s of CPU (29-32 s wall), and asked for opset 17 it
runs ONNX's version converter, which fails on SCAM's ReduceMax (axes as an input) with a printed
traceback and leaves opset 18. Both graphs verify against PyTorch (max |logit diff| ~4e-6 on random
inputs) and run at the same ONNX Runtime speed (ORT removes the TorchScript exporter's Identity nodes).
So ``torchscript`` is the default; ``exporter="dynamo"`` is available (always opset >= 18), and is
tried automatically if the TorchScript exporter fails on a model.
"""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..card import ModelCard
from ..console import warn
from ..errors import WbcError
from ..files import atomic_path
from ..model.outputs import split_logits
from .onnx_meta import (  # noqa: F401 - re-exported
    DEFAULT_OPSET,
    EXPORTERS,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    _first_line,
    logits_tensor_name,
    read_onnx_card,
    write_metadata,
)

class ProbabilityModel(nn.Module):
    """Wraps a logits classifier so the exported graph ends in a softmax over classes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(split_logits(self.model(images))[0], dim=1)


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    card: ModelCard
    exporter: str
    opset: int
    seconds: float


def deployment_card(card: ModelCard, checkpoint_sha256: str | None = None) -> ModelCard:
    """The card an exported artefact carries: output is probabilities, provenance filled in."""
    return replace(
        card,
        output=OUTPUT_NAME,
        checkpoint_sha256=checkpoint_sha256 or card.checkpoint_sha256,
        wbc_deploy_version=__version__,
        training=dict(card.training),
        metrics=dict(card.metrics),
        arch_options=dict(card.arch_options),
    )


def _export_torchscript(wrapped: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice and tracer warnings: noise for users
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            export_params=True,
        )


def _export_dynamo(wrapped: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    # The dynamo exporter emits opset 18; asking for 17 runs ONNX's version converter, which fails on
    # SCAM's ReduceMax (axes as an input) and prints a traceback. So it always gets at least 18.
    opset = max(opset, 18)
    batch = torch.export.Dim("batch", min=1, max=65536)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            optimize=True,
            external_data=False,
        )
        program.save(str(path), external_data=False)


def export_onnx(
    model: nn.Module,
    card: ModelCard,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    checkpoint_sha256: str | None = None,
    example_batch: int = 2,
) -> OnnxExport:
    """Export ``model`` (logits, eval mode) to ``out`` with probabilities output and card metadata.

    The file is written to a temporary name and moved into place only once it passed
    ``onnx.checker``, so a failed export never leaves a half-written model where the old one was.
    """
    if opset < MIN_OPSET:
        raise WbcError(f"--opset {opset} is too old: wbc-deploy exports opset {MIN_OPSET} or newer")
    if exporter not in EXPORTERS:
        raise WbcError(f"unknown exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    deploy = deployment_card(card, checkpoint_sha256)
    s = int(deploy.input_size)
    wrapped = ProbabilityModel(model).eval().cpu()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(example_batch, 3, s, s, generator=gen)
    t0 = time.perf_counter()
    used = exporter
    with atomic_path(out) as tmp:
        try:
            (_export_torchscript if exporter == "torchscript" else _export_dynamo)(wrapped, example, tmp, opset)
        except Exception as exc:  # noqa: BLE001 - exporter internals raise many types
            if exporter != "torchscript":
                raise WbcError(f"ONNX export of {deploy.arch} failed ({type(exc).__name__}: {_first_line(exc)})") from None
            warn(f"TorchScript exporter failed ({type(exc).__name__}: {_first_line(exc)}); retrying with the dynamo exporter")
            used = "dynamo"
            try:
                _export_dynamo(wrapped, example, tmp, opset)
            except Exception as exc2:  # noqa: BLE001
                raise WbcError(f"ONNX export of {deploy.arch} failed with both exporters ({type(exc2).__name__}: {_first_line(exc2)})") from None
        proto = onnx.load(str(tmp))
        write_metadata(proto, deploy)
        logits_tensor_name(proto)  # the softmax must be there
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    seconds = time.perf_counter() - t0
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    return OnnxExport(path=out, card=deploy, exporter=used, opset=int(opset_used), seconds=seconds)


def torch_logits(model: nn.Module, batch: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Eager logits of an N x 3 x S x S float32 batch on the CPU, in chunks."""
    model = model.eval().cpu()
    outs = []
    with torch.inference_mode():
        for i in range(0, batch.shape[0], batch_size):
            outs.append(split_logits(model(torch.from_numpy(np.ascontiguousarray(batch[i : i + batch_size]))))[0].float().numpy())
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), dtype=np.float32)
