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
