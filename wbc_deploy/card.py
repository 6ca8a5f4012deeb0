"""The model card: the preprocessing and identity contract that travels with every model artefact.

A checkpoint's ``card.json``, the metadata inside an exported ONNX file and a TensorRT engine's
JSON sidecar all carry the same card, so no runtime ever guesses class order, input size,
normalisation, colour order or the physical field of view a crop must cover.
This module is torch-free: scanner PCs read cards without the training stack.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import __version__
from .errors import WbcError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Physical width (micrometres) of the square field of view a cell crop covers by default.
#: 24 um holds the largest normal WBC (a monocyte, up to ~20 um) with a margin of red cells.
DEFAULT_FOV_UM: float = 24.0

#: ONNX metadata key under which the whole card is stored as JSON.
ONNX_CARD_KEY = "wbc_deploy.card"


@dataclass
class ModelCard:
    """Everything needed to feed a model and read its output.

    ``classes`` are in output order. ``mean``/``std`` apply to RGB values scaled to 0..1.
    ``output`` says what the deployed artefact returns: ``probabilities`` (softmax) or ``logits``.
    """

    arch: str
    classes: list[str]
    input_size: int
    attention: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color_order: str = "RGB"
    fov_um: float | None = DEFAULT_FOV_UM
    output: str = "logits"
    #: Temperature scaling (Guo et al. 2017) fitted on the validation split: every runtime returns
    #: softmax(logits / temperature). 1.0 = uncalibrated.
    temperature: float = 1.0
    #: Cells whose calibrated top probability is below this are labelled ``unidentified`` by ``count``
    #: (kept in cells.csv with their probabilities, left out of the differential). None: never.
    confidence_threshold: float | None = None
    #: Stain handling at inference, identical in training: {"normalise": "none"|"reinhard"|..., ...}.
    stain: dict[str, Any] = field(default_factory=dict)
    #: um/px of the training images (None: each image was taken as the field of view).
    train_mpp: float | None = None
    arch_options: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    checkpoint_sha256: str | None = None
    wbc_deploy_version: str = __version__
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> ModelCard:
        """Build a card from a dict, refusing one that lacks the preprocessing contract."""
        missing = [k for k in ("arch", "classes", "input_size") if k not in data]
        if missing:
            raise WbcError(f"{source} lacks {', '.join(missing)}: not a wbc-deploy model (re-export it with wbc-deploy export)")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        card = cls(**kwargs)
        card.validate(source)
        return card

    def validate(self, source: str = "model card") -> None:
        """Raise WbcError if the card is internally inconsistent."""
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise WbcError(f"{source}: class list {self.classes!r} is empty or has duplicates")
        if int(self.input_size) <= 0:
            raise WbcError(f"{source}: input_size must be positive, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise WbcError(f"{source}: mean/std must be three numbers with std > 0")
        if self.color_order not in ("RGB", "BGR"):
            raise WbcError(f"{source}: color_order must be RGB or BGR, got {self.color_order!r}")
        if not float(self.temperature) > 0:
            raise WbcError(f"{source}: temperature must be > 0, got {self.temperature}")
        if self.confidence_threshold is not None and not 0.0 <= float(self.confidence_threshold) <= 1.0:
            raise WbcError(f"{source}: confidence_threshold must be within 0..1, got {self.confidence_threshold}")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise WbcError(f"model card not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WbcError(f"model card {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_onnx_metadata(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props``: the full card plus readable flat keys."""
        return {
            ONNX_CARD_KEY: json.dumps(self.to_dict()),
            "classes": json.dumps(self.classes),
            "input_size": str(self.input_size),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "color_order": self.color_order,
            "fov_um": "" if self.fov_um is None else str(self.fov_um),
            "output": self.output,
            "checkpoint_sha256": self.checkpoint_sha256 or "",
            "wbc_deploy_version": self.wbc_deploy_version,
        }

    @classmethod
    def from_onnx_metadata(cls, props: dict[str, str], source: str = "ONNX model") -> ModelCard:
        """Inverse of :meth:`to_onnx_metadata`; a clear error when the metadata is missing."""
        if ONNX_CARD_KEY not in props:
            raise WbcError(
                f"{source} has no wbc-deploy metadata (class names, input size, normalisation): "
                "export it with `wbc-deploy export` so the preprocessing travels with the model"
            )
        try:
            data = json.loads(props[ONNX_CARD_KEY])
        except json.JSONDecodeError as exc:
            raise WbcError(f"{source}: wbc-deploy metadata is not valid JSON ({exc})") from None
        return cls.from_dict(data, source=source)
