"""The preprocessing contract, in numpy and Pillow only (shared by training, export and every runtime).

A crop is an RGB uint8 array covering the model's field of view; it is resized to the model's
input size with Pillow's bilinear filter, stain-normalised as the card says (``card.stain``; none by
default), scaled to 0..1 and normalised with the card's mean/std, then laid out NCHW float32. Training's evaluation transform calls these same functions, so what the
model saw in training is bit-for-bit what a deployed runtime feeds it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .card import ModelCard


def resize_rgb(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Resize an RGB image (array HxWx3 uint8 or PIL image) to ``size`` x ``size``, bilinear."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return np.asarray(pil, dtype=np.uint8)


def normalise_batch(batch: np.ndarray, mean: Sequence[float], std: Sequence[float], color_order: str = "RGB") -> np.ndarray:
    """NHWC uint8 RGB -> NCHW float32, scaled to 0..1 and normalised per channel."""
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected an N x H x W x 3 batch, got shape {batch.shape}")
    if color_order == "BGR":
        batch = batch[..., ::-1]
    scale = np.float32(1.0 / 255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, 3)
    s = np.asarray(std, dtype=np.float32).reshape(1, 1, 1, 3)
    out = (batch.astype(np.float32) * scale - m) / s
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def prepare_resized(batch: np.ndarray, card: ModelCard) -> np.ndarray:
    """N x S x S x 3 uint8 RGB crops already at the input size -> the model's input: the card's stain
    normalisation (:mod:`wbc_deploy.stain`), then :func:`normalise_batch`."""
    from .stain import normalise_stain

    return normalise_batch(normalise_stain(batch, card.stain), card.mean, card.std, card.color_order)


def prepare_batch(images: Sequence[np.ndarray | Image.Image], card: ModelCard) -> np.ndarray:
    """Resize, stain-normalise and normalise RGB crops into the model's N x 3 x S x S float32 input."""
    size = int(card.input_size)
    if len(images) == 0:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    stacked = np.stack([resize_rgb(im, size) for im in images])
    return prepare_resized(stacked, card)
