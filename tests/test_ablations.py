"""Notebook 04's bookkeeping (adnotes.ablations) against hand-made runs and hand-computed differences."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from adnotes import ablations, results


def fake_run(folder: Path, finals: dict[str, tuple[float, float]], curve: dict[int, float], *, config=None) -> Path:
    """A finished run: seed0/metrics.json (class -> (image, pixel AUROC)) and curves_summary.csv whose mean image
    AUROC is ``curve`` (step -> value); the class rows of the curves are decoys (0.0)."""
    (folder / "seed0").mkdir(parents=True)
    metrics = {cls: {"image_AUROC": i, "pixel_AUROC": p} for cls, (i, p) in finals.items()}
    (folder / "seed0" / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"step": s, "cls": c, "metric": m, "mean": v if c == "mean" else 0.0, "std": np.nan}
            for s, v in curve.items() for c in ("mean", "a") for m in ("image_AUROC", "pixel_AUROC")]
    pd.DataFrame(rows).to_csv(folder / "curves_summary.csv", index=False)
    (folder / "config.yaml").write_text(yaml.safe_dump(config or {}))
    return folder


# ----------------------------------------------------------------------------- the paper's numbers and matching

def test_every_match_and_base_names_a_row_of_the_paper_table():
    rows = set(zip(ablations.PAPER["table"], ablations.PAPER["paper row"]))
    for ptable, prow, kind, _ in ablations.MATCH.values():
        assert (ptable, prow) in rows and kind in ("same", "nearest")
    assert set(ablations.PAPER_BASE.values()) <= rows
    uniad = ablations.PAPER.set_index(["table", "paper row"]).loc[("Tab. 5a", "layer-wise + NMA + FJ")]
    assert (uniad["Det."], uniad["Loc."]) == (96.5, 96.8)   # UniAD Tab. 1 / 2


def test_unmatched_rows_are_the_two_the_paper_did_not_run():
    assert ablations.unmatched() == ["5c_neighbor/3x3", "5d_nma/decoder"]


def test_grid_has_one_row_per_table_row_and_one_run_per_switch(monkeypatch):
    cached = {"ablation_default", "ablation_5a_query_none"}
    monkeypatch.setattr(results, "cached", lambda name, quick=True: Path(name) if name in cached else None)
    grid = ablations.grid(SimpleNamespace(quick=True))
    assert len(grid) == sum(len(rows) for rows in results.ABLATIONS.values())
    switches = sum(bool(o) for rows in results.ABLATIONS.values() for o in rows.values())
    assert grid.recipe.nunique() == switches + 1   # every switched row, and the one shared default run
    assert set(grid[grid.cached].recipe) == cached
    assert (grid[grid.recipe == "ablation_default"].overrides == "(the default row)").all()


# ----------------------------------------------------------------------------- reading runs

def test_run_summary_reads_the_mean_row_the_floor_and_the_best_step(tmp_path):
    run = fake_run(tmp_path / "r", {"a": (0.6, 0.8), "b": (0.8, 0.9)}, {0: 0.55, 100: 0.75, 200: 0.70})
    got = ablations.run_summary(run)
    assert got["image"] == pytest.approx(70.0) and got["pixel"] == pytest.approx(85.0)   # (60 + 80) / 2, (80 + 90) / 2
    assert got["floor"] == pytest.approx(55.0) and got["best"] == pytest.approx(75.0)
    assert (got["best_step"], got["steps"]) == (100, 200)


def test_load_runs_skips_what_is_not_cached_and_trains_only_on_a_gpu(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path / "r", {"a": (0.7, 0.8)}, {0: 0.5, 400: 0.7})
    grid = pd.DataFrame({"recipe": ["x", "y", "x"], "cached": [True, False, True]})
    loaded = []
    monkeypatch.setattr(results, "load_or_train", lambda name, session: loaded.append(name) or run)
    quick = ablations.load_runs(grid, SimpleNamespace(quick=True, device=SimpleNamespace(type="cuda")))
    assert list(quick) == ["x"] and "results --only y\n" in capsys.readouterr().out
    cpu = ablations.load_runs(grid, SimpleNamespace(quick=False, device=SimpleNamespace(type="cpu")))
    assert list(cpu) == ["x"] and "--full  (paper size" in capsys.readouterr().out
    gpu = ablations.load_runs(grid, SimpleNamespace(quick=False, device=SimpleNamespace(type="cuda")))
    assert list(gpu) == ["x", "y"] and loaded == ["x", "x", "x", "y"]
    assert gpu["y"]["image"] == pytest.approx(70.0)


# ----------------------------------------------------------------------------- the comparison

@pytest.mark.parametrize("ours, paper, default, match, said", [
    (0.0, -5.0, True, "same", "default row"),
    (math.nan, -5.0, False, "same", "not run"),
    (2.0, math.nan, False, "", "no paper row"),
    (0.4, -25.5, False, "nearest", "ours within noise"),
    (-0.9, 0.3, False, "same", "both ≈0"),
    (-7.2, -0.8, False, "nearest", "same direction (nearest row)"),
    (1.5, -0.6, False, "same", "opposite"),
    (-1.5, 0.0, False, "same", "paper ≈0"),
])
def test_verdict_counts_ours_from_one_point_and_the_papers_from_half_a_point(ours, paper, default, match, said):
    assert ablations.verdict(ours, paper, default, match) == said


def test_compare_takes_each_delta_against_the_right_base():
    default, none, jitter = 74.2, 74.6, 67.0
    ours = {"ablation_default": {"image": default, "pixel": 86.4, "floor": 60.5, "best": default, "best_step": 400},
            "ablation_5a_query_none": {"image": none, "pixel": 87.9, "floor": 61.3, "best": none, "best_step": 400},
            "ablation_5e_jitter_scale_40": {"image": jitter, "pixel": 80.0, "floor": 60.0, "best": 70.0, "best_step": 300}}
    table = ablations.compare(ours).set_index(["table", "row"])
    assert len(table) == sum(len(rows) for rows in results.ABLATIONS.values())
    row = table.loc[("5a_query", "none")]     # paper: w/o query (no NMA, no FJ) against layer-wise query (no NMA, no FJ)
    assert row["Δimage"] == pytest.approx(none - default) and row["paper ΔDet."] == pytest.approx(69.5 - 95.0)
    assert row["paper base"] == "Tab. 5a layer-wise query" and row["verdict"] == "ours within noise"
    row = table.loc[("5e_jitter_scale", "40")]   # paper α = 30 against UniAD
    assert row["paper ΔDet."] == pytest.approx(95.7 - 96.5) and row["verdict"] == "same direction (nearest row)"
    assert table.loc[("5c_neighbor", "3x3"), "verdict"] == "not run"
    assert table.loc[("A4_loss", "mse"), "verdict"] == "default row" and table.loc[("A4_loss", "mse"), "image"] == default
    assert list(table.loc["A3_design"].index) == list("abcdef")


def test_verdict_lines_group_the_rows_that_ran():
    table = pd.DataFrame({"table": ["t", "t", "t", "u"], "row": ["d", "x", "y", "z"],
                          "default": [True, False, False, False], "Δimage": [0.0, 0.4, -2.0, np.nan],
                          "paper ΔDet.": [0.0, -3.0, -1.0, 1.0],
                          "verdict": ["default row", "ours within noise", "same direction", "not run"]})
    assert ablations.verdict_lines(table) == ("\nours within noise: t/x (ours +0.4, paper -3.0)\n"
                                              "\nsame direction: t/y (ours -2.0, paper -1.0)")
    nothing = ablations.verdict_lines(table[table.default | (table.verdict == "not run")])
    assert nothing.startswith("\nNo ablation row is cached yet")
    assert "--only ablation_5a_query_none ablation_5a_query_first ablation_default " in nothing


def test_seed_noise_reads_the_evaluation_nearest_step_400(tmp_path, monkeypatch):
    rows = [{"step": s, "cls": "mean", "metric": "image_AUROC", "mean": m, "std": sd}
            for s, m, sd in ((0, 0.5, 0.0), (300, 0.7, 0.01), (450, 0.72, 0.02), (900, 0.8, 0.03))]
    pd.DataFrame(rows).to_csv(tmp_path / "curves_summary.csv", index=False)
    for s in (0, 1, 2):
        (tmp_path / f"seed{s}").mkdir()
        (tmp_path / f"seed{s}" / "curves.csv").write_text("")
    asked = []
    monkeypatch.setattr(results, "cached", lambda name, quick=True: asked.append(name) or tmp_path)
    said = ablations.seed_noise()
    assert asked == ["anatomy_jitter"]   # a 3-seed run of the same quick UniAD, cached in full
    assert "3 seeds: image AUROC at step 450 = 72.0 ± 2.0" in said and "(step 900): ± 3.0" in said
    monkeypatch.setattr(results, "cached", lambda name, quick=True: None)
    assert "not cached" in ablations.seed_noise()


def test_plot_table_draws_the_floor_of_the_default_run_and_marks_rows_not_run():
    ours = {"ablation_default": {"image": 74.0, "pixel": 86.0, "floor": 61.0, "best": 74.0, "best_step": 400}}
    table = ablations.compare(ours)
    fig, data = ablations.plot_table(table, "test rows")
    assert data["untrained_floor"] == 61.0 and len(data["rows"]) == len(table)
    assert (data["rows"][0]["row"], data["rows"][0]["image"]) == ("none", None)   # not run: NaN written as None
    not_run = sum(t.get_text() == "not run" for ax in fig.axes for t in ax.texts)
    assert not_run == (~table.default).sum()   # every switched row: only the default run is there
    plt.close(fig)
