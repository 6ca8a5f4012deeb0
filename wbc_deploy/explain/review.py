"""``count --review``: one self-contained HTML page to confirm or reclassify every counted cell.

The page shows each cell's crop grouped by predicted class (``unidentified`` first, least confident first
within a class) with its confidence. A technologist reclassifies the selected cell with one key per class
(or the buttons), moves with the arrow keys, watches the differential update, and exports the corrections
as ``<slide>.corrections.json`` (a download), which ``wbc-deploy recount`` applies to the counts.

Self-contained and offline: no framework, no network (a Content-Security-Policy forbids any fetch), works
from a file:// URL. Thumbnails are small JPEGs, inline as base64 (default) or in a ``<slide>.review/``
folder beside the page; either way an image is decoded only when its tile nears the viewport, so a
page of thousands of cells is ready in well under 2 s (``benchmarks/review_page.py``). Torch-free.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..classes import COLOURS, NOT_A_WBC, UNIDENTIFIED
from ..errors import WbcError
from ..files import atomic_write_text

#: Side of the thumbnails on the page (CSS px and JPEG px).
THUMB_PX = 80
JPEG_QUALITY = 82
IMAGE_MODES = ("inline", "folder")
_FALLBACK_COLOUR = "#7f7f7f"


@dataclass(frozen=True)
class ReviewCell:
    """One counted cell as the page shows it: id (cells.csv's cell_id), predicted label and confidence.

    ``runner_up``/``runner_up_p``: the second most probable class (shown as a hint; optional).
    """

    cell_id: int
    label: str
    confidence: float
    runner_up: str | None = None
    runner_up_p: float | None = None


def review_labels(classes: Sequence[str]) -> list[str]:
    """The labels a reviewer may give: the model's classes, then ``unidentified`` and ``not_a_wbc``."""
    return [*classes, UNIDENTIFIED, NOT_A_WBC]


def review_keys(labels: Sequence[str]) -> dict[str, str]:
    """One keyboard key per label: ``u`` unidentified, ``x`` not a WBC, else the first free letter of the name, else a digit."""
    keys: dict[str, str] = {}
    taken = set()
    fixed = {UNIDENTIFIED: "u", NOT_A_WBC: "x"}
    for label in labels:
        if label in fixed:
            keys[label] = fixed[label]
            taken.add(fixed[label])
    digits = iter("123456789")
    for label in labels:
        if label in keys:
            continue
        key = next((ch for ch in label.lower() if ch.isalpha() and ch not in taken), None)
        if key is None:
            key = next(d for d in digits if d not in taken)
        keys[label] = key
        taken.add(key)
    return keys


def encode_thumbnail(rgb: np.ndarray, px: int = THUMB_PX, quality: int = JPEG_QUALITY) -> bytes:
    """RGB uint8 crop -> a ``px`` x ``px`` baseline JPEG (Pillow, bilinear)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    if img.size != (px, px):
        img = img.resize((px, px), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def page_order(cells: Sequence[ReviewCell], classes: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Sections of the page: (label, indices into ``cells``), ``unidentified`` first, then the classes,
    then any other label; within a section the least confident first (ties: lower cell id)."""
    order = [UNIDENTIFIED, *classes]
    order += sorted({c.label for c in cells} - set(order))
    groups: dict[str, list[int]] = {label: [] for label in order}
    for i, c in enumerate(cells):
        groups[c.label].append(i)
    return [(label, sorted(idx, key=lambda i: (cells[i].confidence, cells[i].cell_id))) for label, idx in groups.items() if idx]


def write_review_page(path: str | Path, slide: str, classes: Sequence[str], cells: Sequence[ReviewCell],
                      thumbnails: Iterable[bytes], images: str = "inline", thumb_px: int = THUMB_PX) -> Path:
    """Write ``<slide>.review.html`` (and, for ``images="folder"``, ``<slide>.review/<cell_id>.jpg``), atomically.

    ``thumbnails``: one encoded JPEG per cell of ``cells``, in the same order (see :func:`encode_thumbnail`);
    consumed once, so a generator that reads crops from the slide keeps memory flat in folder mode.
    Returns the page's path.
    """
    path = Path(path)
    if images not in IMAGE_MODES:
        raise WbcError(f"review images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
    classes = list(classes)
    labels = review_labels(classes)
    for label in {c.label for c in cells}:
        if label not in labels:
            labels.append(label)
    index = {label: i for i, label in enumerate(labels)}
    folder = path.with_name(path.name.removesuffix(".html")) if path.name.endswith(".html") else path.with_suffix(".d")
    tmp_folder = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    imgs: list[str] = []
    n_thumbs = 0
    try:
        if images == "folder":
            shutil.rmtree(tmp_folder, ignore_errors=True)
            tmp_folder.mkdir(parents=True)
        it = iter(thumbnails)
        for c in cells:
            try:
                jpeg = next(it)
            except StopIteration:
                raise WbcError(f"review page of {slide}: {len(cells)} cells but only {n_thumbs} thumbnails") from None
            n_thumbs += 1
            if images == "inline":
                imgs.append(base64.b64encode(jpeg).decode("ascii"))
            else:
                (tmp_folder / f"{c.cell_id}.jpg").write_bytes(jpeg)
        data = {
            "slide": slide,
            "classes": classes,
            "labels": labels,
            "colours": [COLOURS.get(label, _FALLBACK_COLOUR) for label in labels],
            "keys": [review_keys(labels)[label] for label in labels],
            "unidentified": index[UNIDENTIFIED],
            "not_a_wbc": index[NOT_A_WBC],
            "thumb": int(thumb_px),
            "images": images,
            "folder": folder.name,
            "id": [int(c.cell_id) for c in cells],
            "label": [index[c.label] for c in cells],
            "conf": [round(float(c.confidence), 3) for c in cells],
            "alt": [index.get(c.runner_up, -1) if c.runner_up else -1 for c in cells],
            "altp": [round(float(c.runner_up_p), 3) if c.runner_up_p is not None else None for c in cells],
            "img": imgs,
            "sections": [[index[label], idx] for label, idx in page_order(cells, classes)],
        }
        digest = hashlib.sha256(json.dumps([slide, data["id"], data["label"]]).encode()).hexdigest()[:16]
        data["key"] = digest
        page = _page(slide, data, images)
        if images == "folder":
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            if folder.exists():
                folder.rename(old)
            tmp_folder.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)  # a folder-mode page's images, now stale
        atomic_write_text(path, page)
    finally:
        shutil.rmtree(tmp_folder, ignore_errors=True)
    return path


def _page(slide: str, data: dict, images: str) -> str:
    """The HTML text: CSS, the data as JSON, the script."""
    # Only inline styles/scripts and data:/blob: (or file-relative, in folder mode) images: no network at all.
    img_src = "data: blob:" if images == "inline" else "'self' data: blob:"
    csp = f"default-src 'none'; img-src {img_src}; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(f"{slide}: WBC review")
    return (_TEMPLATE.replace("%CSP%", html.escape(csp, quote=False)).replace("%TITLE%", title)
            .replace("%SLIDE%", html.escape(slide)).replace("%DATA%", payload).replace("%CSS%", _CSS).replace("%JS%", _JS))


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%CSP%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>%CSS%</style>
</head>
<body>
<header>
  <div class="top"><h1>%SLIDE%</h1><span id="status" aria-live="polite"></span>
    <button id="export" type="button" title="Download the corrections as JSON for wbc-deploy recount (Ctrl+S)">Export corrections</button></div>
  <div id="bar" role="toolbar" aria-label="Reclassify the selected cell"></div>
  <p class="help">Click a cell or move with the arrow keys; press a class key (shown on the buttons) to reclassify it and go to the next cell;
  Backspace restores the predicted class. Corrections are kept in this browser until exported.</p>
</header>
<div id="layout">
<aside><table id="diff"><thead><tr><th>class</th><th>key</th><th>predicted</th><th>reviewed</th><th>%</th></tr></thead><tbody></tbody></table></aside>
<main id="galleries"></main>
</div>
<script type="application/json" id="review-data">%DATA%</script>
<script>%JS%</script>
</body>
</html>
"""

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.35 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#fafafa}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ddd;padding:6px 12px}
.top{display:flex;align-items:center;gap:16px}
h1{font-size:18px;margin:0}
#status{color:#555;flex:1}
.help{margin:4px 0 0;color:#666;font-size:12px}
#bar{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}
#bar button,#export{font:inherit;padding:3px 10px;border:1px solid #bbb;border-radius:4px;background:#fff;cursor:pointer}
#bar button b{display:inline-block;min-width:1.3em;margin-right:4px;border-radius:3px;color:#fff;text-align:center}
#export{background:#1f78b4;color:#fff;border-color:#1f78b4}
#layout{display:flex;align-items:flex-start}
aside{position:sticky;top:110px;flex:0 0 auto;padding:12px}
#diff{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums}
#diff th,#diff td{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
#diff th:first-child,#diff td:first-child{text-align:left}
#diff tr.sum td{font-weight:600;border-top:1px solid #999}
#diff td.up{color:#1a7f37}#diff td.down{color:#b42318}
main{flex:1;padding:6px 12px 40vh}
section{content-visibility:auto;contain-intrinsic-size:auto 600px}
h2{font-size:15px;margin:14px 0 6px;padding-left:8px;border-left:6px solid #999}
.grid{display:grid;grid-template-columns:repeat(auto-fill,calc(var(--t) + 12px));gap:6px}
.cell{position:relative;width:calc(var(--t) + 12px);padding:3px;border:3px solid var(--c);border-radius:5px;background:#fff;cursor:pointer}
.cell img{display:block;width:var(--t);height:var(--t);background:#eee}
.cell .conf{display:block;font-size:11px;color:#444;text-align:center;font-variant-numeric:tabular-nums}
.cell .tag{display:none;position:absolute;top:2px;left:2px;padding:0 4px;border-radius:3px;color:#fff;font-size:11px;font-weight:700}
.cell.changed .tag{display:block}
.cell.changed{border-style:dashed}
.cell.sel{outline:3px solid #111;outline-offset:1px}
"""

_JS = r"""
(function () {
  "use strict";
  performance.mark("wbc-script");
  var D = JSON.parse(document.getElementById("review-data").textContent);
  var n = D.id.length, L = D.labels, T = D.thumb;
  var reviewed = D.label.slice();
  var storeKey = "wbc-review:" + D.slide + ":" + D.key;
  try {
    var saved = JSON.parse(localStorage.getItem(storeKey) || "{}");
    for (var k in saved) { var j = +k; if (j >= 0 && j < n && saved[k] >= 0 && saved[k] < L.length) reviewed[j] = saved[k]; }
  } catch (e) { /* no storage from file:// in some browsers: work without it */ }
  var byId = {};
  for (var i = 0; i < n; i++) byId[D.id[i]] = i;
  var keyOf = {};
  D.keys.forEach(function (k, li) { keyOf[k] = li; });

  // ---------------------------------------------------------------- galleries
  // Section headers and empty grids first; tiles are added in page order, the first FIRST synchronously
  // (more than a screenful) and the rest in chunks on later tasks, so the page is usable at once.
  var FIRST = 240, CHUNK = 400;
  var main = document.getElementById("galleries");
  var order = [], oOf = [], secOf = [], posInSec = [], secStart = [], secLen = [];
  var parts = [];
  D.sections.forEach(function (s, si) {
    var li = s[0], idx = s[1];
    secStart.push(order.length); secLen.push(idx.length);
    parts.push('<section data-s="' + si + '"><h2 style="border-color:' + D.colours[li] + '">' + esc(L[li]) +
               ' <small>(' + idx.length + ')</small></h2><div class="grid" style="--t:' + T + 'px"></div></section>');
    idx.forEach(function (i, j) { secOf[i] = si; posInSec[i] = j; oOf[i] = order.length; order.push(i); });
  });
  main.innerHTML = parts.join("");
  var grids = main.querySelectorAll(".grid");
  var tiles = new Array(n), built = 0;
  var io = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) { if (e.isIntersecting) { load(e.target); io.unobserve(e.target); } });
  }, { rootMargin: "800px 0px" }) : null;

  function tileHtml(o) {
    var i = order[o], li = reviewed[i], pl = D.label[i], changed = li !== pl, c = D.conf[i].toFixed(2);
    var tip = "cell " + D.id[i] + ": " + L[pl] + " " + c + (D.alt[i] >= 0 ? (pl === D.unidentified ? "; best guess " : "; next ") +
      L[D.alt[i]] + " " + D.altp[i].toFixed(2) : "");
    return '<div class="cell' + (changed ? ' changed' : '') + '" id="cell-' + D.id[i] + '" data-i="' + i + '" data-o="' + o +
      '" title="' + esc(tip) + '" style="--c:' + D.colours[li] + '"><img alt="cell ' + D.id[i] + '" width="' + T + '" height="' + T +
      '"><span class="conf">' + c + '</span><span class="tag" style="background:' + D.colours[li] + '">' +
      (changed ? esc(L[li].replace(/_/g, " ")) : "") + '</span></div>';
  }
  function build(upto) {  // create the tiles of page positions [built, upto)
    upto = Math.min(upto, order.length);
    while (built < upto) {
      var s = secOf[order[built]], end = Math.min(upto, secStart[s] + secLen[s]), html = [];
      for (var o = built; o < end; o++) html.push(tileHtml(o));
      grids[s].insertAdjacentHTML("beforeend", html.join(""));
      var els = grids[s].children;
      for (o = built; o < end; o++) {
        var el = els[o - secStart[s]];
        tiles[order[o]] = el;
        if (io) io.observe(el); else load(el);
      }
      built = end;
    }
  }
  function buildRest() {
    if (built >= order.length) { document.documentElement.dataset.built = "1"; return; }
    build(built + CHUNK);
    setTimeout(buildRest, 0);
  }
  build(FIRST);
  performance.mark("wbc-built");

  // ---------------------------------------------------------------- lazy images
  function src(i) { return D.images === "inline" ? "data:image/jpeg;base64," + D.img[i] : D.folder + "/" + D.id[i] + ".jpg"; }
  function load(el) { var img = el.firstChild; if (!img.getAttribute("src")) img.src = src(+el.dataset.i); }

  // ---------------------------------------------------------------- state and the differential
  var bar = document.getElementById("bar"), tbody = document.querySelector("#diff tbody");
  var bparts = [];
  L.forEach(function (name, li) {
    bparts.push('<button type="button" data-l="' + li + '" title="' + esc(name) + ' (key ' + esc(D.keys[li]) + ')"><b style="background:' +
                D.colours[li] + '">' + esc(D.keys[li].toUpperCase()) + '</b>' + esc(name.replace(/_/g, " ")) + '</button>');
  });
  bar.innerHTML = bparts.join("");
  var predicted = new Array(L.length).fill(0);
  D.label.forEach(function (li) { predicted[li]++; });

  function paint(i) {
    var el = tiles[i], li = reviewed[i], changed = li !== D.label[i];
    if (!el) return;  // not built yet: built with its current label
    el.style.setProperty("--c", D.colours[li]);
    el.classList.toggle("changed", changed);
    var tag = el.lastChild;
    tag.textContent = changed ? L[li].replace(/_/g, " ") : "";
    tag.style.background = D.colours[li];
  }
  function corrections() {
    var out = [];
    for (var i = 0; i < n; i++) if (reviewed[i] !== D.label[i]) out.push({ cell_id: D.id[i], label: L[reviewed[i]] });
    out.sort(function (a, b) { return a.cell_id - b.cell_id; });
    return out;
  }
  // running counts, kept up to date by relabel(): a key press costs O(classes), not O(cells)
  var counts = new Array(L.length).fill(0), changed = 0, saved = {};
  for (var q = 0; q < n; q++) { counts[reviewed[q]]++; if (reviewed[q] !== D.label[q]) { changed++; saved[q] = reviewed[q]; } }
  function relabel(i, li) {
    if (reviewed[i] !== D.label[i]) changed--;
    counts[reviewed[i]]--;
    reviewed[i] = li;
    counts[li]++;
    if (li !== D.label[i]) { changed++; saved[i] = li; } else delete saved[i];
    paint(i); renderDiff(); save();
  }
  function renderDiff() {
    var counted = n - counts[D.unidentified] - counts[D.not_a_wbc];
    var rows = [];
    L.forEach(function (name, li) {
      var inDiff = li !== D.unidentified && li !== D.not_a_wbc;
      var d = counts[li] - predicted[li];
      rows.push('<tr data-l="' + li + '"><td><span style="color:' + D.colours[li] + '">&#9632;</span> ' + esc(name.replace(/_/g, " ")) +
                '</td><td>' + esc(D.keys[li]) + '</td><td>' + predicted[li] + '</td><td class="' + (d > 0 ? "up" : d < 0 ? "down" : "") +
                '">' + counts[li] + '</td><td>' + (inDiff ? (counted ? (100 * counts[li] / counted).toFixed(1) : "0.0") : "") + '</td></tr>');
    });
    rows.push('<tr class="sum"><td>counted WBCs</td><td></td><td>' + (n - predicted[D.unidentified] - predicted[D.not_a_wbc]) +
              '</td><td>' + counted + '</td><td>100</td></tr>');
    tbody.innerHTML = rows.join("");
    document.getElementById("status").textContent = n + " cells; " + changed + " corrected; agreement " +
      (n ? (100 * (n - changed) / n).toFixed(1) : "100.0") + "%";
    document.documentElement.dataset.corrected = String(changed);
  }
  function save() {
    try {
      localStorage.setItem(storeKey, JSON.stringify(saved));
    } catch (e) { /* ignore */ }
  }

  // ---------------------------------------------------------------- selection and keys
  var cur = -1;
  function select(o, scroll) {
    if (!n) return;
    o = Math.max(0, Math.min(order.length - 1, o));
    if (o >= built) build(o + CHUNK);
    if (cur >= 0) tiles[order[cur]].classList.remove("sel");
    cur = o;
    var el = tiles[order[cur]];
    el.classList.add("sel");
    load(el);
    if (scroll !== false) el.scrollIntoView({ block: "nearest" });
    document.documentElement.dataset.selected = String(D.id[order[cur]]);
  }
  function setLabel(li) {
    if (cur < 0) select(0);
    relabel(order[cur], li);
    if (cur < order.length - 1) select(cur + 1);
  }
  function cols() {
    var grid = main.querySelector(".grid");
    return grid ? Math.max(1, Math.floor((grid.clientWidth + 6) / (T + 12 + 6))) : 1;
  }
  function vertical(dir) {
    if (cur < 0) return select(0);
    var i = order[cur], s = secOf[i], j = posInSec[i], C = cols(), len = secLen[s], last;
    if (dir < 0) {
      if (j >= C) return select(cur - C);
      if (s === 0) return select(0);
      len = secLen[s - 1]; last = Math.floor((len - 1) / C) * C;
      return select(secStart[s - 1] + Math.min(last + j % C, len - 1));
    }
    if (j + C < len) return select(cur + C);
    if (Math.floor(j / C) < Math.floor((len - 1) / C)) return select(secStart[s] + len - 1);
    if (s === secLen.length - 1) return select(order.length - 1);
    return select(secStart[s + 1] + Math.min(j % C, secLen[s + 1] - 1));
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.altKey || ev.metaKey) return;
    if (ev.ctrlKey) { if (ev.key === "s") { ev.preventDefault(); exportJson(); } return; }
    var k = ev.key;
    if (k === "ArrowRight") select(cur + 1);
    else if (k === "ArrowLeft") select(cur < 0 ? 0 : cur - 1);
    else if (k === "ArrowDown") vertical(1);
    else if (k === "ArrowUp") vertical(-1);
    else if (k === "Home") select(0);
    else if (k === "End") select(order.length - 1);
    else if (k === "Backspace") { if (cur >= 0) relabel(order[cur], D.label[order[cur]]); }
    else if (k.length === 1 && keyOf.hasOwnProperty(k.toLowerCase())) setLabel(keyOf[k.toLowerCase()]);
    else return;
    ev.preventDefault();
  });
  main.addEventListener("click", function (ev) {
    var el = ev.target.closest(".cell");
    if (el) select(+el.dataset.o, false);
  });
  bar.addEventListener("click", function (ev) {
    var b = ev.target.closest("button");
    if (b) setLabel(+b.dataset.l);
  });

  // ---------------------------------------------------------------- export
  function exportJson() {
    var text = JSON.stringify({ slide: D.slide, corrections: corrections() }, null, 1) + "\n";
    var url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    var a = document.createElement("a");
    a.href = url; a.download = D.slide + ".corrections.json";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  }
  document.getElementById("export").addEventListener("click", exportJson);
  window.wbcReview = { corrections: corrections, select: function (id) { if (id in byId) select(oOf[byId[id]]); } };

  renderDiff();
  if (n) select(0, false);
  performance.mark("wbc-set-up");
  // ready once the first frame with the galleries has been painted (the second animation frame)
  requestAnimationFrame(function () {
    requestAnimationFrame(function () {
      window.wbcReviewReadyMs = performance.now();
      document.documentElement.dataset.ready = "1";
      setTimeout(buildRest, 0);
    });
  });

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (ch) { return "&#" + ch.charCodeAt(0) + ";"; });
  }
})();
"""
