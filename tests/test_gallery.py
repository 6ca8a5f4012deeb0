"""Per-class cell galleries and the misclassified montage: files, tile count, order, captions; torch-free."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from wbc_deploy.errors import WbcError
from wbc_deploy.explain.gallery import (
    CellTile,
    MisclassifiedItem,
    gallery_path,
    gallery_sections,
    write_class_galleries,
    write_misclassified_montage,
)
from wbc_deploy.explain.montage import MontageLayout

LAYOUT = MontageLayout(tile_px=24, columns=4, pad=4, caption_lines=1, line_px=12)


def _solid(i: int, size: int = 20) -> np.ndarray:
    """A tile with a colour unique to ``i`` (no channel near the white/grey background)."""
    colour = ((37 * i) % 200, (91 * i + 40) % 200, (53 * i + 80) % 200)
    return np.full((size, size, 3), colour, dtype=np.uint8)


def _tile_colours(png, section_sizes, layout=LAYOUT):
    """The centre colour of every tile slot of the deterministic layout, per section."""
    arr = np.asarray(Image.open(png).convert("RGB"))
    assert (arr.shape[1], arr.shape[0]) == layout.size(section_sizes)
    out = []
    for boxes in layout.tile_boxes(section_sizes):
        out.append([tuple(int(v) for v in arr[(y0 + y1) // 2, (x0 + x1) // 2]) for x0, y0, x1, y1 in boxes])
    return arr, out


def test_gallery_shows_k_most_then_k_least_confident(tmp_path):
    conf = np.linspace(0.05, 0.95, 10)
    order = np.random.default_rng(0).permutation(10)  # the pipeline hands tiles in any order
    tiles = {"neutrophil": [CellTile(_solid(int(i)), float(conf[i]), int(i)) for i in order],
             "monocyte": [CellTile(_solid(20 + i), 0.5 + 0.1 * i, 100 + i) for i in range(4)],
             "basophil": []}
    paths = write_class_galleries(tmp_path / "g", "slide 1", tiles, k=3, counts={"neutrophil": 950, "monocyte": 4},
                                  layout=LAYOUT)
    assert paths == [gallery_path(tmp_path / "g", "slide 1", "neutrophil"), gallery_path(tmp_path / "g", "slide 1", "monocyte")]
    assert paths[0].name == "slide 1.gallery.neutrophil.png"
    assert gallery_path(tmp_path, "a/b:c", "x").name == "a_b_c.gallery.x.png"
    _, (most, least) = _tile_colours(paths[0], [3, 3])
    assert most == [tuple(_solid(i)[0, 0]) for i in (9, 8, 7)]
    assert least == [tuple(_solid(i)[0, 0]) for i in (0, 1, 2)]
    # <= 2k tiles: one section with all of them, highest confidence first.
    _, (everything,) = _tile_colours(paths[1], [4])
    assert everything == [tuple(_solid(20 + i)[0, 0]) for i in (3, 2, 1, 0)]
    # What count --gallery hands over: the k most and k least confident of a larger class, overlapping.
    kept = [CellTile(_solid(i), c, i) for i, c in ((1, 0.9), (2, 0.8), (4, 0.2), (3, 0.3), (2, 0.8))]
    sections = gallery_sections(kept, k=2, total=7)
    assert [[t.cell_id for t in s] for _, s in sections] == [[1, 2], [4, 3]]
    assert [title for title, _ in sections] == ["2 most confident, highest first", "2 least confident, lowest first"]
    assert [len(s) for _, s in gallery_sections(kept, k=2, total=4)] == [4]


def test_gallery_tiles_are_counted_on_the_grid_and_captioned(tmp_path):
    n = 11  # 3 rows of 4 columns, the last row one short
    tiles = {"lymphocyte": [CellTile(_solid(i), 0.99 - 0.01 * i, f"c{i}") for i in range(n)]}
    (path,) = write_class_galleries(tmp_path, "s", tiles, layout=LAYOUT)
    arr, (colours,) = _tile_colours(path, [n])
    expected = {tuple(_solid(i)[0, 0]) for i in range(n)}
    assert set(colours) == expected and len(colours) == n
    # The slot after the last tile is empty background, and every caption band holds dark text.
    boxes = LAYOUT.tile_boxes([n + 1])[0]
    x0, y0, x1, y1 = boxes[n]
    assert (arr[y0:y1, x0:x1] == 255).all()
    for x0, y0, x1, y1 in boxes[:n]:
        band = arr[y1 + 1:y1 + LAYOUT.line_px, x0:x1]
        assert (band.min(axis=2) < 120).sum() > 5


def test_gallery_deduplicates_cells_and_checks_inputs(tmp_path):
    a = CellTile(_solid(1), 0.9, 7)
    sections = gallery_sections([a, CellTile(_solid(1), 0.9, 7), CellTile(_solid(2), 0.4, 8)], k=5)
    assert [len(s) for _, s in sections] == [2]
    with pytest.raises(WbcError, match="non-finite"):
        gallery_sections([CellTile(_solid(1), float("nan"), 1)], k=2)
    with pytest.raises(WbcError, match="at least 1"):
        gallery_sections([a], k=0)
    with pytest.raises(WbcError, match="H x W x 3"):
        write_class_galleries(tmp_path, "s", {"monocyte": [CellTile(np.zeros((4, 4, 2)), 0.5, 1)]})
    # Grey, RGBA and float crops are drawn.
    crops = [np.full((9, 9), 90, np.uint8), np.full((9, 9, 4), 90, np.uint8), np.full((9, 9, 3), 90 / 255, np.float32)]
    (path,) = write_class_galleries(tmp_path, "s", {"monocyte": [CellTile(c, 0.5, i) for i, c in enumerate(crops)]}, layout=LAYOUT)
    _, (colours,) = _tile_colours(path, [3])
    assert colours == [(90, 90, 90)] * 3


def test_misclassified_montage_orders_and_caps(tmp_path):
    good = tmp_path / "img.png"
    Image.fromarray(_solid(5, 30)).save(good)
    items = [MisclassifiedItem(_solid(i), "monocyte", "lymphocyte", c, f"m{i}.png") for i, c in enumerate([0.6, 0.9, 0.7])]
    items += [MisclassifiedItem(good, "basophil", "neutrophil", None, "img.png"),
              MisclassifiedItem(tmp_path / "missing.png", "eosinophil", "neutrophil", 0.8)]
    layout = MontageLayout(tile_px=24, columns=3, pad=4, caption_lines=3, line_px=12)
    path = write_misclassified_montage(tmp_path / "mis" / "misclassified.png", items, max_items=4, layout=layout)
    _, (colours,) = _tile_colours(path, [4], layout)
    grey = (160, 160, 160)  # placeholder of the unreadable file
    assert colours == [tuple(_solid(1)[0, 0]), grey, tuple(_solid(2)[0, 0]), tuple(_solid(0)[0, 0])]
    empty = write_misclassified_montage(tmp_path / "none.png", [], layout=layout)
    with Image.open(empty) as im:
        assert im.format == "PNG" and (im.width, im.height) == layout.size([0])


def test_review_modules_do_not_import_torch():
    code = ("import sys; import wbc_deploy.explain.gallery, wbc_deploy.explain.report, wbc_deploy.explain.overlay; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluate_gallery_writes_the_misclassified_montage(tmp_path):
    """``evaluate --gallery`` (library path): a tile per wrong image, beside confusion.png; no montage without it."""
    from wbc_deploy.card import ModelCard
    from wbc_deploy.data.synth_cells import write_cell_dataset
    from wbc_deploy.trainer.evaluate import evaluate_folder, misclassified_path

    data = tmp_path / "d"
    write_cell_dataset(data, per_class=3, size_px=16, seed=0, classes=["lymphocyte", "neutrophil"])
    card = ModelCard(arch="stub", classes=["lymphocyte", "neutrophil"], input_size=16)

    def mostly_neutrophil(images):  # every lymphocyte is called a neutrophil
        return np.tile([0.3, 0.7], (len(images), 1))

    out = tmp_path / "res" / "metrics.json"
    m = evaluate_folder(mostly_neutrophil, card, data, out=out, quiet=True, gallery=True)
    wrong = m["confusion"][0][1]
    assert wrong == 3
    montage = misclassified_path(out)
    assert montage == out.with_name("misclassified.png") and (out.parent / "confusion.png").is_file()
    layout = MontageLayout(tile_px=112, columns=8, caption_lines=3)
    arr, (colours,) = _tile_colours(montage, [wrong], layout)
    assert all(c != (255, 255, 255) for c in colours)
    evaluate_folder(mostly_neutrophil, card, data, out=tmp_path / "plain.json", quiet=True)
    assert not (tmp_path / "misclassified.png").exists()
