"""`wbc-deploy train`: train a WBC classifier into a run directory."""
from __future__ import annotations

from pathlib import Path

import typer

from .app import app

_PRESET_HELP = ("paper: the reference paper's setup (wbcnet+SCAM, ImageNet, 100 epochs, batch 16, lr 1e-5, 224 px); "
                "pbc: the shipped real-cell recipe (wbcnet-s at 64 px, --mpp 0.1, stain augmentation, glass white balance); "
                "tiny: a small fast CPU model.")


@app.command("train")
def train_command(
    data: Path = typer.Argument(..., help="Class-per-folder images (or train/ and test/ folders of them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to create (or to continue with --resume)."),
    preset: str = typer.Option("paper", "--preset", help=_PRESET_HELP),
    arch: str = typer.Option(None, "--arch", help="Architecture (see `wbc-deploy models`); default from the preset."),
    attention: str = typer.Option(None, "--attention", help="Attention block: none, se, eca, cam, sam, cam||sam, csam, scam."),
    pretrained: str = typer.Option(None, "--pretrained", help="imagenet, none, or per branch: resnet=imagenet,densenet=none."),
    backbone_weights: list[str] = typer.Option(None, "--backbone-weights", help="NAME=PATH of a local torchvision state dict (repeatable)."),
    epochs: int = typer.Option(None, "--epochs", help="Number of epochs (on --resume: the new total)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per training batch."),
    lr: float = typer.Option(None, "--lr", help="RAdam learning rate."),
    mixup_alpha: float = typer.Option(None, "--mixup-alpha", help="Mixup Beta(alpha, alpha); 0 disables mixup."),
    img_size: int = typer.Option(None, "--img-size", help="Input size in pixels (crops are resized to it)."),
    schedule: str = typer.Option(None, "--schedule", help="Learning rate: constant (paper) or cosine (tiny)."),
    seed: int = typer.Option(None, "--seed", help="Seed for the split, sampling, augmentation and init [default: 0]."),
    workers: int = typer.Option(None, "--workers", help="Data-loading worker processes [default: 0]."),
    balance: bool = typer.Option(None, "--balance/--no-balance", help="Oversample minority classes (augmented) up to the largest [default: balance]."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda[:N] [default: auto]."),
    mpp: float = typer.Option(None, "--mpp", help="Microns per pixel of DATA's images: the model then sees --fov-um around "
                                                  "each image's centre, cut as `count` cuts crops [default: the whole image]."),
    fov_um: float = typer.Option(None, "--fov-um", help="Field of view in micrometres (with --mpp) [default: 24]."),
    colour_aug: str = typer.Option(None, "--colour-aug", help="Colour augmentation: none, light, or stain (HED jitter, "
                                                              "colour, blur, JPEG, noise: for models meant for other scanners)."),
    scale_jitter: float = typer.Option(None, "--scale-jitter", help="+- relative scale jitter [default: 0.15 with --mpp, else 0]."),
    stain: str = typer.Option(None, "--stain", help="Stain normalisation of every crop, in training and at inference: none, glass, reinhard."),
    init: str = typer.Option(None, "--init", help="Fine-tune from this model (RUN directory or bundled name, e.g. default): "
                                                  "its architecture and preprocessing, its weights."),
    calibrate: bool = typer.Option(None, "--calibrate/--no-calibrate", help="Fit a temperature on the validation split [default: calibrate]."),
    unidentified_below: float = typer.Option(None, "--unidentified-below", help="Calibrated confidence below which count "
                                                                              "says `unidentified` (recorded in the card) [default: 0.5]."),
    augment: bool = typer.Option(None, "--augment/--no-augment", help="Augment training images [default: augment]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch, with its saved split."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train the classifier (RAdam, mixup, class balancing; best-on-validation checkpoint) into RUN."""
    from ..console import console
    from ..model import parse_backbone_weights
    from ..trainer.fit import train
    from ..trainer.report import metrics_table

    weights = {k: str(v) for k, v in parse_backbone_weights(backbone_weights).items()} or None
    result = train(
        data, out, preset=preset, resume=resume, quiet=quiet,
        arch=arch, attention=attention, pretrained=pretrained, backbone_weights=weights, epochs=epochs,
        batch_size=batch_size, lr=lr, mixup_alpha=mixup_alpha, img_size=img_size, schedule=schedule, seed=seed, workers=workers,
        balance=balance, device=device, mpp=mpp, fov_um=fov_um, colour_aug=colour_aug, scale_jitter=scale_jitter, stain=stain,
        init=init, calibrate=calibrate, unidentified_below=unidentified_below, augment=augment,
    )
    split = "test" if "test" in result.metrics else "val"
    console.print(metrics_table(result.metrics[split], title=f"{result.card.arch} on the {split} split (best epoch {result.best_epoch})"))
    console.print(f"run: {result.run_dir}  ({result.seconds:.0f} s; model.safetensors, card.json, history.csv, curves.png, confusion.png)")
