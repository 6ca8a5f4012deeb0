"""Model registry, attention variants, WBCNet structure, backbone weights and `wbc-deploy models`."""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from wbc_deploy.errors import WbcError
from wbc_deploy.model import (
    ATTENTIONS,
    build_from_card,
    card_for,
    count_parameters,
    create_attention,
    create_model,
    list_models,
    parse_pretrained,
    summarise,
)
from wbc_deploy.model.attention import ChannelAttention, SpatialAttention

SMALL = dict(resnet="resnet18", densenet="densenet121", stage=2, fuse_channels=16, hidden=16)


@pytest.mark.parametrize("attention", list(ATTENTIONS))
def test_every_attention_variant_builds_and_runs(attention):
    torch.manual_seed(0)
    block = create_attention(attention, 32).eval()
    x = torch.randn(2, 32, 5, 6)
    assert block(x).shape == x.shape
    model = create_model("wbcnet", 5, attention=attention, **SMALL).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("info", list_models(), ids=lambda i: i.name)
def test_every_architecture_runs_forward(info):
    size = 80 if info.name == "inception_v3" else 48  # Inception v3 needs >= 75 px
    model = create_model(info.name, 4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 4)


def test_scam_applies_sam_then_cam():
    block = create_attention("scam", 16).eval()
    calls = []
    for name, module in block.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    x = torch.randn(2, 16, 4, 4)
    out = block(x)
    assert calls == ["sam", "cam"]
    assert isinstance(block.sam, SpatialAttention) and isinstance(block.cam, ChannelAttention)
    torch.testing.assert_close(out, block.cam(block.sam(x)))
    csam = create_attention("csam", 16)
    assert [n for n, _ in csam.named_children()] == ["cam", "sam"]


def test_cam_and_sam_follow_cbam_definitions():
    torch.manual_seed(1)
    x = torch.randn(2, 16, 5, 5)
    cam = ChannelAttention(16).eval()
    mlp = cam.mlp
    expected = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    torch.testing.assert_close(cam(x), expected)
    sam = SpatialAttention(16).eval()
    assert sam.conv.kernel_size == (7, 7) and sam.conv.in_channels == 2
    desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    torch.testing.assert_close(sam(x), x * torch.sigmoid(sam.conv(desc)))


def test_wbcnet_structure_matches_the_paper():
    model = create_model("wbcnet", 5)
    assert isinstance(model.resnet.layer4[-1], torchvision.models.resnet.Bottleneck)
    assert model.resnet_proj[0].out_channels == 512 and model.densenet_proj[0].out_channels == 512
    assert model.resnet_proj[0].kernel_size == (1, 1)
    head = list(model.head)
    assert [type(m) for m in head[1:]] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[3].p == 0.5 and head[-1].out_features == 5
    assert [n for n, _ in model.attention.named_children()] == ["sam", "cam"]
    # Both trunks give 7x7 maps at 224 px (stage 4 is why the default cuts there).
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert model.resnet(x).shape[-2:] == model.densenet(x).shape[-2:] == (7, 7)


def test_branch_ablations_keep_one_trunk():
    r = create_model("wbcnet-resnet", 5)
    d = create_model("wbcnet-densenet", 5)
    assert r.densenet is None and r.resnet is not None
    assert d.resnet is None and d.densenet is not None


def test_baselines_refuse_attention_and_unknown_names_are_clear():
    with pytest.raises(WbcError, match="takes no attention"):
        create_model("resnet18", 5, attention="scam")
    with pytest.raises(WbcError, match="unknown architecture"):
        create_model("vgg99", 5)
    with pytest.raises(WbcError, match="unknown attention"):
        create_model("wbcnet-tiny", 5, attention="cbam++")


def test_card_rebuilds_the_same_architecture():
    card = card_for("wbcnet-tiny", ["a", "b", "c"], attention="csam", arch_options={"fuse_channels": 32})
    assert card.input_size == 64 and card.attention == "csam"
    model = build_from_card(card)
    assert model.head[-1].out_features == 3 and model.resnet_proj[0].out_channels == 32


def test_local_backbone_weights_are_loaded(tmp_path):
    torch.manual_seed(3)
    r18 = torchvision.models.resnet18(weights=None)
    torch.save(r18.state_dict(), tmp_path / "r18.pth")
    # Old-style DenseNet keys ("norm.1") as in torchvision's original checkpoints.
    d121 = torchvision.models.densenet121(weights=None)
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in d121.state_dict().items()}
    torch.save(old, tmp_path / "d121.pth")
    model = create_model(
        "wbcnet-tiny", 5, stage=2, backbone_weights={"resnet18": tmp_path / "r18.pth", "densenet": tmp_path / "d121.pth"}
    )
    torch.testing.assert_close(model.resnet.conv1.weight, r18.conv1.weight)
    torch.testing.assert_close(model.resnet.layer2[0].conv1.weight, r18.layer2[0].conv1.weight)
    torch.testing.assert_close(
        model.densenet.denseblock2.denselayer3.conv2.weight, d121.features.denseblock2.denselayer3.conv2.weight
    )


def test_bad_weights_give_clear_errors(tmp_path):
    with pytest.raises(WbcError, match="weights file not found"):
        create_model("resnet18", 5, backbone_weights={"resnet18": tmp_path / "nope.pth"})
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WbcError, match="do not fit"):
        create_model("resnet50", 5, backbone_weights={"resnet50": tmp_path / "r18.pth"})
    with pytest.raises(WbcError, match="no backbone of that name; use one of: resnet, resnet18, densenet, densenet121"):
        create_model("wbcnet-tiny", 5, backbone_weights={"resnt18": tmp_path / "r18.pth"})
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WbcError, match="cannot read weights file"):
        create_model("resnet18", 5, backbone_weights={"resnet18": tmp_path / "junk.pth"})


def test_unavailable_imagenet_weights_name_the_offline_options(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WbcError, match="--backbone-weights resnet18=PATH") as err:
        create_model("resnet18", 5, pretrained="imagenet")
    assert "\n" not in str(err.value)


def test_parse_pretrained_per_branch():
    assert parse_pretrained("imagenet") == "imagenet"
    assert parse_pretrained("resnet=imagenet,densenet=none") == {"resnet": "imagenet", "densenet": "none"}
    with pytest.raises(WbcError):
        parse_pretrained("resnet=maybe")


def test_summary_counts_real_parameters():
    s = summarise("wbcnet")
    assert s.params == count_parameters(create_model("wbcnet", 5))
    assert s.input_size == 224 and s.attention == "scam"
    # ResNet50 alone is ~4.1 GMACs at 224 px; wbcnet adds DenseNet121 (~2.9) and the head.
    assert 6.5 < s.gmacs < 7.5


def test_models_command_lists_wbcnet_with_its_parameter_count(capsys):
    from wbc_deploy.cli import main

    main(["models"])
    out = capsys.readouterr().out
    n = count_parameters(create_model("wbcnet", 5))
    assert "wbcnet" in out and f"{n:,}" in out and "scam" in out
