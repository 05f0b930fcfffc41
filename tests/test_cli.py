"""The command line as a user runs it: the demo end to end on a tiny dataset, and bad input."""
import json

import pytest
from fixtures import make_mvtec

from adnotes.__main__ import main
from adnotes.paths import figures_dir


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ADNOTES_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_demo_runs_end_to_end_and_writes_its_figure(tmp_path, home, capsys):
    root = make_mvtec(tmp_path / "mvtec", n_train=4, size=64)
    demo = ["demo", "--dataset", "mvtec", "--root", str(root), "--image-size", "128", "--steps", "3"]
    assert main(demo) == 0
    out = capsys.readouterr().out
    assert "bottle" in out and "wood" in out and "mean" in out and "image_AUROC" in out
    assert "UniAD-quick" in out and "kNN" in out  # the side-by-side table
    runs = list((home / "runs").glob("demo_uniad_quick-*"))
    assert len(runs) == 1 and (runs[0] / "seed0" / "metrics.json").is_file()
    figure = figures_dir() / "demo_anomaly_maps.png"  # the tests' own folder (conftest), not figures/
    record = json.loads(figure.with_suffix(".json").read_text())
    assert figure.stat().st_size > 10_000
    assert record["config"]["dataset"] == "mvtec" and record["config"]["seed"] == 0
    assert set(record["data"]["metrics"]) == {"bottle", "wood", "mean"}
    # A second run reads the feature cache and the finished UniAD run instead of redoing them.
    assert main(demo) == 0
    out = capsys.readouterr().out
    assert "found cached features" in out and "found finished run" in out


def test_missing_dataset_is_a_clear_error_not_a_traceback(tmp_path, home, capsys):
    assert main(["demo", "--dataset", "mvtec", "--root", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and "python -m adnotes data get mvtec" in err


def test_mini_refuses_a_foreign_folder(tmp_path, home, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my work")
    assert main(["data", "mini", "--root", str(folder), "--size", "4"]) == 1
    assert "error" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "my work"


def test_a_smaller_mini_dataset_is_read_where_it_was_made(tmp_path, home):
    from adnotes.data import load_dataset

    root = tmp_path / "small-mini"
    assert main(["data", "mini", "--root", str(root), "--size", "4"]) == 0
    test = load_dataset("mini", "test", root=root)
    assert len(test) == 4 * len(test.classes) and sum(r.label for r in test.records) == 2 * len(test.classes)


def test_mini_objects_is_made_where_its_dataset_name_reads_it(home):
    from adnotes.data import load_dataset
    from adnotes.data.mini import OBJECT_CLASSES, TEXTURE_CLASSES

    assert main(["data", "mini", "--objects", "--size", "4"]) == 0
    assert (home / "data" / "adnotes-mini-objects" / "cat" / "train" / "good").is_dir()
    assert not (home / "data" / "adnotes-mini").exists()
    test = load_dataset("mini_objects", "test")    # the folder just made, not a new default-size one
    assert test.classes == sorted((*TEXTURE_CLASSES, *OBJECT_CLASSES)) and len(test) == 4 * len(test.classes)


def test_train_and_eval_from_the_command_line(tmp_path, home, capsys):
    root = make_mvtec(tmp_path / "mvtec", n_train=4, size=64)
    args = ["train", "--name", "tiny", "--set", f"data.dataset=mvtec", f"data.root={root}", "data.image_size=64",
            "train.steps=4", "eval.every=2", "eval.pool=4",
            "model.args={hidden_dim: 16, num_heads: 2, ffn_dim: 32, neighbor_size: 1}"]
    assert main(args) == 0
    assert (home / "runs" / "tiny" / "seed0" / "curves.csv").is_file()
    assert main(args) == 1 and "--resume" in capsys.readouterr().err  # never overwritten
    assert main(["eval", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "bottle" in out and "pixel_AUPRO" in out


def test_demo_passes_the_root_to_uniad_as_a_value(monkeypatch):
    """The root reaches UniAD's config as typed, never re-read as YAML ('#' starts a comment, ': ' a mapping)."""
    import adnotes.train
    from adnotes.demo import DemoConfig, train_uniad_quick

    seen = []
    monkeypatch.setattr(adnotes.train, "train_or_load", lambda cfg, prefix: seen.append(cfg) or "run")
    monkeypatch.setattr(adnotes.train, "final_metrics", lambda run: None)
    for root in ("/data/mv #2", "/data/a: b"):
        train_uniad_quick(DemoConfig(dataset="mvtec", root=root), steps=3)
        assert seen[-1].data.root == root and seen[-1].train.steps == 3


@pytest.mark.parametrize("args, names", [
    (["--name", "bad", "--set", "train.steps=-5"], "train.steps=-5"),
    (["--name", "bad", "--set", "eval.every=0"], "eval.every=0"),
    (["--name", "../elsewhere"], "'../elsewhere'"),
])
def test_train_user_errors_are_one_line_and_write_nothing(tmp_path, home, capsys, args, names):
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and names in err and len(err.strip().splitlines()) == 1
    assert not (home / "runs").exists() and not (home / "elsewhere").exists()


@pytest.mark.parametrize("text", ["", "train: {steps: 5\n"])
def test_empty_or_malformed_config_file_is_one_line(tmp_path, home, capsys, text):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1


def test_resume_with_other_set_values_is_refused(home, capsys):
    from adnotes.train import Config

    run = home / "runs" / "mine"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(__import__("yaml").safe_dump(Config.load(None, ["train.steps=10"]).to_dict()))
    assert main(["train", "--name", "mine", "--resume", "--set", "train.steps=20"]) == 1
    err = capsys.readouterr().err
    assert "train.steps=10 (asked: 20)" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_results_list_flags_a_cached_result_that_its_recipe_no_longer_makes(monkeypatch, capsys):
    import dataclasses

    from adnotes import results
    recipe = results.RECIPES["width_mlp_32"]
    assert results.cached("width_mlp_32") is not None and results.cached("width_mlp_64") is not None
    monkeypatch.setitem(results.RECIPES, "width_mlp_32", dataclasses.replace(recipe, quick=(*recipe.quick, "train.lr=0.002")))
    assert main(["results", "--list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "rerun it to replace" in lines["width_mlp_32"]       # a changed learning rate: not what is cached
    assert "rerun it to replace" not in lines["width_mlp_64"]   # untouched, made by its recipe as it stands
