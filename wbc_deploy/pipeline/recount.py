"""``wbc-deploy recount DIR --corrections FILE``: a technologist's review back into the counts (torch-free).

FILE is either the review page's export, exactly::

    {"slide": "<slide name as in summary.csv>", "corrections": [{"cell_id": 12, "label": "eosinophil"}, ...]}

or a GeoJSON FeatureCollection (or bare feature list) exported by QuPath from the detections
``count --geojson`` wrote: each ``detection``/``cell`` feature is matched to its cell by its ``id``
(:func:`~wbc_deploy.pipeline.outputs.cell_uuid`; features without one by ``measurements.cell_id``), and
its ``classification.name`` is the reviewed class (none: ``unidentified``); other objects (annotations)
are ignored. A label is a class of the model, ``unidentified`` or ``not_a_wbc`` (case, plurals and the
usual aliases are accepted, as everywhere in wbc-deploy).

A file is the slide's whole review: ``label_reviewed`` = the correction where there is one, else the
predicted ``label``; so applying a file twice changes nothing, and a newer file replaces an older one.
What it rewrites, each atomically and only after every correction was checked (an unknown cell or class
is one error, nothing written):

* ``<slide>.cells.csv`` gains (or updates) ``label_reviewed``;
* that slide's summary.csv row: ``n_wbc`` (``not_a_wbc`` cells leave it), ``n_<class>``,
  ``n_unidentified``, ``n_counted``, ``pct_<class>`` become the reviewed ones, the Wilson
  ``ci95_lo/hi_<class>`` columns too where present, and ``reviewed=1``, ``n_corrected`` (cells whose
  reviewed class differs from the predicted one), ``n_not_a_wbc``, ``agreement`` (share of the slide's
  cells whose reviewed class equals the predicted one) and ``agreement_<class>`` (of the cells predicted
  <class>, the share kept in it; empty when none was predicted) are added. Every other column, and every
  other row, is kept as it was.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..classes import NOT_A_WBC, UNIDENTIFIED, normalise_class_name
from ..errors import WbcError
from ..files import atomic_write_text
from .outputs import SUMMARY_NAME, cell_uuid

#: Columns recount adds to summary.csv (after ``agreement``, one ``agreement_<class>`` per class).
REVIEW_COLUMNS = ("reviewed", "n_corrected", "n_not_a_wbc", "agreement")
LABEL_REVIEWED = "label_reviewed"


@dataclass
class Corrections:
    """A parsed corrections file: the slide it names (page JSON) and the reviewed label per cell key.

    ``by_id``: cell_id -> label (page JSON, and GeoJSON features without an id); ``by_uuid``: feature
    id -> label (GeoJSON). Labels are as written in the file (resolved against the model's classes later).
    """

    path: Path
    kind: str
    slide: str | None = None
    by_id: dict[int, str] = field(default_factory=dict)
    by_uuid: dict[str, str] = field(default_factory=dict)
    ignored: int = 0


@dataclass
class RecountResult:
    """What a recount did to one slide."""

    slide: str
    classes: list[str]
    n_cells: int
    n_corrected: int
    predicted: dict[str, int]
    reviewed: dict[str, int]
    agreement: float | None
    agreement_by_class: dict[str, float | None]
    cells_path: Path
    summary_path: Path
    changed: bool
    ignored_features: int = 0

    def percentages(self, counts: dict[str, int]) -> dict[str, float]:
        """The differential (% of counted WBCs: ``unidentified`` and ``not_a_wbc`` left out) of ``counts``."""
        n = sum(counts.get(c, 0) for c in self.classes)
        return {c: (100.0 * counts.get(c, 0) / n if n else 0.0) for c in self.classes}


# --------------------------------------------------------------------------- reading corrections


def _load_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise WbcError(f"corrections file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WbcError(f"cannot read the corrections file {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WbcError(f"{path} is not JSON ({exc.msg} at line {exc.lineno}): expected the review page's export or a QuPath GeoJSON") from None


def read_corrections(path: str | Path) -> Corrections:
    """Parse a corrections file (page JSON or QuPath GeoJSON); WbcError naming the first problem."""
    path = Path(path)
    data = _load_json(path)
    if isinstance(data, list) or (isinstance(data, dict) and data.get("type") == "FeatureCollection"):
        return _read_geojson(path, data)
    if isinstance(data, dict) and "corrections" in data:
        return _read_page_json(path, data)
    raise WbcError(f"{path}: neither the review page's export ({{\"slide\": ..., \"corrections\": [...]}}) "
                   "nor a GeoJSON FeatureCollection")


def _read_page_json(path: Path, data: dict) -> Corrections:
    slide, items = data.get("slide"), data.get("corrections")
    if not isinstance(slide, str) or not slide:
        raise WbcError(f"{path}: \"slide\" must be the slide's name as in summary.csv")
    if not isinstance(items, list):
        raise WbcError(f"{path}: \"corrections\" must be a list of {{\"cell_id\": N, \"label\": \"CLASS\"}}")
    out = Corrections(path=path, kind="json", slide=slide)
    for k, item in enumerate(items):
        cid = item.get("cell_id") if isinstance(item, dict) else None
        label = item.get("label") if isinstance(item, dict) else None
        if isinstance(cid, bool) or not isinstance(cid, int) or not isinstance(label, str):
            raise WbcError(f"{path}: correction {k + 1} is not {{\"cell_id\": <integer>, \"label\": \"<class>\"}}: {json.dumps(item)[:80]}")
        _put(out.by_id, cid, label, path, f"cell {cid}")
    return out


def _measurement(props: dict, name: str):
    m = props.get("measurements")
    if isinstance(m, dict):
        return m.get(name)
    if isinstance(m, list):  # QuPath before 0.4: [{"name": ..., "value": ...}]
        return next((e.get("value") for e in m if isinstance(e, dict) and e.get("name") == name), None)
    return None


def _read_geojson(path: Path, data) -> Corrections:
    features = data if isinstance(data, list) else data.get("features")
    if not isinstance(features, list):
        raise WbcError(f"{path}: a FeatureCollection needs a \"features\" list")
    out = Corrections(path=path, kind="geojson")
    for k, f in enumerate(features):
        props = f.get("properties") if isinstance(f, dict) else None
        if not isinstance(props, dict):
            raise WbcError(f"{path}: feature {k + 1} has no properties (not a QuPath object)")
        kind = props.get("objectType", props.get("object_type", props.get("type")))
        if kind not in ("detection", "cell"):
            out.ignored += 1  # annotations, tiles, TMA cores: not cells of the count
            continue
        cls = props.get("classification")
        label = cls.get("name") if isinstance(cls, dict) else None
        label = UNIDENTIFIED if label in (None, "") else label
        if not isinstance(label, str):
            raise WbcError(f"{path}: feature {k + 1}: classification name must be text, got {label!r}")
        fid = f.get("id")
        if isinstance(fid, str) and fid:
            _put(out.by_uuid, fid.lower(), label, path, f"feature {fid}")
            continue
        cid = _measurement(props, "cell_id")
        if isinstance(cid, (int, float)) and not isinstance(cid, bool) and float(cid).is_integer():
            _put(out.by_id, int(cid), label, path, f"cell {int(cid)}")
        else:
            raise WbcError(f"{path}: feature {k + 1} has neither an id nor a cell_id measurement: "
                           "export the detections that `wbc-deploy count --geojson` wrote")
    return out


def _put(d: dict, key, label: str, path: Path, what: str) -> None:
    if key in d and d[key] != label:
        raise WbcError(f"{path}: {what} is corrected twice, to {d[key]!r} and {label!r}")
    d[key] = label


def resolve_label(name: str, classes: list[str]) -> str | None:
    """A reviewed label for ``name``: a model class, ``unidentified`` or ``not_a_wbc`` (aliases accepted); None if unknown."""
    if name in classes or name in (UNIDENTIFIED, NOT_A_WBC):
        return name
    key = re.sub(r"[\s._-]+", "_", name.strip().lower())
    if key in (UNIDENTIFIED, NOT_A_WBC, "not_wbc", "notawbc", "non_wbc"):
        return NOT_A_WBC if key != UNIDENTIFIED else UNIDENTIFIED
    canon = normalise_class_name(name)
    return canon if canon in classes else None


# --------------------------------------------------------------------------- the results folder


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except FileNotFoundError:
        raise WbcError(f"{path.name} not found in {path.parent}: recount needs the results of `wbc-deploy count`") from None
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise WbcError(f"cannot read {path}: {exc}") from None


def _csv_text(fieldnames: list[str], rows: Iterable[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n", restval="")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _slide_for_uuids(out: Path, rows: list[dict[str, str]], uuids: Iterable[str]) -> str:
    """The slide of summary.csv whose cells carry the first of ``uuids`` (GeoJSON files do not name their slide)."""
    wanted = set(uuids)
    if not wanted:
        raise WbcError("the GeoJSON has no detections to match: pass --slide NAME")
    for row in rows:
        name = row.get("slide", "")
        cells = out / f"{name}.cells.csv"
        if row.get("status") != "ok" or not cells.is_file():
            continue
        _, cell_rows = _read_csv(cells)
        if any(cell_uuid(name, r["cell_id"], r["x"], r["y"]) in wanted for r in cell_rows):
            return name
    raise WbcError(f"no slide in {out} has the cells of this GeoJSON (matched on the feature ids that `count --geojson` "
                   "writes): is it from another results folder, or from a count made with other options?")


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def recount(out_dir: str | Path, corrections: str | Path, slide: str | None = None) -> RecountResult:
    """Apply a corrections file to the count in ``out_dir``; see the module docstring. WbcError: nothing written."""
    out = Path(out_dir)
    if not out.is_dir():
        raise WbcError(f"results folder not found: {out}")
    corr = read_corrections(corrections)
    summary_path = out / SUMMARY_NAME
    s_fields, s_rows = _read_csv(summary_path)
    if "slide" not in s_fields:
        raise WbcError(f"{summary_path} has no slide column: not a summary.csv written by `wbc-deploy count`")
    if corr.slide is not None and slide is not None and corr.slide != slide:
        raise WbcError(f"{corr.path} is the review of slide {corr.slide!r}, not {slide!r}")
    name = corr.slide or slide or _slide_for_uuids(out, s_rows, corr.by_uuid)
    row = next((r for r in s_rows if r.get("slide") == name), None)
    if row is None:
        known = ", ".join(r.get("slide", "") for r in s_rows[:5])
        raise WbcError(f"slide {name!r} is not in {summary_path} (it has: {known or 'no slides'})")
    if row.get("status") != "ok":
        raise WbcError(f"slide {name!r} was not counted (status {row.get('status')!r} in summary.csv): nothing to review")
    cells_path = out / f"{name}.cells.csv"
    c_fields, c_rows = _read_csv(cells_path)
    classes = [f[2:] for f in c_fields if f.startswith("p_")]
    if not classes or "label" not in c_fields or "cell_id" not in c_fields:
        raise WbcError(f"{cells_path} is not a cells.csv written by `wbc-deploy count` (cell_id, label, p_<class> columns)")

    # map every correction onto a cell and a label; collect every problem before saying anything
    by_cell: dict[int, str] = {}
    ids = {}
    for r in c_rows:
        try:
            ids[int(r["cell_id"])] = r
        except (TypeError, ValueError):
            raise WbcError(f"{cells_path}: bad cell_id {r.get('cell_id')!r}") from None
    unknown_cells: list[str] = []
    unknown_labels: set[str] = set()
    pending = list(corr.by_id.items())
    if corr.by_uuid:
        uuid_to_id = {cell_uuid(name, r["cell_id"], r["x"], r["y"]): cid for cid, r in ids.items()}
        for fid, label in corr.by_uuid.items():
            if fid in uuid_to_id:
                pending.append((uuid_to_id[fid], label))
            else:
                unknown_cells.append(fid)
    for cid, label in pending:
        if cid not in ids:
            unknown_cells.append(str(cid))
            continue
        lab = resolve_label(label, classes)
        if lab is None:
            unknown_labels.add(label)
            continue
        if by_cell.get(cid, lab) != lab:
            raise WbcError(f"{corr.path}: cell {cid} is corrected twice, to {by_cell[cid]!r} and {lab!r}; nothing written")
        by_cell[cid] = lab
    if unknown_cells:
        raise WbcError(f"{corr.path}: {len(unknown_cells)} correction(s) name cells that {cells_path.name} does not have "
                       f"({', '.join(unknown_cells[:3])}{', ...' if len(unknown_cells) > 3 else ''}); nothing written")
    if unknown_labels:
        allowed = ", ".join([*classes, UNIDENTIFIED, NOT_A_WBC])
        raise WbcError(f"{corr.path}: unknown class {', '.join(repr(x) for x in sorted(unknown_labels))} (allowed: {allowed}); "
                       "nothing written")

    # the reviewed labels and the figures
    labels_all = [*classes, UNIDENTIFIED, NOT_A_WBC]
    predicted = dict.fromkeys(labels_all, 0)
    reviewed = dict.fromkeys(labels_all, 0)
    kept = dict.fromkeys(labels_all, 0)
    n_corrected = 0
    for cid, r in ids.items():
        pred = r["label"]
        rev = by_cell.get(cid, pred)
        r[LABEL_REVIEWED] = rev
        predicted[pred] = predicted.get(pred, 0) + 1
        reviewed[rev] = reviewed.get(rev, 0) + 1
        if rev == pred:
            kept[pred] = kept.get(pred, 0) + 1
        else:
            n_corrected += 1
    n = len(c_rows)
    agreement = (n - n_corrected) / n if n else None
    by_class = {c: (kept[c] / predicted[c] if predicted[c] else None) for c in classes}

    # new files' text
    new_c_fields = c_fields if LABEL_REVIEWED in c_fields else [*c_fields, LABEL_REVIEWED]
    cells_text = _csv_text(new_c_fields, c_rows)
    n_wbc = n - reviewed[NOT_A_WBC]
    n_counted = n_wbc - reviewed[UNIDENTIFIED]
    upd = {"n_wbc": str(n_wbc), "n_unidentified": str(reviewed[UNIDENTIFIED]), "n_counted": str(n_counted),
           "reviewed": "1", "n_corrected": str(n_corrected), "n_not_a_wbc": str(reviewed[NOT_A_WBC]), "agreement": _fmt(agreement)}
    for c in classes:
        upd[f"n_{c}"] = str(reviewed[c])
        upd[f"pct_{c}"] = f"{100.0 * reviewed[c] / n_counted:.2f}" if n_counted else "0.00"
        upd[f"agreement_{c}"] = _fmt(by_class[c])
    upd.update(_wilson_columns(s_fields, classes, reviewed, n_counted))
    new_s_fields = list(s_fields)
    for col in [*REVIEW_COLUMNS, *[f"agreement_{c}" for c in classes]]:
        if col not in new_s_fields:
            new_s_fields.append(col)
    for r in s_rows:
        if r is row:
            r.update(upd)
        elif not r.get("reviewed"):
            r["reviewed"] = "0"
    summary_text = _csv_text(new_s_fields, s_rows)

    changed = False
    for path, text in ((cells_path, cells_text), (summary_path, summary_text)):
        if path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
            changed = True
    return RecountResult(slide=name, classes=classes, n_cells=n, n_corrected=n_corrected, predicted=predicted, reviewed=reviewed,
                         agreement=agreement, agreement_by_class=by_class, cells_path=cells_path, summary_path=summary_path,
                         changed=changed, ignored_features=corr.ignored)


def _wilson_columns(fields: list[str], classes: list[str], counts: dict[str, int], n: int) -> dict[str, str]:
    """The 95% Wilson interval columns ``ci95_lo_<class>``/``ci95_hi_<class>`` (percent), for those summary.csv has.

    TODO(lead, issue 13): when issue 13's summary columns are merged, compute these with the function
    and number format that ``count`` uses for them, so a reviewed row is formatted like a counted one.
    """
    from ..explain.report import wilson_interval

    out = {}
    for c in classes:
        lo_col, hi_col = f"ci95_lo_{c}", f"ci95_hi_{c}"
        if lo_col in fields or hi_col in fields:
            lo, hi = wilson_interval(counts.get(c, 0), n)
            out[lo_col], out[hi_col] = f"{100.0 * lo:.2f}", f"{100.0 * hi:.2f}"
    return out
