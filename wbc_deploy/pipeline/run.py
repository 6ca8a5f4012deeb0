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
import json
import shutil
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from rich.progress import TextColumn

from .. import __version__
from ..classes import UNIDENTIFIED
from ..console import make_progress, warn
from ..errors import WbcError
from ..files import output_folder, sha256_file
from ..segment import SegmentParams
from .detect import job_without_tiles, process_scan, scan_tile
from .engine import StreamStats, stream_slide
from .gallery import GalleryCollector, require_explain, write_gallery
from .inputs import discover_inputs, slide_name
from .options import MATCH_UM, CountOptions
from .outputs import SUMMARY_NAME, label_of, write_cells_csv, write_geojson, write_summary, write_truth_comparison
from .plan import ScanPlan, plan_scan, thumbnail_size, tissue_mask
from .review import review_cell, write_review
from .result import STATUS_ERROR, STATUS_INTERRUPTED, STATUS_OK, STATUS_PENDING, RunResult, SlideResult
from .scale import resolve_mpp, thumbnail
from .store import ProgressStore, settings_hash, slide_identity
from .truth import compare_with_truth, truth_path_for


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
    executor: Executor
    params: SegmentParams
    progress: object


def remove_outputs(out_dir: Path, name: str) -> None:
    """Delete a slide's previous outputs so a failed recount never leaves stale files that look complete."""
    for suffix in (".cells.csv", ".geojson", ".truth_comparison.csv", ".report.html", ".review.html"):
        (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(out_dir / f"{name}.review", ignore_errors=True)
    for f in out_dir.glob(f"{name}.gallery.*.png"):
        f.unlink(missing_ok=True)


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
        plan = plan_scan(reader, mpp, backend.card, opts, thumb)
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
        scan = functools.partial(process_scan, job) if isinstance(ctx.executor, ProcessPoolExecutor) else functools.partial(scan_tile, reader, job)
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
            stream_slide(plan.tiles[len(done):], scan, ctx.executor, backend, store, batch_size=opts.batch_size,
                         window=max(2, 2 * opts.workers), start_cells=start_cells, on_commit=on_commit, stats=stats)
        finally:
            store.close()
            result.stage_seconds = dict(stats.seconds)
            result.windows, result.refined = stats.windows, stats.refined
        t0 = time.perf_counter()
        finish_outputs(path, name, reader, plan, store, ctx, result)
        result.stage_seconds["write"] += time.perf_counter() - t0
    store.discard()
    result.status = STATUS_OK
    result.backend = backend.name
    result.seconds = time.perf_counter() - t_start
    return result


def finish_outputs(path: Path, name: str, reader, plan: ScanPlan, store: ProgressStore, ctx: RunContext, result: SlideResult) -> None:
    """Assemble cells.csv (and GeoJSON, truth comparison, galleries) from the progress store."""
    opts = ctx.options
    classes = list(ctx.backend.card.classes)
    threshold = opts.threshold_for(ctx.backend.card)
    out = ctx.out_dir
    xy: list[tuple[float, float]] = []
    labels: list[str] = []
    collector = GalleryCollector(opts.gallery_k) if opts.gallery else None
    review_cells: list = []

    def cells():
        for i, (_, cell) in enumerate(store.iter_cells(), start=1):
            label, conf = label_of(cell.probs, classes, threshold)
            xy.append((cell.x, cell.y))
            labels.append(label)
            if collector is not None:
                collector.add(i, label, conf, cell.x, cell.y)
            if opts.review:
                review_cells.append(review_cell(i, cell.probs, classes, label, conf))
            yield cell

    cells_path = out / f"{name}.cells.csv"
    counts, mean_conf = write_cells_csv(cells_path, cells(), classes, threshold)
    result.counts, result.mean_confidence = counts, mean_conf
    result.outputs["cells"] = cells_path
    if opts.geojson:
        gj = out / f"{name}.geojson"
        write_geojson(gj, (c for _, c in store.iter_cells()), classes, threshold, slide=name)
        result.outputs["geojson"] = gj
    if opts.truth:
        tp = truth_path_for(path)
        if tp.is_file():
            try:
                result.truth = compare_with_truth(xy, labels, tp, plan.mpp, classes, MATCH_UM)
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
            result.outputs["review"] = write_review(out, name, reader, plan, review_cells, xy, classes, ctx.executor)
        except Exception as exc:  # noqa: BLE001 - a review aid must never cost the counts already written
            warn(f"{name}: review page not written ({type(exc).__name__}: {' '.join(str(exc).split())})")
    if collector is not None:
        try:
            settings = {"model": str(ctx.backend.model_path), "model_sha256": ctx.model_sha256,
                        "wbc_deploy": __version__, "backend": ctx.backend.name, "mpp": result.mpp,
                        "mpp_source": result.mpp_source, "detection_mpp": round(plan.detect.mpp, 4),
                        "refine_mpp": round(plan.refine.mpp, 4), "fov_um": plan.crop.fov_um}
            result.outputs.update(write_gallery(ctx.out_dir, name, reader, plan, collector, counts, classes, xy, labels, settings))
        except WbcError as exc:
            warn(f"{name}: gallery/report not written: {exc}")
        except Exception as exc:  # noqa: BLE001 - a review aid must never cost the counts already written
            warn(f"{name}: gallery/report not written ({type(exc).__name__}: {' '.join(str(exc).split())})")


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
                    previous_row=dict(row))
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


