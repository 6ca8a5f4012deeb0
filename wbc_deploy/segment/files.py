"""Segment whole image files and write the outputs of ``wbc-deploy segment`` (CSV + 16-bit label PNGs).

Per input ``<stem>`` (the file name without its extension), in the output folder:

- ``<stem>.cells.csv``: ``cell_id,x,y,bbox_x0,bbox_y0,bbox_x1,bbox_y1,area_um2,edge``, one row per WBC,
  level-0 pixels (pixel-centre convention for x, y; the bbox is half-open: x1, y1 exclusive); ``edge``
  is 1 where the cell is cut by the image border (its outline reaches the border and its nucleus comes
  within ``SegmentParams.edge_nucleus_um`` = 1.5 um of it: its area is partial; ``count`` does not count
  such cells on plain images), else 0;
- ``<stem>.labels.png``: 16-bit instance labels (0 background, k = the whole of cell k);
- ``<stem>.nuclei.png``: the same ids, nucleus pixels only.

Every file is written to a temporary name and renamed into place, the CSV last, so an interrupted
run never leaves a complete-looking but partial result.
"""
from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import WbcError
from ..files import AtomicWriter, atomic_save_image, output_folder
from .core import Segmentation, segment_wbcs
from .params import SegmentParams
from .scale import estimate_mpp

CSV_COLUMNS: tuple[str, ...] = ("cell_id", "x", "y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "area_um2", "edge")
#: Instance ids must fit a 16-bit PNG.
MAX_CELLS = 65535
#: Bytes of memory per level-0 pixel that segmenting a whole image needs (RGB, labels, PNG buffers).
BYTES_PER_PIXEL = 24
#: Never read more than this many level-0 pixels whole, whatever the free memory.
MAX_PIXELS_CAP = 400_000_000


@dataclass
class SegmentFileResult:
    """What happened to one input: ``status`` is ``ok`` or ``error`` (``error`` says why)."""

    path: Path
    stem: str
    status: str = "ok"
    error: str = ""
    n_cells: int = 0
    mpp: float | None = None
    mpp_source: str = ""  # option, file or estimated
    width: int = 0
    height: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)


def output_stem(path: str | Path) -> str:
    """The output name of an input: its file name without the extension (``a/b/s1.svs`` -> ``s1``)."""
    p = Path(path)
    return p.name[: -len(p.suffix) or None]


