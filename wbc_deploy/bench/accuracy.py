"""What INT8 costs in accuracy: overall accuracy (OA) of the FP32 and INT8 ONNX models on a synthetic test set.

With a trained checkpoint (``--checkpoint RUN``) this is the real OA loss of the INT8 recipe. Without one
(no trained full ``wbcnet`` exists offline: no ImageNet weights, no public data) it is a *proxy*: the
random-init trunks (seed 0, the weights the benchmark times) are kept and only the classifier head is
trained on the pooled SCAM features of synthetic cells, so the model has a real decision boundary and
the INT8 error in every trunk layer can move predictions across it. Both models are exported and
quantised with the benchmark's own recipe, run through ONNX Runtime (:mod:`wbc_deploy.runtime`) and
scored with the trainer's evaluation (:func:`wbc_deploy.trainer.evaluate.evaluate_folder`) on a
class-per-folder synthetic test set that neither training nor calibration saw.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WbcError
from .artefacts import Artefacts
from ..converters.int8_cpu import Int8Recipe, quantize_for_cpu

TRAIN_SEED, TEST_SEED = 202, 303


def _synthetic_cells(per_class: int, size: int, fov_um: float | None, seed: int) -> tuple[list[np.ndarray], list[int]]:
    from ..card import DEFAULT_FOV_UM
    from ..classes import CLASSES
    from ..data.synth_cells import render_cell_image

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(per_class):
        for k, name in enumerate(CLASSES):
            images.append(np.asarray(render_cell_image(name, size, rng, fov_um=float(fov_um or DEFAULT_FOV_UM)), dtype=np.uint8))
            labels.append(k)
    return images, labels


def recalibrate_batchnorm(model: Any, batches: list[np.ndarray]) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) on ``batches``.

    Random-init BNs hold mean 0 / var 1, so activations drift in scale layer after layer; with statistics
    measured on cells every layer is normalised as in a trained network, which is what INT8 ranges see.
    """
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for b in batches:
            model(torch.from_numpy(b))
    model.eval()


def train_head(model: Any, card: Any, per_class: int, seed: int = TRAIN_SEED, steps: int = 400, batch: int = 16) -> dict[str, Any]:
    """Train only ``model.head`` (WBCNet) on pooled features of synthetic cells; trunks untouched.

    Features are standardised for the optimiser and the standardisation is folded back into the head's
    first linear layer, so the exported graph is the plain architecture. Returns training figures.
    """
    import torch
    from torch import nn

    from ..classes import CLASSES
    from ..preprocess import prepare_batch

    if not all(hasattr(model, a) for a in ("features", "pool", "head")) or list(card.classes) != list(CLASSES):
        raise WbcError(f"the INT8 accuracy proxy needs a wbcnet-family model with the five standard classes, not {card.arch}")
    images, labels = _synthetic_cells(per_class, int(card.input_size), card.fov_um, seed)
    recalibrate_batchnorm(model, [prepare_batch(images[i : i + batch], card) for i in range(0, min(len(images), 8 * batch), batch)])
    model.eval()
    feats = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(prepare_batch(images[i : i + batch], card))
            feats.append(torch.flatten(model.pool(model.features(x)), 1).clone())
    f = torch.cat(feats)
    y = torch.as_tensor(labels)
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    z = (f - mean) / std
    first, last = model.head[1], model.head[-1]
    gen = torch.Generator().manual_seed(seed)
    for layer in (first, last):
        nn.init.kaiming_uniform_(layer.weight, a=5 ** 0.5, generator=gen)
        nn.init.zeros_(layer.bias)
    model.head.train()
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model.head(z), y)
        loss.backward()
        opt.step()
    model.head.eval()
    with torch.no_grad():
        train_acc = float((model.head(z).argmax(1) == y).float().mean())
        first.bias -= first.weight @ (mean / std)
        first.weight /= std
    return {"train_cells": len(labels), "train_accuracy": round(train_acc, 4), "final_loss": round(float(loss.detach()), 4),
            "batchnorm": "statistics re-estimated on synthetic cells"}


def int8_accuracy(
    artefacts: Artefacts,
    recipe: Int8Recipe,
    per_class: int = 40,
    train_per_class: int = 60,
    threads: int | None = None,
    quiet: bool = True,
    head_steps: int = 400,
) -> dict[str, Any]:
    """OA of FP32 vs INT8 (``recipe``) on ``per_class`` x 5 synthetic test cells; see the module docstring.

    ``threads`` applies to ONNX Runtime and, while the head is trained, to PyTorch.
    """
    from ..converters.onnx_export import export_onnx
    from ..data.synth_cells import write_cell_dataset
    from ..preprocess import prepare_batch
    from ..runtime import open_backend
    from ..trainer.evaluate import evaluate_folder

    source = artefacts.source
    card = source.card
    out: dict[str, Any] = {"recipe": recipe.to_dict(), "test_cells": per_class * len(card.classes)}
    with tempfile.TemporaryDirectory(prefix="wbc-bench-acc-") as tmp:
        tmpdir = Path(tmp)
        if source.kind == "run":
            fp32 = artefacts.onnx_fp32()
            int8 = artefacts.onnx_int8() if artefacts.int8_recipe == recipe else tmpdir / "int8.onnx"
            out["method"] = f"trained checkpoint {source.path}: real OA loss on synthetic test cells"
        else:
            import torch

            model = copy.deepcopy(artefacts.torch_model())
            before = torch.get_num_threads()
            if threads:
                torch.set_num_threads(int(threads))
            try:
                out["head_training"] = train_head(model, card, train_per_class, steps=head_steps)
            finally:
                torch.set_num_threads(before)
            fp32 = tmpdir / "fp32.onnx"
            export_onnx(model, card, fp32)
            int8 = tmpdir / "int8.onnx"
            out["method"] = ("proxy (no trained " + card.arch + " exists offline): random-init trunks (seed 0) with BatchNorm "
                             f"statistics re-estimated and the classifier head trained on {out['head_training']['train_cells']} "
                             "synthetic cells")
        if not int8.is_file():
            calibration, desc = artefacts.calibration_batch()
            out["int8_details"] = quantize_for_cpu(fp32, int8, card, calibration, recipe)
            out["int8_details"]["calibration"] = desc
        test_dir = tmpdir / "test"
        write_cell_dataset(test_dir, per_class, int(card.input_size), TEST_SEED, fov_um=float(card.fov_um or 24.0))
        preds = {}
        for name, path in (("fp32", fp32), ("int8", int8)):
            opts = {"providers": "cpu", "intra_op_threads": threads} if threads else {"providers": "cpu"}
            backend = open_backend(path, backend="ort", **opts)
            seen: list[np.ndarray] = []

            def predict(images, backend=backend, seen=seen):
                probs = backend.predict(prepare_batch(list(images), backend.card))
                seen.append(probs)
                return probs

            metrics = evaluate_folder(predict, backend.card, test_dir, quiet=quiet)
            backend.close()
            preds[name] = np.concatenate(seen)
            out[f"oa_{name}"] = round(float(metrics["OA"]), 4)
            out[f"af1_{name}"] = round(float(metrics["AF1"]), 4) if metrics.get("AF1") is not None else None
    out["oa_loss_points"] = round(100 * (out["oa_fp32"] - out["oa_int8"]), 2)
    out["top1_agreement"] = round(float((preds["fp32"].argmax(1) == preds["int8"].argmax(1)).mean()), 4)
    return out
