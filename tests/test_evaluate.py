"""`wbc-deploy evaluate`: JSON keys, the metrics of the saved model, absent and unknown classes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from wbc_deploy.card import ModelCard
from wbc_deploy.data.synth_cells import write_cell_dataset
from wbc_deploy.errors import WbcError
from wbc_deploy.trainer.evaluate import evaluate_folder

try:
    from test_train_common import TRAIN_CLASSES, run_cli, tiny_cells, tiny_run
except ImportError:  # tests/ as a package
    from .test_train_common import TRAIN_CLASSES, run_cli, tiny_cells, tiny_run


@pytest.fixture(scope="session", name="cells")
def cells_fixture(tmp_path_factory):
    return tiny_cells(tmp_path_factory)


@pytest.fixture(scope="session", name="tiny_run")
def tiny_run_fixture(tmp_path_factory):
    return tiny_run(tmp_path_factory)

DOCUMENTED_KEYS = {"OA", "AP", "AR", "AF1", "per_class", "classes", "confusion", "absent_classes", "n", "model", "data", "skipped_files"}


def test_evaluate_writes_json_table_and_confusion(tiny_run, tmp_path, capsys):
    data = tmp_path / "eval"
    write_cell_dataset(data, per_class=2, size_px=40, seed=7, classes=["Lymphocytes", "NEUTROPHIL"])
    (data / "neutrophil" / "bad.jpg").write_bytes(b"\xff\xd8\xffnope")
    out = tmp_path / "res" / "metrics.json"
    code, stdout, err = run_cli(["evaluate", tiny_run, data, "--out", out, "--batch-size", "3", "-q"], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert DOCUMENTED_KEYS <= set(result)
    assert result["classes"] == TRAIN_CLASSES  # the model's classes, in its output order
    assert result["n"] == 4 and result["skipped_files"] == 1
    assert result["absent_classes"] == ["eosinophil", "monocyte"]
    assert result["per_class"]["monocyte"]["recall"] is None
    cm = np.array(result["confusion"])
    assert cm.shape == (4, 4) and cm.sum() == 4 and cm[[0, 2]].sum() == 0  # no true eosinophils/monocytes
    assert result["OA"] == pytest.approx(np.trace(cm) / 4)
    assert (out.parent / "confusion.png").is_file()
    assert "AP / AR / AF1 / OA" in stdout


def test_evaluate_inside_a_run_keeps_the_training_figure(tiny_run, cells, tmp_path, capsys):
    before = (tiny_run / "confusion.png").read_bytes()
    code, _, err = run_cli(["evaluate", tiny_run, cells, "--out", tiny_run / "eval.json", "-q"], capsys)
    assert code == 0, err
    assert (tiny_run / "eval.confusion.png").is_file()
    assert (tiny_run / "confusion.png").read_bytes() == before


def test_unknown_class_folder_is_a_clear_error(tiny_run, tmp_path, capsys):
    data = tmp_path / "with-basophils"
    write_cell_dataset(data, per_class=1, size_px=16, seed=0, classes=["basophil", "neutrophil"])
    code, _, err = run_cli(["evaluate", tiny_run, data, "--out", tmp_path / "m.json"], capsys)
    assert code == 2 and "basophil" in err.strip().splitlines()[-1] and "does not know" in err
    assert not (tmp_path / "m.json").exists()


def test_any_backend_plugs_in_as_a_predict_function(tmp_path):
    """Evaluation only needs probabilities for a list of RGB images (ONNX/TensorRT backends reuse this)."""
    data = tmp_path / "d"
    write_cell_dataset(data, per_class=3, size_px=16, seed=0, classes=["lymphocyte", "neutrophil"])
    card = ModelCard(arch="stub", classes=["lymphocyte", "neutrophil"], input_size=16)

    def always_neutrophil(images):
        assert all(im.dtype == np.uint8 and im.shape[-1] == 3 for im in images)
        return np.tile([0.1, 0.9], (len(images), 1))

    m = evaluate_folder(always_neutrophil, card, data, out=None, quiet=True)
    assert m["OA"] == 0.5 and m["per_class"]["lymphocyte"]["recall"] == 0.0 and m["confusion"] == [[0, 3], [0, 3]]
    split = tmp_path / "split"
    write_cell_dataset(split / "train", per_class=1, size_px=16, seed=0, classes=["neutrophil"])
    write_cell_dataset(split / "test", per_class=1, size_px=16, seed=0, classes=["neutrophil"])
    with pytest.raises(WbcError, match="split folders"):
        evaluate_folder(always_neutrophil, card, split, out=None, quiet=True)
