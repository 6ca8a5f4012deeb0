"""Training configuration and presets (torch-free).

``paper`` is the reference paper's configuration (Table 3): wbcnet (ResNet50+DenseNet121) with SCAM,
ImageNet-pretrained trunks, RAdam, lr 1e-5, batch 16, 100 epochs, mixup alpha 0.2, 224 px.
``pbc`` trains the shipped real-cell model (``benchmarks/train_pbc.py``). ``tiny`` is a small configuration for CPU demos and tests: wbcnet-tiny (ResNet18 + DenseNet121 cut
at stage 1, 128-channel fusion) from scratch at 64 px, with a larger learning rate because there are
no pretrained weights offline, decayed to 0 along a cosine so a few epochs converge. Explicit options override the preset's values; when ``arch`` is
overridden but ``img_size``/``attention`` are not, the architecture's own defaults are used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..card import DEFAULT_FOV_UM
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
    # The shipped real-cell model (benchmarks/train_pbc.py): PBC images at 0.1 um/px cut to the 24 um field,
    # stain augmentation for other labs' scanners (no stain normalisation: glass white balance measured worse
    # across scanners, benchmarks/results/pbc-stain-glass.md), a small paper-family model at 64 px.
    "pbc": {
        "arch": "wbcnet-s",
        "attention": "scam",
        "pretrained": "none",
        "epochs": 12,
        "batch_size": 32,
        "lr": 3e-3,
        "mixup_alpha": 0.2,
        "img_size": 64,
        "schedule": "cosine",
        "mpp": 0.1,
        "colour_aug": "stain",
        "stain": "none",
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
    #: um/px of DATA's images: the model then sees ``fov_um`` around each image's centre, cut as ``count``
    #: cuts crops; None: each whole image is the field (resized), as for data without a known scale.
    mpp: float | None = None
    fov_um: float = DEFAULT_FOV_UM
    #: colour augmentation: none, light (mild jitter) or stain (HED jitter, colour, blur, JPEG, noise).
    colour_aug: str = "light"
    #: +- relative scale jitter of the field (default: 0.15 with --mpp, 0 without).
    scale_jitter: float | None = None
    #: stain normalisation applied to every crop in training and at inference (wbc_deploy.stain).
    stain: str = "none"
    #: fine-tune: start from this model's weights (a RUN directory or a bundled model name).
    init: str | None = None
    #: fit a temperature on the validation split and set the card's `unidentified` threshold.
    calibrate: bool = True
    #: calibrated confidence below which ``count`` labels a cell ``unidentified`` (recorded in the card).
    unidentified_below: float = 0.5

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
        d["scale_jitter"] = self.effective_scale_jitter
        d["backbone_weights"] = {k: Path(v).name for k, v in self.backbone_weights.items()}
        d["optimizer"] = "RAdam"
        d["loss"] = "soft-target cross-entropy (mixup)"
        return d

    @property
    def effective_scale_jitter(self) -> float:
        """The scale jitter used: the option, else 0.15 with --mpp and 0 without."""
        if self.scale_jitter is not None:
            return float(self.scale_jitter)
        return 0.15 if self.mpp is not None else 0.0

    def validate(self) -> None:
        """Raise WbcError for values that cannot train."""
        from ..stain import COLOUR_AUGMENTATIONS, METHODS
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
            (self.mpp is None or 0.01 <= float(self.mpp) <= 10.0, f"--mpp must be micrometres per pixel between 0.01 and 10, got {self.mpp}"),
            (5.0 <= float(self.fov_um) <= 200.0, f"--fov-um must be between 5 and 200 micrometres, got {self.fov_um}"),
            (self.colour_aug in COLOUR_AUGMENTATIONS, f"--colour-aug must be one of {', '.join(COLOUR_AUGMENTATIONS)}, got {self.colour_aug!r}"),
            (self.stain in METHODS, f"--stain must be one of {', '.join(METHODS)}, got {self.stain!r}"),
            (self.scale_jitter is None or 0.0 <= float(self.scale_jitter) < 0.5, f"--scale-jitter must be within 0..0.5, got {self.scale_jitter}"),
            (0.0 <= float(self.unidentified_below) < 1.0, f"--unidentified-below must be within 0..1, got {self.unidentified_below}"),
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
