"""Notebook 01's bookkeeping (adnotes.shortcut) against independent references: hand-made curves.csv
files, brute-force token loops, scikit-learn, and the verdict's numbers against the tables it reads."""
import re
import statistics
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from adnotes import results, shortcut
from adnotes.copying import copying, transplant_probe
from adnotes.features import FeatureSet

pytestmark = pytest.mark.usefixtures("one_thread")


def features(n_per_class=6, classes=("a", "b", "c"), C=5, H=6, W=6, seed=0) -> FeatureSet:
    """Normal and defective tokens whose class means differ, so that transplants change something."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * len(classes)
    labels = torch.tensor(([0] * (n_per_class - 1) + [1]) * len(classes))
    means = torch.arange(len(classes)).repeat_interleave(n_per_class).float().view(-1, 1, 1, 1)
    return FeatureSet((torch.randn(n, C, H, W, generator=g) + 3 * means).half(), labels,
                      [c for c in classes for _ in range(n_per_class)], None)


class Scale(nn.Module):
    """f(x) = a·x: Δf = a·δ, so g = a, no leak, and the error is |1 − a|·‖x‖ per token."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x):
        return self.a * x


def write_curves(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "curves.csv", index=False)


# ----------------------------------------------------------------------------- final rows and the cache

def test_final_rows_are_the_last_step_mean_and_std_over_seeds(tmp_path):
    finals = {0: (0.9, 0.01, 0.70, 0.85), 1: (0.8, 0.03, 0.74, 0.86), 2: (0.6, 0.02, 0.78, 0.90)}
    for seed, (g, leak, image, pixel) in finals.items():
        write_curves(tmp_path / f"seed{seed}", [  # rows out of order: the last *step* counts, not the last row
            {"cls": "mean", "step": 200, "copy_gain": g, "copy_leak": leak, "image_AUROC": image, "pixel_AUROC": pixel},
            {"cls": "a", "step": 200, "copy_gain": 0.0, "copy_leak": 9.0, "image_AUROC": 0.1, "pixel_AUROC": 0.1},
            {"cls": "mean", "step": 100, "copy_gain": 0.5, "copy_leak": 0.5, "image_AUROC": 0.5, "pixel_AUROC": 0.5},
        ])
    got = shortcut.final_rows(tmp_path)
    assert got["step"] == 200 and got["seeds"] == 3
    for k, metric in enumerate(("copy_gain", "copy_leak", "image_AUROC", "pixel_AUROC")):
        values = [v[k] for v in finals.values()]
        assert got[metric] == pytest.approx(statistics.mean(values))
        assert got[f"{metric} std"] == pytest.approx(statistics.stdev(values))


def test_a_run_made_before_the_copy_gain_column_gives_nan(tmp_path):
    write_curves(tmp_path / "seed0", [{"cls": "mean", "step": 10, "image_AUROC": 0.7, "pixel_AUROC": 0.8}])
    got = shortcut.final_rows(tmp_path)
    assert np.isnan(got["copy_gain"]) and got["image_AUROC"] == pytest.approx(0.7)


def test_a_missing_mechanism_recipe_is_skipped_with_one_line_and_never_trained(tmp_path, monkeypatch, capsys):
    write_curves(tmp_path / "seed0", [{"cls": "mean", "step": 5, "copy_gain": 0.4, "copy_leak": 0.0,
                                       "image_AUROC": 0.7, "pixel_AUROC": 0.8}])
    monkeypatch.setattr(results, "cached", lambda name, quick=True: tmp_path if name == "anatomy_nma" else None)
    monkeypatch.setattr(results, "load_or_train", lambda *a, **k: pytest.fail("a mechanism recipe was trained"))
    table = shortcut.mechanism_table({"anatomy_transformer": "vanilla", "anatomy_nma": "+ mask"},
                                     SimpleNamespace(quick=True))
    assert list(table.index) == ["+ mask"] and table.loc["+ mask", "copy_gain"] == pytest.approx(0.4)
    assert capsys.readouterr().out.strip() == ("anatomy_transformer: not in the results cache yet: "
                                               "`python -m adnotes results --only anatomy_transformer` makes it")
    shortcut.mechanism_table({"anatomy_jitter": "j"}, SimpleNamespace(quick=False))
    assert "--only anatomy_jitter --full` makes it" in capsys.readouterr().out


