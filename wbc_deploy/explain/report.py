"""The one-page slide report: differential bar chart, counts table, thumbnail with cell marks, settings.

Torch-free (matplotlib with the Agg canvas, no pyplot state), so ``count --gallery`` writes it on
scanner PCs. :func:`write_slide_report` writes a PNG or a self-contained HTML page (images embedded as
base64 data URIs, no external files, scripts or links) depending on the path's suffix.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classes import CLASSES, COLOURS
from ..errors import WbcError
from ..files import atomic_write, atomic_write_text
from ..stats import wilson_interval

#: Healthy-adult reference ranges (% of WBCs) drawn behind the bars for orientation only
#: (GUIDE.md; laboratories use their own reference intervals).
REFERENCE_RANGES_PCT: dict[str, tuple[float, float]] = {
    "neutrophil": (50.0, 70.0),
    "lymphocyte": (20.0, 45.0),
    "monocyte": (2.0, 10.0),
    "eosinophil": (1.0, 5.0),
    "basophil": (0.0, 1.0),
}
_FALLBACK_COLOUR = "#7f7f7f"
#: Zone tints on the report's thumbnail (codes as :mod:`wbc_deploy.pipeline.zones`: 1 thick, 2 monolayer,
#: 3 sparse), kept apart from the class colours.
ZONE_TINTS: dict[int, tuple[str, str]] = {1: ("thick", "#8c510a"), 2: ("monolayer", "#35978f"), 3: ("sparse", "#bdbdbd")}
_ZONE_ALPHA = 0.35


@dataclass(frozen=True)
class DifferentialRow:
    """One class of the differential: count, percentage and its 95% Wilson interval (in %, :mod:`wbc_deploy.stats`)."""

    name: str
    count: int
    percent: float
    ci_low: float
    ci_high: float


def differential(counts: Mapping[str, int], classes: Sequence[str] | None = None) -> list[DifferentialRow]:
    """Rows of the differential in ``classes`` order (default: the counts' order), with 95% intervals."""
    names = list(classes) if classes is not None else list(counts)
    for name, value in counts.items():
        if int(value) < 0:
            raise WbcError(f"count for {name} is negative ({value})")
    n = sum(int(counts.get(c, 0)) for c in names)
    rows = []
    for c in names:
        k = int(counts.get(c, 0))
        lo, hi = wilson_interval(k, n)
        rows.append(DifferentialRow(c, k, 100.0 * k / n if n else 0.0, 100.0 * lo, 100.0 * hi))
    return rows


def _colour(name: str) -> str:
    return COLOURS.get(name, _FALLBACK_COLOUR)


def _figure(width: float, height: float, dpi: int = 100, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _labels_as_names(labels: Sequence[Any] | np.ndarray, classes: Sequence[str]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= len(classes)):
            raise WbcError(f"cell label indices must be 0..{len(classes) - 1}, got {arr.min()}..{arr.max()}")
        return np.asarray(classes, dtype=object)[arr] if arr.size else np.asarray([], dtype=object)
    return arr.astype(str).astype(object)


def _draw_bars(ax, rows: Sequence[DifferentialRow], show_reference: bool) -> None:
    y = np.arange(len(rows))[::-1]
    pct = np.array([r.percent for r in rows])
    # the interval contains the estimate (stats.wilson_interval); clip anyway: matplotlib refuses negative bars
    err = np.clip(np.array([[r.percent - r.ci_low for r in rows], [r.ci_high - r.percent for r in rows]]), 0.0, None)
    if show_reference:
        for yi, r in zip(y, rows):
            if r.name in REFERENCE_RANGES_PCT:
                lo, hi = REFERENCE_RANGES_PCT[r.name]
                ax.fill_betweenx([yi - 0.42, yi + 0.42], lo, hi, color="#d9d9d9", zorder=0, lw=0)
    ax.barh(y, pct, color=[_colour(r.name) for r in rows], height=0.6, zorder=2)
    ax.errorbar(pct, y, xerr=err, fmt="none", ecolor="black", elinewidth=1, capsize=3, zorder=3)
    for yi, r in zip(y, rows):
        ax.text(min(r.ci_high, 100) + 1.5, yi, f"{r.percent:.1f}% (n={r.count})", va="center", fontsize=8, zorder=4)
    ax.set_yticks(y, [r.name for r in rows])
    ax.set_xlim(0, 115)
    ax.set_xticks(range(0, 101, 20))
    ax.set_xlabel("% of counted WBCs (bars: 95% interval" + ("; grey: healthy-adult range)" if show_reference else ")"))
    ax.set_title("differential", fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)


def _zone_overlay(zones: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An RGBA image of ``shape`` tinting each zone (nearest-neighbour resampling of the zone map)."""
    from PIL import Image

    z = np.asarray(Image.fromarray(np.asarray(zones, np.uint8)).resize((shape[1], shape[0]), Image.NEAREST))
    rgba = np.zeros((*shape, 4), np.float32)
    for code, (_, colour) in ZONE_TINTS.items():
        rgb = [int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5)]
        rgba[z == code] = [*rgb, _ZONE_ALPHA]
    return rgba


def _draw_thumbnail(ax, thumbnail: np.ndarray | None, downsample: float, xy: np.ndarray, names: np.ndarray,
                    classes: Sequence[str], zones: np.ndarray | None = None) -> None:
    if thumbnail is not None:
        ax.imshow(thumbnail, interpolation="antialiased")
        if zones is not None and np.asarray(zones).any():
            from matplotlib.patches import Patch

            ax.imshow(_zone_overlay(zones, thumbnail.shape[:2]), interpolation="nearest")
            present = [c for c in ZONE_TINTS if (np.asarray(zones) == c).any()]
            handles = [Patch(facecolor=ZONE_TINTS[c][1], alpha=_ZONE_ALPHA + 0.2, label=ZONE_TINTS[c][0]) for c in present]
            ax.add_artist(ax.legend(handles=handles, loc="lower left", fontsize=7, title="zones", title_fontsize=7,
                                    framealpha=0.85))
    n = len(xy)
    size = float(np.clip(3000.0 / max(n, 1), 2.0, 24.0))
    pts = xy / float(downsample) if n else xy
    for c in list(classes) + sorted(set(names) - set(classes)):
        sel = names == c
        if np.any(sel):
            ax.scatter(pts[sel, 0], pts[sel, 1], s=size, c=_colour(c), edgecolors="white", linewidths=0.3,
                       label=f"{c} ({int(sel.sum())})", zorder=3)
    if thumbnail is not None:
        h, w = thumbnail.shape[:2]
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    else:
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.text(0.5, 0.02, "no thumbnail: positions only", transform=ax.transAxes, ha="center", fontsize=7, color="#555")
    ax.set_xticks([])
    ax.set_yticks([])
    if n:
        ax.legend(loc="upper right", fontsize=7, markerscale=max(1.0, 20.0 / size) ** 0.5, framealpha=0.85)
    ax.set_title(f"slide thumbnail, {n} cell{'s' if n != 1 else ''} marked by class", fontsize=10, loc="left")


def _settings_rows(settings: Mapping[str, Any] | None, max_value_chars: int = 70) -> list[tuple[str, str]]:
    rows = []
    for key, value in (settings or {}).items():
        text = json.dumps(value, default=str) if isinstance(value, (dict, list, tuple)) else str(value)
        if len(text) > max_value_chars:
            text = text[: max_value_chars - 1] + "…"
        rows.append((str(key), text))
    return rows


def _check_inputs(thumbnail, downsample, cell_xy, cell_labels) -> tuple[np.ndarray | None, np.ndarray, Sequence[Any]]:
    if thumbnail is not None:
        thumbnail = np.asarray(thumbnail)
        if thumbnail.ndim not in (2, 3) or (thumbnail.ndim == 3 and thumbnail.shape[2] not in (3, 4)):
            raise WbcError(f"slide thumbnail must be an H x W x 3 RGB array, got shape {thumbnail.shape}")
    if not (downsample > 0 and math.isfinite(downsample)):
        raise WbcError(f"thumbnail downsample must be a positive number, got {downsample}")
    xy = np.zeros((0, 2)) if cell_xy is None else np.asarray(cell_xy, dtype=float).reshape(-1, 2)
    labels = [] if cell_labels is None else cell_labels
    if len(labels) != len(xy):
        raise WbcError(f"{len(xy)} cell positions but {len(labels)} cell labels")
    return thumbnail, xy, labels


def write_slide_report(
    path: str | Path,
    *,
    slide: str,
    counts: Mapping[str, int],
    classes: Sequence[str] | None = None,
    thumbnail: np.ndarray | None = None,
    downsample: float = 1.0,
    cell_xy: np.ndarray | Sequence[Sequence[float]] | None = None,
    cell_labels: Sequence[str] | Sequence[int] | np.ndarray | None = None,
    settings: Mapping[str, Any] | None = None,
    show_reference: bool = True,
    zones: np.ndarray | None = None,
    facts: Mapping[str, Any] | None = None,
) -> Path:
    """Write a one-page report of one slide's differential count as PNG (``.png``) or HTML (``.html``/``.htm``).

    Args:
        path: output file; its suffix picks the format. Written atomically.
        slide: the slide's name, for the title.
        counts: class name -> number of WBCs assigned to it.
        classes: the order of the bars and table rows (default: canonical classes present in ``counts``,
            then any others in ``counts`` order).
        thumbnail: H x W x 3 uint8 RGB image of the whole slide (None: cell positions on a blank plot).
        downsample: level-0 pixels per thumbnail pixel (OpenSlide's convention), used to place the marks.
        cell_xy: N x 2 cell centres in level-0 pixels (x, y).
        cell_labels: N class names, or indices into ``classes``.
        settings: the run's settings (model, backend, thresholds, ...), shown as a key/value table.
        show_reference: shade the healthy-adult reference range behind each bar.
        zones: the smear's zone map (any size, covering the whole slide; 0 glass, 1 thick, 2 monolayer,
            3 sparse), tinted over the thumbnail.
        facts: the count's facts shown in a "count and quality" table (e.g. ``n_wbc``, ``n_counted``,
            ``area``, ``area_mm2``, ``wbc_per_mm2``, ``max_wbc``, ``out_of_focus_fraction``, ``unidentified_rate``;
            None values are left out).

    Returns ``path``.
    """
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in (".png", ".html", ".htm"):
        raise WbcError(f"slide report {path}: use a .png or .html file name")
    if classes is None:
        classes = [c for c in CLASSES if c in counts] + [c for c in counts if c not in CLASSES]
    thumbnail, xy, labels = _check_inputs(thumbnail, downsample, cell_xy, cell_labels)
    names = _labels_as_names(labels, classes)
    rows = differential(counts, classes)
    total = sum(r.count for r in rows)
    title = f"WBC differential: {slide} ({total} cell{'s' if total != 1 else ''})"
    setting_rows = _settings_rows(settings, 70 if fmt == ".png" else 2000)
    fact_rows = _fact_rows(facts)
    if zones is not None and (np.asarray(zones).ndim != 2 or not np.asarray(zones).size):
        raise WbcError(f"zone map must be a 2-D array, got shape {np.asarray(zones).shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == ".png":
            atomic_write(path, lambda tmp: _report_png(tmp, title, rows, thumbnail, downsample, xy, names, classes,
                                                       fact_rows + setting_rows, show_reference, zones))
        else:
            atomic_write_text(path, _report_html(title, rows, thumbnail, downsample, xy, names, classes, setting_rows,
                                                 show_reference, zones, fact_rows))
    except OSError as exc:
        raise WbcError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


_FACT_LABELS = {
    "n_wbc": "WBCs detected", "n_counted": "WBCs counted (denominator)",
    "n_unidentified": "unidentified (low confidence)", "unidentified_rate": "unidentified rate",
    "area": "counting area", "area_mm2": "area counted (mm2)", "wbc_per_mm2": "WBCs per mm2",
    "max_wbc": "--max-wbc", "stopped_early": "stopped at --max-wbc", "out_of_focus_fraction": "tiles out of focus",
}


def _fact_rows(facts: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    rows = []
    for key, value in (facts or {}).items():
        if value is None or isinstance(value, np.ndarray):
            continue
        if key in ("unidentified_rate", "out_of_focus_fraction"):
            text = f"{100.0 * float(value):.1f}%"
        elif isinstance(value, float):
            text = f"{value:.2f}"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        else:
            text = str(value)
        rows.append((_FACT_LABELS.get(key, key), text))
    return rows


def _table(ax, cells: list[list[str]], header: list[str], col_widths: list[float], fontsize: float = 8,
           colours: list[str] | None = None) -> None:
    ax.axis("off")
    if not cells:
        ax.text(0, 1, "(none)", fontsize=fontsize, va="top")
        return
    table = ax.table(cellText=cells, colLabels=header, colWidths=col_widths, loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(fontsize)
    table.scale(1, 1.25)
    for (r, _c), cell in table.get_celld().items():
        cell.set_edgecolor("#cccccc")
        if r == 0:
            cell.set_facecolor("#eeeeee")
    if colours:
        for i, colour in enumerate(colours, start=1):
            table[i, 0].get_text().set_color(colour)


def _counts_cells(rows: Sequence[DifferentialRow]) -> list[list[str]]:
    cells = [[r.name, str(r.count), f"{r.percent:.1f}", f"{r.ci_low:.1f}-{r.ci_high:.1f}"] for r in rows]
    total = sum(r.count for r in rows)
    cells.append(["total", str(total), "100.0" if total else "0.0", ""])
    return cells


_COUNT_HEADER = ["class", "cells", "%", "95% interval (%)"]


def _report_png(path: Path, title, rows, thumbnail, downsample, xy, names, classes, setting_rows, show_reference,
                zones=None) -> None:
    fig = _figure(11.0, 8.0, dpi=100, layout="constrained")
    fig.suptitle(title, fontsize=13, x=0.02, ha="left")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.5, 1.0], width_ratios=[1.0, 1.0])
    _draw_thumbnail(fig.add_subplot(grid[0, 0]), thumbnail, downsample, xy, names, classes, zones)
    _draw_bars(fig.add_subplot(grid[0, 1]), rows, show_reference)
    ax_counts = fig.add_subplot(grid[1, 0])
    _table(ax_counts, _counts_cells(rows), _COUNT_HEADER, [0.3, 0.18, 0.15, 0.3], 9,
           [_colour(r.name) for r in rows] + ["black"])
    ax_counts.set_title("counts", fontsize=10, loc="left")
    ax_set = fig.add_subplot(grid[1, 1])
    max_rows = 18
    shown = setting_rows[:max_rows]
    if len(setting_rows) > max_rows:
        shown = shown + [("…", f"{len(setting_rows) - max_rows} more (see the HTML report)")]
    _table(ax_set, [list(r) for r in shown], ["setting", "value"], [0.3, 0.7], 7)
    ax_set.set_title("run settings", fontsize=10, loc="left")
    fig.savefig(path, format="png")


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px;margin:0 0 12px}h2{font-size:15px;margin:18px 0 6px}
.row{display:flex;flex-wrap:wrap;gap:16px}.row>div{flex:1 1 520px}img{max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f2f2f2}td.num{text-align:right}.swatch{display:inline-block;width:10px;height:10px;margin-right:6px}
.note{color:#666;font-size:12px}"""


def _report_html(title, rows, thumbnail, downsample, xy, names, classes, setting_rows, show_reference, zones=None,
                 fact_rows=()) -> str:
    e = html.escape
    fig_thumb = _figure(6.0, 5.0)
    _draw_thumbnail(fig_thumb.add_subplot(1, 1, 1), thumbnail, downsample, xy, names, classes, zones)
    fig_thumb.tight_layout()
    fig_bars = _figure(6.0, 3.2)
    _draw_bars(fig_bars.add_subplot(1, 1, 1), rows, show_reference)
    fig_bars.tight_layout()
    count_rows = "".join(
        f'<tr><td><span class="swatch" style="background:{e(_colour(r.name))}"></span>{e(r.name)}</td>'
        f'<td class="num">{r.count}</td><td class="num">{r.percent:.1f}</td>'
        f'<td class="num">{r.ci_low:.1f}-{r.ci_high:.1f}</td></tr>'
        for r in rows
    )
    total = sum(r.count for r in rows)
    count_rows += f'<tr><th>total</th><th class="num">{total}</th><th class="num">{"100.0" if total else "0.0"}</th><th></th></tr>'
    settings_html = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in setting_rows) or "<tr><td>(none)</td><td></td></tr>"
    reference = " Grey bands: healthy-adult reference ranges, for orientation only." if show_reference else ""
    facts_html = ("<h2>Count and quality</h2><table>" + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in fact_rows)
                  + "</table>") if fact_rows else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{_CSS}</style></head>
<body><h1>{e(title)}</h1>
<div class="row"><div><h2>Slide</h2><img alt="slide thumbnail with cells marked by class" src="{_png_data_uri(fig_thumb)}"></div>
<div><h2>Differential</h2><img alt="differential bar chart" src="{_png_data_uri(fig_bars)}">
<p class="note">Error bars: 95% Wilson intervals for each class's share of the counted cells.{reference}</p>
<h2>Counts</h2><table><tr>{''.join(f'<th>{e(h)}</th>' for h in _COUNT_HEADER)}</tr>{count_rows}</table>{facts_html}</div></div>
<h2>Run settings</h2><table><tr><th>setting</th><th>value</th></tr>{settings_html}</table>
</body></html>
"""
