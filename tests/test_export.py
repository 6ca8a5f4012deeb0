"""`wbc-deploy export`: verified ONNX for a small model and the full wbcnet at 224 px, the card in the
metadata, verification that catches a graph that differs from PyTorch, and argument refusals."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from wbc_deploy.card import ModelCard
from wbc_deploy.classes import CLASSES
from wbc_deploy.converters.export import ExportOptions, export_model
from wbc_deploy.converters.images import synthetic_images
from wbc_deploy.converters.onnx_meta import read_onnx_card
from wbc_deploy.model import card_for, create_model
from wbc_deploy.model import registry as model_registry
from wbc_deploy.preprocess import prepare_batch
from wbc_deploy.runtime import open_backend
from wbc_deploy.trainer.checkpoint import save_checkpoint

try:
    from test_runtime_common import make_onnx, tiny_card
    from test_train_common import run_cli
except ImportError:  # tests/ as a package
    from .test_runtime_common import make_onnx, tiny_card
    from .test_train_common import run_cli


def _random_run(root, arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(arch, len(CLASSES)).eval()
    save_checkpoint(root, model, card_for(arch, list(CLASSES)))
    return root


@pytest.fixture(scope="session")
def tiny_random_run(tmp_path_factory):
    """A random-init wbcnet-tiny checkpoint (64 px): export does not need trained weights."""
    return _random_run(tmp_path_factory.mktemp("export-run") / "tiny", "wbcnet-tiny")


def _export(args, capsys):
    return run_cli(["export", *args, "-q"], capsys)


def test_export_verify_writes_a_verified_onnx_carrying_the_card(tiny_random_run, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _export([tiny_random_run, "--out", out, "--verify", "--n-images", "10", "--n-random", "4"], capsys)
    assert code == 0, err
    assert "PASS" in stdout and "FAIL" not in stdout and "model.onnx" in stdout
    path = out / "model.onnx"
    assert sorted(p.name for p in out.iterdir()) == ["model.export.json", "model.onnx"]  # nothing staged left over

    # the card round-trips through the metadata, with the deployment fields filled in
    source = ModelCard.from_json(tiny_random_run / "card.json")
    card = read_onnx_card(path)
    for field in ("arch", "classes", "input_size", "mean", "std", "color_order", "fov_um", "attention", "checkpoint_sha256"):
        assert getattr(card, field) == getattr(source, field), field
    assert card.output == "probabilities" and card.checkpoint_sha256 and card.wbc_deploy_version

    proto = onnx.load(str(path))
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = proto.graph.input
    assert inp.name == "images" and inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [o.name for o in proto.graph.output] == ["probabilities"]

    # what the report says it checked, and an independent check of the same claim
    report = json.loads((out / "model.export.json").read_text())
    rows = report["comparisons"]
    assert len(rows) == 2 and all(r["passed"] and r["max_abs"] <= 1e-4 and r["top1_agreement"] == 1.0 for r in rows)
    images = synthetic_images(5, seed=42, size=64)
    from wbc_deploy.trainer.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_random_run)
    with torch.inference_mode():
        ref = torch.softmax(model(torch.from_numpy(prepare_batch(images, card))), 1).numpy()
    with open_backend(path) as be:
        for n in (1, 5):  # any batch size
            np.testing.assert_allclose(be.predict_images(images[:n]), ref[:n], atol=1e-5)
    with open_backend(tiny_random_run) as eager:  # the torch backend: the reference, behind the same interface
        assert eager.name == "torch" and eager.device == "cpu" and eager.card.classes == card.classes
        np.testing.assert_allclose(eager.predict_images(images, batch_size=2), ref, atol=1e-6)


class _Branchy(nn.Module):
    """Python control flow on the data: the TorchScript tracer records one branch only."""

    def __init__(self, num_classes: int, **_options) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.mean((2, 3))
        if bool(f.mean() > 0.5):  # bright crops: eager takes this branch; the random trace input does not
            return self.fc(f)
        return self.fc(-f) * 3


@pytest.fixture
def branchy_arch(monkeypatch):
    info = model_registry.ModelInfo("test-branchy", "data-dependent branch", 32, None, lambda **kw: _Branchy(kw["num_classes"]))
    monkeypatch.setitem(model_registry._REGISTRY, "test-branchy", info)
    return "test-branchy"


def test_verification_fails_an_export_that_differs_from_pytorch(branchy_arch, tmp_path, capsys):
    run = _random_run(tmp_path / "run", branchy_arch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier, good export")
    code, stdout, err = _export([run, "--out", out, "--verify", "--n-images", "6", "--n-random", "2"], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error:") and "failed verification" in line and "max |logits diff|" in line and "top-1" in line
    assert "FAIL" in stdout  # the table is printed before the error
    assert (out / "model.onnx").read_bytes() == b"an earlier, good export"  # not replaced by the failed one
    assert [p.name for p in out.iterdir()] == ["model.onnx"]


@pytest.mark.slow
def test_full_wbcnet_at_224_exports_and_verifies(tmp_path, capsys):
    run = _random_run(tmp_path / "wbcnet", "wbcnet")
    out = tmp_path / "out"
    code, stdout, err = _export([run, "--out", out, "--verify", "--n-images", "3", "--n-random", "2"], capsys)
    assert code == 0, err
    card = read_onnx_card(out / "model.onnx")
    assert card.arch == "wbcnet" and card.input_size == 224 and card.attention == "scam"
    rows = json.loads((out / "model.export.json").read_text())["comparisons"]
    assert all(r["passed"] and r["max_abs"] <= 1e-4 for r in rows) and sum(r["n"] for r in rows) == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--opset", "16"], "opset 16 is too old"),
        (["--int8"], "--int8 needs calibration images"),
        (["--exporter", "fx"], "unknown --exporter"),
        (["--out", "model.pt"], "give a directory or a .onnx file"),
    ],
)
def test_bad_export_options_are_one_line_errors(tiny_random_run, tmp_path, capsys, args, message):
    argv = [tiny_random_run, *args] if "--out" in args else [tiny_random_run, "--out", tmp_path / "o", *args]
    code, _, err = _export(argv, capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error:") and message in line


def test_verify_needs_the_checkpoint_not_an_onnx_file(tmp_path, capsys):
    path = make_onnx(tmp_path / "m.onnx", tiny_card())
    code, _, err = _export([path, "--out", tmp_path / "o", "--verify"], capsys)
    assert code == 2 and "--verify compares ONNX Runtime with PyTorch" in err


def test_fp16_from_an_existing_onnx_needs_no_torch_model(tmp_path):
    path = make_onnx(tmp_path / "m.onnx", tiny_card())
    report = export_model(path, tmp_path / "o", ExportOptions(fp16=True, n_verify=6))
    fp16 = tmp_path / "o" / "model.fp16.onnx"
    assert [a.precision for a in report.artefacts] == ["fp32", "fp16"]
    assert read_onnx_card(fp16) == read_onnx_card(path)
    assert report.comparisons[0].top1_agreement == 1.0


def test_int8_defaults_are_the_measured_recipe():
    """quantize_int8's defaults and Int8Recipe's (the benchmark's and export's) are one recipe."""
    import inspect

    from wbc_deploy.converters.int8_cpu import Int8Recipe
    from wbc_deploy.converters.quantize import quantize_int8

    params = inspect.signature(quantize_int8).parameters
    recipe = Int8Recipe()
    for name in ("quant_format", "activation_type", "per_channel", "bn_as_conv", "calibrate_method"):
        assert params[name].default == getattr(recipe, name), name
    assert recipe.activation_type == "uint8" and recipe.per_channel and recipe.bn_as_conv


@pytest.mark.parametrize("op_types", [None, ("Conv", "Gemm", "Add", "Softmax")], ids=["default", "softmax-asked"])
def test_int8_never_quantises_the_final_softmax(tiny_random_run, tmp_path, op_types):
    """The probabilities output comes straight from a float Softmax, even when Softmax is in ``op_types``:
    rows sum to 1 within 1e-5 (a quantised softmax is off by up to a uint8 step, ~4e-3)."""
    from wbc_deploy.converters.quantize import quantize_int8
    from wbc_deploy.converters.verify import cpu_session

    export_model(tiny_random_run, tmp_path / "fp32", ExportOptions(verify=False))
    fp32 = tmp_path / "fp32" / "model.onnx"
    card = read_onnx_card(fp32)
    batch = prepare_batch(synthetic_images(16, seed=2, size=int(card.input_size)), card)
    q = quantize_int8(fp32, tmp_path / "int8.onnx", card, batch[:8], op_types=op_types)
    assert q.details["activation_type"] == "uint8" and q.details["batchnorm_rewritten"] > 0
    graph = onnx.load(str(q.path)).graph
    (out,) = [o for o in graph.output if o.name == "probabilities"]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    producer = next(n for n in graph.node if "probabilities" in n.output)
    assert producer.op_type == "Softmax"
    assert not any("probabilities" in n.input for n in graph.node)  # nothing quantises the output after it
    assert "QuantizeLinear" in {n.op_type for n in graph.node}  # the rest really is quantised
    (probs,) = cpu_session(q.path).run(["probabilities"], {"images": batch})
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
