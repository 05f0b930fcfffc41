"""The results cache: manifest checks that can fail, slim copies that load, the setup switch."""
import json

import pytest
import torch

import adnotes.results as results
import adnotes.train as trainer
from adnotes.models import list_models
from adnotes.notebook import quick_from_env, setup
from fixtures import tiny_config, tiny_features

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "results_dir", lambda: tmp_path / "results")
    (tmp_path / "results").mkdir()
    return tmp_path / "results"


def slim_run(tmp_path, cache, name="shortcut_mlp"):
    feats = tiny_features()
    cfg = tiny_config(seeds="[0, 1]")
    cfg.eval.keep_steps = [2]
    run = trainer.train(cfg, "r", runs=tmp_path / "runs", features=feats)
    results._slim_copy(run, cache / name)
    results._write_manifest(name, {"command": "test", "made": "today"})
    return run, feats


def test_slim_copy_keeps_curves_and_first_seed_weights_that_load(tmp_path, cache):
    run, feats = slim_run(tmp_path, cache)
    slim = cache / "shortcut_mlp"
    assert (slim / "seed1" / "curves.csv").read_bytes() == (run / "seed1" / "curves.csv").read_bytes()
    assert (slim / "seed0" / "weights.pt").is_file() and not (slim / "seed1" / "weights.pt").exists()
    assert not list(slim.rglob("checkpoint.pt"))  # no optimizer state
    full = trainer.load_model(run, features=feats[1])
    half = trainer.load_model(slim, features=feats[1])
    x = feats[1].features[:4].float()
    assert torch.allclose(full(x), half(x), atol=5e-2)  # float16 weights
    early = trainer.load_model(slim, step=2, features=feats[1])
    assert not torch.allclose(early(x), half(x))


def test_verify_finds_changed_missing_and_unlisted_files(tmp_path, cache):
    slim_run(tmp_path, cache)
    assert results.verify() == []
    curves = cache / "shortcut_mlp" / "seed0" / "curves.csv"
    curves.write_text(curves.read_text() + "\n")
    (cache / "shortcut_mlp" / "extra.txt").write_text("x")
    (cache / "shortcut_mlp" / "seed1" / "metrics.json").unlink()
    problems = "\n".join(results.verify("shortcut_mlp"))
    assert "seed0/curves.csv: sha256 differs" in problems
    assert "extra.txt: not in MANIFEST.json" in problems
    assert "seed1/metrics.json: listed in MANIFEST.json but missing" in problems
    assert results.cached("shortcut_mlp") is None  # a damaged result is not used


def test_manifest_hashes_are_real_sha256(tmp_path, cache):
    import hashlib

    slim_run(tmp_path, cache)
    listed = json.loads((cache / "MANIFEST.json").read_text())["files"]
    for rel, sha in listed.items():
        assert hashlib.sha256((cache / rel).read_bytes()).hexdigest() == sha


def test_the_committed_results_match_their_manifest():
    problems = results.verify()
    assert problems == [], "results/ does not match MANIFEST.json: regenerate with python -m adnotes results"


def test_every_recipe_builds_its_config_in_both_modes():
    for name in results.RECIPES:
        for quick in (True, False):
            cfg = results._config(name, setup(quick, verbose=False))
            assert cfg.model.name in list_models()
    assert results.ablation_recipe("5c_neighbor", "7x7") == "ablation_default"
    with pytest.raises(ValueError, match="unknown ablation"):
        results.ablation_recipe("5c_neighbor", "9x9")


@pytest.mark.parametrize("value, quick", [(None, True), ("", True), ("1", True), ("0", False), ("false", False),
                                          ("full", False), ("yes", True)])
def test_quick_switch_reads_adnotes_quick(monkeypatch, value, quick):
    if value is None:
        monkeypatch.delenv("ADNOTES_QUICK", raising=False)
    else:
        monkeypatch.setenv("ADNOTES_QUICK", value)
    assert quick_from_env() is quick
    assert setup(verbose=False).quick is quick
    assert setup(not quick, verbose=False).quick is (not quick)  # an explicit value wins


def test_setup_fixes_the_seeds():
    setup(seed=3, verbose=False)
    a = torch.rand(3)
    setup(seed=3, verbose=False)
    assert torch.equal(a, torch.rand(3))


