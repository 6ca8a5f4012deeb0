"""The GPU path proven in one run (``benchmarks/gpu_check.sh`` calls ``python -m wbc_deploy.bench.gpu_check``).

1. ONNX Runtime FP32 on the CPU gives the reference probabilities on check cells, with a *trained* model:
   when the reference predicts fewer than two classes on them the check refuses to judge (a constant
   engine would agree with a model that says one class everywhere).
2. Every GPU backend (native TensorRT engine, ONNX Runtime TensorRT and CUDA providers, PyTorch CUDA
   FP32/FP16) runs the same cells through the bench runners (:func:`wbc_deploy.bench.backends.build_runner`,
   the objects ``wbc-deploy benchmark`` times) and passes when max |p - p_ort| <= 1e-2 and every row
   sums to 1 (within 5e-3). Top-1 agreement is reported, never judged on alone.
3. The same backends are timed once, by :func:`wbc_deploy.bench.run_benchmark` with the same artefact
   cache, so the benchmark reuses the engine and timing cache step 2 built (one timing path).

Everything goes under ``--out``: ``gpu_check.json`` (checks and verdict), ``throughput.json``/``.md``, the
cache of exported models and engines. The last line printed is the verdict; the exit code says it:
0 TensorRT proven; 1 a GPU backend ran and disagrees (the engine: "TensorRT NOT PROVEN"); 2 bad arguments
or an unusable environment; 3 a CUDA GPU is present but TensorRT could not run ("TensorRT NOT PROVEN");
4 no CUDA GPU here (nothing proven); 5 the reference predicts fewer than two classes ("TensorRT NOT PROVEN").
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Largest |p_engine - p_ort_fp32| accepted on any cell and class.
MAX_ABS_DIFF = 1e-2
#: Largest |sum of a row - 1| accepted.
ROW_SUM_TOL = 5e-3
#: GPU backends checked, the native engine first.
GPU_BACKENDS = ("trt", "ort-trt", "ort-cuda", "torch-cuda", "torch-cuda-fp16")

# Exit codes (also documented in the README and in benchmarks/gpu_check.sh).
PROVEN = 0  # the TensorRT engine ran and matched ONNX Runtime FP32 (and no other GPU backend failed)
DISAGREES = 1  # a GPU backend ran and its probabilities differ: TensorRT NOT PROVEN if it is the engine
USAGE = 2  # bad arguments or an unusable environment (missing torch/onnxruntime)
NOT_RUN = 3  # a CUDA GPU is present but TensorRT could not run: TensorRT NOT PROVEN
NO_GPU = 4  # no CUDA GPU on this machine: nothing proven, nothing failed
CANNOT_JUDGE = 5  # the reference predicts fewer than two classes on the check cells: TensorRT NOT PROVEN
EXIT_CODES = {PROVEN: "TensorRT proven", DISAGREES: "a GPU backend disagrees with ONNX Runtime FP32", USAGE: "usage",
              NOT_RUN: "GPU present, TensorRT could not run", NO_GPU: "no CUDA GPU", CANNOT_JUDGE: "reference predicts < 2 classes"}


@dataclass
class ProbCheck:
    """How one backend's probabilities compare with the FP32 reference."""

    n: int
    max_abs_diff: float
    worst_row_sum_error: float
    top1_agreement: float
    passed: bool

    def describe(self) -> str:
        return (f"max |dp| {self.max_abs_diff:.1e} (limit {MAX_ABS_DIFF:g}), worst |row sum - 1| {self.worst_row_sum_error:.1e} "
                f"(limit {ROW_SUM_TOL:g}), top-1 {100 * self.top1_agreement:.1f}% of {self.n}")


def compare_probabilities(ref: np.ndarray, probs: np.ndarray, max_abs: float = MAX_ABS_DIFF, row_tol: float = ROW_SUM_TOL) -> ProbCheck:
    """Compare ``probs`` with ``ref`` (both N x C): every probability within ``max_abs``, every row summing to 1."""
    ref = np.asarray(ref, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != ref.shape or ref.size == 0:
        return ProbCheck(int(ref.shape[0]) if ref.ndim else 0, float("inf"), float("inf"), 0.0, False)
    finite = bool(np.isfinite(probs).all())
    diff = float(np.abs(probs - ref).max()) if finite else float("inf")
    rows = float(np.abs(probs.sum(axis=1) - 1.0).max()) if finite else float("inf")
    agree = float((probs.argmax(1) == ref.argmax(1)).mean())
    return ProbCheck(int(ref.shape[0]), diff, rows, agree, finite and diff <= max_abs and rows <= row_tol)


def reference_classes(ref: np.ndarray) -> int:
    """How many distinct classes the reference predicts (a check needs at least two to mean anything)."""
    return int(len(np.unique(np.asarray(ref).argmax(1)))) if len(ref) else 0


@dataclass
class Check:
    """One GPU backend: PASS / FAIL (ran, disagrees) / ERROR (could not build or run) / SKIP (not installed here)."""

    backend: str
    status: str
    note: str = ""
    probs: ProbCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "status": self.status, "note": self.note,
                "comparison": None if self.probs is None else asdict(self.probs)}


