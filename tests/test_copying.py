"""The copy gain and leak (adnotes.copying) against independent references: the identity copies
(g = 1), a constant ignores (g = 0), a per-token linear map W gives δᵀWδ/‖δ‖² exactly, and for a
small δ a smooth model's gain is its directional derivative (torch.func.jvp)."""
import numpy as np
import pytest
import torch
from torch import nn

from adnotes.copying import Probe, copying, gain_and_leak, per_class, transplant_probe, twin_probe
from adnotes.features import FeatureSet


def features(n_per_class=6, classes=("a", "b", "c"), C=5, H=6, W=6, seed=0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * len(classes)
    labels = torch.tensor(([0] * (n_per_class - 1) + [1]) * len(classes))
    # each class has its own mean, so transplanted blocks really differ from what they replace
    means = torch.arange(len(classes)).repeat_interleave(n_per_class).float().view(-1, 1, 1, 1)
    feats = (torch.randn(n, C, H, W, generator=g) + 3 * means).half()
    return FeatureSet(feats, labels, [c for c in classes for _ in range(n_per_class)], None)


class Linear(nn.Module):
    """f(x)_t = W x_t at every token (a 1×1 convolution without bias)."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.W = W

    def forward(self, x):
        return torch.einsum("dc,bchw->bdhw", self.W, x)


def test_the_identity_copies_and_a_constant_ignores():
    probe = transplant_probe(features(), n=10, block=2)
    ident = copying(nn.Identity(), probe)
    assert ident["gain"] == pytest.approx(1.0, abs=1e-12) and ident["leak"] == pytest.approx(0.0, abs=1e-12)

    class Constant(nn.Module):
        def forward(self, x):
            return torch.ones_like(x) * 0.3

    const = copying(Constant(), probe)
    assert const["gain"] == 0.0 and const["leak"] == 0.0


def test_a_per_token_linear_map_gives_the_quadratic_form_exactly():
    C = 5
    W = torch.randn(C, C, generator=torch.Generator().manual_seed(1))
    probe = transplant_probe(features(C=C), n=12, block=3, seed=3)
    got = copying(Linear(W.double()), Probe(probe.x.double(), probe.x_new.double(), probe.region, probe.classes))
    # brute force, token by token: Σ δᵀWδ / Σ ‖δ‖² over the changed tokens; nothing leaks outside them
    num = den = 0.0
    for k in range(len(probe)):
        for i, j in zip(*np.nonzero(probe.region[k].numpy())):
            d = probe.x_new[k, :, i, j].double().numpy() - probe.x[k, :, i, j].double().numpy()
            num += d @ W.double().numpy() @ d
            den += d @ d
    assert got["gain"] == pytest.approx(num / den, rel=1e-10)
    assert got["leak"] == pytest.approx(0.0, abs=1e-20)


def test_a_small_change_gives_the_directional_derivative():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 4, 3, padding=1)).double()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    region = torch.zeros(1, 5, 5, dtype=torch.bool)
    region[0, 1:3, 2:4] = True
    direction = torch.randn_like(x) * region.unsqueeze(1)
    eps = 1e-6
    got = copying(model, Probe(x, x + eps * direction, region, ["a"]))
    _, jd = torch.func.jvp(model, (x,), (direction,))                  # J δ
    inside = region.unsqueeze(1)
    expected = (jd * direction * inside).sum() / (direction.square() * inside).sum()
    assert got["gain"] == pytest.approx(expected.item(), rel=1e-5)
    # the leak is the Jacobian's energy outside the region, scaled by eps² / eps²
    assert got["leak"] == pytest.approx(((jd * ~inside).square().sum() / direction.square().sum()).item(), rel=1e-4)


def test_transplants_replace_exactly_one_block_with_the_donors_tokens():
    fs = features()
    for donor in ("other_class", "same_class", "train"):
        probe = transplant_probe(fs, n=8, block=2, donor=donor, train=fs, seed=5)
        assert probe.region.sum(dim=(1, 2)).tolist() == [4] * 8
        changed = (probe.x_new != probe.x).any(1)
        assert not (changed & ~probe.region).any(), "only the block changes"
        if donor == "other_class":  # the class means differ by 3: the block now holds another class's mean
            own = torch.tensor([["a", "b", "c"].index(c) * 3.0 for c in probe.classes])
            block_mean = (probe.x_new * probe.region.unsqueeze(1)).sum(dim=(1, 2, 3)) / (4 * fs.channels)
            assert ((block_mean - own).abs() > 1.5).all()
    assert transplant_probe(fs, n=8, seed=1).x.equal(transplant_probe(fs, n=8, seed=1).x), "seeded"
    with pytest.raises(ValueError, match="train="):
        transplant_probe(fs, donor="train")
    with pytest.raises(ValueError, match="two classes"):
        transplant_probe(fs.select("a"), donor="other_class")


def test_per_class_pools_the_sums_of_its_images():
    fs = features()
    probe = transplant_probe(fs, n=15, block=2)
    half = Linear(0.5 * torch.eye(fs.channels))
    table = per_class(half, probe)
    assert set(table) == {"a", "b", "c", "mean"}
    for row in table.values():
        assert row["copy_gain"] == pytest.approx(0.5) and row["copy_leak"] == pytest.approx(0.0)
    out, out_new = half(probe.x), half(probe.x_new)
    along, spread, energy = gain_and_leak(out, out_new, probe.x, probe.x_new, probe.region)
    assert along.shape == (15,) and (energy > 0).all()
    # f(x) = x/2 misses every token by half its length: the normal error is 1/2 in every class
    assert all(row["normal_error"] == pytest.approx(0.5) for row in table.values())
    # an affine map's error, brute force token by token, per class
    class Shift(nn.Module):
        def forward(self, x):
            return x + 0.3
    table = per_class(Shift(), probe)
    for cls in ("a", "b", "mean"):
        err = norm = 0.0
        for k, c in enumerate(probe.classes):
            if cls in (c, "mean"):
                for i in range(probe.x.shape[2]):
                    for j in range(probe.x.shape[3]):
                        t = probe.x[k, :, i, j].double()
                        err += float(((t + 0.3) - t).norm())
                        norm += float(t.norm())
        assert table[cls]["normal_error"] == pytest.approx(err / norm, rel=1e-6)


def test_twins_keep_the_tokens_the_defect_changed():
    test = features(n_per_class=4)                  # the last image of each class is defective
    bad = torch.nonzero(test.labels == 1).flatten()
    twins = FeatureSet(test.features[bad].clone(), torch.zeros(len(bad), dtype=torch.long),
                       [test.classes[i] for i in bad.tolist()], None)
    test.features[bad, :, 2, 3] += 10.0             # a strong change at one token of every defective image
    test.features[bad[0], :, 0, 0] += 0.01          # a negligible one elsewhere
    probe = twin_probe(test, twins, min_change=0.2)
    assert probe.region.sum().item() == len(bad) and probe.region[:, 2, 3].all()
    assert probe.x.equal(twins.features.float()) and probe.x_new.equal(test.features[bad].float())
    assert copying(nn.Identity(), probe)["gain"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="pair up"):
        twin_probe(test, test)


# ----------------------------------------------------------------------------- in the trainer's curves

def test_every_curve_row_carries_the_copy_gain_and_the_auroc_per_defect_kind(tmp_path, one_thread):
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from adnotes.metrics import image_score, upsample
    from adnotes.train import anomaly_maps, copy_probe, load_model, train
    from fixtures import tiny_config, tiny_features

    train_set, test = tiny_features()
    test.defects = ["good" if y == 0 else ("scratch", "hole")[i % 4 == 1] for i, y in enumerate(test.labels.tolist())]
    cfg = tiny_config()
    run = train(cfg, "r", runs=tmp_path, features=(train_set, test))
    curves = pd.read_csv(run / "seed0" / "curves.csv")
    assert {"copy_gain", "copy_leak", "image_AUROC_scratch", "image_AUROC_hole"} <= set(curves.columns)
    assert curves[["copy_gain", "copy_leak", "normal_error"]].notna().all().all()

    final = curves[curves.step == curves.step.max()].set_index("cls")
    model = load_model(run, features=test)
    # the copy gain, from the definition: Σ_R <f(x') - f(x), x' - x> / Σ_R |x' - x|², pooled over the probe
    probe = copy_probe(test, cfg.eval)
    with torch.no_grad():
        d_out = (model(probe.x_new) - model(probe.x)).double()
    delta, inside = (probe.x_new - probe.x).double(), probe.region.unsqueeze(1)
    gain = ((d_out * delta) * inside).sum() / (delta.square() * inside).sum()
    assert final.loc["mean", "copy_gain"] == pytest.approx(gain.item(), rel=1e-4, abs=1e-6)
    # the AUROC of one kind: scikit-learn on that class's normal images and its images of that kind
    scores = image_score(upsample(anomaly_maps(model, test), test.masks.shape[-2:]), pool=cfg.eval.pool)
    for cls in ("a", "b"):
        idx = [i for i, c in enumerate(test.classes) if c == cls and test.defects[i] in ("good", "hole")]
        expected = roc_auc_score(test.labels[idx].numpy(), scores[idx].numpy())
        assert final.loc[cls, "image_AUROC_hole"] == pytest.approx(expected, abs=1e-6)


def test_the_linear_reference_is_the_gain_of_a_pca_autoencoder():
    from sklearn.decomposition import PCA

    from adnotes.copying import linear_gain

    fs = features(C=6)
    probe = transplant_probe(fs, n=10, block=2, seed=2)
    tokens = fs.features[fs.labels == 0].float().permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    for d in (1, 3, 6):
        pca = PCA(n_components=d).fit(tokens)

        class Projection(nn.Module):  # scikit-learn's reconstruction, token by token
            def forward(self, x):
                t = x.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
                rec = torch.from_numpy(pca.inverse_transform(pca.transform(t)))
                return rec.reshape(x.shape[0], x.shape[2], x.shape[3], 6).permute(0, 3, 1, 2)

        expected = copying(Projection(), probe)["gain"]
        assert linear_gain(fs, probe, [d])[d] == pytest.approx(expected, rel=1e-6)
    assert linear_gain(fs, probe, [6])[6] == pytest.approx(1.0)


def test_clone_init_starts_every_layer_from_the_same_attention_and_query():
    from adnotes.models import create

    torch.manual_seed(0)
    cloned = create("uniad", preset="quick", in_channels=16, feature_size=8, clone_init=True)
    torch.manual_seed(0)
    plain = create("uniad", preset="quick", in_channels=16, feature_size=8)
    for model, equal in ((cloned, True), (plain, False)):
        for stack in (model.encoder, model.decoder):
            w = [layer.attn1.mha.in_proj_weight if hasattr(layer, "attn1") else layer.attn.mha.in_proj_weight
                 for layer in stack]
            assert all(torch.equal(w[0], v) for v in w[1:]) == equal
        assert torch.equal(model.query_embed[0], model.query_embed[1]) == equal
        # Linear weights stay independent draws in both (the official initializer re-draws them per copy)
        assert not torch.equal(model.encoder[0].ffn[0].weight, model.encoder[1].ffn[0].weight)
