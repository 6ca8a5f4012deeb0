"""ONNX -> serialised TensorRT engine (TensorRT 10 or 11 Python API), plus its JSON sidecar.

The two supported majors choose precision differently (:func:`plan_build` decides, from the installed
module's own version):

* **TensorRT 10** (weakly typed networks): the FP32 export is parsed and ``BuilderFlag.FP16`` lets the
  builder pick FP16 kernels; INT8 adds ``BuilderFlag.INT8`` and an ``IInt8EntropyCalibrator2`` over
  preprocessed crops, with a calibration profile fixed at the calibration batch (min = opt = max), so
  TensorRT never reads past the calibrator's buffer.
* **TensorRT 11** (every network strongly typed; the FP16/INT8 builder flags, the calibrator and
  ``set_calibration_profile`` are removed, TensorRT 10.x -> 11.x migration guide, *Removed Python APIs*):
  precision lives in the ONNX. FP16 builds from the FP16 ONNX this package already makes
  (:func:`~wbc_deploy.converters.quantize.convert_fp16`, float32 inputs and outputs kept); INT8 from a QDQ
  ONNX (explicit quantisation: symmetric int8 activations and per-channel int8 weights, what TensorRT's
  Q/DQ support takes, calibrated with ONNX Runtime on the same crops).

One optimisation profile over the batch dimension (min/opt/max, default 1/64/256), a workspace limit,
the build on the CUDA device the sidecar names, and a timing cache reused across builds. Caches are keyed
so a stale one is never read: the timing cache by TensorRT version and GPU (a cache TensorRT rejects
anyway is replaced by a fresh one, never a crash); the INT8 calibration cache by the source ONNX's sha256,
the calibration crops' sha256, the batch, the TensorRT version and the GPU. Beside ``model.engine`` goes
``model.engine.json`` (:class:`~wbc_deploy.runtime.engine_meta.EngineInfo`). Every failure is one
WbcError line.
"""
from __future__ import annotations

import hashlib
import tempfile
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
from ..runtime.trt_support import (
    TRT_INSTALL_HINT,
    check_trt_version,
    device_slug,
    first_line,
    gpu_identity,
    import_tensorrt,
    on_device,
    one_line_errors,
)


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
        if self.calib_batch_size < 1:
            raise WbcError(f"the calibration batch must be at least 1, got {self.calib_batch_size}")
        if self.device < 0:
            raise WbcError(f"--device must be a CUDA device index (0, 1, ...), got {self.device}")


@dataclass(frozen=True)
class BuildPlan:
    """How the installed TensorRT gets the requested precision.

    ``source``: which ONNX the network is parsed from (``fp32`` export, ``fp16`` ONNX with float32 I/O, or
    ``int8-qdq`` explicit quantisation); ``flags``: ``BuilderFlag`` names to set; ``calibrator``: whether
    an ``IInt8EntropyCalibrator2`` runs; ``precision``: what the sidecar records.
    """

    tensorrt_major: int
    source: str
    flags: tuple[str, ...]
    calibrator: bool
    precision: str


def plan_build(trt: Any, fp16: bool = True, int8: bool = False) -> BuildPlan:
    """Decide how to build with the TensorRT module ``trt`` (its ``__version__`` and ``BuilderFlag``).

    WbcError (one line) for an unsupported version, or a TensorRT 10 that lacks a flag it needs.
    """
    version = str(getattr(trt, "__version__", ""))
    major = check_trt_version(version)
    if major == 10:
        flags = tuple(f for f, on in (("FP16", fp16), ("INT8", int8)) if on)
        missing = [f for f in flags if not hasattr(trt.BuilderFlag, f)]
        if missing:
            raise WbcError(f"TensorRT {version} has no BuilderFlag.{missing[0]}: reinstall TensorRT 10 ({TRT_INSTALL_HINT})")
        precision = "int8+fp16" if int8 and fp16 else "int8" if int8 else "fp16" if fp16 else "fp32"
        return BuildPlan(10, "fp32", flags, calibrator=int8, precision=precision)
    # TensorRT 11: strongly typed; the ONNX carries the precision, no flag selects it.
    if int8:
        return BuildPlan(11, "int8-qdq", (), calibrator=False, precision="int8")
    if fp16:
        return BuildPlan(11, "fp16", (), calibrator=False, precision="fp16")
    return BuildPlan(11, "fp32", (), calibrator=False, precision="fp32")


