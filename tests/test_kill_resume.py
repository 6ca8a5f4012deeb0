"""Resume is exact: a training run stopped after epoch 1 and resumed ends with every tensor of its model and
optimizer state equal to an uninterrupted run's; a real `count` and a real `train`, killed with SIGKILL in a
subprocess (no chance to clean up), resume to the outputs of an uninterrupted run."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import wbc_deploy
from wbc_deploy.data.synth_cells import write_cell_dataset
from wbc_deploy.pipeline import CountOptions, count_slides
from wbc_deploy.slide.synth import write_synthetic_slide
from wbc_deploy.trainer.checkpoint import load_training_state
from wbc_deploy.trainer.fit import train

try:
    from test_runtime_common import make_onnx, tiny_card
except ImportError:  # tests/ as a package
    from .test_runtime_common import make_onnx, tiny_card

ROOT = Path(wbc_deploy.__file__).resolve().parent.parent
TRAIN = dict(preset="tiny", img_size=32, batch_size=8, seed=0, quiet=True)


def python(code: str, tmp: Path) -> subprocess.Popen:
    """Start ``code`` in a new interpreter with this worktree's package first on the path."""
    script = tmp / f"child-{time.monotonic_ns()}.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended (rc {proc.returncode}) before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.05)


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live multiprocessing processes whose command line holds ``text`` (a count's forkserver and its
    scan workers carry the counting process's sys.path, which holds its temporary folder, on theirs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            if "multiprocessing" in cmd and text in cmd and state != "Z":
                pids.append(int(proc.name))
    return pids


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def assert_same_tensors(a, b, where: str = "") -> int:
    """Every tensor of two nested state dicts equal (bit for bit); returns how many were compared."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
        return 1
    if isinstance(a, dict):
        assert set(a) == set(b), where
        return sum(assert_same_tensors(a[k], b[k], f"{where}/{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        return sum(assert_same_tensors(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, where
    return 0


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-cells")
    write_cell_dataset(root, per_class=8, size_px=32, seed=0, classes=["eosinophil", "lymphocyte", "monocyte", "neutrophil"])
    return root


@pytest.fixture(scope="module")
def whole(cells, tmp_path_factory):
    """Two uninterrupted epochs."""
    run = tmp_path_factory.mktemp("resume-whole") / "run"
    train(cells, run, epochs=2, **TRAIN)
    return run


def test_an_interrupted_then_resumed_run_has_every_tensor_of_an_uninterrupted_one(cells, whole, tmp_path):
    part = tmp_path / "part"

    def stop(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cells, part, epochs=2, on_epoch=stop, **TRAIN)
    assert load_training_state(part / "last.pt")["epoch"] == 1
    train(cells, part, resume=True, quiet=True)

    a, b = load_training_state(whole / "last.pt"), load_training_state(part / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    n_model = assert_same_tensors(a["model"], b["model"], "model")
    n_opt = assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert n_model > 20 and n_opt > n_model  # RAdam: step, exp_avg, exp_avg_sq per parameter
    assert_same_tensors(a["rng"], b["rng"], "rng")
    assert_same_tensors(load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors")), "best")
    assert history(part) == history(whole)  # every digit, not rounded


@pytest.mark.slow
def test_a_train_killed_with_sigkill_resumes_to_the_uninterrupted_run(cells, whole, tmp_path):
    run = tmp_path / "run"
    marker = tmp_path / "epoch1.done"
    child = python(f"""
        from pathlib import Path
        import torch
        from wbc_deploy.trainer.fit import train

        torch.set_num_threads({torch.get_num_threads()})  # the parent's: float sums differ across thread counts

        def mark(row):
            if row["epoch"] == 1:
                Path({str(marker)!r}).write_text("1")

        train({str(cells)!r}, {str(run)!r}, epochs=2, on_epoch=mark, **{TRAIN!r})
    """, tmp_path)
    wait_for(marker.exists, child)
    time.sleep(0.3)  # into epoch 2 (or its checkpoint writes): wherever it is, it gets no chance to clean up
    sigkill(child)
    epoch = load_training_state(run / "last.pt")["epoch"]  # never a torn file
    assert epoch in (1, 2)
    train(cells, run, resume=True, quiet=True)
    assert_same_tensors(load_training_state(whole / "last.pt")["model"], load_training_state(run / "last.pt")["model"])
    assert_same_tensors(load_training_state(whole / "last.pt")["optimizer"], load_training_state(run / "last.pt")["optimizer"])
    assert history(run) == history(whole)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") or ".tmp" in p.name]  # no temp file left behind


@pytest.mark.slow
def test_a_count_killed_with_sigkill_resumes_to_the_uninterrupted_files(tmp_path):
    slide = tmp_path / "smear.svs"
    write_synthetic_slide(slide, 2048, 2048, 30, mpp=0.25, seed=3)
    model = make_onnx(tmp_path / "model.onnx", tiny_card(32))
    options = dict(quiet=True, tile_um=128.0, workers=2, batch_size=4, geojson=True)
    count_slides([slide], model, tmp_path / "whole", CountOptions(**options))

    out = tmp_path / "killed"
    tiles = out / ".smear.partial" / "tiles.jsonl"
    child = python(f"""
        import time
        from wbc_deploy.pipeline import CountOptions, count_slides

        def slow(slide, n):
            time.sleep(0.4)  # give the parent time to kill it mid-slide

        count_slides([{str(slide)!r}], {str(model)!r}, {str(out)!r}, CountOptions(tile_hook=slow, **{options!r}))
    """, tmp_path)
    wait_for(lambda: tiles.is_file() and tiles.read_bytes().count(b"\n") >= 5, child)
    assert processes_mentioning(str(tmp_path)), "the count should scan its 16 tiles with worker processes"
    sigkill(child)
    done = tiles.read_bytes().count(b"\n")
    assert 5 <= done < 16 and not (out / "smear.cells.csv").exists()
    end = time.monotonic() + 30  # its scan workers and their forkserver notice within a second or two
    while processes_mentioning(str(tmp_path)) and time.monotonic() < end:
        time.sleep(0.2)
    assert not processes_mentioning(str(tmp_path)), "the killed count's worker processes outlived it"

    run = count_slides([slide], model, out, CountOptions(resume=True, **options))
    assert run.exit_code == 0 and run.slides[0].tiles_resumed >= 5, run.slides[0].error
    for name in ("smear.cells.csv", "smear.geojson"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not (out / ".smear.partial").exists()


def test_only_killed_writers_temporary_files_are_removed(tmp_path):
    from wbc_deploy.files import remove_stale_temps

    stale = tmp_path / ".last.pt.29203.140263668562816.tmp"  # what a SIGKILLed atomic write leaves
    keep = [tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".a.b.tmp", tmp_path / "last.pt"]
    for p in [stale, *keep]:
        p.write_text("x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert all(p.exists() for p in keep) and not stale.exists()
