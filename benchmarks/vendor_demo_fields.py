"""Copy the demo's real smear fields from a BCCD folder into wbc_deploy/demo/bccd/ (run once; committed).

Rule (fixed, not chosen by how the model does): photographs whose every WBC box has a label, one class per
photograph; per class in file order the first 10 neutrophil, 7 eosinophil, 3 lymphocyte, 3 monocyte and
1 basophil photographs (24 fields: a 6 x 4 mosaic; roughly BCCD's own class mix).
Usage: .venv/bin/python benchmarks/vendor_demo_fields.py ../shared/data/bccd-dev
"""
from __future__ import annotations

import csv
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

WANT = {"neutrophil": 10, "eosinophil": 7, "lymphocyte": 3, "monocyte": 3, "basophil": 1}


def main(src: str) -> None:
    root = Path(src)
    out = Path(__file__).resolve().parents[1] / "wbc_deploy" / "demo" / "bccd"
    out.mkdir(parents=True, exist_ok=True)
    labels = {r["image"]: [c for c in r["categories"].split(";") if c] for r in csv.DictReader(open(root / "labels.csv"))}
    taken = {c: 0 for c in WANT}
    rows = []
    for image in sorted(labels):
        cats = labels[image]
        if not cats or len(set(cats)) != 1 or taken[cats[0]] >= WANT[cats[0]]:
            continue
        boxes = []
        for o in ET.parse(root / "annotations" / f"{image}.xml").getroot().iter("object"):
            if o.findtext("name") == "WBC":
                b = o.find("bndbox")
                boxes.append([float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        if len(boxes) != len(cats):
            continue
        taken[cats[0]] += 1
        shutil.copyfile(root / "images" / f"{image}.jpg", out / f"{image}.jpg")
        for b in boxes:
            rows.append((f"{image}.jpg", (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, cats[0]))
    shutil.copyfile(root / "LICENSE", out / "LICENSE")
    with open(out / "wbcs.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "x", "y", "label"])
        for r in rows:
            w.writerow([r[0], f"{r[1]:.1f}", f"{r[2]:.1f}", r[3]])
    print(taken, len(rows), "WBCs")


if __name__ == "__main__":
    main(sys.argv[1])
