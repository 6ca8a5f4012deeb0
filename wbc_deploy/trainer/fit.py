"""The training loop: RAdam, soft-target cross-entropy with mixup, best-on-validation checkpoint, resume.

A run directory ends up with ``model.safetensors`` + ``card.json`` (the best epoch's weights; best =
highest validation accuracy, ties broken by lower validation loss), ``last.pt`` (resume state),
``split.csv``, ``history.csv``, ``curves.png`` and ``confusion.png`` (test split, or validation when
the data has no test images).

Reproducibility: the split depends only on the file list and the seed; at the start of every epoch the
torch RNG, the mixup RNG, the sampler and the loader are reseeded from (seed, epoch), so a resumed run
continues exactly as an uninterrupted run with the same settings would (same samples, augmentations
and mixing). ``last.pt`` also records the torch RNG state for inspection.
"""
from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader

from ..card import ModelCard
from ..classes import CLASSES
from ..console import make_progress, warn
from ..data.dataset import BalancedSampler, CellDataset
from ..data.folders import Sample, count_by, index_dataset, verify_samples
from ..data.mixup import mixup_batch, soft_cross_entropy
from ..data.splits import check_split, make_split, read_manifest, write_manifest
from ..data.transforms import eval_transform, finish_batch, train_transform
from ..errors import WbcError
from ..files import AtomicWriter, remove_stale_temps
from ..metrics import compute_metrics
from ..model.outputs import split_logits
from . import distributed
from .checkpoint import CHECKPOINT_NAME, LAST_NAME, load_state, load_training_state, save_checkpoint, save_training_state
from .config import TrainConfig, make_config
from .report import plot_confusion, plot_curves

SPLIT_NAME = "split.csv"
HISTORY_NAME = "history.csv"
CURVES_NAME = "curves.png"
CONFUSION_NAME = "confusion.png"
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")

#: Options that may differ from the saved run on ``--resume`` (everything else must match).
RESUME_OVERRIDABLE = frozenset({"epochs", "workers", "device", "data", "out"})


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    run_dir: Path
    card: ModelCard
    metrics: dict[str, dict[str, Any]]  # "val" and, when there is a test split, "test"
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    rank: int = 0  # torchrun: this process's rank (only rank 0 writes and prints)
    world_size: int = 1


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise WbcError("--device cuda was requested but no CUDA GPU is available: use --device cpu")
    return torch.device(name)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at a global step: ``cfg.lr`` (constant) or a cosine decay from it to 0."""
    if cfg.schedule == "cosine" and total_steps > 0:
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def read_history(path: Path, upto: int | None = None) -> list[dict[str, float]]:
    """Rows of ``history.csv`` (numbers), optionally only epochs <= ``upto``."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    return [r for r in rows if upto is None or int(r["epoch"]) <= upto]


def _write_history(path: Path, rows: Iterable[dict[str, float]]) -> None:
    with AtomicWriter(path) as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (int(r[k]) if k == "epoch" else f"{r[k]:.6g}") for k in HISTORY_COLUMNS})


def _plain(value: Any) -> Any:
    """Plain JSON types only (what ``torch.load(weights_only=True)`` accepts without allow-listing)."""
    return json.loads(json.dumps(value))


def _canonical(labels: Iterable[str]) -> list[str]:
    present = set(labels)
    return [c for c in CLASSES if c in present]