# -- cache keys -----------------------------------------------------------------------------------------
def timing_cache_file(base: str | Path, trt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """The timing cache actually used for ``base`` on this TensorRT and GPU.

    ``model.timing.cache`` -> ``model.timing.trt10.16.0-sm90-nvidia-h200.cache``: a cache made by another
    TensorRT or GPU is never offered to the builder (TensorRT would reject it, or worse, accept tactics
    timed on another device).
    """
    base = Path(base)
    return base.with_name(f"{base.stem}.{device_slug(trt_version, gpu_name, compute_capability)}{base.suffix or '.cache'}")


def calibration_cache_file(
    engine_path: str | Path, source_sha256: str, calibration: np.ndarray, batch_size: int,
    trt_version: str, gpu_name: str, compute_capability: str,
) -> Path:
    """The INT8 calibration cache of ``engine_path`` for exactly this source, data, batch, TensorRT and GPU."""
    h = hashlib.sha256()
    h.update(source_sha256.encode())
    h.update(str(tuple(calibration.shape)).encode() + str(calibration.dtype).encode())
    h.update(np.ascontiguousarray(calibration).tobytes())
    h.update(f"|b{int(batch_size)}|{device_slug(trt_version, gpu_name, compute_capability)}".encode())
    p = Path(engine_path)
    return p.with_name(f"{p.name}.calib-{h.hexdigest()[:16]}.cache")


# -- timing cache ---------------------------------------------------------------------------------------
def attach_timing_cache(config: Any, path: Path | None) -> str:
    """Give ``config`` the timing cache in ``path`` (or a fresh one); return what happened.

    ``IBuilderConfig.set_timing_cache`` answers False when it rejects a cache (another device or TensorRT
    build, ``ignore_mismatch=False``: TensorRT C++ API, ``IBuilderConfig::setTimingCache``); a rejected or
    unreadable cache is replaced by an empty one so the build and the cache file both still happen.
    """
    if path is None:
        return "not used"
    data = b""
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError as exc:
        warn(f"cannot read the TensorRT timing cache {path} ({exc.strerror}); starting a new one")
    if data:
        try:
            cache = config.create_timing_cache(data)
            accepted = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False) is not False
        except Exception as exc:  # noqa: BLE001 - a corrupt file must not stop the build
            accepted, why = False, first_line(exc)
        else:
            why = "made by another GPU or TensorRT build, or corrupt"
        if accepted:
            return f"reused {path.name}"
        warn(f"TensorRT rejected the timing cache {path.name} ({why}): building with a new one, which replaces it")
    fresh = config.create_timing_cache(b"")
    if fresh is None or config.set_timing_cache(fresh, ignore_mismatch=False) is False:
        return "unavailable"
    return f"new {path.name}" if not data else f"replaced {path.name}"


def timing_cache_bytes(config: Any) -> bytes | None:
    """The builder's timing cache serialised, or None when it has none (``get_timing_cache()`` may return None)."""
    cache = config.get_timing_cache()
    if cache is None:
        return None
    blob = cache.serialize()
    return None if blob is None else bytes(blob)


def _save_timing_cache(path: Path, data: bytes | None) -> None:
    """Best effort, after the engine and its sidecar are safely written."""
    if data is None:
        warn(f"TensorRT returned no timing cache: {path.name} was not updated")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        warn(f"could not write the TensorRT timing cache {path} ({exc.strerror}); the engine is unaffected")


