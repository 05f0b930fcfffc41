"""Notebook 05's bookkeeping (adnotes.semantic) against independent references: scikit-learn's digits and
AUROC, constant and hand-made maps, a bank that holds the test tokens, the paper's own means."""
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import nn

from adnotes import semantic
from adnotes.features import FeatureSet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_tab3_mean_row_is_the_mean_of_the_four_splits():
    table = semantic.paper_table()
    assert list(table.index)[-1] == "mean" and table.index.name == "normal classes"
    for method in table.columns.drop("UniAD ± (5 seeds)"):
        assert table[method].iloc[:4].mean() == pytest.approx(table.loc["mean", method], abs=0.1), method


def test_class_ids_find_each_digit_by_its_pixels():
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))[:40]
    images = np.repeat((digits.images[order] * (255 / 16)).astype(np.uint8)[..., None], 3, axis=-1)
    dataset = SimpleNamespace(records=[SimpleNamespace(image=im) for im in images])
    got = semantic.class_ids(dataset, SimpleNamespace(dataset="digits", root=None))
    assert np.array_equal(got, digits.target[order])


def test_class_names_and_counts():
    assert semantic.class_names("digits") == [str(d) for d in range(10)]
    assert semantic.class_names("cifar10")[0] == "airplane"
    ids = np.array([0, 0, 3, 9, 9, 9])
    counts = semantic.class_counts(ids, semantic.class_names("digits"), [0, 1, 2, 3, 4]).set_index("class")
    assert counts.loc["9", "test images"] == 3 and counts.loc["5", "test images"] == 0
    assert counts["test images"].sum() == len(ids)
    assert list(counts.loc[["4", "5"], "role"]) == ["normal", "anomalous"]


def features(n=10, c=3, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return FeatureSet(torch.randn(n, c, size, size, generator=g).half(), torch.tensor([0, 1] * (n // 2)),
                      ["x"] * n, None)


def test_image_scores_are_the_means_of_the_upsampled_maps():
    fs = features()
    constant = semantic.image_scores(lambda x: x[:, 0, :1, :1].expand(-1, 4, 4), fs, 16, batch=3)
    assert np.allclose(constant, fs.features[:, 0, 0, 0].float().numpy(), atol=1e-6)
    got = semantic.image_scores(lambda x: x.pow(2).sum(1), fs, 16, batch=4)
    maps = fs.features.float().pow(2).sum(1, keepdim=True)                       # (N, 1, h, w)
    want = F.interpolate(maps, size=(16, 16), mode="bilinear", align_corners=True).mean(dim=(1, 2, 3))
    assert np.allclose(got, want.numpy(), rtol=1e-5)


class Scale(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        self.config = SimpleNamespace(loss="mse")

    def forward(self, x):
        return self.a * x


def test_model_scores_of_a_scaling_model_and_knn_scores_of_a_bank_holding_the_test_tokens():
    fs = features()
    got = semantic.model_scores(Scale(0.5), fs, 4)            # same size: no upsampling to undo
    x = fs.features.float()
    want = ((0.5 * x - x) ** 2).sum(1).sqrt().mean(dim=(1, 2))   # per-token L2 error, then the image mean
    assert np.allclose(got, want.numpy(), rtol=1e-4)
    bank = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    assert np.allclose(semantic.knn_scores(bank, fs, 8), 0, atol=1e-3)
    far = semantic.knn_scores(bank + 100, fs, 8)
    assert (far > 50).all()


def scores_and_labels(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 30 + [1] * 30)
    ids = np.concatenate([rng.integers(0, 2, 30), rng.integers(2, 4, 30)])
    scores = {"UniAD": rng.normal(size=60) + labels, "UniAD untrained": rng.normal(size=60) + 0.3 * labels,
              "kNN": rng.normal(size=60) + 2 * labels}
    return scores, labels, ids


def test_per_class_table_against_sklearn():
    scores, labels, ids = scores_and_labels()
    names = ["a", "b", "c", "d"]
    table = semantic.per_class_table(scores, labels, ids, names, [0, 1])
    assert list(table.index) == names + ["all"]
    for k, name in enumerate(names):
        other = 1 if k < 2 else 0
        keep = (ids == k) | (labels == other)
        for label, s in scores.items():
            assert table.loc[name, label] == pytest.approx(100 * roc_auc_score(labels[keep], s[keep]))
        assert table.loc[name, "mean UniAD score"] == pytest.approx(scores["UniAD"][ids == k].mean())
    assert table.loc["all", "kNN"] == pytest.approx(100 * roc_auc_score(labels, scores["kNN"]))
    assert list(table["role"][:4]) == ["normal", "normal", "anomalous", "anomalous"]


def test_verdict_numbers_are_sklearns():
    scores, labels, _ = scores_and_labels()
    auc = {k: 100 * roc_auc_score(labels, s) for k, s in scores.items()}
    rising = pd.Series([0.5, 0.6, 0.7], index=[0, 100, 200])
    text = semantic.verdict(scores, labels, rising, 123)
    assert f"training adds {auc['UniAD'] - auc['UniAD untrained']:+.1f} points" in text
    assert f"{abs(auc['UniAD'] - auc['kNN']):.1f} points below" in text and "bank of 123 tokens" in text
    assert "step 200" in text and "may not have converged" in text
    assert "converged" not in semantic.verdict(scores, labels, pd.Series([0.5, 0.8, 0.7], index=[0, 100, 200]), 1)


def test_load_run_falls_back_to_the_digits_without_cifar10(monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(semantic, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("no cifar")))
    monkeypatch.setattr(semantic.results, "load_or_train", lambda name, s: asked.append((name, s.quick)) or Path(name))
    full = SimpleNamespace(quick=False, device=torch.device("cpu"))
    run, session = semantic.load_run("semantic_digits", full)
    assert run == Path("semantic_digits") and session.quick and asked == [("semantic_digits", True)]
    assert "CIFAR-10 is not on this machine" in capsys.readouterr().out
    quick = SimpleNamespace(quick=True, device=torch.device("cpu"))
    assert semantic.load_run("semantic_digits", quick) == (Path("semantic_digits"), quick)


def test_plots_record_their_numbers():
    scores, labels, ids = scores_and_labels()
    data = SimpleNamespace(dataset="digits", normal=[0, 1], image_size=8)
    names = ["a", "b", "c", "d"]
    dataset = type("D", (), {"__getitem__": lambda self, i: {"image": torch.zeros(3, 8, 8)}})()
    fig, numbers = semantic.plot_samples(dataset, ids, names, data)
    plt.close(fig)
    assert numbers == {"dataset": "digits", "normal": [0, 1]}
    table = semantic.per_class_table(scores, labels, ids, names, data.normal)
    curve = pd.Series([0.55, 0.7, 0.8], index=[0, 50, 100])
    fig, numbers = semantic.plot_scores(table, scores, labels, curve, data, quick=True)
    plt.close(fig)
    assert numbers["overall"] == {k: round(100 * roc_auc_score(labels, s), 1) for k, s in scores.items()}
    assert numbers["untrained_floor_curve"] == 0.55 and numbers["curve"] == {0: 0.55, 50: 0.7, 100: 0.8}
    assert numbers["paper_tab3_uniad_mean"] == 87.2
    assert numbers["per_class"][-1]["class"] == "all" and numbers["per_class"][-1]["mean UniAD score"] is None