def test_the_mask_cost_table_reads_each_seeds_last_step_per_class_and_kind(tmp_path, monkeypatch, capsys):
    """Hand-made curves of the two mask-cost recipes: per class, the mean over seeds of each seed's last step
    (seed 1 evaluated once more than seed 0), without → with the mask; the kind rows average their classes."""
    rng = np.random.default_rng(0)
    classes = {"brick": "texture", "grass": "texture", "cat": "object", "cup": "object", "rocket": "object"}
    truth = {}   # (recipe, cls) -> [(normal_error, image_AUROC) at each seed's last step]
    for name in shortcut.MASK_COST:
        for seed, last in ((0, 400), (1, 600)):
            rows = []
            for step in (200, last):
                for cls in [*classes, "mean"]:
                    err, auroc, g = rng.uniform(0.1, 0.9), rng.uniform(0.5, 1.0), rng.uniform(0.0, 0.5)
                    rows.append({"cls": cls, "step": step, "image_AUROC": auroc, "normal_error": err, "copy_gain": g})
                    if step == last and cls != "mean":
                        truth.setdefault((name, cls), []).append((err, auroc, g))
            write_curves(tmp_path / name / f"seed{seed}", rows)
    monkeypatch.setattr(results, "cached", lambda name, quick=True: tmp_path / name if name in shortcut.MASK_COST else None)
    monkeypatch.setattr(results, "load_or_train", lambda *a, **k: pytest.fail("a mask-cost recipe was trained"))
    table = shortcut.mask_cost_table(SimpleNamespace(quick=True))
    assert list(table.index) == ["brick", "grass", "cat", "cup", "rocket", "textures", "objects"]
    assert table["kind"].tolist() == [*classes.values(), "texture", "object"]
    for cls in classes:
        for name, label in (("maskcost_transformer", "no mask"), ("maskcost_nma", "mask")):
            assert table.loc[cls, f"normal error, {label}"] == pytest.approx(statistics.mean(e for e, _, _ in truth[name, cls]))
            assert table.loc[cls, f"image AUROC, {label}"] == pytest.approx(statistics.mean(a for _, a, _ in truth[name, cls]))
            assert table.loc[cls, f"g, {label}"] == pytest.approx(statistics.mean(g for _, _, g in truth[name, cls]))
        assert table.loc[cls, "Δ normal error"] == pytest.approx(
            statistics.mean(e for e, _, _ in truth["maskcost_nma", cls]) - statistics.mean(e for e, _, _ in truth["maskcost_transformer", cls]))
    assert table.attrs["runs"] == {"no mask": {"step": 600, "seeds": 2}, "mask": {"step": 600, "seeds": 2}}
    for row, members in (("textures", ["brick", "grass"]), ("objects", ["cat", "cup", "rocket"])):
        for column in ("normal error, no mask", "normal error, mask", "image AUROC, mask", "Δ image AUROC", "Δ g"):
            assert table.loc[row, column] == pytest.approx(statistics.mean(table.loc[c, column] for c in members))
    assert capsys.readouterr().out == ""

    # one recipe missing: its columns are NaN, one line says how to make it; both missing: an empty table
    monkeypatch.setattr(results, "cached", lambda name, quick=True: tmp_path / name if name == "maskcost_nma" else None)
    table = shortcut.mask_cost_table(SimpleNamespace(quick=False))
    assert table["normal error, no mask"].isna().all() and table["normal error, mask"].notna().all()
    assert capsys.readouterr().out.strip() == ("maskcost_transformer: not in the results cache yet: "
                                               "`python -m adnotes results --only maskcost_transformer --full` makes it")
    monkeypatch.setattr(results, "cached", lambda name, quick=True: None)
    assert shortcut.mask_cost_table(SimpleNamespace(quick=True)).empty
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_the_mask_cost_recipes_are_the_anatomy_rows_on_mini_objects_with_one_longer_schedule():
    schedule = ("train.steps=", "eval.every=")
    for row in ("transformer", "nma"):
        recipe, anatomy = results.RECIPES[f"maskcost_{row}"], results.RECIPES[f"anatomy_{row}"]
        assert recipe.config == anatomy.config and not recipe.weights
        assert recipe.notebooks == ("01_identity_shortcut",)
        for mode in ("quick", "full"):
            ours, theirs = getattr(recipe, mode), getattr(anatomy, mode)
            assert [o for o in ours if o != "data.dataset=mini_objects" and not o.startswith(schedule)] \
                == [o for o in theirs if not o.startswith(schedule)]
            assert "data.dataset=mini_objects" in ours and "train.seeds=[0,1,2]" in ours
        assert "train.steps=3000" in recipe.quick   # both rows: the same, longer schedule


