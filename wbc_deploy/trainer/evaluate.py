"""Evaluate a model on a class-per-folder directory: every image is scored.

Evaluation is "a predict-probabilities function over a list of images" (:data:`PredictProba`), so any
backend plugs in: checkpoints, ONNX models and TensorRT engines all come through
:func:`wbc_deploy.runtime.predictor.backend_predictor` (torch is imported only for checkpoints).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..console import make_progress, warn
from ..data.folders import Sample, index_dataset
from ..errors import WbcError
from ..metrics import compute_metrics
from .report import plot_confusion

#: RGB uint8 images (H x W x 3, any size) -> (N, num_classes) class probabilities in card.classes order.
PredictProba = Callable[[Sequence[np.ndarray]], np.ndarray]


def load_predictor(model_path: str | Path, device: str = "cpu") -> tuple[PredictProba, ModelCard]:
    """A predictor and card for MODEL: a run directory, a ``.safetensors`` checkpoint, or an exported model,
    through :func:`wbc_deploy.runtime.predictor.backend_predictor` (the file's own card, the same preprocessing)."""
    from ..runtime.predictor import backend_predictor
    from ..zoo import resolve_model, unknown_model_message

    path = resolve_model(model_path)
    if not path.exists():
        raise WbcError(unknown_model_message(model_path))
    return backend_predictor(path, device)


def _load_rgb_array(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - any decoder failure: skip and count
        return None


def evaluate_samples(
    predict: PredictProba, classes: Sequence[str], samples: Sequence[Sample], batch_size: int = 32,
    quiet: bool = False, misclassified: list[tuple[Path, str, str, float]] | None = None,
    field: Callable[[np.ndarray], np.ndarray] | None = None, scored: list[tuple[int, np.ndarray]] | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Score ``samples`` with ``predict``; returns (metrics over ``classes``, files that could not be read).

    ``field`` maps each image to what the model sees (e.g. the field of view at a known um/px); with a
    ``misclassified`` list, ``(path, true class, predicted class, its probability)`` of every wrongly
    classified image is appended to it (for ``--gallery``); with a ``scored`` list, ``(true index,
    probabilities)`` of every image.
    """
    if batch_size < 1:
        raise WbcError(f"--batch-size must be at least 1, got {batch_size}")
    lookup = {c: i for i, c in enumerate(classes)}
    truth: list[int] = []
    preds: list[int] = []
    unreadable: list[Path] = []
    with make_progress(quiet) as progress:
        task = progress.add_task("scoring", total=len(samples))
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images, labels, paths = [], [], []
            for s in chunk:
                arr = _load_rgb_array(s.path)
                if arr is None:
                    unreadable.append(s.path)
                    continue
                images.append(field(arr) if field is not None else arr)
                labels.append(lookup[s.label])
                paths.append(s.path)
            if images:
                probs = np.asarray(predict(images))
                if probs.shape != (len(images), len(classes)):
                    raise WbcError(f"the model returned shape {probs.shape} for {len(images)} images of {len(classes)} classes")
                preds.extend(np.argmax(probs, axis=1).tolist())
                truth.extend(labels)
                if scored is not None:
                    scored.extend(zip(labels, probs))
                if misclassified is not None:  # --gallery (explain package)
                    for p, t, row in zip(paths, labels, probs):
                        if int(np.argmax(row)) != t:
                            misclassified.append((p, classes[t], classes[int(np.argmax(row))], float(np.max(row))))
            progress.update(task, advance=len(chunk))
    if unreadable:
        warn(f"skipped {len(unreadable)} image(s) that could not be read while scoring, e.g. {unreadable[0]}")
    if not truth:
        raise WbcError("no image could be scored")
    return compute_metrics(truth, preds, classes), unreadable


def evaluate_folder(
    predict: PredictProba, card: ModelCard, data: str | Path, out: str | Path | None = None,
    batch_size: int = 32, quiet: bool = False, model_name: str | None = None, gallery: bool = False,
    mpp: float | None = None,
) -> dict[str, Any]:
    """Score every image under the class-per-folder directory ``data``; write JSON and ``confusion.png``.

    Class folders are normalised; a class the model does not know is a WbcError. Metrics cover the
    model's classes (those without images are reported as absent). The JSON holds ``OA``, ``AP``, ``AR``,
    ``AF1``, ``per_class``, ``classes``, ``confusion``, ``absent_classes``, ``n``, ``model``, ``data``
    and ``skipped_files``; the confusion figure is written beside it (see :func:`confusion_path`).
    With ``gallery`` (and ``out``), a montage of the misclassified images (true vs predicted) goes
    beside it too (see :func:`misclassified_path`). With ``mpp`` (the images' um/px) the model sees the
    card's field of view around each image's centre, cut as ``count`` cuts crops; without it, the whole
    image. ``calibration`` reports the card's temperature and threshold, the ECE of the probabilities with
    and without the temperature, the ``unidentified`` rate and the OA of the other (identified) images;
    OA/AP/AR/AF1 stay on the arg-max class of every image.
    """
    index = index_dataset(data, verify=False, allow_splits=False)
    unknown = sorted({s.label for s in index.samples} - set(card.classes))
    if unknown:
        raise WbcError(
            f"{data} has class folder(s) {', '.join(unknown)} that the model does not know "
            f"(its classes: {', '.join(card.classes)}): remove them or evaluate a model trained on them"
        )
    wrong: list[tuple[Path, str, str, float]] | None = [] if gallery and out is not None else None
    field = None
    if mpp is not None:
        if not (0.01 <= float(mpp) <= 10.0):
            raise WbcError(f"--mpp must be micrometres per pixel between 0.01 and 10, got {mpp}")
        from ..slide.crop import image_field

        fov, size = float(card.fov_um or 24.0), int(card.input_size)

        def field(rgb: np.ndarray) -> np.ndarray:
            return image_field(rgb, float(mpp), fov, size)

    scored: list[tuple[int, np.ndarray]] = []
    metrics, unreadable = evaluate_samples(predict, card.classes, index.samples, batch_size, quiet, misclassified=wrong,
                                           field=field, scored=scored)
    result: dict[str, Any] = {
        **metrics,
        "calibration": calibration_of(card, scored),
        "mpp": mpp,
        "model": model_name,
        "data": str(Path(data).resolve()),
        "skipped_files": index.skipped + len(unreadable),
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
        plot_confusion(metrics, confusion_path(out), title=f"{Path(data).name}")
        if wrong is not None:  # --gallery (explain package)
            from ..explain.gallery import MisclassifiedItem, write_misclassified_montage

            items = [MisclassifiedItem(p, t, pr, c, p.name) for p, t, pr, c in wrong]
            write_misclassified_montage(misclassified_path(out), items, title=f"misclassified images of {Path(data).name}")
    return result


def calibration_of(card: ModelCard, scored: Sequence[tuple[int, np.ndarray]]) -> dict[str, Any]:
    """Calibration figures of scored images (true index, calibrated probabilities) under ``card``."""
    from ..calibration import expected_calibration_error, unidentified_summary
    from ..runtime.base import apply_temperature

    labels = np.asarray([t for t, _ in scored], dtype=np.int64)
    probs = np.stack([p for _, p in scored]).astype(np.float32) if scored else np.zeros((0, len(card.classes)), np.float32)
    temperature = float(getattr(card, "temperature", 1.0) or 1.0)
    raw = apply_temperature(probs, 1.0 / temperature)
    return {
        "temperature": temperature,
        "ece": expected_calibration_error(probs, labels),
        "ece_uncalibrated": expected_calibration_error(raw, labels),
        **unidentified_summary(probs, labels, card.confidence_threshold),
    }


def confusion_path(json_path: str | Path) -> Path:
    """Where the confusion figure of a metrics JSON goes: ``confusion.png`` beside it, or
    ``<stem>.confusion.png`` inside a training run (whose own ``confusion.png`` must not be overwritten)."""
    json_path = Path(json_path)
    if (json_path.parent / "model.safetensors").exists() or (json_path.parent / "last.pt").exists():
        return json_path.with_name(f"{json_path.stem}.confusion.png")
    return json_path.with_name("confusion.png")


def misclassified_path(json_path: str | Path) -> Path:
    """Where ``--gallery`` puts the misclassified montage: beside the confusion figure, named likewise."""
    confusion = confusion_path(json_path)
    return confusion.with_name(confusion.name.replace("confusion.png", "misclassified.png"))


def evaluate_model(model: str | Path, data: str | Path, out: str | Path | None = None, batch_size: int = 32,
                   quiet: bool = False, device: str = "cpu", gallery: bool = False, mpp: float | None = None) -> dict[str, Any]:
    """Load MODEL (run directory, checkpoint, ONNX, engine or bundled name) and run :func:`evaluate_folder` on ``data``."""
    from ..zoo import resolve_model

    predict, card = load_predictor(model, device)
    return evaluate_folder(predict, card, data, out, batch_size, quiet, model_name=str(resolve_model(model).resolve()),
                           gallery=gallery, mpp=mpp)
