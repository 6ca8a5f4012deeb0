"""ONNX -> serialised TensorRT engine with the TensorRT 10 Python API, plus its JSON sidecar.

FP16 is enabled (INT8 optional, calibrated with an ``IInt8EntropyCalibrator2`` over preprocessed crops),
one optimisation profile over the batch dimension (min/opt/max, default 1/64/256), a workspace limit,
and a timing cache file reused across builds (a rebuild after a small change takes seconds, not minutes).
Beside ``model.engine`` goes ``model.engine.json`` (:class:`~wbc_deploy.runtime.engine_meta.EngineInfo`).
``tensorrt`` (and ``pycuda`` for INT8 calibration) are imported only when a build is asked for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..card import ModelCard
from ..console import warn
from ..errors import WbcError
from ..files import atomic_write_bytes, sha256_file
from ..runtime.engine_meta import EngineInfo
from ..runtime.trt_backend import TRT_INSTALL_HINT, gpu_identity, import_pycuda, import_tensorrt


@dataclass
class TrtBuildOptions:
    """How to build an engine. Batch sizes are the optimisation profile's min/opt/max."""

    min_batch: int = 1
    opt_batch: int = 64
    max_batch: int = 256
    workspace_mb: int = 4096
    fp16: bool = True
    int8: bool = False
    timing_cache: Path | None = None
    device: int = 0
    calib_batch_size: int = 16

    def check(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise WbcError(
                f"TensorRT profile needs 1 <= min <= opt <= max batch, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if self.workspace_mb < 64:
            raise WbcError(f"--workspace-mb {self.workspace_mb} is too small (at least 64 MB)")

    @property
    def precision(self) -> str:
        return "int8+fp16" if self.int8 and self.fp16 else "int8" if self.int8 else "fp16" if self.fp16 else "fp32"


def tensorrt_available() -> tuple[bool, str]:
    """(True, version) when tensorrt imports and a CUDA GPU is visible; else (False, the reason)."""
    try:
        trt = import_tensorrt()
        gpu_identity(0)
    except WbcError as exc:
        return False, str(exc)
    return True, str(trt.__version__)


def _entropy_calibrator(trt: Any, cuda: Any, batch: np.ndarray, batch_size: int, cache_path: Path | None) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batch`` (N x 3 x S x S float32) in chunks from device memory."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.data = np.ascontiguousarray(batch, dtype=np.float32)
            self.batch_size = max(1, min(int(batch_size), self.data.shape[0]))
            self.pos = 0
            self.device_input = cuda.mem_alloc(self.batch_size * self.data[0].nbytes)

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.pos + self.batch_size > self.data.shape[0]:
                return None
            chunk = np.ascontiguousarray(self.data[self.pos : self.pos + self.batch_size])
            self.pos += self.batch_size
            cuda.memcpy_htod(self.device_input, chunk)
            return [int(self.device_input)]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path is not None and cache_path.is_file():
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path is not None:
                atomic_write_bytes(cache_path, bytes(cache))

    return EntropyCalibrator()


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    card: ModelCard | None = None,
    options: TrtBuildOptions | None = None,
    calibration: np.ndarray | None = None,
    **overrides: Any,
) -> EngineInfo:
    """Build ``engine_path`` from the exported ``onnx_path``; write the sidecar; return its contents.

    ``card`` defaults to the one in the ONNX file's metadata. ``overrides`` replace fields of ``options``
    (``build_engine(src, out, max_batch=64)``). ``calibration`` (preprocessed crops) is required when
    INT8 is on. Fails with one line naming ``pip install wbc-deploy[trt]`` and the need for an NVIDIA GPU
    when TensorRT or CUDA is missing.
    """
    opts = replace(options or TrtBuildOptions(), **overrides)
    opts.check()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if card is None:
        from .onnx_meta import read_onnx_card

        card = read_onnx_card(onnx_path)
    trt = import_tensorrt()
    gpu_name, cc = gpu_identity(opts.device)
    if opts.int8 and (calibration is None or calibration.shape[0] == 0):
        raise WbcError("a TensorRT INT8 engine needs calibration images: pass --calib DIR")

    ctx = None
    cuda = None
    if opts.int8:
        cuda = import_pycuda()
        ctx = cuda.Device(opts.device).retain_primary_context()
        ctx.push()
    t0 = time.perf_counter()
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise WbcError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errors or 'unknown parser error'}")
        if network.num_inputs != 1:
            raise WbcError(f"{onnx_path.name} has {network.num_inputs} inputs; expected one (images)")
        inp = network.get_input(0)
        s = int(card.input_size)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
        if opts.fp16:
            if not getattr(builder, "platform_has_fast_fp16", True):
                warn(f"{gpu_name} has no fast FP16: the engine will mostly run FP32 kernels")
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (opts.min_batch, 3, s, s), (opts.opt_batch, 3, s, s), (opts.max_batch, 3, s, s))
        config.add_optimization_profile(profile)

        cache_bytes = b""
        if opts.timing_cache is not None and Path(opts.timing_cache).is_file():
            cache_bytes = Path(opts.timing_cache).read_bytes()
        timing_cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(timing_cache, ignore_mismatch=False)

        calibrator = None
        if opts.int8:
            config.set_flag(trt.BuilderFlag.INT8)
            calib_cache = engine_path.with_name(engine_path.name + ".calib.cache")
            calibrator = _entropy_calibrator(trt, cuda, calibration, opts.calib_batch_size, calib_cache)  # type: ignore[arg-type]
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise WbcError(
                f"TensorRT could not build an engine from {onnx_path.name} (see the TensorRT messages above; "
                f"try a larger --workspace-mb or a smaller --max-batch)"
            )
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(engine_path, bytes(serialized))
        if opts.timing_cache is not None:
            atomic_write_bytes(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
        outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    finally:
        if ctx is not None:
            ctx.pop()
            ctx.detach()
    info = EngineInfo(
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=opts.precision,
        profile={"min": opts.min_batch, "opt": opts.opt_batch, "max": opts.max_batch},
        input_name=inp.name,
        output_name="probabilities" if "probabilities" in outputs else outputs[0],
        card=card.to_dict(),
        source_onnx=onnx_path.name,
        source_onnx_sha256=sha256_file(onnx_path),
        engine_sha256=sha256_file(engine_path),
        workspace_mb=int(opts.workspace_mb),
        build_seconds=round(time.perf_counter() - t0, 2),
        wbc_deploy_version=__version__,
        extra={"timing_cache": str(opts.timing_cache) if opts.timing_cache else None},
    )
    info.write(engine_path)
    return info


__all__ = ["TRT_INSTALL_HINT", "TrtBuildOptions", "build_engine", "tensorrt_available"]