# ----------------------------------------------------------------------------- measurements on a probe

def test_block_errors_against_a_token_by_token_loop():
    probe = transplant_probe(features(), n=8, block=2, seed=1)
    scaled = shortcut.block_errors(Scale(0.25), probe)
    assert scaled["gain"] == pytest.approx(0.25) and scaled["leak"] == pytest.approx(0.0, abs=1e-12)
    assert scaled["normal_error"] == pytest.approx(0.75)   # |1 − a|·Σ‖x‖ / Σ‖x‖

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 7, 3, padding=1), nn.Tanh(), nn.Conv2d(7, 5, 1))
    got = shortcut.block_errors(model, probe)
    after = before = 0.0
    with torch.no_grad():
        out, out_new = model(probe.x).numpy(), model(probe.x_new).numpy()
    x, x_new = probe.x.numpy(), probe.x_new.numpy()
    for k in range(len(probe)):
        for i, j in zip(*np.nonzero(probe.region[k].numpy())):
            after += np.linalg.norm(out_new[k, :, i, j] - x_new[k, :, i, j])
            before += np.linalg.norm(out[k, :, i, j] - x[k, :, i, j])
    assert got["visibility"] == pytest.approx(after / before, rel=1e-6)
    assert got["normal_error"] == pytest.approx(np.linalg.norm(out - x, axis=1).sum() / np.linalg.norm(x, axis=1).sum(),
                                                rel=1e-6)
    assert got["gain"] == pytest.approx(copying(model, probe)["gain"], rel=1e-9)


def test_per_class_models_pool_their_gains_weighted_by_the_change_energy():
    probe = transplant_probe(features(), n=12, block=2, seed=4)
    scales = {"a": 0.2, "b": 0.5, "c": 0.9}
    got = shortcut.donor_gains({c: Scale(a) for c, a in scales.items()}, probe)
    num = den = 0.0
    for k in range(len(probe)):  # Σ_c a_c E_c / Σ_c E_c, E = Σ_R ‖δ‖², image by image
        energy = ((probe.x_new[k] - probe.x[k]).double().square() * probe.region[k]).sum().item()
        num, den = num + scales[probe.classes[k]] * energy, den + energy
    assert got["gain"] == pytest.approx(num / den, rel=1e-6) and got["leak"] == pytest.approx(0.0, abs=1e-12)
    model = nn.Sequential(nn.Conv2d(5, 5, 3, padding=1), nn.Tanh())
    assert shortcut.donor_gains({None: model}, probe)["gain"] == pytest.approx(copying(model, probe)["gain"])


# ----------------------------------------------------------------------------- a real (tiny) run

