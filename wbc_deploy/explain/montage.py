"""Captioned image montages on a deterministic grid (Pillow only, torch-free).

A montage is a title band followed by sections; each section has a title band and a grid of square
tiles, ``columns`` wide, each tile followed by a caption band. The geometry depends only on the
:class:`MontageLayout` and the number of tiles per section, so callers (and tests) can compute exactly
where every tile lies with :meth:`MontageLayout.tile_boxes`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..errors import WbcError
from ..files import atomic_save_image

BACKGROUND = (255, 255, 255)
TILE_BACKGROUND = (228, 228, 228)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)

Box = tuple[int, int, int, int]  # left, top, right (exclusive), bottom (exclusive)


@dataclass(frozen=True)
class MontageTile:
    """One tile: an RGB image and up to a few caption lines under it."""

    image: np.ndarray | Image.Image
    caption: tuple[str, ...] = ()


@dataclass(frozen=True)
class MontageSection:
    """A titled group of tiles (e.g. "most confident")."""

    title: str
    tiles: Sequence[MontageTile]


@dataclass(frozen=True)
class MontageLayout:
    """Pixel geometry of a montage; every size is in output pixels."""

    tile_px: int = 96
    columns: int = 8
    pad: int = 6
    caption_lines: int = 1
    line_px: int = 14
    title_px: int = 30
    section_px: int = 22

    def __post_init__(self) -> None:
        if self.tile_px < 8 or self.columns < 1 or self.caption_lines < 0 or self.pad < 0:
            raise WbcError(f"montage layout needs tile_px >= 8 and columns >= 1 (got {self.tile_px}, {self.columns})")

    @property
    def cell_w(self) -> int:
        return self.tile_px + self.pad

    @property
    def cell_h(self) -> int:
        return self.tile_px + self.caption_lines * self.line_px + self.pad

    @property
    def width(self) -> int:
        return self.pad + self.columns * self.cell_w

    def rows(self, n_tiles: int) -> int:
        return math.ceil(n_tiles / self.columns) if n_tiles > 0 else 0

    def section_height(self, n_tiles: int) -> int:
        """A section's title band plus its grid (one empty-row message line when it has no tiles)."""
        return self.section_px + (self.rows(n_tiles) * self.cell_h if n_tiles else self.line_px + self.pad)

    def size(self, section_sizes: Sequence[int]) -> tuple[int, int]:
        """(width, height) of a montage whose sections hold ``section_sizes`` tiles."""
        return self.width, self.title_px + sum(self.section_height(n) for n in section_sizes) + self.pad

    def tile_boxes(self, section_sizes: Sequence[int]) -> list[list[Box]]:
        """The image box of every tile, per section, in row-major order."""
        boxes: list[list[Box]] = []
        top = self.title_px
        for n in section_sizes:
            grid_top = top + self.section_px
            section: list[Box] = []
            for i in range(n):
                r, c = divmod(i, self.columns)
                x = self.pad + c * self.cell_w
                y = grid_top + r * self.cell_h
                section.append((x, y, x + self.tile_px, y + self.tile_px))
            boxes.append(section)
            top += self.section_height(n)
        return boxes


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (the bitmap default on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def as_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from a PIL image or an array (grey, RGB, RGBA; uint8 or float 0..1)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise WbcError(f"a tile image must be H x W x 3 (RGB), got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and float(np.nanmax(arr, initial=0.0)) <= 1.0:
            arr = np.nan_to_num(arr) * 255.0
        arr = np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def fit_text(draw: ImageDraw.ImageDraw, text: str, fnt, max_px: int) -> str:
    """``text`` shortened with an ellipsis so it fits in ``max_px`` pixels."""
    if draw.textlength(text, font=fnt) <= max_px:
        return text
    while text and draw.textlength(text + "…", font=fnt) > max_px:
        text = text[:-1]
    return text + "…"


def tile_image(image: np.ndarray | Image.Image, size: int) -> Image.Image:
    """The image scaled to fit a ``size`` x ``size`` square (aspect kept, grey letterbox)."""
    pil = Image.fromarray(as_rgb_uint8(image))
    if pil.size == (size, size):
        return pil
    contained = ImageOps.contain(pil, (size, size), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), TILE_BACKGROUND)
    canvas.paste(contained, ((size - contained.width) // 2, (size - contained.height) // 2))
    return canvas


def render_montage(title: str, sections: Sequence[MontageSection], layout: MontageLayout | None = None,
                   subtitle: str | None = None) -> Image.Image:
    """Draw ``sections`` of captioned tiles under ``title`` on the layout's grid."""
    layout = layout or MontageLayout()
    width, height = layout.size([len(s.tiles) for s in sections])
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    big, small = font(16), font(max(9, layout.line_px - 3))
    draw.text((layout.pad, 6), fit_text(draw, title, big, width - 2 * layout.pad), fill=TEXT, font=big)
    if subtitle:
        sub_w = int(draw.textlength(subtitle, font=small))
        if sub_w < width // 2:
            draw.text((width - layout.pad - sub_w, 10), subtitle, fill=MUTED, font=small)
    boxes = layout.tile_boxes([len(s.tiles) for s in sections])
    top = layout.title_px
    for section, section_boxes in zip(sections, boxes):
        draw.line((layout.pad, top + 2, width - layout.pad, top + 2), fill=(200, 200, 200))
        draw.text((layout.pad, top + 5), fit_text(draw, section.title, small, width - 2 * layout.pad), fill=TEXT, font=small)
        if not section.tiles:
            draw.text((layout.pad, top + layout.section_px), "(none)", fill=MUTED, font=small)
        for tile, (x0, y0, x1, y1) in zip(section.tiles, section_boxes):
            canvas.paste(tile_image(tile.image, layout.tile_px), (x0, y0))
            for i, line in enumerate(tile.caption[: layout.caption_lines]):
                draw.text((x0, y1 + 1 + i * layout.line_px), fit_text(draw, line, small, layout.tile_px), fill=TEXT, font=small)
        top += layout.section_height(len(section.tiles))
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as PNG atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_save_image(path, image, optimize=False)
    except OSError as exc:
        raise WbcError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
