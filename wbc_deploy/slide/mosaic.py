"""Real-pixel slides from photographed fields: a mosaic of smear photographs written as a scanner would
store it (a tiled, pyramidal Aperio-style TIFF with its um/px), plus a truth file of the annotated WBCs.

Used by ``make demo`` (a few BCCD fields bundled with the package, see :mod:`wbc_deploy.demo`) and by the
real-pixel benchmarks. Torch-free.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import WbcError
from .synth import truth_path

TILE_PX = 256


def mosaic(fields: Sequence[np.ndarray], cols: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Fields (equal-size RGB uint8 arrays) laid edge to edge, ``cols`` per row; returns (image, offsets)."""
    if not fields:
        raise WbcError("a mosaic needs at least one field")
    h, w = fields[0].shape[:2]
    if any(f.shape[:2] != (h, w) for f in fields):
        raise WbcError("mosaic fields must all have the same size")
    rows = -(-len(fields) // cols)
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    offsets = []
    for i, f in enumerate(fields):
        y, x = (i // cols) * h, (i % cols) * w
        out[y : y + h, x : x + w] = f[..., :3]
        offsets.append((x, y))
    return out, offsets


def _downsample(rgb: np.ndarray, factor: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    size = (max(1, w // factor), max(1, h // factor))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))


def write_image_slide(path: str | Path, rgb: np.ndarray, mpp: float, truth: Sequence[tuple[float, float, str]] | None = None,
                      tile: int = TILE_PX, name: str = "mosaic") -> Path:
    """Write ``rgb`` as a tiled pyramidal TIFF (``.svs``: Aperio layout, MPP recorded) and, with ``truth``
    (level-0 x, y, label rows), ``<slide>.truth.csv`` beside it. Both are written atomically."""
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".svs", ".tif", ".tiff"):
        raise WbcError(f"{path.name}: a slide must be named .svs, .tif or .tiff")
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = rgb.shape[:2]
    levels = [rgb]
    while max(levels[-1].shape[:2]) > 2 * tile and len(levels) < 6:
        levels.append(_downsample(levels[-1], 4))
    ppcm = 1e4 / mpp
    tmp = path.with_name(path.name + ".part")
    try:
        with tifffile.TiffWriter(tmp) as tw:
            for k, level in enumerate(levels):
                lh, lw = level.shape[:2]
                size = "" if k == 0 else f"-> {lw}x{lh} "
                desc = (f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) {size}JPEG/RGB "
                        f"Q=90|AppMag = {max(1, int(round(10 / mpp)))}|MPP = {mpp:.6g}|Filename = {name}")
                tw.write(level, tile=(tile, tile), photometric="rgb", compression="zlib", description=desc,
                         metadata=None, software="wbc-deploy", resolution=(ppcm / 4**k, ppcm / 4**k),
                         resolutionunit="CENTIMETER", subfiletype=0 if k == 0 else 1)
        if truth is not None:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["x", "y", "label"])
            for x, y, lab in truth:
                w.writerow([f"{x:.2f}", f"{y:.2f}", lab])
            tpath = truth_path(path)
            ttmp = tpath.with_name(tpath.name + ".part")
            ttmp.write_text(buf.getvalue())
            os.replace(ttmp, tpath)
        os.replace(tmp, path)
    except OSError as exc:
        raise WbcError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