def test_kept_table_reads_logged_steps_and_scores_the_others_like_scikit_learn(tmp_path):
    from sklearn.metrics import roc_auc_score

    from adnotes.metrics import image_score, upsample
    from adnotes.train import anomaly_maps, copy_probe, load_model, train
    from fixtures import tiny_config, tiny_features

    train_set, test = tiny_features()
    test.defects = ["good" if y == 0 else ("scratch", "hole")[i % 4 == 1] for i, y in enumerate(test.labels.tolist())]
    cfg = tiny_config()
    cfg.eval.keep_steps = [3]   # evaluations at 0, 2, 4, 6: step 3 is kept but never logged
    run = train(cfg, "r", runs=tmp_path, features=(train_set, test))
    sc = shortcut.Shortcut(SimpleNamespace(mode="quick", quick=True), {"uniad": run}, train_set, test, None,
                           copy_probe(test, cfg.eval), cfg)
    kept = shortcut.kept_table(sc)
    assert list(kept.loc["uniad"].index) == [0, 3, 6]
    curves = pd.read_csv(run / "seed0" / "curves.csv").query("cls == 'mean'").set_index("step")
    for step in (0, 6):  # logged: the curve's own row
        assert kept.loc[("uniad", step), "image_AUROC_hole"] == pytest.approx(curves.loc[step, "image_AUROC_hole"])
    model = load_model(run, step=3, features=test)   # not logged: scored now, as scikit-learn does
    scores = image_score(upsample(anomaly_maps(model, test), test.masks.shape[-2:]), pool=cfg.eval.pool)
    per_class = []
    for cls in ("a", "b"):
        idx = [i for i, c in enumerate(test.classes) if c == cls and test.defects[i] in ("good", "scratch")]
        per_class.append(roc_auc_score(test.labels[idx].numpy(), scores[idx].numpy()))
    assert kept.loc[("uniad", 3), "image_AUROC_scratch"] == pytest.approx(np.mean(per_class), abs=1e-6)
    assert kept.loc[("uniad", 3), "copy_gain"] == pytest.approx(copying(model, sc.probe)["gain"], rel=1e-6)
    assert kept.loc[("uniad", 6), "copy_gain"] == pytest.approx(curves.loc[6, "copy_gain"], rel=1e-4, abs=1e-6)

    stats = shortcut.auroc_stats(sc)   # best/final from the curve, by hand
    image = 100 * curves.image_AUROC
    row = stats.loc[("uniad", "image")]
    assert row["best step"] == image.idxmax() and row["final"] == pytest.approx(image.loc[6])
    assert row["drop"] == pytest.approx(image.max() - image.loc[6]) and np.isnan(row["spread"])  # one seed
    for plot in (shortcut.plot_copy_gain(sc, kept), shortcut.auroc_curves(sc)):
        assert plot[0].axes

    from scipy.stats import entropy

    from adnotes.models.uniad import recording_attention

    attn = shortcut.attention_by_step(sc, ("uniad",), every=2)   # every other test image, at each kept step
    assert list(attn.columns) == [("uniad", 0), ("uniad", 3), ("uniad", 6)]
    with torch.no_grad(), recording_attention(model) as weights:
        model(test.take(torch.arange(0, len(test), 2)))
    for name, a in weights.items():   # step 3, by hand: exp(Shannon entropy) per row, the diagonal
        assert attn.loc[(name, "effective keys"), ("uniad", 3)] == pytest.approx(np.exp(entropy(a.numpy(), axis=-1)).mean(), rel=1e-5)
        assert attn.loc[(name, "share on itself"), ("uniad", 3)] == pytest.approx(np.einsum("bii->bi", a.numpy()).mean(), abs=1e-6)



def test_seed_by_seed_keeps_each_seeds_own_rows_at_every_kth_step_and_the_last(tmp_path):
    made = {}
    for seed, shift in ((0, 0.0), (3, 0.1)):   # seeds need not be 0..n-1
        rows = []
        for step in range(0, 5001, 500):
            made[(seed, step)] = {"loss": 20 - step / 500 - 10 * shift, "normal_error": 1 - step / 1e4,
                                  "copy_gain": shift + step / 1e5, "image_AUROC": 0.6 + shift + step / 1e5,
                                  "pixel_AUROC": 0.7 + step / 1e5}
            rows += [{"cls": "mean", "step": step, **made[(seed, step)]},
                     {"cls": "a", "step": step, **{k: -1.0 for k in made[(seed, step)]}}]
        write_curves(tmp_path / f"seed{seed}", rows[::-1])   # out of order on disk
    sc = SimpleNamespace(runs={"uniad": tmp_path}, session=SimpleNamespace(mode="quick"))
    fig, table = shortcut.seed_by_seed(sc, "uniad", every=2000)
    assert list(table.index) == [(s, t) for s in (0, 3) for t in (0, 2000, 4000, 5000)]
    for (seed, step), row in table.iterrows():
        want = made[(seed, step)]
        assert row["loss"] == pytest.approx(want["loss"]) and row["copy_gain"] == pytest.approx(want["copy_gain"])
        assert row["image_AUROC"] == pytest.approx(100 * want["image_AUROC"])
        assert row["pixel_AUROC"] == pytest.approx(100 * want["pixel_AUROC"])
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2, 2]   # one line per seed in each panel, none averaged


# ----------------------------------------------------------------------------- the verdict

