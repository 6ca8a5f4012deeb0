"""Stain normalisation of cell crops, in numpy (torch-free), identical in training and at inference.

A lab's scanner, stain batch and lamp shift a smear's colours; a classifier trained on one lab's
colours reads another's neutrophils as eosinophils. The model card's ``stain`` entry names one method,
applied to every crop (uint8 RGB, at the model's input size) by :func:`wbc_deploy.preprocess.prepare_batch`,
by the trainer after augmentation and by every evaluation:

* ``none``: the crop as it is.
* ``glass``: white balance to the glass. The glass colour of the crop (the median of its brightest
  pixels) is mapped to a fixed reference glass, channel by channel (von Kries scaling). This removes the
  lamp's and the camera's colour cast and the stain's background tint (a yellow Tecom background, a
  blue BCCD one) while keeping the stains' relative colours, which tell eosinophils from neutrophils.
* ``reinhard``: Reinhard et al. (2001): each CIE-Lab channel of the crop moved to a reference mean and
  standard deviation (the PBC training cells' averages).

Methods work per crop (no slide-level state), so train, evaluate and count see the same numbers.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Reference glass colour (RGB 0..255) for ``glass``: a CellaVision-like May-Grünwald-Giemsa background.
REFERENCE_GLASS: tuple[float, float, float] = (245.0, 230.0, 220.0)
#: Share of a crop's brightest pixels whose median is its glass colour.
GLASS_FRACTION: float = 0.03
#: Reinhard reference: CIE-Lab channel means and standard deviations of PBC cell crops (24 um fields).
REINHARD_REFERENCE: dict[str, tuple[float, float, float]] = {"mean": (76.0, 12.0, -4.0), "std": (14.0, 10.0, 9.0)}

METHODS: tuple[str, ...] = ("none", "glass", "reinhard")
#: Colour augmentations the trainer offers (implemented in wbc_deploy.data.augment, with torch).
COLOUR_AUGMENTATIONS: tuple[str, ...] = ("none", "light", "stain")


def method_of(stain: Mapping[str, Any] | None) -> str:
    """The normalisation method a card's ``stain`` entry names (``none`` when absent)."""
    method = (stain or {}).get("normalise", "none")
    if method not in METHODS:
        raise ValueError(f"unknown stain normalisation {method!r}; choose one of {', '.join(METHODS)}")
    return method


def glass_colour(batch: np.ndarray, fraction: float = GLASS_FRACTION) -> np.ndarray:
    """Per-image glass colour (N x 3 float): the mean RGB of the brightest ``fraction`` of each image's pixels."""
    n = batch.shape[0]
    flat = batch.reshape(n, -1, 3).astype(np.float32)
    bright = flat.sum(axis=2)
    k = max(1, int(round(fraction * bright.shape[1])))
    idx = np.argpartition(bright, bright.shape[1] - k, axis=1)[:, -k:]
    return np.take_along_axis(flat, idx[..., None], axis=1).mean(axis=1)


def white_balance(batch: np.ndarray, reference: tuple[float, float, float] = REFERENCE_GLASS) -> np.ndarray:
    """Scale each channel so each image's glass colour becomes ``reference`` (uint8 NHWC in and out)."""
    glass = np.maximum(glass_colour(batch), 40.0)
    gain = np.asarray(reference, np.float32)[None, :] / glass
    out = batch.astype(np.float32) * gain[:, None, None, :]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _rgb_to_lab(batch: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(batch.reshape(-1, batch.shape[-2], 3)).reshape(batch.shape).astype(np.float32)


def reinhard(batch: np.ndarray, reference: Mapping[str, tuple[float, float, float]] = REINHARD_REFERENCE) -> np.ndarray:
    """Reinhard colour transfer in CIE-Lab, per image, to ``reference`` means and standard deviations."""
    from skimage.color import lab2rgb

    lab = _rgb_to_lab(batch)
    n = lab.shape[0]
    flat = lab.reshape(n, -1, 3)
    mean = flat.mean(axis=1)[:, None, None, :]
    std = np.maximum(flat.std(axis=1), 1e-3)[:, None, None, :]
    ref_mean = np.asarray(reference["mean"], np.float32)
    ref_std = np.asarray(reference["std"], np.float32)
    lab = (lab - mean) / std * ref_std + ref_mean
    rgb = lab2rgb(lab.reshape(-1, lab.shape[-2], 3)).reshape(batch.shape)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def normalise_stain(batch: np.ndarray, stain: Mapping[str, Any] | None) -> np.ndarray:
    """Apply the card's stain normalisation to an N x H x W x 3 uint8 RGB batch (a copy; ``none``: as is)."""
    method = method_of(stain)
    if method == "none" or batch.shape[0] == 0:
        return batch
    if method == "glass":
        return white_balance(batch)
    return reinhard(batch)
