"""TensorRT logic that runs without a GPU: version branching, cache keys, timing-cache rejection, the
output-shape check, buffer release and one-line errors.

TensorRT and pycuda cannot run on this machine (no NVIDIA GPU), so where a test needs one of their
objects it uses a small STAND-IN written here (``_TrtStandIn``, ``_ConfigStandIn``, ``_CudaStandIn``):
plain Python objects with only the attributes the code under test reads. They are not mocks of a
component that runs here, and they prove nothing about TensorRT itself; the GPU tests in
``test_tensorrt.py`` and ``benchmarks/gpu_check.sh`` do that on a CUDA machine.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from wbc_deploy.converters.tensorrt_build import (
    BuildPlan,
    attach_timing_cache,
    calibration_cache_file,
    plan_build,
    timing_cache_bytes,
    timing_cache_file,
)
from wbc_deploy.errors import WbcError
from wbc_deploy.runtime.trt_backend import _BufferSet, check_output_shape
from wbc_deploy.runtime.trt_support import check_device_index, check_trt_version, device_slug, one_line_errors


# -- stand-ins (NOT TensorRT / pycuda: just the attributes the code reads) -------------------------------
def _TrtStandIn(version: str, flags: tuple[str, ...]) -> types.SimpleNamespace:
    """Stand-in for the ``tensorrt`` module: a ``__version__`` and a ``BuilderFlag`` namespace."""
    return types.SimpleNamespace(__version__=version, BuilderFlag=types.SimpleNamespace(**{f: f for f in flags}))


TRT10 = ("FP16", "INT8", "TF32", "DIRECT_IO")  # flags TensorRT 10.x has
TRT11 = ("TF32", "REFIT")  # 11.x: FP16/INT8 removed (migration guide, "Removed Python APIs")


# -- version branching ----------------------------------------------------------------------------------
def test_tensorrt_10_builds_fp16_from_the_fp32_onnx_with_the_flag():
    plan = plan_build(_TrtStandIn("10.16.0.72", TRT10), fp16=True)
    assert plan == BuildPlan(10, "fp32", ("FP16",), calibrator=False, precision="fp16")


def test_tensorrt_10_int8_uses_the_calibrator_and_both_flags():
    plan = plan_build(_TrtStandIn("10.3.0", TRT10), fp16=True, int8=True)
    assert plan.source == "fp32" and plan.flags == ("FP16", "INT8") and plan.calibrator and plan.precision == "int8+fp16"


def test_tensorrt_11_builds_fp16_from_the_fp16_onnx_without_flags():
    plan = plan_build(_TrtStandIn("11.1.0.10", TRT11), fp16=True)
    assert plan == BuildPlan(11, "fp16", (), calibrator=False, precision="fp16")


def test_tensorrt_11_int8_is_explicit_quantisation():
    plan = plan_build(_TrtStandIn("11.4.0.106", TRT11), fp16=True, int8=True)
    assert plan.source == "int8-qdq" and plan.flags == () and not plan.calibrator and plan.precision == "int8"


def test_a_tensorrt_10_without_the_fp16_flag_is_one_error_line():
    with pytest.raises(WbcError, match=r"TensorRT 10.9.0 has no BuilderFlag.FP16") as err:
        plan_build(_TrtStandIn("10.9.0", ("TF32",)), fp16=True)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("version", ["8.6.1", "12.0.0", "9.3.0.1"])
def test_unsupported_tensorrt_versions_are_refused_in_one_line(version):
    with pytest.raises(WbcError, match=rf"TensorRT {version} is not supported: .*10 or 11") as err:
        plan_build(_TrtStandIn(version, TRT10))
    assert "\n" not in str(err.value) and "trt-cu12" in str(err.value)


def test_an_unreadable_version_string_is_an_error_line():
    with pytest.raises(WbcError, match="cannot read the TensorRT version"):
        check_trt_version("dev-build")
    assert check_trt_version("11.0.0") == 11 and check_trt_version(" 10.16") == 10


# -- cache keys -----------------------------------------------------------------------------------------
def test_timing_cache_file_is_keyed_by_tensorrt_version_and_gpu(tmp_path):
    base = tmp_path / "model.timing.cache"
    h200 = timing_cache_file(base, "10.16.0", "NVIDIA H200", "9.0")
    assert h200.parent == tmp_path and h200.name == "model.timing.trt10.16.0-sm90-nvidia-h200.cache"
    assert timing_cache_file(base, "10.16.0", "NVIDIA H200", "9.0") == h200
    assert timing_cache_file(base, "11.1.0", "NVIDIA H200", "9.0") != h200
    assert timing_cache_file(base, "10.16.0", "NVIDIA L4", "8.9") != h200
    assert timing_cache_file(tmp_path / "timing", "10.16.0", "NVIDIA L4", "8.9").suffix == ".cache"
    assert device_slug("10.16.0.72", "Tesla T4 / PCIe", "7.5") == "trt10.16.0.72-sm75-tesla-t4-pcie"


def test_calibration_cache_is_keyed_by_source_data_batch_and_device(tmp_path):
    engine = tmp_path / "model.engine"
    data = np.random.default_rng(0).normal(size=(32, 3, 8, 8)).astype(np.float32)
    key = dict(batch_size=16, trt_version="10.16.0", gpu_name="NVIDIA L4", compute_capability="8.9")
    a = calibration_cache_file(engine, "aa" * 32, data, **key)
    assert a.parent == tmp_path and a.name.startswith("model.engine.calib-") and a.suffix == ".cache"
    assert calibration_cache_file(engine, "aa" * 32, data.copy(), **key) == a
    assert calibration_cache_file(engine, "bb" * 32, data, **key) != a  # re-exported ONNX
    changed = data.copy()
    changed[0, 0, 0, 0] += 1
    assert calibration_cache_file(engine, "aa" * 32, changed, **key) != a  # other calibration crops
    assert calibration_cache_file(engine, "aa" * 32, data, **{**key, "batch_size": 8}) != a
    assert calibration_cache_file(engine, "aa" * 32, data, **{**key, "gpu_name": "NVIDIA A100", "compute_capability": "8.0"}) != a


# -- timing cache rejection -----------------------------------------------------------------------------
class _ConfigStandIn:
    """Stand-in for ``IBuilderConfig``'s timing-cache methods: rejects caches not made 'here'."""

    def __init__(self, accept: bytes = b"here", corrupt: bool = False, serialised: bytes | None = b"new-cache") -> None:
        self.accept, self.corrupt, self.serialised = accept, corrupt, serialised
        self.attached: list[bytes] = []

    def create_timing_cache(self, data: bytes) -> bytes:
        if self.corrupt and data:
            raise RuntimeError("Deserialization failed\nsecond line of the TensorRT message")
        return bytes(data)

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        if cache and cache != self.accept:
            return False
        self.attached.append(cache)
        return True

    def get_timing_cache(self):
        if self.serialised is None:
            return None
        return types.SimpleNamespace(serialize=lambda: self.serialised)


