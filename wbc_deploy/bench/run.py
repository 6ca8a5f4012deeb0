"""``run_benchmark``: every requested backend at every batch size, on the same input, into one report."""
from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..console import make_progress, warn
from ..errors import WbcError
from .artefacts import Artefacts, default_cache_dir, resolve_source
from .backends import DEFAULT_BACKENDS, SPECS, Runner, build_runner, unavailable_reason
from ..converters.int8_cpu import Int8Recipe
from .machine import load_average, machine_info, physical_cores
from .ort_settings import OrtSettings, best_of, sweep, sweep_candidates, tuned_settings
from .report import BenchmarkReport, Result
from .timing import measure

#: Other processes using more than this many cores during a point marks the run as contaminated.
CONTAMINATION_CORES = 0.25


@dataclass
class BenchmarkConfig:
    """Everything ``wbc-deploy benchmark`` takes (see the CLI help for each)."""

    model: str
    checkpoint: str | Path | None = None
    backends: Sequence[str] = DEFAULT_BACKENDS
    batch_sizes: Sequence[int] = (1, 8, 32, 64, 128)
    seconds: float = 10.0
    warmup: int = 2
    min_iters: int = 3
    threads: int | None = None
    cache_dir: str | Path | None = None
    calib_dir: str | Path | None = None
    int8_recipe: Int8Recipe = field(default_factory=Int8Recipe)
    ort_settings: OrtSettings | None = None
    agreement_cells: int = 32
    tune: bool = False
    tune_batch: int = 16
    input_seed: int = 0
    int8_accuracy_per_class: int = 0  # > 0: also measure FP32 vs INT8 OA on this many synthetic test cells per class
    cpu_ghz: float | None = None  # clock for the FP32 peak estimate (default: what the OS reports)

    def validate(self) -> None:
        if not self.backends:
            raise WbcError("no backends to benchmark: pass --backends, e.g. ort,torch")
        unknown = [b for b in self.backends if b not in SPECS]
        if unknown:
            raise WbcError(f"unknown benchmark backend {unknown[0]!r}; choose from: {', '.join(SPECS)}")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise WbcError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.seconds <= 0:
            raise WbcError(f"--seconds must be positive, got {self.seconds}")
        if self.warmup < 0 or self.min_iters < 1:
            raise WbcError("--warmup must be >= 0 and --min-iters >= 1")
        if self.threads is not None and self.threads < 1:
            raise WbcError(f"--threads must be at least 1, got {self.threads}")
        if self.agreement_cells < 0:
            raise WbcError("--agreement-cells must be >= 0")
        if self.cpu_ghz is not None and not 0.1 <= self.cpu_ghz <= 10:
            raise WbcError(f"--cpu-ghz must be a clock in GHz (0.1..10), got {self.cpu_ghz}")
        if self.int8_accuracy_per_class < 0:
            raise WbcError("--int8-accuracy must be >= 0")


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32] (sorted, unique); WbcError naming the bad item."""
    out: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise WbcError(f"--batch-sizes takes comma-separated integers, got {item!r}") from None
        if value < 1:
            raise WbcError(f"batch sizes must be at least 1, got {value}")
        out.add(value)
    if not out:
        raise WbcError("--batch-sizes is empty; e.g. --batch-sizes 1,8,32")
    return sorted(out)


def benchmark_input(card: Any, n: int, seed: int = 0, distinct: int = 16) -> tuple[np.ndarray, str]:
    """The N x 3 x S x S input every backend gets: ``distinct`` synthetic cells, tiled to ``n`` rows."""
    from ..converters.images import sample_batch

    k = max(1, min(int(n), int(distinct)))
    cells, _desc = sample_batch(card, None, n=k, seed=seed)
    reps = -(-int(n) // k)
    batch = np.ascontiguousarray(np.tile(cells, (reps, 1, 1, 1))[:n], dtype=np.float32)
    return batch, f"{k} synthetic cells (seed {seed}) tiled to {n} rows"


def model_gflops(card: Any) -> float | None:
    """FLOPs per cell (multiply-add = 2) of the card's architecture, from the model registry."""
    try:
        from ..model import summarise

        s = summarise(card.arch, attention=card.attention, input_size=int(card.input_size),
                      num_classes=len(card.classes), **dict(card.arch_options))
    except Exception:  # noqa: BLE001 - torch missing or an unregistered architecture
        return None
    return round(float(s.gflops), 4)


