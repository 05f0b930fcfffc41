"""Notebook 03's bookkeeping (adnotes.uniad_steps) against independent references: brute-force loops over
cells and tokens, hand-made attention maps, an identity model, a decoder cut short, the paper's own means."""
import json
import statistics
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from adnotes import uniad_steps
from adnotes.features import FeatureSet
from adnotes.models import uniad
from adnotes.train import Config, anomaly_maps, build_model
from fixtures import tiny_features

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_uniad(window=3, decoder_layers=2, seed=0):
    """A 4×4-grid UniAD on tiny_features, with a window×window neighbour mask everywhere."""
    train, test = tiny_features()
    cfg = Config.load(None, [
        "model.name=uniad", "model.preset=quick",
        f"model.args={{hidden_dim: 16, num_heads: 2, ffn_dim: 32, num_encoder_layers: 1, "
        f"num_decoder_layers: {decoder_layers}, neighbor_size: {window}, dropout: 0.0}}"])
    torch.manual_seed(seed)
    return cfg, build_model(cfg, test).eval(), test


def test_paper_tables_agree_with_the_papers_own_means():
    table = uniad_steps.paper_table()
    classes = table.drop(index="mean")
    assert len(classes) == 15 and classes["image_AUROC (Tab. 1)"].notna().all()
    assert classes["image_AUROC (Tab. 1)"].mean() == pytest.approx(table.loc["mean", "image_AUROC (Tab. 1)"], abs=0.05)
    assert classes["pixel_AUROC (Tab. 2)"].notna().sum() == 10   # the texture rows are not in our copy


def test_cell_cover_is_the_defect_fraction_of_each_cell():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 12, 12, generator=g) > 0.7
    got = uniad_steps.cell_cover(masks, 4)                   # cells of 3×3 pixels
    assert got.shape == (3, 4, 4)
    for n in range(3):
        for r in range(4):
            for c in range(4):
                want = masks[n, 3 * r:3 * r + 3, 3 * c:3 * c + 3].float().mean()
                assert got[n, r, c] == pytest.approx(float(want))
    assert torch.equal(uniad_steps.cell_cover(masks[1], 4), got[1])   # one mask alone


def test_defect_token_picks_the_largest_defect_and_its_most_central_full_cell():
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True                                # one full cell: a small defect
    masks[2, 0:12, 4:16] = True                              # 3×3 full cells, rows 0-2, columns 1-3: the largest
    masks[2, 12:14, 0:2] = True                              # a quarter of cell (3, 0)
    test = FeatureSet(torch.zeros(3, 2, 4, 4), torch.tensor([1, 0, 1]), ["a"] * 3, masks)
    i, t, cover = uniad_steps.defect_token(test, (4, 4))
    assert i == 2 and divmod(t, 4) == (1, 2)                 # the centre of the 3×3 block
    assert cover[3, 0] == pytest.approx(0.25) and cover[1, 2] == 1 and cover[3, 3] == 0


def test_without_mask_sees_the_window_with_the_same_weights():
    cfg, model, test = tiny_uniad()
    off = uniad_steps.without_mask(model, cfg, test)
    assert not off.training and off.config.neighbor_mask == (False, False, False)
    assert model.config.neighbor_mask == (True, True, True)  # the trained model is left as it was
    for (name, a), (_, b) in zip(model.state_dict().items(), off.state_dict().items()):
        assert torch.equal(a, b), name
    mask = uniad.neighbor_mask(4, 4, (3, 3))
    x = test.take(torch.arange(2))
    for m, inside in ((model, False), (off, True)):
        with torch.no_grad(), uniad.recording_attention(m) as weights:
            m(x)
        in_window = max(float((a * mask).sum(-1).max()) for a in weights.values())
        assert (in_window > 1e-3) == inside


