"""Notebook 10's bookkeeping (adnotes.fullscale) against hand-made cached results."""
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from adnotes import fullscale, results

from test_ablations import fake_run



def test_settings_table_reads_each_configs_value():
    cfgs = {"p": SimpleNamespace(**{s: SimpleNamespace(**{k: f"{s}.{k}@p" for _, k, _, _ in fullscale.SETTINGS})
                                    for s in ("model", "data", "train", "eval")})}
    table = fullscale.settings_table(cfgs)
    assert list(table.index) == [f"{s}.{k}" for s, k, _, _ in fullscale.SETTINGS]
    assert table.loc["train.lr", "p"] == "train.lr@p" and table.loc["train.lr", "UniAD source"] == "AdamW 1e-4 (§4.2)"


def test_describe_and_cached_results(tmp_path, monkeypatch):
    config = {"model": {"name": "uniad"}, "data": {"dataset": "mini"}, "train": {"mode": "unified", "seeds": [0, 1]}}
    run = fake_run(tmp_path / "r", {"a": (0.9, 0.7), "b": (0.7, 0.9)}, {0: 0.5, 200: 0.8}, config=config)
    assert fullscale.describe("r", run, "quick") == pytest.approx(
        {"result": "r", "mode": "quick", "model": "uniad", "dataset": "mini", "train": "unified", "steps": 200,
         "seeds": 2, "image AUROC": 80.0, "pixel AUROC": 80.0, "untrained image AUROC": 50.0})
    recipes = {"a": results.Recipe("uniad"), "ablation_default": results.Recipe("uniad"),
               "ablation_x": results.Recipe("uniad"), "pic": results.Recipe("uniad", kind="vis_decoder"),
               "b": results.Recipe("uniad")}
    monkeypatch.setattr(results, "RECIPES", recipes)
    monkeypatch.setattr(results, "cached", lambda name, quick=True: run if name != "b" else None)
    rows, missing = fullscale.cached_results(quick=True, ablation_rows=False)
    assert [r["result"] for r in rows] == ["a", "ablation_default"] and missing == ["b"]
    rows, missing = fullscale.cached_results(quick=False)
    assert [r["result"] for r in rows] == ["a", "ablation_default", "ablation_x"] and rows[0]["mode"] == "full"


def test_plot_overview_marks_missing_pixel_labels_and_survives_no_results():
    overview = pd.DataFrame([{"result": "a", "mode": "quick", "dataset": "mini", "image AUROC": 80.0,
                              "pixel AUROC": 90.0, "untrained image AUROC": 60.0},
                             {"result": "d", "mode": "quick", "dataset": "digits", "image AUROC": 70.0,
                              "pixel AUROC": np.nan, "untrained image AUROC": 50.0}])
    fig, data = fullscale.plot_overview(overview)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["no pixel labels"] and ax.texts[0].get_position()[0] == pytest.approx(1.2)
    ticks = ax.collections[-1].get_offsets()
    assert np.allclose(ticks, [[-0.2, 60.0], [0.8, 50.0]])   # the floor over each image bar
    assert data["results"][1]["pixel AUROC"] is None and "label" not in data["results"][0] and "label" not in overview
    plt.close(fig)
    fig, data = fullscale.plot_overview(pd.DataFrame([]))
    assert data == {"results": []} and "no cached results" in fig.axes[0].texts[0].get_text()
    plt.close(fig)
