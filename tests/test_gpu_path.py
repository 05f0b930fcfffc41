"""The CUDA path, checked on a CPU before any GPU run (issue 14): stand-ins for the GPU are a
monkeypatched ``torch.cuda``, CPU bf16 autocast, torch._dynamo's graph count and the meta device."""
import threading

import pytest
import torch

import adnotes.train as trainer
from adnotes.data import ADDataset, mvtec_records
from adnotes.features import cached_features
from adnotes.models import create
from adnotes.models.haloae import ssim
from adnotes.models.uniad import feature_jitter
from adnotes.train import train
from fixtures import make_mvtec, tiny_config, tiny_features

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trainer_tests_pin_the_cpu_on_a_gpu_host(tmp_path, monkeypatch):
    """With train.device=auto a GPU host would train the tests' runs on CUDA and compare them with CPU
    tensors; tiny_config pins the CPU. Here "auto" resolves to the meta device, standing in for the GPU."""
    device = trainer._device
    monkeypatch.setattr(trainer, "_device", lambda name: torch.device("meta") if name == "auto" else device(name))
    run = train(tiny_config(steps=2), "r", runs=tmp_path, features=tiny_features())
    assert (run / "seed0" / "metrics.json").is_file()


def test_checkpoints_keep_and_restore_the_cuda_rng_state(tmp_path, monkeypatch):
    """torch.cuda's RNG functions are stand-ins here; the state goes through a checkpoint file on disk."""
    cuda_state, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    gpu = torch.device("cuda", 0)
    torch.manual_seed(5)
    state = trainer._rng_state(gpu) | {"model": {}, "optimizer": {}, "scheduler": {}, "step": 1}
    trainer._save(state, tmp_path / "checkpoint.pt")
    expected = torch.rand(3)  # the CPU stream after the saved state
    loaded = trainer._load_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "curves.csv")
    trainer._set_rng_state(loaded, gpu)
    assert torch.equal(torch.rand(3), expected)
    assert len(restored) == 1 and torch.equal(restored[0][0], cuda_state) and restored[0][1] == gpu
    trainer._set_rng_state(loaded, torch.device("cpu"))  # resumed on the CPU: the CUDA state is not touched
    assert len(restored) == 1 and trainer._rng_state(torch.device("cpu"))["cuda_rng"] is None


def test_compile_preflight_falls_back_to_eager_in_one_line(monkeypatch, capsys):
    import importlib.util
    import shutil

    trainer._compile_works.cache_clear()
    try:
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setattr(shutil, "which", lambda name: None)
        assert not trainer._compile_works(torch.device("cuda"))
        assert capsys.readouterr().out == ("torch.compile is unavailable here (no C compiler (cc, gcc or clang) on "
                                           "PATH): training eager\n")
        trainer._compile_works.cache_clear()
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "triton" else find_spec(name, *a))
        assert not trainer._compile_works(torch.device("cuda"))
        assert "Triton is not installed" in capsys.readouterr().out
    finally:
        trainer._compile_works.cache_clear()