def test_attention_share_sums_the_hand_made_weights():
    a = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.05, 0.05], [0.0, 0.1, 0.2]])    # sums to 1
    b = torch.full((3, 3), 1 / 9)
    window = torch.zeros(3, 3, dtype=torch.bool)
    window[:2, :2] = True
    defect = torch.zeros(3, 3, dtype=torch.bool)
    defect[1:, 2] = True
    attention = {"on": {"enc": a, "dec": b}, "off": {"enc": b, "dec": a}}
    share = uniad_steps.attention_share(attention, window, defect, (1, 1))
    assert list(share.index) == ["enc", "dec"]
    assert share.loc["enc", ("in own window", "on")] == pytest.approx(0.1 + 0.2 + 0.3 + 0.05)
    assert share.loc["enc", ("on itself", "on")] == pytest.approx(0.05)
    assert share.loc["enc", ("on defect cells", "on")] == pytest.approx(0.05 + 0.2)
    assert share.loc["dec", ("in own window", "on")] == pytest.approx(4 / 9)
    assert share.loc["dec", ("on defect cells", "off")] == pytest.approx(0.25)


def test_attention_spread_of_uniform_and_one_hot_attention():
    hw = 9
    mask = torch.rand(hw, hw, generator=torch.Generator().manual_seed(0)) > 0.5
    uniform = torch.full((2, hw, hw), 1 / hw)
    one_hot = torch.eye(hw).expand(2, hw, hw)
    spread = uniad_steps.attention_spread({"uniform": uniform, "one hot": one_hot}, mask)
    assert spread.loc["uniform", "effective keys"] == pytest.approx(hw, rel=1e-5)
    assert spread.loc["one hot", "effective keys"] == pytest.approx(1, rel=1e-5)
    assert spread.loc["uniform", "share in own window"] == pytest.approx(float(mask.sum()) / hw / hw)
    assert spread.loc["one hot", "share in own window"] == pytest.approx(float(mask.diagonal().float().mean()))
    assert spread.loc["one hot", "share on itself"] == 1 and spread.loc["uniform", "share on itself"] == pytest.approx(1 / hw)
    shifted = torch.stack([torch.eye(hw), torch.eye(hw).roll(1, dims=1)])   # image 1 looks one key further
    both = uniad_steps.attention_spread({"same": one_hot, "uniform": uniform, "shifted": shifted}, mask)
    assert both.loc["same", "same in every image"] == 1 and both.loc["uniform", "same in every image"] == pytest.approx(1)
    assert both.loc["shifted", "same in every image"] == pytest.approx(0.5)   # Σ min(one-hot, half of it) = 1/2
    assert both.loc["shifted", "share on itself"] == pytest.approx(0.5)


def test_plot_neighbor_mask_counts_blocked_keys_like_a_brute_force_window():
    h = w = 5
    mask = uniad.neighbor_mask(h, w, (3, 3))
    counts = [sum(abs(r - i) <= 1 and abs(c - j) <= 1 for r in range(h) for c in range(w))
              for i in range(h) for j in range(w)]
    fig, data = uniad_steps.plot_neighbor_mask(mask, (h, w), (3, 3), {"corner": 0, "inner": 12})
    plt.close(fig)
    assert data["tokens"] == {"corner": 4, "inner": 9}
    assert data["blocked_per_token"] == {"min": min(counts), "max": max(counts),
                                         "mean": pytest.approx(statistics.mean(counts))}


def test_plot_attention_draws_a_row_per_label_and_a_panel_per_module():
    maps = {"on": torch.rand(4, 4), "off": torch.rand(4, 4)}
    attention = {label: {"enc": torch.rand(4, 4), "dec": torch.rand(4, 4)} for label in maps}
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 8:16] = True
    fig = uniad_steps.plot_attention(np.zeros((32, 32, 3)), mask, attention, maps, (1, 1), (3, 3), "a / b")
    assert len(fig.axes) == 2 * (2 + 2)
    plt.close(fig)


class Identity(nn.Module):
    def forward(self, x):
        return x


