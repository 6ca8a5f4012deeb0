"""Native TensorRT engine execution with pycuda, double-buffered so copies overlap execution.

Buffers are allocated once, for the optimisation profile's largest batch: two sets of page-locked host
input/output buffers and device buffers. One execution context runs on a compute stream; copies in and
out run on their own streams and are ordered with CUDA events, so while batch *k* executes, batch *k+1*
is copied in and batch *k-1* copied out. Each call may use any batch size within the profile.

``tensorrt`` (10 or 11) and ``pycuda`` are imported lazily (only when a backend is built); without them,
or without an NVIDIA GPU, construction fails with one line naming the ``trt-cu12``/``trt-cu13`` extras.
At load the engine's output shape is checked against the sidecar's card; :meth:`TrtBackend.close`
frees every buffer, stream and event it made, in its own CUDA context.

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
from .trt_support import TRT_INSTALL_HINT, check_device_index, gpu_identity, import_pycuda, import_tensorrt, one_line_errors

__all__ = ["TRT_INSTALL_HINT", "TrtBackend", "double_buffered", "gpu_identity", "import_pycuda", "import_tensorrt",
           "split_for_profile"]


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
    """One set of page-locked host buffers, device buffers and events, sized for the profile's max batch."""

    def __init__(self, cuda: Any, in_shape: tuple[int, ...], in_dtype: Any, out_shape: tuple[int, ...], out_dtype: Any) -> None:
        self.host_in = cuda.pagelocked_empty(in_shape, in_dtype)
        self.host_out = cuda.pagelocked_empty(out_shape, out_dtype)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        self.copied_in = cuda.Event()  # input on the device
        self.computed = cuda.Event()  # execution that read dev_in and wrote dev_out finished
        self.copied_out = cuda.Event()  # output back in host_out
        self.rows = 0  # rows of the batch last queued on this set

    def release(self) -> list[str]:
        """Free the device and page-locked host memory now and drop the events; call with the context pushed.

        pycuda frees a ``DeviceAllocation`` or a ``PagelockedHostAllocation`` (the ``.base`` of a
        ``pagelocked_empty`` array) at once with ``.free()`` (pycuda docs, *Global Device Memory* and
        *Pagelocked Host Memory*); events have no ``free`` and are destroyed when their last reference goes.
        Returns what could not be freed (empty when all went).
        """
        failed: list[str] = []
        for name in ("dev_in", "dev_out"):
            buf = getattr(self, name, None)
            if buf is not None:
                try:
                    buf.free()
                except Exception as exc:  # noqa: BLE001 - report, keep releasing the rest
                    failed.append(f"{name} ({type(exc).__name__})")
        for name in ("host_in", "host_out"):
            arr = getattr(self, name, None)
            alloc = getattr(arr, "base", None)
            if alloc is not None and hasattr(alloc, "free"):
                try:
                    alloc.free()
                except Exception as exc:  # noqa: BLE001
                    failed.append(f"{name} ({type(exc).__name__})")
        for name in ("host_in", "host_out", "dev_in", "dev_out", "copied_in", "computed", "copied_out"):
            setattr(self, name, None)
        return failed


