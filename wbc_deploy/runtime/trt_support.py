"""What the TensorRT paths need from the machine: the imports, the supported versions, the CUDA device.

Torch-free; ``tensorrt`` and ``pycuda`` are imported only inside these functions. Every failure a user
can hit here is one :class:`~wbc_deploy.errors.WbcError` line naming the fix, and :func:`one_line_errors`
turns whatever TensorRT or pycuda raise (``RuntimeError``, ``pycuda.driver.Error``, ...) into one too.

Supported: TensorRT 10 and 11 (the sidecar records which built an engine; an engine only runs on the
version that built it). The two differ in how precision is chosen, see
:func:`wbc_deploy.converters.tensorrt_build.plan_build`.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import WbcError

#: TensorRT major versions whose Python API this package builds and runs engines with.
SUPPORTED_MAJORS = (10, 11)
#: NVIDIA's package index, where the TensorRT wheels come from (the registry packages only point there).
NVIDIA_INDEX = "https://pypi.nvidia.com"
TRT_INSTALL_HINT = (
    "TensorRT engines need an NVIDIA GPU with its driver plus TensorRT 10 or 11 and pycuda: "
    f"`pip install --extra-index-url {NVIDIA_INDEX} 'wbc-deploy[trt-cu12]'` for a CUDA 12 driver, "
    "`[trt-cu13]` for a CUDA 13 driver (pycuda compiles against the CUDA toolkit's headers)"
)


def first_line(exc: BaseException, limit: int = 240) -> str:
    """``Type: first line of the message`` (TensorRT and pycuda messages run over many lines)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__


@contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """Re-raise anything but a WbcError (or Ctrl-C) as ``WbcError("<what> failed (Type: message)")``."""
    try:
        yield
    except (WbcError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - RuntimeError from the bindings, pycuda.driver.Error, TypeError on API drift
        raise WbcError(f"{what} failed ({first_line(exc)})") from None


def trt_major(version: str) -> int:
    """``"10.16.0.72"`` -> 10; WbcError for a version string that does not start with a number."""
    m = re.match(r"\s*(\d+)", str(version))
    if not m:
        raise WbcError(f"cannot read the TensorRT version {version!r}: {TRT_INSTALL_HINT}")
    return int(m.group(1))


def check_trt_version(version: str) -> int:
    """The major version of ``version`` if this package supports it, else one WbcError line."""
    major = trt_major(version)
    if major not in SUPPORTED_MAJORS:
        raise WbcError(
            f"TensorRT {version} is not supported: wbc-deploy builds and runs engines with TensorRT "
            f"{' or '.join(map(str, SUPPORTED_MAJORS))} ({TRT_INSTALL_HINT})"
        )
    return major


def import_tensorrt() -> Any:
    """``import tensorrt`` (a supported version) or a WbcError with the install hint."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when libnvinfer cannot load
        raise WbcError(f"TensorRT is not available ({first_line(exc)}): {TRT_INSTALL_HINT}") from None
    check_trt_version(str(getattr(trt, "__version__", "")))
    return trt


def import_pycuda() -> Any:
    """Initialise the CUDA driver through pycuda, or a WbcError with the install hint."""
    try:
        import pycuda.driver as cuda
    except Exception as exc:
        raise WbcError(f"pycuda is not available ({first_line(exc)}): {TRT_INSTALL_HINT}") from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda.driver.Error: no driver / no device
        raise WbcError(f"no usable CUDA device ({first_line(exc)}): {TRT_INSTALL_HINT}") from None
    if count == 0:
        raise WbcError(f"no CUDA device found: {TRT_INSTALL_HINT}")
    return cuda


def check_device_index(device: int, count: int) -> None:
    """WbcError unless ``0 <= device < count``."""
    if not 0 <= int(device) < int(count):
        raise WbcError(f"CUDA device {device} does not exist (this machine has {count}: 0..{max(0, count - 1)}); pass --device")


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of CUDA device ``device``.

    Uses pycuda when present, else torch (export machines have it); WbcError when neither sees the GPU.
    """
    try:
        cuda = import_pycuda()
    except WbcError as first:
        try:
            import torch
        except Exception:
            raise first from None
        if not torch.cuda.is_available():
            raise first from None
        check_device_index(device, torch.cuda.device_count())
        major, minor = torch.cuda.get_device_capability(device)
        return torch.cuda.get_device_name(device), f"{major}.{minor}"
    check_device_index(device, cuda.Device.count())
    with one_line_errors(f"reading CUDA device {device}"):
        dev = cuda.Device(int(device))
        major, minor = dev.compute_capability()
        return str(dev.name()), f"{major}.{minor}"


@contextmanager
def on_device(device: int) -> Iterator[Any]:
    """Make CUDA device ``device`` current for the block (its primary context), then restore.

    TensorRT's builder and runtime allocate through the CUDA runtime, and "CUDA Runtime API calls
    operate on the CUDA Driver API CUcontext which is current to the calling host thread" (CUDA Runtime
    API, *Interactions with the CUDA Driver API*): pushing device N's primary context therefore builds
    on device N, not on device 0. Yields the pycuda driver module, or None when torch selected the device.
    """
    try:
        cuda = import_pycuda()
    except WbcError as first:
        try:
            import torch
        except Exception:
            raise first from None
        if not torch.cuda.is_available():
            raise first from None
        check_device_index(device, torch.cuda.device_count())
        with torch.cuda.device(int(device)):
            yield None
        return
    check_device_index(device, cuda.Device.count())
    with one_line_errors(f"activating CUDA device {device}"):
        ctx = cuda.Device(int(device)).retain_primary_context()
        ctx.push()
    try:
        yield cuda
    finally:
        cuda.Context.pop()
        ctx.detach()


def device_slug(trt_version: str, gpu_name: str, compute_capability: str) -> str:
    """File-name-safe identity of what an engine or timing cache is tied to: ``trt10.16.0-sm90-nvidia-h200``."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    ver = re.sub(r"[^0-9.]+", "", str(trt_version)) or "x"
    return f"trt{ver}-sm{compute_capability.replace('.', '')}-{gpu}"


__all__ = [
    "NVIDIA_INDEX", "SUPPORTED_MAJORS", "TRT_INSTALL_HINT", "check_device_index", "check_trt_version", "device_slug",
    "first_line", "gpu_identity", "import_pycuda", "import_tensorrt", "on_device", "one_line_errors", "trt_major",
]
