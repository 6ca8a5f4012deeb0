"""The backends a benchmark can time, each one fixed runtime + precision + device.

A name means the same thing on every machine, so result files compare side by side:

=================  ===========  =========  ======  =================================================
name               runtime      precision  device  artefact
=================  ===========  =========  ======  =================================================
ort                onnxruntime  fp32       cpu     FP32 ONNX, tuned CPU session settings
ort-default        onnxruntime  fp32       cpu     FP32 ONNX, ``SessionOptions()`` untouched
ort-fp16           onnxruntime  fp16       cpu     FP16 ONNX (float32 I/O), tuned settings
ort-int8           onnxruntime  int8       cpu     static INT8 (:class:`~wbc_deploy.converters.int8_cpu.Int8Recipe`)
torch              pytorch      fp32       cpu     eager, NCHW, threads = ``--threads``
torch-nhwc         pytorch      fp32       cpu     eager, channels_last (oneDNN NHWC)
torch-cuda         pytorch      fp32       cuda    eager on the GPU
torch-cuda-fp16    pytorch      fp16       cuda    eager, FP16 autocast
ort-cuda           onnxruntime  fp32       cuda    CUDA execution provider
ort-trt            onnxruntime  fp16       cuda    TensorRT execution provider, FP16
trt                tensorrt     fp16       cuda    native TensorRT FP16 engine (pycuda)
=================  ===========  =========  ======  =================================================

Every timed call goes from a host float32 NCHW batch to host probabilities (GPU copies included).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import WbcError
from .artefacts import Artefacts
from .ort_settings import OrtSettings, default_settings, make_session


@dataclass(frozen=True)
class BackendSpec:
    """What a benchmark backend name stands for."""

    name: str
    runtime: str
    precision: str
    device: str
    description: str


SPECS: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("ort", "onnxruntime", "fp32", "cpu", "ONNX Runtime CPU, FP32, tuned session"),
    BackendSpec("ort-default", "onnxruntime", "fp32", "cpu", "ONNX Runtime CPU, FP32, default SessionOptions"),
    BackendSpec("ort-fp16", "onnxruntime", "fp16", "cpu", "ONNX Runtime CPU, FP16 model with float32 I/O"),
    BackendSpec("ort-int8", "onnxruntime", "int8", "cpu", "ONNX Runtime CPU, static INT8"),
    BackendSpec("torch", "pytorch", "fp32", "cpu", "PyTorch eager CPU, NCHW"),
    BackendSpec("torch-nhwc", "pytorch", "fp32", "cpu", "PyTorch eager CPU, channels_last"),
    BackendSpec("torch-cuda", "pytorch", "fp32", "cuda", "PyTorch eager CUDA, FP32"),
    BackendSpec("torch-cuda-fp16", "pytorch", "fp16", "cuda", "PyTorch eager CUDA, FP16 autocast"),
    BackendSpec("ort-cuda", "onnxruntime", "fp32", "cuda", "ONNX Runtime CUDA execution provider, FP32"),
    BackendSpec("ort-trt", "onnxruntime", "fp16", "cuda", "ONNX Runtime TensorRT execution provider, FP16"),
    BackendSpec("trt", "tensorrt", "fp16", "cuda", "native TensorRT FP16 engine"),
)}

#: What ``--backends`` defaults to: every CPU variant, and the GPU ones so their absence is stated.
DEFAULT_BACKENDS = ("ort", "ort-fp16", "ort-int8", "torch", "torch-cuda", "ort-cuda", "trt")
#: Shorthands accepted in ``--backends``.
GROUPS = {
    "all": tuple(SPECS),
    "cpu": tuple(n for n, s in SPECS.items() if s.device == "cpu"),
    "gpu": tuple(n for n, s in SPECS.items() if s.device == "cuda"),
}


def parse_backends(text: str | None) -> list[str]:
    """``"ort,torch"`` / ``"all"`` / ``"cpu,trt"`` -> backend names in order, duplicates dropped."""
    if not text:
        return list(DEFAULT_BACKENDS)
    names: list[str] = []
    for raw in text.split(","):
        key = raw.strip().lower()
        if not key:
            continue
        expanded = GROUPS.get(key, (key,))
        for name in expanded:
            if name not in SPECS:
                raise WbcError(f"unknown benchmark backend {raw.strip()!r}; choose from: {', '.join(SPECS)} (or all, cpu, gpu)")
            if name not in names:
                names.append(name)
    if not names:
        raise WbcError("--backends is empty; name at least one backend, e.g. --backends ort,torch")
    return names


# -- availability ------------------------------------------------------------------------------------
def _torch_cuda_reason() -> str | None:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return f"PyTorch is not installed ({type(exc).__name__}); pip install wbc-deploy[train]"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch on this machine"
    return None


def _ort_provider_reason(provider: str) -> str | None:
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} here has no {provider} (available: {', '.join(ort.get_available_providers())}); "
                "needs onnxruntime-gpu and an NVIDIA GPU (pip install wbc-deploy[gpu])")
    return None


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine, or None when it can (cheap: builds nothing)."""
    spec = SPECS[name]
    if spec.runtime == "pytorch":
        if spec.device == "cuda":
            return _torch_cuda_reason()
        try:
            import torch  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return f"PyTorch is not installed ({type(exc).__name__}); pip install wbc-deploy[train]"
        return None
    if name == "ort-cuda":
        return _ort_provider_reason("CUDAExecutionProvider")
    if name == "ort-trt":
        return _ort_provider_reason("TensorrtExecutionProvider")
    if name == "trt":
        try:
            from ..runtime.trt_backend import import_pycuda, import_tensorrt

            import_tensorrt()
            import_pycuda()
        except WbcError as exc:
            return str(exc)
        return None
    return None


