"""Retrain the shipped default model from the PBC images and measure it on PBC and on other scanners.

Usage (one documented command; ``make pbc-model`` runs it with the defaults):
    .venv/bin/python benchmarks/train_pbc.py [--data ../shared/data] [--work pbc-work] [--install]

Steps, all through the project's own library functions (the ones the CLI calls):
1. ``train DATA/pbc --preset pbc`` (fixed seed 0, ``--mpp 0.1``): stratified 3:1:1 split with byte-identical
   images kept together, the shipped architecture and augmentation, temperature calibrated on val.
2. ``export`` to ONNX (FP32, verified against PyTorch) and INT8 (the CPU recipe), calibrated on train images.
3. ``evaluate`` the shipped ONNX model on the PBC test split (``--mpp 0.1``) and, with no retraining, on the
   cross-scanner sets: crops around every labelled WBC box of DATA/bccd-dev (``--mpp 0.074``; images with one
   WBC class only, as many boxes as labels) and the labelled crops of DATA/segwbc-dev d1 (Tecom, ``--mpp 0.15``)
   and d2 (CellaVision, ``--mpp 0.086``).
4. Throughput of the shipped model on ONNX Runtime at batch 64 on this machine's cores.
5. ``benchmarks/results/pbc.json`` and ``pbc.md``; with ``--install`` the model goes to ``wbc_deploy/zoo/``.

The real data is not part of the project: nothing from DATA is committed except the trained weights
(PBC is CC BY 4.0: the card and the zoo README credit its authors).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from wbc_deploy.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED_NAME = "wbcnet-s-pbc"
PBC_MPP, BCCD_MPP, D1_MPP, D2_MPP = 0.1, 0.074, 0.15, 0.086
PBC_CREDIT = ("PBC data set: A. Acevedo, A. Merino, S. Alferez, A. Molina, L. Boldu, J. Rodellar, 'A dataset of microscopic "
              "peripheral blood cell images for development of automatic recognition systems', Data in Brief 30 (2020) "
              "105474, doi:10.1016/j.dib.2020.105474, CC BY 4.0")


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def pbc_test_folder(run: Path, data: Path, work: Path) -> Path:
    """The run's PBC test split as a class-per-folder directory of links."""
    out = work / "pbc-test"
    with open(run / "split.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test":
                src = Path(row["path"]) if Path(row["path"]).is_absolute() else data / "pbc" / row["path"]
                link(src, out / row["label"] / src.name)
    return out


def bccd_folder(bccd: Path, work: Path) -> Path:
    """Crops (two fields wide, mirrored at the photograph's borders) centred on each labelled WBC box."""
    from wbc_deploy.slide.crop import image_field

    out = work / "cross-bccd"
    labels = {r["image"]: [c for c in r["categories"].split(";") if c] for r in csv.DictReader(open(bccd / "labels.csv"))}
    side_um = 48.0
    for image, cats in sorted(labels.items()):
        if not cats or len(set(cats)) != 1:
            continue
        boxes = []
        for o in ET.parse(bccd / "annotations" / f"{image}.xml").getroot().iter("object"):
            if o.findtext("name") == "WBC":
                b = o.find("bndbox")
                boxes.append([float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        if len(boxes) != len(cats):
            continue
        with Image.open(bccd / "images" / f"{image}.jpg") as im:
            rgb = np.asarray(im.convert("RGB"))
        for k, b in enumerate(boxes):
            side_px = int(round(side_um / BCCD_MPP))
            crop = image_field(rgb, BCCD_MPP, side_um, side_px, x=(b[0] + b[2]) / 2, y=(b[1] + b[3]) / 2)
            dst = out / cats[0] / f"{image}_{k}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(dst)
    return out


def segwbc_folder(segwbc: Path, name: str, work: Path) -> Path:
    out = work / f"cross-segwbc-{name}"
    for r in csv.DictReader(open(segwbc / name / "labels.csv")):
        link(segwbc / name / "images" / f"{r['image']}.bmp", out / r["label"] / f"{r['image']}.bmp")
    return out


def throughput(model: Path, batch: int = 64, seconds: float = 20.0) -> dict:
    """Cells per second of OrtBackend (what count uses) on random inputs at ``batch``."""
    from wbc_deploy.runtime import open_backend

    with open_backend(model) as be:
        x = np.random.default_rng(0).normal(0, 1, (batch, 3, be.input_size, be.input_size)).astype(np.float32)
        be.predict(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            be.predict(x)
            n += batch
        return {"batch": batch, "cells_per_s": round(n / (time.perf_counter() - t0), 1), "threads": os.cpu_count()}


def summary(m: dict) -> dict:
    keep = ("OA", "AP", "AR", "AF1", "n", "per_class", "classes", "confusion", "absent_classes", "calibration", "mpp")
    return {k: m[k] for k in keep if k in m}


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_markdown(res: dict, path: Path) -> None:
    t = res["pbc_test"]
    lines = [f"# Shipped model `{res['name']}` (PBC, {res['card']['arch']} at {res['card']['input_size']} px)", "",
             f"Measured {res['date']} on {res['machine']['cpu']} ({res['machine']['cores']} cores), no GPU.", "",
             f"Training: {res['train_minutes']:.0f} min, {res['epochs']} epochs, seed 0, PBC split 3:1:1 "
             f"({res['split_counts']}).", "",
             "| set | images | OA | AP | AR | AF1 | ECE | ECE uncal. | unidentified | OA identified |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in [("PBC test (CellaVision DM96, 0.1 um/px)", t), *[(k, v) for k, v in res["cross_scanner"].items()]]:
        c = m["calibration"]
        oa_id = "-" if c["oa_identified"] is None else f"{c['oa_identified']:.4f}"
        lines.append(f"| {name} | {m['n']} | {m['OA']:.4f} | {m['AP']:.4f} | {m['AR']:.4f} | {m['AF1']:.4f} | "
                     f"{c['ece']:.4f} | {c['ece_uncalibrated']:.4f} | {100 * c['unidentified_rate']:.1f}% | {oa_id} |")
    lines += ["", "Per class on the PBC test split (precision / recall):", ""]
    for cls, pc in t["per_class"].items():
        if pc.get("precision") is not None:
            lines.append(f"- {cls}: {pc['precision']:.4f} / {pc['recall']:.4f} (n={pc['support']})")
    lines += ["", "Confusion on the PBC test split (rows true, columns predicted, " + ", ".join(t["classes"]) + "):", ""]
    lines += ["    " + " ".join(f"{v:5d}" for v in row) for row in t["confusion"]]
    s = res["throughput"]
    lines += ["", f"ONNX Runtime ({res['shipped_format']}), batch {s['batch']}: {s['cells_per_s']} cells/s on {s['threads']} cores.",
              "", res["credit"], ""]
    atomic_write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=ROOT / "pbc-work")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (for quick checks)")
    ap.add_argument("--run", type=Path, default=None, help="use this finished run instead of training")
    ap.add_argument("--format", choices=("fp32", "int8"), default="int8", help="what ships")
    ap.add_argument("--install", action="store_true", help=f"copy the model into wbc_deploy/zoo/{SHIPPED_NAME}")
    ap.add_argument("--stain", default=None, help="override the preset's stain normalisation (ablation)")
    ap.add_argument("--arch", default=None, help="override the preset's architecture (ablation)")
    ap.add_argument("--img-size", type=int, default=None, help="override the preset's input size (ablation)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--tag", default="pbc", help="results file name: benchmarks/results/TAG.json and .md")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from wbc_deploy.converters.export import ExportOptions, export_model
    from wbc_deploy.trainer.evaluate import evaluate_model
    from wbc_deploy.trainer.fit import train

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    run = args.run or work / "run"
    t0 = time.perf_counter()
    if args.run is None:
        train(args.data / "pbc", run, preset="pbc", resume=(run / "last.pt").exists(), seed=0, epochs=args.epochs,
              stain=args.stain, arch=args.arch, img_size=args.img_size)
    train_minutes = (time.perf_counter() - t0) / 60
    card = json.loads((run / "card.json").read_text())
    export_dir = work / "export"
    export_model(run, export_dir, ExportOptions(verify=True, int8=args.format == "int8", calib=pbc_calibration(run, args.data, work)))
    shipped = export_dir / ("model.int8.onnx" if args.format == "int8" else "model.onnx")

    res: dict = {"name": SHIPPED_NAME, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "card": card,
                 "train_minutes": card.get("training", {}).get("train_seconds", train_minutes * 60) / 60,
                 "epochs": card.get("training", {}).get("epochs_completed"), "shipped_format": args.format,
                 "split_counts": card.get("training", {}).get("counts"), "credit": PBC_CREDIT}
    res["pbc_test"] = summary(evaluate_model(shipped, pbc_test_folder(run, args.data, work), work / "pbc-test.json", quiet=True, mpp=PBC_MPP))
    cross = {
        "BCCD crops (0.074 um/px)": (bccd_folder(args.data / "bccd-dev", work), BCCD_MPP),
        "segwbc d1 Tecom (0.15 um/px)": (segwbc_folder(args.data / "segwbc-dev", "d1", work), D1_MPP),
        "segwbc d2 CellaVision (0.086 um/px)": (segwbc_folder(args.data / "segwbc-dev", "d2", work), D2_MPP),
    }
    res["cross_scanner"] = {name: summary(evaluate_model(shipped, folder, work / f"{folder.name}.json", quiet=True, mpp=mpp))
                            for name, (folder, mpp) in cross.items()}
    res["throughput"] = throughput(shipped)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{args.tag}.json", json.dumps(res, indent=2) + "\n")
    write_markdown(res, RESULTS / f"{args.tag}.md")
    print((RESULTS / f"{args.tag}.md").read_text())
    if args.install:
        install(run, shipped, res)


def pbc_calibration(run: Path, data: Path, work: Path) -> Path:
    """A class-per-folder sample of the run's training images, cut at the card's field (INT8 calibration)."""
    from wbc_deploy.card import ModelCard
    from wbc_deploy.slide.crop import image_field

    card = ModelCard.from_json(run / "card.json")
    out = work / "calib"
    if out.is_dir():
        return out
    rows = [r for r in csv.DictReader(open(run / "split.csv", newline="")) if r["split"] == "train"]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(rows), size=min(256, len(rows)), replace=False):
        r = rows[int(i)]
        src = Path(r["path"]) if Path(r["path"]).is_absolute() else data / "pbc" / r["path"]
        with Image.open(src) as im:
            rgb = np.asarray(im.convert("RGB"))
        dst = out / r["label"] / f"{src.stem}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_field(rgb, PBC_MPP, float(card.fov_um), int(card.input_size))).save(dst)
    return out


def install(run: Path, shipped: Path, res: dict) -> None:
    """Copy the shipped ONNX, its card and float16 weights into wbc_deploy/zoo/<name>/ and make it the default."""
    import torch
    from safetensors.torch import save_file

    from wbc_deploy.trainer.checkpoint import load_state

    dst = ROOT / "wbc_deploy" / "zoo" / SHIPPED_NAME
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped, dst / "model.onnx")
    state, card = load_state(run)
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}, str(dst / "model.safetensors"),
              metadata={"wbc_deploy.card": json.dumps(card.to_dict())})
    from wbc_deploy.runtime import open_backend

    with open_backend(dst / "model.onnx") as be:  # the card as the ONNX file carries it
        onnx_card = be.card
    onnx_card.training = {**onnx_card.training, "data_name": "PBC (CellaVision DM96)", "licence": "CC BY 4.0", "credit": PBC_CREDIT}
    onnx_card.metrics = {"test": res["pbc_test"], "cross_scanner": res["cross_scanner"], "throughput": res["throughput"]}
    onnx_card.to_json(dst / "card.json")
    write_zoo_readme(dst, onnx_card, res)
    atomic_write_text(ROOT / "wbc_deploy" / "zoo" / "index.json", json.dumps({"default": SHIPPED_NAME}, indent=2) + "\n")
    print(f"installed {dst} ({sum(p.stat().st_size for p in dst.iterdir()) / 1e6:.1f} MB)")


def write_zoo_readme(dst: Path, card, res: dict) -> None:
    """The bundled model's README: what it is, its PBC test figures and the CC BY 4.0 attribution."""
    t = res["pbc_test"]
    atomic_write_text(
        dst / "README.md",
        f"# {SHIPPED_NAME}\n\nThe bundled default model of wbc-deploy: `{card.arch}` at {card.input_size} px over a "
        f"{card.fov_um:g} um field, trained from scratch by `benchmarks/train_pbc.py` (seed 0) on the PBC images at 0.1 um/px.\n"
        f"PBC test split: OA {t['OA']:.4f}, AF1 {t['AF1']:.4f} ({t['n']} cells); other scanners: see card.json `metrics` and "
        "benchmarks/results/pbc.md.\n\n"
        f"Files: `model.onnx` (INT8, model card in its metadata), `card.json`, `model.safetensors` (float16 weights for "
        "`train --init`).\n\nTrained on data licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/):\n"
        f"{PBC_CREDIT}.\n")


if __name__ == "__main__":
    sys.exit(main())
