"""Index class-per-folder WBC image data sets, including the public layouts of the reference paper.

Supported layouts (``DATA`` is the directory you pass to ``wbc-deploy train``):

* **class folders**: ``DATA/<class>/*.png`` (LDWBC and LISC are distributed like this; for LISC pass
  its ``Main Dataset`` folder: ``Baso``/``eosi``/``lymp``/``mono``/``neut`` are recognised, ``mixt`` is
  ignored with a warning). No test split: training makes a stratified 3:1:1 split. Images in
  sub-folders of a class folder belong to that class.
* **split folders**: ``DATA/train/<class>/``, ``DATA/test/<class>/`` and optionally
  ``DATA/val/<class>/``. Spellings are case-insensitive: ``train``/``training``, ``val``/``valid``/
  ``validation``, ``test``/``testing``/``TestA``. BCCD (Kaggle ``dataset2-master/images``: ``TRAIN``,
  ``TEST``; ``TEST_SIMPLE`` is ignored) and Raabin-WBC (``Train``, ``TestA``; ``TestB``, a different
  microscope, is ignored: evaluate on it separately) are laid out like this. Training splits
  ``train`` 3:1 into train/val (unless a ``val`` folder exists) and keeps ``test`` as the test split.
* a wrapper directory holding exactly one sub-directory (e.g. ``dataset2-master`` -> ``images``) is
  descended into automatically.

Class folder names are normalised with :func:`wbc_deploy.classes.normalise_class_name`; folders that are
not WBC classes are ignored with a warning. Non-image files and images that fail to decode are
skipped with a warning and counted. This module is torch-free.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..classes import CLASSES, normalise_class_name
from ..console import warn
from ..errors import WbcError

#: File name suffixes read as images (case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})

_SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train", "trainset": "train", "trainingset": "train",
    "val": "val", "valid": "val", "validation": "val", "valset": "val", "dev": "val",
    "test": "test", "testing": "test", "testset": "test", "testa": "test",
}

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``split`` is ``train``/``val``/``test`` or None when not yet assigned."""

    path: Path
    label: str
    split: str | None = None


@dataclass
class DatasetIndex:
    """The images found under a data directory, and what was skipped or ignored."""

    root: Path
    layout: str  # "class-folders" or "split-folders"
    samples: list[Sample] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    non_image: list[Path] = field(default_factory=list)
    ignored_folders: list[tuple[Path, str]] = field(default_factory=list)  # (folder, why)

    @property
    def classes(self) -> list[str]:
        """Classes present, in canonical order."""
        present = {s.label for s in self.samples}
        return [c for c in CLASSES if c in present]

    @property
    def splits_present(self) -> set[str]:
        return {s.split for s in self.samples if s.split is not None}

    @property
    def skipped(self) -> int:
        """Files skipped (non-image or unreadable)."""
        return len(self.unreadable) + len(self.non_image)

    def counts(self) -> dict[str, int]:
        """Images per class."""
        c = Counter(s.label for s in self.samples)
        return {k: c[k] for k in self.classes}


def class_of_folder(name: str) -> str | None:
    """Canonical class for a folder name (``Neutrophils``, ``NEUTROPHIL``, LISC ``neut``), else None."""
    return normalise_class_name(name)


def split_of_folder(name: str) -> str | None:
    """``train``/``val``/``test`` for a split folder name (``TRAIN``, ``Validation``, ``TestA``), else None."""
    key = re.sub(r"[\s._-]+", "", name.strip().lower())
    return _SPLIT_ALIASES.get(key)


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise WbcError(f"cannot list {path}: {exc.strerror or exc}") from None


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def verify_image(path: Path) -> bool:
    """True when ``path`` decodes as an image (JPEGs are decoded at reduced scale, which is cheap)."""
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            return im.width > 0 and im.height > 0
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable"
        return False


