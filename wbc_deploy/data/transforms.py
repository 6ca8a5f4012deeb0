"""Training augmentation and the evaluation transform.

The evaluation transform is exactly the deployment preprocessing (:mod:`wbc_deploy.preprocess`):
bilinear resize of the whole crop to the input size, scale to 0..1, normalise with the card's
mean/std. The training transform resizes the same way first, then augments at the input size
(torchvision transforms v2 on PIL images) and normalises with the same function:

* rotation by any angle and translation (up to ``translate`` of the side), applied to a
  reflect-padded image and cropped back, so no artificial black corners appear that the
  deployed model would never see;
* horizontal and vertical flips (a smear has no preferred orientation);
* mild colour jitter (brightness/contrast/saturation 0.1, hue 0.02) for stain variation.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from ..card import ModelCard
from ..preprocess import normalise_batch, resize_rgb

Transform = Callable[[Image.Image], torch.Tensor]


def to_tensor(image: np.ndarray, card: ModelCard) -> torch.Tensor:
    """An S x S x 3 uint8 RGB array -> normalised 3 x S x S float32 tensor (the deployment formula)."""
    return torch.from_numpy(normalise_batch(image[None], card.mean, card.std, card.color_order)[0])


def eval_transform(card: ModelCard) -> Transform:
    """The deterministic transform used for validation, testing and every runtime."""
    size = int(card.input_size)

    def apply(image: Image.Image) -> torch.Tensor:
        return to_tensor(resize_rgb(image, size), card)

    return apply


def augmentation(size: int, degrees: float = 180.0, translate: float = 0.1, jitter: float = 0.1) -> v2.Compose:
    """The v2 pipeline applied to an already-resized ``size`` x ``size`` PIL image."""
    # The corners of the rotated crop reach size/sqrt(2) from the centre, plus the translation.
    pad = int(math.ceil(size * (math.sqrt(0.5) - 0.5 + translate))) + 2
    padded = size + 2 * pad
    return v2.Compose(
        [
            v2.Pad(pad, padding_mode="reflect"),
            v2.RandomAffine(degrees=degrees, translate=(translate * size / padded,) * 2, interpolation=v2.InterpolationMode.BILINEAR),
            v2.CenterCrop(size),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 5),
        ]
    )


def train_transform(card: ModelCard, augment: bool = True) -> Transform:
    """Resize (as in deployment), augment, normalise (as in deployment)."""
    size = int(card.input_size)
    aug = augmentation(size) if augment else None

    def apply(image: Image.Image) -> torch.Tensor:
        arr = resize_rgb(image, size)
        if aug is not None:
            arr = np.asarray(aug(Image.fromarray(arr)), dtype=np.uint8)
        return to_tensor(arr, card)

    return apply
