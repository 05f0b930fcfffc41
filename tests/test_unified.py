"""Notebook 02's bookkeeping (adnotes.unified) against hand-made curves, run folders and the UniAD paper's numbers."""
import json
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml

from adnotes import unified

matplotlib.use("Agg")


def summary(loss, image, pixel, steps=(0, 10, 20), per_class=None) -> pd.DataFrame:
    """A curves_summary.csv of mean curves, rows shuffled, with a NaN row that must be skipped."""
    rows = [(st, "mean", m, v, None) for m, values in (("loss", loss), ("image_AUROC", image), ("pixel_AUROC", pixel))
            for st, v in zip(steps, values)]
    rows += [(st, cls, "image_AUROC", v, None) for cls, values in (per_class or {}).items() for st, v in zip(steps, values)]
    rows += [(30, "mean", "image_AUROC", float("nan"), None)]
    return pd.DataFrame(rows[::-1], columns=["step", "cls", "metric", "mean", "std"])


U = summary(loss=(20.0, 8.0, 5.0), image=(0.6, 0.8, 0.7), pixel=(0.78, 0.85, 0.86), per_class={"a": (0.5, 0.9, 0.6)})
S = summary(loss=(19.0, 6.0, 3.0), image=(0.6, 0.75, 0.9), pixel=(0.78, 0.80, 0.83))


def test_paper_table_holds_uniad_tables_1_2_and_4():
    table = unified.paper_table()
    tab4 = table.loc[("transformer baseline, 1 query (Tab. 4)", "detection")]
    assert (tab4.unified, tab4.separate) == (87.6, 94.7)            # UniAD Tab. 4
    assert tab4["unified - separate"] == pytest.approx(87.6 - 94.7)
    assert table.loc[("UniAD (Tab. 1 / Tab. 2)", "localisation"), "unified"] == 96.8  # UniAD Tab. 2
    assert len(table) == 4


def test_curve_reads_one_class_sorted_by_step_without_gaps():
    assert unified.curve(U, "image_AUROC").to_dict() == {0: 0.6, 10: 0.8, 20: 0.7}
    assert unified.curve(U, "image_AUROC", cls="a").to_dict() == {0: 0.5, 10: 0.9, 20: 0.6}


def test_key_numbers_floor_best_and_final():
    numbers = unified.key_numbers({"unified": U, "separate": S})
    u = numbers.loc["unified"]
    assert (u["loss, first eval"], u["loss, final"]) == (20.0, 5.0)
    assert (u["image_AUROC floor"], u["image_AUROC best"], u["image_AUROC best step"], u["image_AUROC final"]) == \
        (0.6, 0.8, 10, 0.7)
    assert numbers.loc["separate", "pixel_AUROC best step"] == 20
    assert list(numbers.index) == ["unified", "separate"]


def test_checks_and_verdict_read_the_claims_off_the_numbers():
    numbers = unified.key_numbers({"unified": U, "separate": S})
    found = {claim.split(".")[0]: holds for claim, holds, _ in unified.checks(numbers)}
    # unified loss 5 > 3: not lower; 0.7 < 0.9 and 0.86 > 0.83; separate ends at its best; unified falls 10 points
    assert found == {"1": False, "2a": True, "2b": False, "3a": True, "3b": True, "3c": True}
    text = unified.verdict(numbers, "mini", "quick")
    assert "verdict: 4 of 6 checks reproduced on mini (quick mode)" in text
    assert "claim 2 (unified much worse) is NOT reproduced" in text     # 2b fails
    assert "unified image +10.0, separate image +30.0 points" in text
    assert text.splitlines()[0] == "NOT reproduced  1. unified ends with the smaller training loss: unified 5.0000 vs separate 3.0000"


def test_formatted_numbers():
    table = unified.formatted(unified.key_numbers({"unified": U, "separate": S}))
    assert table.loc["image_AUROC best step", "unified"] == "10"
    assert table.loc["image_AUROC best", "separate"] == "90.0"
    assert table.loc["loss, final", "separate"] == "3.0000"


def test_plot_curves_saves_the_mean_curves_it_draws():
    numbers = unified.key_numbers({"unified": U, "separate": S})
    fig, data = unified.plot_curves({"unified": U, "separate": S}, numbers, "title")
    assert data["curves"]["separate"]["image_AUROC"] == {0: 0.6, 10: 0.75, 20: 0.9}
    assert data["numbers"]["unified"]["loss, final"] == 5.0
    assert [line.get_linestyle() for line in fig.axes[1].lines[:2]] == ["-", "--"]
    plt.close(fig)


def _metrics(path: Path, table: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(table))


def test_per_class_puts_final_metrics_beside_the_floor(tmp_path):
    unified_run, separate_run = tmp_path / "u", tmp_path / "s"
    _metrics(unified_run / "seed0", {"a": {"image_AUROC": 0.70, "pixel_AUROC": 0.80},
                                     "b": {"image_AUROC": 0.90, "pixel_AUROC": 0.90},
                                     "mean": {"image_AUROC": 0.80, "pixel_AUROC": 0.85}})
    for cls, (image, pixel) in {"a": (0.75, 0.82), "b": (0.95, 0.88)}.items():   # separate: a model per class
        _metrics(separate_run / "seed0" / cls, {cls: {"image_AUROC": image, "pixel_AUROC": pixel},
                                                "mean": {"image_AUROC": image, "pixel_AUROC": pixel}})
    floor = pd.DataFrame([(0, c, m, v, None) for c, m, v in (("a", "image_AUROC", 0.5), ("b", "image_AUROC", 0.6),
                                                              ("mean", "image_AUROC", 0.55), ("a", "pixel_AUROC", 0.7),
                                                              ("b", "pixel_AUROC", 0.8), ("mean", "pixel_AUROC", 0.75))]
                         + [(10, "a", "image_AUROC", 0.99, None)], columns=["step", "cls", "metric", "mean", "std"])
    table = unified.per_class({"unified": unified_run, "separate": separate_run}, floor)
    assert list(table.index) == ["a", "b", "mean"]
    assert table.loc["a", ("image", "untrained")] == 50.0
    assert table.loc["mean", ("image", "separate")] == 85.0            # (75 + 95) / 2
    assert table.loc["b", ("pixel", "unified - separate")] == 2.0      # 90 - 88


def test_run_config_describe_and_provenance(tmp_path):
    run = tmp_path / "results" / "fig4_mlp_unified"
    run.mkdir(parents=True)
    config = {"model": {"name": "mlp", "preset": "quick"}, "data": {"dataset": "mini"}, "eval": {"every": 60},
              "train": {"mode": "unified", "steps": 600, "epochs": None, "batch_size": 8, "lr": 0.001, "seeds": [0]}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert unified.run_config(run) == config
    assert unified.describe(config) == ("mlp quick preset on mini, mode unified, 600 steps, batch 8, lr 0.001, "
                                        "seeds [0], eval every 60")
    config["train"]["epochs"] = 1000
    assert "1000 epochs" in unified.describe(config)
    prov = unified.provenance({"unified": run, "separate": Path("/elsewhere/run")}, {"unified": "quick"}, tmp_path)
    assert prov == {"runs": {"unified": "results/fig4_mlp_unified", "separate": "/elsewhere/run"},
                    "made_in": {"unified": "quick"}}
