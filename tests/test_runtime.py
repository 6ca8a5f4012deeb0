"""Runtime backends: ONNX Runtime validation and refusals, backend choice by file type, the torch-free
import, engine sidecar checks and the double-buffered scheduler the TensorRT backend runs on."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from wbc_deploy.errors import WbcError
from wbc_deploy.preprocess import prepare_batch
from wbc_deploy.runtime import backend_for_path, canonical_backend, open_backend
from wbc_deploy.runtime.base import softmax
from wbc_deploy.files import sha256_file
from wbc_deploy.runtime.engine_meta import EngineInfo, check_compatible, sidecar_path
from wbc_deploy.runtime.ort_backend import OrtBackend, resolve_providers
from wbc_deploy.runtime.trt_backend import double_buffered, split_for_profile

try:
    from test_runtime_common import make_onnx, random_crops, tiny_card
except ImportError:  # tests/ as a package
    from .test_runtime_common import make_onnx, random_crops, tiny_card


@pytest.fixture(scope="module")
def good_onnx(tmp_path_factory):
    return make_onnx(tmp_path_factory.mktemp("onnx") / "good.onnx", tiny_card())


# -- ONNX Runtime backend -----------------------------------------------------------------------------
def test_ort_backend_reads_the_card_and_returns_probabilities(good_onnx):
    with open_backend(good_onnx) as be:
        assert isinstance(be, OrtBackend)
        assert be.name == "ort" and be.device == "CPUExecutionProvider" and be.providers[0] == be.device
        assert be.card.classes == tiny_card().classes and be.input_size == 16
        crops = random_crops(7)
        probs = be.predict_images(crops, batch_size=3)
        assert probs.shape == (7, 5) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        # predict_images is prepare_batch + predict, whatever the batching
        np.testing.assert_allclose(be.predict(prepare_batch(crops, be.card)), probs, atol=1e-6)
        assert len(set(probs.argmax(1).tolist())) > 1  # the crops really are told apart
        assert be.predict(np.zeros((0, 3, 16, 16), np.float32)).shape == (0, 5)


def test_ort_backend_thread_and_optimisation_settings(good_onnx):
    crops = random_crops(4, seed=3)
    with open_backend(good_onnx, intra_op_threads=1, inter_op_threads=1, graph_optimization="disable") as plain, \
            open_backend(good_onnx, providers="cpu", graph_optimization="all", parallel=True, inter_op_threads=2) as tuned:
        assert plain.options["intra_op_threads"] == 1 and plain.options["graph_optimization"] == "disable"
        np.testing.assert_allclose(plain.predict_images(crops), tuned.predict_images(crops), atol=1e-6)
    with pytest.raises(WbcError, match="graph optimisation level"):
        OrtBackend(good_onnx, graph_optimization="max")


def test_wrong_batch_shape_is_a_clear_error(good_onnx):
    with open_backend(good_onnx) as be:
        with pytest.raises(WbcError, match=r"N x 3 x 16 x 16 batch.*prepare_batch"):
            be.predict(np.zeros((2, 3, 32, 32), np.float32))


def test_model_without_metadata_is_refused(tmp_path):
    path = make_onnx(tmp_path / "bare.onnx", None)
    with pytest.raises(WbcError, match="no wbc-deploy metadata.*wbc-deploy export"):
        open_backend(path)


def test_input_size_differing_from_the_card_is_refused(tmp_path):
    path = make_onnx(tmp_path / "size.onnx", tiny_card(size=16), graph_size=24)
    with pytest.raises(WbcError, match=r"input is 3 x 24 x 24 but its metadata says 3 x 16 x 16"):
        open_backend(path)


def test_class_count_differing_from_the_card_is_refused(tmp_path):
    path = make_onnx(tmp_path / "classes.onnx", tiny_card(), graph_classes=4)
    with pytest.raises(WbcError, match=r"metadata lists 5 classes"):
        open_backend(path)


def test_refusal_reaches_the_cli_as_one_line(tmp_path, capsys):
    from wbc_deploy.cli import main
    from wbc_deploy.data.synth_cells import write_cell_dataset

    path = make_onnx(tmp_path / "classes.onnx", tiny_card(), graph_classes=4)
    data = tmp_path / "cells"
    write_cell_dataset(data, per_class=1, size_px=16, seed=0, classes=["neutrophil", "lymphocyte"])
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(path), str(data), "--out", str(tmp_path / "m.json"), "-q"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "metadata lists 5 classes" in err and "\n" not in err
    assert not (tmp_path / "m.json").exists()


def test_logits_models_get_a_softmax_from_the_backend(tmp_path):
    card = tiny_card(output="logits")
    path = make_onnx(tmp_path / "logits.onnx", card, logits_output=True)
    crops = random_crops(5, seed=1)
    with open_backend(path) as be:
        probs = be.predict_images(crops)
        raw = be.session.run(["logits"], {"images": prepare_batch(crops, card)})[0]
    np.testing.assert_allclose(probs, softmax(raw), atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_provider_resolution():
    avail = ["AzureExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cpu", avail) == ["CPUExecutionProvider"]
    assert resolve_providers(["cuda", "CPUExecutionProvider"], avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(WbcError, match=r"'trt' is not available.*onnxruntime-gpu"):
        resolve_providers("trt,cpu", avail)


# -- choosing a backend --------------------------------------------------------------------------------
def test_backend_is_chosen_by_file_type(tmp_path, good_onnx):
    run = tmp_path / "run"
    run.mkdir()
    assert backend_for_path(good_onnx) == "ort"
    assert backend_for_path(tmp_path / "m.engine") == "trt" and backend_for_path(tmp_path / "m.plan") == "trt"
    assert backend_for_path(run) == "torch" and backend_for_path(tmp_path / "m.safetensors") == "torch"
    with pytest.raises(WbcError, match="cannot tell what kind of model"):
        backend_for_path(tmp_path / "model.bin")
    assert canonical_backend("onnxruntime") == "ort" and canonical_backend("TensorRT") == "trt"
    with pytest.raises(WbcError, match="unknown backend"):
        canonical_backend("openvino")
    with pytest.raises(WbcError, match="cannot run on the trt backend"):
        open_backend(good_onnx, backend="trt")
    with pytest.raises(WbcError, match="model not found"):
        open_backend(tmp_path / "missing.onnx")


def test_engine_without_sidecar_asks_for_a_rebuild(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(WbcError, match=r"no sidecar model.engine.json.*wbc-deploy export MODEL --trt"):
        open_backend(engine)


def test_runtime_import_and_ort_inference_do_not_import_torch_or_tensorrt(good_onnx):
    code = textwrap.dedent(f"""
        import sys, json, numpy as np
        from wbc_deploy.runtime import open_backend
        be = open_backend({str(good_onnx)!r})
        be.predict(np.zeros((2, 3, 16, 16), np.float32))
        print(json.dumps([m for m in ("torch", "torchvision", "tensorrt", "pycuda") if m in sys.modules]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# -- TensorRT engine sidecar (torch- and tensorrt-free) ------------------------------------------------
def _info(engine) -> EngineInfo:
    return EngineInfo(
        tensorrt_version="10.3.0", gpu_name="NVIDIA L4", compute_capability="8.9", precision="fp16",
        profile={"min": 1, "opt": 64, "max": 256}, input_name="images", output_name="probabilities",
        card=tiny_card().to_dict(), engine_sha256=sha256_file(engine),
    )


def test_sidecar_round_trip_and_compatibility_checks(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00serialised engine bytes")
    info = _info(engine)
    assert info.write(engine) == sidecar_path(engine) == tmp_path / "model.engine.json"
    back = EngineInfo.read(engine)
    assert back == info and back.model_card().classes == tiny_card().classes
    check_compatible(back, engine, "10.3.0", "NVIDIA L4", "8.9")  # same machine: fine
    with pytest.raises(WbcError, match=r"TensorRT 10.3.0 but this machine has TensorRT 10.7.0.*rebuild.*--trt"):
        check_compatible(back, engine, "10.7.0", "NVIDIA L4", "8.9")
    with pytest.raises(WbcError, match=r"built for NVIDIA L4 \(compute capability 8.9\) but this GPU is NVIDIA H100.*--trt"):
        check_compatible(back, engine, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
    engine.write_bytes(b"\x00changed")
    with pytest.raises(WbcError, match="does not match the sha256"):
        check_compatible(back, engine, "10.3.0", "NVIDIA L4", "8.9")


def test_damaged_sidecar_is_a_clear_error(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(WbcError, match="not valid JSON.*--trt"):
        EngineInfo.read(engine)
    sidecar_path(engine).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(WbcError, match="not a wbc-deploy engine sidecar"):
        EngineInfo.read(engine)


# -- the double-buffered scheduler of the TensorRT backend, run with a numpy "device" ------------------
class _NumpyDevice:
    """Two buffer slots; 'execution' is a row sum, and results only appear when collected."""

    def __init__(self) -> None:
        self.slots: dict[int, np.ndarray] = {}
        self.max_in_flight = 0
        self.log: list[tuple[str, int]] = []

    def enqueue(self, slot: int, chunk: np.ndarray) -> None:
        assert slot not in self.slots, "a buffer set was reused before it was collected"
        self.slots[slot] = np.stack([chunk.reshape(len(chunk), 4).sum(1), np.arange(len(chunk))], axis=1).astype(np.float32)
        self.max_in_flight = max(self.max_in_flight, len(self.slots))
        self.log.append(("enqueue", slot))

    def collect(self, slot: int) -> np.ndarray:
        self.log.append(("collect", slot))
        return self.slots.pop(slot)


def test_split_for_profile_cuts_large_batches_and_pads_small_ones():
    batch = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    parts = list(split_for_profile(batch, min_batch=4, max_batch=4))
    assert [(len(c), rows, last) for c, rows, last in parts] == [(4, 4, False), (4, 4, False), (4, 2, True)]
    np.testing.assert_array_equal(parts[2][0][2:], 0)  # padding rows are zeros
    assert list(split_for_profile(batch[:0], 1, 4)) == [(None, 0, True)]


def test_double_buffering_keeps_order_and_two_batches_in_flight():
    rng = np.random.default_rng(0)
    sizes = [3, 0, 9, 1, 4, 4, 7]
    batches = [rng.standard_normal((n, 2, 2)).astype(np.float32) for n in sizes]
    device = _NumpyDevice()
    chunks = (
        (bid, chunk, rows, last)
        for bid, b in enumerate(batches)
        for chunk, rows, last in split_for_profile(b, min_batch=2, max_batch=4)
    )
    results = list(double_buffered(chunks, device.enqueue, device.collect, n_classes=2))
    assert [len(r) for r in results] == sizes
    for b, r in zip(batches, results):
        np.testing.assert_allclose(r[:, 0], b.reshape(len(b), 4).sum(1), rtol=1e-5)
    assert device.max_in_flight == 2  # the second set is filled while the first is still out
    assert device.log[:3] == [("enqueue", 0), ("enqueue", 1), ("collect", 0)]