def _predict_all(runner: Runner, batch: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate([runner.predict(np.ascontiguousarray(batch[i : i + chunk])) for i in range(0, batch.shape[0], chunk)])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:240]}" if text else type(exc).__name__


def run_benchmark(config: BenchmarkConfig, quiet: bool = False) -> BenchmarkReport:
    """Time every backend of ``config`` at every batch size; never raises for a backend that fails.

    Backends that cannot run on this machine get one result per batch size whose ``status`` is the
    reason; a backend that fails while preparing or running gets ``failed: ...``.
    """
    config.validate()
    batch_sizes = sorted({int(b) for b in config.batch_sizes})
    threads = int(config.threads or physical_cores())
    machine = machine_info(ghz=config.cpu_ghz)
    peak = machine["cpu_fp32_peak"]["gflops"] or None
    source = resolve_source(config.model, config.checkpoint)
    card = source.card
    artefacts = Artefacts(source, Path(config.cache_dir or default_cache_dir()), config.int8_recipe,
                          Path(config.calib_dir) if config.calib_dir else None)
    gflops = model_gflops(card)
    base_settings = config.ort_settings or tuned_settings(threads)
    if config.ort_settings is not None and not config.ort_settings.intra_op_threads:
        base_settings = replace(config.ort_settings, intra_op_threads=threads)
    settings_by_precision: dict[str, OrtSettings] = {"fp32": base_settings, "fp16": base_settings, "int8": base_settings}

    report = BenchmarkReport(
        machine=machine,
        model={**source.to_dict(), "gflops_per_cell": gflops, "params": card.params},
        settings={},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    max_batch = batch_sizes[-1]
    inputs, input_desc = benchmark_input(card, max_batch, seed=config.input_seed)
    reasons = {name: unavailable_reason(name) for name in config.backends}
    runnable = [n for n in config.backends if reasons[n] is None]

    tuning_notes: list[str] = []
    with make_progress(quiet) as progress:
        # -- optional re-tuning of the ORT CPU session on this machine ----------------------------
        if config.tune and any(SPECS[n].runtime == "onnxruntime" and SPECS[n].device == "cpu" for n in runnable):
            tb = min(config.tune_batch, max_batch)
            targets = [("fp32", artefacts.onnx_fp32)]
            if "ort-int8" in runnable:
                targets.append(("int8", artefacts.onnx_int8))
            for precision, get_path in targets:
                try:
                    path = get_path()
                except Exception as exc:  # noqa: BLE001 - reported in the backend's own row later
                    warn(f"ORT tuning of the {precision} model skipped: {_first_line(exc)}")
                    continue
                cands = sweep_candidates(threads, machine["logical_cpus"], quantised=precision == "int8")
                task = progress.add_task(f"tuning ORT ({precision}, batch {tb})", total=len(cands))
                points = sweep(path, inputs[:tb], cands, seconds=max(1.0, config.seconds / 2), warmup=1,
                               min_iters=config.min_iters, on_point=lambda _p, t=task: progress.advance(t))
                report.ort_tuning += [{"model": precision, **p.to_dict()} for p in points]
                busy = max((p.timing.other_load_cores or 0.0 for p in points if p.timing), default=0.0)
                best = best_of(points)
                if best is not None and busy > CONTAMINATION_CORES:
                    tuning_notes.append(f"ORT sweep ({precision}) not applied: other processes used up to {busy:.2f} CPU cores "
                                        f"during it, so its winner ({best.label}) reflects the contention, not the machine")
                elif best is not None:
                    settings_by_precision[precision] = best
                    if precision == "fp32":
                        settings_by_precision["fp16"] = best

        # -- the FP32 reference for agreement ----------------------------------------------------
        agree_x = reference = None
        ref_classes = 0
        if config.agreement_cells > 0 and runnable:
            try:
                from ..converters.images import sample_batch

                agree_x, _ = sample_batch(card, None, n=config.agreement_cells, seed=config.input_seed + 7)
                ref_runner = build_runner("ort", artefacts, threads, settings_by_precision["fp32"], max_batch)
                reference = _predict_all(ref_runner, agree_x, min(max_batch, 16))
                ref_runner.close()
                ref_classes = int(len(np.unique(reference.argmax(1))))
            except Exception as exc:  # noqa: BLE001
                warn(f"no FP32 reference for agreement figures: {_first_line(exc)}")
                reference = None

        task = progress.add_task("benchmark", total=len(config.backends) * len(batch_sizes))
        for name in config.backends:
            spec = SPECS[name]
            base = {"backend": name, "runtime": spec.runtime, "precision": spec.precision, "device": spec.device}
            if reasons[name] is not None:
                for b in batch_sizes:
                    report.results.append(Result(**base, batch_size=b, status=reasons[name]))
                progress.advance(task, len(batch_sizes))
                continue
            progress.update(task, description=f"{name}: preparing")
            try:
                runner = build_runner(name, artefacts, threads, settings_by_precision[spec.precision], max_batch)
            except Exception as exc:  # noqa: BLE001 - one backend failing must not lose the others
                status = f"failed: {exc}" if isinstance(exc, WbcError) else f"failed: {_first_line(exc)}"
                for b in batch_sizes:
                    report.results.append(Result(**base, batch_size=b, status=status))
                progress.advance(task, len(batch_sizes))
                continue
            agreement = max_diff = None
            if reference is not None and agree_x is not None:
                try:
                    probs = _predict_all(runner, agree_x, min(max_batch, 16))
                    agreement = round(float((probs.argmax(1) == reference.argmax(1)).mean()), 4)
                    max_diff = float(np.abs(probs.astype(np.float64) - reference).max())
                except Exception as exc:  # noqa: BLE001
                    warn(f"{name}: agreement check failed: {_first_line(exc)}")
            for b in batch_sizes:
                progress.update(task, description=f"{name}: batch {b}")
                x = np.ascontiguousarray(inputs[:b])
                try:
                    t = measure(lambda: runner.predict(x), config.seconds, config.warmup, config.min_iters)
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large batch
                    report.results.append(Result(**base, batch_size=b, status=f"failed: {_first_line(exc)}"))
                    progress.advance(task)
                    continue
                cps = t.items_per_s(b)
                gps = cps * gflops if gflops else None
                report.results.append(Result(
                    **base, batch_size=b, status="ok", cells_per_s=round(cps, 4),
                    latency_ms_p50=round(t.percentile_ms(50), 3), latency_ms_p90=round(t.percentile_ms(90), 3),
                    latency_ms_p99=round(t.percentile_ms(99), 3), latency_ms_mean=round(t.mean_ms, 3),
                    iterations=t.iterations, warmup=t.warmup, measured_s=round(t.total_s, 6),
                    gflops_per_cell=gflops, gflops_per_s=None if gps is None else round(gps, 4),
                    peak_fraction=None if (gps is None or spec.device != "cpu" or not peak) else round(gps / peak, 6),
                    other_load_cores=t.other_load_cores, top1_agreement_vs_fp32=agreement, max_abs_diff_vs_fp32=max_diff,
                    settings={**runner.settings, "device": runner.device}, artefact=runner.artefact,
                ))
                progress.advance(task)
            runner.close()
        progress.update(task, description="benchmark done")

        if config.int8_accuracy_per_class > 0:
            acc_task = progress.add_task("INT8 accuracy (FP32 vs INT8 OA)", total=1)
            try:
                from .accuracy import int8_accuracy

                report.accuracy = int8_accuracy(artefacts, config.int8_recipe, per_class=config.int8_accuracy_per_class, threads=threads)
            except Exception as exc:  # noqa: BLE001 - the timings above stay valid
                report.accuracy = {"status": f"failed: {exc}" if isinstance(exc, WbcError) else f"failed: {_first_line(exc)}"}
            progress.advance(acc_task)

    _fill_speedups(report)
    report.machine["load_avg_1m_end"] = load_average()
    report.artefacts = {"cache_dir": str(artefacts.dir), **artefacts.notes}
    report.settings = {
        "backends": list(config.backends), "batch_sizes": batch_sizes, "seconds": config.seconds,
        "warmup": config.warmup, "min_iters": config.min_iters, "threads": threads,
        "input": input_desc, "agreement_cells": config.agreement_cells if reference is not None else 0,
        "agreement_reference_classes": ref_classes,
        "ort_session": {k: v.to_dict() for k, v in settings_by_precision.items()},
        "int8_recipe": config.int8_recipe.to_dict(), "tuned": bool(config.tune),
    }
    report.notes += _notes(report, source) + tuning_notes
    return report


def _fill_speedups(report: BenchmarkReport) -> None:
    for r in report.results:
        if not r.ok:
            continue
        for base, attr in (("torch", "speedup_vs_torch"), ("ort", "speedup_vs_ort")):
            b = report.result(base, r.batch_size)
            if b is not None and b.ok and b.cells_per_s and r.backend != base:
                setattr(r, attr, round(r.cells_per_s / b.cells_per_s, 3))


def _notes(report: BenchmarkReport, source: Any) -> list[str]:
    notes = [f"Weights: {source.weights}."]
    loads = [r.other_load_cores for r in report.results if r.ok and r.other_load_cores is not None]
    if loads and max(loads) > CONTAMINATION_CORES:
        notes.append(f"CONTAMINATED: other processes used up to {max(loads):.2f} CPU cores during measurements "
                     f"(load average {report.machine.get('load_avg_1m_start')} -> {report.machine.get('load_avg_1m_end')}); "
                     "rerun on an idle machine before quoting these figures.")
    peak = report.machine.get("cpu_fp32_peak", {})
    fp32_cpu = [r for r in report.results if r.ok and r.device == "cpu" and r.precision == "fp32" and r.gflops_per_s]
    if fp32_cpu and peak.get("gflops") and max(r.gflops_per_s for r in fp32_cpu) > peak["gflops"]:
        best = max(fp32_cpu, key=lambda r: r.gflops_per_s)
        implied = best.gflops_per_s / (peak["cores"] * peak["flops_per_cycle"])
        notes.append(f"{best.backend} at batch {best.batch_size} achieved {best.gflops_per_s:.0f} GFLOP/s, above the FP32 peak estimated at "
                     f"{peak['ghz']} GHz ({peak['gflops']} GFLOP/s): the cores run at >= {implied:.2f} GHz (turbo above the reported "
                     "clock); pass --cpu-ghz with the real all-core clock for a tighter peak.")
    if any(r.backend == "ort-fp16" and r.ok and r.device == "cpu" for r in report.results):
        notes.append("ort-fp16 on a CPU: ONNX Runtime's x86 CPU provider has few FP16 kernels and inserts casts; "
                     "FP16 is for GPUs (ort-cuda/ort-trt/trt), listed here for completeness.")
    if any(r.top1_agreement_vs_fp32 is not None for r in report.results):
        notes.append(f"top-1 = fp32: share of {report.settings.get('agreement_cells') or 'the'} synthetic cells on which a backend's "
                     f"top-1 class equals ONNX Runtime FP32's (FP32 predicted {report.settings.get('agreement_reference_classes')} "
                     "distinct classes on them); with random-init weights this is a weak proxy for accuracy, see int8 accuracy.")
    acc = report.accuracy
    if acc.get("oa_fp32") is not None:
        notes.append(f"INT8 accuracy: OA {100 * acc['oa_fp32']:.1f}% (FP32) vs {100 * acc['oa_int8']:.1f}% (INT8), "
                     f"{acc['oa_loss_points']:+.2f} points lost, top-1 agreement {100 * acc['top1_agreement']:.1f}%, "
                     f"{acc['test_cells']} synthetic test cells; {acc['method']}.")
    elif acc.get("status"):
        notes.append(f"INT8 accuracy not measured: {acc['status']}")
    return notes