def _files_under(folder: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                out.append(Path(dirpath) / f)
    return out


def _collect_class_folders(folder: Path, split: str | None, index: DatasetIndex, candidates: list[Sample]) -> None:
    for sub in _subdirs(folder):
        label = class_of_folder(sub.name)
        if label is None:
            index.ignored_folders.append((sub, "not a WBC class"))
            continue
        for f in _files_under(sub):
            if _is_image_name(f):
                candidates.append(Sample(f, label, split))
            else:
                index.non_image.append(f)


def _descend(root: Path) -> Path:
    """Follow wrapper directories that hold exactly one sub-directory and nothing recognisable."""
    current = root
    for _ in range(4):
        subs = _subdirs(current)
        if any(class_of_folder(s.name) or split_of_folder(s.name) for s in subs):
            return current
        if len(subs) != 1:
            return current
        current = subs[0]
    return current


def index_dataset(
    root: str | Path,
    verify: bool = True,
    allow_splits: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    workers: int = 4,
) -> DatasetIndex:
    """Find the labelled images under ``root`` (see the module docstring for the layouts).

    ``verify`` decodes each image once (in a few threads) and skips those that fail.
    ``allow_splits=False`` refuses a train/test layout (for ``evaluate``, which scores one folder).
    ``on_progress(done, total)`` is called while verifying. Warnings name what was ignored or skipped.
    Raises WbcError when ``root`` is missing or holds no WBC class folder with images.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise WbcError(f"data directory not found: {root}")
    if not root.is_dir():
        raise WbcError(f"{root} is not a directory: pass a folder with one sub-folder per WBC class")
    base = _descend(root)
    subs = _subdirs(base)
    split_dirs = [(s, split_of_folder(s.name)) for s in subs if split_of_folder(s.name)]
    class_dirs = [s for s in subs if class_of_folder(s.name)]
    candidates: list[Sample] = []
    if split_dirs and not class_dirs:
        if not allow_splits:
            names = ", ".join(s.name for s, _ in split_dirs)
            raise WbcError(f"{base} holds split folders ({names}), not class folders: point at one of them, e.g. {split_dirs[0][0]}")
        index = DatasetIndex(root=base, layout="split-folders")
        for s, split in split_dirs:
            _collect_class_folders(s, split, index, candidates)
        index.ignored_folders.extend((s, "not a train/val/test folder") for s in subs if not split_of_folder(s.name))
    else:
        index = DatasetIndex(root=base, layout="class-folders")
        if split_dirs:
            warn(f"{base} mixes class folders and split folders; using the class folders, ignoring {', '.join(s.name for s, _ in split_dirs)}")
        _collect_class_folders(base, None, index, candidates)

    index.samples = candidates
    by_reason: dict[tuple[Path, str], list[str]] = {}
    for folder, why in index.ignored_folders:
        by_reason.setdefault((folder.parent, why), []).append(folder.name)
    for (parent, why), names in by_reason.items():  # one line per place and reason (PBC: ig, erythroblast, platelet)
        listed = ", ".join(repr(n) for n in names)
        warn(f"ignoring folder{'s' if len(names) > 1 else ''} {listed} in {parent}: {why}")
    if index.non_image:
        warn(f"skipped {len(index.non_image)} non-image file(s), e.g. {index.non_image[0]}")
    if verify:
        verify_samples(index, on_progress, workers)
    if not index.samples:
        raise WbcError(
            f"no WBC images found in {root}: expected one sub-folder per class "
            f"({', '.join(CLASSES)}) holding image files, or train/ and test/ folders of such sub-folders"
        )
    return index


def verify_samples(
    index: DatasetIndex, on_progress: Callable[[int, int], None] | None = None, workers: int = 4
) -> DatasetIndex:
    """Decode every image of ``index`` once; move those that fail to ``index.unreadable`` (with a warning)."""
    if not index.samples:
        return index
    ok = _verify_all([s.path for s in index.samples], on_progress, workers)
    bad = [s.path for s, good in zip(index.samples, ok) if not good]
    index.samples = [s for s, good in zip(index.samples, ok) if good]
    index.unreadable.extend(bad)
    if bad:
        warn(f"skipped {len(bad)} unreadable image(s), e.g. {bad[0]}")
    return index


def _verify_all(paths: list[Path], on_progress: Callable[[int, int], None] | None, workers: int) -> list[bool]:
    total = len(paths)
    results: list[bool] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, ok in enumerate(pool.map(verify_image, paths, chunksize=16), 1):
            results.append(ok)
            if on_progress is not None and (i % 64 == 0 or i == total):
                on_progress(i, total)
    return results


def count_by(samples: Iterable[Sample], split: str | None = None) -> dict[str, int]:
    """Images per class (canonical order), optionally only those of one split."""
    c = Counter(s.label for s in samples if split is None or s.split == split)
    return {k: c[k] for k in CLASSES if c[k]}