def tables(g, final_image, final_std=(0.2, 0.3, 0.1, 0.1)):
    models = ("mlp", "cnn", "transformer", "uniad")
    kept = pd.DataFrame([{"model": m, "step": s, "copy_gain": gm * s / 100, "copy_leak": 0.0, "twin_gain": gm / 2,
                          "visibility": 1 + (1 - gm) / 2, "normal_error": 0.3 + 0.1 * k, "image_AUROC": 0.7,
                          "image_AUROC_hole": 0.6 + 0.1 * k, "image_AUROC_stain": 0.9 - 0.1 * k}
                         for k, (m, gm) in enumerate(zip(models, g)) for s in (0, 50, 100)]).set_index(["model", "step"])
    stats = pd.DataFrame([{"model": m, "AUROC": "image", "untrained": 60.0, "best step": 50 if m == "cnn" else 100,
                           "best": f + (1.5 if m == "cnn" else 0), "final step": 100, "final": f, "final std": sd,
                           "drop": 1.5 if m == "cnn" else 0.0, "spread": sd}
                          for m, f, sd in zip(models, final_image, final_std)]).set_index(["model", "AUROC"])
    return kept, stats


def test_the_verdict_quotes_the_tables_and_judges_by_them():
    kept, stats = tables(g=(0.9, 0.6, 0.4, 0.02), final_image=(76.1, 80.8, 78.6, 74.9))
    text = shortcut.verdict(kept, stats)
    assert "mlp 0.90, cnn 0.60, transformer 0.40, uniad 0.02" in text   # g at the last kept step (100)
    assert "holds on these runs" in text and "does NOT hold" not in text.split("\n")[1]
    assert "twins, g at the last step: mlp 0.45, cnn 0.30, transformer 0.20, uniad 0.01" in text
    # UniAD against the best baseline (cnn): 74.9 − 80.8 = −5.9, spread max(0.1, 0.3) = 0.3
    assert "UniAD ends behind the best baseline, cnn: -5.9 points (seed spread 0.3)" in text
    assert "for: cnn (82.3 at step 50 → 80.8)" in text   # the only drop beyond its spread
    assert "copies most (mlp, g 0.90) ends at 76.1" in text and "least (uniad, g 0.02) at 74.9" in text
    assert "does NOT follow g" in text   # 74.9 < 76.1
    # per kind: hole is best for the last model (0.6 + 0.3), stain for the first (0.9)
    assert "hole: uniad 90.0" in text and "stain: mlp 90.0" in text
    numbers = [float(v) for v in re.findall(r"mlp (\d\.\d\d)", text)]
    assert numbers[:2] == [0.90, 0.45]
    assert "Width sweep: not enough" in text and "Anatomy of UniAD: not enough" in text

    kept, stats = tables(g=(0.9, 0.6, 0.1, 0.3), final_image=(70.0, 71.0, 72.0, 79.0))
    text = shortcut.verdict(kept, stats)
    assert "does NOT hold on these runs" in text   # UniAD copies more than the transformer
    assert "UniAD ends ahead of the best baseline, transformer: +7.0 points" in text
    assert "AUROC follows g here" in text   # the least copying model (transformer, 0.10) beats the most (mlp)

    # a long recipe of which one seed has landed: no spread, so no judged drop, but the turn is still said
    kept, stats = tables(g=(0.9, 0.6, 0.4, 0.02), final_image=(76.1, 80.8, 78.6, 74.9),
                         final_std=(0.2, np.nan, 0.1, np.nan))
    text = shortcut.verdict(kept, stats)
    assert "UniAD ends behind the best baseline, cnn: -5.9 points (one seed: no spread to judge by)" in text
    assert "more than the seed spread for: no model." in text
    assert "below their peak at the end: cnn (82.3 at step 50 → 80.8)." in text