# -- runners -----------------------------------------------------------------------------------------
@dataclass
class Runner:
    """A ready-to-time backend: ``predict(batch) -> probabilities`` plus what it runs with."""

    spec: BackendSpec
    predict: Callable[[np.ndarray], np.ndarray]
    settings: dict[str, Any]
    artefact: str
    device: str
    close: Callable[[], None] = lambda: None


def _ort_runner(spec: BackendSpec, path: Any, settings: OrtSettings, providers: list[Any], device: str) -> Runner:
    sess = make_session(path, settings, providers)
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {in_name: batch})[0]

    info = {"session": settings.to_dict(), "providers": sess.get_providers()}
    return Runner(spec, predict, info, str(path), device)


def _torch_runner(spec: BackendSpec, artefacts: Artefacts, threads: int) -> Runner:
    import torch

    model = artefacts.torch_model()
    settings: dict[str, Any] = {}
    if spec.device == "cpu":
        torch.set_num_threads(int(threads))
        settings["threads"] = torch.get_num_threads()
        device = torch.device("cpu")
        device_name = "cpu"
    else:
        device = torch.device("cuda")
        device_name = f"cuda ({torch.cuda.get_device_name(device)})"
    memory_format = torch.channels_last if spec.name == "torch-nhwc" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    half = spec.precision == "fp16"
    settings.update({"memory_format": "channels_last" if spec.name == "torch-nhwc" else "contiguous",
                     "autocast_fp16": half, "inference_mode": True, "torch": torch.__version__})

    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=memory_format)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=half):
            out = torch.softmax(model(x).float(), dim=1)
        return out.cpu().numpy()

    def close() -> None:
        if spec.device == "cuda":
            model.to("cpu")
            torch.cuda.empty_cache()

    return Runner(spec, predict, settings, artefacts.source.weights if artefacts.source.kind != "onnx" else "random-init torch model", device_name, close)


def build_runner(name: str, artefacts: Artefacts, threads: int, ort_settings: OrtSettings, max_batch: int) -> Runner:
    """Prepare backend ``name`` (exporting/quantising through ``artefacts`` as needed)."""
    spec = SPECS[name]
    if spec.runtime == "pytorch":
        return _torch_runner(spec, artefacts, threads)
    if name == "ort":
        return _ort_runner(spec, artefacts.onnx_fp32(), ort_settings, ["CPUExecutionProvider"], "cpu")
    if name == "ort-default":
        return _ort_runner(spec, artefacts.onnx_fp32(), default_settings(), ["CPUExecutionProvider"], "cpu")
    if name == "ort-fp16":
        return _ort_runner(spec, artefacts.onnx_fp16(), ort_settings, ["CPUExecutionProvider"], "cpu")
    if name == "ort-int8":
        return _ort_runner(spec, artefacts.onnx_int8(), ort_settings, ["CPUExecutionProvider"], "cpu")
    if name == "ort-cuda":
        return _ort_runner(spec, artefacts.onnx_fp32(), ort_settings, ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda")
    if name == "ort-trt":
        cache = artefacts._ensure_dir() / "ort-trt-cache"
        cache.mkdir(exist_ok=True)
        from ..converters.onnx_meta import INPUT_NAME

        s = int(artefacts.source.card.input_size)
        # One explicit profile over 1..max_batch: without it the TensorRT EP rebuilds its engine each time
        # a larger batch arrives (minutes per benchmark on a GPU).
        shapes = {k: f"{INPUT_NAME}:{b}x3x{s}x{s}" for k, b in (("min", 1), ("opt", max_batch), ("max", max_batch))}
        trt_opts = {"trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
                    "trt_profile_min_shapes": shapes["min"], "trt_profile_opt_shapes": shapes["opt"],
                    "trt_profile_max_shapes": shapes["max"]}
        return _ort_runner(spec, artefacts.onnx_fp32(), ort_settings,
                           [("TensorrtExecutionProvider", trt_opts), "CUDAExecutionProvider", "CPUExecutionProvider"], "cuda")
    if name == "trt":
        from ..runtime.trt_backend import TrtBackend

        engine = artefacts.trt_engine(max_batch)
        backend = TrtBackend(engine)
        return Runner(spec, backend.predict, {"engine": str(engine), "max_batch": backend.max_batch}, str(engine), backend.device, backend.close)
    raise WbcError(f"no runner for backend {name!r}")
