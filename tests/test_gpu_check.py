"""The GPU check cannot pass falsely: probability comparison, verdicts, and the script's refusal paths.

Runs on a machine without a GPU: the comparison and verdict are plain functions; ``benchmarks/gpu_check.sh``
is run for real, with no GPU (it must say so, exit 4, and not claim anything) and with a fake
``nvidia-smi`` on PATH (a shell script printing a GPU line: the script must then try to get TensorRT,
fail, and end with ``TensorRT NOT PROVEN``, never a pass). Package installs in these runs go nowhere:
``--find-links`` names an empty folder (pip's ``--no-index``), or every index points at a closed local port.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

from wbc_deploy.bench.gpu_check import (
    CANNOT_JUDGE,
    DISAGREES,
    NO_GPU,
    NOT_RUN,
    PROVEN,
    Check,
    compare_probabilities,
    reference_classes,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _probs(n: int = 50, classes: int = 5, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(n, classes)) * 3
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


# -- probabilities, not top-1 -----------------------------------------------------------------------------
def test_matching_probabilities_pass():
    ref = _probs()
    noisy = ref + np.random.default_rng(1).normal(scale=1e-4, size=ref.shape).astype(np.float32)
    pc = compare_probabilities(ref, noisy)
    assert pc.passed and pc.max_abs_diff < 1e-3 and pc.top1_agreement == 1.0


def test_same_top1_but_probabilities_off_by_more_than_1e_2_fails():
    ref = _probs()
    shifted = ref.copy()
    top = ref.argmax(1)
    shifted[np.arange(len(ref)), top] += 0.015  # same argmax everywhere, rows now sum to 1.015
    shifted /= shifted.sum(1, keepdims=True)
    pc = compare_probabilities(ref, shifted)
    assert pc.top1_agreement == 1.0 and not pc.passed and pc.max_abs_diff > 1e-2


def test_all_zero_engine_fails_even_where_the_argmax_agrees():
    ref = np.zeros((20, 5), np.float32)
    ref[:, 0] = 1.0  # a reference that says class 0 everywhere
    zeros = np.zeros_like(ref)  # argmax 0 everywhere too: 100% top-1 agreement
    pc = compare_probabilities(ref, zeros)
    assert pc.top1_agreement == 1.0 and not pc.passed and pc.worst_row_sum_error == 1.0


def test_rows_must_sum_to_one_and_be_finite():
    ref = _probs()
    assert not compare_probabilities(ref, ref * 1.01).passed  # within 1e-2 per entry, rows sum to 1.01
    bad = ref.copy()
    bad[3, 2] = np.nan
    assert not compare_probabilities(ref, bad).passed
    assert not compare_probabilities(ref, ref[:, :4]).passed


# -- verdicts -----------------------------------------------------------------------------------------------
def _checks(trt: str, **others: str) -> list[Check]:
    return [Check("trt", trt, "note"), *(Check(k.replace("_", "-"), v) for k, v in others.items())]


def test_a_passing_engine_on_a_model_that_predicts_one_class_is_not_judged():
    ref = np.zeros((20, 5), np.float32)
    ref[:, 0] = 1.0
    assert reference_classes(ref) == 1
    code, line = verdict(_checks("PASS"), True, "GPU 0: NVIDIA L4", reference_classes(ref))
    assert code == CANNOT_JUDGE and line.startswith("TensorRT NOT PROVEN") and "trained model" in line


def test_verdicts_and_exit_codes():
    gpu = (True, "GPU 0: NVIDIA L4")
    assert verdict(_checks("PASS"), *gpu, 5) == (PROVEN, "TensorRT PROVEN: note")
    code, line = verdict(_checks("FAIL"), *gpu, 5)
    assert code == DISAGREES and line.startswith("TensorRT NOT PROVEN")
    for status in ("SKIP", "ERROR"):
        code, line = verdict(_checks(status), *gpu, 5)
        assert code == NOT_RUN and line.startswith("TensorRT NOT PROVEN: a CUDA GPU is present")
    code, line = verdict(_checks("PASS", ort_cuda="FAIL"), *gpu, 5)
    assert code == DISAGREES and "ort-cuda" in line
    code, line = verdict(_checks("SKIP"), False, "no nvidia-smi", 5)
    assert code == NO_GPU and "TensorRT PROVEN" not in line and "passed" not in line


# -- the script's refusal paths -------------------------------------------------------------------------
def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=full, cwd="/")


@pytest.mark.parametrize("args, message", [
    ([], "give the output folder"),
    (["OUT", "--bogus"], "unknown option --bogus"),
    (["OUT", "--find-links", "/nonexistent/wheels"], "is not a folder"),
    (["OUT", "--cuda", "11"], "--cuda takes 12 or 13"),
    (["OUT", "--model"], "--model needs a value"),
    (["OUT", "OTHER"], "give one output folder"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    args = [str(tmp_path / a) if a in ("OUT", "OTHER") else a for a in args]
    res = _run(args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi: the no-GPU path cannot be shown")
def test_no_gpu_says_so_and_exits_4(tmp_path):
    out = tmp_path / "out"
    res = _run([str(out)])
    assert res.returncode == 4, res.stdout + res.stderr
    assert "no CUDA GPU on this machine" in res.stdout and "nothing is proven" in res.stdout
    assert "PROVEN:" not in res.stdout and "passed" not in res.stdout
    assert (out / "gpu_check.log").read_text().count("no CUDA GPU") == 1


@pytest.fixture
def fake_gpu_path(tmp_path) -> str:
    """A PATH whose ``nvidia-smi`` is a shell script claiming one GPU and a CUDA 12 driver (not a real GPU)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\nif [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA Fake (UUID: GPU-0)"; exit 0; fi\n'
                   'echo "| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |"\n')
    smi.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.slow
