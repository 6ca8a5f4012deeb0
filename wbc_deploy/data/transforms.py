"""What the trainer feeds the model: the cell's field of view, then (training) batch augmentation.

Two steps, the same in training, ``evaluate`` and ``count``:

1. **The field** (:func:`field_image`): with ``--mpp X`` the images are X um/px and the model sees the
   card's field of view (``fov_um``, 24 um by default) centred on the image, cut and resized by
   :func:`wbc_deploy.slide.crop.image_field`, the function that cuts ``count``'s crops (padded with
   the image's glass colour where the field is larger than the image). Without ``--mpp`` the whole
   image is the field, resized to the input size.
2. **The model input** (:func:`wbc_deploy.preprocess.prepare_resized`): stain normalisation as the card
   says, scale to 0..1, mean/std, NCHW: the deployment formula, used by every runtime.

For training, the dataset returns a *context* crop (:data:`~wbc_deploy.data.augment.CONTEXT` fields wide
with ``--mpp``) as float 0..1, un-normalised; the trainer augments whole batches
(:class:`~wbc_deploy.data.augment.BatchAugment`), rounds them to uint8 as a camera would, and applies
step 2 (:func:`finish_batch`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from ..card import ModelCard
from ..preprocess import prepare_resized, resize_rgb
from .augment import CONTEXT

Transform = Callable[[Image.Image], torch.Tensor]


def field_image(image: Image.Image | np.ndarray, size: int, mpp: float | None, fov_um: float | None, context: float = 1.0) -> np.ndarray:
    """The cell's field of view (times ``context``) as ``round(size * context)`` px RGB uint8.

    ``mpp`` None: the whole image is the field (resized; ``context`` is ignored).
    """
    if mpp is None or fov_um is None:
        return resize_rgb(image, size)
    from ..slide.crop import image_field

    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    return image_field(rgb, float(mpp), float(fov_um) * context, int(round(size * context)))


def to_tensor(image: np.ndarray, card: ModelCard) -> torch.Tensor:
    """An S x S x 3 uint8 RGB array -> the model's 3 x S x S float32 input (the deployment formula)."""
    return torch.from_numpy(prepare_resized(image[None], card)[0])


def eval_transform(card: ModelCard, mpp: float | None = None) -> Transform:
    """The deterministic transform used for validation, testing and every runtime (images at ``mpp`` um/px)."""
    size = int(card.input_size)

    def apply(image: Image.Image) -> torch.Tensor:
        return to_tensor(field_image(image, size, mpp, card.fov_um), card)

    return apply


def context_size(card: ModelCard, mpp: float | None) -> int:
    """Side (px) of the training context crops: the input size, times CONTEXT with ``--mpp``."""
    return int(card.input_size) if mpp is None else int(round(int(card.input_size) * CONTEXT))


def train_transform(card: ModelCard, mpp: float | None = None) -> Transform:
    """An image -> its context crop as 3 x C x C float 0..1 (augmented and normalised later, per batch)."""
    size = int(card.input_size)
    context = 1.0 if mpp is None else CONTEXT

    def apply(image: Image.Image) -> torch.Tensor:
        arr = field_image(image, size, mpp, card.fov_um, context)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)

    return apply


def finish_batch(images: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Augmented N x 3 x S x S float 0..1 images -> the model's input: rounded to uint8 (as a camera's
    pixels are), then stain normalisation, mean/std and NCHW by :func:`prepare_resized`."""
    u8 = (images.detach().cpu().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return torch.from_numpy(prepare_resized(u8, card))
