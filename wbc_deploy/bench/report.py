"""Benchmark results: one record per backend and batch size, written as JSON, Markdown and a rich table."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import WbcError
from ..files import atomic_write_text

SCHEMA = "wbc-deploy/model-throughput/1"
#: Keys every result object carries (None where a backend did not run).
RESULT_KEYS = (
    "backend", "runtime", "precision", "device", "batch_size", "status", "cells_per_s", "latency_ms_p50",
    "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "iterations", "warmup", "measured_s",
    "gflops_per_cell", "gflops_per_s", "peak_fraction", "other_load_cores", "speedup_vs_torch",
    "speedup_vs_ort", "top1_agreement_vs_fp32", "max_abs_diff_vs_fp32",
)


@dataclass
class Result:
    """One backend at one batch size. ``status`` is ``ok`` or why it did not run."""

    backend: str
    runtime: str
    precision: str
    device: str
    batch_size: int
    status: str = "ok"
    cells_per_s: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_mean: float | None = None
    iterations: int | None = None
    warmup: int | None = None
    measured_s: float | None = None
    gflops_per_cell: float | None = None
    gflops_per_s: float | None = None
    peak_fraction: float | None = None
    other_load_cores: float | None = None
    speedup_vs_torch: float | None = None
    speedup_vs_ort: float | None = None
    top1_agreement_vs_fp32: float | None = None
    max_abs_diff_vs_fp32: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    artefact: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchmarkReport:
    """A whole benchmark run: machine, model, settings, results, comparisons and notes."""

    machine: dict[str, Any]
    model: dict[str, Any]
    settings: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    ort_tuning: list[dict[str, Any]] = field(default_factory=list)
    artefacts: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    created: str = ""

    def result(self, backend: str, batch_size: int) -> Result | None:
        return next((r for r in self.results if r.backend == backend and r.batch_size == batch_size), None)

    def comparisons(self) -> list[dict[str, Any]]:
        """Speed-ups at each batch size: ort over torch, ort over ort-default, fp16/int8 over ort."""
        pairs = (("ort", "torch"), ("ort", "ort-default"), ("ort-int8", "ort"), ("ort-fp16", "ort"),
                 ("ort-int8", "torch"), ("torch-nhwc", "torch"), ("trt", "torch-cuda"), ("ort-trt", "ort-cuda"))
        out = []
        for fast, base in pairs:
            for r in self.results:
                if r.backend != fast or not r.ok:
                    continue
                b = self.result(base, r.batch_size)
                if b is not None and b.ok and b.cells_per_s:
                    out.append({"batch_size": r.batch_size, "backend": fast, "baseline": base,
                                "speedup": round(r.cells_per_s / b.cells_per_s, 3)})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created": self.created,
            "machine": self.machine,
            "model": self.model,
            "settings": self.settings,
            "results": [r.to_dict() for r in self.results],
            "comparisons": self.comparisons(),
            "ort_tuning": self.ort_tuning,
            "int8_accuracy": self.accuracy,
            "artefacts": self.artefacts,
            "notes": self.notes,
        }


def _write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError as exc:
        raise WbcError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_json(report: BenchmarkReport, path: str | Path) -> Path:
    """Write the report as JSON (atomically)."""
    _write_atomic(Path(path), json.dumps(report.to_dict(), indent=2) + "\n")
    return Path(path)


# -- formatting ---------------------------------------------------------------------------------------
def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def table_rows(report: BenchmarkReport) -> list[list[str]]:
    """The rows the rich table and the Markdown table share."""
    rows = []
    for r in report.results:
        if r.ok:
            rows.append([
                r.backend, r.precision, r.device, str(r.batch_size), _f(r.cells_per_s, ".2f"),
                _ms(r.latency_ms_p50), _ms(r.latency_ms_p90), _ms(r.latency_ms_p99),
                _f(r.gflops_per_s, ".1f"), _pct(r.peak_fraction), _x(r.speedup_vs_torch), _x(r.speedup_vs_ort),
                _pct(r.top1_agreement_vs_fp32), _f(r.other_load_cores, ".2f"), "ok",
            ])
        else:
            rows.append([r.backend, r.precision, r.device, str(r.batch_size), *["-"] * 10, r.status])
    return rows


HEADERS = ["backend", "precision", "device", "batch", "cells/s", "p50 ms", "p90 ms", "p99 ms", "GFLOP/s",
           "% FP32 peak", "vs torch", "vs ort", "top-1 = fp32", "other load", "status"]


#: (header, index into a :func:`table_rows` row) of the terminal table: the Markdown/JSON carry every column.
RICH_COLUMNS = [("backend", 0), ("batch", 3), ("cells/s", 4), ("p50\nms", 5), ("p99\nms", 7), ("GFLOP\n/s", 8),
                ("% FP32\npeak", 9), ("vs\ntorch", 10), ("top-1\n=fp32", 12), ("busy", 13)]


def rich_table(report: BenchmarkReport) -> Table:
    """The results that ran as a rich table (see :func:`not_run_table` for the others)."""
    m = report.model
    table = Table(title=f"Model throughput: {m.get('arch')} at {m.get('input_size')} px, "
                        f"{m.get('gflops_per_cell') or '?'} GFLOPs/cell", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), show_edge=False, caption="busy: CPU cores other processes used while measuring; p90, vs ort: see the JSON/Markdown",
                  caption_justify="left")
    for i, (h, _idx) in enumerate(RICH_COLUMNS):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for r, row in zip(report.results, table_rows(report)):
        if r.ok:
            table.add_row(*(escape(row[idx]) for _h, idx in RICH_COLUMNS))
    return table


def not_run(report: BenchmarkReport) -> list[tuple[str, str]]:
    """(backend, reason) for every backend that did not run, once per distinct reason."""
    seen: list[tuple[str, str]] = []
    for r in report.results:
        if not r.ok and (r.backend, r.status) not in seen:
            seen.append((r.backend, r.status))
    return seen


def not_run_table(report: BenchmarkReport) -> Table | None:
    """The backends that did not run, with the reason (None when all ran)."""
    rows = not_run(report)
    if not rows:
        return None
    table = Table(title="Not run on this machine", title_justify="left")
    table.add_column("backend", no_wrap=True)
    table.add_column("batch sizes", no_wrap=True)
    table.add_column("reason")
    for backend, status in rows:
        sizes = [str(r.batch_size) for r in report.results if r.backend == backend and r.status == status]
        table.add_row(escape(backend), ",".join(sizes), escape(status))
    return table


def markdown(report: BenchmarkReport) -> str:
    """A Markdown section: machine line, settings, the results table and the notes."""
    m, mach, s = report.model, report.machine, report.settings
    peak = mach.get("cpu_fp32_peak", {})
    gpus = ", ".join(mach.get("gpus") or []) or "none"
    v = mach.get("versions", {})
    lines = [
        f"### Model throughput: `{m.get('arch')}` at {m.get('input_size')} px ({m.get('gflops_per_cell')} GFLOPs/cell)",
        "",
        f"- Machine: {mach.get('cpu_model')}, {mach.get('physical_cores')} physical cores / {mach.get('logical_cpus')} logical CPUs, "
        f"ISA {' '.join(mach.get('isa_flags') or [])}; GPU: {gpus}; {mach.get('os')}",
        f"- FP32 peak estimate: {peak.get('gflops')} GFLOP/s = {peak.get('formula')} ({peak.get('assumptions')})",
        f"- Versions: python {mach.get('python')}, numpy {v.get('numpy')}, onnxruntime {v.get('onnxruntime')}, torch {v.get('torch')}, wbc-deploy {v.get('wbc_deploy')}",
        f"- Load average (1 min): {mach.get('load_avg_1m_start')} at start, {mach.get('load_avg_1m_end')} at end; "
        "`other load` = CPU cores' worth of work other processes did during each measurement",
        f"- Weights: {m.get('weights')}",
        f"- Threads {s.get('threads')}, {s.get('seconds')} s per point (at least {s.get('min_iters')} calls), "
        f"{s.get('warmup')} warm-up calls excluded; the same input batch for every backend; created {report.created}",
        "- ONNX Runtime CPU sessions: " + "; ".join(
            f"{prec}: {cfg.get('label')}" for prec, cfg in (s.get("ort_session") or {}).items())
        + (" (chosen by the settings sweep below)" if s.get("tuned") else "") + "; ort-default: SessionOptions() untouched",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join("---:" if 3 <= i <= 13 else "---" for i in range(len(HEADERS))) + "|",
    ]
    for row in table_rows(report):
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    comps = report.comparisons()
    if comps:
        lines += ["", "Speed-ups (cells/s ratio, same run): " + "; ".join(
            f"{c['backend']} / {c['baseline']} at batch {c['batch_size']}: {c['speedup']:.2f}x" for c in comps)]
    if report.ort_tuning:
        lines += ["", "ONNX Runtime CPU settings sweep (FP32 unless noted):", "",
                  "| model | settings | batch | cells/s | p50 ms | other load | status |", "|---|---|---:|---:|---:|---:|---|"]
        for p in report.ort_tuning:
            lines.append(f"| {p.get('model', 'fp32')} | {p['label']} | {p['batch_size']} | {_f(p['cells_per_s'], '.2f')} | "
                         f"{_f(p['latency_ms_p50'], '.1f')} | {_f(p['other_load_cores'], '.2f')} | {p['status']} |")
    if report.notes:
        lines += ["", *[f"- {n}" for n in report.notes]]
    return "\n".join(lines) + "\n"


def write_markdown(report: BenchmarkReport, path: str | Path) -> Path:
    """Write :func:`markdown` to ``path`` (atomically)."""
    _write_atomic(Path(path), markdown(report))
    return Path(path)


def ensure_writable(*paths: str | Path | None) -> None:
    """Fail fast (before a long benchmark) when an output cannot be written."""
    for p in paths:
        if p is None:
            continue
        path = Path(p)
        if path.is_dir():
            raise WbcError(f"{path} is a directory: pass a file name for the output")
        parent = path.parent if str(path.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WbcError(f"cannot create the folder for {path}: {exc.strerror or exc}") from None
        if not os.access(parent, os.W_OK):
            raise WbcError(f"cannot write {path}: {parent} is not writable")
