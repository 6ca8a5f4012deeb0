"""Training end to end on tiny synthetic data: run directory contents, resume, checkpoints, CLI errors.

Kept small on purpose (4 classes x 8 images of 32 px, 1-2 epochs): accuracy is measured outside the
test suite (see the trainer's report); here we check behaviour.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from wbc_deploy.card import ONNX_CARD_KEY, ModelCard
from wbc_deploy.data.synth_cells import write_cell_dataset
from wbc_deploy.errors import WbcError
from wbc_deploy.files import sha256_file
from wbc_deploy.trainer.checkpoint import load_checkpoint, load_training_state, save_checkpoint
from wbc_deploy.trainer.fit import train

try:
    from test_train_common import TINY, TRAIN_CLASSES, run_cli, tiny_cells, tiny_run
except ImportError:  # tests/ as a package
    from .test_train_common import TINY, TRAIN_CLASSES, run_cli, tiny_cells, tiny_run


@pytest.fixture(scope="session", name="cells")
def cells_fixture(tmp_path_factory) -> Path:
    return tiny_cells(tmp_path_factory)


@pytest.fixture(scope="session", name="tiny_run")
def tiny_run_fixture(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


def test_run_directory_contents(tiny_run):
    for name in ("model.safetensors", "card.json", "last.pt", "split.csv", "history.csv", "curves.png", "confusion.png"):
        assert (tiny_run / name).is_file(), name
    card = json.loads((tiny_run / "card.json").read_text())
    assert card["arch"] == "wbcnet-tiny" and card["attention"] == "scam"
    assert card["classes"] == TRAIN_CLASSES and card["input_size"] == 32
    assert len(card["mean"]) == 3 and len(card["std"]) == 3 and card["fov_um"] > 0
    assert card["params"] > 0
    assert card["checkpoint_sha256"] == sha256_file(tiny_run / "model.safetensors")
    training = card["training"]
    assert training["skipped_files"] == 2  # the corrupt PNG and the text file
    assert training["counts"]["train"] == {c: 5 for c in TRAIN_CLASSES}  # 8 images -> 5/2/1 (the corrupt one skipped)
    assert training["counts"]["val"] == {c: 2 for c in TRAIN_CLASSES}
    assert training["counts"]["test"] == {c: 1 for c in TRAIN_CLASSES}
    assert training["best_epoch"] == 1 and training["epochs_completed"] == 1
    hp = training["hyperparameters"]
    assert hp["optimizer"] == "RAdam" and hp["mixup_alpha"] == 0.2 and hp["batch_size"] == 8 and hp["img_size"] == 32
    assert set(card["metrics"]) == {"val", "test"}
    assert card["metrics"]["test"]["n"] == 4
    with safe_open(str(tiny_run / "model.safetensors"), framework="pt") as fh:
        meta_card = json.loads(fh.metadata()[ONNX_CARD_KEY])
    assert meta_card["classes"] == TRAIN_CLASSES and meta_card["metrics"] == card["metrics"]
    with (tiny_run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1]
    state = torch.load(tiny_run / "last.pt", map_location="cpu", weights_only=True)  # no arbitrary pickles
    assert state["epoch"] == 1 and "optimizer" in state


def test_checkpoint_round_trips_to_identical_logits(tiny_run, tmp_path):
    model, card = load_checkpoint(tiny_run)
    assert not model.training and card.classes == TRAIN_CLASSES
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    # Save again elsewhere; load by directory, by file, and from the safetensors metadata alone.
    save_checkpoint(tmp_path / "copy", model, ModelCard.from_dict(card.to_dict()))
    for source in (tmp_path / "copy", tmp_path / "copy" / "model.safetensors"):
        again, _ = load_checkpoint(source)
        with torch.inference_mode():
            assert torch.equal(again(x), ref)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tmp_path / "copy" / "model.safetensors", lone / "weights.safetensors")
    again, lone_card = load_checkpoint(lone / "weights.safetensors")
    assert lone_card.classes == TRAIN_CLASSES
    with torch.inference_mode():
        assert torch.equal(again(x), ref)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(WbcError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(WbcError, match="no model.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WbcError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(WbcError, match="not a wbc-deploy training state"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "last.pt")
        load_training_state(tmp_path / "last.pt")


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def _interrupted_after_first_epoch(data: Path, out: Path) -> None:
    def stop_after_first_epoch(row):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C once epoch 1 was saved

    with pytest.raises(KeyboardInterrupt):
        train(data, out, preset="tiny", epochs=2, img_size=32, batch_size=8, seed=0, quiet=True, on_epoch=stop_after_first_epoch)
    assert load_training_state(out / "last.pt")["epoch"] == 1


def test_resume_continues_exactly_where_it_stopped(cells, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(cells, data)
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_cli(["train", data, "--out", whole, "--epochs", "2", *TINY], capsys)[0] == 0
    _interrupted_after_first_epoch(data, part)
    split_before = (part / "split.csv").read_text()
    # New images after the first run must not change the saved split.
    write_cell_dataset(data, per_class=10, size_px=32, seed=0, classes=["lymphocyte"])
    code, _, err = run_cli(["train", data, "--out", part, "--resume", "-q"], capsys)
    assert code == 0, err
    assert (part / "split.csv").read_text() == split_before
    assert load_training_state(part / "last.pt")["epoch"] == 2
    assert _history(part) == _history(whole)  # same seed, same settings: the same run, resumed or not
    card = json.loads((part / "card.json").read_text())
    assert card["training"]["epochs_completed"] == 2 and card["training"]["hyperparameters"]["preset"] == "tiny"
    # Resuming with a contradicting setting is refused; a finished run without --resume is not overwritten.
    code, _, err = run_cli(["train", data, "--out", part, "--resume", "--lr", "0.5", "-q"], capsys)
    assert code == 2 and "--lr" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["train", data, "--out", part, *TINY], capsys)
    assert code == 2 and "--resume" in err


def test_resume_with_split_csv_missing_rebuilds_it_and_keeps_the_saved_weights(cells, tmp_path, capsys):
    """--resume of a run whose split.csv was deleted: the split is made again from DATA (same seed, same split)
    and epoch 2 continues from last.pt's weights, not from freshly built ones (the history equals an
    uninterrupted run's)."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_cli(["train", cells, "--out", whole, "--epochs", "2", *TINY], capsys)[0] == 0
    _interrupted_after_first_epoch(cells, part)
    split_before = (part / "split.csv").read_text()
    (part / "split.csv").unlink()
    code, _, err = run_cli(["train", cells, "--out", part, "--resume", "-q"], capsys)
    assert code == 0, err
    assert (part / "split.csv").read_text() == split_before
    assert load_training_state(part / "last.pt")["epoch"] == 2
    assert _history(part) == _history(whole)


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    one = tmp_path / "one"
    write_cell_dataset(one, per_class=3, size_px=16, seed=1, classes=["neutrophil"])
    two = tmp_path / "two"
    write_cell_dataset(two, per_class=3, size_px=16, seed=1, classes=["neutrophil", "lymphocyte"])
    cases = [
        (["train", empty, "--out", tmp_path / "r1", *TINY], "no WBC images"),
        (["train", tmp_path / "absent", "--out", tmp_path / "r2", *TINY], "not found"),
        (["train", one, "--out", tmp_path / "r3", *TINY], "only one WBC class"),
        (["train", two, "--out", tmp_path / "r4", "--backbone-weights", f"resnet18={tmp_path / 'nope.pth'}", *TINY], "nope.pth"),
        (["train", two, "--out", tmp_path / "r5", "--backbone-weights", "resnet18", *TINY], "NAME=PATH"),
        (["train", two, "--out", tmp_path / "r6", "--preset", "huge"], "preset"),
        (["train", two, "--out", tmp_path / "r7", "--mixup-alpha", "-1", *TINY], "mixup-alpha"),
        (["evaluate", tmp_path / "no-run", two, "--out", tmp_path / "m.json"], "not found"),
    ]
    for args, needle in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) >= 1 and lines[-1].startswith("error:") and needle in lines[-1], (args, err)
        assert "Traceback" not in err
