"""Stratified train/val/test splits and their CSV manifest (torch-free).

The reference paper splits a data set 3:1:1 (train/val/test) when it has no test split of its own,
and its training set 3:1 (train/val) when it has. Splits are stratified (made per class) and depend
only on the file list and the seed. The manifest ``split.csv`` (``path,label,split``; paths relative
to the data directory, POSIX separators) is written into the run directory and reused on ``--resume``.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..classes import CLASSES
from ..console import warn
from ..errors import WbcError
from .folders import SPLITS, DatasetIndex, Sample

#: Fractions of each class that go to train/val/test when the data has no test split.
FRACTIONS_NO_TEST: tuple[float, float, float] = (3 / 5, 1 / 5, 1 / 5)
#: Fractions of the training folder that go to train/val when the data has its own test split.
FRACTIONS_WITH_TEST: tuple[float, float] = (3 / 4, 1 / 4)

MANIFEST_COLUMNS = ("path", "label", "split")


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``fractions`` (largest remainder), giving every part >= 1 item when n allows."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    # With few images, make sure val/test get one each before train gets more than one.
    for i in range(1, len(counts)):
        if counts[i] == 0 and counts[0] > 1:
            counts[i] += 1
            counts[0] -= 1
    return counts


def content_key(path: Path) -> str:
    """SHA-256 of a file's bytes (byte-identical images share a key); the path itself if it cannot be read."""
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return f"path:{path}"


def stratified_split(
    samples: Iterable[Sample], names: Sequence[str], fractions: Sequence[float], seed: int
) -> list[Sample]:
    """Assign each sample one of ``names`` with per-class ``fractions``; deterministic given ``seed``.

    Samples are sorted by path within each class before shuffling, so the result does not depend on
    the order the files were listed in. Byte-identical files are one unit: they always land in the
    same split (a duplicate in train and test would inflate the test figures), also across classes.
    """
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    assigned: dict[str, str] = {}  # content key -> split, shared across classes
    out: list[Sample] = []
    for label in sorted(by_class, key=lambda c: (CLASSES.index(c) if c in CLASSES else 99, c)):
        items = sorted(by_class[label], key=lambda s: str(s.path))
        groups: dict[str, list[Sample]] = {}
        for s in items:
            groups.setdefault(content_key(s.path), []).append(s)
        keys = list(groups)  # first-seen order = path order
        rng = np.random.default_rng([abs(int(seed)), CLASSES.index(label) if label in CLASSES else 99])
        perm = rng.permutation(len(keys))
        counts = _allocate(len(keys), fractions)
        start = 0
        for name, k in zip(names, counts):
            for j in perm[start : start + k]:
                key = keys[int(j)]
                split = assigned.setdefault(key, name)
                out.extend(Sample(s.path, s.label, split) for s in groups[key])
            start += k
    return out


def make_split(index: DatasetIndex, seed: int) -> list[Sample]:
    """The paper's split of an indexed data set: 3:1:1, or 3:1 of ``train`` when a test split exists.

    Existing ``val`` folders are kept as they are. Raises WbcError when fewer than two classes have
    training images. Warns about classes too small to appear in every split.
    """
    present = index.splits_present
    if index.layout == "split-folders":
        if "train" not in present:
            raise WbcError(f"{index.root} has {', '.join(sorted(present))} folders but no train folder with WBC images")
        given = [s for s in index.samples if s.split in ("val", "test")]
        train = [s for s in index.samples if s.split == "train"]
        if "val" in present:
            samples = train + given
        else:
            samples = stratified_split(train, ("train", "val"), FRACTIONS_WITH_TEST, seed) + given
    else:
        samples = stratified_split(index.samples, SPLITS, FRACTIONS_NO_TEST, seed)
    check_split(samples)
    return samples


def check_split(samples: Sequence[Sample]) -> None:
    """Refuse splits that cannot train a classifier; warn about classes missing from val or test."""
    train_classes = sorted({s.label for s in samples if s.split == "train"})
    if not train_classes:
        raise WbcError("no readable training images: every image was skipped (see the warnings above)")
    if len(train_classes) < 2:
        found = ", ".join(train_classes) or "none"
        raise WbcError(
            f"the training data has only one WBC class ({found}): a classifier needs images of at least "
            "two classes, each in its own sub-folder"
        )
    if not any(s.split == "val" for s in samples):
        raise WbcError("the validation split is empty: add more images (at least 2 per class)")
    for split in ("val", "test"):
        have = {s.label for s in samples if s.split == split}
        if split == "test" and not have:
            continue
        missing = [c for c in train_classes if c not in have]
        if missing:
            warn(f"no {', '.join(missing)} image(s) in the {split} split (too few images of that class)")


def write_manifest(path: str | Path, samples: Sequence[Sample], root: str | Path) -> None:
    """Write ``path,label,split`` rows, paths relative to ``root`` when they lie under it."""
    root = Path(root).resolve()
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_COLUMNS)
        for s in samples:
            p = Path(s.path).resolve()
            try:
                rel = p.relative_to(root).as_posix()
            except ValueError:
                rel = p.as_posix()
            w.writerow((rel, s.label, s.split or ""))
    tmp.replace(path)


def read_manifest(path: str | Path, root: str | Path) -> list[Sample]:
    """Read a manifest written by :func:`write_manifest`, resolving relative paths against ``root``.

    Raises WbcError if the file is malformed or if any listed image is missing.
    """
    path, root = Path(path), Path(root)
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or tuple(reader.fieldnames[:3]) != MANIFEST_COLUMNS:
                raise WbcError(f"{path} is not a split manifest (expected the header {','.join(MANIFEST_COLUMNS)})")
            rows = list(reader)
    except FileNotFoundError:
        raise WbcError(f"split manifest not found: {path}") from None
    samples: list[Sample] = []
    for i, row in enumerate(rows, 2):
        label, split = row.get("label") or "", row.get("split") or ""
        if label not in CLASSES or split not in SPLITS:
            raise WbcError(f"{path} line {i}: bad label {label!r} or split {split!r}")
        p = Path(row["path"])
        samples.append(Sample(p if p.is_absolute() else root / p, label, split))
    missing = [s.path for s in samples if not s.path.exists()]
    if missing:
        raise WbcError(
            f"{len(missing)} image(s) of the saved split are missing under {root} (e.g. {missing[0]}): "
            "resume with the same DATA directory"
        )
    return samples