def test_the_verdict_reads_the_width_anatomy_and_donor_tables():
    kept, stats = tables(g=(0.9, 0.6, 0.4, 0.02), final_image=(76.1, 80.8, 78.6, 74.9))
    width = pd.DataFrame({"copy_gain": [0.5, np.nan, 0.8, 0.95], "image_AUROC": [0.74, np.nan, 0.75, 0.72],
                          "linear_gain": [0.6, 0.8, 0.95, 1.0]}, index=pd.Index([32, 64, 128, 384], name="d"))
    anatomy = pd.DataFrame({"copy_gain": [0.4, 0.1], "copy_gain std": [0.05, 0.02], "image_AUROC": [0.78, 0.76]},
                           index=["vanilla", "+ mask"])
    donors = pd.DataFrame({"g, donor: other class": [0.78, 0.53], "g, donor: same class": [0.68, 0.82],
                           "image_AUROC": [0.75, 0.82]}, index=["unified", "separate"])
    text = shortcut.verdict(kept, stats, width=width, anatomy=anatomy, donors=donors)
    assert ("g goes from 0.50 (d = 32) to 0.95 (d = 384), rising with d; the linear reference from 0.60 to 1.00; "
            "image AUROC from 74.0 to 72.0") in text
    assert "vanilla: g 0.40 ± 0.05, image AUROC 78.0; + mask: g 0.10 ± 0.02, image AUROC 76.0" in text
    assert "unified: other class 0.78, same class 0.68; separate: other class 0.53, same class 0.82" in text
    width.loc[128, "copy_gain"] = 0.3
    assert "not monotone" in shortcut.verdict(kept, stats, width=width)
    assert "What the neighbour mask costs: not in the results cache." in text
    cost = pd.DataFrame({"kind": ["texture", "object", "texture", "object"],
                         "Δ normal error": [0.02, -0.01, 0.02, -0.01], "Δ image AUROC": [-0.03, 0.01, -0.03, 0.01]},
                        index=["brick", "cup", "textures", "objects"])
    text = shortcut.verdict(kept, stats, mask_cost=cost)
    assert ("(with − without, mean per kind): textures: normal error +0.020, image AUROC -3.0 points; objects: "
            "normal error -0.010, image AUROC +1.0 points. It raises the normal error in 1 of 2 classes, by at most "
            "0.020.") in text
    cost["g, no mask"], cost["g, mask"] = [0.4, 0.2, 0.4, 0.2], [0.01, 0.02, 0.01, 0.02]
    cost.attrs["runs"] = {"no mask": {"step": 3000, "seeds": 1}, "mask": {"step": 3000, "seeds": 3}}
    text = shortcut.verdict(kept, stats, mask_cost=cost)
    assert "(with − without, mean per kind; no mask 3000 steps, 1 seed; mask 3000 steps, 3 seeds): textures:" in text
    assert "by at most 0.020 (copy gain without → with the mask: 0.40 → 0.01 on textures, 0.20 → 0.02 on objects)." in text
    seeds = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 1], "step": [0, 2000, 4000] * 2,
                          "image_AUROC": [60.0, 74.5, 81.3, 60.1, 74.0, 74.4], "normal_error": [1.0, 0.74, 0.56, 1.0, 0.75, 0.73],
                          "copy_gain": [0.0, 0.003, 0.229, 0.0, 0.001, 0.012]}).set_index(["seed", "step"])
    text = shortcut.verdict(kept, stats, seeds=seeds)
    assert ("UniAD seed by seed, from step 2000 to step 4000: seed 0: image AUROC 74.5 → 81.3, normal error 0.74 → "
            "0.56, g 0.00 → 0.23; seed 1: image AUROC 74.0 → 74.4, normal error 0.75 → 0.73, g 0.00 → 0.01.") in text


def test_the_width_figure_is_drawn_with_only_the_linear_reference():
    table = pd.DataFrame({"copy_gain": np.nan, "copy_gain std": np.nan, "image_AUROC": np.nan, "image_AUROC std": np.nan,
                          "linear_gain": [0.6, 0.9]}, index=pd.Index([32, 64], name="d"))
    fig, data = shortcut.plot_width(table)
    assert "not in the cache yet: d = 32, 64" in fig._suptitle.get_text()
    assert data["width"]["linear_gain"] == [0.6, 0.9]


def test_the_live_figure_draws_the_history_it_is_given():
    probe = transplant_probe(features(), n=4, block=2)
    history = [{"step": s, "gain": s / 10, "visibility": 1.0} for s in (0, 5, 10)]
    fig, data = shortcut.plot_live(history, {0: Scale(0.0), 10: Scale(1.0)}, probe)
    assert data["history"]["gain"] == [0.0, 0.5, 1.0] and data["class"] == probe.classes[0]