def make_executor(options: CountOptions) -> Executor:
    """The reading/segmentation worker pool (threads, or processes started with ``spawn``)."""
    if options.executor == "process":
        import multiprocessing as mp

        return ProcessPoolExecutor(max_workers=options.workers, mp_context=mp.get_context("spawn"))
    return ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="wbc-scan")


def count_slides(inputs, model: str | Path, out_dir: str | Path, options: CountOptions | None = None,
                 backend=None) -> RunResult:
    """Count every slide of ``inputs`` (files or folders) with ``model`` into ``out_dir``.

    Bad options or model raise WbcError before anything is written. A slide that cannot be read gets
    ``status=error`` and its reason; the others are still counted. ``backend`` may be an already
    open Backend (then ``model`` is only used for its hash). Returns a RunResult whose ``exit_code``
    is 0, 3 (some slide failed) or 130 (interrupted).
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
        write_summary(summary_path, results, classes)
        params = SegmentParams()
        with ExitStack() as stack:
            progress = stack.enter_context(make_progress(options.quiet, TextColumn("{task.fields[wbc]} WBC"),
                                                         TextColumn("{task.fields[rate]}")))
            executor = stack.enter_context(make_executor(options))
            ctx = RunContext(backend=backend, model_sha256=model_sha, options=options, out_dir=out,
                             executor=executor, params=params, progress=progress)
            for r in results:
                if r.status != STATUS_PENDING:
                    continue
                t0 = time.perf_counter()
                try:
                    count_slide(r.path, ctx, r)
                except WbcError as exc:
                    r.status, r.error = STATUS_ERROR, str(exc)
                except (KeyboardInterrupt, CountInterrupted):
                    r.status, r.error = STATUS_INTERRUPTED, "interrupted: rerun with --resume to continue"
                    run.interrupted = True
                except MemoryError:
                    r.status, r.error = STATUS_ERROR, "out of memory (try a smaller --batch-size or fewer --workers)"
                except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the others
                    r.status, r.error = STATUS_ERROR, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'unexpected error'}"
                if r.status != STATUS_OK:
                    r.seconds = time.perf_counter() - t0
                    r.backend = backend.name
                write_summary(summary_path, results, classes)
                if run.interrupted:
                    break
        return run
    finally:
        if own_backend:
            backend.close()
