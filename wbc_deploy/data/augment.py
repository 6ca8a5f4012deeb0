"""Training augmentation on batches (torch): geometry in one resampling, then colour and image quality.

The dataset hands the trainer a *context* crop per image: the cell's field of view widened by
:data:`CONTEXT` (with ``--mpp``; without it the whole image, as before), already at the model's scale.
:class:`BatchAugment` then draws, per image:

* geometry, as one affine resampling of the context crop to the input size: any rotation, a flip,
  a translation of up to ``translate`` of the field, and a scale change of up to ``scale_jitter``
  (+-15% by default with ``--mpp``: scanners' um/px and cell sizes vary that much). Pixels outside the
  context are reflected, so no black corners appear that a deployed model would never see;
* colour, by ``colour``:
  - ``none``;
  - ``light``: brightness/contrast/saturation +-10%, hue +-0.02 turns (the earlier default);
  - ``stain``: stain augmentation in the haematoxylin-eosin-DAB optical-density space (Tellez et al.
    2019, "HED jitter": each stain's concentration scaled by 1 +- ``hed_sigma`` and shifted by
    +- ``hed_sigma``/4), then brightness +-25%, contrast +-40%, saturation +-50%, gamma 0.7-1.4, hue
    +-``hue`` turns, per-channel gains +-15% (a lamp's colour cast) and 5% grey images; plus image
    quality: Gaussian blur (30%, sigma 0.3-1.5 px: focus), JPEG re-encoding (30%, quality 30-90:
    photographed smears such as BCCD) and sensor noise (20%).

Randomness comes from torch's global generator (the trainer reseeds it per epoch, so a resumed run
draws the same augmentations) and, for JPEG, a numpy generator seeded from it.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..stain import COLOUR_AUGMENTATIONS

#: With ``--mpp`` the dataset cuts this many fields of view around each cell (room for rotation and jitter).
CONTEXT: float = 1.5

# Ruifrok & Johnston's H, E, DAB optical-density vectors (rows), as in skimage.color.rgb_from_hed.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB_FROM_YIQ = torch.linalg.inv(_YIQ_FROM_RGB)


def _uniform(n: int, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return torch.empty(n, *shape).uniform_(lo, hi)


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 colour matrix to an N x 3 x H x W batch (out_c = sum_d matrix[out_c, d] * x_d)."""
    return torch.einsum("bdhw,cd->bchw", x, matrix)


@dataclass
class BatchAugment:
    """Augment a batch of context crops (N x 3 x H x W float 0..1) into N x 3 x size x size float 0..1."""

    size: int
    context: float = 1.0
    colour: str = "light"
    scale_jitter: float = 0.0
    translate: float = 0.1
    hue: float = 0.1
    hed_sigma: float = 0.2

    def __post_init__(self) -> None:
        if self.colour not in COLOUR_AUGMENTATIONS:
            raise ValueError(f"unknown colour augmentation {self.colour!r}; choose one of {', '.join(COLOUR_AUGMENTATIONS)}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.geometry(x)
        if self.colour == "light":
            x = self.light(x)
        elif self.colour == "stain":
            x = self.quality(self.stain(x))
        return x

    # -- geometry ---------------------------------------------------------------------------------
    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Rotation, flip, translation and scale jitter in one bilinear resampling to ``size``."""
        n = x.shape[0]
        angle = _uniform(n, 0.0, 2 * math.pi)
        scale = _uniform(n, 1 - self.scale_jitter, 1 + self.scale_jitter) if self.scale_jitter > 0 else torch.ones(n)
        flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
        k = scale / self.context  # the output covers one field (x scale) of a context this many fields wide
        c, s = torch.cos(angle), torch.sin(angle)
        t = self.translate / self.context
        tx, ty = _uniform(n, -t, t), _uniform(n, -t, t)
        theta = torch.stack([torch.stack([k * c * flip, -k * s, tx], 1), torch.stack([k * s * flip, k * c, ty], 1)], 1)
        grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # -- colour -----------------------------------------------------------------------------------
    @staticmethod
    def _bcs(x: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
        n = x.shape[0]
        x = x * _uniform(n, 1 - brightness, 1 + brightness, 1, 1, 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - contrast, 1 + contrast, 1, 1, 1) + mean
        grey = x.mean(1, keepdim=True)
        x = (x - grey) * _uniform(n, 1 - saturation, 1 + saturation, 1, 1, 1) + grey
        return x.clamp(0, 1)

    @staticmethod
    def _hue(x: torch.Tensor, turns: float) -> torch.Tensor:
        """Rotate the hue by up to +-``turns`` of a full circle (a rotation of the YIQ chroma plane)."""
        n = x.shape[0]
        angle = _uniform(n, -turns, turns) * 2 * math.pi
        yiq = _mix(x, _YIQ_FROM_RGB)
        c, s = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
        i, q = yiq[:, 1] * c - yiq[:, 2] * s, yiq[:, 1] * s + yiq[:, 2] * c
        return _mix(torch.stack([yiq[:, 0], i, q], 1), _RGB_FROM_YIQ).clamp(0, 1)

    def light(self, x: torch.Tensor) -> torch.Tensor:
        return self._hue(self._bcs(x, 0.1, 0.1, 0.1), 0.02)

    def stain(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        od = -torch.log((x * 255 + 1) / 256)
        conc = _mix(od, _HED_FROM_RGB.T.contiguous())
        sig = self.hed_sigma
        conc = conc * _uniform(n, 1 - sig, 1 + sig, 3, 1, 1) + _uniform(n, -sig / 4, sig / 4, 3, 1, 1)
        x = ((256 * torch.exp(-_mix(conc, _RGB_FROM_HED.T.contiguous())) - 1) / 255).clamp(0, 1)
        x = self._bcs(x, 0.25, 0.4, 0.5)
        x = x.clamp(1e-4, 1) ** _uniform(n, 0.7, 1.4, 1, 1, 1)
        x = self._hue(x, self.hue)
        x = (x * _uniform(n, 0.85, 1.15, 3, 1, 1)).clamp(0, 1)
        grey = torch.rand(n) < 0.05
        if grey.any():
            x[grey] = x[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
        return x

    # -- image quality ----------------------------------------------------------------------------
    def quality(self, x: torch.Tensor) -> torch.Tensor:
        """Blur (focus), JPEG re-encoding and sensor noise, each on a random share of the images."""
        n = x.shape[0]
        out = x.clone()
        draws = torch.rand(n, 3)
        seeds = torch.randint(0, 2**31 - 1, (n,))
        for i in range(n):
            if draws[i, 0] < 0.3:
                out[i] = _gaussian_blur(out[i : i + 1], float(_uniform(1, 0.3, 1.5)))[0]
            if draws[i, 1] < 0.3:
                rng = np.random.default_rng(int(seeds[i]))
                out[i] = _jpeg(out[i], int(rng.integers(30, 91)))
            if draws[i, 2] < 0.2:
                out[i] = (out[i] + torch.randn_like(out[i]) * float(_uniform(1, 0.005, 0.03))).clamp(0, 1)
        return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma * sigma))
    g = g / g.sum()
    k = 2 * radius + 1
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    arr = (image.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        back = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(back).permute(2, 0, 1)
