"""`export --triton REPO`: Triton model repositories, parsed with Triton's own protobuf schema.

The schema is ``tritonclient``'s ``model_config_pb2`` (the ``inference.ModelConfig`` messages Triton
reads config.pbtxt into), parsed with ``google.protobuf.text_format``. The plain ``tritonclient`` wheel
ships that module but its ``tritonclient.grpc`` package refuses to import without grpcio, so without
the grpc extra the module is loaded from its file: the same generated schema, without gRPC.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnxruntime as ort
import pytest

from wbc_deploy.card import ONNX_CARD_KEY, ModelCard
from wbc_deploy.classes import CLASSES
from wbc_deploy.cli import main
from wbc_deploy.converters.onnx_meta import read_onnx_card
from wbc_deploy.converters.triton import write_engine_model, write_onnx_model
from wbc_deploy.errors import WbcError
from wbc_deploy.runtime.engine_meta import EngineInfo

try:
    from test_count import write_linear_model
except ImportError:  # tests/ as a package
    from .test_count import write_linear_model

ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64"}


@pytest.fixture(scope="session")
def schema():
    """Triton's ``model_config_pb2`` module (the real ModelConfig protobuf schema)."""
    try:
        from tritonclient.grpc import model_config_pb2  # with tritonclient[grpc]
        return model_config_pb2
    except ImportError:
        pytest.skip("tritonclient is not installed (it comes with the dev extra)")
    except RuntimeError:  # plain tritonclient: the grpc package needs grpcio, the schema module does not
        spec = importlib.util.find_spec("tritonclient")
        path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
        module_spec = importlib.util.spec_from_file_location("tritonclient_model_config_pb2", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module


def parse(schema, config_path: Path):
    from google.protobuf import text_format

    return text_format.Parse(config_path.read_text(), schema.ModelConfig())


def check_against_onnx(schema, cfg, onnx_path: Path, max_batch: int) -> None:
    """The config's tensors are the ONNX model's own (names, element types, dims after the batch)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert cfg.max_batch_size == max_batch
    for tensors, ort_tensors in ((cfg.input, session.get_inputs()), (cfg.output, session.get_outputs())):
        assert [t.name for t in tensors] == [t.name for t in ort_tensors]
        for t, o in zip(tensors, ort_tensors):
            assert schema.DataType.Name(t.data_type) == ORT_TO_TRITON[o.type]
            assert not isinstance(o.shape[0], int)  # a dynamic batch, which Triton's batcher fills
            assert list(t.dims) == list(o.shape[1:])


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> Path:
    return write_linear_model(tmp_path_factory.mktemp("triton") / "linear.onnx")


def test_export_writes_a_repository_triton_can_read(schema, linear, tmp_path, capsys):
    repo = tmp_path / "repo"
    main(["export", str(linear), "--out", str(tmp_path / "export"), "--fp16", "--triton", str(repo), "--triton-name", "wbc",
          "--triton-max-batch", "32", "--triton-instances", "2", "-q"])
    assert "Triton model wbc:" in capsys.readouterr().out
    card = read_onnx_card(linear)
    assert sorted(p.name for p in repo.iterdir()) == ["wbc", "wbc-fp16"]

    cfg = parse(schema, repo / "wbc" / "config.pbtxt")
    assert cfg.name == "wbc" and cfg.platform == "onnxruntime_onnx"
    check_against_onnx(schema, cfg, linear, 32)
    assert list(cfg.input[0].dims) == [3, card.input_size, card.input_size]
    assert schema.ModelInput.Format.Name(cfg.input[0].format) == "FORMAT_NCHW"
    assert list(cfg.output[0].dims) == [len(card.classes)] and cfg.output[0].label_filename == "labels.txt"
    assert (repo / "wbc" / "labels.txt").read_text().split() == card.classes
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds > 0
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 2
    assert schema.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_AUTO"
    assert ModelCard.from_dict(json.loads(cfg.parameters[ONNX_CARD_KEY].string_value)).to_dict() == card.to_dict()
    assert (repo / "wbc" / "1" / "model.onnx").read_bytes() == (tmp_path / "export" / "model.onnx").read_bytes()

    fp16 = parse(schema, repo / "wbc-fp16" / "config.pbtxt")
    assert fp16.name == "wbc-fp16" and schema.ModelInstanceGroup.Kind.Name(fp16.instance_group[0].kind) == "KIND_GPU"
    check_against_onnx(schema, fp16, repo / "wbc-fp16" / "1" / "model.onnx", 32)


def test_the_trained_models_export_in_a_repository(schema, trained_onnx, tmp_path):
    """The exporter's own graph (wbcnet-tiny): input `images` 3 x 64 x 64, output `probabilities` over 5 classes."""
    config = write_onnx_model(tmp_path / "repo", "wbcnet-tiny", trained_onnx, read_onnx_card(trained_onnx))
    cfg = parse(schema, config)
    check_against_onnx(schema, cfg, trained_onnx, 64)
    assert [t.name for t in cfg.input] == ["images"] and list(cfg.input[0].dims) == [3, 64, 64]
    assert [t.name for t in cfg.output] == ["probabilities"] and list(cfg.output[0].dims) == [len(CLASSES)]


def test_a_tensorrt_engine_is_listed_under_its_compute_capability(schema, tmp_path):
    """The engine's config comes from its sidecar (no GPU here: the plan's bytes are a stand-in; Triton
    loads it only on a GPU of the listed compute capability)."""
    card = ModelCard(arch="wbcnet", classes=list(CLASSES), input_size=224, output="probabilities")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan bytes")
    EngineInfo(tensorrt_version="10.3.0", gpu_name="NVIDIA A10", compute_capability="8.6", precision="fp16",
               profile={"min": 1, "opt": 64, "max": 256}, input_name="images", output_name="probabilities",
               card=card.to_dict()).write(engine)
    cfg = parse(schema, write_engine_model(tmp_path / "repo", "wbcnet-trt", engine))
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 256
    assert list(cfg.dynamic_batching.preferred_batch_size) == [64]
    assert dict(cfg.cc_model_filenames) == {"8.6": "model.plan"}
    assert (tmp_path / "repo" / "wbcnet-trt" / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert [t.name for t in cfg.input] == ["images"] and list(cfg.input[0].dims) == [3, 224, 224]
    assert list(cfg.output[0].dims) == [5] and schema.DataType.Name(cfg.output[0].data_type) == "TYPE_FP32"
    assert schema.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_GPU"
    assert cfg.parameters["compute_capability"].string_value == "8.6"


def test_a_bad_model_name_is_refused_before_anything_is_written(linear, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(linear), "--out", str(tmp_path / "export"), "--triton", str(tmp_path / "repo"),
              "--triton-name", "../escape", "-q"])
    assert exc.value.code == 2 and "Triton model name '../escape'" in capsys.readouterr().err
    with pytest.raises(WbcError, match="Triton model name"):
        write_onnx_model(tmp_path / "repo", "a b", linear, read_onnx_card(linear))
    assert not (tmp_path / "export").exists() and not (tmp_path / "repo").exists()


# --------------------------------------------------------------------------- a live server, where one runs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None) -> tuple[int, dict]:
    """GET (or POST ``body`` as JSON) on Triton's KServe v2 HTTP endpoint; (status, JSON reply)."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
            return resp.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@pytest.mark.slow
def test_a_real_triton_server_serves_the_exported_repository(linear, tmp_path):
    """With ``tritonserver`` on PATH (NVIDIA's Triton container), the exported repository loads and answers
    as onnxruntime does, through Triton's KServe v2 HTTP protocol (plain JSON, no client extra needed).
    Triton has no pip-installable server for this machine, so elsewhere the test is skipped."""
    import shutil
    import subprocess
    import time

    import numpy as np

    server = shutil.which("tritonserver")
    if server is None:
        pytest.skip("tritonserver is not on PATH (it ships in NVIDIA's Triton container; no server installs on this "
                    "machine): the repository is checked against Triton's schema above instead")
    repo = tmp_path / "repo"
    main(["export", str(linear), "--out", str(tmp_path / "export"), "--triton", str(repo), "--triton-name", "wbc", "-q"])
    port = _free_port()
    log = (tmp_path / "tritonserver.log").open("w")
    proc = subprocess.Popen([server, "--model-repository", str(repo), "--http-port", str(port), "--allow-grpc", "false",
                             "--allow-metrics", "false"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v2"
    try:
        deadline = time.monotonic() + 120
        while _http(f"{base}/models/wbc/ready")[0] != 200:
            assert proc.poll() is None, (tmp_path / "tritonserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Triton did not load the model within 120 s"
            time.sleep(1)
        status, config = _http(f"{base}/models/wbc/config")
        assert status == 200 and config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 64
        card = read_onnx_card(linear)
        x = np.random.default_rng(0).standard_normal((3, 3, card.input_size, card.input_size)).astype(np.float32)
        session = ort.InferenceSession(str(linear), providers=["CPUExecutionProvider"])
        inp, out = session.get_inputs()[0].name, session.get_outputs()[0].name
        status, reply = _http(f"{base}/models/wbc/infer", {
            "inputs": [{"name": inp, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": out}]})
        assert status == 200
        got = np.asarray(reply["outputs"][0]["data"], dtype=np.float32).reshape(reply["outputs"][0]["shape"])
        np.testing.assert_allclose(got, session.run([out], {inp: x})[0], rtol=1e-5, atol=1e-6)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
