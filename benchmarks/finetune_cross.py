"""A lab's own scanner with a little labelled data: fine-tune the bundled model on half of a cross-scanner set,
score the other half, and swap (2-fold), next to the same halves scored with no retraining.

Usage:
    .venv/bin/python benchmarks/finetune_cross.py [--data ../shared/data] [--model default] [--work ft-work]

For each set (BCCD crops around the labelled boxes at 0.074 um/px, segwbc-dev d1 Tecom at 0.15, d2 CellaVision at
0.086), the images are split in two stratified halves (seed 0). Fold k: ``train --init MODEL --mpp X`` on half k
(its own 3:1 train/val split for the best epoch and the temperature), evaluated on the other half with
``evaluate --mpp X``. Reported: OA of the bundled model on each held-out half without retraining, and after
fine-tuning, averaged over the two folds; results in ``benchmarks/results/finetune_cross.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_pbc import BCCD_MPP, D1_MPP, D2_MPP, ROOT, bccd_folder, machine, segwbc_folder  # noqa: E402
from wbc_deploy.files import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def halves(folder: Path, work: Path, seed: int = 0) -> list[Path]:
    """Two stratified halves of a class-per-folder set, each as DIR/train/<class> (fine-tune) + DIR/test/<class>."""
    rng = np.random.default_rng(seed)
    folds = [work / f"{folder.name}-fold{k}" for k in (0, 1)]
    for f in folds:
        shutil.rmtree(f, ignore_errors=True)
    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(cls_dir.iterdir())
        order = rng.permutation(len(files))
        half = {int(i): (k % 2) for k, i in enumerate(order)}
        for i, f in enumerate(files):
            a = half[i]
            for k, fold in enumerate(folds):
                role = "train" if k == a else "test"
                dst = fold / role / cls_dir.name / f.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f.resolve(), dst)
    return folds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--model", default="default")
    ap.add_argument("--work", type=Path, default=ROOT / "ft-work")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from wbc_deploy.trainer.evaluate import evaluate_model
    from wbc_deploy.trainer.fit import train

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sets = {
        "BCCD crops (0.074 um/px)": (bccd_folder(args.data / "bccd-dev", work), BCCD_MPP),
        "segwbc d1 Tecom (0.15 um/px)": (segwbc_folder(args.data / "segwbc-dev", "d1", work), D1_MPP),
        "segwbc d2 CellaVision (0.086 um/px)": (segwbc_folder(args.data / "segwbc-dev", "d2", work), D2_MPP),
    }
    res: dict = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "epochs": args.epochs,
                 "lr": args.lr, "sets": {}}
    for name, (folder, mpp) in sets.items():
        rows = []
        for k, fold in enumerate(halves(folder, work)):
            base = evaluate_model(args.model, fold / "test", work / f"{fold.name}-base.json", quiet=True, mpp=mpp)
            run = work / f"{fold.name}-run"
            shutil.rmtree(run, ignore_errors=True)
            t0 = time.perf_counter()
            train(fold, run, preset="pbc", init=args.model, mpp=mpp, epochs=args.epochs, lr=args.lr, batch_size=16, quiet=True)
            minutes = (time.perf_counter() - t0) / 60
            tuned = evaluate_model(run, fold / "test", work / f"{fold.name}-tuned.json", quiet=True, mpp=mpp)
            n_train = sum(1 for _ in (fold / "train").rglob("*") if _.is_file() or _.is_symlink())
            rows.append({"fold": k, "n_finetune": n_train, "n_test": base["n"], "OA_bundled": base["OA"], "OA_finetuned": tuned["OA"],
                         "AF1_bundled": base["AF1"], "AF1_finetuned": tuned["AF1"], "minutes": round(minutes, 1)})
            print(name, rows[-1], flush=True)
        res["sets"][name] = {"folds": rows, "OA_bundled": float(np.mean([r["OA_bundled"] for r in rows])),
                             "OA_finetuned": float(np.mean([r["OA_finetuned"] for r in rows]))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "finetune_cross.json", json.dumps(res, indent=2) + "\n")
    lines = [f"# Fine-tuning `{args.model}` on half of each cross-scanner set (2-fold), {res['date']}", "",
             f"{res['machine']['cpu']} ({res['machine']['cores']} cores). `train --init {args.model} --mpp X --epochs {args.epochs} "
             f"--lr {args.lr} --batch-size 16` on one stratified half, `evaluate --mpp X` on the other; mean of both folds.", "",
             "| set | cells fine-tuned on (per fold) | OA bundled model | OA fine-tuned | minutes per fold |", "|---|---:|---:|---:|---:|"]
    for name, s in res["sets"].items():
        f = s["folds"]
        lines.append(f"| {name} | {f[0]['n_finetune']} / {f[1]['n_finetune']} | {s['OA_bundled']:.4f} | {s['OA_finetuned']:.4f} | "
                     f"{np.mean([r['minutes'] for r in f]):.1f} |")
    atomic_write_text(RESULTS / "finetune_cross.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
