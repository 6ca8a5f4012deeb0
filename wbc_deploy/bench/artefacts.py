"""What a benchmark runs: the model it was given, and every artefact each backend needs, cached.

MODEL is an architecture name (random-init weights: speed does not depend on them), a RUN directory or
``.safetensors`` checkpoint, or an exported ``.onnx`` file. From it the benchmark derives the FP32 ONNX
export, the FP16 and INT8 variants (converters' functions; INT8 calibrated on synthetic cells or
``--calib DIR``) and a TensorRT engine, once, into a cache directory keyed by the model's identity and
the library versions, so repeated benchmarks do not re-export.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_text, sha256_file
from .. import __version__
from ..card import ModelCard
from ..errors import WbcError
from ..converters.int8_cpu import Int8Recipe, quantize_for_cpu
from .machine import package_versions

CHECKPOINT_SUFFIXES = (".safetensors",)
#: Seed of the random-init weights when MODEL is an architecture name.
RANDOM_INIT_SEED = 0


def default_cache_dir() -> Path:
    """``$WBC_DEPLOY_CACHE/bench``, else ``$XDG_CACHE_HOME/wbc-deploy/bench``, else ``~/.cache/wbc-deploy/bench``."""
    root = os.environ.get("WBC_DEPLOY_CACHE")
    if root:
        return Path(root).expanduser() / "bench"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "wbc-deploy" / "bench"



def onnx_file_card(path: Path) -> tuple[ModelCard, str]:
    """The card inside an exported ONNX file and its precision tag (``fp32`` when untagged)."""
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors
            raise WbcError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
        props = {p.key: p.value for p in proto.metadata_props}
    else:  # scanner PC without the onnx package: read the metadata through ONNX Runtime
        from ..runtime.ort_options import default_settings, ort_session

        try:
            sess = ort_session(path, default_settings())
        except WbcError:
            raise WbcError(f"{path} is not a readable ONNX model (ONNX Runtime cannot load it)") from None
        props = dict(sess.get_modelmeta().custom_metadata_map)
    card = ModelCard.from_onnx_metadata(props, source=f"ONNX model {path}")
    precision = props.get("wbc_deploy.precision", "fp32").split("-")[0]
    return card, precision


@dataclass
class ModelSource:
    """The model a benchmark was asked to run."""

    kind: str  # "arch" | "run" | "onnx"
    card: ModelCard
    given: str
    path: Path | None = None
    precision: str = "fp32"
    identity: str = ""

    @property
    def weights(self) -> str:
        """Where the weights come from, as the output says it."""
        if self.kind == "run":
            return f"checkpoint {self.path} (sha256 {str(self.card.checkpoint_sha256 or '?')[:12]})"
        if self.kind == "onnx":
            return f"ONNX file {self.path} ({self.precision}); torch backends use random-init weights of the same architecture"
        return (f"random-init (seed {RANDOM_INIT_SEED}): throughput does not depend on the weights; "
                "top-1 agreement on random weights says little about accuracy (see int8_accuracy)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "given": self.given,
            "kind": self.kind,
            "arch": self.card.arch,
            "attention": self.card.attention,
            "input_size": int(self.card.input_size),
            "classes": list(self.card.classes),
            "arch_options": dict(self.card.arch_options),
            "weights": self.weights,
        }


def resolve_source(model: str, checkpoint: str | Path | None = None) -> ModelSource:
    """Turn ``--model`` (arch name, RUN dir, .safetensors, .onnx) and ``--checkpoint`` into a source."""
    if checkpoint is not None:
        run = Path(checkpoint).expanduser()
        source = _run_source(run, given=str(checkpoint))
        if model and not _looks_like_path(model) and model != source.card.arch:
            raise WbcError(f"--model {model} does not match the checkpoint's architecture {source.card.arch}: drop --model or pass the matching one")
        return source
    p = Path(model).expanduser()
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise WbcError(f"ONNX model not found: {p}")
        card, precision = onnx_file_card(p)
        return ModelSource("onnx", card, model, p, precision, identity=f"onnx:{sha256_file(p)}")
    if p.is_dir() or p.suffix.lower() in CHECKPOINT_SUFFIXES:
        return _run_source(p, given=model)
    if _looks_like_path(model):
        raise WbcError(f"model not found: {model} (pass an architecture name, a RUN directory, a .safetensors checkpoint or an .onnx file)")
    from ..classes import CLASSES
    from ..model import card_for

    card = card_for(model, list(CLASSES))  # WbcError listing the architectures when unknown
    ident = json.dumps({"arch": card.arch, "attention": card.attention, "size": card.input_size,
                        "options": card.arch_options, "seed": RANDOM_INIT_SEED}, sort_keys=True)
    return ModelSource("arch", card, model, None, "fp32", identity=f"arch:{ident}")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.startswith(".") or Path(text).suffix.lower() in (".onnx", ".safetensors", ".engine", ".plan")


def _run_source(run: Path, given: str) -> ModelSource:
    if not run.exists():
        raise WbcError(f"checkpoint not found: {run}")
    from ..trainer.checkpoint import load_state

    _state, card = load_state(run)
    ident = card.checkpoint_sha256 or sha256_file(run / "model.safetensors" if run.is_dir() else run)
    return ModelSource("run", card, given, run, "fp32", identity=f"run:{ident}")


@dataclass
class Artefacts:
    """Lazily built, cached model files for each backend of one benchmark."""

    source: ModelSource
    cache_dir: Path
    int8_recipe: Int8Recipe = field(default_factory=Int8Recipe)
    calib_dir: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        versions = package_versions(("onnxruntime", "onnx", "torch", "onnxconverter-common"))
        key = hashlib.sha256(json.dumps([self.source.identity, __version__, versions], sort_keys=True).encode()).hexdigest()[:16]
        card = self.source.card
        self.dir = Path(self.cache_dir).expanduser() / f"{card.arch}-{card.input_size}-{key}"
        self._torch_model: Any = None

    # -- PyTorch -------------------------------------------------------------------------------
    def torch_model(self) -> Any:
        """The eval-mode torch module: checkpoint weights for a RUN, else seeded random init."""
        if self._torch_model is None:
            import torch

            from ..model import build_from_card

            if self.source.kind == "run":
                from ..trainer.checkpoint import load_checkpoint

                model, _card = load_checkpoint(self.source.path)
            else:
                torch.manual_seed(RANDOM_INIT_SEED)
                model = build_from_card(self.source.card)
            self._torch_model = model.eval()
        return self._torch_model

    # -- ONNX ----------------------------------------------------------------------------------
    def _ensure_dir(self) -> Path:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WbcError(f"cannot create the benchmark cache {self.dir} ({exc.strerror}): pass --cache-dir") from None
        return self.dir

    def onnx_fp32(self) -> Path:
        """The FP32 ONNX model: the given file, or an export of the torch model (cached)."""
        if self.source.kind == "onnx":
            if self.source.precision != "fp32":
                raise WbcError(f"{self.source.path} is an {self.source.precision} model: pass the FP32 export to derive other precisions")
            return Path(self.source.path)
        out = self._ensure_dir() / "model.fp32.onnx"
        if not out.is_file():
            from ..converters.onnx_export import export_onnx

            res = export_onnx(self.torch_model(), self.source.card, out, checkpoint_sha256=self.source.card.checkpoint_sha256)
            self.notes["export"] = {"exporter": res.exporter, "opset": res.opset, "seconds": round(res.seconds, 1)}
        return out

    def onnx_fp16(self) -> Path:
        """FP16 variant (float32 I/O) of the FP32 export, via ``converters.quantize.convert_fp16``."""
        if self.source.kind == "onnx" and self.source.precision == "fp16":
            return Path(self.source.path)
        src = self.onnx_fp32()
        out = self._ensure_dir() / "model.fp16.onnx"
        if not out.is_file():
            from ..converters.quantize import convert_fp16

            res = convert_fp16(src, out, self.card_of(src))
            self.notes["fp16"] = {"seconds": round(res.seconds, 1), **res.details}
        return out

    def onnx_int8(self) -> Path:
        """INT8 variant made with :data:`int8_recipe`, calibrated on synthetic cells (or ``calib_dir``)."""
        if self.source.kind == "onnx" and self.source.precision == "int8":
            return Path(self.source.path)
        src = self.onnx_fp32()
        calib_tag = "synth" if self.calib_dir is None else hashlib.sha256(str(Path(self.calib_dir).resolve()).encode()).hexdigest()[:8]
        out = self._ensure_dir() / f"model.int8-{self.int8_recipe.key()}-{calib_tag}.onnx"
        info_path = out.with_suffix(".json")
        if not out.is_file():
            calibration, desc = self.calibration_batch()
            details = quantize_for_cpu(src, out, self.card_of(src), calibration, self.int8_recipe)
            details["calibration"] = desc
            atomic_write_text(info_path, json.dumps(details, indent=2) + "\n")
        if info_path.is_file():
            self.notes["int8"] = json.loads(info_path.read_text())
        return out

    def calibration_batch(self) -> tuple[np.ndarray, str]:
        """Preprocessed calibration crops: ``calib_dir`` or synthetic cells (a seed no test set uses)."""
        from ..converters.images import sample_batch

        return sample_batch(self.source.card, self.calib_dir, n=self.int8_recipe.calib_images, seed=101)

    def card_of(self, onnx_path: Path) -> ModelCard:
        return onnx_file_card(onnx_path)[0]

    # -- TensorRT ------------------------------------------------------------------------------
    def trt_engine(self, max_batch: int, device: int = 0) -> Path:
        """A TensorRT FP16 engine whose profile covers 1..``max_batch`` on CUDA device ``device`` (built once, cached).

        The file name carries the TensorRT version and the GPU, so a cache shared between machines or
        GPUs never hands one an engine built for another; an engine whose sidecar no longer matches (source
        ONNX re-exported, file altered) is rebuilt. The timing cache beside it is reused by every build.
        """
        from ..converters.tensorrt_build import build_engine
        from ..runtime.engine_meta import EngineInfo, check_compatible
        from ..runtime.trt_support import device_slug, gpu_identity, import_tensorrt

        trt = import_tensorrt()
        gpu_name, cc = gpu_identity(device)
        src = self.onnx_fp32()
        out = self._ensure_dir() / f"model.fp16.b{max_batch}.{device_slug(str(trt.__version__), gpu_name, cc)}.engine"
        if out.is_file():
            try:
                info = EngineInfo.read(out)
                check_compatible(info, out, str(trt.__version__), gpu_name, cc)
                if info.source_onnx_sha256 != sha256_file(src) or info.precision != "fp16":
                    raise WbcError("stale")
                self.notes["trt_engine"] = {"path": str(out), "reused": True, **info.extra}
                return out
            except WbcError:
                out.unlink(missing_ok=True)
        info = build_engine(src, out, min_batch=1, opt_batch=max_batch, max_batch=max_batch, device=device,
                            timing_cache=self.dir / "timing.cache")
        self.notes["trt_engine"] = {"path": str(out), "reused": False, "build_seconds": info.build_seconds, **info.extra}
        return out
