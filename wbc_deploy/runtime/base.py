"""The one inference interface every runtime implements (numpy in, class probabilities out).

A :class:`Backend` is built from a model file, carries that file's :class:`~wbc_deploy.card.ModelCard`
(classes in output order, input size, normalisation, field of view) and turns an
``N x 3 x S x S`` float32 batch into ``N x C`` float32 probabilities. Callers never post-process:
backends whose artefact returns logits apply the softmax themselves.
This module is torch-free.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..card import ModelCard
from ..errors import WbcError
from ..preprocess import prepare_batch


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, numerically stable."""
    z = logits.astype(np.float32, copy=False)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities from softmax outputs: softmax(log(p) / T) == softmax(logits / T).

    (log p differs from the logits by a per-row constant, which the softmax removes.) T = 1 returns
    ``probs`` unchanged; zero probabilities stay zero.
    """
    t = float(temperature)
    if t == 1.0 or probs.size == 0:
        return probs
    with np.errstate(divide="ignore"):
        logp = np.log(np.clip(probs.astype(np.float64), 0.0, None))
    return softmax(logp / t).astype(np.float32)


class Backend(ABC):
    """A loaded model that predicts class probabilities.

    Attributes:
        name: short backend name (``ort``, ``trt``, ``torch``).
        card: the model card read from the artefact (never guessed).
        model_path: the file or RUN directory the backend was built from.
        device: what actually runs the model, e.g. ``CPUExecutionProvider`` or ``cuda:0 (NVIDIA H100)``.
        max_batch: the largest batch one execution accepts (None: unlimited); ``predict`` splits larger ones.
    """

    name: str = "backend"
    card: ModelCard
    model_path: Path
    device: str = "cpu"
    max_batch: int | None = None

    # -- to implement ----------------------------------------------------------------------------
    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run one checked, contiguous float32 batch (N <= max_batch) and return N x C probabilities."""

    def close(self) -> None:
        """Release the session, engine or device memory. Safe to call twice."""

    # -- public API ------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def input_size(self) -> int:
        return int(self.card.input_size)

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """Validate an NCHW batch against the card; return it as contiguous float32."""
        arr = np.asarray(batch)
        s = self.input_size
        if arr.ndim != 4 or arr.shape[1:] != (3, s, s):
            raise WbcError(
                f"{self.name} backend expects an N x 3 x {s} x {s} batch for {self.model_path.name}, got shape "
                f"{tuple(arr.shape)}: prepare crops with wbc_deploy.preprocess.prepare_batch(images, backend.card)"
            )
        return np.ascontiguousarray(arr, dtype=np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N x C float32, rows sum to 1, columns in ``card.classes`` order)."""
        arr = self.check_batch(batch)
        if arr.shape[0] == 0:
            return np.zeros((0, len(self.card.classes)), dtype=np.float32)
        step = self.max_batch or arr.shape[0]
        if arr.shape[0] <= step:
            return self._checked_output(self._run(arr), arr.shape[0])
        chunks = [arr[i : i + step] for i in range(0, arr.shape[0], step)]
        return np.concatenate(list(self.predict_many(chunks)), axis=0)

    def predict_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Predict a stream of batches, yielding one probability array per batch, in order.

        Backends that can overlap host/device copies with execution (TensorRT) override this to
        pipeline; the default simply runs the batches one after another.
        """
        for batch in batches:
            yield self.predict(batch)

    def predict_images(self, images: Sequence[np.ndarray | Image.Image], batch_size: int = 64) -> np.ndarray:
        """Preprocess RGB uint8 crops with the card's contract (:func:`prepare_batch`) and predict them."""
        if batch_size < 1:
            raise WbcError(f"batch size must be at least 1, got {batch_size}")
        n_cls = len(self.card.classes)
        if len(images) == 0:
            return np.zeros((0, n_cls), dtype=np.float32)
        chunks = (prepare_batch(images[i : i + batch_size], self.card) for i in range(0, len(images), batch_size))
        return np.concatenate(list(self.predict_many(chunks)), axis=0)

    def describe(self) -> str:
        """One line naming the backend, the device it runs on and the model."""
        return f"{self.name} on {self.device}: {self.model_path} ({self.card.arch}, {len(self.card.classes)} classes, {self.input_size} px)"

    # -- helpers ---------------------------------------------------------------------------------
    def _checked_output(self, out: np.ndarray, n: int) -> np.ndarray:
        n_cls = len(self.card.classes)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (n, n_cls):
            raise WbcError(
                f"{self.model_path.name} returned shape {tuple(out.shape)} for {n} images but its card lists "
                f"{n_cls} classes: the model file and its metadata disagree; re-export it with `wbc-deploy export`"
            )
        return apply_temperature(out, getattr(self.card, "temperature", 1.0))

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
