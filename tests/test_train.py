"""The trainer on tiny synthetic features: curves, resume, run folders, NaN stop, separate mode."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import adnotes.train as trainer
from adnotes.features import FeatureSet
from adnotes.train import Config, train
from fixtures import tiny_config, tiny_features, tiny_multiscale_features

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_run(a, b):
    """Two run folders ended with identical weights and identical curves (seed 0)."""
    wa, wb = (torch.load(r / "seed0" / "checkpoint.pt", weights_only=True)["model"] for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    pd.testing.assert_frame_equal(pd.read_csv(a / "seed0" / "curves.csv"), pd.read_csv(b / "seed0" / "curves.csv"))


def test_curves_and_final_metrics_match_an_independent_evaluation(tmp_path):
    feats = tiny_features()
    run = train(tiny_config(), "r", runs=tmp_path, features=feats)
    curves = pd.read_csv(run / "seed0" / "curves.csv")
    assert sorted(set(curves.step)) == [0, 2, 4, 6] and set(curves.cls) == {"a", "b", "mean"}
    assert {"image_AUROC", "pixel_AUROC", "loss"} <= set(curves.columns)
    assert (run / "config.yaml").is_file() and (run / "environment.json").is_file()
    # Recompute class a's image AUROC from the checkpoint by hand: L2 map, bilinear ×8
    # (align_corners), 4×4 average pool, max; then scikit-learn.
    model = trainer.build_model(tiny_config(), feats[0])
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

    assert_same_run(whole, killed)


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
    assert Config.load(None, ["train.lr=1e-3"]).train.lr == 0.001  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ValueError, match="train.lr='fast': expected a number"):
        Config.load(None, ["train.lr=fast"])
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
    channels = {"efficientnet_b4": [24, 32, 56, 160, 448], "efficientnet_lite0": [16, 24, 40, 112, 320],
                "resnet34": [64, 64, 128, 256, 512], "vgg19": [64, 128, 256, 256]}  # VGG19: HaloAE's four taps
    stage_channels = [channels[cfg.data.backbone][s - 1] for s in cfg.data.stages]
    if cfg.data.backbone == "vgg19":
        stage_channels = channels["vgg19"]
    size = cfg.data.image_size
    if cfg.data.multiscale:  # one map per stage at stride 2**stage
        x = [torch.randn(1, c, size // 2**s, size // 2**s) for c, s in zip(stage_channels, cfg.data.stages)]
    else:
        stride = 4 if cfg.data.backbone == "vgg19" else cfg.data.out_stride
        x = torch.randn(1, sum(stage_channels), size // stride, size // stride)
    masks = torch.zeros(1, size, size, dtype=torch.bool)
    model = trainer.build_model(cfg, FeatureSet(x, torch.zeros(1, dtype=torch.long), ["a"], masks))
    out = model.eval()(x)
    assert [o.shape for o in out] == [m.shape for m in x] if cfg.data.multiscale else out.shape == x.shape
    in_channels = sum(stage_channels)
    if cfg.data.dataset == "cifar10":
        assert in_channels == 720  # UniAD App. B.4


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_matches_one_process(tmp_path):
    """torchrun, 2 CPU processes: each takes half of the global batch and DDP averages the gradients."""
    import os
    import subprocess
    import sys

    script = Path(__file__).parent / "ddp_train.py"
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPUs, also on a GPU host
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), str(tmp_path / "two")], check=True, env=env)
    one, two = (pd.read_csv(tmp_path / r / "ddp" / "seed0" / "curves.csv") for r in ("one", "two"))
    assert len(one) == len(two) == 3 * 5  # 5 evaluations (steps 0, 2, 4, 6, 8) × (a, b, mean)
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-4, rtol=1e-4)
    a, b = (torch.load(tmp_path / r / "ddp" / "seed0" / "checkpoint.pt", weights_only=True)["model"]
            for r in ("one", "two"))
    # atol 1e-4: the attention key biases get gradients that are pure rounding noise (a key bias
    # cancels in the softmax), and Adam scales noise up to ±lr per step.
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    env = json.loads((tmp_path / "two" / "ddp" / "environment.json").read_text())
    assert env["processes"] == 2


def test_omniad_trains_on_multiscale_features_and_scores_like_its_paper(tmp_path):
    """Omni-AD through the one trainer: per-scale 1 - cos maps at image size, σ 4, image score = max."""
    from scipy import ndimage

    feats = tiny_multiscale_features()
    cfg = Config.load(None, [
        "model.name=omniad", "model.preset=quick", "data.multiscale=true", "data.image_size=64",
        "model.args={widths: [16, 8, 8, 8], num_tokens: 4, heads: 2}",
        "train.steps=4", "train.batch_size=4", "train.lr=0.001", "train.decay_1d=false", "train.clip_grad=5",
        "train.device=cpu",
        "eval.every=2", "eval.pool=null", "eval.sigma=4"])
    run = train(cfg, "omni", runs=tmp_path, features=feats)
    model = trainer.build_model(cfg, feats[0])
    assert model.config.in_channels == (4, 6, 8) and model.config.in_strides == (4, 8, 16)
    model.load_state_dict(torch.load(run / "seed0" / "checkpoint.pt", weights_only=True)["model"])
    test = feats[1].select("b")
    with torch.no_grad():
        x = [f.float() for f in test.features]
        student = model.eval()(x)
    per_scale = []
    for t, s in zip(x, student):  # numpy / scipy reference: 1 - cos, bilinear align_corners to 64², mean, σ 4
        t, s = t.double().numpy(), s.double().numpy()
        cos = (t * s).sum(1) / (np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1))
        grid = np.arange(64) * (cos.shape[-1] - 1) / 63
        rows, cols = np.meshgrid(grid, grid, indexing="ij")
        per_scale.append([ndimage.map_coordinates(1 - c, [rows, cols], order=1) for c in cos])
    maps = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in np.mean(per_scale, axis=0)])
    final = json.loads((run / "seed0" / "metrics.json").read_text())
    assert final["b"]["image_AUROC"] == pytest.approx(roc_auc_score(test.labels, maps.max(axis=(1, 2))), abs=1e-6)
    pixel = roc_auc_score(test.masks.numpy().ravel(), maps.ravel())
    assert final["b"]["pixel_AUROC"] == pytest.approx(pixel, abs=1e-4)


def test_decay_1d_false_exempts_biases_and_norms_from_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    cfg = Config.load(None, ["train.decay_1d=false", "train.weight_decay=0.5"])
    groups = trainer._optimizer(model, cfg.train).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.5 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    assert sum(len(g["params"]) for g in groups) == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_bf16_compile_and_channels_last(tmp_path):
    """The CUDA path (bf16 autocast, torch.compile, channels-last for the CNN) trains and scores."""
    feats = tiny_features()
    cfg = Config.load(None, ["model.name=cnn", "model.preset=quick", "model.args={hidden: 16}", "train.steps=4",
                             "train.batch_size=4", "train.device=cuda", "eval.every=2", "eval.pool=4"])
    run = train(cfg, "cuda", runs=tmp_path, features=feats)
    final = json.loads((run / "seed0" / "metrics.json").read_text())
    assert 0.0 <= final["mean"]["image_AUROC"] <= 1.0


def test_train_or_load_trains_once_and_keys_runs_by_config(tmp_path, capsys):
    feats = tiny_features()
    first = trainer.train_or_load(tiny_config(), "nb", runs=tmp_path, features=feats)
    before = (first / "seed0" / "checkpoint.pt").read_bytes()
    again = trainer.train_or_load(tiny_config(), "nb", runs=tmp_path, features=feats)
    assert again == first and "found finished run" in capsys.readouterr().out
    assert (first / "seed0" / "checkpoint.pt").read_bytes() == before  # loaded, not retrained
    other = trainer.train_or_load(tiny_config(steps=4), "nb", runs=tmp_path, features=feats)
    assert other != first and other.name.startswith("nb-")
    table = trainer.final_metrics(first)
    final = json.loads((first / "seed0" / "metrics.json").read_text())
    assert table.loc["a", "image_AUROC"] == pytest.approx(final["a"]["image_AUROC"])


def test_keep_steps_saves_the_weights_at_those_steps(tmp_path):
    cfg = tiny_config()
    cfg.eval.keep_steps = [0, 3, 6]
    feats = tiny_features()
    run = train(cfg, "w", runs=tmp_path, features=feats)
    steps = sorted(int(p.stem.split("step")[1]) for p in (run / "seed0").glob("weights_step*.pt"))
    assert steps == [0, 3, 6]
    untrained = trainer.load_model(run, step=0, features=feats[1])
    torch.manual_seed(0)  # fit() seeds the initial weights with the run's seed
    fresh = trainer.build_model(cfg, feats[0])
    assert all(torch.equal(a, b) for a, b in zip(untrained.state_dict().values(), fresh.state_dict().values()))
    last = torch.load(run / "seed0" / "weights_step6.pt", weights_only=True)
    final = torch.load(run / "seed0" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(last[k], final[k]) for k in final)
    cfg.eval.keep_steps = [3]  # the last step without its own weights file: the final weights
    run = train(cfg, "w3", runs=tmp_path, features=feats)
    assert trainer.kept_steps(run) == [0, 3, 6]
    at_end = trainer.load_model(run, step=6, features=feats[1]).state_dict()
    final = torch.load(run / "seed0" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(at_end[k], final[k]) for k in final)


# ----------------------------------------------------------------------------- checkpoints (issue 13)

@pytest.fixture
def sigint_as_at_a_terminal():
    """Ctrl-C raises KeyboardInterrupt, as at a terminal. A test process may have SIGINT ignored
    (pytest-xdist's workers do), and the trainer rightly leaves an ignored SIGINT alone."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint_and_resumes_exactly(tmp_path, monkeypatch,
                                                                                sigint_as_at_a_terminal):
    import os
    import signal

    feats = tiny_features()
    whole = train(tiny_config(), "whole", runs=tmp_path, features=feats)
    batches, handler = trainer._batches, signal.getsignal(signal.SIGINT)

    def ctrl_c_during_step_5(n, batch_size, seed, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as Ctrl-C sends it
        return batches(n, batch_size, seed, step)

    monkeypatch.setattr(trainer, "_batches", ctrl_c_during_step_5)
    monkeypatch.setattr(trainer, "runs_dir", lambda: tmp_path)
    with pytest.raises(trainer.TrainingInterrupted, match=r"after step 5 of 6.*adnotes train --name killed --resume"):
        train(tiny_config(), "killed", runs=tmp_path, features=feats)
    assert issubclass(trainer.TrainingInterrupted, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C behaves as before outside training
    # Step 5 finished and is in the checkpoint, between two evaluations (every 2 steps).
    assert torch.load(tmp_path / "killed" / "seed0" / "checkpoint.pt", weights_only=True)["step"] == 5
    monkeypatch.setattr(trainer, "_batches", batches)
    killed = train(tiny_config(), "killed", runs=tmp_path, features=feats, resume=True)
    # The loss of the row at step 6 averages steps 5 and 6 across the interruption: identical too.
    assert_same_run(whole, killed)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_checkpoint_is_an_error_naming_the_file_and_the_last_evaluation(tmp_path, damage):
    run = train(tiny_config(), "r", runs=tmp_path, features=tiny_features())
    checkpoint = run / "seed0" / "checkpoint.pt"
    checkpoint.write_bytes(b"" if damage == "empty" else checkpoint.read_bytes()[:300])
    with pytest.raises(RuntimeError, match=f"{checkpoint}.*damaged.*at step 6"):
        train(tiny_config(), "r", runs=tmp_path, features=tiny_features(), resume=True)


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    real, calls = torch.save, []

    def killed_in_the_second_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # half a file, then the process dies
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_in_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(), "r", runs=tmp_path, features=tiny_features())
    monkeypatch.setattr(torch, "save", real)
    folder = tmp_path / "r" / "seed0"
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == 2  # the first one, whole
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "curves.csv"]  # no temporary file left


