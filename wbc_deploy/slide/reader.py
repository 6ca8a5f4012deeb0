"""Slide readers: one small interface (modelled on openslide-python) over whole-slide files and plain images.

* :class:`OpenSlideReader`: every format OpenSlide reads (Aperio .svs, Hamamatsu .ndpi/.vms, MIRAX
  .mrxs, Leica .scn, Ventana .bif, DICOM, generic tiled TIFF ...) through openslide-python and the
  ``openslide-bin`` wheel (no system library needed).
* :class:`ImageReader`: plain images (PNG, JPEG, BMP, untiled TIFF ...) through Pillow, as a
  one-level slide, so single fields of view and crops run through the same pipeline.

:func:`open_slide` picks the implementation (OpenSlide's own format detection first) and turns every
failure (missing, truncated, corrupt, unsupported file) into a one-line :class:`WbcError`.
Coordinates are level-0 pixels; ``read_region`` returns RGB uint8 with transparent and out-of-bounds
pixels composited on white. Torch-free.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import WbcError

__all__ = ["ImageReader", "OpenSlideReader", "SlideReader", "open_slide", "mpp_from_dpi"]

#: Plausible microscope resolutions (um per pixel); DPI tags outside this are screen/print values.
MPP_SANE_RANGE = (0.02, 5.0)
#: Suffixes we try with OpenSlide even when its quick detection says no (to get its error message).
_WSI_SUFFIXES = {".svs", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide", ".dcm", ".tif", ".tiff"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".bif", ".scn", ".ndpi", ".svslide"}
#: Plain images are decoded whole; refuse absurd sizes with a clear message instead of a MemoryError.
_MAX_IMAGE_PIXELS = 1_000_000_000


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return msg or type(exc).__name__


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 (straight alpha) -> RGB uint8 over white."""
    rgb = rgba[..., :3]
    a = rgba[..., 3]
    if a.min() == 255:
        return np.ascontiguousarray(rgb)
    af = a.astype(np.float32)[..., None] * np.float32(1.0 / 255.0)
    out = rgb.astype(np.float32) * af + np.float32(255.0) * (1.0 - af)
    return np.rint(out).astype(np.uint8)


def mpp_from_dpi(dpi: Any) -> float | None:
    """Microns per pixel from a (x, y) or scalar DPI value, or None when absent or not microscope-like."""
    try:
        vals = [float(v) for v in (dpi if isinstance(dpi, (tuple, list)) else (dpi,))]
    except (TypeError, ValueError):
        return None
    vals = [v for v in vals if v > 0 and math.isfinite(v)]
    if not vals:
        return None
    mpp = float(f"{25400.0 / vals[0]:.5g}")  # DPI fields are rounded (PNG stores whole px per metre)
    return mpp if MPP_SANE_RANGE[0] <= mpp <= MPP_SANE_RANGE[1] else None


