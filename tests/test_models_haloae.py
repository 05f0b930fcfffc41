"""HaloAE: halo attention, SSIM, loss schedule, model, CutPaste views and the VGG19 taps.

Independent references: a brute-force loop over query pixels (attention), the uniform window
mean (the inverted-mask bug), scikit-image's SSIM, the hand-computed table of notebooks/SOURCES.md §5.6, NumPy
bounding boxes (CutPaste), torchvision's own VGG19 layers run by hand.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from adnotes.data.cutpaste import cutpaste_normal, cutpaste_scar
from adnotes.data.synthetic import SYNTHETIC
from adnotes.models import create
from adnotes.models.haloae import HaloAE, HaloAEConfig, HaloAttention, loss_weights, ssim

pytestmark = pytest.mark.usefixtures("one_thread")


def _attention(dim=3, block=4, halo=1, heads=2, dim_head=3, inverted=False, seed=0):
    torch.manual_seed(seed)
    attn = HaloAttention(dim, block, halo, heads, dim_head, inverted_mask=inverted).double()
    with torch.no_grad():
        attn.to_out.bias.normal_()
    return attn


# --- HaloAttention ---------------------------------------------------------------------------

def test_halo_attention_matches_a_brute_force_loop_over_query_pixels():
    b, h, heads, d = 4, 1, 2, 3
    attn = _attention(block=b, halo=h, heads=heads, dim_head=d)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    inner = heads * d
    Wq, Wk, Wv = attn.to_q.weight, attn.to_kv.weight[:inner], attn.to_kv.weight[inner:]
    r = b + 2 * h
    expected = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for py in range(8):
            for px in range(8):
                top, left = py // b * b - h, px // b * b - h  # the window of this pixel's block
                keys = [(ky, kx) for ky in range(top, top + r) for kx in range(left, left + r)
                        if 0 <= ky < 8 and 0 <= kx < 8]     # only keys inside the image
                heads_out = []
                for n in range(heads):
                    sl = slice(n * d, (n + 1) * d)
                    q = Wq[sl] @ x[0, :, py, px]
                    logits = torch.stack([
                        (q @ (Wk[sl] @ x[0, :, ky, kx] + attn.rel_height[ky - py + r - 1]
                              + attn.rel_width[kx - px + r - 1])) / math.sqrt(d) for ky, kx in keys])
                    p = torch.softmax(logits, 0)
                    heads_out.append(sum(pi * (Wv[sl] @ x[0, :, ky, kx]) for pi, (ky, kx) in zip(p, keys)))
                expected[0, :, py, px] = attn.to_out(torch.cat(heads_out))
        out = attn(x)
    assert torch.allclose(out, expected, atol=1e-5)


def test_inverted_mask_averages_v_over_the_window_inside_and_gives_the_bias_at_borders():
    b, h = 4, 1
    attn = _attention(block=b, halo=h, inverted=True)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    inner = attn.heads * attn.dim_head
    with torch.no_grad():
        out = attn(x)
        v = torch.einsum("ic,bchw->bihw", attn.to_kv.weight[inner:], x)  # (B, inner, H, W)
        mean_v = v[:, :, b - h:2 * b + h, b - h:2 * b + h].mean(dim=(2, 3))  # the interior block's 6×6 window
        interior = attn.to_out(mean_v)                                     # (B, C): one value for the block
        # independent of q, k and the position tables:
        attn.to_q.weight.normal_()
        attn.rel_height.normal_()
        again = attn(x)
    block = out[:, :, b:2 * b, b:2 * b]
    assert torch.allclose(block, interior[:, :, None, None].expand_as(block), atol=1e-10)
    assert torch.allclose(again, out, atol=1e-10)
    border = out[:, :, :b, :]  # the top row of blocks only sees padded keys: v = 0
    assert torch.allclose(border, attn.to_out.bias[None, :, None, None].expand_as(border))
    correct = _attention(block=b, halo=h, inverted=False)
    correct.load_state_dict(attn.state_dict())
    assert not torch.allclose(correct(x), out)


def test_halo_attention_rejects_maps_that_blocks_do_not_tile():
    with pytest.raises(ValueError, match="divisible by 4"):
        _attention().float()(torch.randn(1, 3, 6, 8))


# --- SSIM and the loss-weight schedule -------------------------------------------------------

def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(0)
    x = rng.random((3, 24, 20))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    ref = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0)
    tx, ty = torch.from_numpy(x)[None], torch.from_numpy(y)[None]
    # "valid": skimage averages only where the 11×11 window fits
    assert ssim(tx, ty, padding="valid").item() == pytest.approx(structural_similarity(x, y, **ref), abs=1e-6)
    # "same" (the code's pytorch_ssim): zero padding = skimage on zero-padded images, its crop = ours
    pad = ((0, 0), (5, 5), (5, 5))
    assert ssim(tx, ty).item() == pytest.approx(structural_similarity(np.pad(x, pad), np.pad(y, pad), **ref), abs=1e-6)


@pytest.mark.parametrize("epoch, expected", [(0, (.971, .028, .001)), (50, (.681, .304, .015)),
                                             (100, (.274, .625, .102)), (250, (.112, .335, .554))])
def test_loss_weights_follow_the_hand_computed_table(epoch, expected):  # notebooks/SOURCES.md §5.6
    assert np.round(loss_weights(epoch), 3).tolist() == list(expected)
    model = create("haloae", preset="quick", in_channels=8)
    assert model.loss_weights(epoch / 251) == pytest.approx(loss_weights(epoch))  # x = progress · 251


# --- the model ------------------------------------------------------------------------------

def _tiny(**kw):
    """8 channels on an 8×8 grid: 4×4 after the 5×5 head, block 2 + halo 1; 32² images."""
    args = dict(in_channels=8, head_channels=8, dim_head=4, block_size=2, halo=1,
                image_channels=8, image_middle=1, image_size=32) | kw
    torch.manual_seed(0)
    return create("haloae", preset="quick", **args)


def test_paper_preset_has_the_sizes_of_the_code():
    cfg = HaloAEConfig.preset("paper")
    assert cfg.encoder_widths == [234, 117, 58, 29]
    assert cfg.decoder_widths == [(29, 29), (58, 59), (118, 118), (236, 237), (703, 704)]
    model = HaloAE(cfg)
    assert model.head[0].weight.shape == (234, 704, 5, 5) and model.head[0].padding == (0, 0)
    attn = [blk.attn for blk in list(model.encoder) + list(model.decoder)]
    assert [a.heads for a in attn] == [4, 8, 8, 8, 4, 8, 8, 8, 8]
    assert {(a.block, a.halo, a.dim_head, a.window) for a in attn} == {(12, 2, 16, 16)}
    assert all(isinstance(blk.conv2, torch.nn.ConvTranspose2d) for blk in model.decoder)
    assert [blk.conv2.kernel_size[0] for blk in model.decoder] == [3, 3, 3, 5, 1]
    convs = [m for m in model.image_branch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (704, 380), (380, 190), (190, 95), (95, 47), (47, 23), (23, 3), (3, 3)]
    assert model.classifier.in_features == 3 * 256 * 256
    assert model.image_branch(torch.zeros(1, 704, 4, 4)).shape == (1, 3, 16, 16)  # two ×2 upsamplings
    with pytest.raises(ValueError, match="block sizes that do"):
        HaloAEConfig.preset("paper", feature_size=30)  # 26 after the head


def test_quick_preset_on_lite0_features_shapes_and_grid():
    model = create("haloae", preset="quick", in_channels=80).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 80, 28, 28))
        image = model.reconstruct_image(out)
    assert out.shape == (2, 80, 28, 28) and image.shape == (2, 3, 112, 112)
    assert model.classify(image).shape == (2, 2)
    assert model.config.encoder_widths[-1] == 5 and model.decoder[-1].final_relu is False
    assert (out < 0).any()  # signed features need a linear last block (final_relu False)


def test_training_loss_uses_label_0_images_for_reconstruction_and_all_for_the_classifier():
    model = _tiny()
    x = torch.randn(6, 8, 8, 8)
    batch = {"labels": torch.tensor([0, 1, 1, 0, 1, 1]), "images": torch.randn(6, 3, 64, 64)}
    out = model(x)
    terms = model.loss_terms(x, out, batch)
    changed = out.detach().clone()
    changed[batch["labels"] == 1] += 5  # the views' reconstructions do not enter fm / im
    other = model.loss_terms(x, changed, batch)
    assert other["fm"].item() == pytest.approx(terms["fm"].item())
    assert other["im"].item() == pytest.approx(terms["im"].item())
    assert other["cls"].item() != pytest.approx(terms["cls"].item())
    # im: the images resized to 32² (bilinear, antialias) against the image branch, MSE + 1 - SSIM
    normal = batch["labels"] == 0
    im_hat = model.reconstruct_image(out)[normal]
    target = F.interpolate(batch["images"][normal], size=(32, 32), mode="bilinear", antialias=True)
    assert terms["im"].item() == pytest.approx((F.mse_loss(im_hat, target) + 1 - ssim(im_hat, target)).item(), rel=1e-5)
    loss = model.training_loss(x, out, batch, progress=0.5)
    a = loss_weights(0.5 * 251)
    assert loss.item() == pytest.approx(a[0] * terms["cls"].item() + a[1] * terms["fm"].item()
                                        + a[2] * terms["im"].item(), rel=1e-5)
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0 and model.head[0].weight.grad.abs().sum() > 0
    only_views = model.loss_terms(x, out, {"labels": torch.ones(6, dtype=torch.long), "images": batch["images"]})
    assert only_views["fm"] == 0 and only_views["im"] == 0
    with pytest.raises(KeyError, match="keep_images"):
        model.loss_terms(x, out, {"labels": batch["labels"]})


def test_anomaly_map_is_the_channel_mean_squared_error():
    model = _tiny().eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        out = model(x)
    expected = ((x.numpy() - out.numpy()) ** 2).mean(axis=1)
    assert np.allclose(model.anomaly_map(x, out).numpy(), expected, atol=1e-6)


def test_standardize_takes_the_first_training_batchs_channel_statistics():
    model = _tiny()
    assert model.config.standardize and not HaloAEConfig.preset("paper").standardize
    x = torch.randn(6, 8, 8, 8) * torch.linspace(1, 8, 8)[:, None, None] + 3
    model.eval()
    model(x)  # evaluation before training: identity statistics, nothing stored
    assert not model.feature_stats_set and torch.equal(model.feature_std, torch.ones(8))
    model.train()
    model(x)
    model(torch.randn(6, 8, 8, 8))  # later batches leave them alone
    flat = x.permute(1, 0, 2, 3).reshape(8, -1).numpy()
    assert np.allclose(model.feature_mean.numpy(), flat.mean(1), atol=1e-5)
    assert np.allclose(model.feature_std.numpy(), flat.std(1, ddof=1), atol=1e-5)
    assert {"feature_mean", "feature_std", "feature_stats_set"} <= set(model.state_dict())


def test_inverted_mask_reaches_every_attention_layer():
    model = _tiny(inverted_mask=True)
    assert all(m.inverted_mask for m in model.modules() if isinstance(m, HaloAttention))


def test_trainer_runs_haloae_end_to_end(tmp_path):
    from adnotes.features import FeatureSet
    from adnotes.train import Config, train

    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 1] * 4)
    train_set = FeatureSet(torch.randn(12, 8, 8, 8, generator=g).half(), labels, ["a"] * 12, None,
                           {"images": torch.randn(12, 3, 32, 32, generator=g).half()})
    test_labels = torch.tensor([0, 1] * 3)
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    masks[1::2, 8:16, 8:16] = True
    test = FeatureSet(torch.randn(6, 8, 8, 8, generator=g).half(), test_labels, ["a"] * 6, masks)
    cfg = Config.load(None, [
        "model.name=haloae", "model.preset=quick",
        "model.args={head_channels: 8, dim_head: 4, block_size: 2, halo: 1, image_channels: 8, "
        "image_middle: 1, image_size: 32}",
        "train.steps=3", "train.batch_size=6", "train.mode=separate", "eval.every=3", "train.device=cpu",
        "eval.normalize=true", "eval.pool=null", "eval.reduce=mean", "eval.sigma=3.2"])
    run = train(cfg, "halo", runs=tmp_path, features=(train_set, test))
    assert any(run.rglob("metrics.json"))


# --- CutPaste --------------------------------------------------------------------------------

def _photo(size=96):
    from skimage import data
    from PIL import Image

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size)))


def _box(mask):
    ys, xs = np.nonzero(mask)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


@pytest.mark.parametrize("generate", [cutpaste_normal, cutpaste_scar])
def test_cutpaste_changes_only_the_pasted_area_and_is_deterministic(generate):
    image = _photo()
    for seed in range(10):
        out, mask = generate(image.copy(), np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert mask.any() and (out[~mask] == image[~mask]).all()
        again, mask2 = generate(image.copy(), np.random.default_rng(seed))
        assert (again == out).all() and (mask2 == mask).all()
    assert SYNTHETIC["cutpaste_normal"] is cutpaste_normal and SYNTHETIC["cutpaste_scar"] is cutpaste_scar


def test_cutpaste_normal_patch_area_and_aspect_ratio_are_in_range():
    image = _photo(128)
    areas, aspects = [], []
    for seed in range(60):
        _, mask = cutpaste_normal(image, np.random.default_rng(seed))
        h, w = _box(mask)
        assert mask.sum() == h * w  # a rectangle
        areas.append(h * w / mask.size)
        aspects.append(w / h)
    tol = 2 / 128  # rounding of the sides to whole pixels
    assert 0.02 - tol < min(areas) and max(areas) < 0.15 + tol
    assert 0.3 * (1 - 0.1) < min(aspects) and max(aspects) < (1 / 0.3) * (1 + 0.1)
    assert min(aspects) < 0.6 and max(aspects) > 1.7  # both orientations are drawn


def test_cutpaste_scar_is_a_thin_rotated_strip_of_the_right_size():
    image = _photo(128)
    for seed in range(40):
        _, mask = cutpaste_scar(image, np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        # sides of the strip from its second moments: a w×h rectangle has variances w²/12, h²/12
        sides = np.sqrt(12 * np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(float))))
        assert 2 * 10 * 0.7 <= mask.sum() <= 16 * 25 * 1.3
        assert sides.max() <= 25 + 2.5 and sides.min() >= 1


# --- the VGG19 taps --------------------------------------------------------------------------

def test_vgg19_taps_equal_torchvision_layers_run_by_hand():
    from torchvision.models.vgg import cfgs, make_layers

    from adnotes.backbone import VGG19Taps

    torch.manual_seed(0)
    taps = VGG19Taps(weights="none")
    tv = make_layers(cfgs["E"])[:18]
    tv.load_state_dict(taps.features.state_dict())  # torchvision's own module layout and names
    x = torch.randn(1, 3, 32, 32)
    by_hand, h = [], x
    with torch.no_grad():
        for i, layer in enumerate(tv):
            if isinstance(layer, torch.nn.Conv2d):  # reflection padding instead of zeros (§2.1)
                h = F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), layer.weight, layer.bias)
            else:
                h = layer(h)
            if i in (1, 6, 11, 17):
                by_hand.append(h.clone())
        maps = taps.stage_maps(x)
        out = taps(x)
    assert [m.shape[1:] for m in maps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (256, 8, 8)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, by_hand))
    # nearest upsample each tap to 32² (repeat), then 4×4 mean (reshape)
    up = torch.cat([m.repeat_interleave(32 // m.shape[-1], -1).repeat_interleave(32 // m.shape[-2], -2)
                    for m in by_hand], 1)
    expected = up.reshape(1, 704, 8, 4, 8, 4).mean(dim=(3, 5))
    assert out.shape == (1, 704, 8, 8) and taps.out_channels == 704
    assert torch.allclose(out, expected, atol=1e-5)
    assert taps.fingerprint == "vgg19-none-relu11-21-31-34-os4"


def test_vgg19_hub_offline_says_to_use_the_quick_config(monkeypatch):
    from torchvision.models import VGG19_Weights

    from adnotes.backbone import VGG19Taps

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(type(VGG19_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="haloae_quick.yaml"):
        VGG19Taps(weights="hub")
