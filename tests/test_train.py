"""The trainer on tiny synthetic features: curves, resume, run folders, NaN stop, separate mode."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import adnotes.train as trainer
from adnotes.features import FeatureSet
from adnotes.train import Config, train

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_features(seed=0, classes=("a", "b"), n_train=12, n_test=8, c=8, s=32):
    """Normal tokens ~ N(0, 1); a defective test image gets +3 in a 2×2 patch of its 4×4 grid."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n_train * len(classes), c, 4, 4, generator=g)
    test = torch.randn(n_test * len(classes), c, 4, 4, generator=g)
    labels = torch.tensor([i % 2 for i in range(len(test))])
    masks = torch.zeros(len(test), s, s, dtype=torch.bool)
    for i in torch.nonzero(labels).flatten():
        test[i, :, 1:3, 1:3] += 3
        masks[i, 8:24, 8:24] = True
    return (FeatureSet(train.half(), torch.zeros(len(train), dtype=torch.long),
                       [c for c in classes for _ in range(n_train)], None),
            FeatureSet(test.half(), labels, [c for c in classes for _ in range(n_test)], masks))


def tiny_config(**train):
    return Config.load(None, [
        "model.name=uniad", "model.preset=quick",
        "model.args={hidden_dim: 16, num_heads: 2, ffn_dim: 32, num_encoder_layers: 1, "
        "num_decoder_layers: 1, neighbor_size: 1, dropout: 0.0}",
        "eval.every=2", "eval.pool=4", "train.steps=6", "train.batch_size=4", "train.lr=0.001",
        *[f"train.{k}={v}" for k, v in train.items()]])


def test_curves_and_final_metrics_match_an_independent_evaluation(tmp_path):
    feats = tiny_features()
    run = train(tiny_config(), "r", runs=tmp_path, features=feats)
    curves = pd.read_csv(run / "seed0" / "curves.csv")
    assert sorted(set(curves.step)) == [2, 4, 6] and set(curves.cls) == {"a", "b", "mean"}
    assert {"image_AUROC", "pixel_AUROC", "loss"} <= set(curves.columns)
    assert (run / "config.yaml").is_file() and (run / "environment.json").is_file()
    # Recompute class a's image AUROC from the checkpoint by hand: L2 map, bilinear ×8
    # (align_corners), 4×4 average pool, max; then scikit-learn.
    model = trainer.build_model(tiny_config(), 8, (4, 4))
    model.load_state_dict(torch.load(run / "seed0" / "checkpoint.pt", weights_only=True)["model"])
    model.eval()
    test = feats[1].select("a")
    with torch.no_grad():
        x = test.features.float()
        maps = ((model(x) - x) ** 2).sum(1).sqrt()
        full = F.interpolate(maps[:, None], size=(32, 32), mode="bilinear", align_corners=True)
        scores = F.avg_pool2d(full, 4, stride=1).flatten(1).max(1).values
    final = json.loads((run / "seed0" / "metrics.json").read_text())
    assert final["a"]["image_AUROC"] == pytest.approx(roc_auc_score(test.labels, scores), abs=1e-6)
    assert curves.query("cls == 'a' and step == 6").image_AUROC.item() == pytest.approx(final["a"]["image_AUROC"])


def test_a_killed_run_resumes_to_the_same_weights_and_curves(tmp_path, monkeypatch):
    feats = tiny_features()
    whole = train(tiny_config(), "whole", runs=tmp_path, features=feats)

    batches = trainer._batches

    def killed_at_step_5(n, batch_size, seed, step):
        if step == 4:
            raise KeyboardInterrupt
        return batches(n, batch_size, seed, step)

    monkeypatch.setattr(trainer, "_batches", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(), "killed", runs=tmp_path, features=feats)
    monkeypatch.setattr(trainer, "_batches", batches)
    killed = train(tiny_config(), "killed", runs=tmp_path, features=feats, resume=True)

    a = torch.load(whole / "seed0" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(killed / "seed0" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(whole / "seed0" / "curves.csv"),
                                  pd.read_csv(killed / "seed0" / "curves.csv"))


def test_an_existing_run_is_never_overwritten(tmp_path):
    feats = tiny_features()
    run = train(tiny_config(), "r", runs=tmp_path, features=feats)
    before = (run / "seed0" / "curves.csv").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(), "r", runs=tmp_path, features=feats)
    assert (run / "seed0" / "curves.csv").read_bytes() == before


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real = trainer.reconstruction_loss
    calls = []

    def nan_at_step_3(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(trainer, "reconstruction_loss", nan_at_step_3)
    with pytest.raises(RuntimeError, match="at step 3 .*step 2"):
        train(tiny_config(), "nan", runs=tmp_path, features=tiny_features())
    assert torch.load(tmp_path / "nan" / "seed0" / "checkpoint.pt", weights_only=True)["step"] == 2


def test_separate_mode_and_seeds_summary(tmp_path):
    run = train(tiny_config(mode="separate", seeds="[0, 1]"), "sep", runs=tmp_path, features=tiny_features())
    assert (run / "seed1" / "b" / "curves.csv").is_file()
    summary = pd.read_csv(run / "curves_summary.csv")
    # Independent: the mean row is the mean over classes, then over seeds.
    per = [pd.read_csv(run / f"seed{s}" / c / "curves.csv").query("cls == @c and step == 6").image_AUROC.item()
           for s in (0, 1) for c in ("a", "b")]
    got = summary.query("cls == 'mean' and step == 6 and metric == 'image_AUROC'")
    assert got["mean"].item() == pytest.approx(np.mean(per))
    assert got["std"].item() == pytest.approx(np.std([np.mean(per[:2]), np.mean(per[2:])], ddof=1))


def test_config_overrides_and_clear_errors(tmp_path):
    cfg = Config.load(None, ["train.steps=7", "data.stages=[2, 3]", "model.args={neighbor_size: 5}"])
    assert cfg.train.steps == 7 and cfg.data.stages == [2, 3] and cfg.model.args == {"neighbor_size": 5}
    with pytest.raises(ValueError, match="unknown key.*stepz"):
        Config.load(None, ["train.stepz=7"])
    with pytest.raises(ValueError, match="section.key=value"):
        Config.load(None, ["steps=7"])


def test_evaluate_run_reproduces_the_final_metrics(tmp_path):
    feats = tiny_features()
    run = train(tiny_config(seeds="[0, 1]"), "r", runs=tmp_path, features=feats)
    table = trainer.evaluate_run(run, features=feats)
    finals = [json.loads((run / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
    for cls in ("a", "b"):
        assert table.loc[cls, "image_AUROC"] == pytest.approx(np.mean([f[cls]["image_AUROC"] for f in finals]))
    assert table.loc["mean", "pixel_AUROC"] == pytest.approx(table.loc[["a", "b"], "pixel_AUROC"].mean())


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parents[1].glob("configs/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_model(path):
    cfg = Config.load(path)
    channels = {"efficientnet_b4": [24, 32, 56, 160, 448], "efficientnet_lite0": [16, 24, 40, 112, 320]}
    in_channels = sum(channels[cfg.data.backbone][s - 1] for s in cfg.data.stages)
    model = trainer.build_model(cfg, in_channels, (cfg.data.image_size // 16,) * 2)
    x = torch.randn(1, in_channels, cfg.data.image_size // 16, cfg.data.image_size // 16)
    assert model.eval()(x).shape == x.shape
    if cfg.data.dataset == "cifar10":
        assert in_channels == 720  # UniAD App. B.4
