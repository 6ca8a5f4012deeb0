"""The GPU path proven in one run (``benchmarks/gpu_check.sh`` calls ``python -m wbc_deploy.converters.gpu_check``).

Exports a model to ONNX, computes ONNX Runtime FP32 (CPU) reference probabilities on synthetic cells,
then checks every accelerated runtime this machine has against them and times it:

* PyTorch on CUDA, FP32 and FP16 autocast;
* ONNX Runtime with the CUDA and TensorRT execution providers (onnxruntime-gpu);
* a native TensorRT FP16 engine (tensorrt + pycuda), built with ``build_engine`` and run double-buffered.

A runtime passes when its top-1 agreement with ONNX Runtime FP32 is >= 99.5%. What cannot run here is
listed as SKIP with the exact reason (missing package, no CUDA device); the exit code is 1 if any check
that ran failed, else 0. On a CPU-only machine it still exports, verifies ONNX Runtime against PyTorch
and times the CPU, so the script always runs to the end.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_AGREEMENT = 0.995


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, SKIP, INFO
    agreement: float | None = None
    cells_per_s: float | None = None
    note: str = ""


def _throughput(fn: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    """Cells per second of ``fn(batch)`` over ~``seconds`` after one warm-up call."""
    fn(batch)
    n, t0 = 0, time.perf_counter()
    while True:
        fn(batch)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n * batch.shape[0] / elapsed


def _agreement(ref: np.ndarray, probs: np.ndarray) -> float:
    return float((ref.argmax(1) == probs.argmax(1)).mean())


def _verdict(agree: float) -> str:
    return "PASS" if agree >= MIN_AGREEMENT else "FAIL"


def _tile(batch: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // batch.shape[0])
    return np.ascontiguousarray(np.concatenate([batch] * reps)[:n])


def run_checks(args: argparse.Namespace, say: Callable[[str], None]) -> list[Check]:
    """Run every check this machine allows; return them in order."""
    import torch

    from ..card import DEFAULT_FOV_UM
    from ..classes import CLASSES
    from ..preprocess import prepare_batch
    from .images import synthetic_images
    from .onnx_export import export_onnx
    from .verify import cpu_session, run_session, verify_onnx_against_torch

    checks: list[Check] = []
    cuda = torch.cuda.is_available()
    n_images = args.images or (256 if cuda else 16)
    say(f"python {platform.python_version()}, torch {torch.__version__}, CUDA device: "
        + (torch.cuda.get_device_name(0) if cuda else "none (torch.cuda.is_available() is False)"))

    # -- the model and the data ---------------------------------------------------------------------
    if args.model:
        from ..trainer.checkpoint import load_checkpoint

        model, card = load_checkpoint(args.model)
    else:
        from ..model import card_for, create_model

        torch.manual_seed(0)
        model, card = create_model(args.arch, len(CLASSES)).eval(), card_for(args.arch, list(CLASSES))
    say(f"model: {card.arch} at {card.input_size} px; {n_images} synthetic cells")
    batch = prepare_batch(synthetic_images(n_images, seed=1, size=card.input_size, fov_um=card.fov_um or DEFAULT_FOV_UM), card)
    work = Path(args.out or tempfile.mkdtemp(prefix="wbc-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / "model.onnx"

    t0 = time.perf_counter()
    exported = export_onnx(model, card, onnx_path)
    say(f"exported {onnx_path} ({exported.exporter}, opset {exported.opset}) in {time.perf_counter() - t0:.1f} s")
    rows = verify_onnx_against_torch(model, onnx_path, batch[: min(8, n_images)], "cells", n_random=2)
    worst = max(r.max_abs for r in rows)
    ok = all(r.passed for r in rows)
    checks.append(Check("export: ORT CPU FP32 vs torch CPU FP32", "PASS" if ok else "FAIL",
                        min(r.top1_agreement for r in rows), None, f"max |logit diff| {worst:.1e} (limit 1e-4)"))

    sess = cpu_session(onnx_path)
    ref = run_session(sess, batch, ["probabilities"], batch_size=16)[0]
    cpu_bs = min(args.batch, 16)
    cps = _throughput(lambda b: sess.run(["probabilities"], {"images": b}), _tile(batch, cpu_bs), args.seconds)
    checks.append(Check("ONNX Runtime CPU FP32 (reference)", "INFO", 1.0, cps, f"batch {cpu_bs}"))

    # -- PyTorch on CUDA ----------------------------------------------------------------------------
    if not cuda:
        checks.append(Check("torch CUDA FP32 / FP16", "SKIP", note="no CUDA device visible to PyTorch"))
    else:
        gpu_model = model.to("cuda").eval()
        timed = _tile(batch, args.batch)

        def torch_probs(b: np.ndarray, half: bool) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                out = gpu_model(torch.from_numpy(b).to("cuda", non_blocking=True)).float()
            return torch.softmax(out, 1).cpu().numpy()

        for half in (False, True):
            probs = np.concatenate([torch_probs(batch[i : i + args.batch], half) for i in range(0, n_images, args.batch)])
            agree = _agreement(ref, probs)
            cps = _throughput(lambda b: torch_probs(b, half), timed, args.seconds)
            checks.append(Check(f"torch CUDA {'FP16 autocast' if half else 'FP32'} vs ORT FP32", _verdict(agree), agree, cps, f"batch {args.batch}"))
        model.to("cpu")

    # -- ONNX Runtime GPU execution providers ------------------------------------------------------
    import onnxruntime as ort

    available = ort.get_available_providers()
    for ep, label in (("CUDAExecutionProvider", "ORT CUDA EP FP32"), ("TensorrtExecutionProvider", "ORT TensorRT EP FP16")):
        if ep not in available:
            checks.append(Check(label, "SKIP", note=f"onnxruntime {ort.__version__} has no {ep} (`pip install onnxruntime-gpu` on a CUDA machine)"))
            continue
        from ..runtime.ort_backend import OrtBackend

        try:
            with OrtBackend(onnx_path, providers=[ep, "CPUExecutionProvider"], trt_cache_dir=work / "ort-trt-cache") as be:
                if be.device != ep:
                    checks.append(Check(label, "SKIP", note=f"{ep} is installed but the session fell back to {be.device}"))
                    continue
                probs = be.predict(batch)
                agree = _agreement(ref, probs)
                cps = _throughput(be.predict, _tile(batch, args.batch), args.seconds)
                checks.append(Check(label + " vs ORT CPU FP32", _verdict(agree), agree, cps, f"batch {args.batch}"))
        except Exception as exc:  # noqa: BLE001 - report and carry on with the other checks
            checks.append(Check(label, "FAIL", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"))

    # -- native TensorRT engine --------------------------------------------------------------------
    missing = []
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        missing.append(f"tensorrt ({type(exc).__name__}: {exc})")
    try:
        import pycuda.driver  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        missing.append(f"pycuda ({type(exc).__name__}: {exc})")
    if missing or not cuda:
        why = "; ".join(missing) + ("; " if missing and not cuda else "") + ("no CUDA device" if not cuda else "")
        checks.append(Check("TensorRT FP16 engine", "SKIP", note=f"cannot build or run engines: {why} (`pip install wbc-deploy[trt]` on a CUDA machine)"))
    else:
        from ..runtime.trt_backend import TrtBackend
        from .tensorrt_build import TrtBuildOptions, build_engine

        engine_path = work / "model.engine"
        try:
            t0 = time.perf_counter()
            opts = TrtBuildOptions(min_batch=1, opt_batch=args.batch, max_batch=max(args.batch, 256),
                                   workspace_mb=args.workspace_mb, timing_cache=work / "timing.cache")
            info = build_engine(onnx_path, engine_path, exported.card, opts)
            build_s = time.perf_counter() - t0
            with TrtBackend(engine_path) as be:
                probs = be.predict(batch)
                agree = _agreement(ref, probs)
                timed = _tile(batch, args.batch)
                cps = _throughput(be.predict, timed, args.seconds)
                stream = [timed] * 16
                t0 = time.perf_counter()
                for _ in be.predict_many(stream):
                    pass
                piped = 16 * args.batch / (time.perf_counter() - t0)
            checks.append(Check("TensorRT FP16 engine vs ORT CPU FP32", _verdict(agree), agree, cps,
                                f"built in {build_s:.0f} s, TensorRT {info.tensorrt_version}, {info.gpu_name}; "
                                f"predict_many (double-buffered): {piped:.0f} cells/s"))
        except Exception as exc:  # noqa: BLE001
            checks.append(Check("TensorRT FP16 engine", "FAIL", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="wbcnet", help="architecture to export with random weights (default wbcnet, 224 px)")
    parser.add_argument("--model", help="a RUN directory or .safetensors checkpoint instead of a random-init --arch")
    parser.add_argument("--images", type=int, default=0, help="synthetic cells to compare on (default 256 on CUDA, 16 on CPU)")
    parser.add_argument("--batch", type=int, default=64, help="batch size for timing (default 64)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per throughput measurement (default 3)")
    parser.add_argument("--workspace-mb", type=int, default=4096, help="TensorRT workspace limit")
    parser.add_argument("--out", help="working folder for the ONNX model and engine (default: a temporary folder)")
    args = parser.parse_args(argv)

    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    checks = run_checks(args, lambda msg: console.print(f"[dim]-[/dim] {msg}", highlight=False))
    table = Table(title=f"GPU check (top-1 agreement limit {100 * MIN_AGREEMENT:g}%)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("check", "result", "top-1", "cells/s", "notes"):
        table.add_column(col, justify="right" if col in ("top-1", "cells/s") else "left")
    colours = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow", "INFO": "dim"}
    for c in checks:
        note = "see below" if c.status == "SKIP" else c.note
        table.add_row(c.name, f"[{colours[c.status]}]{c.status}[/]", "" if c.agreement is None else f"{100 * c.agreement:.2f}%",
                      "" if c.cells_per_s is None else f"{c.cells_per_s:.0f}", escape(note))
    console.print(table)
    for c in checks:
        if c.status == "SKIP":
            console.print(f"[yellow]could not run[/] {escape(c.name)}: {escape(c.note)}", highlight=False)
    failed = [c for c in checks if c.status == "FAIL"]
    console.print("[bold red]FAILED[/]: " + ", ".join(c.name for c in failed) if failed else "[green]all checks that could run passed[/]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