def test_resuming_a_finished_run_adds_no_steps_and_rewrites_nothing(tmp_path):
    feats = tiny_features()
    run = train(tiny_config(), "r", runs=tmp_path, features=feats)
    files = [run / "seed0" / name for name in ("metrics.json", "curves.csv", "checkpoint.pt")]
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in files]
    train(tiny_config(), "r", runs=tmp_path, features=feats, resume=True)
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in files] == before


@pytest.mark.filterwarnings("ignore:for .* copying from a non-meta parameter")
def test_a_checkpoint_resumes_on_another_device_loaded_through_the_cpu(tmp_path, monkeypatch):
    """On a GPU, loading with map_location=<the GPU> made the saved CPU RNG state a GPU tensor, which
    torch.set_rng_state refuses. The meta device stands in for the GPU here."""
    feats = tiny_features()
    run = train(tiny_config(), "r", runs=tmp_path, features=feats)
    monkeypatch.setattr(trainer, "_device", lambda name: torch.device("meta"))
    table = trainer.fit(tiny_config(), *feats, run / "seed0", seed=0, resume=True)
    final = json.loads((run / "seed0" / "metrics.json").read_text())
    assert table.loc["a", "image_AUROC"] == final["a"]["image_AUROC"]


# ----------------------------------------------------------------------------- config mistakes (issue 13)

