"""The torch Dataset over indexed images, and the class-balancing sampler.

Class balancing (training set only): each epoch, every class is drawn as often as the largest class
(``target="max"``). A minority class's images are each repeated ``target // n`` times plus a random
``target % n`` of them once more, and every repetition is augmented independently, so oversampling
adds augmented variants rather than identical copies (the paper's "augmentation to balance classes").
An epoch therefore has ``num_classes * largest_class`` samples.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..console import warn
from ..errors import WbcError
from ..images import load_rgb
from .folders import Sample


class CellDataset(Dataset):
    """Images and class indices. ``transform`` maps a PIL image to a 3 x S x S tensor.

    A file that has become unreadable since indexing is replaced by another image of the same
    class (with a warning), so an epoch never crashes halfway; ``failures`` counts the replacements
    made in this process.
    """

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform: Callable[[Image.Image], torch.Tensor]):
        self.samples = list(samples)
        self.classes = list(classes)
        lookup = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({s.label for s in self.samples if s.label not in lookup})
        if unknown:
            raise WbcError(f"images of class(es) {', '.join(unknown)} are not among the model's classes {self.classes}")
        self.targets = [lookup[s.label] for s in self.samples]
        self.transform = transform
        self.failures = 0
        self._by_class: dict[int, list[int]] = {}
        for i, t in enumerate(self.targets):
            self._by_class.setdefault(t, []).append(i)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        target = self.targets[index]
        try:
            return self.transform(load_rgb(self.samples[index].path)), target
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            self._report(index, exc)
        # Fall back to the next images of the same class (a few tries, then give up clearly).
        same = self._by_class[target]
        pos = same.index(index)
        for step in range(1, min(len(same), 8)):
            j = same[(pos + step) % len(same)]
            try:
                return self.transform(load_rgb(self.samples[j].path)), target
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                self._report(j, exc)
        raise WbcError(
            f"{self.samples[index].label} images have become unreadable since indexing (e.g. {self.samples[index].path}): "
            "check the data directory"
        )

    def _report(self, index: int, exc: Exception) -> None:
        self.failures += 1
        warn(f"could not read {self.samples[index].path} ({exc}); using another {self.samples[index].label} image")


class BalancedSampler(Sampler[int]):
    """Oversample minority classes up to the largest class, reshuffled each epoch.

    Deterministic given ``seed`` and the epoch set with :meth:`set_epoch` (so a resumed run draws
    the same samples as an uninterrupted one). ``balance=False`` is a plain seeded shuffle.
    """

    def __init__(self, targets: Sequence[int], seed: int, balance: bool = True):
        self.targets = np.asarray(targets, dtype=np.int64)
        self.seed = int(seed)
        self.balance = balance
        self.epoch = 0
        counts = np.bincount(self.targets)
        present = counts[counts > 0]
        self.per_class = int(present.max()) if len(present) else 0
        self._length = int(self.per_class * len(present)) if balance else len(self.targets)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._length

    def indices(self) -> np.ndarray:
        """This epoch's sample indices."""
        rng = np.random.default_rng([abs(self.seed), 7919, self.epoch])
        if not self.balance:
            return rng.permutation(len(self.targets))
        chosen: list[np.ndarray] = []
        for c in np.unique(self.targets):
            members = np.flatnonzero(self.targets == c)
            reps = self.per_class // len(members)
            extra = self.per_class - reps * len(members)
            chosen.append(np.repeat(members, reps))
            if extra:
                chosen.append(rng.choice(members, size=extra, replace=False))
        return rng.permutation(np.concatenate(chosen))

    def __iter__(self):
        return iter(self.indices().tolist())
