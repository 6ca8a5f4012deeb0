"""TensorRT: engine build + sidecar, pipelined execution, refusal of foreign engines (GPU only), and the
one-line failure of ``--trt`` where TensorRT or a GPU is missing (everywhere else)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wbc_deploy.errors import WbcError

try:
    from test_runtime_common import make_onnx, random_crops, tiny_card
except ImportError:  # tests/ as a package
    from .test_runtime_common import make_onnx, random_crops, tiny_card


def _trt_status() -> tuple[bool, str]:
    from wbc_deploy.converters.tensorrt_build import tensorrt_available

    try:
        import pycuda.driver  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return False, f"pycuda is not importable ({type(exc).__name__}: {exc})"
    return tensorrt_available()


TRT_OK, TRT_REASON = _trt_status()
needs_trt = pytest.mark.skipif(not TRT_OK, reason=f"TensorRT engine tests need an NVIDIA GPU, tensorrt and pycuda: {TRT_REASON}")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from wbc_deploy.converters.tensorrt_build import TrtBuildOptions, build_engine

    root = tmp_path_factory.mktemp("trt")
    onnx_path = make_onnx(root / "model.onnx", tiny_card())
    opts = TrtBuildOptions(min_batch=1, opt_batch=8, max_batch=16, workspace_mb=256, timing_cache=root / "timing.cache")
    info = build_engine(onnx_path, root / "model.engine", tiny_card(), opts)
    return root, onnx_path, root / "model.engine", info


@needs_trt
def test_engine_sidecar_records_version_gpu_profile_and_hashes(engine):
    root, onnx_path, engine_path, info = engine
    from wbc_deploy.files import sha256_file
    from wbc_deploy.runtime.engine_meta import EngineInfo

    side = json.loads((root / "model.engine.json").read_text())
    assert side["precision"] == "fp16" and side["profile"] == {"min": 1, "opt": 8, "max": 16}
    assert side["source_onnx_sha256"] == sha256_file(onnx_path) and side["engine_sha256"] == sha256_file(engine_path)
    assert side["card"]["classes"] == tiny_card().classes and side["compute_capability"].count(".") == 1
    assert EngineInfo.read(engine_path) == info
    extra = side["extra"]
    assert extra["device"] == 0 and extra["tensorrt_major"] in (10, 11)
    # TensorRT 10: FP32 ONNX + BuilderFlag.FP16; 11: the FP16 ONNX, no flags (strongly typed)
    assert (extra["builder_flags"] == ["FP16"]) if extra["tensorrt_major"] == 10 else extra["built_from"].startswith("FP16 ONNX")
    cache = Path(extra["timing_cache"])
    assert cache.parent == root and cache.name.startswith("timing.trt") and cache.stat().st_size > 0


@needs_trt
def test_rebuild_reuses_the_timing_cache_and_a_foreign_one_is_replaced(engine, tmp_path):
    root, onnx_path, _, info = engine
    from wbc_deploy.converters.tensorrt_build import build_engine

    again = build_engine(onnx_path, tmp_path / "again.engine", tiny_card(), min_batch=1, opt_batch=8, max_batch=16,
                         workspace_mb=256, timing_cache=root / "timing.cache")
    assert again.extra["timing_cache_status"].startswith("reused")
    Path(again.extra["timing_cache"]).write_bytes(b"not a timing cache")
    third = build_engine(onnx_path, tmp_path / "third.engine", tiny_card(), min_batch=1, opt_batch=8, max_batch=16,
                         workspace_mb=256, timing_cache=root / "timing.cache")
    assert third.extra["timing_cache_status"].startswith("replaced") and (tmp_path / "third.engine.json").is_file()


@needs_trt
def test_close_releases_and_refuses_further_use(engine):
    _, _, engine_path, _ = engine
    from wbc_deploy.runtime import open_backend

    be = open_backend(engine_path)
    be.predict(np.zeros((3, 3, 16, 16), np.float32))
    be.close()
    be.close()  # twice is fine
    assert be._buffers == [] and be._streams == []
    with pytest.raises(WbcError, match="is closed"):
        be.predict(np.zeros((1, 3, 16, 16), np.float32))


@needs_trt
def test_engine_agrees_with_onnx_runtime_and_pipelines_any_batch_size(engine):
    _, onnx_path, engine_path, _ = engine
    from wbc_deploy.preprocess import prepare_batch
    from wbc_deploy.runtime import open_backend

    crops = random_crops(40, seed=5)
    with open_backend(onnx_path, providers="cpu") as ort_be, open_backend(engine_path) as trt_be:
        assert trt_be.name == "trt" and trt_be.max_batch == 16
        ref = ort_be.predict_images(crops)
        got = trt_be.predict_images(crops, batch_size=7)
        assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.995
        np.testing.assert_allclose(got, ref, atol=1e-2)
        batch = prepare_batch(crops, trt_be.card)
        sizes = [1, 16, 0, 23]  # within, at, empty, above the profile's max (split)
        chunks = np.split(batch, np.cumsum(sizes)[:-1])
        outs = list(trt_be.predict_many(chunks))
        assert [len(o) for o in outs] == sizes
        np.testing.assert_allclose(np.concatenate(outs), got, atol=1e-3)


@needs_trt
def test_engine_from_another_tensorrt_version_is_refused(engine, tmp_path):
    import shutil

    _, _, engine_path, _ = engine
    copy = tmp_path / "old.engine"
    shutil.copyfile(engine_path, copy)
    side = json.loads(engine_path.with_name("model.engine.json").read_text())
    side["tensorrt_version"] = "8.6.1"
    (tmp_path / "old.engine.json").write_text(json.dumps(side))
    from wbc_deploy.runtime import open_backend

    with pytest.raises(WbcError, match=r"built with TensorRT 8.6.1.*rebuild.*wbc-deploy export MODEL --trt"):
        open_backend(copy)


@pytest.mark.skipif(TRT_OK, reason="TensorRT and a GPU are available here: the missing-TensorRT message cannot be shown")
def test_trt_without_tensorrt_fails_with_one_line_and_writes_nothing(tmp_path, capsys):
    from wbc_deploy.cli import main

    onnx_path = make_onnx(tmp_path / "model.onnx", tiny_card())
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(onnx_path), "--out", str(out), "--trt", "-q"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "wbc-deploy[trt-cu12]" in err and "[trt-cu13]" in err and "NVIDIA GPU" in err
    assert not out.exists()


@pytest.mark.skipif(TRT_OK, reason="TensorRT and a GPU are available here")
def test_trt_backend_without_tensorrt_names_the_install(tmp_path):
    from wbc_deploy.runtime import open_backend
    from wbc_deploy.runtime.engine_meta import EngineInfo

    engine_path = tmp_path / "model.engine"
    engine_path.write_bytes(b"engine")
    EngineInfo(
        tensorrt_version="10.3.0", gpu_name="NVIDIA L4", compute_capability="8.9", precision="fp16",
        profile={"min": 1, "opt": 8, "max": 16}, input_name="images", output_name="probabilities", card=tiny_card().to_dict(),
    ).write(engine_path)
    with pytest.raises(WbcError, match=r"wbc-deploy\[trt-cu12\]"):
        open_backend(engine_path)
