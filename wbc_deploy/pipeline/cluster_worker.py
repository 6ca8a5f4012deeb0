"""What runs on the Dask workers of a cluster count (imports ``distributed``; loaded only in cluster mode).

- :func:`worker_facts` (``client.run`` on every worker at the start): the first slide or model path
  the worker cannot read, the sha256 of the model it sees, its host, cores and threads.
- :class:`ModelPlugin`: a WorkerPlugin that opens the model once per worker process, at its first slide
  (a worker the nanny restarts gets the plugin again), and closes it when the run unregisters it (or with
  the worker).
- :func:`count_slide_task`: one slide through :func:`wbc_deploy.pipeline.run.count_one`, the local
  path's own code, into a scratch folder on the worker; the output files go back to the client as bytes.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from distributed import WorkerPlugin, get_worker

from ..console import err_console, make_progress
from ..errors import WbcError
from ..files import sha256_file
from ..segment import SegmentParams
from .options import CountOptions
from .result import STATUS_ERROR, STATUS_OK, SlideResult
from .store import ProgressStore

#: Largest number of reading/segmentation threads a slide gets by default (as ``default_workers``).
MAX_SLIDE_THREADS = 8


def _readable(path: str) -> bool:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
        return True
    except OSError:
        return False


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_facts(paths: list[str], model: str, dask_worker=None) -> dict:
    """Run on every worker by ``client.run``: what it can read, which model bytes it sees, its host and cores."""
    unreadable = next((p for p in [model, *paths] if not _readable(p)), None)
    return {
        "unreadable": unreadable,
        "model_sha256": sha256_file(model) if unreadable != model else None,
        "host": socket.gethostname(),
        "cpus": usable_cpus(),
        "nthreads": int(dask_worker.state.nthreads) if dask_worker is not None else 1,
    }


def slide_threads_for(host_threads: dict[str, int]) -> int:
    """Reading/segmentation (and ONNX Runtime) threads of one slide on this worker: its host's cores
    shared among the slide slots (worker threads) on that host, as measured at the start."""
    threads = host_threads.get(socket.gethostname())
    if threads is None:  # a worker that joined later: share its own cores among its own threads
        threads = usable_cpus() // max(1, int(get_worker().state.nthreads))
    return max(1, min(MAX_SLIDE_THREADS, int(threads)))


class ModelPlugin(WorkerPlugin):
    """Holds the worker process's one open model; opened at the first slide, closed at the end of the run."""

    def __init__(self, name: str, model: str, backend: str | None, backend_options: dict,
                 host_threads: dict[str, int], slide_threads: int | None) -> None:
        self.name = name
        self.model = model
        self.backend_name = backend
        self.backend_options = dict(backend_options)
        self.host_threads = dict(host_threads)
        self.slide_threads = slide_threads
        self._backend = None
        self._lock = None

    def setup(self, worker) -> None:
        self._backend = None
        self._lock = threading.Lock()

    def threads(self) -> int:
        return self.slide_threads or slide_threads_for(self.host_threads)

    def backend(self):
        """The open model (opened on the first call in this worker process)."""
        from ..runtime import backend_for_path, open_backend

        assert self._lock is not None, "plugin not set up"
        with self._lock:
            if self._backend is None:
                opts = dict(self.backend_options)
                kind = self.backend_name or backend_for_path(self.model)
                if kind in ("ort", "onnx", "onnxruntime"):
                    opts.setdefault("intra_op_threads", self.threads())
                self._backend = open_backend(self.model, self.backend_name, **opts)
            return self._backend

    def teardown(self, worker) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


@dataclass
class SlideOutcome:
    """What a slide task sends back: the slide's result, its output files' bytes (``ok``) or its progress store
    (a slide that stopped part-way, for ``--resume``), its warnings and the worker's address."""

    result: SlideResult
    files: dict[str, bytes] = field(default_factory=dict)
    partial: dict[str, bytes] = field(default_factory=dict)
    warnings: str = ""
    worker: str = ""


def count_slide_task(result: SlideResult, path: str, options: CountOptions, plugin_name: str,
                     partial: dict[str, bytes] | None) -> SlideOutcome:
    """Count one slide on this worker into a scratch folder; return its files (only when it is ``ok``).

    ``partial``: the client's progress store of the slide (``--resume``), continued from here.
    """
    from .run import RunContext, count_one
    from .workers import ScanWorkers

    worker = get_worker()
    plugin: ModelPlugin = worker.plugins[plugin_name]
    result.path = Path(path)
    scratch = Path(tempfile.mkdtemp(prefix="wbc-count-", dir=worker.local_directory))
    files: dict[str, bytes] = {}
    kept: dict[str, bytes] = {}
    try:
        with ExitStack() as stack:
            captured = stack.enter_context(err_console.capture())
            try:
                backend = plugin.backend()
            except WbcError as exc:
                result.status, result.error = STATUS_ERROR, f"on Dask worker {worker.address}: {exc}"
                return SlideOutcome(result=result, worker=worker.address)
            if partial:
                store = ProgressStore(scratch, result.slide)
                store.dir.mkdir(parents=True)
                for name, data in partial.items():
                    (store.dir / name).write_bytes(data)
            # threads: a Dask worker is already one process per slide (and may not start children)
            opts = dataclasses.replace(options, workers=plugin.threads(), executor="thread", quiet=True)
            progress = stack.enter_context(make_progress(True))
            workers = stack.enter_context(ScanWorkers(opts))
            ctx = RunContext(backend=backend, model_sha256=result.model_sha256, options=opts, out_dir=scratch,
                             workers=workers, params=SegmentParams(), progress=progress)
            count_one(result, ctx)
        store = ProgressStore(scratch, result.slide)
        if result.status == STATUS_OK:
            files = {f.relative_to(scratch).as_posix(): f.read_bytes() for f in sorted(scratch.rglob("*"))
                     if f.is_file() and store.dir not in f.parents}  # with --review's <slide>.review/ folder
        elif store.exists():
            kept = {f.name: f.read_bytes() for f in (store.settings_path, store.tiles_path) if f.is_file()}
        return SlideOutcome(result=result, files=files, partial=kept, warnings=captured.get(), worker=worker.address)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
