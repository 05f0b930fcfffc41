"""The method zoo: cost counters against hand counts, wiring of the table, published numbers."""
import json

import pytest
import torch
from torch import nn

from adnotes import zoo
from adnotes.train import train

from fixtures import tiny_config, tiny_features


def test_model_cost_counts_params_and_flops_like_by_hand():
    model = nn.Sequential(nn.Conv2d(4, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1, bias=False))
    cost = zoo.model_cost(model, torch.randn(8, 4, 5, 5), seconds=0.05)
    assert cost["params_M"] * 1e6 == pytest.approx(4 * 6 + 6 + 6 * 4 * 9)
    macs = 25 * (4 * 6 + 6 * 4 * 9)  # per image: every output position of both convs
    assert cost["GFLOPs"] * 1e9 == pytest.approx(2 * macs)
    assert cost["images_per_s"] > 0


def test_published_numbers_carry_their_source():
    table = zoo.published_table()
    assert table["source"].notna().all() and set(table["method"]) <= set(zoo.ZOO)
    uniad = table[(table.method == "UniAD") & table.setting.str.startswith("unified, 1000")]
    assert uniad[["image_AUROC", "pixel_AUROC"]].values.tolist() == [[96.5, 96.8]]  # UniAD Tab. 1 / 2
    assert set(zoo.published_table(["MLP", "HaloAE"]).method) == {"HaloAE"}  # not the transformer of the MLP's file


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="the zoo has"):
        zoo.zoo_table(None, ["PatchCore"])


def test_zoo_table_reads_each_runs_final_metrics(tmp_path, monkeypatch):
    features = tiny_features()
    run = train(tiny_config(steps=4), "tiny", runs=tmp_path, features=features)
    monkeypatch.setattr(zoo, "ZOO", {"tiny": ("tiny_recipe", "uniad")})
    monkeypatch.setattr("adnotes.results.load_or_train", lambda name, session: run)
    monkeypatch.setattr("adnotes.train.load_features", lambda cfg, device="cpu", splits=("train", "test"):
                        tuple(features[("train", "test").index(s)] for s in splits))

    class Session:
        device = "cpu"

    summary, per_class = zoo.zoo_table(Session())
    written = json.loads((run / "seed0" / "metrics.json").read_text())
    assert summary.loc["tiny", "image_AUROC"] == pytest.approx(100 * written["mean"]["image_AUROC"])
    assert per_class.set_index("class").loc["b", "pixel_AUROC"] == pytest.approx(100 * written["b"]["pixel_AUROC"])
    assert summary.loc["tiny", "schedule"] == "4 steps" and summary.loc["tiny", "params_M"] > 0


def test_plot_zoo_annotates_each_class_and_places_each_method_at_its_cost():
    import matplotlib.pyplot as plt
    import pandas as pd

    summary = pd.DataFrame({"image_AUROC": [80.0, 60.0], "GFLOPs": [0.5, 2.0], "params_M": [1.0, 3.0]},
                           index=pd.Index(["UniAD", "ADTR+"], name="method"))
    per_class = pd.DataFrame({"method": ["ADTR+", "ADTR+", "UniAD", "UniAD"], "class": ["a", "b", "a", "b"],
                              "image_AUROC": [55.0, 65.0, 71.0, 89.0], "pixel_AUROC": [90.0, 91.0, 92.0, 93.0]})
    fig, data = zoo.plot_zoo(summary, per_class, "quick")
    image, pixel, cost = fig.axes[:3]
    assert [t.get_text() for t in image.texts] == ["71", "89", "55", "65"]   # rows in the summary's order
    assert [t.get_text() for t in pixel.texts] == ["92", "93", "90", "91"]
    assert [c.get_offsets().tolist() for c in cost.collections] == [[[0.5, 80.0]], [[2.0, 60.0]]]
    assert [c.get_sizes().tolist() for c in cost.collections] == [[70.0], [150.0]]   # 30 + 40 · params
    assert data["summary"]["method"] == ["UniAD", "ADTR+"] and data["per_class"]["class"] == ["a", "b", "a", "b"]
    plt.close(fig)