def test_fake_gpu_with_an_empty_wheel_folder_is_not_proven(tmp_path, fake_gpu_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    res = _run([str(tmp_path / "out"), "--find-links", str(wheels)], env={"PATH": fake_gpu_path})
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 3, res.stdout + res.stderr
    assert "TensorRT build for CUDA 12" in res.stdout
    assert lines[-1].startswith("TensorRT NOT PROVEN: TensorRT and pycuda are not installed") and str(wheels) in lines[-1]
    assert "TensorRT PROVEN" not in res.stdout and "passed" not in res.stdout


@pytest.mark.slow
def test_fake_gpu_offline_fails_fast_and_is_not_proven(tmp_path, fake_gpu_path):
    closed = "http://127.0.0.1:9/simple"  # nothing listens on the discard port: connection refused at once
    env = {"PATH": fake_gpu_path, "PIP_INDEX_URL": closed, "PIP_EXTRA_INDEX_URL": "", "WBC_NVIDIA_INDEX": closed,
           "PIP_FIND_LINKS": "", "PIP_NO_INDEX": ""}
    res = _run([str(tmp_path / "out")], env=env, timeout=240)
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("TensorRT NOT PROVEN") and "no package index answers" in res.stdout
    assert "TensorRT PROVEN" not in res.stdout


# -- the Python check end to end on this CPU machine ----------------------------------------------------
@pytest.mark.slow
def test_check_on_a_cpu_machine_compares_nothing_and_claims_nothing(trained_run, trained_test_dir, tmp_path, capsys):
    from wbc_deploy.bench.gpu_check import gpu_present, main

    if gpu_present()[0]:
        pytest.skip("this machine has a GPU: the no-GPU verdict cannot be shown")
    out = tmp_path / "check"
    code = main(["--out", str(out), "--model", str(trained_run), "--cells", str(trained_test_dir), "--n-cells", "60",
                 "--batch-sizes", "2", "--seconds", "0.05", "--quiet"])
    assert code == NO_GPU
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["reference"]["classes_predicted"] >= 2  # the trained model tells classes apart
    assert {c["backend"]: c["status"] for c in record["checks"]} == dict.fromkeys(
        ("trt", "ort-trt", "ort-cuda", "torch-cuda", "torch-cuda-fp16"), "SKIP")
    bench = json.loads((out / "throughput.json").read_text())
    rows = {r["backend"]: r for r in bench["results"]}
    assert rows["ort"]["status"] == "ok" and rows["trt"]["status"] != "ok"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gpu_check: no CUDA GPU") and "PROVEN:" not in last


def test_card_temperature_is_applied_once_whichever_runner(tmp_path):
    """A backend-wrapping runner (like the engine's) and a raw-session runner (like ORT's EPs) agree at T=2."""
    import dataclasses

    import onnxruntime as ort

    from test_runtime_common import make_onnx, tiny_card
    from wbc_deploy.bench.gpu_check import runner_probabilities
    from wbc_deploy.runtime.ort_backend import OrtBackend

    card = dataclasses.replace(tiny_card(), temperature=2.0)
    path = make_onnx(tmp_path / "m.onnx", card)
    batch = np.random.default_rng(0).normal(size=(10, 3, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = types.SimpleNamespace(predict=lambda b: sess.run(["probabilities"], {"images": b})[0])
    with OrtBackend(path) as be:
        wrapped = types.SimpleNamespace(predict=be.predict)
        a = runner_probabilities(wrapped, batch, 4, card)
        b = runner_probabilities(raw, batch, 4, card)
    assert compare_probabilities(a, b, max_abs=1e-5).passed
    assert not compare_probabilities(a, raw.predict(batch), max_abs=1e-5).passed  # T=2 really changes them