@pytest.mark.parametrize("override, message", [
    ("train.steps=-5", "train.steps=-5: must be an integer ≥ 1"),
    ("train.steps=2.5", "train.steps=2.5: expected an integer"),
    ("train.steps=abc", "train.steps='abc': expected an integer"),
    ("train.batch_size=0", "train.batch_size=0: must be an integer ≥ 1"),
    ("eval.every=0", "eval.every=0: must be an integer ≥ 1"),
    ("train.lr=0", "train.lr=0: must be a finite number > 0"),
    ("train.seeds=[0.5]", "train.seeds=[0.5]: expected a list of integers"),
    ("train.mode=joint", "train.mode='joint': must be 'unified' or 'separate'"),
    ("model.name=unet", "model.name='unet': must be a registered model"),
    ("data.dataset=imagenet", "data.dataset='imagenet': must be one of mini"),
    ("train.amp=maybe", "train.amp='maybe': expected true or false"),
])
def test_bad_config_values_are_one_line_errors_naming_the_field(override, message):
    with pytest.raises(ValueError) as error:
        Config.load(None, [override])
    assert str(error.value).startswith(f"--set: {message}") and "\n" not in str(error.value)


def test_a_bad_config_leaves_no_run_folder(tmp_path):
    feats = tiny_features()
    for field, value in [("steps", -5), ("batch_size", 0), ("steps", 2.5)]:
        cfg = tiny_config()
        setattr(cfg.train, field, value)  # changed in Python: train() checks again
        with pytest.raises(ValueError, match=f"train.{field}={value}"):
            train(cfg, "bad", runs=tmp_path, features=feats)
    cfg = tiny_config()
    cfg.model.args["no_such_field"] = 1  # caught by building the model before the folder is made
    with pytest.raises(ValueError, match="model.args=.*no_such_field"):
        train(cfg, "bad", runs=tmp_path, features=feats)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, message", [("", "empty"), ("model: {name: uniad\n", "not valid YAML at line 2"),
                                           ("- a list\n", "not key: value pairs"),
                                           ("train: 5\n", "section 'train' must hold key: value pairs"),
                                           ("train: {steps: -1}\n", "train.steps=-1: must be")])