def default_max_pixels() -> int:
    """Largest level 0 (in pixels) segmented whole: what a quarter of the free memory holds, capped."""
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or failing: assume 8 GB free
        available = 8 * 2**30
    return int(min(MAX_PIXELS_CAP, available // 4 // BYTES_PER_PIXEL))


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write instance labels as a 16-bit greyscale PNG (atomically). Ids above 65535 are refused."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > MAX_CELLS:
        raise WbcError(f"{Path(path).name}: {int(labels.max())} cells do not fit a 16-bit label image (max {MAX_CELLS})")
    if labels.size and int(labels.min()) < 0:
        raise ValueError("labels must be non-negative")
    img = Image.fromarray(np.ascontiguousarray(labels.astype(np.uint16)))
    atomic_save_image(path, img)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG written by :func:`write_label_png` as an int32 array."""
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int32)


def write_cells_csv(path: str | Path, seg: Segmentation) -> None:
    """Write ``<stem>.cells.csv`` (:data:`CSV_COLUMNS`, one row per cell, header row) atomically."""
    with AtomicWriter(path) as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for c in seg.cells:
            x0, y0, x1, y1 = c.bbox
            w.writerow([c.cell_id, f"{c.x:.2f}", f"{c.y:.2f}", x0, y0, x1, y1, f"{c.area_um2:.2f}", int(c.edge)])


def write_segmentation(seg: Segmentation, out_dir: str | Path, stem: str) -> list[Path]:
    """Write the three outputs of one image into ``out_dir``; returns their paths (CSV first)."""
    out = Path(out_dir)
    paths = [out / f"{stem}.cells.csv", out / f"{stem}.labels.png", out / f"{stem}.nuclei.png"]
    if len(seg.cells) > MAX_CELLS:
        raise WbcError(f"{stem}: {len(seg.cells)} cells do not fit a 16-bit label image (max {MAX_CELLS})")
    write_label_png(paths[1], seg.labels)
    write_label_png(paths[2], seg.nuclei)
    write_cells_csv(paths[0], seg)  # last: a complete CSV means the label images are there
    return paths


def read_level0(path: str | Path, mpp: float | None = None, max_pixels: int | None = None):
    """Open a slide or image and read its level 0 whole: ``(rgb, file_mpp_or_None, reader_mpp_source, vendor)``
    (``vendor`` "image" for a plain image, a photograph; else the slide format's).

    Raises WbcError (one line) for unreadable files and for a level 0 too big to hold in memory.
    """
    from ..slide.reader import open_slide

    p = Path(path)
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    with open_slide(p, mpp=mpp) as reader:
        w, h = reader.dimensions
        if w * h > limit:
            gb = w * h * BYTES_PER_PIXEL / 2**30
            raise WbcError(
                f"{p.name}: level 0 is {w}x{h} px (~{gb:.1f} GB to segment whole), more than this machine can "
                f"hold at once; use `wbc-deploy count`, which streams whole slides tile by tile"
            )
        try:
            rgb = reader.read_region((0, 0), 0, (w, h))
        except WbcError:
            raise
        except MemoryError:
            raise WbcError(f"{p.name}: out of memory reading level 0 ({w}x{h} px); use `wbc-deploy count`") from None
        except Exception as exc:  # noqa: BLE001 - a decoding failure deep in the file
            raise WbcError(f"{p.name}: cannot read the image data ({' '.join(str(exc).split()) or type(exc).__name__})") from None
        return np.asarray(rgb)[..., :3], reader.mpp, reader.mpp_source, reader.vendor


def segment_file(path: str | Path, out_dir: str | Path, mpp: float | None = None,
                 params: SegmentParams | None = None, max_pixels: int | None = None,
                 stem: str | None = None) -> SegmentFileResult:
    """Segment one image or slide (level 0, whole) and write its outputs into ``out_dir``.

    ``mpp`` overrides the file's scale; with neither, it is estimated from the red cells
    (``mpp_source = "estimated"``). Raises WbcError with a one-line reason on bad input.
    """
    t0 = time.perf_counter()
    p = Path(path)
    stem = stem or output_stem(p)
    rgb, file_mpp, source, vendor = read_level0(p, mpp=mpp, max_pixels=max_pixels)
    if vendor != "image":  # as in `count`: a photograph's vignetting is evened out, a scanner flat-fields its slides
        params = replace(params or SegmentParams(), flat_field=False)
    result = SegmentFileResult(path=p, stem=stem, height=int(rgb.shape[0]), width=int(rgb.shape[1]))
    if file_mpp is not None:
        result.mpp, result.mpp_source = float(file_mpp), ("option" if source == "override" else "file")
    else:
        est = estimate_mpp(rgb)
        if est is None:
            raise WbcError(f"{p.name}: the file records no microns per pixel and its red cells did not give a reliable "
                           "estimate (too few measurable, or their sizes disagree); pass --mpp")
        result.mpp, result.mpp_source = round(est, 4), "estimated"
    seg = segment_wbcs(rgb, result.mpp, params)
    out = prepare_output(out_dir)
    try:
        result.outputs = write_segmentation(seg, out, stem)
    except OSError as exc:
        raise WbcError(f"{p.name}: cannot write the outputs in {out} ({exc.strerror or exc})") from None
    result.n_cells = len(seg.cells)
    result.seconds = time.perf_counter() - t0
    return result


def prepare_output(out_dir: str | Path, mpp: float | None = None) -> Path:
    """Check the options of a run and create the output folder; WbcError (one line) if unusable."""
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not np.isfinite(mpp) or mpp <= 0):
        raise WbcError(f"--mpp must be a positive number of microns per pixel, got {mpp!r}")
    return output_folder(out_dir)


def segment_files(inputs: Iterable[str | Path], out_dir: str | Path, mpp: float | None = None,
                  params: SegmentParams | None = None, max_pixels: int | None = None,
                  on_result: Callable[[SegmentFileResult], None] | None = None) -> list[SegmentFileResult]:
    """Segment every input into ``out_dir``; a failed input gets ``status="error"`` and the rest go on.

    Two inputs with the same output name (``a/x.png``, ``b/x.tif``) would overwrite each other: the
    later one is refused. ``on_result`` is called after each input (progress, printing).
    """
    out = prepare_output(out_dir, mpp)
    results: list[SegmentFileResult] = []
    used: dict[str, Path] = {}
    for raw in inputs:
        p = Path(raw)
        stem = output_stem(p)
        try:
            if stem in used:
                raise WbcError(f"{p}: same output name {stem!r} as {used[stem]}; rename one of them or use separate --out folders")
            used[stem] = p
            res = segment_file(p, out, mpp=mpp, params=params, max_pixels=max_pixels, stem=stem)
        except WbcError as exc:
            res = SegmentFileResult(path=p, stem=stem, status="error", error=str(exc))
        except MemoryError:
            res = SegmentFileResult(path=p, stem=stem, status="error",
                                    error=f"{p.name}: out of memory; use `wbc-deploy count`, which streams slides tile by tile")
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results
