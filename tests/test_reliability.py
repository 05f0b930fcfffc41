"""The working tree stays clean: what the tests and the README's commands write is git-ignored or temporary."""
import json
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from adnotes import plots
from adnotes.paths import data_dir, figures_dir, home

REPO = Path(__file__).resolve().parents[1]


def test_figure_json_records_paths_relative_to_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ADNOTES_HOME", str(tmp_path / "home"))
    shown = [data_dir() / "adnotes-mini" / "brick" / "test" / "hole" / "000.png", str(home() / "runs" / "r")]
    path = plots.save_figure(plt.figure(), "portable", data={"shown": shown, "results": REPO / "results" / "x"},
                             config={"root": "/elsewhere/mvtec", "relative": "a/b.png"})
    plt.close("all")
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["data"] == {"shown": ["adnotes-mini/brick/test/hole/000.png", "runs/r"], "results": "results/x"}
    assert record["config"] == {"root": "/elsewhere/mvtec", "relative": "a/b.png"}  # a foreign root stays as given


def test_figure_json_numbers_do_not_depend_on_float_noise(tmp_path):
    import numpy as np
    import torch

    written = []
    for noise in (0.0, 3e-13):  # what another thread count or BLAS build changes in a metric
        values = {"auroc": 0.8304100378146942 + noise, "arr": np.array([0.1 + noise, 2.0]), "t": torch.tensor(1 / 3)}
        path = plots.save_figure(plt.figure(), f"noise{len(written)}", data=values, folder=tmp_path)
        plt.close("all")
        written.append(json.loads(path.with_suffix(".json").read_text())["data"])
    assert written[0] == written[1] == {"auroc": 0.83041, "arr": [0.1, 2.0], "t": 0.333333}


def test_tests_write_figures_outside_the_versioned_folder():
    assert figures_dir() != (REPO / "figures").resolve()


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_readme_virtual_environment_is_ignored():
    """README: `python3 -m venv .venv` in the checkout must not show up in git status."""
    ignored = subprocess.run(["git", "check-ignore", "-q", ".venv/bin/python"], cwd=REPO)
    assert ignored.returncode == 0