def test_empty_or_malformed_yaml_is_an_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        Config.load(path, ["eval.every=5"])
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_set_values_are_read_as_their_field_type():
    for root in ("/data/mv #2", "/data/a: b", "[not a list]"):  # a text field takes the text as it is
        assert Config.load(None, [f"data.root={root}"]).data.root == root
    cfg = Config.load(None, ["data.root=null", "eval.pool=null", "data.synthetic=[confetti]", "data.synthetic_copies=2"])
    assert cfg.data.root is None and cfg.eval.pool is None and cfg.data.synthetic == ["confetti"]
    typed = Config.load(None, {"data.root": "/data/a: b", "train.seeds": [3]})  # values from Python, not text
    assert typed.data.root == "/data/a: b" and typed.train.seeds == [3]


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "/abs", "..", ""])
def test_a_run_name_cannot_leave_runs(tmp_path, name):
    with pytest.raises(ValueError, match="plain folder name"):
        train(tiny_config(), name, runs=tmp_path / "runs", features=tiny_features())
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_a_config_that_differs_from_the_saved_one(tmp_path):
    feats = tiny_features()
    run = train(tiny_config(), "r", runs=tmp_path, features=feats)
    before = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"made with train.steps=6 \(asked: 8\).*--name"):
        train(tiny_config(steps=8), "r", runs=tmp_path, features=feats, resume=True)
    assert (run / "config.yaml").read_text() == before
    assert train(tiny_config(), "r", runs=tmp_path, features=feats, resume=True) == run  # the same config: fine
