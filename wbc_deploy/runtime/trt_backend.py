"""Native TensorRT engine execution with pycuda, double-buffered so copies overlap execution.

Buffers are allocated once, for the optimisation profile's largest batch: two sets of page-locked host
input/output buffers and device buffers. One execution context runs on a compute stream; copies in and
out run on their own streams and are ordered with CUDA events, so while batch *k* executes, batch *k+1*
is copied in and batch *k-1* copied out. Each call may use any batch size within the profile.

``tensorrt`` and ``pycuda`` are imported lazily (only when a backend is built); without them, or
without an NVIDIA GPU, construction fails with one line naming ``pip install wbc-deploy[trt]``.

A ``TrtBackend`` owns one execution context and one pair of buffer sets: use it from one thread at a
time (open one backend per worker thread if several must run at once; ONNX Runtime sessions, by
contrast, may be shared).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WbcError
from .base import Backend, softmax
from .engine_meta import REBUILD_HINT, EngineInfo, check_compatible

TRT_INSTALL_HINT = (
    "TensorRT engines need an NVIDIA GPU with its driver plus the tensorrt and pycuda packages "
    "(`pip install wbc-deploy[trt]`)"
)


def import_tensorrt() -> Any:
    """``import tensorrt`` or a WbcError with the install hint."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when libnvinfer cannot load
        raise WbcError(f"TensorRT is not available ({type(exc).__name__}: {exc}): {TRT_INSTALL_HINT}") from None
    return trt


def import_pycuda() -> Any:
    """Initialise the CUDA driver through pycuda, or a WbcError with the install hint."""
    try:
        import pycuda.driver as cuda
    except Exception as exc:
        raise WbcError(f"pycuda is not available ({type(exc).__name__}: {exc}): {TRT_INSTALL_HINT}") from None
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda.driver.Error: no driver / no device
        raise WbcError(f"no usable CUDA device ({exc}): {TRT_INSTALL_HINT}") from None
    if count == 0:
        raise WbcError(f"no CUDA device found: {TRT_INSTALL_HINT}")
    return cuda


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of CUDA device ``device``.

    Uses pycuda when present, else torch (export machines have it); WbcError when neither sees a GPU.
    """
    try:
        cuda = import_pycuda()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"
    except WbcError as first:
        try:
            import torch
        except Exception:
            raise first from None
        if not torch.cuda.is_available() or device >= torch.cuda.device_count():
            raise WbcError(f"no CUDA device {device} found: {TRT_INSTALL_HINT}") from None
        major, minor = torch.cuda.get_device_capability(device)
        return torch.cuda.get_device_name(device), f"{major}.{minor}"


def split_for_profile(batch: np.ndarray, min_batch: int, max_batch: int) -> Iterator[tuple[np.ndarray | None, int, bool]]:
    """Cut a batch into chunks an engine profile accepts: (chunk, valid rows, last chunk of the batch).

    Chunks hold at most ``max_batch`` rows; a final chunk smaller than ``min_batch`` is zero-padded
    (only ``rows`` of its results are kept). An empty batch yields one ``(None, 0, True)``.
    """
    n = batch.shape[0]
    if n == 0:
        yield None, 0, True
        return
    for i in range(0, n, max_batch):
        chunk = batch[i : i + max_batch]
        rows = chunk.shape[0]
        if rows < min_batch:
            pad = np.zeros((min_batch - rows, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        yield chunk, rows, i + max_batch >= n


def double_buffered(
    chunks: Iterable[tuple[int, np.ndarray | None, int, bool]],
    enqueue: Callable[[int, np.ndarray], None],
    collect: Callable[[int], np.ndarray],
    n_classes: int,
    n_slots: int = 2,
) -> Iterator[np.ndarray]:
    """Schedule chunks over ``n_slots`` buffer sets and yield each batch's results in order.

    ``enqueue(slot, chunk)`` starts asynchronous work on a free set; ``collect(slot)`` waits for it and
    returns that chunk's rows. A set is reused only after it was collected, so at most ``n_slots``
    chunks are in flight: with two, one chunk's copies overlap the other's execution.
    ``chunks`` yields ``(batch id, chunk or None for an empty batch, valid rows, last chunk of batch)``.
    """
    free = list(range(n_slots))
    in_flight: deque[tuple[int | None, int, bool]] = deque()
    parts: list[np.ndarray] = []

    def drain() -> np.ndarray | None:
        slot, rows, last = in_flight.popleft()
        if slot is None:
            parts.append(np.zeros((0, n_classes), dtype=np.float32))
        else:
            parts.append(collect(slot)[:rows])
            free.append(slot)
        if not last:
            return None
        out = np.concatenate(parts, axis=0)
        parts.clear()
        return out

    for _bid, chunk, rows, last in chunks:
        if chunk is None:
            in_flight.append((None, 0, last))
        else:
            while not free:
                done = drain()
                if done is not None:
                    yield done
            slot = free.pop(0)
            enqueue(slot, chunk)
            in_flight.append((slot, rows, last))
    while in_flight:
        done = drain()
        if done is not None:
            yield done


class _BufferSet:
    """One set of page-locked host buffers and device buffers sized for the profile's max batch."""

    def __init__(self, cuda: Any, in_shape: tuple[int, ...], in_dtype: Any, out_shape: tuple[int, ...], out_dtype: Any) -> None:
        self.host_in = cuda.pagelocked_empty(in_shape, in_dtype)
        self.host_out = cuda.pagelocked_empty(out_shape, out_dtype)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        self.copied_in = cuda.Event()  # input on the device
        self.computed = cuda.Event()  # execution that read dev_in and wrote dev_out finished
        self.copied_out = cuda.Event()  # output back in host_out
        self.rows = 0  # rows of the batch last queued on this set

    def free(self) -> None:
        for buf in (self.dev_in, self.dev_out):
            try:
                buf.free()
            except Exception:  # noqa: BLE001 - already freed or context gone
                pass


