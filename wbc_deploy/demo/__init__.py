"""The bundled real-pixel demo: a few BCCD smear photographs (MIT licence, see ``bccd/LICENSE``) tiled
into a small whole-slide image with the annotated WBCs as its truth file.

The fields are BCCD's BloodImage_00000-00062 photographs (640 x 480 JPEG, ~0.074 um/px), chosen by a
fixed rule (``benchmarks/vendor_demo_fields.py``): every WBC box labelled, one class per photograph, per
class the first ones in file order. ``wbcs.csv`` lists each WBC's box centre and label.
Source: the BCCD dataset (Shenggan, github.com/Shenggan/BCCD_Dataset), MIT licence.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import WbcError

DEMO_DIR = Path(__file__).resolve().parent / "bccd"
#: um/px of the BCCD photographs (7.5 um red cells measure ~101-105 px across).
DEMO_MPP = 0.074
DEMO_COLS = 6


def demo_fields() -> tuple[list[str], list[np.ndarray], list[tuple[str, float, float, str]]]:
    """(image names, RGB arrays, WBC rows (image, x, y, label)) of the bundled fields."""
    table = DEMO_DIR / "wbcs.csv"
    if not table.is_file():
        raise WbcError(f"the demo fields are missing from this installation ({table})")
    with open(table, newline="") as fh:
        rows = [(r["image"], float(r["x"]), float(r["y"]), r["label"]) for r in csv.DictReader(fh)]
    names = sorted({r[0] for r in rows})
    images = []
    for n in names:
        with Image.open(DEMO_DIR / n) as im:
            images.append(np.asarray(im.convert("RGB")))
    return names, images, rows


def write_demo_slide(path: str | Path) -> Path:
    """Write the demo slide (an Aperio-style pyramidal TIFF at 0.074 um/px) and its truth CSV; return the slide path."""
    from ..slide.mosaic import mosaic, write_image_slide

    names, images, rows = demo_fields()
    image, offsets = mosaic(images, DEMO_COLS)
    where = dict(zip(names, offsets))
    truth = [(where[n][0] + x, where[n][1] + y, lab) for n, x, y, lab in rows]
    return write_image_slide(path, image, DEMO_MPP, truth, name="bccd-demo")
