"""The run's reading/segmentation workers: threads, or processes where the scan needs both cores.

Segmenting a tile is many small NumPy/SciPy calls that hold the GIL between them, so two scan threads
barely beat one (on the real-pixel BCCD slide, 2 CPU cores: 2 threads took 6.95 s where 1 took 6.82 s,
for 9.5 CPU s instead of 6.8). Worker processes do run in parallel, but each starts a Python and imports
NumPy, SciPy and scikit-image (~0.6 CPU s, once per run with the forkserver), which a slide of one tile
never earns back. So ``executor``
``auto`` (the default) scans a slide with processes only when it has at least two tiles to scan and
``workers`` > 1; the pool is started on first need (its imports overlap the slide's zoning) and kept for
the rest of the run. ``thread`` and ``process`` force one kind. Results do not depend on the kind.
"""
from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from .options import CountOptions


def _exit_with(pid: int, period_s: float = 1.0) -> None:
    """Worker initializer: exit when the counting process ``pid`` is gone (killed, out of memory).

    A worker blocks on its task queue, whose writing end it holds itself, and the forkserver lives as
    long as any worker: without this, a count killed with SIGKILL would leave both behind for good.
    """
    import threading
    import time

    def gone() -> bool:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as fh:  # a killed process not yet reaped by its parent
                return fh.read().rsplit(")", 1)[-1].split()[0] == "Z"
        except ProcessLookupError:
            return True
        except OSError:  # no /proc (macOS), or not ours to signal: only disappearance counts
            return False

    def watch() -> None:
        while not gone():
            time.sleep(period_s)
        os._exit(1)

    threading.Thread(target=watch, name="wbc-parent-watch", daemon=True).start()


def _ready() -> bool:
    """A worker process's first task: importing this module's package is the warm-up."""
    from . import detect  # noqa: F401 - the scan's imports (NumPy, SciPy, scikit-image, OpenSlide)

    return True


@contextlib.contextmanager
def _main_not_inherited():
    """While worker processes start, hide the calling script from multiprocessing.

    Spawned and forkserver workers import the parent's ``__main__`` script (as ``__mp_main__``) before
    their first task; a script that calls ``count_slides`` without the ``if __name__ == "__main__":``
    guard would count again in every worker. The workers only run this package's functions, so they
    need nothing from the script: with its ``__file__`` and ``__spec__`` hidden they do not import it.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__} if main is not None else {}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def _process_context(start: bool = False):
    """The multiprocessing context of scan workers: a forkserver where there is one (a fresh server process,
    no threads or locks of this one, imports the scan's modules once and forks each worker from itself:
    one import per run instead of one per worker), else spawn (Windows). ``start``: start the server now."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["wbc_deploy.pipeline.detect"])
    if start:
        from multiprocessing import forkserver

        forkserver.ensure_running()  # returns at once; the server imports in its own process
    return context


class ScanWorkers:
    """Thread and (lazily) process pools for the tiles of a run's slides; a context manager that shuts both."""

    def __init__(self, options: CountOptions) -> None:
        self.options = options
        self.threads = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="wbc-scan")
        self._processes: ProcessPoolExecutor | None = None
        if options.executor == "process" or (options.executor == "auto" and options.workers > 1):
            _process_context(start=True)  # its imports run while the first slide is opened and planned

    def uses_processes(self, n_tiles: int) -> bool:
        """Whether a slide with ``n_tiles`` tiles to scan is scanned by worker processes."""
        kind = self.options.executor
        return kind == "process" or (kind == "auto" and self.options.workers > 1 and n_tiles >= 2)

    def for_slide(self, n_tiles: int) -> Executor:
        """The pool that scans a slide with ``n_tiles`` tiles to scan (starting the process pool if needed)."""
        return self.processes() if self.uses_processes(n_tiles) else self.threads

    def processes(self) -> ProcessPoolExecutor:
        """The process pool (forkserver where there is one, else spawn: no locks or threads of this process
        are inherited), started and warmed once."""
        if self._processes is not None and getattr(self._processes, "_broken", False):
            self._processes.shutdown(wait=False, cancel_futures=True)  # a worker died with an earlier slide
            self._processes = None
        if self._processes is None:
            with _main_not_inherited():
                self._processes = ProcessPoolExecutor(max_workers=self.options.workers, mp_context=_process_context(),
                                                      initializer=_exit_with, initargs=(os.getpid(),))
                for _ in range(self.options.workers):  # one task per worker starts them all now
                    self._processes.submit(_ready)
        return self._processes

    def shutdown(self) -> None:
        self.threads.shutdown(wait=True, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ScanWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