# -- the network's source ONNX -------------------------------------------------------------------------
def _source_onnx(plan: BuildPlan, onnx_path: Path, card: ModelCard, calibration: np.ndarray | None, tmp: Path) -> tuple[Path, str]:
    """The ONNX file the network is parsed from for ``plan``, and how it was made."""
    if plan.source == "fp32":
        return onnx_path, f"{onnx_path.name} (FP32)"
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise WbcError(
            f"a TensorRT {plan.tensorrt_major} {plan.precision} engine is built from an {plan.source} ONNX, which needs the onnx "
            f"package (and onnxconverter-common for FP16): install the trt extras ({TRT_INSTALL_HINT})"
        ) from None
    if plan.source == "fp16":
        from .quantize import convert_fp16

        out = convert_fp16(onnx_path, tmp / "model.fp16.onnx", card)
        return out.path, f"FP16 ONNX made from {onnx_path.name} (onnxconverter-common, float32 I/O)"
    from .quantize import quantize_int8

    assert calibration is not None
    out = quantize_int8(onnx_path, tmp / "model.int8-qdq.onnx", card, calibration, quant_format="qdq",
                        activation_type="int8", activation_symmetric=True, per_channel=True)
    return out.path, f"QDQ INT8 ONNX made from {onnx_path.name} ({calibration.shape[0]} calibration crops, symmetric int8)"