class Trainer:
    """One training run. :meth:`run` trains (or resumes), evaluates the best checkpoint and writes RUN."""

    def __init__(self, config: TrainConfig, resume: bool = False, quiet: bool = False,
                 explicit: Iterable[str] = (), on_epoch: Callable[[dict[str, float]], None] | None = None):
        config.validate()
        if config.init:
            from ..trainer.checkpoint import load_state

            _, init_card = load_state(config.init)  # the run takes MODEL's architecture and preprocessing
            config.arch, config.attention, config.img_size = init_card.arch, init_card.attention, int(init_card.input_size)
            config.fov_um = float(init_card.fov_um or config.fov_um)
            config.stain = (init_card.stain or {}).get("normalise", "none")
            config.pretrained = "none"
        self.config = config
        self.resume = resume
        self.quiet = quiet
        self.explicit = set(explicit)
        self.on_epoch = on_epoch
        self.out = Path(config.out).expanduser()
        self.dist, self.device = distributed.setup(pick_device(config.device))  # torchrun: this rank's device
        self.quiet = quiet or not self.dist.is_lead
        self._manifest_root: Path | None = None  # set when a new split must be written
        self._early_model: tuple[nn.Module, ModelCard] | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def _open_run_dir(self) -> dict[str, Any] | None:
        """Create RUN, or load its resume state; refuse to overwrite a run without --resume."""
        last = self.out / LAST_NAME
        if self.out.exists() and not self.out.is_dir():
            raise WbcError(f"--out {self.out} exists and is not a directory")
        if self.resume:
            if last.is_file():
                remove_stale_temps(self.out)  # a run killed mid-write left its temporary file
                return load_training_state(last)
            if (self.out / CHECKPOINT_NAME).exists():
                raise WbcError(f"{self.out} holds a model but no {LAST_NAME} to resume from: choose a new --out")
            warn(f"nothing to resume in {self.out} (no {LAST_NAME}); starting a new run")
        elif last.exists() or (self.out / CHECKPOINT_NAME).exists():
            raise WbcError(f"{self.out} already holds a training run: pass --resume to continue it, or choose a new --out")
        self.out.mkdir(parents=True, exist_ok=True)
        return None

    def _adopt_saved_config(self, state: dict[str, Any]) -> None:
        """On resume, train with the saved settings; explicit options that contradict them are an error."""
        saved = TrainConfig.from_dict(state["config"])
        for key in sorted(self.explicit - RESUME_OVERRIDABLE):
            if getattr(saved, key, None) != getattr(self.config, key, None):
                flag = "--" + key.replace("_", "-")
                raise WbcError(
                    f"{self.out} was trained with {flag} {getattr(saved, key)!r}, not {getattr(self.config, key)!r}: "
                    f"drop {flag} to resume it, or choose a new --out"
                )
        for key in RESUME_OVERRIDABLE:
            if key in ("data", "out") or key in self.explicit:
                setattr(saved, key, getattr(self.config, key))
        self.config = saved

    def _split(self, resumed: bool) -> tuple[list[Sample], dict[str, Any]]:
        """The split (new, or the saved manifest when resuming) and a summary of the data.

        A new split is written to ``split.csv`` by :meth:`run` once the model is built, so a run that
        fails to start (e.g. missing weights) leaves nothing that blocks a retry."""
        cfg = self.config
        manifest = self.out / SPLIT_NAME
        if resumed and manifest.is_file():
            samples = read_manifest(manifest, cfg.data)
            check_split(samples)
            return samples, {}
        index = index_dataset(cfg.data, verify=False)
        # Build the model before the (long) image check so missing weights fail fast; rebuilt in run()
        # only if the check removes a whole class.
        provisional = _canonical(s.label for s in index.samples if s.split in (None, "train"))
        if len(provisional) >= 2 and not resumed:  # resuming: the saved weights are loaded in run()
            self._early_model = self._build_model(provisional, None)
        with make_progress(self.quiet) as progress:
            task = progress.add_task("checking images", total=len(index.samples))
            verify_samples(index, on_progress=lambda done, total: progress.update(task, completed=done))
        samples = make_split(index, cfg.seed)
        self._manifest_root = Path(cfg.data)  # paths relative to DATA as given, as read back on resume
        return samples, {
            "data": str(index.root.resolve()),
            "layout": index.layout,
            "skipped_files": index.skipped,
            "split": "train/val from the train folder 3:1, test folder kept" if "test" in index.splits_present
            else ("val and test folders kept" if "val" in index.splits_present else "stratified 3:1:1 train/val/test"),
        }

    def _build_model(self, classes: list[str], state: dict[str, Any] | None) -> tuple[nn.Module, ModelCard]:
        from ..model import build_from_card, card_for, count_parameters, create_model, parse_pretrained

        cfg = self.config
        if cfg.init:
            from .finetune import initial_model

            model, card = initial_model(cfg.init, classes, seed=_epoch_seed(cfg.seed, 0, 0))
            if state is not None:
                model.load_state_dict(state["model"])
        else:
            card = card_for(cfg.arch, classes, cfg.img_size, cfg.attention, fov_um=cfg.fov_um)
            if state is None:
                torch.manual_seed(_epoch_seed(cfg.seed, 0, 0))  # the initial weights depend on the seed only
                model = create_model(
                    cfg.arch, len(classes), attention=cfg.attention, pretrained=parse_pretrained(cfg.pretrained),
                    backbone_weights={k: Path(v) for k, v in cfg.backbone_weights.items()} or None,
                )
            else:
                model = build_from_card(card)
                model.load_state_dict(state["model"])
            card.stain = {"normalise": cfg.stain}
        card.train_mpp = cfg.mpp
        card.params = count_parameters(model)
        return model.to(self.device), card

    def _augmenter(self, card: ModelCard):
        """The batch augmentation for this run (None with --no-augment)."""
        from ..data.augment import CONTEXT, BatchAugment

        cfg = self.config
        if not cfg.augment:
            return None
        return BatchAugment(size=int(card.input_size), context=CONTEXT if cfg.mpp is not None else 1.0,
                            colour=cfg.colour_aug, scale_jitter=cfg.effective_scale_jitter)

    # -- epochs ----------------------------------------------------------------------------------
    def _loader(self, ds: CellDataset, batch_size: int, sampler=None, generator=None, drop_last=False) -> DataLoader:
        return DataLoader(
            ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=self.config.workers,
            drop_last=drop_last, generator=generator, pin_memory=self.device.type == "cuda",
        )

    def _train_epoch(self, model: nn.Module, ds: CellDataset, sampler: BalancedSampler, optimizer: torch.optim.Optimizer,
                     epoch: int, progress: Progress, num_classes: int, augment=None, card: ModelCard | None = None) -> tuple[float, float]:
        cfg = self.config
        torch.manual_seed(self.dist.rank_seed(_epoch_seed(cfg.seed, epoch, 1)))
        mix_rng = np.random.default_rng(_epoch_seed(cfg.seed, epoch, 2))
        sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 3))
        batch_size, order = self.dist.batches(cfg.batch_size, sampler)  # torchrun: this rank's slice of each global batch
        loader = self._loader(ds, batch_size, order, gen, drop_last=len(sampler) > cfg.batch_size)
        model.train()
        steps = len(loader)
        task = progress.add_task(f"epoch {epoch} training", total=steps)
        loss_sum = acc_sum = 0.0
        seen = 0
        for step, (images, targets) in enumerate(loader):
            set_lr(optimizer, lr_at(cfg, (epoch - 1) * steps + step, cfg.epochs * steps))
            if augment is not None:
                images = finish_batch(augment(images), card)
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device)
            mixed, soft, lam, perm = mixup_batch(images, targets, num_classes, cfg.mixup_alpha, mix_rng)
            logits, aux = split_logits(model(mixed))
            loss = soft_cross_entropy(logits, soft)
            if aux is not None:  # Inception v3's auxiliary classifier, weighted as in torchvision's recipe
                loss = loss + 0.4 * soft_cross_entropy(aux, soft)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.item())
            if not math.isfinite(value):
                raise WbcError(f"the training loss became {value} in epoch {epoch}: lower --lr")
            with torch.no_grad():
                pred = logits.argmax(1)
                acc = lam * (pred == targets).float().mean() + (1 - lam) * (pred == targets[perm]).float().mean()
            n = images.shape[0]
            loss_sum += value * n
            acc_sum += float(acc) * n
            seen += n
            progress.update(task, advance=1, description=f"epoch {epoch} training loss {loss_sum / seen:.3f}")
        progress.remove_task(task)
        loss_sum, acc_sum, seen = self.dist.sum(loss_sum, acc_sum, seen)
        return loss_sum / max(seen, 1), acc_sum / max(seen, 1)

    @torch.inference_mode()
    def _evaluate(self, model: nn.Module, ds: CellDataset, progress: Progress, what: str) -> tuple[float, float, np.ndarray]:
        """Mean cross-entropy, accuracy and logits (N x C) over ``ds`` (eval transform)."""
        model.eval()
        loader = self._loader(self.dist.shard(ds), max(2 * self.config.batch_size, 32))
        task = progress.add_task(what, total=len(loader))
        loss_sum = 0.0
        outputs: list[np.ndarray] = []
        for images, targets in loader:
            logits, _ = split_logits(model(images.to(self.device)))
            targets = targets.to(self.device)
            loss_sum += float(nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            outputs.append(logits.float().cpu().numpy())
            progress.update(task, advance=1)
        progress.remove_task(task)
        logits_all = np.concatenate(outputs) if outputs else np.zeros((0, len(ds.classes)), dtype=np.float32)
        loss_sum, logits_all = self.dist.gather_eval(loss_sum, logits_all, len(ds))  # torchrun: every rank's shard
        truth = np.asarray(ds.targets)
        acc = float((logits_all.argmax(1) == truth).mean()) if len(ds) else 0.0
        return loss_sum / max(len(ds), 1), acc, logits_all

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train (or resume), then evaluate the best checkpoint on val/test and write every artefact."""
        t_start = time.perf_counter()
        state = self._open_run_dir()
        if state is not None:
            self._adopt_saved_config(state)
        cfg = self.config
        samples, data_summary = self._split(resumed=state is not None)
        classes = _canonical(s.label for s in samples if s.split == "train")
        left_out = sorted({s.label for s in samples} - set(classes))
        if left_out:
            warn(f"class(es) {', '.join(left_out)} have no training images; their val/test images are left out")
            samples = [s for s in samples if s.label in classes]
        early = self._early_model
        self._early_model = None
        model, card = early if early is not None and early[1].classes == classes else self._build_model(classes, state)
        net = self.dist.wrap(model, self.device)  # torchrun: DDP and global-batch BatchNorm; `model` for eval and saving
        if self._manifest_root is not None and self.dist.is_lead:
            write_manifest(self.out / SPLIT_NAME, samples, self._manifest_root)

        subsets = {name: [s for s in samples if s.split == name] for name in ("train", "val", "test")}
        augment = self._augmenter(card)
        train_ds = CellDataset(subsets["train"], classes,
                               train_transform(card, cfg.mpp) if augment is not None else eval_transform(card, cfg.mpp))
        val_ds = CellDataset(subsets["val"], classes, eval_transform(card, cfg.mpp))
        sampler = BalancedSampler(train_ds.targets, cfg.seed, balance=cfg.balance)
        optimizer = torch.optim.RAdam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        start_epoch, train_seconds = 0, 0.0
        best: dict[str, float] = {"epoch": 0, "val_acc": -1.0, "val_loss": math.inf}
        summary: dict[str, Any] = {}
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"])
            best = {k: float(v) for k, v in state["best"].items()}
            train_seconds = float(state.get("train_seconds", 0.0))
            summary = dict(state.get("summary") or {})
        history = read_history(self.out / HISTORY_NAME, start_epoch)
        summary.update(data_summary)
        summary.update({
            "counts": {k: count_by(v) for k, v in subsets.items() if v},
            "balanced_epoch_size": len(sampler),
            "hyperparameters": cfg.hyperparameters(),
            "device": str(self.device),
            "torch_version": str(torch.__version__),
            "world_size": self.dist.world_size,
        })
        if start_epoch >= cfg.epochs:
            warn(f"{self.out} already completed {start_epoch} epoch(s); pass a larger --epochs to train longer")

        with make_progress(self.quiet) as progress:
            epochs_task = progress.add_task("epochs", total=cfg.epochs, completed=start_epoch)
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                t0 = time.perf_counter()
                train_loss, train_acc = self._train_epoch(net, train_ds, sampler, optimizer, epoch, progress, len(classes),
                                                          augment, card)
                val_loss, val_acc, _ = self._evaluate(model, val_ds, progress, f"epoch {epoch} validating")
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                       "val_acc": val_acc, "lr": float(optimizer.param_groups[0]["lr"]), "seconds": seconds}
                history.append(row)
                if val_acc > best["val_acc"] or (val_acc == best["val_acc"] and val_loss < best["val_loss"]):
                    best = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss}
                    card.training = {**summary, "best_epoch": epoch, "best_val_acc": val_acc, "epochs_completed": epoch}
                    if self.dist.is_lead:
                        save_checkpoint(self.out, model, card)
                if self.dist.is_lead:  # torchrun: rank 0 alone writes the run directory
                    _write_history(self.out / HISTORY_NAME, history)
                    save_training_state(self.out / LAST_NAME, {
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                        "config": _plain(cfg.to_dict()), "summary": _plain(summary), "train_seconds": train_seconds,
                        "rng": {"torch": torch.get_rng_state()},
                    })
                progress.update(epochs_task, completed=epoch, description=(
                    f"epoch {epoch}/{cfg.epochs} loss {train_loss:.3f} train {100 * train_acc:.1f}% val {100 * val_acc:.1f}%"))
                if self.on_epoch is not None:
                    self.on_epoch(row)

            self.dist.barrier()  # torchrun: rank 0 has written the best checkpoint the others load next
            metrics = self._final_metrics(model, classes, card, subsets, progress)
        card.metrics = metrics
        card.training = {**summary, "best_epoch": int(best["epoch"]), "best_val_acc": float(best["val_acc"]),
                         "epochs_completed": int(history[-1]["epoch"]) if history else start_epoch,
                         "train_seconds": round(train_seconds, 1)}
        if self.dist.is_lead:
            save_checkpoint(self.out, model, card)
            if history:
                plot_curves(history, self.out / CURVES_NAME)
            final = metrics.get("test") or metrics["val"]
            plot_confusion(final, self.out / CONFUSION_NAME, title="test split" if "test" in metrics else "validation split")
        return TrainResult(self.out, card, metrics, int(best["epoch"]), history, time.perf_counter() - t_start,
                           rank=self.dist.rank, world_size=self.dist.world_size)

    def _final_metrics(self, model: nn.Module, classes: list[str], card: ModelCard,
                       subsets: dict[str, list[Sample]], progress: Progress) -> dict[str, dict[str, Any]]:
        """Load the best weights into ``model`` and score the val and test splits."""
        if not (self.out / CHECKPOINT_NAME).is_file():
            raise WbcError(f"no checkpoint was written to {self.out}: train for at least one epoch")
        best_state, _ = load_state(self.out)
        model.load_state_dict(best_state)
        metrics: dict[str, dict[str, Any]] = {}
        scored: dict[str, tuple[np.ndarray, list[int]]] = {}
        for name in ("val", "test"):
            if subsets[name]:
                ds = CellDataset(subsets[name], classes, eval_transform(card, self.config.mpp))
                _, _, logits = self._evaluate(model, ds, progress, f"scoring the {name} split")
                metrics[name] = compute_metrics(ds.targets, logits.argmax(1), classes)
                scored[name] = (logits, list(ds.targets))
        if self.config.calibrate and "val" in scored:
            from ..calibration import calibration_report, fit_temperature

            card.temperature = round(fit_temperature(*scored["val"]), 4)
            card.confidence_threshold = self.config.unidentified_below
            for name, (logits, targets) in scored.items():
                metrics[name]["calibration"] = calibration_report(logits, targets, card.temperature, card.confidence_threshold)
        return metrics


def train(data: str | Path, out: str | Path, preset: str = "paper", resume: bool = False, quiet: bool = False,
          on_epoch: Callable[[dict[str, float]], None] | None = None, **options: Any) -> TrainResult:
    """Train a classifier on the class-per-folder images in ``data`` into the run directory ``out``.

    ``options`` are :class:`TrainConfig` fields (``arch``, ``epochs``, ``lr``, ...); ``None`` means "use the
    preset's value". With ``resume=True`` an existing run continues from ``last.pt`` with its saved
    settings and split (``epochs``/``workers``/``device`` may change; other explicit options must match).
    """
    config = make_config(data, out, preset=preset, **options)
    explicit = {k for k, v in options.items() if v is not None}
    trainer = Trainer(config, resume=resume, quiet=quiet, explicit=explicit, on_epoch=on_epoch)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()
