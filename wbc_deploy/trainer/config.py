"""Training configuration and presets (torch-free).

``paper`` is the reference paper's configuration (Table 3): wbcnet (ResNet50+DenseNet121) with SCAM,
ImageNet-pretrained trunks, RAdam, lr 1e-5, batch 16, 100 epochs, mixup alpha 0.2, 224 px.
``tiny`` is a small configuration for CPU demos and tests: wbcnet-tiny (ResNet18 + DenseNet121 cut
at stage 1, 128-channel fusion) from scratch at 64 px, with a larger learning rate because there are
no pretrained weights offline, decayed to 0 along a cosine so a few epochs converge. Explicit options override the preset's values; when ``arch`` is
overridden but ``img_size``/``attention`` are not, the architecture's own defaults are used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import WbcError

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "arch": "wbcnet",
        "attention": "scam",
        "pretrained": "imagenet",
        "epochs": 100,
        "batch_size": 16,
        "lr": 1e-5,
        "mixup_alpha": 0.2,
        "img_size": 224,
        "schedule": "constant",
    },
    "tiny": {
        "arch": "wbcnet-tiny",
        "attention": "scam",
        "pretrained": "none",
        "epochs": 20,
        "batch_size": 16,
        "lr": 3e-3,
        "mixup_alpha": 0.2,
        "img_size": 64,
        "schedule": "cosine",
    },
}

SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in ``last.pt`` and the model card)."""

    data: str
    out: str
    preset: str = "paper"
    arch: str = "wbcnet"
    attention: str | None = "scam"
    pretrained: str = "imagenet"
    backbone_weights: dict[str, str] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.0
    schedule: str = "constant"  # learning rate: constant (the paper) or cosine decay to 0 over the run, per step
    mixup_alpha: float = 0.2
    img_size: int = 224
    seed: int = 0
    workers: int = 0
    balance: bool = True
    augment: bool = True
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def hyperparameters(self) -> dict[str, Any]:
        """The values recorded in the model card's training summary."""
        d = self.to_dict()
        for key in ("data", "out", "workers", "device"):
            d.pop(key)
        d["backbone_weights"] = {k: Path(v).name for k, v in self.backbone_weights.items()}
        d["optimizer"] = "RAdam"
        d["loss"] = "soft-target cross-entropy (mixup)"
        return d

    def validate(self) -> None:
        """Raise WbcError for values that cannot train."""
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.mixup_alpha >= 0, f"--mixup-alpha must be >= 0 (0 disables mixup), got {self.mixup_alpha}"),
            (self.img_size >= 32, f"--img-size must be at least 32 pixels, got {self.img_size}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"--device must be auto, cpu or cuda[:N], got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise WbcError(message)


def make_config(data: str | Path, out: str | Path, preset: str = "paper", **overrides: Any) -> TrainConfig:
    """A config from a preset plus explicit overrides (``None`` values mean "not given")."""
    if preset not in PRESETS:
        raise WbcError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, Any] = dict(PRESETS[preset])
    if "arch" in given and given["arch"] != values["arch"]:
        from ..model import get_model_info  # torch: only when the arch changes

        info = get_model_info(given["arch"])
        values["img_size"] = info.default_input_size
        values["attention"] = info.default_attention
    values.update(given)
    config = TrainConfig(data=str(data), out=str(out), preset=preset, **values)
    config.validate()
    return config
