"""Whole-slide images: readers (OpenSlide formats and plain images) and synthetic slides. Torch-free."""
from __future__ import annotations

from .reader import ImageReader, OpenSlideReader, SlideReader, open_slide

__all__ = ["ImageReader", "OpenSlideReader", "SlideReader", "open_slide"]
