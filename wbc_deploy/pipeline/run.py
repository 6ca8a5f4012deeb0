"""``count_slides``: count every input slide into per-cell and per-slide differential CSVs.

Per slide: open it, settle its scale (slide metadata, ``--mpp`` or red cells), plan the scan (tissue
mask, detection level, tiles), stream the tiles through workers and batched inference into the
progress store, then assemble the outputs from the store (cells.csv, GeoJSON, truth comparison,
galleries) and remove the store. summary.csv is rewritten atomically after every slide.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import itertools
import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from rich.progress import TextColumn

from .. import __version__
from ..classes import UNIDENTIFIED
from ..console import make_progress, warn
from ..errors import WbcError
from ..files import output_folder, sha256_file
from ..segment import SegmentParams
from .detect import TileResult, job_without_tiles, process_scan, scan_tile
from .engine import StreamStats, stream_slide
from .gallery import GalleryCollector, require_explain, write_gallery
from .inputs import discover_inputs, slide_name
from .options import MATCH_UM, CountOptions
from .outputs import SUMMARY_NAME, label_of, write_cells_csv, write_geojson, write_summary, write_truth_comparison
from .plan import ScanPlan, Tile, plan_scan, thumbnail_size, tissue_mask
from .quality import out_of_focus_fraction
from .reading import meander
from .review import review_cell, write_review
from .result import STATUS_ERROR, STATUS_INTERRUPTED, STATUS_OK, STATUS_PENDING, RunResult, SlideResult
from .scale import resolve_mpp, thumbnail
from .store import ProgressStore, settings_hash, slide_identity
from .truth import compare_with_truth, truth_path_for
from .workers import ScanWorkers
from .zones import CountingArea, counting_area, zone_slide


#: Crops enlarged more than this to the model's input earn a warning (a 40x scan at 0.25 um/px gives
#: 96 px over 24 um: 2.3x for a 224 px model, the usual case; a 20x scan gives 4.7x).
MAX_UPSAMPLE = 2.5


class CountInterrupted(Exception):
    """Raised (e.g. from ``CountOptions.tile_hook``) to stop a run as if it had been killed."""


# --------------------------------------------------------------------------- one slide


@dataclasses.dataclass
class RunContext:
    """What every slide of a run shares."""

    backend: object
    model_sha256: str
    options: CountOptions
    out_dir: Path
    workers: ScanWorkers
    params: SegmentParams
    progress: object


def remove_outputs(out_dir: Path, name: str) -> None:
    """Delete a slide's previous outputs so a failed recount never leaves stale files that look complete."""
    suffixes = (".cells.csv", ".geojson", ".truth_comparison.csv", ".report.html", ".review.html")
    for f in [*(out_dir / f"{name}{suffix}" for suffix in suffixes), *out_dir.glob(f"{name}.gallery.*.png")]:
        if f.is_file() or f.is_symlink():  # a folder of that name is not ours: writing over it fails the slide
            f.unlink(missing_ok=True)
    shutil.rmtree(out_dir / f"{name}.review", ignore_errors=True)


