"""Image files: the one list of image suffixes and the one RGB loader of the package (torch-free)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import WbcError

#: File name suffixes read as images (case-insensitive), everywhere: data sets, calibration, explain, count.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def is_image_name(path: str | Path) -> bool:
    """True when the file name has one of :data:`IMAGE_SUFFIXES`."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as an RGB PIL image (fully decoded, file closed); Pillow's exception if it cannot."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (WbcError with the reason if it cannot be read)."""
    try:
        return np.asarray(load_rgb(path), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise WbcError(f"cannot read image {path}: {exc}") from None
