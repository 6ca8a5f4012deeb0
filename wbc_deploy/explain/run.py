"""`wbc-deploy explain`: Grad-CAM heatmaps and overlays for a folder of cell images (needs torch).

Per image ``<stem>.cam.npy`` (float32, the image's height x width, 0..1) and ``<stem>.overlay.png``
(the image beside its heatmap overlay, with a colour bar, titled with the predicted class and its
confidence), plus ``explain.csv`` with one row per image. Unreadable images are skipped and reported.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..card import ModelCard
from ..errors import WbcError
from ..files import AtomicWriter, atomic_path, list_files, output_folder
from ..images import IMAGE_SUFFIXES, read_rgb

#: Model files Grad-CAM cannot use: they hold no gradients / no PyTorch graph.
NOT_EXPLAINABLE = {".onnx": "an ONNX model", ".engine": "a TensorRT engine", ".trt": "a TensorRT engine",
                   ".plan": "a TensorRT engine"}
CSV_NAME = "explain.csv"
CSV_COLUMNS = ("image", "predicted", "confidence", "target", "target_probability", "cam_empty", "cam_file", "overlay_file")


@dataclass
class ExplainResult:
    """What was written for one image."""

    image: Path
    stem: str
    predicted: str
    confidence: float
    target: str
    target_probability: float
    cam_path: Path
    overlay_path: Path
    empty: bool  # the Grad-CAM was zero everywhere (no positive evidence for the target at this layer)


@dataclass
class ExplainSummary:
    """The outcome of :func:`explain_images`."""

    out_dir: Path
    layer: str
    results: list[ExplainResult] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    csv_path: Path | None = None


def load_explainable(model_path: str | Path):
    """(model in eval mode, card) from a RUN directory or ``.safetensors`` checkpoint.

    ONNX files and TensorRT engines are refused with one line saying to pass the checkpoint: Grad-CAM
    needs the gradients of the PyTorch model.
    """
    path = Path(model_path).expanduser()
    kind = NOT_EXPLAINABLE.get(path.suffix.lower())
    if kind is None and path.is_file() and path.suffix.lower() == ".json" and path.with_suffix(".engine").exists():
        kind = "a TensorRT engine sidecar"
    if kind is not None:
        raise WbcError(f"{path.name} is {kind}, which cannot be explained (Grad-CAM needs the PyTorch model's gradients): "
                       "pass the training RUN directory or its model.safetensors instead")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise WbcError("explain needs the training stack (PyTorch): pip install 'wbc-deploy[train]'") from None
    from ..trainer.checkpoint import load_checkpoint

    return load_checkpoint(path)


def collect_images(inputs: Sequence[str | Path], exclude: str | Path | None = None) -> list[Path]:
    """Image files named directly or found (recursively, sorted, hidden files skipped) in the given folders.

    Files under ``exclude`` (the output folder) are not collected from folders, so a rerun with ``--out``
    inside an input folder does not explain its own overlays.
    """
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    found: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found += [f for f in list_files(p, IMAGE_SUFFIXES) if not (skip is not None and f.resolve().is_relative_to(skip))]
        elif p.is_file():
            found.append(p)
        else:
            raise WbcError(f"image or folder not found: {p}")
    if not found:
        raise WbcError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(str(i) for i in inputs)}")
    return found


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output stems: each file's stem, with ``-2``, ``-3``... appended where stems repeat."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        base = p.stem
        n = seen.get(base, 0) + 1
        seen[base] = n
        stems.append(base if n == 1 else f"{base}-{n}")
    return stems


def explain_images(
    model,
    card: ModelCard,
    images: Sequence[str | Path],
    out_dir: str | Path,
    layer: str | None = None,
    target: str | None = "predicted",
    batch_size: int = 8,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
) -> ExplainSummary:
    """Write Grad-CAM heatmaps and overlays for ``images`` into ``out_dir``; return what was done.

    ``model``/``card`` as :func:`load_explainable` returns them; ``layer`` is a ``named_modules()``
    name (default: :func:`~wbc_deploy.explain.gradcam.default_layer`); ``target`` is "predicted" or a
    class name. Images that cannot be read are skipped (``on_skip(path, reason)``) and listed in
    ``failed``. ``on_progress(done, total)`` is called after each batch.
    """
    import torch

    from ..preprocess import prepare_batch
    from .gradcam import GradCAM, resolve_target, upsample_cam
    from .overlay import save_overlay

    if batch_size < 1:
        raise WbcError(f"--batch-size must be at least 1, got {batch_size}")
    target_idx = resolve_target(target, card.classes)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise WbcError("--device cuda was requested but no CUDA GPU is available (use --device cpu)")
    model = model.to(device)
    cam = GradCAM(model, layer, input_size=int(card.input_size))
    out = output_folder(out_dir)
    paths = [Path(p) for p in images]
    stems = unique_stems(paths)
    summary = ExplainSummary(out, cam.layer)
    for start in range(0, len(paths), batch_size):
        chunk = list(zip(paths[start:start + batch_size], stems[start:start + batch_size]))
        loaded: list[tuple[Path, str, np.ndarray]] = []
        for p, stem in chunk:
            try:
                loaded.append((p, stem, read_rgb(p)))
            except WbcError as exc:
                summary.failed.append((p, str(exc)))
                if on_skip is not None:
                    on_skip(p, str(exc))
        if loaded:
            batch = prepare_batch([im for _, _, im in loaded], card)
            result = cam(batch, target_idx)
            for i, (p, stem, image) in enumerate(loaded):
                heat = upsample_cam(result.maps[i], image.shape[:2])
                pred = int(result.predicted[i])
                tgt = int(result.targets[i])
                cam_path = out / f"{stem}.cam.npy"
                with atomic_path(cam_path) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, heat)
                title = f"{p.name}: predicted {card.classes[pred]} ({100 * result.probs[i, pred]:.1f}%)"
                if tgt != pred:
                    title += f"; Grad-CAM for {card.classes[tgt]} ({100 * result.probs[i, tgt]:.1f}%)"
                title += f"; layer {cam.layer}"
                overlay_path = save_overlay(out / f"{stem}.overlay.png", image, heat, title)
                summary.results.append(ExplainResult(
                    p, stem, card.classes[pred], float(result.probs[i, pred]), card.classes[tgt],
                    float(result.probs[i, tgt]), cam_path, overlay_path, empty=float(result.maps[i].max(initial=0.0)) <= 0.0,
                ))
        if on_progress is not None:
            on_progress(min(start + batch_size, len(paths)), len(paths))
    summary.csv_path = write_explain_csv(out / CSV_NAME, summary.results)
    return summary


def write_explain_csv(path: Path, results: Sequence[ExplainResult]) -> Path:
    """One row per explained image (columns :data:`CSV_COLUMNS`)."""
    with AtomicWriter(path) as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in results:
            w.writerow([str(r.image), r.predicted, f"{r.confidence:.6f}", r.target, f"{r.target_probability:.6f}",
                        "1" if r.empty else "0", r.cam_path.name, r.overlay_path.name])
    return path
