"""Data sets: folder layouts, class-name normalisation, skipped files, splits, manifest, sampler, mixup, transforms."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from wbc_deploy.card import ModelCard
from wbc_deploy.data.dataset import BalancedSampler, CellDataset
from wbc_deploy.data.folders import Sample, class_of_folder, index_dataset, split_of_folder
from wbc_deploy.data.mixup import mixup_batch, sample_lambda, soft_cross_entropy
from wbc_deploy.data.splits import make_split, read_manifest, stratified_split, write_manifest
from wbc_deploy.data.augment import BatchAugment
from wbc_deploy.data.transforms import eval_transform, finish_batch, train_transform
from wbc_deploy.errors import WbcError
from wbc_deploy.preprocess import prepare_batch


def _images(folder: Path, n: int, seed: int = 0, size: int = 12, ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}{ext}"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


# -- names and layouts -------------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [
    ("NEUTROPHIL", "neutrophil"), ("Neutrophils", "neutrophil"), ("neutrophil", "neutrophil"),
    ("2_Lymphocyte", "lymphocyte"), ("Baso", "basophil"), ("eosi", "eosinophil"), ("lymp", "lymphocyte"),
    ("mono", "monocyte"), ("neut", "neutrophil"), ("mixt", None), ("platelets", None), ("Ground Truth", None),
])
def test_class_folder_names(name, expected):
    assert class_of_folder(name) == expected


@pytest.mark.parametrize("name,expected", [
    ("train", "train"), ("TRAIN", "train"), ("Training", "train"), ("val", "val"), ("Validation", "val"),
    ("TEST", "test"), ("test", "test"), ("TestA", "test"), ("TEST_SIMPLE", None), ("TestB", None),
])
def test_split_folder_names(name, expected):
    assert split_of_folder(name) == expected


def test_class_folders_with_skipped_files(tmp_path, capsys):
    _images(tmp_path / "NEUTROPHIL", 4)
    _images(tmp_path / "Lymphocytes", 3)
    _images(tmp_path / "platelets", 2)  # not a WBC class: ignored
    (tmp_path / "NEUTROPHIL" / "notes.txt").write_text("not an image")
    (tmp_path / "Lymphocytes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    index = index_dataset(tmp_path)
    assert index.layout == "class-folders"
    assert index.counts() == {"lymphocyte": 3, "neutrophil": 4}
    assert [p.name for p in index.non_image] == ["notes.txt"]
    assert [p.name for p in index.unreadable] == ["broken.png"]
    assert index.skipped == 2
    err = capsys.readouterr().err
    assert "platelets" in err and "non-image" in err and "unreadable" in err


def test_pbc_layout_wrapper_folder_and_its_other_classes_in_one_warning(tmp_path, capsys):
    """PBC_dataset_normal_DIB/<class>/: the wrapper is descended into; ig, erythroblast and platelet are
    skipped with one warning; SNE_/BNE_ (segmented and band) neutrophils are both neutrophils."""
    root = tmp_path / "PBC_dataset_normal_DIB"
    for cls in ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"):
        _images(root / cls, 2)
    for prefix in ("SNE", "BNE"):
        Image.new("RGB", (8, 8), (200, 100, 150)).save(root / "neutrophil" / f"{prefix}_1234.jpg")
    index = index_dataset(tmp_path)
    assert index.counts() == {"basophil": 2, "eosinophil": 2, "lymphocyte": 2, "monocyte": 2, "neutrophil": 4}
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "ignoring" in ln]
    assert len(lines) == 1 and all(n in lines[0] for n in ("'erythroblast'", "'ig'", "'platelet'"))


def test_bccd_layout_train_test(tmp_path):
    root = tmp_path / "dataset2-master" / "images"  # the wrapper folder is descended into
    for split, n in (("TRAIN", 8), ("TEST", 3), ("TEST_SIMPLE", 1)):
        for cls in ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"):
            _images(root / split / cls, n, ext=".jpeg")
    index = index_dataset(tmp_path / "dataset2-master")
    assert index.layout == "split-folders"
    assert index.splits_present == {"train", "test"}
    assert Counter(s.split for s in index.samples) == {"train": 32, "test": 12}
    split = make_split(index, seed=0)
    counts = Counter((s.label, s.split) for s in split)
    for cls in ("eosinophil", "lymphocyte", "monocyte", "neutrophil"):
        assert (counts[(cls, "train")], counts[(cls, "val")], counts[(cls, "test")]) == (6, 2, 3)  # 3:1 of train


def test_raabin_layout_keeps_testa_ignores_testb(tmp_path, capsys):
    for split in ("Train", "TestA", "TestB"):
        for cls in ("Basophil", "Neutrophil"):
            _images(tmp_path / split / cls, 4)
    index = index_dataset(tmp_path)
    assert Counter(s.split for s in index.samples) == {"train": 8, "test": 8}
    assert "TestB" in capsys.readouterr().err


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(WbcError, match="no WBC images"):
        index_dataset(tmp_path)
    with pytest.raises(WbcError, match="not found"):
        index_dataset(tmp_path / "nope")
    for split in ("train", "test"):
        _images(tmp_path / split / "neutrophil", 2)
    with pytest.raises(WbcError, match="split folders"):
        index_dataset(tmp_path, allow_splits=False)


# -- splits -----------------------------------------------------------------------------------


def _fake_samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(Path(f"/d/{c}/{i:04d}.png"), c) for c, n in counts.items() for i in range(n)]


def test_stratified_split_is_3_1_1_deterministic_and_order_free():
    counts = {"basophil": 10, "eosinophil": 25, "neutrophil": 100}
    samples = _fake_samples(counts)
    a = make_split_from(samples, seed=3)
    b = make_split_from(list(reversed(samples)), seed=3)
    assert sorted(map(_key, a)) == sorted(map(_key, b))
    got = Counter((s.label, s.split) for s in a)
    for cls, n in counts.items():
        assert (got[(cls, "train")], got[(cls, "val")], got[(cls, "test")]) == (3 * n // 5, n // 5, n // 5)
    c = make_split_from(samples, seed=4)
    assert sorted(map(_key, a)) != sorted(map(_key, c))


def make_split_from(samples, seed):
    return stratified_split(samples, ("train", "val", "test"), (0.6, 0.2, 0.2), seed)


def _key(s: Sample):
    return (str(s.path), s.split)


def test_byte_identical_images_never_straddle_splits(tmp_path):
    """Copies of one image (also under another class) land in one split; distinct images are still split 3:1:1."""
    rng = np.random.default_rng(0)
    samples = []
    for c in ("eosinophil", "neutrophil"):
        (tmp_path / c).mkdir()
        for i in range(40):
            p = tmp_path / c / f"{i:03d}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
            samples.append(Sample(p, c))
    twins = []
    for k in range(6):  # 6 images, each with 3 byte-identical copies: 2 more in its class, 1 in the other class
        src = tmp_path / "eosinophil" / f"{k:03d}.png"
        for j, c in enumerate(("eosinophil", "eosinophil", "neutrophil")):
            dst = tmp_path / c / f"copy{k}_{j}.png"
            dst.write_bytes(src.read_bytes())
            samples.append(Sample(dst, c))
        twins.append([src] + [tmp_path / c / f"copy{k}_{j}.png" for j, c in enumerate(("eosinophil", "eosinophil", "neutrophil"))])
    split = {s.path: s.split for s in make_split_from(samples, seed=1)}
    assert len(split) == len(samples)
    for group in twins:
        assert len({split[p] for p in group}) == 1, [split[p] for p in group]
    assert Counter(split.values())["test"] >= 12


def test_tiny_classes_still_reach_val_and_test():
    got = Counter((s.label, s.split) for s in make_split_from(_fake_samples({"monocyte": 3, "neutrophil": 4}), 0))
    assert got[("monocyte", "train")] == 1 and got[("monocyte", "val")] == 1 and got[("monocyte", "test")] == 1
    assert got[("neutrophil", "train")] == 2


def test_one_class_only_is_refused(tmp_path):
    _images(tmp_path / "neutrophil", 6)
    with pytest.raises(WbcError, match="only one WBC class"):
        make_split(index_dataset(tmp_path), seed=0)


def test_manifest_round_trip_and_missing_file(tmp_path):
    data = tmp_path / "data"
    for cls in ("lymphocyte", "monocyte"):
        _images(data / cls, 5)
    split = make_split(index_dataset(data), seed=0)
    write_manifest(tmp_path / "split.csv", split, data)
    assert (tmp_path / "split.csv").read_text().splitlines()[0] == "path,label,split"
    assert "lymphocyte/img_000.png" in (tmp_path / "split.csv").read_text()  # relative paths
    back = read_manifest(tmp_path / "split.csv", data)
    assert [(str(s.path.resolve()), s.label, s.split) for s in back] == [(str(s.path.resolve()), s.label, s.split) for s in split]
    (data / "monocyte" / "img_000.png").unlink()
    with pytest.raises(WbcError, match="missing"):
        read_manifest(tmp_path / "split.csv", data)


# -- sampler, dataset, mixup, transforms -------------------------------------------------------------


def test_balanced_sampler_oversamples_to_largest_class_deterministically():
    targets = [0] * 3 + [1] * 10 + [2] * 7
    s = BalancedSampler(targets, seed=1)
    s.set_epoch(1)
    idx = s.indices()
    assert len(idx) == len(s) == 30
    got = Counter(targets[i] for i in idx)
    assert got == {0: 10, 1: 10, 2: 10}
    assert set(idx[np.isin(idx, [0, 1, 2])]) == {0, 1, 2}  # every minority image is used
    again = BalancedSampler(targets, seed=1)
    again.set_epoch(1)
    assert (again.indices() == idx).all()
    again.set_epoch(2)
    assert not (again.indices() == idx).all()
    plain = BalancedSampler(targets, seed=1, balance=False)
    assert sorted(plain.indices().tolist()) == list(range(20))


def test_mixup_targets_sum_to_one_and_mix_inputs():
    rng = np.random.default_rng(0)
    x = torch.randn(8, 3, 4, 4)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixed, soft, lam, perm = mixup_batch(x, y, 5, 0.2, rng)
    assert soft.shape == (8, 5)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    assert 0.0 <= lam <= 1.0
    # alpha 0 disables mixup: inputs unchanged, targets one-hot.
    same, hard, lam0, _ = mixup_batch(x, y, 5, 0.0, rng)
    assert lam0 == 1.0 and torch.equal(same, x) and torch.equal(hard.argmax(1), y)
    # Soft cross-entropy equals PyTorch's cross-entropy with probability targets.
    logits = torch.randn(8, 5)
    torch.testing.assert_close(soft_cross_entropy(logits, soft), torch.nn.functional.cross_entropy(logits, soft))


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_follows_beta(alpha):
    rng = np.random.default_rng(1234)
    lams = np.array([sample_lambda(alpha, rng) for _ in range(4000)])
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    # ... and not a different Beta: the test has power.
    assert stats.kstest(lams, stats.beta(2 * alpha + 0.5, 2 * alpha + 0.5).cdf).pvalue < 1e-6


def test_eval_transform_is_the_deployment_preprocessing(tmp_path):
    card = ModelCard(arch="wbcnet-tiny", classes=["lymphocyte", "monocyte"], input_size=32)
    rgb = np.random.default_rng(0).integers(0, 255, (50, 41, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    out = eval_transform(card)(image)
    assert torch.equal(out, torch.from_numpy(prepare_batch([rgb], card)[0]))
    ctx = train_transform(card)(image)  # without --mpp: the whole image at the input size, 0..1
    assert ctx.shape == (3, 32, 32) and ctx.dtype == torch.float32 and 0.0 <= float(ctx.min()) and float(ctx.max()) <= 1.0
    assert torch.equal(finish_batch(ctx[None], card)[0], out)  # an unaugmented batch is the deployment input
    for colour in ("none", "light", "stain"):
        aug = BatchAugment(size=32, colour=colour, scale_jitter=0.15)
        torch.manual_seed(0)
        a = aug(ctx[None].repeat(4, 1, 1, 1))
        torch.manual_seed(0)
        assert a.shape == (4, 3, 32, 32) and torch.equal(a, aug(ctx[None].repeat(4, 1, 1, 1)))  # seeded: reproducible
        assert not torch.equal(a[0], a[1])  # each image draws its own augmentation


def test_dataset_replaces_a_file_that_became_unreadable(tmp_path, capsys):
    paths = _images(tmp_path / "monocyte", 3)
    card = ModelCard(arch="x", classes=["monocyte", "neutrophil"], input_size=16)
    ds = CellDataset([Sample(p, "monocyte") for p in paths], card.classes, eval_transform(card))
    paths[0].write_bytes(b"gone bad")
    x, y = ds[0]
    assert y == 0 and x.shape == (3, 16, 16)
    assert ds.failures == 1 and "could not read" in capsys.readouterr().err
    for p in paths:
        p.write_bytes(b"")
    with pytest.raises(WbcError, match="unreadable"):
        ds[1]
