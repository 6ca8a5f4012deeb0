"""Heatmap overlays: the image beside the image with a colour-mapped heatmap and a colour bar (torch-free)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import WbcError
from ..files import atomic_save_figure
from .montage import as_rgb_uint8

DEFAULT_CMAP = "jet"


def check_heatmap(cam: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``cam`` as float32 H x W in 0..1 (WbcError if it is not; ``shape`` = the image's H, W)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise WbcError(f"a heatmap must be a 2-D array, got shape {cam.shape}")
    if shape is not None and cam.shape != tuple(shape):
        raise WbcError(f"heatmap shape {cam.shape} does not match the image's {tuple(shape)}")
    if not np.all(np.isfinite(cam)) or cam.min(initial=0.0) < 0 or cam.max(initial=0.0) > 1:
        raise WbcError("a heatmap must hold finite values in 0..1")
    return cam


def blend(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """The RGB image with the colour-mapped heatmap alpha-blended over it (H x W x 3 uint8)."""
    from matplotlib import colormaps

    rgb = as_rgb_uint8(image)
    cam = check_heatmap(cam, rgb.shape[:2])
    colours = colormaps[cmap](cam)[..., :3]
    out = (1.0 - alpha) * (rgb.astype(np.float32) / 255.0) + alpha * colours
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, cam: np.ndarray, title: str, alpha: float = 0.45,
                 cmap: str = DEFAULT_CMAP, dpi: int = 110) -> Path:
    """Save a PNG: the image, and the image under its heatmap with a 0..1 colour bar, under ``title``."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    rgb = as_rgb_uint8(image)
    blended = blend(rgb, cam, alpha, cmap)
    fig = Figure(figsize=(8.0, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_img, ax_cam, cax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.0, 1.0, 0.05], "wspace": 0.08})
    ax_img.imshow(rgb)
    ax_img.set_title("image", fontsize=9)
    ax_cam.imshow(blended)
    ax_cam.set_title("Grad-CAM", fontsize=9)
    for ax in (ax_img, ax_cam):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.canvas.draw()  # the images' final (aspect-kept) boxes: the colour bar takes the heatmap's height
    box, bar_box = ax_cam.get_position(), cax.get_position()
    cax.set_position([box.x1 + 0.015, box.y0, bar_box.width, box.height])
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormaps[cmap]), cax=cax)
    bar.set_label("relevance (0..1)", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_save_figure(path, fig)
    except OSError as exc:
        raise WbcError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