def test_timing_cache_reused_when_accepted(tmp_path):
    path = tmp_path / "t.cache"
    path.write_bytes(b"here")
    config = _ConfigStandIn()
    assert attach_timing_cache(config, path) == "reused t.cache" and config.attached == [b"here"]


def test_timing_cache_from_another_gpu_is_replaced_not_fatal(tmp_path, capsys):
    path = tmp_path / "t.cache"
    path.write_bytes(b"made-on-another-gpu")
    config = _ConfigStandIn()
    assert attach_timing_cache(config, path) == "replaced t.cache"
    assert config.attached == [b""]  # built with a fresh cache
    assert "rejected the timing cache t.cache" in capsys.readouterr().err


def test_corrupt_timing_cache_is_replaced(tmp_path):
    path = tmp_path / "t.cache"
    path.write_bytes(b"\x00garbage")
    config = _ConfigStandIn(corrupt=True)
    assert attach_timing_cache(config, path) == "replaced t.cache" and config.attached == [b""]


def test_missing_timing_cache_starts_a_new_one(tmp_path):
    config = _ConfigStandIn()
    assert attach_timing_cache(config, tmp_path / "none.cache") == "new none.cache"
    assert attach_timing_cache(config, None) == "not used"


def test_timing_cache_bytes_survives_a_builder_without_cache():
    assert timing_cache_bytes(_ConfigStandIn(serialised=None)) is None
    assert timing_cache_bytes(_ConfigStandIn(serialised=b"abc")) == b"abc"


# -- engine output shape --------------------------------------------------------------------------------
def test_output_shape_check_accepts_the_card_and_refuses_others():
    check_output_shape((-1, 5), None, 5, "m.engine")
    check_output_shape((256, 5), 256, 5, "m.engine")
    for shape, batch in (((-1, 4), None), ((256, 5), 64), ((256, 5, 1), 256), ((5,), None)):
        with pytest.raises(WbcError, match=r"m.engine produces outputs of shape .* needs .*5 classes.*rebuild") as err:
            check_output_shape(shape, batch, 5, "m.engine")
        assert "\n" not in str(err.value)