# -- TensorRT 10 INT8 calibration ----------------------------------------------------------------------
def _entropy_calibrator(trt: Any, cuda: Any, batch: np.ndarray, batch_size: int, cache_path: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` (TensorRT 10) feeding ``batch`` in chunks of ``batch_size`` from device memory."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.data = np.ascontiguousarray(batch, dtype=np.float32)
            self.batch_size = int(batch_size)
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
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                atomic_write_bytes(cache_path, bytes(cache))
            except OSError as exc:
                warn(f"could not write the INT8 calibration cache {cache_path} ({exc.strerror})")

        def free(self) -> None:
            self.device_input.free()

    return EntropyCalibrator()


# -- the build ------------------------------------------------------------------------------------------
@dataclass
class _Built:
    serialized: bytes
    input_name: str
    outputs: list[str]
    timing_cache: bytes | None
    timing_status: str
    calibration: dict[str, Any] | None


def _build(trt: Any, cuda: Any, plan: BuildPlan, source: Path, opts: TrtBuildOptions, card: ModelCard,
           calibration: np.ndarray | None, calib_cache: Path | None, timing_path: Path | None) -> _Built:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 0: explicit batch (the only mode since TensorRT 10); TensorRT 11 networks are always strongly typed.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise WbcError(f"TensorRT {trt.__version__} cannot parse {source.name}: {errors or 'unknown parser error'}")
    if network.num_inputs != 1:
        raise WbcError(f"{source.name} has {network.num_inputs} inputs; expected one (images)")
    inp = network.get_input(0)
    s = int(card.input_size)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (opts.min_batch, 3, s, s), (opts.opt_batch, 3, s, s), (opts.max_batch, 3, s, s))
    config.add_optimization_profile(profile)
    timing_status = attach_timing_cache(config, timing_path)

    calibrator, calib_info = None, None
    if plan.calibrator:
        assert calibration is not None and calib_cache is not None and cuda is not None
        b = max(1, min(int(opts.calib_batch_size), int(calibration.shape[0])))
        calibrator = _entropy_calibrator(trt, cuda, calibration, b, calib_cache)
        config.int8_calibrator = calibrator
        # Its own profile at the calibrator's batch: TensorRT calibrates at a profile's opt shape, and with
        # the engine's profile (opt 64) it would read 64 rows from a 16-row buffer.
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(inp.name, (b, 3, s, s), (b, 3, s, s), (b, 3, s, s))
        config.set_calibration_profile(calib_profile)
        calib_info = {"batch": b, "images": int(calibration.shape[0]) // b * b, "cache": calib_cache.name,
                      "cache_reused": calib_cache.is_file()}
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise WbcError(
            f"TensorRT could not build an engine from {source.name} (see the TensorRT messages above; "
            f"try a larger --workspace-mb or a smaller --max-batch)"
        )
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    try:
        cache_blob = timing_cache_bytes(config) if timing_path is not None else None
    except Exception as exc:  # noqa: BLE001 - the engine is built; a cache problem must not lose it
        warn(f"could not serialise the TensorRT timing cache ({first_line(exc)})")
        cache_blob = None
    return _Built(bytes(serialized), inp.name, outputs, cache_blob, timing_status, calib_info)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    card: ModelCard | None = None,
    options: TrtBuildOptions | None = None,
    calibration: np.ndarray | None = None,
    **overrides: Any,
) -> EngineInfo:
    """Build ``engine_path`` from the FP32 export ``onnx_path`` on CUDA device ``options.device``; write the sidecar.

    ``card`` defaults to the one in the ONNX file's metadata. ``overrides`` replace fields of ``options``
    (``build_engine(src, out, max_batch=64)``). ``calibration`` (preprocessed crops) is required when INT8
    is on. ``options.timing_cache`` names the cache's base path; the file used is keyed by TensorRT version
    and GPU (:func:`timing_cache_file`). Fails with one line (never a traceback) when TensorRT, pycuda or
    the GPU is missing or unsupported, or when the build fails.
    """
    opts = replace(options or TrtBuildOptions(), **overrides)
    opts.check()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise WbcError(f"ONNX model not found: {onnx_path}")
    if card is None:
        from .onnx_meta import read_onnx_card

        card = read_onnx_card(onnx_path)
    trt = import_tensorrt()
    version = str(trt.__version__)
    plan = plan_build(trt, fp16=opts.fp16, int8=opts.int8)
    if opts.int8 and (calibration is None or calibration.ndim != 4 or calibration.shape[0] == 0):
        raise WbcError("a TensorRT INT8 engine needs calibration images: pass --calib DIR")
    gpu_name, cc = gpu_identity(opts.device)
    source_sha = sha256_file(onnx_path)
    timing_path = timing_cache_file(opts.timing_cache, version, gpu_name, cc) if opts.timing_cache is not None else None
    calib_cache = None
    if plan.calibrator:
        assert calibration is not None
        b = max(1, min(int(opts.calib_batch_size), int(calibration.shape[0])))
        calib_cache = calibration_cache_file(engine_path, source_sha, calibration, b, version, gpu_name, cc)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wbc-trt-") as tmpdir:
        with one_line_errors(f"preparing the {plan.source} ONNX for TensorRT {version}"):
            source, built_from = _source_onnx(plan, onnx_path, card, calibration, Path(tmpdir))
        with on_device(opts.device) as cuda, one_line_errors(f"TensorRT {version} engine build from {onnx_path.name} on device {opts.device}"):
            if plan.calibrator and cuda is None:
                raise WbcError(f"TensorRT 10 INT8 calibration needs pycuda: {TRT_INSTALL_HINT}")
            built = _build(trt, cuda, plan, source, opts, card, calibration, calib_cache, timing_path)
    try:
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(engine_path, built.serialized)
    except OSError as exc:
        raise WbcError(f"cannot write the engine {engine_path} ({exc.strerror})") from None
    info = EngineInfo(
        tensorrt_version=version,
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=plan.precision,
        profile={"min": opts.min_batch, "opt": opts.opt_batch, "max": opts.max_batch},
        input_name=built.input_name,
        output_name="probabilities" if "probabilities" in built.outputs else built.outputs[0],
        card=card.to_dict(),
        source_onnx=onnx_path.name,
        source_onnx_sha256=source_sha,
        engine_sha256=sha256_file(engine_path),
        workspace_mb=int(opts.workspace_mb),
        build_seconds=round(time.perf_counter() - t0, 2),
        wbc_deploy_version=__version__,
        extra={
            "device": int(opts.device),
            "tensorrt_major": plan.tensorrt_major,
            "built_from": built_from,
            "builder_flags": list(plan.flags),
            "timing_cache": str(timing_path) if timing_path else None,
            "timing_cache_status": built.timing_status,
            "int8_calibration": built.calibration,
        },
    )
    info.write(engine_path)
    if timing_path is not None:
        _save_timing_cache(timing_path, built.timing_cache)
    return info


def tensorrt_available(device: int = 0) -> tuple[bool, str]:
    """(True, version) when a supported tensorrt imports and CUDA device ``device`` is visible; else (False, the reason)."""
    try:
        trt = import_tensorrt()
        gpu_identity(device)
    except WbcError as exc:
        return False, str(exc)
    return True, str(trt.__version__)


__all__ = [
    "BuildPlan", "TRT_INSTALL_HINT", "TrtBuildOptions", "attach_timing_cache", "build_engine", "calibration_cache_file",
    "plan_build", "tensorrt_available", "timing_cache_bytes", "timing_cache_file",
]
