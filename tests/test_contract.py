"""The input contract of every exported model, computed by hand and independently of the project's code.

The contract (README, ModelCard): an RGB uint8 crop, resized to the card's input size with Pillow's
bilinear filter, channel 0 = red (or blue for a ``BGR`` card), scaled by 1/255, minus the card's mean,
divided by its std, laid out N x C x H x W float32. The tests write the expected numbers out by hand
(uniform colours need no resize at all) and check the project's preprocessing and a deployed ONNX model
against them; an exported model fed by a plain ``onnxruntime.InferenceSession`` (what a Triton or any
other client does with the card) must give the project's own runtime's probabilities.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from wbc_deploy.card import ModelCard
from wbc_deploy.classes import CLASSES
from wbc_deploy.converters.export import ExportOptions, export_model
from wbc_deploy.converters.onnx_meta import read_onnx_card
from wbc_deploy.model import card_for, create_model
from wbc_deploy.preprocess import prepare_batch
from wbc_deploy.runtime import open_backend
from wbc_deploy.trainer.checkpoint import load_checkpoint, save_checkpoint

#: Deliberately not ImageNet's, and different per channel, so a swapped mean/std or channel shows.
MEAN = (0.30, 0.55, 0.70)
STD = (0.10, 0.25, 0.40)
#: A colour whose three channels are far apart, so any channel swap changes every number.
R, G, B = 200, 90, 20


def _card(color_order: str = "RGB", size: int = 8) -> ModelCard:
    return ModelCard(arch="hand", classes=list(CLASSES), input_size=size, mean=MEAN, std=STD, color_order=color_order)


def _by_hand(crop: np.ndarray, size: int, color_order: str) -> np.ndarray:
    """The contract written out with Pillow and plain arithmetic (one image -> 1 x 3 x S x S)."""
    pil = Image.fromarray(crop, "RGB").resize((size, size), Image.BILINEAR)
    rgb = np.asarray(pil, dtype=np.float64)
    planes = [rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]]  # R, G, B as Pillow stores them
    if color_order == "BGR":
        planes = planes[::-1]
    out = np.stack([(planes[c] / 255.0 - MEAN[c]) / STD[c] for c in range(3)])
    return out[None].astype(np.float32)


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_a_uniform_colour_gives_the_hand_computed_numbers(color_order):
    crop = np.empty((13, 21, 3), np.uint8)
    crop[:] = (R, G, B)  # already uniform: the resize cannot change it
    x = prepare_batch([crop], _card(color_order))
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    first = (R, G, B) if color_order == "RGB" else (B, G, R)
    expected = [(first[c] / 255 - MEAN[c]) / STD[c] for c in range(3)]
    # e.g. RGB channel 0: (200/255 - 0.30) / 0.10 = 4.843...; BGR channel 0: (20/255 - 0.30) / 0.10 = -2.216...
    for c in range(3):
        np.testing.assert_allclose(x[0, c], expected[c], rtol=0, atol=1e-5)


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_a_textured_crop_matches_pillow_bilinear_and_the_card_by_hand(color_order):
    rng = np.random.default_rng(7)
    crops = [rng.integers(0, 256, (37, 29, 3), dtype=np.uint8) for _ in range(3)]  # resized down and non-square
    crops.append(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))  # resized up
    x = prepare_batch(crops, _card(color_order, size=16))
    expected = np.concatenate([_by_hand(c, 16, color_order) for c in crops])
    np.testing.assert_allclose(x, expected, rtol=0, atol=2e-5)
    assert x.shape == (4, 3, 16, 16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random wbcnet-tiny with a BGR card and non-ImageNet mean/std, exported to ONNX (no verification)."""
    root = tmp_path_factory.mktemp("contract")
    torch.manual_seed(3)
    model = create_model("wbcnet-tiny", len(CLASSES)).eval()
    card = card_for("wbcnet-tiny", list(CLASSES))
    card.mean, card.std, card.color_order = MEAN, STD, "BGR"
    save_checkpoint(root / "run", model, card)
    export_model(root / "run", root / "onnx", ExportOptions(verify=False))
    return root / "run", root / "onnx" / "model.onnx"


def _crops(size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    crops = []
    for i in range(6):  # cells of different colours on a textured background, larger than the input
        crop = rng.integers(0, 256, (size + 17, size + 17, 3), dtype=np.uint8)
        crop[10:-10, 10:-10] = ((40 * i) % 256, 255 - 30 * i, (90 + 50 * i) % 256)
        crops.append(crop)
    return crops


def test_an_exported_model_fed_by_a_plain_onnxruntime_session_follows_the_card(exported):
    """A client that knows only the card (no wbc-deploy code) feeds the ONNX file the hand-made tensor and
    gets wbc-deploy's own probabilities; the PyTorch model agrees on the same tensor."""
    run, onnx_path = exported
    card = read_onnx_card(onnx_path)
    assert (tuple(card.mean), tuple(card.std), card.color_order) == (MEAN, STD, "BGR")
    size = int(card.input_size)
    crops = _crops(size)
    x_hand = np.concatenate([_by_hand(c, size, "BGR") for c in crops])

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (plain,) = session.run(["probabilities"], {session.get_inputs()[0].name: x_hand})
    np.testing.assert_allclose(plain.sum(axis=1), 1.0, atol=1e-5)

    with open_backend(onnx_path) as backend:
        ours = backend.predict_images(crops)
    np.testing.assert_allclose(ours, plain, rtol=0, atol=1e-5)

    model, _ = load_checkpoint(run)
    with torch.no_grad():
        ref = torch.softmax(model.eval()(torch.from_numpy(x_hand)), dim=1).numpy()
    np.testing.assert_allclose(plain, ref, rtol=0, atol=1e-4)

    # The model really depends on the channel order and the normalisation here (else the checks above prove nothing).
    (rgb,) = session.run(["probabilities"], {session.get_inputs()[0].name: np.concatenate([_by_hand(c, size, "RGB") for c in crops])})
    assert np.abs(rgb - plain).max() > 1e-3
