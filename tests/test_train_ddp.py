"""Training with torchrun: 2 real CPU processes (gloo) against one process with the same global batch.

Measured on the 2-core dev VM (resnet18: no dropout, whose masks are drawn per rank; 64 px; global batch 16;
RAdam at lr 1e-4; no augmentation or mixup, which draw random numbers per rank):
- one step (tests/ddp_step_check.py): the 2-process gradient is within 3e-6 of the exact (float64) gradient
  of the global batch (relative L2 norm); one float32 process is within 9e-3 of it (PyTorch's CPU BatchNorm
  backward rounds more than the two-pass sums of CpuSyncBatchNorm), so that is the 2 runs' difference too.
  Tolerance: 1e-4. After 8 steps the weights differ by 2.5e-6 of their norm (tolerance 1e-4);
- a whole `torchrun -m wbc_deploy train` run resumed after its first epoch, against one process for 2
  epochs: weights 1.5e-6 apart (tolerance 1e-4), epoch losses equal to 4e-5 (tolerance 1e-3).
With lr 1e-3 at 32 px and batch 8 the same comparison drifts to ~6e-4 (weights) and ~3% (losses) in 10 steps:
one process whose batch is merely reversed drifts from itself as fast there (BatchNorm over a few values per
channel amplifies rounding), so the tolerances are stated for the well-conditioned setting.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wbc_deploy.data.dataset import BalancedSampler
from wbc_deploy.data.synth_cells import write_cell_dataset
from wbc_deploy.errors import WbcError
from wbc_deploy.trainer.distributed import DistContext, RankSlices
from wbc_deploy.trainer.fit import train

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
SETTINGS = {"preset": "tiny", "arch": "resnet18", "img_size": 64, "batch_size": 16, "mixup_alpha": 0.0, "augment": False,
            "schedule": "constant", "lr": 1e-4, "seed": 0}
CLI = ["--preset", "tiny", "--arch", "resnet18", "--img-size", "64", "--batch-size", "16", "--mixup-alpha", "0", "--no-augment",
       "--schedule", "constant", "--lr", "1e-4", "--seed", "0", "-q"]


def torchrun(*args, timeout: int = 900) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (a free local port; one thread per process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *map(str, args)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_rank_slices_rebuild_one_process_batches():
    sampler = BalancedSampler([0] * 7 + [1] * 3 + [2] * 5, seed=3)
    sampler.set_epoch(2)
    order = list(sampler)  # 21 samples: 2 full global batches of 8, the rest dropped (drop_last)
    parts = [RankSlices(sampler, 8, 2, r) for r in (0, 1)]
    for p in parts:
        p.set_epoch(2)
    a, b = list(parts[0]), list(parts[1])
    assert len(a) == len(b) == len(parts[0]) == 8
    rebuilt = [x for k in range(2) for x in a[4 * k:4 * k + 4] + b[4 * k:4 * k + 4]]
    assert rebuilt == order[:16]
    short = BalancedSampler([0, 1, 1], seed=0)  # an epoch shorter than one global batch is split evenly
    assert sorted(list(RankSlices(short, 8, 2, 0)) + list(RankSlices(short, 8, 2, 1))) == sorted(short)


def test_the_global_batch_must_split_evenly():
    with pytest.raises(WbcError, match="must be divisible by the 2 processes"):
        DistContext(rank=0, world_size=2).per_rank_batch(7)
    assert DistContext().batches(7, "sampler") == (7, "sampler")  # one process: untouched


@pytest.mark.slow
def test_two_gloo_processes_take_one_processes_gradient_step():
    p = torchrun(ROOT / "tests" / "ddp_step_check.py", timeout=300)
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["ddp_grad_error"] < 1e-4, result  # vs the exact global-batch gradient
    assert result["ddp_grad_error"] <= result["single_grad_error"] + 1e-5, result  # no worse than one float32 process
    assert result["max_running_stat_diff"] < 1e-5, result
    assert result["rel_weight_diff"] < 1e-4, result


def _history(run: Path) -> list[dict[str, float]]:
    with open(run / "history.csv", newline="") as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_torchrun_training_with_resume_matches_one_process(tmp_path):
    data = tmp_path / "cells"
    write_cell_dataset(data, per_class=20, size_px=64, seed=0, classes=CLASSES)  # 3 global batches per epoch
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (and no oversubscription on small machines)
    try:
        train(data, single, epochs=2, quiet=True, **SETTINGS)
    finally:
        torch.set_num_threads(threads)

    two = tmp_path / "two"
    torchrun("-m", "wbc_deploy", "train", data, "--out", two, "--epochs", "1", *CLI)
    assert json.loads((two / "card.json").read_text())["training"]["epochs_completed"] == 1
    p = torchrun("-m", "wbc_deploy", "train", data, "--out", two, "--epochs", "2", "--resume", *CLI)
    assert p.stdout.count("run: ") == 1  # rank 0 alone prints

    card = json.loads((two / "card.json").read_text())
    assert card["training"]["world_size"] == 2 and card["training"]["epochs_completed"] == 2
    assert card["training"]["hyperparameters"]["batch_size"] == 16  # the global batch
    assert (two / "split.csv").read_text() == (single / "split.csv").read_text()
    # the temperature is fitted on the validation logits gathered from both processes' shards
    t1 = json.loads((single / "card.json").read_text())["temperature"]
    assert card["temperature"] != 1.0 and abs(card["temperature"] - t1) <= 1e-2 * t1, (card["temperature"], t1)
    h1, h2 = _history(single), _history(two)
    assert [r["epoch"] for r in h2] == [1, 2]
    for a, b in zip(h1, h2):
        for key in ("train_loss", "val_loss"):
            assert abs(a[key] - b[key]) <= 1e-3 * a[key], (key, a, b)

    w1 = torch.load(single / "last.pt", weights_only=True)["model"]
    w2 = torch.load(two / "last.pt", weights_only=True)["model"]
    assert w1.keys() == w2.keys()  # plain state dict: no "module." prefix, BatchNorm buffers as one process's
    params = [k for k, v in w1.items() if v.dtype.is_floating_point and "running" not in k]
    diff = np.sqrt(sum(float(((w1[k] - w2[k]) ** 2).sum()) for k in params))
    norm = np.sqrt(sum(float((w1[k] ** 2).sum()) for k in params))
    assert diff / norm < 1e-4, diff / norm
