"""Images for verification and calibration: a sample from a folder, or synthetic cells.

Labels are not needed here (agreement between runtimes and INT8 calibration look at predictions
only), so DIR may be a class-per-folder data set, a train/test layout or a flat folder of crops.
Torch-free.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..card import ModelCard
from ..console import warn
from ..errors import WbcError
from ..files import list_files
from ..images import IMAGE_SUFFIXES, read_rgb
from ..preprocess import prepare_batch


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursive, sorted, hidden entries skipped)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise WbcError(f"image folder not found: {root} (pass a folder of cell crops, e.g. a class-per-folder data set)")
    return list_files(root, IMAGE_SUFFIXES)


def load_images(root: str | Path, limit: int | None = 128, seed: int = 0) -> list[np.ndarray]:
    """Up to ``limit`` RGB uint8 crops from ``root``, sampled evenly with a fixed seed.

    Unreadable files are skipped with one warning; a folder with no readable image is an error.
    """
    paths = list_images(root)
    if limit is not None and len(paths) > limit:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), size=limit, replace=False))]
    images: list[np.ndarray] = []
    bad: list[Path] = []
    for p in paths:
        try:
            images.append(read_rgb(p))
        except Exception:  # noqa: BLE001 - any decoder failure: skip the file
            bad.append(p)
    if bad:
        warn(f"skipped {len(bad)} unreadable image(s) in {root}, e.g. {bad[0]}")
    if not images:
        raise WbcError(f"no readable images in {root}: pass a folder of cell crops (PNG/JPEG/TIFF)")
    return images


def synthetic_images(n: int = 64, seed: int = 0, size: int = 96, fov_um: float | None = None) -> list[np.ndarray]:
    """``n`` synthetic WBC crops cycling through the five classes (for verification without data)."""
    from ..card import DEFAULT_FOV_UM
    from ..classes import CLASSES
    from ..data.synth_cells import render_cell_image

    rng = np.random.default_rng(seed)
    fov = float(fov_um or DEFAULT_FOV_UM)
    return [np.asarray(render_cell_image(CLASSES[i % len(CLASSES)], size, rng, fov_um=fov), dtype=np.uint8) for i in range(n)]


def sample_batch(card: ModelCard, data_dir: str | Path | None = None, n: int = 64, seed: int = 0) -> tuple[np.ndarray, str]:
    """A preprocessed N x 3 x S x S batch of real (``data_dir``) or synthetic cells, and a description."""
    if data_dir is not None:
        images = load_images(data_dir, limit=n, seed=seed)
        return prepare_batch(images, card), f"{len(images)} crops"
    images = synthetic_images(n, seed=seed, size=int(card.input_size), fov_um=card.fov_um)
    return prepare_batch(images, card), f"{len(images)} synth cells"