# -- buffer release -------------------------------------------------------------------------------------
class _Pinned:
    """Stand-in for pycuda's PagelockedHostAllocation: the ``.base`` of the array, with ``free()``."""

    def __init__(self, shape, dtype) -> None:
        self._buf = np.zeros(shape, dtype)
        self.__array_interface__ = self._buf.__array_interface__
        self.freed = False

    def free(self) -> None:
        self.freed = True


class _DeviceAlloc:
    def __init__(self, nbytes: int, fail: bool = False) -> None:
        self.nbytes, self.fail, self.freed = nbytes, fail, False

    def free(self) -> None:
        if self.fail:
            raise RuntimeError("cuMemFree failed: context is destroyed")
        self.freed = True


class _CudaStandIn:
    """Stand-in for ``pycuda.driver``: page-locked arrays, device allocations and events, recorded."""

    def __init__(self, fail_device_free: bool = False) -> None:
        self.pinned: list[_Pinned] = []
        self.device: list[_DeviceAlloc] = []
        self.fail = fail_device_free

    def pagelocked_empty(self, shape, dtype):
        p = _Pinned(shape, dtype)
        self.pinned.append(p)
        return np.asarray(p)

    def mem_alloc(self, nbytes: int) -> _DeviceAlloc:
        d = _DeviceAlloc(nbytes, fail=self.fail and not self.device)
        self.device.append(d)
        return d

    def Event(self):  # noqa: N802 - pycuda's name
        return object()


def test_buffer_set_release_frees_device_and_pinned_memory_and_drops_events():
    cuda = _CudaStandIn()
    buf = _BufferSet(cuda, (4, 3, 8, 8), np.float32, (4, 5), np.float32)
    assert buf.host_in.base is cuda.pinned[0] and buf.dev_in.nbytes == 4 * 3 * 8 * 8 * 4
    assert buf.release() == []
    assert all(p.freed for p in cuda.pinned) and len(cuda.pinned) == 2
    assert all(d.freed for d in cuda.device) and len(cuda.device) == 2
    assert buf.host_in is None and buf.copied_out is None and buf.dev_out is None


def test_buffer_set_release_keeps_going_after_a_failed_free():
    cuda = _CudaStandIn(fail_device_free=True)
    buf = _BufferSet(cuda, (2, 3, 4, 4), np.float32, (2, 5), np.float32)
    assert buf.release() == ["dev_in (RuntimeError)"]
    assert cuda.device[1].freed and all(p.freed for p in cuda.pinned)


# -- one error line -------------------------------------------------------------------------------------
def test_tensorrt_and_pycuda_exceptions_become_one_line():
    with pytest.raises(WbcError) as err:
        with one_line_errors("TensorRT 11.1.0 engine build from model.onnx on device 1"):
            raise AttributeError("type object 'tensorrt.BuilderFlag' has no attribute 'FP16'\n  more")
    assert str(err.value) == ("TensorRT 11.1.0 engine build from model.onnx on device 1 failed "
                              "(AttributeError: type object 'tensorrt.BuilderFlag' has no attribute 'FP16')")
    with pytest.raises(WbcError, match="^kept$"):
        with one_line_errors("x"):
            raise WbcError("kept")


def test_device_index_is_checked():
    check_device_index(1, 2)
    with pytest.raises(WbcError, match=r"CUDA device 2 does not exist \(this machine has 2: 0..1\)"):
        check_device_index(2, 2)


def test_engine_sidecar_is_written_atomically(tmp_path):
    from test_runtime_common import tiny_card

    from wbc_deploy.runtime.engine_meta import EngineInfo

    engine = tmp_path / "m.engine"
    info = EngineInfo(tensorrt_version="11.1.0", gpu_name="NVIDIA L4", compute_capability="8.9", precision="fp16",
                      profile={"min": 1, "opt": 8, "max": 16}, input_name="images", output_name="probabilities",
                      card=tiny_card().to_dict(), extra={"device": 1, "built_from": "FP16 ONNX"})
    path = info.write(engine)
    assert EngineInfo.read(engine) == info and [p.name for p in Path(tmp_path).iterdir()] == [path.name]