class SlideReader(ABC):
    """A read-only slide: level geometry, physical scale, properties and region reads.

    Use as a context manager or call :meth:`close`. ``mpp`` is microns per level-0 pixel (None when
    unknown); ``level_downsamples[k]`` is level k's size relative to level 0.
    """

    path: Path
    vendor: str

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        self.path = Path(path)
        self._mpp_override = mpp_override

    # geometry -------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]: ...

    @property
    @abstractmethod
    def properties(self) -> Mapping[str, str]: ...

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel: the override given to :func:`open_slide`, else the file's value."""
        return self._mpp_override if self._mpp_override is not None else self._file_mpp()

    #: The correction applied to the pixels by :meth:`even_illumination` (None: read as stored).
    illumination = None

    def even_illumination(self, mpp: float, illumination=None):
        """Even out a photograph's uneven illumination (:mod:`wbc_deploy.segment.illumination`) in every
        later read: ``illumination`` when given, else estimated from the image at ``mpp``. Returns the
        correction applied, or None. A slide scanner flat-fields its tiles itself: slides are read as stored."""
        return None

    @property
    def mpp_source(self) -> str:
        """Where ``mpp`` comes from: ``override``, ``file`` or ``unknown``."""
        if self._mpp_override is not None:
            return "override"
        return "file" if self._file_mpp() is not None else "unknown"

    @abstractmethod
    def _file_mpp(self) -> float | None: ...

    def best_level_for_downsample(self, downsample: float) -> int:
        """The largest level whose downsample is <= ``downsample`` (level 0 when none is)."""
        best = 0
        for k, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = k
        return best

    # pixels ---------------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of ``size`` = (w, h) level-``level`` pixels whose top-left is
        ``location`` = (x, y) in level-0 coordinates; outside the slide is white."""
        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        if not 0 <= level < self.level_count:
            raise WbcError(f"{self.path.name}: level {level} does not exist (the slide has {self.level_count})")
        if w <= 0 or h <= 0:
            raise WbcError(f"{self.path.name}: region size must be positive, got {w}x{h}")
        return self._read_region(x, y, level, w, h)

    @abstractmethod
    def _read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray: ...

    def get_thumbnail(self, max_size: int | tuple[int, int]) -> np.ndarray:
        """RGB uint8 image of the whole slide fitting in ``max_size`` (an int or (w, h)), aspect kept."""
        mw, mh = (max_size, max_size) if isinstance(max_size, (int, np.integer)) else max_size
        W, H = self.dimensions
        scale = max(W / max(1, int(mw)), H / max(1, int(mh)), 1.0)
        tw, th = max(1, int(round(W / scale))), max(1, int(round(H / scale)))
        level = self.best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        img = self.read_region((0, 0), level, (lw, lh))
        if (lw, lh) != (tw, th):
            img = np.asarray(Image.fromarray(img).resize((tw, th), Image.LANCZOS))
        return img

    # lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"{type(self).__name__}({str(self.path)!r}, {w}x{h}, levels={self.level_count}, mpp={self.mpp})"


class OpenSlideReader(SlideReader):
    """Any format OpenSlide reads. Errors while reading pixels (e.g. a truncated file) raise WbcError."""

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        import openslide

        super().__init__(Path(path), mpp)
        self._openslide = openslide
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, OSError, ValueError) as exc:
            raise WbcError(f"{self.path.name}: not a readable slide (OpenSlide: {_one_line(exc)})") from None
        props = self._slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        self._dims = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self._ds = tuple(float(d) for d in self._slide.level_downsamples)
        self._props = dict(props)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dims

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._ds

    @property
    def properties(self) -> Mapping[str, str]:
        return self._props

    def _file_mpp(self) -> float | None:
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            try:
                v = float(self._props.get(key, ""))
            except ValueError:
                continue
            if v > 0 and math.isfinite(v):
                return v
        return None

    def _read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        try:
            rgba = np.asarray(self._slide.read_region((x, y), level, (w, h)))
        except self._openslide.OpenSlideError as exc:
            raise WbcError(f"{self.path.name}: cannot read pixels at ({x}, {y}) level {level} "
                           f"(OpenSlide: {_one_line(exc)}); the file may be truncated or corrupt") from None
        return _composite_white(rgba)

    def get_thumbnail(self, max_size: int | tuple[int, int]) -> np.ndarray:
        size = (max_size, max_size) if isinstance(max_size, (int, np.integer)) else tuple(max_size)
        try:
            img = self._slide.get_thumbnail(size)
        except self._openslide.OpenSlideError as exc:
            raise WbcError(f"{self.path.name}: cannot read the thumbnail (OpenSlide: {_one_line(exc)}); "
                           "the file may be truncated or corrupt") from None
        return np.asarray(img.convert("RGB"))

    def close(self) -> None:
        self._slide.close()


class ImageReader(SlideReader):
    """A plain image (PNG, JPEG, BMP, TIFF ... anything Pillow decodes) as a one-level slide.

    The image is decoded once, at open; alpha is composited on white. ``mpp`` comes from the
    file's resolution (DPI / pHYs / TIFF resolution) when it is microscope-like, else None.
    """

    vendor = "image"

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        super().__init__(Path(path), mpp)
        try:
            with Image.open(self.path) as im:
                fmt = im.format or "image"
                if im.width * im.height > _MAX_IMAGE_PIXELS:
                    raise WbcError(
                        f"{self.path.name}: a {im.width}x{im.height} plain image is too large to decode whole; "
                        "convert it to a tiled pyramidal TIFF (e.g. with vips tiffsave --tile --pyramid)"
                    )
                info = dict(im.info)
                im.load()
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    arr = _composite_white(np.asarray(im.convert("RGBA")))
                else:
                    arr = np.asarray(im.convert("RGB"))
        except WbcError:
            raise
        except FileNotFoundError:
            raise WbcError(f"{self.path.name}: file not found ({self.path})") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise WbcError(f"{self.path.name}: not a readable image (Pillow: {_one_line(exc)})") from None
        self._img = np.ascontiguousarray(arr)
        self.format = fmt
        self._dpi_mpp = mpp_from_dpi(info.get("dpi"))
        h, w = self._img.shape[:2]
        self._props: dict[str, str] = {
            "openslide.vendor": self.vendor,
            "wbc_deploy.format": fmt,
            "openslide.level-count": "1",
            "openslide.level[0].width": str(w),
            "openslide.level[0].height": str(h),
        }
        if self._dpi_mpp is not None:
            self._props["openslide.mpp-x"] = self._props["openslide.mpp-y"] = f"{self._dpi_mpp:.6g}"

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        h, w = self._img.shape[:2]
        return ((w, h),)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def properties(self) -> Mapping[str, str]:
        return self._props

    def _file_mpp(self) -> float | None:
        return self._dpi_mpp

    def even_illumination(self, mpp: float, illumination=None):
        """A photograph's glass is evened out once, in memory, for every later read (see the base class)."""
        from ..segment.illumination import estimate_illumination

        if self.illumination is not None:
            return self.illumination
        illum = illumination if illumination is not None else estimate_illumination(self._img, mpp)
        if illum is not None:
            self._img = illum.correct(self._img)
            self.illumination = illum
        return illum

    def _read_region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        H, W = self._img.shape[:2]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x0 < x1 and y0 < y1:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._img[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        self._img = np.zeros((1, 1, 3), dtype=np.uint8)


def _tiff_truncation(path: Path) -> str | None:
    """For TIFF-based files: a reason if some image data lies beyond the end of the file.

    Returns None when the data fits, and also when the file does not parse as TIFF at all (the
    caller reports the reader's own error then).
    """
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile is a core dependency
        return None
    try:
        size = path.stat().st_size
        with tifffile.TiffFile(path) as tf:
            for k, page in enumerate(tf.pages):
                offs = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offs.size and int((offs + counts).max()) > size:
                    end = int((offs + counts).max())
                    return (f"truncated file: image data of directory {k} ends at byte {end} "
                            f"but the file has {size} bytes")
    except Exception:  # noqa: BLE001 - not parseable as TIFF: no truncation verdict
        return None
    return None


def _pillow_format(path: Path) -> str | None:
    """The format name if Pillow recognises the file (header only), else None."""
    try:
        with Image.open(path) as im:
            return im.format or "image"
    except Exception:  # noqa: BLE001 - any failure means "not an image Pillow knows"
        return None


def _openslide_error(path: Path) -> str:
    import openslide

    try:
        openslide.OpenSlide(str(path)).close()
    except Exception as exc:  # noqa: BLE001 - reported as text
        return _one_line(exc)
    return "format not detected"  # pragma: no cover - detect_format said no but it opened


def open_slide(path: str | Path, mpp: float | None = None) -> SlideReader:
    """Open a whole-slide file or plain image; ``mpp`` (um per level-0 pixel) overrides the file's.

    OpenSlide's format detection runs first; files it does not claim are opened with Pillow, except
    that a file named like a whole-slide format (.svs, .ndpi, .mrxs ...) is never read as a plain
    image. A missing, empty, truncated, corrupt or unsupported file raises :class:`WbcError` with
    one line saying why (TIFF-based files are checked for image data cut off by truncation).
    """
    import openslide

    p = Path(path)
    if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise WbcError(f"--mpp must be a positive number of microns per pixel, got {mpp!r}")
    if not p.exists():
        raise WbcError(f"{p.name}: file not found ({p})")
    if p.is_dir():
        raise WbcError(f"{p.name}: is a directory, not a slide file")
    try:
        if p.stat().st_size == 0:
            raise WbcError(f"{p.name}: empty file (0 bytes)")
    except OSError as exc:
        raise WbcError(f"{p.name}: cannot read ({exc.strerror or exc})") from None
    try:
        vendor = openslide.OpenSlide.detect_format(str(p))
    except Exception:  # noqa: BLE001 - undetectable: handled below
        vendor = None
    suffix = p.suffix.lower()
    tiff_like = suffix in _TIFF_SUFFIXES

    if vendor is not None:
        if tiff_like or vendor in ("aperio", "generic-tiff", "leica", "philips", "ventana", "hamamatsu"):
            reason = _tiff_truncation(p)
            if reason is not None:
                raise WbcError(f"{p.name}: not a readable slide ({reason})")
        return OpenSlideReader(p, mpp)

    if suffix in _WSI_SUFFIXES and suffix not in (".tif", ".tiff"):
        reason = (_tiff_truncation(p) if tiff_like else None) or f"OpenSlide: {_openslide_error(p)}"
        raise WbcError(f"{p.name}: not a readable slide ({reason})")

    if _pillow_format(p) is not None:
        try:
            return ImageReader(p, mpp)
        except WbcError:
            reason = _tiff_truncation(p) if tiff_like else None
            if reason is not None:
                raise WbcError(f"{p.name}: not a readable slide ({reason})") from None
            raise

    if tiff_like:
        reason = _tiff_truncation(p) or f"OpenSlide: {_openslide_error(p)}"
        raise WbcError(f"{p.name}: not a readable slide ({reason})")
    raise WbcError(
        f"{p.name}: unsupported file type (not a slide OpenSlide reads, nor an image Pillow decodes); "
        "expected .svs, .ndpi, .mrxs, .scn, .tif/.tiff, .dcm, .png, .jpg ..."
    )
