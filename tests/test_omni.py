"""Notebook 06's bookkeeping (adnotes.omni) against independent references: hand-made maps and names,
scikit-learn and scipy, brute-force ranks, Omni-AD's own map formula, hand counts of the MLP weights."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from adnotes import omni, results
from adnotes.data import Record
from adnotes.features import FeatureSet
from adnotes.models.omniad import OmniAD, OmniADConfig, OutputMLP, multiscale_cosine_map
from adnotes.train import Config, build_model
from fixtures import tiny_multiscale_features

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_omniad(channels=(4, 6, 8)) -> OmniAD:
    torch.manual_seed(0)
    return OmniAD(OmniADConfig.quick(in_channels=channels)).eval()


def with_defects(fs: FeatureSet) -> FeatureSet:
    fs.defects = ["good" if y == 0 else f"kind{i % 3}" for i, y in enumerate(fs.labels.tolist())]
    return fs


# ----------------------------------------------------------------------------- splits, blocks, ratios
def test_a_subset_holds_the_same_images_as_selecting_their_class():
    _, test = tiny_multiscale_features()
    test = with_defects(test)
    idx = torch.tensor([j for j, c in enumerate(test.classes) if c == "b"])
    got, want = omni.subset(test, idx), test.select("b")
    assert got.classes == want.classes and got.defects == want.defects
    assert torch.equal(got.labels, want.labels) and torch.equal(got.masks, want.masks)
    assert all(torch.equal(a, b) for a, b in zip(got.features, want.features))
    odd = omni.subset(test, torch.tensor([3, 0]))   # any order: image 3, then image 0
    assert odd.classes == [test.classes[3], test.classes[0]] and torch.equal(odd.features[2][1], test.features[2][0])


def test_the_last_block_of_each_stage_is_found_in_any_order():
    seen = {"stages.1.1": {}, "stages.0.2": {}, "stages.1.10": {}, "stages.0.1": {}, "stages.1.2": {}}
    assert omni.last_blocks(seen) == {0: "stages.0.2", 1: "stages.1.10"}


def test_the_defect_contrast_is_the_mean_on_the_defect_over_the_mean_elsewhere():
    norm_map = torch.arange(16.0).view(4, 4) + 1          # values 1..16
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, :4] = True                                   # the top-left 2×2 positions of the 4×4 map
    inside = [1.0, 2.0, 5.0, 6.0]
    outside = [v for v in range(1, 17) if v not in inside]
    assert omni.defect_contrast(norm_map, mask) == pytest.approx(np.mean(inside) / np.mean(outside))
    mask[:, :] = False
    mask[0, 0] = True                                     # a quarter of one position: not a defective position
    assert np.isnan(omni.defect_contrast(norm_map, mask))


def test_the_branch_table_has_a_row_per_stage_with_means_and_ratios():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, :4] = True
    twice_inside = torch.ones(4, 4)
    twice_inside[:2, :2] = 2.0
    parts = {0: {"global a": torch.full((2, 2), 3.0), "local b": twice_inside}}
    table = omni.branch_table(parts, mask)
    assert list(table.index) == ["stage 0 (2, 2)"]
    row = table.loc["stage 0 (2, 2)"]
    assert row["mean global a"] == pytest.approx(3.0) and row["mean local b"] == pytest.approx(20 / 16)
    assert row["defect/normal global"] == pytest.approx(1.0) and row["defect/normal local"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------- model, maps, scores
def test_the_stage_shapes_follow_the_model_from_bottleneck_to_the_teacher_maps():
    model, (_, test) = tiny_omniad(), tiny_multiscale_features()
    x = test.take(torch.tensor([0]))
    shapes = omni.stage_shapes(model, x)
    widths = model.config.widths
    assert shapes["neck: bottleneck (B, C, h, w)"] == (widths[0], 2, 2)        # 64 px at stride 32
    assert [shapes[f"stage {s} (B, H, W, C)"] for s in range(4)] == [(2 * 2 ** s, 2 * 2 ** s, w)
                                                                      for s, w in enumerate(widths)]
    assert shapes["outputs, finest first"] == [tuple(m.shape[1:]) for m in x]
    assert not model.neck._forward_hooks and not any(s._forward_hooks for s in model.stages)   # hooks removed


def test_full_maps_are_omniads_multiscale_cosine_map():
    model, (_, test) = tiny_omniad(), tiny_multiscale_features()
    cfg = Config.load(None, ["model.name=omniad", "eval.sigma=4", "eval.pool=null"])
    got = omni.full_maps(model, test, cfg)
    with torch.no_grad():
        want = torch.cat([multiscale_cosine_map(test.take(torch.tensor([j])), model(test.take(torch.tensor([j]))),
                                                size=64, sigma=4) for j in range(len(test))])
    assert got.shape == (len(test), 64, 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_scores_use_the_runs_image_score_per_class_like_scikit_learn():
    _, test = tiny_multiscale_features()
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(len(test), 64, 64, generator=g) + 0.5 * test.masks.float()
    cfg = SimpleNamespace(eval=SimpleNamespace(pool=None))
    table = omni.scores(maps, test, cfg)
    per_class = []
    for cls in ("a", "b"):
        idx = [j for j, c in enumerate(test.classes) if c == cls]
        per_class.append(roc_auc_score(test.labels[idx].numpy(), maps[idx].flatten(1).max(1).values.numpy()))
        assert table.loc[cls, "image_AUROC"] == pytest.approx(per_class[-1])
    assert table.loc["mean", "image_AUROC"] == pytest.approx(np.mean(per_class))


def test_the_fresh_mlp_copy_keeps_every_trained_weight_but_the_attention_mlps():
    _, test = tiny_multiscale_features()
    cfg = Config.load(None, ["model.name=omniad", "model.preset=quick", "data.multiscale=true"])
    torch.manual_seed(0)
    model = build_model(cfg, test).eval()
    fresh, dropped = omni.fresh_mlp_copy(model, cfg, test)
    mlp = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, OutputMLP)
           for p, _ in m.named_parameters()}
    assert set(dropped) == mlp and len(mlp) == 4 * 2 * 4    # 4 blocks × 2 MLPs × (2 weights + 2 biases)
    kept = fresh.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items() if k not in mlp)
    assert all(m.fresh for m in fresh.modules() if isinstance(m, OutputMLP)) and not fresh.training
    x = test.take(torch.tensor([0, 1]))
    with torch.no_grad():
        assert not torch.equal(fresh(x)[0], fresh(x)[0])     # fresh weights on every call
        torch.manual_seed(5)
        first = fresh(x)[0]
        torch.manual_seed(5)
        assert torch.equal(first, fresh(x)[0])


def test_the_class_mean_auroc_and_the_fresh_table_match_scikit_learn_and_ranks():
    _, test = tiny_multiscale_features()
    g = torch.Generator().manual_seed(1)
    trained = torch.rand(len(test), generator=g) + test.labels
    passes = [trained + torch.randn(len(test), generator=g) for _ in range(2)]
    classes = np.array(test.classes)

    def reference_auroc(s):
        return 100 * np.mean([roc_auc_score(test.labels.numpy()[classes == c], np.asarray(s)[classes == c])
                              for c in ("a", "b")])

    assert omni.class_mean_auroc(trained, test) == pytest.approx(reference_auroc(trained))
    table = omni.fresh_mlp_table(trained, passes, test)
    assert list(table.index) == ["trained MLP", "fresh MLP, pass 1", "fresh MLP, pass 2"]
    for k, s in enumerate(passes, start=1):
        rho = np.corrcoef(rankdata(s.numpy()), rankdata(trained.numpy()))[0, 1]   # Pearson of the ranks
        assert table.loc[f"fresh MLP, pass {k}", "Spearman ρ vs trained"] == pytest.approx(rho)
        assert table.loc[f"fresh MLP, pass {k}", "image_AUROC (%)"] == pytest.approx(reference_auroc(s))
    assert table.loc["trained MLP", "Spearman ρ vs trained"] == 1.0


def test_the_parameter_table_puts_the_whole_difference_in_the_attention_mlps():
    sizes = omni.parameter_table("quick")
    cfg = OmniADConfig.quick()
    by_hand = sum(depth * 2 * 2 * (w * w + w) for w, depth in zip(cfg.widths, cfg.depths))  # 2 MLPs of 2 Linear(C, C)
    official, ours = sizes.columns[:2]
    assert sizes.loc["attention MLPs", ours] == by_hand and sizes.loc["attention MLPs", official] == 0
    assert sizes.loc["total", "difference"] == by_hand
    assert (sizes["difference"].drop(["attention MLPs", "total"]) == 0).all()
    assert sizes.loc["total", ours] == sum(p.numel() for p in OmniAD(preset="quick").parameters())


# ----------------------------------------------------------------------------- tables and figures
def test_a_seed_table_is_that_seeds_metrics_json(tmp_path):
    for seed, value in ((0, 0.7), (1, 0.9)):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "metrics.json").write_text(
            json.dumps({"a": {"image_AUROC": value}, "mean": {"image_AUROC": value}}))
    assert omni.seed_table(tmp_path).loc["a", "image_AUROC"] == 0.7
    assert omni.seed_table(tmp_path, seed=1).loc["mean", "image_AUROC"] == 0.9


def test_the_comparison_note_quotes_both_configs():
    cfg = Config.load(None, ["train.steps=10", "train.batch_size=4", "train.lr=0.002", "eval.sigma=4"])
    ucfg = Config.load(None, ["train.steps=20", "train.batch_size=8", "train.lr=0.001", "eval.pool=16"])
    note = omni.comparison_note(cfg, ucfg)
    assert "Omni-AD 10 steps at batch 4, lr 0.002; UniAD 20 steps at batch 8, lr 0.001" in note
    assert "σ = 4 smoothed map" in note and "16×16 average-pooled" in note


def test_the_rank_in_class_counts_the_lower_scores_of_the_same_class():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(12, generator=g)
    classes = ["a", "b", "c"] * 4
    got = omni.rank_in_class(scores, classes)
    for j in range(12):
        same = [k for k in range(12) if classes[k] == classes[j]]
        assert got[j] == pytest.approx(sum(scores[k] < scores[j] for k in same) / (len(same) - 1))


class Pictures:
    """A stand-in for the test images: records and an ImageNet-normalised picture per index."""

    def __init__(self, test: FeatureSet):
        self.records = [Record(image=f"/data/{c}/{j:03d}.png", label=int(y), cls=c, defect="good" if y == 0 else "cut")
                        for j, (c, y) in enumerate(zip(test.classes, test.labels.tolist()))]

    def __getitem__(self, j):
        return {"image": torch.zeros(3, 64, 64)}


def test_the_map_figure_saves_the_ranks_quantiles_and_table_it_draws():
    _, test = tiny_multiscale_features()
    om = omni.OmniRun(run=None, config=None, train=None, test=test, images=Pictures(test), model=None)
    g = torch.Generator().manual_seed(4)
    full = {"UniAD": torch.rand(len(test), 64, 64, generator=g), "Omni-AD": torch.rand(len(test), 64, 64, generator=g)}
    comparison = pd.DataFrame({("image_AUROC", "UniAD"): {"a": 70.0}, ("image_AUROC", "Omni-AD"): {"a": 80.0}})
    picked = [1, 9]
    fig, data = omni.plot_maps(full, {"UniAD": None, "Omni-AD": None}, om, picked, comparison)
    assert data["shown"] == ["/data/a/001.png", "/data/b/009.png"]
    for name, m in full.items():
        assert data["vmax"][name] == pytest.approx(float(np.quantile(m.numpy(), 0.999)))
        score = m.flatten(1).max(1).values
        for row, j in enumerate(picked):
            same = [k for k in range(len(test)) if test.classes[k] == test.classes[j]]
            assert data["rank_in_class"][name][row] == pytest.approx(
                sum(score[k] < score[j] for k in same).item() / (len(same) - 1))
    assert data["table"] == {"image_AUROC | UniAD": {"a": 70.0}, "image_AUROC | Omni-AD": {"a": 80.0}}
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image + ground truth", "UniAD (quick)", "Omni-AD (quick)"]


def test_the_branch_figure_saves_the_probe_and_the_table_it_is_given():
    _, test = tiny_multiscale_features()
    om = omni.OmniRun(run=None, config=None, train=None, test=test, images=Pictures(test), model=None)
    parts = {s: {"global g": torch.rand(2 ** s, 2 ** s), "local l": torch.rand(2 ** s, 2 ** s)} for s in (1, 2)}
    probe = pd.DataFrame({"image_AUROC": [80.0, 60.0], "pixel_AUROC": [90.0, 85.0]}, index=["none", "drop local"])
    table = omni.branch_table(parts, test.masks[1])
    fig, data = omni.plot_branches(om, 1, parts, probe, table, n_probe=8)
    assert data["image"] == "/data/a/001.png"
    assert data["probe"] == {"none": {"image_AUROC": 80.0, "pixel_AUROC": 90.0},
                             "drop local": {"image_AUROC": 60.0, "pixel_AUROC": 85.0}}
    assert list(data["branches"]) == ["stage 1 (2, 2)", "stage 2 (4, 4)"]
    assert any("(8 test images)" in ax.get_title() for ax in fig.axes)


@pytest.mark.skipif(not results.cached("omniad_quick"), reason="needs the results cache (results/omniad_quick)")
def test_load_reads_the_cached_run_its_features_images_and_model():
    om = omni.load(results.cached("omniad_quick"))
    assert om.config.data.multiscale and om.test.multiscale and not om.model.training
    assert [r.cls for r in om.images.records] == om.test.classes
    assert om.test.labels.tolist() == [r.label for r in om.images.records]