def test_regenerating_one_result_does_not_bless_a_changed_file_of_another(tmp_path, cache):
    slim_run(tmp_path, cache, "shortcut_mlp")
    curves = cache / "shortcut_mlp" / "seed0" / "curves.csv"
    curves.write_text(curves.read_text() + "tampered\n")
    run = tmp_path / "runs" / "r"  # slim_run's run, cached again as another recipe
    results._slim_copy(run, cache / "shortcut_cnn")
    results._write_manifest("shortcut_cnn", {"command": "test", "made": "today"})
    assert "shortcut_mlp/seed0/curves.csv: sha256 differs from MANIFEST.json" in results.verify()
    assert results.verify("shortcut_cnn") == [] and results.cached("shortcut_mlp") is None
    listed = json.loads((cache / "MANIFEST.json").read_text())["files"]
    assert {rel.split("/")[0] for rel in listed} == {"shortcut_mlp", "shortcut_cnn"}


def test_train_init_verifies_a_cached_result_before_reading_it(tmp_path, cache):
    run, feats = slim_run(tmp_path, cache)
    (cache / "shortcut_mlp" / "seed0" / "metrics.json").write_text("{}")  # changed after caching
    cfg = tiny_config(init=str(cache / "shortcut_mlp"))
    with pytest.raises(ValueError, match="shortcut_mlp does not match results/MANIFEST.json .*metrics.json"):
        trainer.train(cfg, "continued", runs=tmp_path / "runs", features=feats)
    assert not (tmp_path / "runs" / "continued").exists()


def test_seeds_that_land_one_by_one_make_the_same_result_as_one_run_of_all(tmp_path, cache):
    """A long recipe grows seed by seed across sessions: seed 1 first, then seed 0, merged, equals the
    slim copy of one run that trained both (the reference), except that it is assembled in two steps."""
    import pandas as pd

    feats = tiny_features()
    both = tiny_config(seeds="[0, 1]")
    joint = trainer.train(both, "joint", runs=tmp_path / "runs", features=feats)
    dest = cache / "shortcut_mlp"
    for seed in (1, 0):
        one = tiny_config(seeds=f"[{seed}]")
        run = trainer.train(one, f"s{seed}", runs=tmp_path / "runs", features=feats)
        held = results._merge_seed(run, dest, both, seed, weights=True)
        assert held == ([1] if seed == 1 else [0, 1])
        assert trainer.Config.load(dest / "config.yaml").train.seeds == held
    for s in (0, 1):
        assert pd.read_csv(dest / f"seed{s}" / "curves.csv").equals(pd.read_csv(joint / f"seed{s}" / "curves.csv"))
    assert (dest / "seed0" / "weights.pt").is_file() and not list((dest / "seed1").glob("weights*.pt"))
    summary, reference = (pd.read_csv(p / "curves_summary.csv") for p in (dest, joint))
    pd.testing.assert_frame_equal(summary.drop(columns="std"), reference.drop(columns="std"), check_exact=False,
                                  rtol=1e-5)
    # a seed made with another config does not join: the result starts afresh
    other = tiny_config(seeds="[1]", steps=3)
    run = trainer.train(other, "other", runs=tmp_path / "runs", features=feats)
    assert results._merge_seed(run, dest, tiny_config(seeds="[0, 1]", steps=3), 1, weights=True) == [1]
    assert not (dest / "seed0").exists()


def test_load_result_falls_back_to_the_quick_cache_only_in_full_mode(monkeypatch):
    def fake(name, session):
        if not session.quick:
            raise FileNotFoundError("no MVTec-AD at data/mvtec: download it first\nmore")
        return f"quick/{name}"

    monkeypatch.setattr(results, "load_or_train", fake)
    run, session = results.load_result("shortcut_mlp", setup(False, verbose=False))
    assert run == "quick/shortcut_mlp" and session.quick
    quick = setup(True, verbose=False)
    assert results.load_result("shortcut_mlp", quick) == ("quick/shortcut_mlp", quick)
    monkeypatch.setattr(results, "load_or_train", lambda name, session: (_ for _ in ()).throw(FileNotFoundError("x")))
    with pytest.raises(FileNotFoundError):  # quick mode has nothing to fall back to
        results.load_result("shortcut_mlp", quick)


def test_one_defect_per_class_cycles_the_kinds():
    from types import SimpleNamespace

    from adnotes.plots import one_defect_per_class

    classes = ["b"] * 5 + ["a"] * 5 + ["c"] * 2
    kinds = ["good", "scratch", "hole", "hole", "stain", "good", "hole", "scratch", "stain", "scratch", "good", "good"]
    test = SimpleNamespace(classes=classes, labels=torch.tensor([int(k != "good") for k in kinds]))
    records = [SimpleNamespace(defect=k) for k in kinds]
    # row 0 = class a (sorted), kinds hole/scratch/stain -> 1st kind "hole" at index 6; row 1 = class b, kinds
    # hole/scratch/stain -> 2nd kind "scratch" at index 1; class c has no defective image: no row
    assert one_defect_per_class(test, records) == [6, 1]