class TrtBackend(Backend):
    """Execute a serialised TensorRT engine (``.engine``/``.plan``) built by ``wbc-deploy export --trt``.

    Args:
        model_path: the engine; its sidecar ``<engine>.json`` must sit beside it.
        device: CUDA device index.
        check_gpu: refuse engines built for another GPU or TensorRT version (keep True outside debugging).
    """

    name = "trt"

    def __init__(self, model_path: str | Path, device: int = 0, check_gpu: bool = True) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise WbcError(f"TensorRT engine not found: {self.model_path}")
        self._closed = True
        info = EngineInfo.read(self.model_path)
        self.info = info
        self.card = info.model_card(source=f"engine sidecar of {self.model_path.name}")
        trt = import_tensorrt()
        cuda = import_pycuda()
        self._trt, self._cuda = trt, cuda
        if device >= cuda.Device.count():
            raise WbcError(f"CUDA device {device} does not exist (this machine has {cuda.Device.count()})")
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        gpu_name, cc = dev.name(), f"{major}.{minor}"
        if check_gpu:
            check_compatible(info, self.model_path, trt.__version__, gpu_name, cc)
        self.device = f"cuda:{device} ({gpu_name})"
        # The primary context is the one the CUDA runtime (and so TensorRT) uses: share it.
        self._ctx = dev.retain_primary_context()
        self._ctx.push()
        try:
            self._load(trt, cuda)
        except BaseException:
            self._ctx.pop()
            self._ctx.detach()
            raise
        self._ctx.pop()
        self._closed = False

    # -- set-up ----------------------------------------------------------------------------------
    def _load(self, trt: Any, cuda: Any) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            raise WbcError(f"TensorRT {trt.__version__} could not deserialise {self.model_path.name}: {REBUILD_HINT}")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise WbcError(f"{self.model_path.name} has inputs {inputs} and outputs {outputs}; expected one input and a probabilities output")
        self.input_name = inputs[0]
        self.output_name = self.info.output_name if self.info.output_name in outputs else outputs[0]
        pmin, _popt, pmax = (tuple(s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
        s = self.input_size
        if tuple(pmax[1:]) != (3, s, s):
            raise WbcError(f"{self.model_path.name} takes {tuple(pmax[1:])} inputs but its card says 3 x {s} x {s}: rebuild with `wbc-deploy export --trt`")
        self.min_batch, self.max_batch = int(pmin[0]), int(pmax[0])
        n_cls = len(self.card.classes)
        in_dtype = trt.nptype(engine.get_tensor_dtype(self.input_name))
        out_dtype = trt.nptype(engine.get_tensor_dtype(self.output_name))
        self._context = engine.create_execution_context()
        self._buffers = [
            _BufferSet(cuda, (self.max_batch, 3, s, s), in_dtype, (self.max_batch, n_cls), out_dtype) for _ in range(2)
        ]
        self._copy_in = cuda.Stream()
        self._compute = cuda.Stream()
        self._copy_out = cuda.Stream()

    @contextmanager
    def _active(self) -> Iterator[None]:
        if self._closed:
            raise WbcError(f"TensorRT backend for {self.model_path.name} is closed")
        self._ctx.push()
        try:
            yield
        finally:
            self._ctx.pop()

    # -- execution -------------------------------------------------------------------------------
    def _enqueue(self, slot: int, chunk: np.ndarray) -> None:
        """Queue copy-in, execute and copy-out of ``chunk`` on buffer set ``slot`` (returns at once)."""
        buf = self._buffers[slot]
        n = chunk.shape[0]
        cuda = self._cuda
        with self._active():
            # The scheduler only reuses a set after collecting it, so host_in/host_out are free here.
            buf.host_in[:n] = chunk
            cuda.memcpy_htod_async(buf.dev_in, buf.host_in[:n], self._copy_in)
            buf.copied_in.record(self._copy_in)
            self._compute.wait_for_event(buf.copied_in)
            ctx = self._context
            if not ctx.set_input_shape(self.input_name, (n, 3, self.input_size, self.input_size)):
                raise WbcError(f"{self.model_path.name} rejects a batch of {n} (profile {self.min_batch}..{self.max_batch})")
            ctx.set_tensor_address(self.input_name, int(buf.dev_in))
            ctx.set_tensor_address(self.output_name, int(buf.dev_out))
            if not ctx.execute_async_v3(stream_handle=self._compute.handle):
                raise WbcError(f"TensorRT execution failed for {self.model_path.name} (batch of {n})")
            buf.computed.record(self._compute)
            self._copy_out.wait_for_event(buf.computed)
            cuda.memcpy_dtoh_async(buf.host_out[:n], buf.dev_out, self._copy_out)
            buf.copied_out.record(self._copy_out)
            buf.rows = n

    def _collect(self, slot: int) -> np.ndarray:
        """Wait for set ``slot``'s copy-out; return its probabilities (copied: the set is reused)."""
        buf = self._buffers[slot]
        with self._active():
            buf.copied_out.synchronize()
        out = np.array(buf.host_out[: buf.rows], dtype=np.float32)
        return softmax(out) if self.card.output == "logits" else out

    def _synchronize(self) -> None:
        with self._active():
            for stream in (self._copy_in, self._compute, self._copy_out):
                stream.synchronize()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate(list(self.predict_many([batch])), axis=0)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for any batch size (split over the profile's max batch, pipelined)."""
        return self._run(self.check_batch(batch))

    def predict_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Pipelined prediction: yields one probability array per input batch, in order.

        Two buffer sets alternate, so batch k+1 is copied in while batch k executes and batch k-1 is
        copied out; the caller consumes results while the GPU keeps working.
        """
        self._synchronize()  # an abandoned earlier iteration may still have work in flight
        try:
            chunks = (
                (bid, chunk, rows, last)
                for bid, batch in enumerate(batches)
                for chunk, rows, last in split_for_profile(self.check_batch(batch), self.min_batch, self.max_batch)
            )
            for out in double_buffered(chunks, self._enqueue, self._collect, n_classes=len(self.card.classes)):
                yield self._checked_output(out, out.shape[0])
        finally:
            if not self._closed:
                self._synchronize()

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._ctx.push()
        try:
            for stream in (self._copy_in, self._compute, self._copy_out):
                stream.synchronize()
            for buf in self._buffers:
                buf.free()
            del self._context, self._engine, self._runtime
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._closed = True