class TrtBackend(Backend):
    """Execute a serialised TensorRT engine (``.engine``/``.plan``) built by ``wbc-deploy export --trt``.

    Args:
        model_path: the engine; its sidecar ``<engine>.json`` must sit beside it.
        device: CUDA device index.
        check_gpu: refuse engines built for another GPU or TensorRT version (keep True outside debugging).

    Every failure (no TensorRT, another GPU, a corrupt engine, an engine whose output disagrees with its
    card, a CUDA error while running) is one WbcError line.
    """

    name = "trt"

    def __init__(self, model_path: str | Path, device: int = 0, check_gpu: bool = True) -> None:
        self._closed = True
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise WbcError(f"TensorRT engine not found: {self.model_path}")
        info = EngineInfo.read(self.model_path)
        self.info = info
        self.card = info.model_card(source=f"engine sidecar of {self.model_path.name}")
        trt = import_tensorrt()
        cuda = import_pycuda()
        self._trt, self._cuda = trt, cuda
        check_device_index(device, cuda.Device.count())
        with one_line_errors(f"reading CUDA device {device}"):
            dev = cuda.Device(device)
            major, minor = dev.compute_capability()
            gpu_name, cc = str(dev.name()), f"{major}.{minor}"
        if check_gpu:
            check_compatible(info, self.model_path, trt.__version__, gpu_name, cc)
        self.device = f"cuda:{device} ({gpu_name})"
        self._buffers: list[_BufferSet] = []
        self._streams: list[Any] = []
        # The primary context is the one the CUDA runtime (and so TensorRT) uses: share it.
        with one_line_errors(f"activating CUDA device {device}"):
            self._ctx = dev.retain_primary_context()
            self._ctx.push()
        try:
            with one_line_errors(f"loading the TensorRT engine {self.model_path.name}"):
                self._load(trt, cuda)
        except BaseException:
            self._release()
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
            raise WbcError(f"{self.model_path.name} takes {tuple(pmax[1:])} inputs but its card says 3 x {s} x {s}: {REBUILD_HINT}")
        self.min_batch, self.max_batch = int(pmin[0]), int(pmax[0])
        n_cls = len(self.card.classes)
        self._context = engine.create_execution_context()
        check_output_shape(tuple(engine.get_tensor_shape(self.output_name)), None, n_cls, self.model_path.name)
        if not self._context.set_input_shape(self.input_name, (self.max_batch, 3, s, s)):
            raise WbcError(f"{self.model_path.name} rejects its own profile's max batch {self.max_batch}: {REBUILD_HINT}")
        check_output_shape(tuple(self._context.get_tensor_shape(self.output_name)), self.max_batch, n_cls, self.model_path.name)
        in_dtype = trt.nptype(engine.get_tensor_dtype(self.input_name))
        out_dtype = trt.nptype(engine.get_tensor_dtype(self.output_name))
        self._copy_in = cuda.Stream()
        self._compute = cuda.Stream()
        self._copy_out = cuda.Stream()
        self._streams = [self._copy_in, self._compute, self._copy_out]
        for _ in range(2):
            self._buffers.append(_BufferSet(cuda, (self.max_batch, 3, s, s), in_dtype, (self.max_batch, n_cls), out_dtype))

    @contextmanager
    def _active(self, what: str) -> Iterator[None]:
        if self._closed:
            raise WbcError(f"TensorRT backend for {self.model_path.name} is closed")
        self._ctx.push()
        try:
            with one_line_errors(f"TensorRT {what} with {self.model_path.name}"):
                yield
        finally:
            self._cuda.Context.pop()

    # -- execution -------------------------------------------------------------------------------
    def _enqueue(self, slot: int, chunk: np.ndarray) -> None:
        """Queue copy-in, execute and copy-out of ``chunk`` on buffer set ``slot`` (returns at once)."""
        buf = self._buffers[slot]
        n = chunk.shape[0]
        cuda = self._cuda
        with self._active(f"execution of a batch of {n}"):
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
        with self._active("copy-out"):
            buf.copied_out.synchronize()
        out = np.array(buf.host_out[: buf.rows], dtype=np.float32)
        return softmax(out) if self.card.output == "logits" else out

    def _synchronize(self) -> None:
        with self._active("stream synchronisation"):
            for stream in self._streams:
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

    # -- tear-down -------------------------------------------------------------------------------
    def _release(self) -> list[str]:
        """Free everything ``__init__``/``_load`` allocated, with this backend's context current, then detach.

        Called with the context pushed (from ``__init__`` on failure, or by :meth:`close`). Order: wait for
        the streams, free device and page-locked buffers, drop events and streams (pycuda destroys a
        stream or event under its own context when the last reference goes: ``~stream()`` in pycuda's
        ``cuda.hpp``), then the TensorRT context, engine and runtime (TensorRT frees their device memory
        through the CUDA runtime, i.e. in the current context); only then pop and release the context.
        """
        failed: list[str] = []
        try:
            for stream in self._streams:
                try:
                    stream.synchronize()
                except Exception as exc:  # noqa: BLE001 - a failed stream must not keep the memory pinned
                    failed.append(f"stream ({type(exc).__name__})")
            for buf in self._buffers:
                failed += buf.release()
            self._buffers = []
            self._streams = []
            self._copy_in = self._compute = self._copy_out = None
            for attr in ("_context", "_engine", "_runtime"):
                if hasattr(self, attr):
                    setattr(self, attr, None)
        finally:
            try:
                self._cuda.Context.pop()
            finally:
                self._ctx.detach()
        return failed

    def close(self) -> None:
        """Release device buffers, page-locked host buffers, streams, events and the engine. Safe to call twice."""
        if getattr(self, "_closed", True):
            return
        from ..console import warn

        self._closed = True
        try:
            self._ctx.push()
        except Exception as exc:  # noqa: BLE001 - a dead context: nothing can be freed in it any more
            warn(f"TensorRT backend for {self.model_path.name}: its CUDA context is gone ({type(exc).__name__}); buffers were not freed")
            return
        failed = self._release()
        if failed:
            warn(f"TensorRT backend for {self.model_path.name}: could not free {', '.join(failed)}")


def check_output_shape(shape: tuple[int, ...], batch: int | None, n_classes: int, name: str) -> None:
    """Refuse an engine whose output is not ``batch x n_classes`` (``-1`` batch allowed when ``batch`` is None)."""
    want = f"{'N' if batch is None else batch} x {n_classes}"
    dims = tuple(int(d) for d in shape)
    ok = len(dims) == 2 and dims[1] == n_classes and (batch is None or dims[0] == batch)
    if not ok:
        raise WbcError(
            f"{name} produces outputs of shape {dims} but its sidecar's card needs {want} "
            f"({n_classes} classes): the engine and its sidecar disagree; {REBUILD_HINT}"
        )
