"""Unit tests of the count pipeline's pieces: tiling and ownership, resolutions, store, gallery, matching, inputs."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from wbc_deploy.errors import WbcError
from wbc_deploy.pipeline.gallery import GalleryCollector
from wbc_deploy.pipeline.inputs import discover_inputs, slide_name
from wbc_deploy.pipeline.plan import (Resolution, choose_crop_level, choose_resolution, plan_tiles, split_small_slide, tile_size,
                                      tissue_mask)
from wbc_deploy.pipeline.store import AtomicWriter, ProgressStore, StoredCell
from wbc_deploy.pipeline.truth import match_points


def test_tiles_partition_the_image_and_pads_add_the_overlap():
    size, tile, overlap = (1000, 700), 256, 40
    tiles, total = plan_tiles(size, tile, overlap)
    assert total == 4 * 3 and [t.index for t in tiles] == list(range(12))
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(0, 1, (2000, 2)) * size, [[255.999, 256.0], [256.0, 255.5], [0, 0], [999.9, 699.9]]])
    for x, y in pts:
        owners = [t for t in tiles if t.owns(x, y)]
        assert len(owners) == 1, (x, y, owners)
    for t in tiles:
        x0, y0, x1, y1 = t.core
        assert t.pad == (max(0, x0 - overlap), max(0, y0 - overlap), min(1000, x1 + overlap), min(700, y1 + overlap))


def test_tiles_without_tissue_are_skipped_and_keep_their_grid_index():
    mask = np.zeros((70, 100), bool)  # mask px = detection px / 10
    mask[5:10, 80:90] = True  # tissue only near detection (800..900, 50..100): tile (3, 0)
    tiles, total = plan_tiles((1000, 700), 256, 8, mask, (0.1, 0.1))
    assert total == 12
    assert [t.index for t in tiles] == [3]


def test_choose_resolution_prefers_pyramid_levels_then_block_averages():
    r = choose_resolution(0.25, [1.0, 4.0, 16.0], 1.0)
    assert (r.level, r.factor, r.mpp) == (1, 1, 1.0)
    r = choose_resolution(0.25, [1.0], 1.0)
    assert (r.level, r.factor, r.mpp) == (0, 4, 1.0)
    r = choose_resolution(0.074, [1.0], 0.5)
    assert (r.level, r.factor) == (0, 7) and r.mpp == pytest.approx(0.518)
    r = choose_resolution(0.5, [1.0, 4.0], 1.0)
    assert (r.level, r.factor, r.mpp) == (0, 2, 1.0)
    r = choose_resolution(2.0, [1.0], 1.0)  # coarser than asked: used as it is
    assert (r.level, r.factor, r.mpp) == (0, 1, 2.0)


def test_resolution_coordinates_round_trip():
    r = Resolution(level=1, level_downsample=4.0, factor=2, mpp=2.0)
    assert r.to_level0(0, 0) == (3.5, 3.5)  # detection pixel 0 covers level-0 pixels 0..7
    x, y = r.from_level0(*r.to_level0(12.25, 7.5))
    assert (x, y) == pytest.approx((12.25, 7.5))


def test_crop_level_is_the_coarsest_with_enough_pixels_over_the_field():
    c = choose_crop_level(0.25, [1.0, 4.0], 24.0, 64)  # needs <= 0.375 um/px
    assert (c.level, c.side) == (0, 96)
    c = choose_crop_level(0.25, [1.0, 4.0], 24.0, 16)  # needs <= 1.5 um/px
    assert (c.level, c.side) == (1, 24)
    c = choose_crop_level(0.5, [1.0, 4.0], 24.0, 224)  # too coarse everywhere: level 0, upsampled
    assert (c.level, c.side) == (0, 48)


def test_tissue_mask_separates_smear_from_glass():
    thumb = np.full((40, 60, 3), (235, 232, 230), np.uint8)
    thumb[10:30, 20:50] = (200, 120, 130)  # smear
    mask, bg = tissue_mask(thumb)
    assert mask[10:30, 20:50].all() and not mask[:10].any() and not mask[:, :20].any()
    assert bg == pytest.approx((235, 232, 230), abs=1)


def test_gallery_keeps_k_most_and_least_confident_per_class():
    rng = random.Random(0)
    col = GalleryCollector(k=4)
    cells = []
    for i in range(1, 301):
        label = rng.choice(["neutrophil", "lymphocyte"])
        conf = round(rng.uniform(0.2, 1.0), 2)  # ties on purpose
        cells.append((i, label, conf))
        col.add(i, label, conf, float(i), float(i))
    for label in ("neutrophil", "lymphocyte"):
        mine = [(c, i) for i, lab, c in cells if lab == label]
        top = sorted(mine, key=lambda t: (-t[0], t[1]))[:4]
        bottom = sorted(mine, key=lambda t: (t[0], t[1]))[:4]
        assert [(e.confidence, e.cell_id) for e in col.most_confident(label)] == top
        assert [(e.confidence, e.cell_id) for e in col.least_confident(label)] == bottom
        assert len(col.entries(label)) == 8


def test_match_points_is_one_to_one_within_the_radius():
    found = np.array([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0]])
    truth = np.array([[0.5, 0.0], [100.0, 100.0]])
    assert match_points(found, truth, 2.0) in ([(0, 0)], [(1, 0)])
    assert match_points(found, truth, 0.1) == []
    assert match_points(found[:0], truth, 5.0) == []


def test_store_resumes_after_a_torn_line_and_refuses_other_settings(tmp_path):
    store = ProgressStore(tmp_path, "s1")
    store.start({"model": "a", "batch": 8})
    cell = StoredCell(x=1.5, y=2.5, area_um2=40.0, probs=[0.25, 0.75], outline=[[0, 0], [1, 0], [1, 1], [0, 0]])
    store.append(0, [cell])
    store.append(3, [])
    store.close()
    with open(store.tiles_path, "a") as fh:
        fh.write('{"t": 5, "c": [[1')  # the process died mid-write
    again = ProgressStore(tmp_path, "s1")
    assert again.resume({"model": "a", "batch": 8}, "s1") == [0, 3]
    again.append(5, [cell])
    again.close()
    assert [t for t, _ in again.iter_cells()] == [0, 5]
    assert list(again.iter_cells())[0][1] == cell
    with pytest.raises(WbcError, match="different model"):
        ProgressStore(tmp_path, "s1").resume({"model": "b", "batch": 8}, "s1")
    again.discard()
    assert not again.dir.exists()


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with AtomicWriter(target) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_discover_inputs_recurses_sorted_and_keeps_missing_paths(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/z.svs", "a.png", "b/y.tiff", ".hidden/x.svs", "notes.txt", "b/.tmp.png"):
        (tmp_path / rel).write_bytes(b"x")
    missing = tmp_path / "gone.ndpi"
    got = discover_inputs([tmp_path, missing, tmp_path / "a.png"])
    assert got == [tmp_path / "a.png", tmp_path / "b/y.tiff", tmp_path / "b/z.svs", missing]
    assert slide_name(tmp_path / "b/y.tiff") == "y"
    (tmp_path / "empty").mkdir()
    with pytest.raises(WbcError, match="no slides"):
        discover_inputs([tmp_path / "empty"])


def test_store_lines_are_json_in_tile_order(tmp_path):
    store = ProgressStore(tmp_path, "s")
    store.start({})
    for t in (2, 7, 9):
        store.append(t, [])
    store.close()
    lines = store.tiles_path.read_text().splitlines()
    assert [json.loads(line)["t"] for line in lines] == [2, 7, 9]


@pytest.mark.parametrize("radius", [1, 4, 10])
@pytest.mark.parametrize("density", [0.0, 0.002, 0.05, 0.5])
def test_dilate_square_equals_a_square_maximum_filter(radius, density):
    from scipy import ndimage as ndi

    from wbc_deploy.pipeline.detect import dilate_square

    rng = np.random.default_rng(radius * 100 + int(density * 1000))
    mask = rng.random((203, 317)) < density
    mask[0, 5] = mask[-1, -1] = True  # pixels on the border dilate only inwards
    expected = ndi.maximum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="constant").astype(bool)
    got = dilate_square(mask, radius)
    assert got.dtype == bool and got.shape == mask.shape
    assert np.array_equal(got, expected)


def test_a_pyramid_level_close_to_the_refinement_resolution_is_read_as_it_is():
    """Level 1 of a 4x pyramid over a 0.074 um/px scan (0.296 um/px) serves a 0.25 um/px refinement: reading
    level 0 block-averaged by 3 (0.222 um/px) would read 16x the pixels. Without such a level, as before."""
    r = choose_resolution(0.074, [1.0, 4.0, 16.0], 0.25, level_tolerance=1.25)
    assert (r.level, r.factor) == (1, 1) and r.mpp == pytest.approx(0.296)
    r = choose_resolution(0.074, [1.0, 4.0, 16.0], 0.25)  # the 5% tolerance alone: level 0, block-averaged
    assert (r.level, r.factor) == (0, 3)
    r = choose_resolution(0.074, [1.0], 0.25, level_tolerance=1.25)
    assert (r.level, r.factor) == (0, 3)
    r = choose_resolution(0.06, [1.0, 5.0], 0.25, level_tolerance=1.25)  # level 1 at 0.3 um/px: 20% coarser
    assert (r.level, r.factor) == (1, 1)
    r = choose_resolution(0.25, [1.0, 4.0], 0.25, level_tolerance=1.25)
    assert (r.level, r.factor, r.mpp) == (0, 1, 0.25)


def test_a_small_slide_is_cut_into_enough_tiles_for_every_worker():
    """A slide that its tile size would leave in one tile (the 0.6 x 0.5 mm real-pixel slide) gets 4; a big one
    keeps its tiles; tiles never go below the floor."""
    assert split_small_slide((693, 600), 1153, 144, 4) == 599  # the largest side giving 2 x 2 tiles
    tiles, total = plan_tiles((693, 600), 599, 36)
    assert total == len(tiles) == 4
    assert split_small_slide((20000, 16000), 1024, 144, 4) == 1024
    assert split_small_slide((693, 600), 1153, 144, 1) == 1153
    assert split_small_slide((300, 200), 1024, 144, 4) == 199  # 2 x 2
    assert split_small_slide((100, 100), 1024, 144, 4) == 144  # the floor: one tile


def test_tiles_are_sized_by_the_pixels_the_refinement_reads():
    """A fine scan is cut into several tiles (work follows pixels read), a 0.25 um/px scan keeps 1024 um tiles."""
    levels = [1.0, 4.0, 16.0]
    det, ref = choose_resolution(0.074, levels, 1.0), choose_resolution(0.074, levels, 0.25)
    px = tile_size(det, ref, 1024.0, max_read_px=4096)
    assert ref.level == 0 and px == round(4096 * ref.level_downsample / det.ds)  # 4096 level-0 px: 303 um
    assert px * det.mpp == pytest.approx(4096 * 0.074, rel=0.01)
    det, ref = choose_resolution(0.25, levels, 1.0), choose_resolution(0.25, levels, 0.25)
    assert tile_size(det, ref, 1024.0, max_read_px=4096) == 1024
    assert tile_size(det, ref, 1024.0, max_read_px=2048) == 512
    # near-equal tiles, none larger than asked, none a sliver: 693 x 600 px in 341 px tiles -> 3 x 2
    tiles, total = plan_tiles((693, 600), 341, 36)
    widths = {t.core[2] - t.core[0] for t in tiles}
    heights = {t.core[3] - t.core[1] for t in tiles}
    assert total == 6 and max(widths) <= 341 and max(widths) - min(widths) <= 1 and heights == {300}


def test_auto_workers_start_processes_only_for_slides_of_several_tiles():
    """Scan threads share the GIL, so `auto` scans a slide of 2+ tiles with worker processes (started once,
    kept for the run); a one-tile slide or a single worker never pays for starting them."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    from wbc_deploy.pipeline.options import CountOptions
    from wbc_deploy.pipeline.workers import ScanWorkers

    with ScanWorkers(CountOptions(workers=2)) as w:
        assert w.for_slide(1) is w.threads and w._processes is None
        pool = w.for_slide(2)
        assert isinstance(pool, ProcessPoolExecutor) and w.for_slide(9) is pool
        assert pool.submit(os.getpid).result() != os.getpid()
    for kind, workers, tiles in (("auto", 1, 16), ("thread", 2, 16)):
        with ScanWorkers(CountOptions(workers=workers, executor=kind)) as w:
            assert w.for_slide(tiles) is w.threads
    with ScanWorkers(CountOptions(workers=1, executor="process")) as w:
        assert isinstance(w.for_slide(1), ProcessPoolExecutor)
