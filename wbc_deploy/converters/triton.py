"""Triton Inference Server model repositories for exported models (``export --triton REPO``).

Each model becomes ``REPO/<name>/config.pbtxt``, ``REPO/<name>/labels.txt`` (class names in output
order, Triton's classification labels) and ``REPO/<name>/1/model.onnx`` (platform ``onnxruntime_onnx``)
or ``REPO/<name>/1/model.plan`` (``tensorrt_plan``, listed under the compute capability it was built
for). Input and output names, types and dims are read from the model itself (the ONNX graph, or a
TensorRT engine's sidecar); the model card travels as the ``wbc_deploy.card`` parameter. Requests are
batched by Triton's dynamic batcher up to ``max_batch_size``. Torch-free; ``onnx`` reads the graphs.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..card import ONNX_CARD_KEY, ModelCard
from ..errors import WbcError
from ..files import atomic_write_text

CONFIG_NAME = "config.pbtxt"
LABELS_NAME = "labels.txt"
VERSION = "1"
#: Default largest batch Triton forms for an ONNX model (count's default --batch-size).
DEFAULT_MAX_BATCH = 64
#: How long the dynamic batcher waits to fill a batch.
QUEUE_DELAY_US = 500
KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: ONNX TensorProto element types -> Triton data types.
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
                  7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
                  13: "TYPE_UINT64", 16: "TYPE_BF16"}


@dataclass
class TensorSpec:
    """One model input or output as Triton sees it (``dims`` without the batch dimension; -1 = variable)."""

    name: str
    data_type: str
    dims: list[int]
    label_filename: str | None = None


@dataclass
class TritonModel:
    """Everything in one ``config.pbtxt``."""

    name: str
    platform: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    kind: str = "KIND_AUTO"
    instances: int = 1
    preferred_batch_sizes: list[int] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    cc_model_filenames: dict[str, str] = field(default_factory=dict)

    def to_pbtxt(self) -> str:
        """The config in protobuf text format (Triton's ``inference.ModelConfig``)."""
        lines = [f"name: {_q(self.name)}", f"platform: {_q(self.platform)}", f"max_batch_size: {self.max_batch_size}"]
        for key, tensors in (("input", self.inputs), ("output", self.outputs)):
            lines.append(f"{key} [")
            for i, t in enumerate(tensors):
                lines += ["  {", f"    name: {_q(t.name)}", f"    data_type: {t.data_type}"]
                if key == "input" and len(t.dims) == 3:
                    lines.append("    format: FORMAT_NCHW")
                lines.append(f"    dims: [ {', '.join(str(d) for d in t.dims)} ]")
                if t.label_filename:
                    lines.append(f"    label_filename: {_q(t.label_filename)}")
                lines.append("  }," if i < len(tensors) - 1 else "  }")
            lines.append("]")
        if self.max_batch_size > 0:
            lines.append("dynamic_batching {")
            if self.preferred_batch_sizes:
                lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in self.preferred_batch_sizes)} ]")
            lines += [f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}", "}"]
        lines += ["instance_group [", "  {", f"    count: {self.instances}", f"    kind: {self.kind}", "  }", "]"]
        for cc, filename in self.cc_model_filenames.items():
            lines += ["cc_model_filenames {", f"  key: {_q(cc)}", f"  value: {_q(filename)}", "}"]
        for key, value in self.parameters.items():
            lines += ["parameters {", f"  key: {_q(key)}", f"  value: {{ string_value: {_q(value)} }}", "}"]
        return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """A protobuf text-format string literal (ASCII: JSON's escapes keep other characters)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def check_name(name: str) -> str:
    """A Triton model name usable as a folder name (WbcError otherwise)."""
    if not _NAME.match(name):
        raise WbcError(f"Triton model name {name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit")
    return name


def onnx_tensors(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], bool]:
    """(inputs, outputs, batch is dynamic) of an ONNX graph; dims keep the batch dimension first."""
    try:
        import onnx
    except ImportError:
        raise WbcError("writing a Triton repository reads the ONNX graph with `onnx`: pip install onnx") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    initialisers = {t.name for t in graph.initializer}

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        if t.elem_type not in ONNX_TO_TRITON:
            raise WbcError(f"{path.name}: tensor {v.name!r} has ONNX type {t.elem_type}, which Triton has no type for")
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
        return TensorSpec(v.name, ONNX_TO_TRITON[t.elem_type], dims)

    inputs = [spec(v) for v in graph.input if v.name not in initialisers]
    outputs = [spec(v) for v in graph.output]
    dynamic = all(t.dims and t.dims[0] == -1 for t in inputs + outputs)
    return inputs, outputs, dynamic


def _labels_for(outputs: list[TensorSpec], card: ModelCard) -> None:
    for t in outputs:
        if t.dims == [len(card.classes)]:
            t.label_filename = LABELS_NAME


def _install(model_dir: Path, config: TritonModel, source: Path, filename: str, card: ModelCard) -> Path:
    """Write config, labels and the model file (each atomically, the model through a temporary copy)."""
    version = model_dir / VERSION
    version.mkdir(parents=True, exist_ok=True)
    target = version / filename
    tmp = target.with_name(f".{filename}.tmp")
    try:
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(model_dir / LABELS_NAME, "".join(f"{c}\n" for c in card.classes))
    config_path = model_dir / CONFIG_NAME
    atomic_write_text(config_path, config.to_pbtxt())
    return config_path


def write_onnx_model(repo: str | Path, name: str, onnx_path: str | Path, card: ModelCard, *,
                     max_batch_size: int = DEFAULT_MAX_BATCH, instances: int = 1, kind: str = "KIND_AUTO") -> Path:
    """``REPO/<name>/`` for an exported ONNX model (platform ``onnxruntime_onnx``); returns its config path."""
    onnx_path = Path(onnx_path)
    _check(name, max_batch_size, instances, kind)
    inputs, outputs, dynamic = onnx_tensors(onnx_path)
    if max_batch_size > 0:
        if not dynamic:
            raise WbcError(f"{onnx_path.name} has a fixed batch dimension: export it with a dynamic batch for Triton's batching")
        for t in inputs + outputs:
            t.dims = t.dims[1:]
    _labels_for(outputs, card)
    config = TritonModel(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size, inputs=inputs,
                         outputs=outputs, kind=kind, instances=instances,
                         parameters={ONNX_CARD_KEY: json.dumps(card.to_dict(), sort_keys=True)})
    return _install(Path(repo) / name, config, onnx_path, "model.onnx", card)


def write_engine_model(repo: str | Path, name: str, engine_path: str | Path, *, instances: int = 1) -> Path:
    """``REPO/<name>/`` for a TensorRT engine (platform ``tensorrt_plan``) from its sidecar: the profile's
    largest batch as ``max_batch_size``, its optimum as the preferred batch, the plan listed under the
    compute capability it was built for. Returns the config path."""
    from ..runtime.engine_meta import EngineInfo

    engine_path = Path(engine_path)
    info = EngineInfo.read(engine_path)
    card = info.model_card()
    max_batch = int(info.profile.get("max", 0))
    _check(name, max_batch, instances, "KIND_GPU")
    s = int(card.input_size)
    outputs = [TensorSpec(info.output_name, "TYPE_FP32", [len(card.classes)])]
    _labels_for(outputs, card)
    opt = int(info.profile.get("opt", 0))
    config = TritonModel(
        name=name, platform="tensorrt_plan", max_batch_size=max_batch,
        inputs=[TensorSpec(info.input_name, "TYPE_FP32", [3, s, s])], outputs=outputs, kind="KIND_GPU", instances=instances,
        preferred_batch_sizes=[opt] if 0 < opt <= max_batch else [],
        cc_model_filenames={info.compute_capability: "model.plan"},
        parameters={ONNX_CARD_KEY: json.dumps(card.to_dict(), sort_keys=True), "tensorrt_version": info.tensorrt_version,
                    "gpu_name": info.gpu_name, "compute_capability": info.compute_capability, "precision": info.precision},
    )
    return _install(Path(repo) / name, config, engine_path, "model.plan", card)


def _check(name: str, max_batch_size: int, instances: int, kind: str) -> None:
    check_name(name)
    if max_batch_size < 1:
        raise WbcError(f"--triton-max-batch must be at least 1, got {max_batch_size}")
    if instances < 1:
        raise WbcError(f"--triton-instances must be at least 1, got {instances}")
    if kind not in KINDS:
        raise WbcError(f"instance kind must be one of {', '.join(KINDS)}, got {kind!r}")


def write_repository(repo: str | Path, artefacts, card: ModelCard, name: str | None = None, *,
                     max_batch_size: int = DEFAULT_MAX_BATCH, instances: int = 1) -> list[Path]:
    """One Triton model per exported artefact (``export``'s list): FP32 ONNX as ``<name>`` (KIND_AUTO),
    FP16 as ``<name>-fp16`` (GPU), the CPU INT8 model as ``<name>-int8`` (CPU), a TensorRT engine as
    ``<name>-trt``. ``name`` defaults to the architecture. Returns the config paths."""
    base = check_name(name or card.arch)
    configs: list[Path] = []
    for a in artefacts:
        if a.format == "tensorrt":
            configs.append(write_engine_model(repo, f"{base}-trt", a.path, instances=instances))
        elif a.format == "onnx":
            suffix, kind = {"fp32": ("", "KIND_AUTO"), "fp16": ("-fp16", "KIND_GPU")}.get(a.precision, ("-int8", "KIND_CPU"))
            configs.append(write_onnx_model(repo, base + suffix, a.path, card, max_batch_size=max_batch_size,
                                            instances=instances, kind=kind))
    return configs