def count_slide(path: Path, ctx: RunContext, result: SlideResult) -> SlideResult:
    """Count one slide into ``ctx.out_dir``; fills and returns ``result`` (raises WbcError on bad input)."""
    from ..slide.reader import open_slide

    t_start = time.perf_counter()
    opts = ctx.options
    backend = ctx.backend
    classes = list(backend.card.classes)
    name = result.slide
    if not path.exists():
        raise WbcError(f"file not found: {path}")
    if not path.is_file():
        raise WbcError(f"not a file: {path}")
    remove_outputs(ctx.out_dir, name)
    with open_slide(path) as reader:
        w0, h0 = reader.dimensions
        thumb_side = thumbnail_size((w0, h0), float(opts.mpp or getattr(reader, "mpp", None) or 0.25))
        thumb = thumbnail(reader, thumb_side)
        mask0, _ = tissue_mask(thumb)
        mpp, source = resolve_mpp(reader, opts.mpp, thumb, mask0)
        result.mpp, result.mpp_source = mpp, source
        if source == "estimated":
            warn(f"{name}: no microns per pixel in the slide; estimated {mpp:.4f} um/px from red cells (pass --mpp to set it)")
        if reader.even_illumination(mpp) is not None:  # a photograph's vignetting: everything after sees even glass
            thumb = thumbnail(reader, thumb_side)
        plan = plan_scan(reader, mpp, backend.card, opts, thumb, ctx.params)
        executor = ctx.workers.for_slide(len(plan.tiles))  # a process pool starts now, while the slide is zoned
        zoning = zone_slide(reader, thumb, plan)
        area = counting_area(zoning, opts.area, plan, (w0, h0), dilate_px=opts.overlap_um / (mpp * w0 / thumb.shape[1]) + 1)
        plan.tiles = area.tiles(plan)
        if opts.max_wbc is not None:
            plan.tiles = meander(plan.tiles)
        result.area, result.area_note, result.max_wbc = area.mode, area.note, opts.max_wbc
        upsample = plan.crop.level_mpp / (plan.crop.fov_um / plan.crop.input_size)
        if upsample > MAX_UPSAMPLE:
            warn(f"{name}: at {mpp:.3f} um/px a {plan.crop.fov_um:g} um crop has {plan.crop.side} px and is enlarged "
                 f"{upsample:.1f}x to the model's {plan.crop.input_size} px: expect lower accuracy than on finer scans")
        result.tiles_total, result.tiles_scanned = plan.tiles_total, len(plan.tiles)

        settings = {
            "model_sha256": ctx.model_sha256,
            "slide": slide_identity(path),
            "mpp": mpp,
            "mpp_source": source,
            "plan": plan.describe(),
            "options": opts.result_settings(),
            "card": {"classes": classes, "input_size": int(backend.card.input_size), "fov_um": plan.crop.fov_um},
            "segment": dataclasses.asdict(ctx.params),
            "area": {"mode": area.mode, "zoning": zoning.describe(),
                     "mask_sha256": None if area.mask is None else hashlib.sha256(np.packbits(area.mask).tobytes()).hexdigest()},
            "reading_order": "meander" if opts.max_wbc is not None else "raster",
            "wbc_deploy": __version__,
        }
        store = ProgressStore(ctx.out_dir, name)
        done: list[int] = []
        if opts.resume and store.exists():
            done = store.resume(settings, name)
            expected = [t.index for t in plan.tiles[: len(done)]]
            if done != expected:
                warn(f"{name}: its partial results do not follow the tile order; starting the slide over")
                store.start(settings)
                done = []
        else:
            store.start(settings)
        start_cells = sum(1 for _ in store.iter_cells()) if done else 0
        result.tiles_resumed = len(done)

        job = job_without_tiles(path, plan, ctx.params)
        scan = functools.partial(process_scan, job) if executor is not ctx.workers.threads else functools.partial(scan_tile, reader, job)
        progress = ctx.progress
        task = progress.add_task(name, total=len(plan.tiles), completed=len(done), wbc=start_cells, rate="")
        t_stream = time.perf_counter()

        def on_commit(tiles_done: int, cells: int) -> None:
            el = time.perf_counter() - t_stream
            progress.update(task, completed=len(done) + tiles_done, wbc=start_cells + cells,
                            rate=f"{cells / el:.1f} cells/s" if el > 0 else "")
            if opts.tile_hook is not None:
                opts.tile_hook(name, len(done) + tiles_done)

        stats = StreamStats()
        try:
            stream_slide(plan.tiles[len(done):], scan, executor, backend, store, batch_size=opts.batch_size,
                         window=max(2, 2 * opts.workers), start_cells=start_cells, on_commit=on_commit, stats=stats,
                         max_cells=opts.max_wbc, post=None if area.mask is None else functools.partial(keep_in_area, area))
        finally:
            store.close()
            result.stage_seconds = dict(stats.seconds)
            result.windows, result.refined = stats.windows, stats.refined
        result.stopped_early = stats.stopped_early
        t0 = time.perf_counter()
        read_tiles = slide_quality(store, plan, area, result)
        finish_outputs(path, name, reader, plan, store, ctx, result, area=area, read_tiles=read_tiles)
        result.stage_seconds["write"] += time.perf_counter() - t0
    store.discard()
    result.status = STATUS_OK
    result.backend = backend.name
    result.seconds = time.perf_counter() - t_start
    return result


def keep_in_area(area: CountingArea, result: TileResult) -> TileResult:
    """A tile's result with only the cells whose centre lies in the counting area (and their crops)."""
    if area.mask is None or not result.cells:
        return result
    inside = area.contains(np.array([c.x for c in result.cells]), np.array([c.y for c in result.cells]))
    if inside.all():
        return result
    return dataclasses.replace(result, cells=[c for c, k in zip(result.cells, inside) if k],
                               crops=result.crops[inside] if len(result.crops) else result.crops)


