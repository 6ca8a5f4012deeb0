"""Runtime-vs-runtime comparison, Polygraphy style: max/mean |diff|, top-1 agreement, tolerance, PASS/FAIL.

How logits are compared although the deployed graph outputs probabilities: verification loads an
in-memory copy of the *exported file* in which the pre-softmax tensor (the input of the final Softmax)
is declared as a second graph output. No node is added or changed, so the logits compared are those
the deployed graph computes, and the top-1 class is taken from its ``probabilities`` output. Comparing
log-probabilities instead would lose precision where a probability underflows, and exporting a second
graph would verify a file that is not deployed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.table import Table

from ..errors import WbcError

#: Acceptance for FP32 ONNX vs PyTorch (issue 3): max |logit diff| and top-1 agreement.
LOGIT_ATOL = 1e-4
MIN_AGREEMENT_FP32 = 1.0


@dataclass
class Comparison:
    """One runtime pair on one input set. ``tolerance``/``min_agreement`` None: reported, not checked."""

    reference: str
    candidate: str
    data: str
    quantity: str
    n: int
    max_abs: float
    mean_abs: float
    top1_agreement: float
    tolerance: float | None = None
    min_agreement: float | None = None

    @property
    def passed(self) -> bool | None:
        if self.tolerance is None and self.min_agreement is None:
            return None
        ok = True
        if self.tolerance is not None:
            ok &= self.max_abs <= self.tolerance
        if self.min_agreement is not None:
            ok &= self.top1_agreement >= self.min_agreement
        return bool(ok)

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "info"}[self.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    reference_name: str,
    candidate_name: str,
    data: str,
    quantity: str,
    tolerance: float | None = None,
    min_agreement: float | None = None,
    reference_top1: np.ndarray | None = None,
    candidate_top1: np.ndarray | None = None,
) -> Comparison:
    """Element-wise |diff| statistics and top-1 agreement of two N x C arrays."""
    if reference.shape != candidate.shape:
        raise WbcError(f"{candidate_name} returned shape {candidate.shape}, {reference_name} {reference.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    ref_top = reference.argmax(1) if reference_top1 is None else reference_top1
    cand_top = candidate.argmax(1) if candidate_top1 is None else candidate_top1
    n = int(reference.shape[0])
    return Comparison(
        reference=reference_name,
        candidate=candidate_name,
        data=data,
        quantity=quantity,
        n=n,
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=float((ref_top == cand_top).mean()) if n else 1.0,
        tolerance=tolerance,
        min_agreement=min_agreement,
    )


# -- ONNX Runtime sessions ---------------------------------------------------------------------------
def cpu_session(model: str | Path | bytes, threads: int | None = None) -> Any:
    """A CPU ONNX Runtime session (ORT's defaults: full graph optimisation) on a file or serialised model."""
    from ..runtime.ort_options import default_settings, ort_session

    return ort_session(model, replace(default_settings(), label="verify", intra_op_threads=threads))


def logits_exposing_model(onnx_path: str | Path) -> tuple[bytes, str]:
    """The exported model with its pre-softmax tensor added as a graph output: (serialised model, name)."""
    import onnx

    from .onnx_meta import logits_tensor_name

    proto = onnx.load(str(onnx_path))
    name = logits_tensor_name(proto)
    if name not in [o.name for o in proto.graph.output]:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return proto.SerializeToString(), name


def run_session(session: Any, batch: np.ndarray, outputs: Sequence[str], batch_size: int = 16) -> list[np.ndarray]:
    """Run ``session`` over ``batch`` in chunks; one concatenated array per requested output."""
    in_name = session.get_inputs()[0].name
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for i in range(0, batch.shape[0], batch_size):
        res = session.run(list(outputs), {in_name: np.ascontiguousarray(batch[i : i + batch_size], dtype=np.float32)})
        for store, arr in zip(parts, res):
            store.append(arr)
    return [np.concatenate(p, axis=0) for p in parts]


def random_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` standard-normal inputs (the range normalised crops live in, and beyond)."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def verify_onnx_against_torch(
    model: Any,
    onnx_path: str | Path,
    real: np.ndarray,
    real_desc: str,
    *,
    n_random: int = 8,
    atol: float = LOGIT_ATOL,
    seed: int = 0,
    batch_size: int = 16,
    threads: int | None = None,
) -> list[Comparison]:
    """PyTorch (eager, CPU, FP32) vs ONNX Runtime (CPU, FP32) on real and random inputs.

    Each row passes when max |logit diff| <= ``atol`` and top-1 agreement is 100%.
    """
    from .onnx_export import OUTPUT_NAME, torch_logits

    serialised, logits_name = logits_exposing_model(onnx_path)
    session = cpu_session(serialised, threads=threads)
    size = real.shape[-1] if real.size else session.get_inputs()[0].shape[-1]
    rows = []
    for data, batch in ((real_desc, real), (f"{n_random} random", random_batch(n_random, size, seed))):
        if batch.shape[0] == 0:
            continue
        ref = torch_logits(model, batch, batch_size=batch_size)
        logits, probs = run_session(session, batch, [logits_name, OUTPUT_NAME], batch_size=batch_size)
        rows.append(
            compare_outputs(
                ref, logits, reference_name="torch", candidate_name="ort fp32", data=data,
                quantity="logits", tolerance=atol, min_agreement=MIN_AGREEMENT_FP32, candidate_top1=probs.argmax(1),
            )
        )
    return rows


def compare_onnx_models(
    reference_onnx: str | Path,
    candidate_onnx: str | Path,
    batch: np.ndarray,
    data: str,
    *,
    reference_name: str = "ort fp32",
    candidate_name: str,
    min_agreement: float | None = None,
    batch_size: int = 16,
    threads: int | None = None,
) -> Comparison:
    """Probabilities of two ONNX models (e.g. FP16 or INT8 vs FP32) on the same inputs, ORT CPU."""
    from .onnx_meta import OUTPUT_NAME

    ref = run_session(cpu_session(reference_onnx, threads), batch, [OUTPUT_NAME], batch_size)[0]
    cand = run_session(cpu_session(candidate_onnx, threads), batch, [OUTPUT_NAME], batch_size)[0]
    return compare_outputs(
        ref, cand, reference_name=reference_name, candidate_name=candidate_name, data=data,
        quantity="probs", min_agreement=min_agreement,
    )


def comparisons_table(rows: Sequence[Comparison], title: str = "Runtime comparison") -> Table:
    """A rich table: runtime, reference, inputs, quantity, max/mean |diff|, top-1 agreement, limits, result.

    ``limit`` reads "max |diff| / minimum top-1 agreement" for checked rows; unchecked rows say ``info``.
    """
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for col, kw in (
        ("runtime", {}), ("vs", {}), ("inputs", {}), ("of", {}), ("max|d|", {"justify": "right"}),
        ("mean|d|", {"justify": "right"}), ("top-1", {"justify": "right"}), ("limit", {"min_width": 9}), ("check", {}),
    ):
        table.add_column(col, **kw)
    for r in rows:
        tol = []
        if r.tolerance is not None:
            tol.append(f"{r.tolerance:.0e}".replace("e-0", "e-"))
        if r.min_agreement is not None:
            tol.append(f"{100 * r.min_agreement:g}%")
        colour = {"PASS": "green", "FAIL": "bold red", "info": "dim"}[r.status]
        table.add_row(
            r.candidate, r.reference, r.data, r.quantity, f"{r.max_abs:.1e}", f"{r.mean_abs:.1e}",
            f"{100 * r.top1_agreement:.1f}%", "/".join(tol) or "-", f"[{colour}]{r.status}[/{colour}]",
        )
    return table


def failures_message(rows: Sequence[Comparison], what: str) -> str | None:
    """One line describing the failed rows, or None when every checked row passed."""
    failed = [r for r in rows if r.passed is False]
    if not failed:
        return None
    parts = []
    for r in failed:
        bits = []
        if r.tolerance is not None and r.max_abs > r.tolerance:
            bits.append(f"max |{r.quantity} diff| {r.max_abs:.2e} > {r.tolerance:.0e}")
        if r.min_agreement is not None and r.top1_agreement < r.min_agreement:
            bits.append(f"top-1 agreement {100 * r.top1_agreement:.2f}% < {100 * r.min_agreement:g}%")
        parts.append(f"{r.candidate} vs {r.reference} on {r.data}: {'; '.join(bits)}")
    return f"{what} failed verification: " + " | ".join(parts)