def verdict(checks: list[Check], gpu_present: bool, gpu_note: str, ref_classes: int) -> tuple[int, str]:
    """The exit code and the last line for these checks (see the module docstring for the codes)."""
    trt = next((c for c in checks if c.backend == "trt"), Check("trt", "SKIP", "not checked"))
    failed = [c.backend for c in checks if c.status == "FAIL"]
    if trt.status == "SKIP" and not gpu_present:
        return NO_GPU, f"gpu_check: no CUDA GPU on this machine ({gpu_note}): TensorRT was not checked, nothing is proven"
    if ref_classes < 2:
        return CANNOT_JUDGE, (f"TensorRT NOT PROVEN: the FP32 reference predicts only {ref_classes} class(es) on the check cells, "
                              "so a constant engine would agree; check with a trained model")
    if trt.status in ("SKIP", "ERROR"):
        return NOT_RUN, f"TensorRT NOT PROVEN: a CUDA GPU is present ({gpu_note}) but TensorRT could not run: {trt.note}"
    if trt.status == "FAIL":
        return DISAGREES, f"TensorRT NOT PROVEN: the engine's probabilities differ from ONNX Runtime FP32: {trt.note}"
    if failed:
        return DISAGREES, f"TensorRT PROVEN ({trt.note}), but other GPU backends disagree with ONNX Runtime FP32: {', '.join(failed)}"
    return PROVEN, f"TensorRT PROVEN: {trt.note}"


def gpu_present() -> tuple[bool, str]:
    """Whether a CUDA GPU is present (``nvidia-smi -L`` lists one, or PyTorch sees one), and what was seen."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return True, f"nvidia-smi is installed but failed ({type(exc).__name__})"
        gpus = [ln.strip() for ln in res.stdout.splitlines() if ln.startswith("GPU ")]
        if gpus:
            return True, "; ".join(gpus)
        if res.returncode != 0:
            return True, f"nvidia-smi is installed but failed: {(res.stderr or res.stdout).strip().splitlines()[:1]}"
    try:
        import torch

        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return False, "no nvidia-smi listing a GPU, and PyTorch sees no CUDA device"


def runner_probabilities(runner: Any, batch: np.ndarray, chunk: int, card: Any) -> np.ndarray:
    """``runner``'s probabilities for ``batch`` with the card's temperature applied exactly once.

    Runners that wrap a runtime :class:`~wbc_deploy.runtime.base.Backend` (the native engine) apply it
    already; raw ONNX Runtime sessions and PyTorch modules do not. Comparing one kind with the other
    would fail a correct engine on any card whose temperature is not 1.
    """
    from ..runtime.base import Backend, apply_temperature

    out = np.concatenate([runner.predict(np.ascontiguousarray(batch[i : i + chunk])) for i in range(0, len(batch), chunk)])
    if isinstance(getattr(runner.predict, "__self__", None), Backend):
        return out
    return apply_temperature(out, getattr(card, "temperature", 1.0))


def resolve_model(ref: str) -> str:
    """A path as given; a bundled model's name (``default``) -> its folder with torch weights, else its ONNX."""
    if Path(ref).expanduser().exists():
        return ref
    try:
        from ..zoo import find_bundled
    except ImportError:
        return ref
    model = find_bundled(ref)
    if model is None:
        return ref
    return str(model.folder if model.weights.is_file() else model.onnx)