def test_ssim_runs_in_float32_under_bf16_autocast():
    """bf16 autocast runs SSIM's blur convolutions in bf16 despite .float(): 1 − SSIM lost its digits."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = x + 0.05 * torch.randn(2, 3, 32, 32, generator=g)
    want = ssim(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim(x, y)
    assert got.dtype == torch.float32 and abs(got.item() - want.item()) < 1e-6


def _graphs(model, x) -> tuple[int, int]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    return explained.graph_count, explained.graph_break_count


@pytest.mark.slow
def test_uniad_and_haloae_training_forward_compile_to_one_graph():
    """No data-dependent Python branch in the compiled forward (each one a graph break and, on a GPU,
    a host sync): UniAD's neighbour masks and jitter coin, HaloAE's statistics flag."""
    uniad = create("uniad", preset="quick", in_channels=8, feature_size=4, hidden_dim=16, num_heads=2, ffn_dim=32,
                   neighbor_size=3).train()
    assert _graphs(uniad, torch.randn(2, 8, 4, 4)) == (1, 0)
    haloae = create("haloae", preset="quick", in_channels=8, head_channels=8, dim_head=4, block_size=2, halo=1,
                    image_channels=8, image_middle=1, image_size=32).train()
    assert haloae.config.standardize and _graphs(haloae, torch.randn(2, 8, 8, 8)) == (1, 0)


def test_haloae_statistics_come_from_the_first_training_batch_only():
    model = create("haloae", preset="quick", in_channels=8, head_channels=8, dim_head=4, block_size=2, halo=1,
                   image_channels=8, image_middle=1, image_size=32).train()
    first, second = torch.randn(3, 8, 8, 8) * 4 + 2, torch.randn(3, 8, 8, 8)
    model(first)
    model(second)
    assert torch.allclose(model.feature_mean, first.mean(dim=(0, 2, 3)))
    assert torch.allclose(model.feature_std, first.std(dim=(0, 2, 3)))


def test_feature_jitter_keeps_the_random_stream_of_an_if_for_prob_0_and_1():
    """The cached results were trained with `if torch.rand(()) < prob: add noise`; for p in {0, 1}
    the branch-free jitter draws the same numbers in the same order."""
    x = torch.randn(2, 5, 8)
    torch.manual_seed(0)
    got = feature_jitter(x, 20.0, 1.0)
    torch.manual_seed(0)
    torch.rand(())
    want = x + torch.randn_like(x) * (x.norm(dim=-1, keepdim=True) / 8 * 20.0)
    assert torch.equal(got, want)
    torch.manual_seed(0)
    assert torch.equal(feature_jitter(x, 20.0, 0.0), x)
    after = torch.rand(())
    torch.manual_seed(0)
    torch.rand(())
    assert torch.equal(after, torch.rand(()))  # exactly one draw (the coin) when p = 0


def test_model_cost_waits_for_the_gpu_before_reading_the_clock(monkeypatch):
    import adnotes.zoo as zoo

    events = []

    class Logged(torch.nn.Module):
        def forward(self, x):
            events.append("forward")
            return x * 2

    clock = zoo.time.perf_counter
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as when the model runs on a GPU
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    monkeypatch.setattr(zoo.time, "perf_counter", lambda: events.append("clock") or clock())
    zoo.model_cost(Logged(), torch.randn(4, 3), seconds=0.01)
    clocks = [i for i, e in enumerate(events) if e == "clock"]
    assert len(clocks) >= 3
    for i in clocks:  # between the last forward and every clock reading, a sync
        last_forward = max((j for j in range(i) if events[j] == "forward"), default=-1)
        assert "sync" in events[last_forward + 1:i]


# ----------------------------------------------------------------------------- the feature cache

class _SlowBackbone(torch.nn.Module):
    """Average-pools to stride 4, slowly, and counts the images it has seen."""

    fingerprint = "slow-toy"

    def __init__(self):
        super().__init__()
        self.images = 0

    def forward(self, x):
        self.images += len(x)
        threading.Event().wait(0.05)
        return torch.nn.functional.avg_pool2d(x, 4)


def test_a_cold_cache_is_extracted_once_while_other_processes_wait(tmp_path):
    """DDP ranks (here: threads) that meet a cold cache: one extracts, the others wait for its entry."""
    dataset = ADDataset(mvtec_records(make_mvtec(tmp_path / "d"), "test"), image_size=16, name="toy/test")
    backbone, results = _SlowBackbone(), []
    workers = [threading.Thread(target=lambda: results.append(
        cached_features(backbone, dataset, cache_dir=tmp_path / "cache", batch_size=2, verbose=False)))
        for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert backbone.images == len(dataset) and len(results) == 3
    assert all(torch.equal(r.features, results[0].features) for r in results)


def test_extraction_says_the_size_first_and_refuses_a_disk_too_small(tmp_path, monkeypatch, capsys):
    import shutil

    dataset = ADDataset(mvtec_records(make_mvtec(tmp_path / "d"), "test"), image_size=16, name="toy/test")
    backbone, usage = _SlowBackbone(), shutil.disk_usage(tmp_path)
    size = 6 * (3 * 4 * 4 * 2 + 16 * 16)  # 6 images × (3×4×4 float16 features + a 16×16 bool mask)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=size - 1))
    with pytest.raises(OSError, match="need 0.0 GB but .* has 0.0 GB free: set ADNOTES_HOME"):
        cached_features(backbone, dataset, cache_dir=tmp_path / "cache", batch_size=2)
    assert "extracting features of 6 images (toy/test): 0.00 GB" in capsys.readouterr().out
    assert backbone.images == 2  # one batch: the error comes before the rest is extracted
    assert list((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / f"{_key(dataset)}.lock"]  # no entry
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=size))
    assert cached_features(backbone, dataset, cache_dir=tmp_path / "cache", batch_size=2).features.shape == (6, 3, 4, 4)


def _key(dataset):
    from adnotes.features import cache_key

    return cache_key(_SlowBackbone(), dataset)


def test_a_split_moves_to_a_device_with_all_its_tensors():
    train_set, test = tiny_features()
    test.extras["images"] = torch.zeros(len(test), 3, 8, 8, dtype=torch.float16)
    moved = test.to("meta")
    assert {t.device.type for t in (moved.features, moved.labels, moved.masks, moved.extras["images"])} == {"meta"}
    assert moved.classes == test.classes and moved.take(torch.tensor([1, 0]), "meta").shape == (2, 8, 4, 4)
    assert test.nbytes == 16 * 8 * 16 * 2 + 16 * 8 + 16 * 32 * 32 + 16 * 3 * 8 * 8 * 2


@pytest.mark.slow
def test_the_gpu_smoke_script_runs_end_to_end_on_a_cpu_at_tiny_size(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "ADNOTES_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--tiny", "--out", str(tmp_path / "out")],
                          cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split(" | ") for line in (tmp_path / "out" / "gpu_smoke.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| check")]
    assert [(r[0][2:], r[1]) for r in rows] == [(name, "ok") for name in (
        "environment", "gpu tests", "uniad", "cnn", "haloae", "omniad", "adtr+", "resume", "ssim", "throughput", "ddp")]
    assert "steps/s" in (tmp_path / "out" / "train_throughput.txt").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_resumed_after_ctrl_c_draws_the_same_dropout_and_jitter(tmp_path, monkeypatch):
    import os
    import signal

    import pandas as pd

    def config():
        cfg = tiny_config(device="cuda", compile="false")
        cfg.model.args["dropout"] = 0.1  # and jitter (p = 1): both draw from the CUDA generator
        return cfg

    feats = tiny_features()
    whole = train(config(), "whole", runs=tmp_path, features=feats)
    batches = trainer._batches

    def interrupted(name):
        monkeypatch.setattr(trainer, "_batches", lambda n, b, seed, step: (
            os.kill(os.getpid(), signal.SIGINT) if step == 4 else None, batches(n, b, seed, step))[1])
        with pytest.raises(trainer.TrainingInterrupted):
            train(config(), name, runs=tmp_path, features=feats)
        monkeypatch.setattr(trainer, "_batches", batches)
        torch.cuda.manual_seed(12345)  # another CUDA stream in between, as in a new process
        run = train(config(), name, runs=tmp_path, features=feats, resume=True)
        return torch.load(run / "seed0" / "checkpoint.pt", weights_only=True)["model"], run

    want = torch.load(whole / "seed0" / "checkpoint.pt", weights_only=True)["model"]
    got, run = interrupted("resumed")
    assert all(torch.allclose(want[k], got[k], atol=1e-5) for k in want)
    curves = [pd.read_csv(r / "seed0" / "curves.csv") for r in (whole, run)]
    pd.testing.assert_frame_equal(*curves, check_exact=False, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a, **k: None)  # without the CUDA state: other draws
    other, _ = interrupted("not_restored")
    assert any(not torch.allclose(want[k], other[k], atol=1e-5) for k in want)
