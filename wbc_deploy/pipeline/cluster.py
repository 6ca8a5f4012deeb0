"""``count`` on Dask distributed: one task per slide; the client writes every output as the local path does.

- **Where**: ``--cluster local:N`` starts a LocalCluster of N single-threaded worker processes on this
  machine; ``--scheduler ADDRESS`` (``tcp://host:8786`` or a scheduler file) joins a running cluster
  (``dask scheduler`` + ``dask worker``, dask-jobqueue, dask-kubernetes).
- **Check** (before anything is written): every worker must read the slides and the model at the same
  paths as this machine (shared storage) and see the same model bytes; otherwise one line names the
  worker and the path.
- **Model**: a WorkerPlugin opens it once per worker process (:mod:`.cluster_worker`), not per slide, and
  is unregistered (the model closed) when the run ends, so a long-lived cluster does not collect models.
- **Slides**: each is counted on a worker by :func:`.run.count_one`, the local path's code, into a
  scratch folder; its files come back as bytes and the client writes them atomically, then
  summary.csv, slide after slide as they finish (rows stay in input order). cells.csv is the same
  bytes as the local path's; ``--resume`` ships a slide's partial store to the worker that continues it.
- **A worker lost mid-slide**: the scheduler starts the slide again on another worker, at most
  ``retries`` times (Dask's ``allowed-failures``), then the slide gets ``status=error``; nothing of it
  is written until a worker returns it whole, and the other slides go on.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.progress import TextColumn
from rich.text import Text

from ..console import err_console, make_progress
from ..errors import WbcError
from ..files import atomic_write_bytes
from .options import CountOptions
from .outputs import write_summary
from .result import STATUS_ERROR, STATUS_INTERRUPTED, STATUS_OK, STATUS_PENDING, RunResult, SlideResult
from .store import ProgressStore

EXTRA_HINT = "pip install 'wbc-deploy[cluster]'"
#: Times a slide is started again after the worker counting it died (then status=error).
DEFAULT_RETRIES = 2
#: Seconds to wait for a scheduler to answer and for a first worker to join it.
DEFAULT_TIMEOUT_S = 60.0
_LOCAL = re.compile(r"^local:(\d+)$")


@dataclass
class ClusterOptions:
    """Where ``count`` runs its slides: a LocalCluster of ``local_workers`` processes, or a running ``scheduler``.

    ``retries``: how many times a slide whose worker died is started again (a LocalCluster's
    ``distributed.scheduler.allowed-failures``; a running scheduler uses its own setting, 3 by default).
    ``slide_threads``: reading/segmentation and ONNX Runtime threads per slide on a worker (None: the
    worker host's cores shared among its worker threads).
    """

    local_workers: int | None = None
    scheduler: str | None = None
    retries: int = DEFAULT_RETRIES
    slide_threads: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_cli(cls, cluster: str | None, scheduler: str | None, slide_threads: int | None = None) -> ClusterOptions | None:
        """``--cluster local:N`` / ``--scheduler ADDRESS`` -> options (None when neither is given)."""
        if cluster is None and scheduler is None:
            return None
        if cluster is not None and scheduler is not None:
            raise WbcError("pass --cluster local:N or --scheduler ADDRESS, not both")
        local = None
        if cluster is not None:
            m = _LOCAL.match(cluster.strip())
            if not m:
                raise WbcError(f"--cluster must be local:N (N worker processes on this machine), got {cluster!r}; "
                               "for a running cluster pass --scheduler ADDRESS")
            local = int(m.group(1))
        return cls(local_workers=local, scheduler=scheduler, slide_threads=slide_threads)

    def validate(self, options: CountOptions) -> None:
        """Raise WbcError naming the first bad setting."""
        if (self.local_workers is None) == (self.scheduler is None):
            raise WbcError("a cluster count needs either local:N workers or a scheduler address")
        if self.local_workers is not None and self.local_workers < 1:
            raise WbcError(f"--cluster local:N needs at least 1 worker, got {self.local_workers}")
        if self.scheduler is not None and not self.scheduler.strip():
            raise WbcError("--scheduler needs an address (tcp://host:8786) or a scheduler file")
        if self.retries < 0:
            raise WbcError(f"cluster retries must be >= 0, got {self.retries}")
        if self.slide_threads is not None and self.slide_threads < 1:
            raise WbcError(f"--workers must be at least 1, got {self.slide_threads}")
        if options.executor == "process":
            raise WbcError("--executor process is for the local path: on a cluster each Dask worker is its own process")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def connect(copts: ClusterOptions) -> Iterator[object]:
    """A Dask ``Client`` on a new LocalCluster or a running scheduler (WbcError, one line, when unreachable)."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise WbcError(f"--cluster and --scheduler need Dask distributed: {EXTRA_HINT}") from None
    if copts.local_workers:
        try:
            # worker-saturation 1.0: a worker holds only the slide it counts (Dask's default 1.1 sends a 1-thread
            # worker a second task, which a worker killed by the first slide would take down with it)
            with dask.config.set({"distributed.scheduler.allowed-failures": copts.retries,
                                  "distributed.scheduler.worker-saturation": 1.0}):
                cluster = LocalCluster(n_workers=copts.local_workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - e.g. cannot spawn processes or bind a port
            raise WbcError(f"cannot start a LocalCluster of {copts.local_workers} workers: {_first_line(exc)}") from None
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    address = copts.scheduler.strip()
    kwargs = {"scheduler_file": address} if Path(address).is_file() else {"address": address}
    try:
        client = Client(**kwargs, timeout=f"{copts.timeout_s}s")
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address
        raise WbcError(f"cannot connect to the Dask scheduler {address}: {_first_line(exc)}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=copts.timeout_s)
        except TimeoutError:
            raise WbcError(f"no Dask worker joined the scheduler {address} within {copts.timeout_s:g} s: "
                           f"start workers with `dask worker {address} --nthreads 1`") from None
        yield client


def check_workers(client, paths: list[Path], model: Path, model_sha: str) -> dict[str, int]:
    """Every worker must read ``paths`` and ``model`` and see the same model bytes (WbcError naming the worker
    and the path otherwise). Returns the reading/inference threads per slide of each worker host."""
    from .cluster_worker import MAX_SLIDE_THREADS, worker_facts

    facts = client.run(worker_facts, [str(p) for p in paths], str(model))
    if not facts:
        raise WbcError("the Dask cluster has no workers")
    for address, f in sorted(facts.items()):
        if f["unreadable"]:
            raise WbcError(f"Dask worker {address} cannot read {f['unreadable']}: the workers must see the slides and "
                           "the model at the same paths as this machine (shared storage)")
        if f["model_sha256"] != model_sha:
            raise WbcError(f"Dask worker {address} reads another file at {model} (its sha256 differs from this machine's): "
                           "the workers must see the same model (shared storage)")
    slots: dict[str, int] = {}
    cpus: dict[str, int] = {}
    for f in facts.values():
        slots[f["host"]] = slots.get(f["host"], 0) + max(1, f["nthreads"])
        cpus[f["host"]] = f["cpus"]
    return {h: max(1, min(MAX_SLIDE_THREADS, cpus[h] // slots[h])) for h in slots}


def _read_partial(store: ProgressStore) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in (store.settings_path, store.tiles_path) if f.is_file()}


def _failure(exc: BaseException) -> tuple[str, str]:
    """(status, reason) of a slide task that raised instead of returning."""
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        last = getattr(getattr(exc, "last_worker", None), "address", "?")
        tries = int(getattr(exc, "allowed_failures", 0)) + 1
        return STATUS_ERROR, (f"the Dask worker counting it died {tries} time(s) (last {last}): not retried again "
                              "(out of memory? see the worker's log); nothing of it was written")
    if isinstance(exc, CancelledError):
        return STATUS_INTERRUPTED, "interrupted: rerun with --resume to continue"
    return STATUS_ERROR, f"{type(exc).__name__}: {_first_line(exc)}"


def _take(outcome, r: SlideResult, out: Path, abs_path: str) -> SlideResult:
    """The worker's result for slide ``r``: its files written atomically into ``out``, its warnings printed."""
    res: SlideResult = outcome.result
    res.path = r.path
    if res.error:  # the worker saw the absolute path; say it as the user gave it
        res.error = res.error.replace(abs_path, str(r.path))
    for line in outcome.warnings.splitlines():
        err_console.print(Text.from_ansi(line), highlight=False)
    store = ProgressStore(out, r.slide)
    if res.status == STATUS_OK:
        for name, data in outcome.files.items():  # relative posix paths (a review page's thumbnail folder)
            target = out / Path(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        res.outputs = {k: out / Path(v).name for k, v in res.outputs.items()}
        store.discard()
    elif outcome.partial:  # as on the local path, a slide that stopped keeps its finished tiles for --resume
        store.dir.mkdir(parents=True, exist_ok=True)
        for name, data in outcome.partial.items():
            atomic_write_bytes(store.dir / name, data)
    return res


def count_on_cluster(copts: ClusterOptions, run: RunResult, model: str | Path, model_sha: str, options: CountOptions,
                     backend) -> RunResult:
    """Count ``run``'s pending slides on Dask; fills ``run`` in place (statuses, summary.csv) and returns it.

    Called by :func:`.run.count_slides` once the model is open and the slides are listed; connection
    and shared-storage problems raise WbcError before summary.csv is written.
    """
    copts.validate(options)
    model_abs = Path(model).absolute()
    pending = [i for i, r in enumerate(run.slides) if r.status == STATUS_PENDING]
    abs_paths = {i: str(run.slides[i].path.absolute()) for i in pending}
    with connect(copts) as client:
        from .cluster_worker import ModelPlugin

        host_threads = check_workers(client, [Path(abs_paths[i]) for i in pending if run.slides[i].path.is_file()],
                                     model_abs, model_sha)
        plugin = ModelPlugin(f"wbc-deploy-model-{uuid.uuid4().hex[:12]}", str(model_abs), options.backend,
                             options.backend_options, host_threads, copts.slide_threads)
        client.register_plugin(plugin, name=plugin.name)
        try:
            _run_tasks(client, plugin.name, run, options, pending, abs_paths, backend.name)
        finally:  # close the model on the workers: a long-lived cluster must not collect one per run
            try:
                client.unregister_worker_plugin(plugin.name)
            except Exception:  # noqa: BLE001 - a worker lost at the very end must not hide the run's result
                pass
    return run


def _run_tasks(client, plugin_name: str, run: RunResult, options: CountOptions,
               pending: list[int], abs_paths: dict[int, str], backend_name: str) -> None:
    """Submit one task per pending slide; write each slide's outputs and summary.csv as the tasks finish."""
    from distributed import as_completed

    from .cluster_worker import count_slide_task
    from .run import remove_outputs

    out = run.out_dir
    write_summary(run.summary_path, run.slides, run.classes)
    futures = {}
    started: dict[int, float] = {}
    for i in pending:
        r = run.slides[i]
        remove_outputs(out, r.slide)
        store = ProgressStore(out, r.slide)
        partial = _read_partial(store) if options.resume and store.exists() else None
        if not options.resume:
            store.discard()
        key = f"wbc-count-{r.slide}-{uuid.uuid4().hex[:8]}"
        futures[client.submit(count_slide_task, r, abs_paths[i], options, plugin_name, partial,
                              key=key, pure=False, retries=0)] = i
        started[i] = time.perf_counter()
    n_workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    cells = 0
    t0 = time.perf_counter()
    with make_progress(options.quiet, TextColumn("{task.fields[wbc]} WBC"), TextColumn("{task.fields[rate]}")) as progress:
        task = progress.add_task(f"slides on {n_workers} Dask workers", total=len(pending), wbc=0, rate="")
        try:
            for fut in as_completed(futures):
                i = futures.pop(fut)
                r = run.slides[i]
                try:
                    outcome = fut.result()
                except Exception as exc:  # noqa: BLE001 - a lost worker or a cancelled task fails this slide only
                    r.status, r.error = _failure(exc)
                    r.seconds, r.backend = time.perf_counter() - started[i], backend_name
                else:
                    r = run.slides[i] = _take(outcome, r, out, abs_paths[i])
                fut.release()
                run.interrupted = r.status == STATUS_INTERRUPTED
                write_summary(run.summary_path, run.slides, run.classes)
                cells += r.n_wbc if r.status == STATUS_OK else 0
                el = time.perf_counter() - t0
                done = len(pending) - len(futures)
                progress.update(task, advance=1, wbc=cells, rate=f"{3600 * done / el:.0f} slides/h" if el > 0 else "")
                if run.interrupted:
                    break
        except KeyboardInterrupt:
            run.interrupted = True
        if run.interrupted:
            client.cancel(list(futures))
            for i in futures.values():
                r = run.slides[i]
                r.status, r.error = STATUS_INTERRUPTED, "interrupted: rerun with --resume to continue"
            write_summary(run.summary_path, run.slides, run.classes)