def slide_quality(store: ProgressStore, plan: ScanPlan, area: CountingArea, result: SlideResult) -> list[Tile]:
    """Fill the tiles read, counting area, WBC density and out-of-focus fraction from the store; returns the tiles read."""
    by_index = {t.index: t for t in plan.tiles}
    read, blurs, found = [], [], 0
    for index, n_cells, blur in store.iter_tiles():
        read.append(by_index[index])
        blurs.append(blur)
        found += n_cells
    result.tiles_scanned = len(read)
    # capped: the last tile read held more cells than --max-wbc left room for, or tiles were left unread
    result.stopped_early = result.stopped_early or (result.max_wbc is not None and found > result.max_wbc)
    result.area_mm2 = area.area_mm2(plan, read)
    result.wbc_per_mm2 = found / result.area_mm2 if result.area_mm2 else None
    result.out_of_focus_fraction = out_of_focus_fraction(blurs)
    return read


def count_one(r: SlideResult, ctx: RunContext) -> SlideResult:
    """Count one pending slide into ``ctx.out_dir``: ``r`` ends ``ok``, or ``error``/``interrupted`` with the reason.

    The one entry point of a slide for the local loop and for Dask workers (:mod:`.cluster`): a bad
    slide never raises, so the other slides of the run go on.
    """
    t0 = time.perf_counter()
    try:
        count_slide(r.path, ctx, r)
    except WbcError as exc:
        r.status, r.error = STATUS_ERROR, str(exc)
    except (KeyboardInterrupt, CountInterrupted):
        r.status, r.error = STATUS_INTERRUPTED, "interrupted: rerun with --resume to continue"
    except MemoryError:
        r.status, r.error = STATUS_ERROR, "out of memory (try a smaller --batch-size or fewer --workers)"
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
        r.status, r.error = STATUS_ERROR, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'unexpected error'}"
    if r.status != STATUS_OK:
        r.seconds = time.perf_counter() - t0
        r.backend = ctx.backend.name
    return r


def finish_outputs(path: Path, name: str, reader, plan: ScanPlan, store: ProgressStore, ctx: RunContext, result: SlideResult,
                   area: CountingArea | None = None, read_tiles: list[Tile] | None = None) -> None:
    """Assemble cells.csv (and GeoJSON, truth comparison, galleries) from the progress store.

    With ``--max-wbc`` the outputs hold the first N cells; the truth comparison covers every cell of the
    tiles read (the last one whole) against the true cells of the counting area in those tiles.
    """
    opts = ctx.options
    classes = list(ctx.backend.card.classes)
    threshold = opts.threshold_for(ctx.backend.card)
    out = ctx.out_dir
    limit = opts.max_wbc
    xy: list[tuple[float, float]] = []  # every cell read (truth comparison)
    labels: list[str] = []
    collector = GalleryCollector(opts.gallery_k) if opts.gallery else None
    review_cells: list = []

    def first_cells():
        for i, (_, cell) in enumerate(store.iter_cells(), start=1):
            label, conf = label_of(cell.probs, classes, threshold)
            xy.append((cell.x, cell.y))
            labels.append(label)
            if limit is not None and i > limit:
                continue
            if collector is not None:
                collector.add(i, label, conf, cell.x, cell.y)
            if opts.review:
                review_cells.append(review_cell(i, cell.probs, classes, label, conf))
            yield cell

    cells_path = out / f"{name}.cells.csv"
    counts, mean_conf = write_cells_csv(cells_path, first_cells(), classes, threshold)
    result.counts, result.mean_confidence = counts, mean_conf
    result.unidentified_rate = (result.n_unidentified / result.n_wbc if result.n_wbc else 0.0) if threshold else None
    result.outputs["cells"] = cells_path
    n_first = len(xy) if limit is None else min(limit, len(xy))  # xy holds every cell read; outputs the first n
    if opts.geojson:
        gj = out / f"{name}.geojson"
        write_geojson(gj, itertools.islice((c for _, c in store.iter_cells()), limit), classes, threshold, slide=name)
        result.outputs["geojson"] = gj
    if opts.truth:
        tp = truth_path_for(path)
        region = None
        if area is not None and (area.mask is not None or result.stopped_early):
            region = functools.partial(_in_tiles_and_area, area, plan, read_tiles or [])
        if tp.is_file():
            try:
                result.truth = compare_with_truth(xy, labels, tp, plan.mpp, classes, MATCH_UM, region=region)
            except WbcError as exc:  # the counts stand; only the comparison is lost
                warn(f"{name}: no truth comparison: {exc}")
            else:
                cmp_path = out / f"{name}.truth_comparison.csv"
                write_truth_comparison(cmp_path, result.truth, classes)
                result.outputs["truth"] = cmp_path
        else:
            warn(f"{name}: --truth given but there is no {tp.name} beside the slide")
    if opts.review:
        try:
            result.outputs["review"] = write_review(out, name, reader, plan, review_cells, xy[:n_first], classes,
                                                     ctx.workers.threads)
        except Exception as exc:  # noqa: BLE001 - a review aid must never cost the counts already written
            warn(f"{name}: review page not written ({type(exc).__name__}: {' '.join(str(exc).split())})")
    if collector is not None:
        try:
            settings = {"model": str(ctx.backend.model_path), "model_sha256": ctx.model_sha256,
                        "wbc_deploy": __version__, "backend": ctx.backend.name, "mpp": result.mpp,
                        "mpp_source": result.mpp_source, "detection_mpp": round(plan.detect.mpp, 4),
                        "refine_mpp": round(plan.refine.mpp, 4), "fov_um": plan.crop.fov_um}
            result.outputs.update(write_gallery(ctx.out_dir, name, reader, plan, collector, counts, classes, xy[:n_first],
                                                labels[:n_first],
                                                settings, review=review_facts(result, area)))
        except Exception as exc:  # noqa: BLE001 - review material is part of what --gallery promises
            why = str(exc) if isinstance(exc, WbcError) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            raise WbcError(f"gallery/report not written: {why} (the counts are in {cells_path.name}; "
                           "rerun with --resume to write the review material again)") from None


