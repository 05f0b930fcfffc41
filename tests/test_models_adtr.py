"""Tests for ADTR (adnotes/models/adtr.py) and FCDD's confetti noise (adnotes/data/confetti.py).

References are independent of the code under test: the forward pass re-written with explicit
softmax attention from the model's own weights, every loss and the cell labels as NumPy loops over
images, positions and channels, the parameter count from the architecture arithmetic, the blob
raster from polygon geometry. Tiny shapes (C_in 12, 4×4 or 6×6 grids) keep it fast.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adnotes import models
from adnotes.features import FeatureSet
from adnotes.models.adtr import (ADTR, ADTRConfig, LOSSES, PRESETS, PUBLISHED, cell_labels, loss_norm,
                                 pseudo_huber_error, pushpull_image_loss, pushpull_pixel_loss)

C_IN, H, W = 12, 6, 6
SMALL = dict(in_channels=C_IN, feature_size=(H, W), hidden_dim=16, num_heads=2, ffn_dim=32,
             num_encoder_layers=2, num_decoder_layers=2, dropout=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def small(**fields) -> ADTR:
    torch.manual_seed(0)
    return models.create("adtr", **{**SMALL, **fields})


def pair(batch=3, seed=1, c=C_IN, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(batch, c, h, w, generator=g, dtype=torch.float64)
    return f, f + 0.7 * torch.randn(batch, c, h, w, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- model
def test_forward_shape_train_and_eval_and_clear_shape_error():
    model = small()
    x = torch.randn(2, C_IN, H, W)
    for train in (True, False):
        assert model.train(train)(x).shape == x.shape
    with pytest.raises(ValueError, match="expected features"):
        model(torch.randn(2, C_IN, H + 1, W))


def test_presets_and_config_errors():
    paper = ADTRConfig.preset("paper")
    assert (paper.in_channels, paper.feature_size, paper.hidden_dim, paper.num_heads, paper.ffn_dim) == \
        (720, (16, 16), 256, 8, 1024)
    assert (paper.num_encoder_layers, paper.num_decoder_layers, paper.alpha, paper.top_k) == (4, 4, 0.003, 20)
    quick = ADTRConfig.preset("quick")
    assert (quick.num_encoder_layers, quick.num_decoder_layers, quick.hidden_dim, quick.num_heads,
            quick.ffn_dim, quick.feature_size) == (2, 2, 128, 4, 512, (14, 14))
    from adnotes.backbone import Backbone  # the quick preset's in_channels = the offline backbone's stages 1-5
    assert quick.in_channels == Backbone("efficientnet_lite0", stages=(1, 2, 3, 4, 5), weights="none").out_channels
    for bad in (dict(loss="l1"), dict(map_kind="pushpull_pixel"), dict(hidden_dim=15), dict(num_decoder_layers=0),
                dict(eps=0.0), dict(mask_threshold=1.0), dict(no_such_field=1)):
        with pytest.raises(ValueError):
            ADTRConfig.preset("paper", **bad)
    with pytest.raises(ValueError, match="unknown preset"):
        ADTR(preset="huge")


def test_parameter_count_of_the_paper_preset_from_architecture_arithmetic():
    c_in, d, f, hw, side = 720, 256, 1024, 256, 16
    attention = 4 * d * d + 4 * d            # in-projection (q, k, v) + out-projection, with biases
    ffn = d * f + f + f * d + d
    norm = 2 * d
    encoder = attention + ffn + 2 * norm
    decoder = 2 * attention + ffn + 3 * norm
    expected = (4 * encoder + 4 * decoder + hw * d + 2 * side * d // 2   # layers, query, position tables
                + (c_in * d + d) + (d * c_in + c_in) + norm)               # projections, final norm
    assert models.create("adtr").num_parameters() == expected == 7_812_560


def _reference_forward(model: ADTR, x: torch.Tensor) -> torch.Tensor:
    """The vanilla transformer with a query embedding written out: explicit softmax attention,
    position added to query and key (not value) of every attention, post-norm, the query table as
    the first decoder input, final LayerNorm, all from the model's own weights (eval: no dropout)."""
    c = model.config
    b, _, h, w = x.shape
    d, heads = c.hidden_dim, c.num_heads
    row, col = model.pos_embed.row, model.pos_embed.col
    pos = torch.stack([torch.cat([col[j], row[i]]) for i in range(h) for j in range(w)])  # (HW, d), row-major

    def attend(mha, query, kv):
        wq, wk, wv = mha.in_proj_weight.split(d)
        bq, bk, bv = mha.in_proj_bias.split(d)
        q = ((query + pos) @ wq.T + bq).view(b, -1, heads, d // heads).transpose(1, 2)
        k = ((kv + pos) @ wk.T + bk).view(b, -1, heads, d // heads).transpose(1, 2)
        v = (kv @ wv.T + bv).view(b, -1, heads, d // heads).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        return ((a @ v).transpose(1, 2).reshape(b, -1, d)) @ mha.out_proj.weight.T + mha.out_proj.bias

    def ln(norm, z):
        return F.layer_norm(z, (d,), norm.norm.weight, norm.norm.bias)

    def ffn(seq, z):
        return seq[3](torch.relu(seq[0](z)))

    enc = x.flatten(2).transpose(1, 2) @ model.input_proj.weight.T + model.input_proj.bias
    for layer in model.encoder:
        enc = ln(layer.norm1, enc + attend(layer.attn.mha, enc, enc))
        enc = ln(layer.norm2, enc + ffn(layer.ffn, enc))
    out = model.query_embed.expand(b, -1, -1)
    for layer in model.decoder:
        out = ln(layer.norm1, out + attend(layer.attn1.mha, out, out))      # self-attention
        out = ln(layer.norm2, out + attend(layer.attn2.mha, out, enc))      # cross-attention to the encoder
        out = ln(layer.norm3, out + ffn(layer.ffn, out))
    out = F.layer_norm(out, (d,), model.decoder_norm.weight, model.decoder_norm.bias)
    out = out @ model.output_proj.weight.T + model.output_proj.bias
    return out.transpose(1, 2).reshape(b, -1, h, w)


def test_forward_matches_a_written_out_vanilla_transformer_with_query():
    model = small(dropout=0.1).eval()
    x = torch.randn(2, C_IN, H, W)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(model, x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- losses against loops
def np_phi(f, r):
    """(B, C, H, W) -> (B, H, W) pseudo-Huber of the channel-mean absolute error, by loops."""
    b, c, h, w = f.shape
    out = np.zeros((b, h, w))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                m = sum(abs(f[n, k, i, j] - r[n, k, i, j]) for k in range(c)) / c
                out[n, i, j] = math.sqrt(m * m + 1) - 1
    return out


def test_loss_norm_is_eq1_sum_over_channels_mean_over_positions():
    f, r = pair()
    fn, rn = f.numpy(), r.numpy()
    b, c, h, w = fn.shape
    per_image = [sum(sum((fn[n, k, i, j] - rn[n, k, i, j]) ** 2 for k in range(c))
                     for i in range(h) for j in range(w)) / (h * w) for n in range(b)]
    assert loss_norm(f, r).item() == pytest.approx(np.mean(per_image), rel=1e-10)
    assert loss_norm(f, r).item() == pytest.approx(c * F.mse_loss(r, f).item(), rel=1e-10)  # the factor C


def test_pseudo_huber_error_against_loops():
    f, r = pair()
    np.testing.assert_allclose(pseudo_huber_error(f, r).numpy(), np_phi(f.numpy(), r.numpy()), rtol=1e-10)


def np_pushpull_pixel(phi, y, alpha, eps):
    total = 0.0
    for n in range(len(phi)):
        hw = phi[n].size
        pull = sum(p for p, a in zip(phi[n].ravel(), y[n].ravel()) if not a) / hw
        push = 0.0
        if y[n].any():
            s = sum(p for p, a in zip(phi[n].ravel(), y[n].ravel()) if a) / hw
            push = -alpha * math.log(max(1 - math.exp(-s), eps))
        total += pull + push
    return total / len(phi)


def test_pushpull_pixel_loss_against_loops():
    f, r = pair(batch=4)
    y = torch.zeros(4, H, W, dtype=torch.bool)
    y[0, 1:3, 2:5] = True
    y[2, 0, 0] = True
    y[3] = True                                  # image 1 has no anomaly: pull only
    expected = np_pushpull_pixel(np_phi(f.numpy(), r.numpy()), y.numpy(), 0.003, 1e-6)
    assert pushpull_pixel_loss(f, r, y, alpha=0.003).item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="feature grid"):
        pushpull_pixel_loss(f, r, y[:, :2])


def test_pushpull_all_normal_batch_is_finite_and_equals_the_pull_term():
    f, r = pair()
    loss = pushpull_pixel_loss(f, r, torch.zeros(3, H, W, dtype=torch.bool))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(np_phi(f.numpy(), r.numpy()).mean(), rel=1e-10)


def test_pushpull_guards_log0_for_a_perfectly_reconstructed_anomaly():
    f, r = pair(batch=2)
    y = torch.zeros(2, H, W, dtype=torch.bool)
    y[0, 2:4, 2:4] = True
    r = torch.where(y[:, None], f, r)            # zero error exactly where the anomaly is
    for eps in (1e-6, 1e-3):
        loss = pushpull_pixel_loss(f, r, y, alpha=0.003, eps=eps)
        phi = np_phi(f.numpy(), r.numpy())
        pull = [phi[n][~y[n].numpy()].sum() / (H * W) for n in range(2)]
        assert loss.item() == pytest.approx((pull[0] + pull[1] - 0.003 * math.log(eps)) / 2, rel=1e-8)


def test_pushpull_gradient_pulls_normal_and_pushes_anomalous_errors():
    f, r = pair(batch=2)
    f, r = f.float(), r.float().requires_grad_()
    y = torch.zeros(2, H, W, dtype=torch.bool)
    y[0, :2, :3] = True
    y[1, 4:, 1:] = True
    loss = pushpull_pixel_loss(f, r, y)
    assert torch.isfinite(loss)
    loss.backward()
    # d(loss)/d(r) · (r - f) is the rate of change of the loss as the error grows at that element:
    # > 0 (descent shrinks the error) at normal positions, < 0 (descent grows it) at anomalous ones.
    growth = (r.grad * (r - f)).detach().sum(dim=1)  # (B, H, W)
    assert (growth[y] < 0).all() and (growth[~y] > 0).all()
    step = (r - 10.0 * r.grad).detach()  # a descent step
    phi_before, phi_after = pseudo_huber_error(f, r.detach()), pseudo_huber_error(f, step)
    assert (phi_after[y] > phi_before[y]).all() and (phi_after[~y] < phi_before[~y]).all()


def test_pushpull_image_loss_against_loops_and_k_capped_at_hw():
    f, r = pair(batch=4)
    labels = torch.tensor([0, 1, 1, 0])
    phi = np_phi(f.numpy(), r.numpy())
    for k in (5, 20, 100):                       # 36 positions: k = 100 means all of them
        total = 0.0
        for n in range(4):
            top = sorted(phi[n].ravel(), reverse=True)[:min(k, H * W)]
            q = sum(top) / len(top)
            total += q if labels[n] == 0 else -0.003 * math.log(1 - math.exp(-q))
        assert pushpull_image_loss(f, r, labels, alpha=0.003, k=k).item() == pytest.approx(total / 4, rel=1e-10)


@pytest.mark.parametrize("s, h", [(24, 6), (10, 4)])   # divisible and not (adaptive bins)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_cell_labels_against_loops(s, h, threshold):
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(3, s, s, generator=g) > 0.8
    masks[1] = False
    masks[2, : s // 2, : s // 2] = True
    expected = np.zeros((3, h, h), bool)
    for n in range(3):
        for i in range(h):
            for j in range(h):  # PyTorch adaptive bins: [floor(i·S/h), ceil((i+1)·S/h))
                r0, r1 = (i * s) // h, -((-(i + 1) * s) // h)
                c0, c1 = (j * s) // h, -((-(j + 1) * s) // h)
                block = masks[n, r0:r1, c0:c1].numpy()
                expected[n, i, j] = block.mean() > threshold
    np.testing.assert_array_equal(cell_labels(masks, (h, h), threshold).numpy(), expected)


# ----------------------------------------------------------------------------- the trainer hook
def test_training_loss_dispatches_on_config_loss():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(4, C_IN, H, W, generator=g)
    r = f + torch.randn(4, C_IN, H, W, generator=g)
    labels = torch.tensor([0, 1, 0, 1])
    masks = torch.zeros(4, 24, 24, dtype=torch.bool)
    masks[1, 1:3, 1:3] = True    # touches cell (0, 0) only: "any" labels it, a majority would not
    masks[3, 8:16, 0:12] = True  # cells (2..3, 0..2)
    batch = {"labels": labels, "masks": masks}
    d = (f - r).numpy()
    normal = [0, 2]
    assert small(loss="mse").training_loss(f, r, batch, 0.0).item() == pytest.approx(
        (d[normal] ** 2).mean(), rel=1e-5)                         # normal images only, UniAD's /C mean
    assert small(loss="norm").training_loss(f, r, batch, 0.0).item() == pytest.approx(
        (d[normal] ** 2).sum(1).mean(), rel=1e-5)                  # Eq. 1
    cells = torch.zeros(4, H, W, dtype=torch.bool)
    cells[1, 0, 0] = True
    cells[3, 2:4, 0:3] = True
    expected = np_pushpull_pixel(np_phi(f.double().numpy(), r.double().numpy()), cells.numpy(), 0.003, 1e-6)
    assert small(loss="pushpull_pixel").training_loss(f, r, batch, 0.5).item() == pytest.approx(expected, rel=1e-5)
    majority = small(loss="pushpull_pixel", mask_threshold=0.5).training_loss(f, r, batch, 0.5)
    cells[1] = False
    expected = np_pushpull_pixel(np_phi(f.double().numpy(), r.double().numpy()), cells.numpy(), 0.003, 1e-6)
    assert majority.item() == pytest.approx(expected, rel=1e-5)
    assert small(loss="pushpull_image").training_loss(f, r, batch, 0.0).item() == pytest.approx(
        pushpull_image_loss(f.double(), r.double(), labels).item(), rel=1e-5)
    with pytest.raises(ValueError, match="pixel masks"):
        small(loss="pushpull_pixel").training_loss(f, r, {"labels": labels}, 0.0)
    only_anomalies = small(loss="mse").training_loss(f, r.requires_grad_(), {"labels": torch.ones(4)}, 0.0)
    assert only_anomalies.item() == 0 and only_anomalies.requires_grad


def test_published_numbers_in_the_zoo_format():
    rows = {(r["method"], r["dataset"]): r for r in PUBLISHED}
    assert (rows["ADTR", "MVTec-AD"]["pixel_AUROC"], rows["ADTR", "MVTec-AD"]["image_AUROC"]) == (97.2, 96.4)
    assert (rows["ADTR+", "MVTec-AD"]["pixel_AUROC"], rows["ADTR+", "MVTec-AD"]["image_AUROC"]) == (97.5, 96.9)
    assert (rows["ADTR", "CIFAR-10"]["image_AUROC"], rows["ADTR+", "CIFAR-10"]["image_AUROC"]) == (94.7, 96.1)
    assert all("secondary" in r["source"] and r["setting"] for r in PUBLISHED)
    assert set(LOSSES) >= {"mse", "pushpull_pixel", "pushpull_image"} and set(PRESETS) == {"paper", "quick"}


def test_trains_end_to_end_with_pixel_masks_through_the_trainer(tmp_path, monkeypatch):
    from adnotes.train import Config, train
    g = torch.Generator().manual_seed(0)
    n, s = 8, 16
    feats = torch.randn(2 * n, 8, 4, 4, generator=g)
    labels = torch.tensor([0, 1] * n)
    masks = torch.zeros(2 * n, s, s, dtype=torch.bool)
    masks[1::2, 4:8, 4:12] = True
    feats[1::2, :, 1:2, 1:3] += 3
    classes = ["a"] * (2 * n)
    train_set = FeatureSet(feats.half(), labels, classes, masks)
    test_set = FeatureSet(feats[:8].half(), labels[:8], classes[:8], masks[:8])
    cfg = Config.load(None, [
        "model.name=adtr", "model.preset=quick",
        "model.args={feature_size: 4, hidden_dim: 16, num_heads: 2, ffn_dim: 32, num_encoder_layers: 1, "
        "num_decoder_layers: 1, dropout: 0.0, loss: pushpull_pixel}",
        "eval.every=3", "eval.pool=4", "train.steps=6", "train.batch_size=4", "train.lr=0.001", "train.device=cpu"])
    seen = []
    original = ADTR.training_loss
    monkeypatch.setattr(ADTR, "training_loss",
                        lambda self, x, out, batch, progress: seen.append((batch["masks"].shape, progress))
                        or original(self, x, out, batch, progress))
    run = train(cfg, "adtr", runs=tmp_path, features=(train_set, test_set))
    assert len(seen) == 6 and all(shape == (4, s, s) for shape, _ in seen)
    assert [p for _, p in seen] == pytest.approx([i / 6 for i in range(6)])
    assert (run / "seed0" / "metrics.json").is_file()


# ----------------------------------------------------------------------------- confetti noise
def test_confetti_is_registered_and_keeps_pixels_outside_the_mask():
    from adnotes.data.confetti import MIN_CHANGE, confetti
    from adnotes.data.synthetic import generator
    assert generator("confetti") is confetti
    rng = np.random.default_rng(0)
    for seed in range(6):
        image = rng.integers(30, 226, (64, 64, 3), dtype=np.uint8)
        view, mask = confetti(image.copy(), np.random.default_rng(seed))
        assert view.dtype == np.uint8 and view.shape == image.shape
        assert mask.dtype == bool and mask.shape == (64, 64) and mask.any() and not mask.all()
        np.testing.assert_array_equal(view[~mask], image[~mask])
        change = np.abs(view.astype(int) - image.astype(int)).max(axis=2)
        assert (change[mask] >= MIN_CHANGE).all()


def test_confetti_is_deterministic_per_seed_and_varies_across_seeds():
    from adnotes.data.confetti import confetti
    image = np.full((48, 48, 3), 128, np.uint8)
    a, ma = confetti(image.copy(), np.random.default_rng(7))
    b, mb = confetti(image.copy(), np.random.default_rng(7))
    c, mc = confetti(image.copy(), np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(ma, mc)


def test_confetti_darkens_bright_images_and_inverts_on_black_ones():
    from adnotes.data.confetti import confetti
    white, mw = confetti(np.full((48, 48, 3), 255, np.uint8), np.random.default_rng(1))
    black, mb = confetti(np.zeros((48, 48, 3), np.uint8), np.random.default_rng(1))
    assert mw.any() and (white[mw] <= 255 - 8).any() and (white <= 255).all()
    assert mb.any() and (black[mb] >= 8).any()    # FCDD's inversion: bright blobs on a black image
    with pytest.raises(ValueError, match="uint8"):
        confetti(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))


def test_rotated_square_matches_polygon_geometry():
    from matplotlib.path import Path
    from adnotes.data.confetti import rotated_square
    for centre, side, angle in [((20.2, 17.5), 11, 0.0), ((15.3, 22.8), 14, 30.0), ((10.0, 10.0), 9, -45.0)]:
        t = math.radians(angle)
        axis_u, axis_v = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])  # (y, x)
        corners = [np.array(centre) + side / 2 * (a * axis_u + b * axis_v) for a, b in
                   [(-1, -1), (-1, 1), (1, 1), (1, -1)]]
        poly = Path([(c[1], c[0]) for c in corners])   # (x, y)
        ys, xs = np.mgrid[0:40, 0:40]
        inside = poly.contains_points(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)).reshape(40, 40)
        got = rotated_square(40, 40, centre, side, angle)
        assert (got != inside).sum() <= 2            # ties on the boundary only
        assert abs(got.sum() - side ** 2) <= 2 * side  # area ≈ side²