def run_checks(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """Reference + every GPU backend's comparison; returns the record written to ``gpu_check.json``."""
    from ..converters.images import sample_batch
    from ..errors import WbcError
    from ..runtime.trt_support import first_line
    from .artefacts import Artefacts, resolve_source
    from .backends import build_runner, unavailable_reason
    from .machine import physical_cores
    from .ort_settings import tuned_settings

    out = Path(args.out)
    source = resolve_source(args.model)
    card = source.card
    artefacts = Artefacts(source, out / "cache")
    max_batch = max(args.batch_sizes)
    threads = physical_cores()
    present, gpu_note = gpu_present()
    say(f"python {platform.python_version()}; GPU: {gpu_note}; model: {source.weights}")

    cells, desc = sample_batch(card, args.cells, n=args.n_cells, seed=7)
    ref_runner = build_runner("ort", artefacts, threads, tuned_settings(threads), max_batch)
    try:
        ref = runner_probabilities(ref_runner, cells, 16, card)
    finally:
        ref_runner.close()
    n_ref = reference_classes(ref)
    say(f"reference: ONNX Runtime FP32 on the CPU, {desc}, predicts {n_ref} of {len(card.classes)} classes")

    checks: list[Check] = []
    for name in GPU_BACKENDS:
        reason = unavailable_reason(name)
        if reason is not None:
            checks.append(Check(name, "SKIP", reason))
            continue
        say(f"{name}: preparing and running {len(cells)} cells")
        runner = None
        try:
            runner = build_runner(name, artefacts, threads, tuned_settings(threads), max_batch)
            probs = runner_probabilities(runner, cells, min(64, max_batch), card)
        except Exception as exc:  # noqa: BLE001 - one backend failing must not hide the others
            checks.append(Check(name, "ERROR", str(exc) if isinstance(exc, WbcError) else first_line(exc)))
            continue
        finally:
            if runner is not None:
                runner.close()
        pc = compare_probabilities(ref, probs)
        extra = ""
        if name == "trt":
            eng = artefacts.notes.get("trt_engine", {})
            extra = f"; engine {Path(eng.get('path', '?')).name}, built from {eng.get('built_from', '?')}"
        checks.append(Check(name, "PASS" if pc.passed else "FAIL", pc.describe() + extra, pc))
    code, line = verdict(checks, present, gpu_note, n_ref)
    return {
        "verdict": {"exit_code": code, "meaning": EXIT_CODES[code], "line": line},
        "gpu": {"present": present, "seen": gpu_note},
        "model": source.to_dict(),
        "reference": {"backend": "ort (CPU, FP32)", "cells": desc, "n": int(len(cells)), "classes_predicted": n_ref},
        "limits": {"max_abs_diff": MAX_ABS_DIFF, "row_sum_tolerance": ROW_SUM_TOL},
        "checks": [c.to_dict() for c in checks],
        "artefacts": artefacts.notes,
    }


def run_throughput(args: argparse.Namespace, say: Any) -> None:
    """Time the reference and the GPU backends once, with the bench (same artefact cache: engine reused)."""
    from ..console import console
    from .report import not_run_table, rich_table, write_json, write_markdown
    from .run import BenchmarkConfig, run_benchmark

    out = Path(args.out)
    config = BenchmarkConfig(model=args.model, backends=["ort", *GPU_BACKENDS], batch_sizes=args.batch_sizes,
                             seconds=args.seconds, warmup=2, min_iters=3, cache_dir=out / "cache", agreement_cells=0)
    report = run_benchmark(config, quiet=args.quiet)
    console.print(rich_table(report))
    skipped = not_run_table(report)
    if skipped is not None:
        console.print(skipped)
    write_json(report, out / "throughput.json")
    write_markdown(report, out / "throughput.md")
    say(f"wrote {out / 'throughput.json'} and {out / 'throughput.md'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .run import parse_batch_sizes

    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for every file the check writes")
    ap.add_argument("--model", required=True, help="a trained model: RUN directory, .safetensors, exported .onnx, or a bundled name (default)")
    ap.add_argument("--cells", type=Path, default=None, help="folder of check cells (default: synthetic cells)")
    ap.add_argument("--n-cells", type=int, default=200, help="check cells (default 200)")
    ap.add_argument("--batch-sizes", default="1,16,64,256", help="timed batch sizes; the largest is the engine's max batch")
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per backend and batch size (default 2)")
    ap.add_argument("--no-bench", action="store_true", help="check only, no throughput table")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    args.batch_sizes = parse_batch_sizes(args.batch_sizes)
    args.model = resolve_model(args.model)
    if args.n_cells < 2:
        ap.error("--n-cells must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from ..console import console
    from ..errors import WbcError
    from ..files import atomic_write_text, output_folder

    def say(msg: str) -> None:
        console.print(f"[dim]-[/dim] {escape(msg)}", highlight=False)

    try:
        args = parse_args(argv)
        output_folder(args.out)
        record = run_checks(args, say)
    except WbcError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return USAGE
    atomic_write_text(args.out / "gpu_check.json", json.dumps(record, indent=2, default=str) + "\n")
    table = Table(title=f"GPU check vs ONNX Runtime FP32 (max |dp| <= {MAX_ABS_DIFF:g}, rows sum to 1)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for col in ("backend", "result", "notes"):
        table.add_column(col)
    colours = {"PASS": "green", "FAIL": "bold red", "ERROR": "bold red", "SKIP": "yellow"}
    for c in record["checks"]:
        table.add_row(c["backend"], f"[{colours[c['status']]}]{c['status']}[/]", escape(c["note"]))
    console.print(table)
    if not args.no_bench:
        try:
            run_throughput(args, say)
        except WbcError as exc:
            say(f"throughput benchmark not run: {exc}")
    say(f"wrote {args.out / 'gpu_check.json'}")
    code, line = record["verdict"]["exit_code"], record["verdict"]["line"]
    print(line, flush=True)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