def _in_tiles_and_area(area: CountingArea, plan: ScanPlan, tiles: list[Tile], pts: np.ndarray) -> np.ndarray:
    """Which level-0 points lie in the counting area and in the core of one of ``tiles``."""
    keep = area.contains(pts[:, 0], pts[:, 1])
    owned = np.zeros(len(pts), bool)
    dx, dy = plan.detect.from_level0(pts[:, 0] - 0.5, pts[:, 1] - 0.5)
    for t in tiles:
        x0, y0, x1, y1 = t.core
        owned |= (dx >= x0) & (dx < x1) & (dy >= y0) & (dy < y1)
    return keep & owned


def review_facts(result: SlideResult, area: CountingArea | None) -> dict:
    """What the slide report shows besides the counts: the zones, the counting area and the quality flags."""
    facts = {"n_wbc": result.n_wbc, "n_counted": result.n_counted, "n_unidentified": result.n_unidentified,
             "area": result.area_note or result.area, "area_mm2": result.area_mm2, "wbc_per_mm2": result.wbc_per_mm2,
             "max_wbc": result.max_wbc, "stopped_early": result.stopped_early,
             "out_of_focus_fraction": result.out_of_focus_fraction, "unidentified_rate": result.unidentified_rate}
    if area is not None:
        facts["zones"] = area.zoning.zones
        facts["counting_mask"] = area.mask
    return facts


# --------------------------------------------------------------------------- the run


def _previous_rows(summary_path: Path) -> dict[str, dict[str, str]]:
    if not summary_path.is_file():
        return {}
    try:
        with open(summary_path, newline="", encoding="utf-8") as fh:
            return {row["slide"]: row for row in csv.DictReader(fh) if row.get("slide")}
    except (OSError, csv.Error, KeyError):
        return {}


def result_from_row(row: dict[str, str], path: Path, classes: list[str]) -> SlideResult:
    """A finished slide's SlideResult rebuilt from its summary.csv row (``--resume`` skips it)."""
    def num(key: str, cast=float):
        v = row.get(key, "")
        try:
            return cast(v) if v not in ("", None) else None
        except ValueError:
            return None

    r = SlideResult(slide=row["slide"], path=path, status=STATUS_OK, backend=row.get("backend", ""),
                    counts={c: num(f"n_{c}", int) or 0 for c in [*classes, UNIDENTIFIED]}, mean_confidence=num("mean_confidence"),
                    seconds=num("seconds") or 0.0, mpp=num("mpp"), mpp_source=row.get("mpp_source", ""),
                    tiles_total=num("tiles_total", int) or 0, tiles_scanned=num("tiles_scanned", int) or 0,
                    previous_row=dict(row), max_wbc=num("max_wbc", int), stopped_early=row.get("stopped_early") == "true",
                    area=row.get("area", ""), area_mm2=num("area_mm2"), wbc_per_mm2=num("wbc_per_mm2"),
                    out_of_focus_fraction=num("out_of_focus_fraction"), unidentified_rate=num("unidentified_rate"))
    return r


