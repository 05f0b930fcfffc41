"""Notebook 00's bookkeeping (adnotes.tour) against independent references: brute-force token loops,
scikit-learn's AUROC, a hand-made generator manifest and hand-made dataset records."""
import json
from types import SimpleNamespace

import matplotlib
import matplotlib.pyplot
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from adnotes import tour
from adnotes.evaluation import evaluate_maps
from adnotes.features import FeatureSet

matplotlib.use("Agg")


def split(seed=0, classes=("a", "b"), n=4, C=3, grid=4, size=32):
    """Test split: odd images defective, each with a hand-placed mask covering patches by known fractions."""
    g = torch.Generator().manual_seed(seed)
    N = n * len(classes)
    labels = torch.tensor([i % 2 for i in range(N)])
    masks = torch.zeros(N, size, size, dtype=torch.bool)
    for i in torch.nonzero(labels).flatten().tolist():
        masks[i, 0:8, 0:8] = True        # patch (0, 0): all of it
        masks[i, 8:12, 8:12] = True      # patch (1, 1): 16 / 64 = exactly a quarter
        masks[i, 16:18, 16:20] = True    # patch (2, 2): 8 / 64, touched but not defective
    kinds = ["good" if l == 0 else ("hole", "scratch")[(i // 2) % 2] for i, l in enumerate(labels.tolist())]
    return FeatureSet(torch.randn(N, C, grid, grid, generator=g).half(), labels,
                      [c for c in classes for _ in range(n)], masks, defects=kinds)


def test_tokens_match_a_loop_over_images_and_positions():
    test = split()
    train = FeatureSet(torch.randn(6, 3, 4, 4).half(), torch.zeros(6, dtype=torch.long), ["a"] * 3 + ["b"] * 3, None)
    T = tour.tokens(train, test)
    rows, cls, frac, normal = [], [], [], []
    for i in range(len(test)):
        for y in range(4):
            for x in range(4):
                rows.append(test.features[i, :, y, x].float().numpy())
                cls.append(test.classes[i])
                frac.append(test.masks[i, 8 * y:8 * y + 8, 8 * x:8 * x + 8].float().mean().item())
                normal.append(test.labels[i].item() == 0)
    np.testing.assert_array_equal(T.test, np.stack(rows))
    np.testing.assert_array_equal(T.test_cls, cls)
    np.testing.assert_array_equal(T.defective, np.array(frac) >= 0.25)
    np.testing.assert_array_equal(T.from_normal, normal)
    assert T.touched == sum(f > 0 for f in frac) == 3 * 4           # 4 defective images, 3 patches each
    assert T.defective.sum() == 2 * 4                                # the full patch and the quarter
    assert T.train.shape == (6 * 16, 3) and list(T.train_cls[:16]) == ["a"] * 16 and T.classes == ["a", "b"]
    assert tour.tokens(train, test, threshold=0.5).defective.sum() == 4


def test_token_sample_draws_per_class_without_replacement_and_caps_at_the_pool():
    T = tour.tokens(FeatureSet(torch.zeros(1, 3, 4, 4), torch.zeros(1), ["a"], None), split())
    sample = tour.token_sample(T, np.random.default_rng(0), normal=10, defective=60)
    assert len(set(sample)) == len(sample)
    for cls in ("a", "b"):
        mine = sample[T.test_cls[sample] == cls]
        assert T.from_normal[mine].sum() == 10                       # 2 normal images x 16 tokens >= 10
        assert T.defective[mine].sum() == 2 * 2                      # the whole pool: 2 images x 2 tokens < 60


def test_kind_table_is_the_auroc_of_each_kind_against_the_normal_images():
    test = split(n=8, size=28)                                       # 4 -> 28: each grid point lands on a pixel
    maps = torch.rand(len(test), 4, 4, generator=torch.Generator().manual_seed(1))
    kinds = tour.kind_table(evaluate_maps(maps, test, pool=None, aupro=False, progress=False))
    score = maps.amax(dim=(1, 2)).numpy()                            # so bilinear upsampling keeps the max
    for cls in ("a", "b"):
        for kind in ("hole", "scratch"):
            keep = [i for i in range(len(test)) if test.classes[i] == cls and test.defects[i] in ("good", kind)]
            expected = roc_auc_score([test.defects[i] == kind for i in keep], score[keep])
            assert kinds.loc[cls, kind] == pytest.approx(expected)
    assert list(kinds.columns) == ["hole", "scratch"]
    assert kinds.loc["mean", "hole"] == pytest.approx((kinds.loc["a", "hole"] + kinds.loc["b", "hole"]) / 2)


def test_pick_examples_takes_the_first_normal_then_the_first_of_each_kind():
    kinds = ["scratch", "good", "hole", "good", "scratch", "hole", "stain"]
    ds = SimpleNamespace(records=[SimpleNamespace(cls=c, defect=k) for c in ("x", "y") for k in kinds])
    assert tour.pick_examples(ds) == {"x": [1, 2, 0, 6], "y": [8, 9, 7, 13]}
    assert tour.pick_examples(ds, per_class=1) == {"x": [1, 0], "y": [8, 7]}


def test_plots_return_the_numbers_they_show():
    T = tour.tokens(FeatureSet(torch.zeros(1, 3, 4, 4), torch.zeros(1), ["a"], None), split())
    sample = np.arange(len(T.test))
    fig, data = tour.plot_embedding({"view": np.random.default_rng(0).normal(size=(len(sample), 2))}, T, sample)
    assert data == {"n_tokens": len(T.test), "n_defective": 8}
    test = split(n=8)
    maps = torch.linalg.vector_norm(test.features.float(), dim=1)
    table = evaluate_maps(maps, test, aupro=False, progress=False, pool=None)
    fig, data = tour.plot_feature_norm(table, tour.kind_table(table), maps, tour.tokens(test, test))
    assert set(data["per_class"]) == {"a", "b", "mean"}
    assert data["per_defect_kind_image_AUROC"]["hole"] == pytest.approx(table.loc["mean", "image_AUROC_hole"])
    matplotlib.pyplot.close("all")


def test_manifest_summary_reads_the_generator_manifest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADNOTES_HOME", str(tmp_path))
    from adnotes.data.mini import MANIFEST_NAME

    images = [{"split": "test", "defect_type": "hole", "area": a, "strength": s} for a, s in ((1, 0.2), (3, 0.4), (9, 0.9))]
    images += [{"split": "test", "defect_type": "good", "area": 0, "strength": 0},
               {"split": "train", "defect_type": "hole", "area": 100, "strength": 1}]
    (tmp_path / "data" / "adnotes-mini").mkdir(parents=True)
    (tmp_path / "data" / "adnotes-mini" / MANIFEST_NAME).write_text(
        json.dumps({"params": {"image_size": 10, "version": 7, "seed": 3}, "images": images}))
    table = tour.manifest_summary("mini")
    assert "generator v7, seed 3" in capsys.readouterr().out
    assert list(table.index) == ["hole"]
    assert table.loc["hole", ("area_%", "count")] == 3
    assert table.loc["hole", ("area_%", "50%")] == 3.0              # 3 of 10 x 10 pixels
    assert table.loc["hole", ("strength", "max")] == 0.9
    assert tour.manifest_summary("mvtec") is None


def test_full_mode_falls_back_to_what_is_here(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADNOTES_HOME", str(tmp_path))             # no MVTec-AD under tmp_path/data
    full = SimpleNamespace(quick=False, home=tmp_path, device=torch.device("cpu"))
    assert tour.choose_dataset(SimpleNamespace(quick=True)) == "mini"
    assert tour.choose_dataset(full) == "mini" and "using adnotes-mini instead" in capsys.readouterr().out

    class Fake(torch.nn.Module):                                    # no hub weights: B4 cannot be had
        def __init__(self, name="efficientnet_lite0", weights="offline"):
            super().__init__()
            if name == "efficientnet_b4":
                raise RuntimeError("no internet\nmore")
            self.name = name

    monkeypatch.setattr(tour, "Backbone", Fake)
    assert tour.backbone(full).name == "efficientnet_lite0" and "keeping the offline" in capsys.readouterr().out
    assert tour.backbone(SimpleNamespace(quick=True, device=torch.device("cpu"))).name == "efficientnet_lite0"
