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