def check_resumable(names: list[str], out: Path, model_sha: str, options: CountOptions) -> None:
    """Refuse (WbcError, before anything is written) to resume partial slides made with another model or options."""
    for name in names:
        store = ProgressStore(out, name)
        if not store.exists():
            continue
        try:
            old = json.loads(store.settings_path.read_text()).get("settings", {})
        except (OSError, json.JSONDecodeError):
            continue  # unreadable: that slide starts over
        differs = []
        if old.get("model_sha256") != model_sha:
            differs.append("model")
        old_opts, new_opts = old.get("options", {}), options.result_settings()
        differs += sorted(k for k in set(old_opts) | set(new_opts) if old_opts.get(k) != new_opts.get(k))
        if differs:
            raise WbcError(
                f"cannot resume {name}: its partial results were made with a different {', '.join(differs)}; "
                "rerun with the same --model and options, or without --resume to start over"
            )


def check_finished_matches(name: str, row: dict[str, str], model_sha: str, settings_sha: str) -> None:
    """Refuse (WbcError, before anything is written) to keep a finished slide counted with another model or options."""
    checks = (("another model", "model_sha256", model_sha), ("other options", "settings_sha256", settings_sha))
    differs = [(what, key) for what, key, now in checks if row.get(key, "") != now]
    if differs:
        raise WbcError(
            f"cannot resume: {name} was already counted with {' and '.join(w for w, _ in differs)} "
            f"({', '.join(k for _, k in differs)} in summary.csv); "
            "rerun with the same --model and options, or without --resume to count every slide again"
        )


def open_run_backend(model: str | Path, options: CountOptions):
    """Load the model (WbcError, nothing written, if it is missing or not a wbc-deploy model)."""
    from ..runtime import open_backend

    return open_backend(model, options.backend, **options.backend_options)


def count_slides(inputs, model: str | Path, out_dir: str | Path, options: CountOptions | None = None,
                 backend=None, cluster=None) -> RunResult:
    """Count every slide of ``inputs`` (files or folders) with ``model`` into ``out_dir``.

    Bad options or model raise WbcError before anything is written. A slide that cannot be read gets
    ``status=error`` and its reason; the others are still counted. ``backend`` may be an already
    open Backend (then ``model`` is only used for its hash). Returns a RunResult whose ``exit_code``
    is 0, 3 (some slide failed) or 130 (interrupted). ``cluster``: a :class:`.cluster.ClusterOptions` to
    count the slides on Dask workers instead of here (same outputs).
    """
    options = options or CountOptions()
    options.validate()
    if options.gallery:
        require_explain()
    own_backend = backend is None
    if backend is None:
        backend = open_run_backend(model, options)
    try:
        paths = discover_inputs(inputs)
        out = output_folder(out_dir)
        classes = list(backend.card.classes)
        summary_path = out / SUMMARY_NAME
        previous = _previous_rows(summary_path) if options.resume else {}
        from ..zoo import resolve_model

        resolved = resolve_model(model, options.backend)
        model_sha = sha256_file(resolved) if resolved.exists() else str(model)
        settings_sha = settings_hash(options.result_settings())
        results: list[SlideResult] = []
        names: dict[str, Path] = {}
        for p in paths:
            name = slide_name(p)
            r = SlideResult(slide=name, path=p, model_sha256=model_sha, settings_sha256=settings_sha)
            if name in names:
                r.status, r.error = STATUS_ERROR, f"another input ({names[name]}) has the same name {name!r}: outputs would collide; rename one"
            else:
                names[name] = p
                prev = previous.get(name)
                if (prev and prev.get("status") == STATUS_OK and (out / f"{name}.cells.csv").is_file()
                        and not ProgressStore(out, name).exists()):
                    check_finished_matches(name, prev, model_sha, settings_sha)
                    r = result_from_row(prev, p, classes)
            results.append(r)
        run = RunResult(slides=results, classes=classes, out_dir=out, summary_path=summary_path, backend=backend.name)
        if options.resume:
            check_resumable([r.slide for r in results if r.status == STATUS_PENDING], out, model_sha, options)
        if cluster is not None:
            from .cluster import count_on_cluster

            return count_on_cluster(cluster, run, resolved, model_sha, options, backend)  # a bundled name as its path
        write_summary(summary_path, results, classes)
        params = SegmentParams()
        with ExitStack() as stack:
            progress = stack.enter_context(make_progress(options.quiet, TextColumn("{task.fields[wbc]} WBC"),
                                                         TextColumn("{task.fields[rate]}")))
            workers = stack.enter_context(ScanWorkers(options))
            ctx = RunContext(backend=backend, model_sha256=model_sha, options=options, out_dir=out,
                             workers=workers, params=params, progress=progress)
            for r in results:
                if r.status != STATUS_PENDING:
                    continue
                count_one(r, ctx)
                run.interrupted = r.status == STATUS_INTERRUPTED
                write_summary(summary_path, results, classes)
                if run.interrupted:
                    break
        return run
    finally:
        if own_backend:
            backend.close()