def test_denoise_table_of_an_identity_model_reproduces_the_noise():
    f = torch.randn(6, 8, 3, 3, generator=torch.Generator().manual_seed(0)) + 2
    table = uniad_steps.denoise_table(Identity(), f, [0, 10, 40], seed=3)
    noise, rec, amap = table.columns
    assert list(table.index) == [0, 10, 40] and table.loc[0, noise] == 0
    assert np.allclose(table[rec], table[noise]) and np.allclose(table[amap], 0)
    # the noise has norm ≈ α‖f‖/√C per token (Eq. 3: std α‖f‖/C per channel)
    predicted = 40 * float(f.norm(dim=1).mean()) / 8 ** 0.5
    assert table.loc[40, noise] == pytest.approx(predicted, rel=0.15)
    assert table.equals(uniad_steps.denoise_table(Identity(), f, [0, 10, 40], seed=3))   # seeded


def test_decoder_layer_maps_match_the_model_and_a_decoder_cut_short():
    cfg, model, test = tiny_uniad(decoder_layers=2)
    maps = uniad_steps.decoder_layer_maps(model, test, batch=5)
    assert len(maps) == 2 and maps[0].shape == (len(test), 4, 4)
    assert torch.allclose(maps[-1], anomaly_maps(model, test), atol=1e-5)
    model.decoder = model.decoder[:1]                          # the model as if it stopped after layer 1
    assert torch.allclose(maps[0], anomaly_maps(model, test), atol=1e-5)


def test_layer_table_means_and_aurocs():
    labels = torch.tensor([0, 1])
    maps = [torch.tensor([[[1.0, 2.0]], [[3.0, 10.0]]]), torch.tensor([[[0.5, 0.5]], [[1.0, 4.0]]])]
    cells = torch.tensor([[[False, False]], [[False, True]]])
    tables = [pd.DataFrame({"image_AUROC": [0.7], "pixel_AUROC": [0.8]}, index=["mean"]),
              pd.DataFrame({"image_AUROC": [0.9], "pixel_AUROC": [0.95]}, index=["mean"])]
    got = uniad_steps.layer_table(maps, tables, labels, cells)
    assert list(got.index) == ["after decoder layer 1", "after decoder layer 2"]
    assert got.loc["after decoder layer 1", "error, normal images"] == pytest.approx(1.5)
    assert got.loc["after decoder layer 1", "error, defect cells"] == pytest.approx(10)
    assert got.loc["after decoder layer 2", "error, defect cells"] == pytest.approx(4)
    assert got.loc["after decoder layer 2", "pixel_AUROC"] == pytest.approx(95)


def test_seed_rows_read_each_seeds_mean_row(tmp_path):
    image = {0: 0.7, 1: 0.74, 2: 0.78}
    for seed, value in image.items():
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "metrics.json").write_text(json.dumps(
            {"a": {"image_AUROC": 0.1}, "mean": {"image_AUROC": value, "pixel_AUROC": 0.9}}))
    rows = uniad_steps.seed_rows(tmp_path)
    assert list(rows.index) == ["seed0", "seed1", "seed2"]
    assert rows["image_AUROC"].std() == pytest.approx(statistics.stdev(image.values()))
    assert rows["pixel_AUROC"].std() == pytest.approx(0)


def test_plot_anomaly_maps_shares_one_scale_and_records_the_shown_images():
    g = torch.Generator().manual_seed(0)
    n = 6
    test = FeatureSet(torch.zeros(n, 2, 2, 2), torch.tensor([0, 1, 0, 1, 0, 1]), ["a"] * n,
                      torch.zeros(n, 8, 8, dtype=torch.bool))
    full, scores = torch.rand(n, 8, 8, generator=g), torch.tensor([1.0, 5.0, 2.0, 6.0, 3.0, 7.0])
    records = [SimpleNamespace(cls="a", defect="hole", image=f"/x/{j}.png") for j in range(n)]
    images = type("Images", (), {"records": records, "__getitem__": lambda self, j: {"image": torch.zeros(3, 8, 8)}})()
    fig, data = uniad_steps.plot_anomaly_maps(images, test, full, scores, [1, 3])
    plt.close(fig)
    assert data["shown"] == ["/x/1.png", "/x/3.png"] and data["image_scores"] == [5.0, 6.0]
    assert data["vmax"] == pytest.approx(float(np.quantile(full.numpy(), 0.999)))
    assert data["normal_score_median"] == pytest.approx(2.0)
