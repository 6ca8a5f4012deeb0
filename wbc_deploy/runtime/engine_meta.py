"""The JSON sidecar written beside every TensorRT engine, and the checks made before loading one.

A serialised TensorRT engine only runs on the TensorRT version and GPU model it was built for, and it
carries no preprocessing contract. The sidecar (``model.engine.json`` beside ``model.engine``) records
both: the builder's TensorRT version, GPU name and compute capability, precision, optimisation profile,
the sha256 of the source ONNX and of the engine, and the model card. Torch-free, tensorrt-free.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, sha256_file
from ..card import ModelCard
from ..errors import WbcError

SIDECAR_FORMAT = "wbc-deploy-tensorrt-engine/1"
REBUILD_HINT = "rebuild it on this machine with `wbc-deploy export MODEL --trt`"


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


@dataclass
class EngineInfo:
    """What a TensorRT engine was built from, for, and how."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # "fp16", "int8+fp16", "fp32"
    profile: dict[str, int]  # {"min": 1, "opt": 64, "max": 256} (batch sizes)
    input_name: str
    output_name: str
    card: dict[str, Any]
    source_onnx: str = ""
    source_onnx_sha256: str = ""
    engine_sha256: str = ""
    workspace_mb: int | None = None
    build_seconds: float | None = None
    wbc_deploy_version: str = ""
    format: str = SIDECAR_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def model_card(self, source: str = "engine sidecar") -> ModelCard:
        return ModelCard.from_dict(self.card, source=source)

    def write(self, engine_path: str | Path) -> Path:
        path = sidecar_path(engine_path)
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, engine_path: str | Path) -> EngineInfo:
        """Read the sidecar of ``engine_path``; a clear error if it is missing or malformed."""
        path = sidecar_path(engine_path)
        if not path.is_file():
            raise WbcError(
                f"{Path(engine_path).name} has no sidecar {path.name} (TensorRT version, GPU, classes, "
                f"preprocessing): {REBUILD_HINT}"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WbcError(f"engine sidecar {path} is not valid JSON ({exc}): {REBUILD_HINT}") from None
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise WbcError(f"{path} is not a wbc-deploy engine sidecar (format {SIDECAR_FORMAT}): {REBUILD_HINT}")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("tensorrt_version", "gpu_name", "compute_capability", "precision", "profile",
                               "input_name", "output_name", "card") if k not in data]
        if missing:
            raise WbcError(f"engine sidecar {path} lacks {', '.join(missing)}: {REBUILD_HINT}")
        return cls(**{k: v for k, v in data.items() if k in known})


def check_compatible(info: EngineInfo, engine_path: str | Path, trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU, or altered since it was built."""
    name = Path(engine_path).name
    if info.tensorrt_version != trt_version:
        raise WbcError(
            f"{name} was built with TensorRT {info.tensorrt_version} but this machine has TensorRT {trt_version}; "
            f"engines are not portable across TensorRT versions: {REBUILD_HINT}"
        )
    if info.compute_capability != compute_capability or info.gpu_name != gpu_name:
        raise WbcError(
            f"{name} was built for {info.gpu_name} (compute capability {info.compute_capability}) but this GPU is "
            f"{gpu_name} (compute capability {compute_capability}); engines are tuned to one GPU model: {REBUILD_HINT}"
        )
    if info.engine_sha256 and sha256_file(engine_path) != info.engine_sha256:
        raise WbcError(f"{name} does not match the sha256 recorded in its sidecar (file changed or truncated): {REBUILD_HINT}")
