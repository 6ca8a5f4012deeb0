"""``wbc-deploy export``: one call that writes every requested artefact, verified, with a summary.

Artefacts for ``--out DIR`` (or ``--out name.onnx``: the same names with that stem):

* ``model.onnx``: FP32, always written (every other format derives from it);
* ``model.fp16.onnx`` (``--fp16``), ``model.int8.onnx`` (``--int8 --calib DIR``);
* ``model.engine`` + ``model.engine.json`` (``--trt``), and ``model.timing.<tensorrt>-<gpu>.cache`` reused by later builds on the same TensorRT and GPU;
* ``model.export.json``: the artefact table and every comparison, for scripts and benchmarks.

With ``--verify`` the FP32 model is staged under a temporary name, compared with PyTorch and moved into
place only when it passes; on failure nothing replaces an earlier good export and the call reports why.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..errors import WbcError
from .verify import Comparison, failures_message

#: Top-1 agreement a TensorRT FP16 engine must reach against ONNX Runtime FP32 when verified.
MIN_TRT_AGREEMENT = 0.995


@dataclass
class ExportOptions:
    """What ``export_model`` writes and checks (see the CLI help for each)."""

    fp16: bool = False
    int8: bool = False
    trt: bool = False
    verify: bool = False
    calib: Path | None = None
    data: Path | None = None
    opset: int = 17
    exporter: str = "torchscript"
    n_verify: int = 64
    n_random: int = 8
    n_calib: int = 128
    int8_format: str = "qdq"
    int8_activation: str = "uint8"
    int8_bn_as_conv: bool = True
    trt_min_batch: int = 1
    trt_opt_batch: int = 64
    trt_max_batch: int = 256
    trt_workspace_mb: int = 4096
    trt_int8: bool = False
    trt_timing_cache: Path | None = None
    device: int = 0
    seed: int = 0


@dataclass
class Artefact:
    """One written file and how it checked out."""

    format: str
    precision: str
    path: Path
    size_mb: float
    check: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass
class ExportReport:
    """Everything ``export_model`` did: artefacts, comparisons, and the failure if any."""

    source: Path
    card: ModelCard
    artefacts: list[Artefact] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failure: str | None = None

    def raise_for_failure(self) -> None:
        if self.failure:
            raise WbcError(self.failure)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "card": self.card.to_dict(),
            "artefacts": [a.to_dict() for a in self.artefacts],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "notes": self.notes,
            "failure": self.failure,
        }


def output_paths(out: str | Path) -> dict[str, Path]:
    """Artefact paths for ``--out``: a directory, or a ``.onnx`` file whose stem names the rest."""
    out = Path(out)
    if out.suffix.lower() == ".onnx":
        base, stem = out.parent, out.stem
    elif out.suffix:
        raise WbcError(f"--out {out}: give a directory or a .onnx file name")
    else:
        base, stem = out, "model"
    return {
        "onnx": base / f"{stem}.onnx",
        "fp16": base / f"{stem}.fp16.onnx",
        "int8": base / f"{stem}.int8.onnx",
        "engine": base / f"{stem}.engine",
        "timing_cache": base / f"{stem}.timing.cache",
        "report": base / f"{stem}.export.json",
    }


def count_steps(opts: ExportOptions, from_onnx: bool = False) -> int:
    """How many ``step`` calls :func:`export_model` makes for these options (for a progress bar)."""
    needs_data = opts.verify or opts.fp16 or opts.int8 or opts.trt
    return 1 + int(needs_data) + int(not from_onnx) + int(opts.verify) + int(opts.fp16) + int(opts.int8) + 2 * int(opts.trt)


def _size_mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 2)


def _load_source(model_path: Path) -> tuple[Any, ModelCard, str | None]:
    """(torch model or None, card, checkpoint sha256) for a RUN dir / .safetensors / .onnx."""
    if model_path.suffix.lower() == ".onnx":
        from .onnx_meta import read_onnx_card

        return None, read_onnx_card(model_path), None
    try:
        from ..files import sha256_file
        from ..trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
    except ImportError as exc:
        raise WbcError(f"exporting a checkpoint needs PyTorch (`pip install wbc-deploy[train]`): {exc}") from None
    model, card = load_checkpoint(model_path)
    weights = model_path / CHECKPOINT_NAME if model_path.is_dir() else model_path
    return model, card, card.checkpoint_sha256 or sha256_file(weights)


def export_model(
    model_path: str | Path,
    out: str | Path,
    options: ExportOptions | None = None,
    step: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export MODEL (RUN directory, ``.safetensors`` or an existing ``.onnx``) as ``options`` ask.

    ``step(description)`` is called before each stage (progress display). Verification failures are
    returned in ``report.failure`` (the CLI prints the tables, then the one-line error).
    """
    opts = options or ExportOptions()
    say = step or (lambda _msg: None)
    from ..zoo import find_bundled, resolve_model, unknown_model_message

    bundled = find_bundled(str(model_path)) if not Path(model_path).expanduser().exists() else None
    model_path = resolve_model(model_path, "torch" if bundled is not None and bundled.weights.is_file() else None)
    if not model_path.exists():
        raise WbcError(unknown_model_message(model_path))
    from .onnx_meta import EXPORTERS, MIN_OPSET
    from .quantize import QUANT_FORMATS

    if opts.opset < MIN_OPSET:
        raise WbcError(f"--opset {opts.opset} is too old: wbc-deploy exports opset {MIN_OPSET} or newer")
    if opts.exporter not in EXPORTERS:
        raise WbcError(f"unknown --exporter {opts.exporter!r}; choose one of: {', '.join(EXPORTERS)}")
    if opts.int8_format not in QUANT_FORMATS:
        raise WbcError(f"unknown --int8-format {opts.int8_format!r}; choose one of: {', '.join(QUANT_FORMATS)}")
    if opts.n_verify < 1 or opts.n_random < 0 or opts.n_calib < 1:
        raise WbcError("--n-images and --n-calib must be at least 1 and --n-random at least 0")
    if opts.int8 and opts.calib is None:
        raise WbcError("--int8 needs calibration images: add --calib DIR (a folder of cell crops, e.g. your training data)")
    if opts.trt_int8 and opts.calib is None:
        raise WbcError("a TensorRT INT8 engine needs calibration images: add --calib DIR")
    paths = output_paths(out)
    if opts.trt:  # fail before any work when TensorRT or the GPU is missing
        from ..runtime.trt_backend import gpu_identity, import_tensorrt

        import_tensorrt()
        gpu_identity(opts.device)
    paths["onnx"].parent.mkdir(parents=True, exist_ok=True)

    say(f"loading {model_path.name}")
    torch_model, card, ckpt_sha = _load_source(model_path)
    from_onnx = torch_model is None
    if opts.verify and from_onnx:
        raise WbcError("--verify compares ONNX Runtime with PyTorch: pass the RUN directory or .safetensors checkpoint, not an .onnx file")
    report = ExportReport(source=model_path, card=card)

    # Comparison data: real crops from --data / --calib, else synthetic cells.
    from .images import sample_batch

    data_dir = opts.data or opts.calib
    needs_data = opts.verify or opts.fp16 or opts.int8 or opts.trt
    real = desc = None
    if needs_data:
        say("loading comparison images")
        real, desc = sample_batch(card, data_dir, n=opts.n_verify, seed=opts.seed)

    # FP32 ONNX (staged when verified).
    onnx_path = paths["onnx"]
    if from_onnx:
        if model_path.resolve() != onnx_path.resolve():
            import shutil

            shutil.copyfile(model_path, onnx_path)
        deploy_card = card
        report.artefacts.append(Artefact("onnx", "fp32", onnx_path, _size_mb(onnx_path), "source model (not re-exported)", 0.0))
    else:
        from .onnx_export import export_onnx

        say(f"exporting {card.arch} to ONNX (opset {opts.opset})")
        staged = onnx_path.with_name(f".{onnx_path.name}.staged") if opts.verify else onnx_path
        exported = export_onnx(torch_model, card, staged, opset=opts.opset, exporter=opts.exporter, checkpoint_sha256=ckpt_sha)
        deploy_card = exported.card
        report.card = deploy_card
        check = f"not verified ({exported.exporter} exporter, opset {exported.opset})"
        if opts.verify:
            from .verify import verify_onnx_against_torch

            say("verifying ONNX Runtime against PyTorch")
            try:
                rows = verify_onnx_against_torch(torch_model, staged, real, desc, n_random=opts.n_random, seed=opts.seed)
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            report.comparisons.extend(rows)
            failure = failures_message(rows, f"the ONNX export of {model_path.name}")
            if failure:
                staged.unlink(missing_ok=True)
                report.failure = failure + f" ({onnx_path.name} was not written)"
                return report
            os.replace(staged, onnx_path)
            worst = max(r.max_abs for r in rows)
            check = f"PASS vs torch: |d| {worst:.0e}, top-1 100%"
        report.artefacts.append(Artefact("onnx", "fp32", onnx_path, _size_mb(onnx_path), check, round(exported.seconds, 2)))

    from .verify import compare_onnx_models

    if opts.fp16:
        from .quantize import convert_fp16

        say("converting to FP16")
        q = convert_fp16(onnx_path, paths["fp16"], deploy_card)
        row = compare_onnx_models(onnx_path, q.path, real, desc, candidate_name="ort fp16")
        report.comparisons.append(row)
        report.artefacts.append(
            Artefact("onnx", "fp16", q.path, _size_mb(q.path), f"top-1 {100 * row.top1_agreement:.1f}% vs fp32", round(q.seconds, 2))
        )

    if opts.int8:
        from .int8_cpu import Int8Recipe, quantize_for_cpu
        from ..preprocess import prepare_batch
        from .images import load_images

        say(f"calibrating INT8 on {opts.calib}")
        t0 = time.perf_counter()
        calib = prepare_batch(load_images(opts.calib, limit=opts.n_calib, seed=opts.seed), deploy_card)
        recipe = Int8Recipe(quant_format=opts.int8_format, activation_type=opts.int8_activation,
                            bn_as_conv=opts.int8_bn_as_conv, calib_images=int(calib.shape[0]))
        quantize_for_cpu(onnx_path, paths["int8"], deploy_card, calib, recipe)
        row = compare_onnx_models(onnx_path, paths["int8"], real, desc, candidate_name="ort int8")
        report.comparisons.append(row)
        report.artefacts.append(
            Artefact("onnx", f"int8-{opts.int8_format}", paths["int8"], _size_mb(paths["int8"]),
                     f"top-1 {100 * row.top1_agreement:.1f}% vs fp32 ({calib.shape[0]} calib)", round(time.perf_counter() - t0, 2))
        )

    if opts.trt:
        from .tensorrt_build import TrtBuildOptions, build_engine

        say("building the TensorRT engine")
        t0 = time.perf_counter()
        topts = TrtBuildOptions(
            min_batch=opts.trt_min_batch, opt_batch=opts.trt_opt_batch, max_batch=opts.trt_max_batch,
            workspace_mb=opts.trt_workspace_mb, fp16=True, int8=opts.trt_int8,
            timing_cache=opts.trt_timing_cache or paths["timing_cache"], device=opts.device,
        )
        calib = None
        if opts.trt_int8:
            from .images import load_images
            from ..preprocess import prepare_batch

            calib = prepare_batch(load_images(opts.calib, limit=opts.n_calib, seed=opts.seed), deploy_card)
        info = build_engine(onnx_path, paths["engine"], deploy_card, topts, calib)
        check = f"built for {info.gpu_name} (sm {info.compute_capability}), TensorRT {info.tensorrt_version}"
        say("comparing the engine with ONNX Runtime FP32")
        row = _compare_engine(onnx_path, paths["engine"], real, desc, opts.device, MIN_TRT_AGREEMENT if opts.verify else None)
        report.comparisons.append(row)
        check += f"; top-1 {100 * row.top1_agreement:.1f}% vs fp32"
        report.artefacts.append(Artefact("tensorrt", info.precision, paths["engine"], _size_mb(paths["engine"]), check,
                                         round(time.perf_counter() - t0, 2)))
        if row.passed is False:
            report.failure = failures_message([row], f"the TensorRT engine {paths['engine'].name}")

    for r in report.comparisons:
        flips = round((1 - r.top1_agreement) * r.n)
        if r.candidate != "ort fp32" and r.passed is None and flips > max(1, 0.01 * r.n):
            report.notes.append(f"{r.candidate} agrees with FP32 on only {100 * r.top1_agreement:.1f}% of {r.n} images: check it on labelled data with `wbc-deploy evaluate` before deploying")
    paths["report"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _compare_engine(onnx_path: Path, engine_path: Path, batch: np.ndarray, desc: str, device: int, min_agreement: float | None) -> Comparison:
    from ..runtime.trt_backend import TrtBackend
    from .onnx_meta import OUTPUT_NAME
    from .verify import compare_outputs, cpu_session, run_session

    ref = run_session(cpu_session(onnx_path), batch, [OUTPUT_NAME])[0]
    with TrtBackend(engine_path, device=device) as engine:
        cand = engine.predict(batch)
    return compare_outputs(
        ref, cand, reference_name="ort fp32", candidate_name=f"trt {engine.info.precision}", data=desc,
        quantity="probs", min_agreement=min_agreement,
    )
