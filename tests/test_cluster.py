"""`count` on Dask distributed, with real LocalClusters of worker processes on this machine.

The slides are small synthetic ones and the model is the tiny linear ONNX classifier of test_count.py,
so a whole run takes seconds; what costs time is starting worker processes (imports) and restarting
the ones the tests kill.
"""
from __future__ import annotations

import csv
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="the cluster extra (dask, distributed) is not installed")

from wbc_deploy.cli import main  # noqa: E402
from wbc_deploy.errors import WbcError  # noqa: E402
from wbc_deploy.files import sha256_file  # noqa: E402
from wbc_deploy.pipeline import CountInterrupted, CountOptions, count_slides  # noqa: E402
from wbc_deploy.pipeline.cluster import ClusterOptions, check_workers  # noqa: E402
from wbc_deploy.slide.synth import write_synthetic_slide  # noqa: E402

try:
    from test_count import write_linear_model
except ImportError:  # tests/ as a package
    from .test_count import write_linear_model

SMALL_TILES = 128.0  # um: 3 x 3 tiles on a 1536 px slide at 0.25 um/px, so a slide has tiles to stop between
GOOD = ("a", "b", "c")
OUTPUT_SUFFIXES = (".cells.csv", ".geojson", ".truth_comparison.csv")


def opts(**kw) -> CountOptions:
    kw.setdefault("quiet", True)
    kw.setdefault("tile_um", SMALL_TILES)
    kw.setdefault("workers", 2)
    kw.setdefault("geojson", True)
    kw.setdefault("truth", True)
    return CountOptions(**kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three small synthetic slides and a corrupt one, the linear model, and the local path's outputs."""
    root = tmp_path_factory.mktemp("cluster")
    model = write_linear_model(root / "linear.onnx")
    slides = root / "slides"
    slides.mkdir()
    for i, name in enumerate(GOOD):
        write_synthetic_slide(slides / f"{name}.svs", 1536, 1536, 20, mpp=0.25, seed=10 + i)
    (slides / "broken.svs").write_bytes(b"II*\x00" + b"not a slide" * 64)
    local = root / "local"
    run = count_slides([slides], model, local, opts())
    assert {r.slide: r.status for r in run.slides} == {"a": "ok", "b": "ok", "c": "ok", "broken": "error"}
    return {"root": root, "model": model, "slides": slides, "local": local}


@pytest.fixture(scope="module")
def cluster():
    """A running LocalCluster of 2 worker processes whose scheduler starts a slide again once after its
    worker dies (allowed-failures 1) and sends each worker one slide at a time (worker-saturation 1.0, as
    README asks of a cluster: a worker killed by one slide then takes no other slide with it); tests reach it
    with --scheduler, as a remote cluster."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}):
        lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(lc)
    yield {"cluster": lc, "client": client, "address": lc.scheduler_address}
    client.close()
    lc.close()


def summary_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["slide"]: r for r in csv.DictReader(fh)}


def assert_same_as_local(data, out: Path, slides=GOOD) -> None:
    """cells.csv (and GeoJSON, truth comparison) byte-identical; summary.csv equal but for the timing column."""
    for name in slides:
        for suffix in OUTPUT_SUFFIXES if name in GOOD else ():
            assert (out / f"{name}{suffix}").read_bytes() == (data["local"] / f"{name}{suffix}").read_bytes(), name + suffix
    local, here = summary_rows(data["local"] / "summary.csv"), summary_rows(out / "summary.csv")
    assert list(here) == list(local)
    for name in slides:
        a, b = dict(local[name]), dict(here[name])
        a.pop("seconds"), b.pop("seconds")
        assert a == b, name


def assert_nothing_half_written(out: Path) -> None:
    stray = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert stray == [], f"temporary or partial files left: {stray}"


def run_cli(args) -> int:
    try:
        main(["count", *[str(a) for a in args]])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# --------------------------------------------------------------------------- same outputs as the local path


def test_local_cluster_gives_the_local_paths_outputs(data, tmp_path, capsys):
    out = tmp_path / "out"
    run = count_slides([data["slides"]], data["model"], out, opts(), cluster=ClusterOptions(local_workers=2))
    assert run.exit_code == 3
    statuses = {r.slide: r.status for r in run.slides}
    assert statuses == {"a": "ok", "b": "ok", "c": "ok", "broken": "error"}
    assert "broken.svs: not a readable slide" in next(r.error for r in run.slides if r.slide == "broken")
    assert_same_as_local(data, out, GOOD + ("broken",))
    assert_nothing_half_written(out)


def test_cli_on_a_running_scheduler(data, cluster, tmp_path, capsys):
    """`--scheduler ADDRESS` on a running cluster: exit 3 (the corrupt slide), one error line, the others counted."""
    out = tmp_path / "out"
    code = run_cli([data["slides"] / "a.svs", data["slides"] / "broken.svs", "--model", data["model"], "--out", out,
                    "--scheduler", cluster["address"], "-q"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "error: broken: broken.svs: not a readable slide" in err
    rows = summary_rows(out / "summary.csv")
    assert rows["a"]["status"] == "ok" and int(rows["a"]["n_wbc"]) > 0 and rows["broken"]["status"] == "error"
    # the model was opened on the workers for this run only: a long-lived cluster does not collect them
    left = cluster["client"].run(lambda dask_worker: [n for n in dask_worker.plugins if n.startswith("wbc-deploy-model")])
    assert left and all(v == [] for v in left.values())


def _inline_max(limit: int) -> int:
    """Set this process's review-page inline limit (on Dask workers through ``client.run``); returns the old one."""
    from wbc_deploy.pipeline import review

    old, review.INLINE_MAX_CELLS = review.INLINE_MAX_CELLS, limit
    return old


def test_review_pages_and_their_thumbnail_folders_come_back(data, cluster, tmp_path, monkeypatch):
    """--review on a cluster: the page and its <slide>.review/ thumbnail folder (used beyond the inline limit,
    set to 0 here on the workers and in this process) are written as the local path writes them."""
    from wbc_deploy.pipeline import review

    monkeypatch.setattr(review, "INLINE_MAX_CELLS", 0)
    slide = data["slides"] / "a.svs"
    local = tmp_path / "local"
    assert count_slides([slide], data["model"], local, opts(review=True)).exit_code == 0
    client = cluster["client"]
    old = client.run(_inline_max, 0)
    try:
        out = tmp_path / "out"
        run = count_slides([slide], data["model"], out, opts(review=True), cluster=ClusterOptions(scheduler=cluster["address"]))
    finally:
        client.run(_inline_max, next(iter(old.values())))
    assert run.exit_code == 0
    thumbs = sorted(p.relative_to(local).as_posix() for p in (local / "a.review").rglob("*") if p.is_file())
    assert thumbs and thumbs == sorted(p.relative_to(out).as_posix() for p in (out / "a.review").rglob("*") if p.is_file())
    assert all((out / t).read_bytes() == (local / t).read_bytes() for t in thumbs)
    assert (out / "a.review.html").is_file() and (out / "a.cells.csv").read_bytes() == (local / "a.cells.csv").read_bytes()
    assert_nothing_half_written(out)


# --------------------------------------------------------------------------- checks before anything is written


def test_a_path_a_worker_cannot_read_is_named_with_the_worker(data, cluster):
    client = cluster["client"]
    model = data["model"]
    ok = check_workers(client, [data["slides"] / "a.svs"], model, sha256_file(model))
    assert set(ok.values()) == {1}  # 2 cores (or more) shared by 2 single-threaded workers on one host: >= 1 each
    missing = data["root"] / "elsewhere" / "x.svs"  # as a slide on storage the workers do not mount
    with pytest.raises(WbcError) as exc:
        check_workers(client, [data["slides"] / "a.svs", missing], model, sha256_file(model))
    msg = str(exc.value)
    assert "\n" not in msg and str(missing) in msg
    assert any(addr in msg for addr in client.scheduler_info(n_workers=-1)["workers"])
    with pytest.raises(WbcError, match="reads another file at"):
        check_workers(client, [data["slides"] / "a.svs"], model, "0" * 64)


@pytest.mark.parametrize("args, message", [
    (["--cluster", "local"], "--cluster must be local:N"),
    (["--cluster", "local:2", "--scheduler", "tcp://127.0.0.1:8786"], "not both"),
    (["--cluster", "local:0"], "at least 1 worker"),
    (["--cluster", "local:1", "--executor", "process"], "--executor process is for the local path"),
])
def test_bad_cluster_options_exit_2_before_anything_is_written(data, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = run_cli([data["slides"] / "a.svs", "--model", data["model"], "--out", out, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (out / "summary.csv").exists()


def test_an_unreachable_scheduler_is_one_line(data, tmp_path):
    with pytest.raises(WbcError, match="cannot connect to the Dask scheduler tcp://127.0.0.1:9"):
        count_slides([data["slides"] / "a.svs"], data["model"], tmp_path / "out", opts(),
                     cluster=ClusterOptions(scheduler="tcp://127.0.0.1:9", timeout_s=2))
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_without_dask_the_message_names_the_extra(data, tmp_path):
    code = (
        "import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
        "from wbc_deploy.cli import main\n"
        f"main(['count', {str(data['slides'] / 'a.svs')!r}, '--model', {str(data['model'])!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--cluster', 'local:2', '-q'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 2
    assert p.stderr.strip() == "error: --cluster and --scheduler need Dask distributed: pip install 'wbc-deploy[cluster]'"


# --------------------------------------------------------------------------- lost workers


def stall_for_the_killer(marker_dir: str, slide: str, times: int, name: str, tiles_done: int) -> None:
    """tile_hook run on the worker: after the slide's first tile, ask the test to kill this worker process
    (at most ``times`` times for this slide), and wait to be killed."""
    if name != slide or tiles_done != 1:
        return
    d = Path(marker_dir)
    if len(list(d.glob("*.attempt"))) >= times:
        return
    (d / f"{os.getpid()}.attempt").touch()
    (d / f"{os.getpid()}.kill").touch()
    time.sleep(300)


class Killer:
    """Kills, with SIGKILL, every worker process that asks for it in ``marker_dir``."""

    def __init__(self, marker_dir: Path) -> None:
        self.dir = marker_dir
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for f in self.dir.glob("*.kill"):
                pid = int(f.name.split(".")[0])
                f.unlink()
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_a_worker_killed_mid_slide_loses_nothing(data, cluster, tmp_path):
    """The worker counting slide b is killed after b's first tile: b is counted again on another worker and
    every output is the local path's."""
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    hook = functools.partial(stall_for_the_killer, str(markers), "b", 1)
    with Killer(markers) as killer:
        run = count_slides([data["slides"]], data["model"], out, opts(tile_hook=hook),
                           cluster=ClusterOptions(scheduler=cluster["address"]))
    assert len(killer.killed) == 1
    assert {r.slide: r.status for r in run.slides} == {"a": "ok", "b": "ok", "c": "ok", "broken": "error"}
    assert_same_as_local(data, out, GOOD + ("broken",))
    assert_nothing_half_written(out)


@pytest.mark.slow
def test_a_slide_that_keeps_killing_workers_ends_in_error(data, cluster, tmp_path):
    """Bounded retries: the cluster allows 1 restart, so the second lost worker ends slide b with status=error;
    nothing of b is written, the other slides are the local path's."""
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    hook = functools.partial(stall_for_the_killer, str(markers), "b", 99)
    with Killer(markers) as killer:
        run = count_slides([data["slides"]], data["model"], out, opts(tile_hook=hook),
                           cluster=ClusterOptions(scheduler=cluster["address"]))
    assert len(killer.killed) == 2
    b = next(r for r in run.slides if r.slide == "b")
    assert b.status == "error" and "died 2 time(s)" in b.error
    assert run.exit_code == 3
    assert not any(out.glob("b.*")), "nothing of the failed slide may be written"
    rows = summary_rows(out / "summary.csv")
    assert rows["b"]["status"] == "error"
    # Known limitation (seen in 2 of ~5 full-suite runs, never alone): a slide whose worker is killed by
    # slide b's second attempt can be lost with it and end as an error naming the lost worker. It must then
    # be a clean error row with nothing written; a slide counted must be the local path's, byte for byte.
    done = tuple(n for n in ("a", "c") if rows[n]["status"] == "ok")
    for n in ("a", "c"):
        if n not in done:
            assert rows[n]["status"] == "error" and "worker" in rows[n]["error"], rows[n]
            assert not any(out.glob(f"{n}.*"))
    assert "a" in done or "c" in done
    for name in done:
        for suffix in OUTPUT_SUFFIXES:
            assert (out / f"{name}{suffix}").read_bytes() == (data["local"] / f"{name}{suffix}").read_bytes(), name + suffix
    assert_nothing_half_written(out)


def stop_after(slide: str, tiles: int, name: str, tiles_done: int) -> None:
    if name == slide and tiles_done == tiles:
        raise CountInterrupted()


@pytest.mark.slow
def test_an_interrupted_cluster_run_resumes(data, cluster, tmp_path):
    """A slide stopped part-way on a worker keeps its finished tiles (.b.partial) here; --resume continues it on
    the cluster from there, with the local path's bytes."""
    out = tmp_path / "out"
    b = data["slides"] / "b.svs"
    first = count_slides([b], data["model"], out, opts(tile_hook=functools.partial(stop_after, "b", 4)),
                         cluster=ClusterOptions(scheduler=cluster["address"]))
    assert first.exit_code == 130 and first.slides[0].status == "interrupted"
    assert (out / ".b.partial" / "tiles.jsonl").read_text().count("\n") == 4
    assert not (out / "b.cells.csv").exists()
    again = count_slides([b], data["model"], out, opts(resume=True), cluster=ClusterOptions(scheduler=cluster["address"]))
    assert again.exit_code == 0 and again.slides[0].tiles_resumed == 4
    assert (out / "b.cells.csv").read_bytes() == (data["local"] / "b.cells.csv").read_bytes()
    assert_nothing_half_written(out)
