"""Training throughput of the one trainer, measured the way a run spends its time.

    python benchmarks/train_throughput.py                       # quick presets, CPU (or GPU)
    python benchmarks/train_throughput.py --preset paper        # on a GPU: bf16+compile vs fp32 eager

Each model runs :func:`adnotes.train.fit` itself, with its shipped config (``configs/<model>_mvtec.yaml``
for ``paper``, ``<model>_quick.yaml`` for ``quick``: batch, amp, channels-last, loss), on synthetic
cached features of the shapes its backbone gives (speed does not depend on the values), for
``--warmup`` steps (torch.compile, the allocator) and then ``--steps`` measured steps. The trainer
reports the time of each curve interval with the evaluation and checkpoint apart
(``table.attrs["timing"]``), so ``steps/s`` includes everything a step costs in a real run (batch
indexing and copies, the loop's bookkeeping) and nothing else.

``+3 syncs``: the same run with the three host syncs per step the trainer's loop used to make (an
isfinite check before backward, two ``.item()`` after the optimizer step); on a GPU each one
drains the launch queue, on a CPU they cost nothing. ``eval s``: one evaluation of MVTec-AD's
1 725 test images, scaled from the synthetic test split. With ``--preset paper`` the last column
projects the paper schedule on MVTec-AD from these numbers (UniAD: 1000 epochs of 3 629 images at
batch 64 = 56 000 steps, ≈57 000 when the last partial batch of each epoch is kept, evaluated every
560 steps): steps / steps·s⁻¹ + evaluations × eval s.

Variants: ``bf16+compile`` is the config's CUDA settings (bf16 autocast unless the config turns it
off, as Omni-AD's does; torch.compile; channels-last for convolutional models) and ``fp32 eager``
plain PyTorch; on a CPU the trainer ignores both, so one ``cpu`` row. Each measurement runs in a
fresh process (its own compile caches and peak memory: CUDA max allocated, CPU peak RSS).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# MVTec-AD's train images per class (3 629) and test images (1 725): the paper schedules' sizes.
MVTEC_TRAIN = {"bottle": 209, "cable": 224, "capsule": 219, "carpet": 280, "grid": 264, "hazelnut": 391,
               "leather": 245, "metal_nut": 220, "pill": 267, "screw": 320, "tile": 230, "toothbrush": 60,
               "transistor": 213, "wood": 247, "zipper": 240}
MVTEC_TEST_IMAGES = 1725
VARIANTS = {"bf16+compile": (), "fp32 eager": ("train.amp=false", "train.compile=false", "train.channels_last=false")}


def config_path(name: str, preset: str) -> Path:
    """The shipped config of a model: its MVTec config for ``paper`` when there is one, else the quick one."""
    full = ROOT / "configs" / f"{name}_mvtec.yaml"
    return full if preset == "paper" and full.is_file() else ROOT / "configs" / f"{name}_quick.yaml"


def bench_config(name: str, preset: str, variant: str, steps: int, warmup: int, overrides=()):
    """The model's config for ``warmup + steps`` steps with an evaluation after the warm-up."""
    from adnotes.train import Config

    return Config.load(config_path(name, preset), [
        f"model.preset={preset}", f"train.steps={warmup + steps}", "train.epochs=null", f"eval.every={warmup}",
        "train.seeds=[0]", "eval.keep_steps=[]", *VARIANTS[variant], *overrides])


def feature_shapes(cfg) -> list[tuple[int, ...]]:
    """(C, h, w) of the cached features a data config gives (one per stage when multi-scale), from its
    backbone with random weights on one image."""
    from adnotes.train import make_backbone

    d = replace(cfg.data, weights="none")
    backbone = make_backbone(d)
    x = torch.zeros(1, 3, d.image_size, d.image_size)
    maps = backbone.stage_maps(x) if d.multiscale else [backbone(x)]
    return [tuple(m.shape[1:]) for m in maps]


def synthetic_features(cfg, shapes, n_train: int, n_test: int, seed: int = 0):
    """(train, test) FeatureSets of random float16 features of these shapes, two classes; the test split
    (and the train split when the config adds generated anomalies) has anomalies with square masks,
    and cached images when the config keeps them."""
    from adnotes.features import FeatureSet

    g, s = torch.Generator().manual_seed(seed), cfg.data.image_size

    def split(n: int, anomalies: bool) -> FeatureSet:
        features = [torch.randn(n, *shape, generator=g).half() for shape in shapes]
        labels = (torch.arange(n) % 3 > 0).long() if anomalies else torch.zeros(n, dtype=torch.long)
        masks = torch.zeros(n, s, s, dtype=torch.bool)
        masks[labels == 1, s // 4:s // 2, s // 4:s // 2] = True
        k = cfg.data.keep_images
        extras = {"images": torch.randn(n, 3, k, k, generator=g).half()} if k else {}
        return FeatureSet(features if cfg.data.multiscale else features[0], labels,
                          ["a" if i < n // 2 else "b" for i in range(n)], masks if anomalies else None, extras)

    return split(n_train, bool(cfg.data.synthetic)), split(n_test, True)


def paper_schedule(cfg) -> tuple[int, float]:
    """(steps, evaluations counted in passes over the whole test set) of a config's schedule on MVTec-AD."""
    t, d = cfg.train, cfg.data
    generators = [d.synthetic] if isinstance(d.synthetic, str) else list(d.synthetic or [])
    views = 1 + len(generators) * d.synthetic_copies
    sizes = list(MVTEC_TRAIN.values()) if t.mode == "separate" else [sum(MVTEC_TRAIN.values())]
    per_model = [t.epochs * max(1, n * views // t.batch_size) if t.epochs else t.steps for n in sizes]
    evaluations = sum((s // cfg.eval.every + 1) * n for s, n in zip(per_model, sizes)) / sum(sizes)
    return sum(per_model), evaluations


def with_old_syncs(loss_fn, last: list):
    """``loss_fn`` plus the old loop's sync before backward (isfinite); :func:`measure` adds its two
    ``.item()`` after the optimizer step."""
    def synced(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss")
        last[:] = [loss]
        return loss
    return synced


def measure(name: str, preset: str, variant: str, steps: int, warmup: int, train_images: int, test_images: int,
            threads: int, syncs: bool, overrides=()) -> dict:
    """One trainer run in this (fresh) process: steps/s after the warm-up, one evaluation's seconds,
    peak memory."""
    import adnotes.train as trainer

    torch.set_num_threads(threads)
    cfg = bench_config(name, preset, variant, steps, warmup, overrides)
    shapes = feature_shapes(cfg)
    per_image = 2 * sum(math.prod(shape) for shape in shapes)
    n_train = min(train_images, max(2 * cfg.train.batch_size, int(2e9 // per_image)))  # at most ~2 GB
    train_set, test = synthetic_features(cfg, shapes, n_train, test_images)
    model = trainer.build_model(cfg, train_set)
    if syncs:
        last = []
        if hasattr(model, "training_loss"):
            type(model).training_loss = with_old_syncs(type(model).training_loss, last)
        else:
            trainer.reconstruction_loss = with_old_syncs(trainer.reconstruction_loss, last)
        step = torch.optim.lr_scheduler.StepLR.step
        torch.optim.lr_scheduler.StepLR.step = lambda self, *a: (
            [loss.item() for loss in last * 2], step(self, *a))[1]  # logging and the progress bar
    device = trainer._device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        table = trainer.fit(cfg, train_set, test, Path(tmp) / "seed0", seed=0, desc=f"{name} {variant}")
    (_, _, _, eval_seconds), (first, last_step, train_seconds, _) = table.attrs["timing"][:2]
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    amp = cfg.train.amp and device.type == "cuda"
    compiled = cfg.train.compile and device.type == "cuda" and trainer._compile_works(device)
    return {"model": name, "variant": variant if device.type == "cuda" else "cpu", "device": str(device),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "batch": cfg.train.batch_size,
            "amp": amp, "compile": compiled, "steps_per_s": (last_step - first) / train_seconds,
            "eval_s": eval_seconds * MVTEC_TEST_IMAGES / test_images, "peak_mib": peak,
            "schedule": paper_schedule(cfg) if preset == "paper" else None}


def in_fresh_process(*args) -> dict:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


def run(models, preset: str = "quick", steps: int = 200, warmup: int = 20, train_images: int = 3629,
        test_images: int = 64, threads: int | None = None, variants=None, overrides=()) -> list[dict]:
    """Rows of the benchmark (see the module docstring): per model and variant, with and without the old syncs."""
    threads = threads or torch.get_num_threads()
    variants = variants or (list(VARIANTS) if torch.cuda.is_available() else ["fp32 eager"])
    rows = []
    for name in models:
        for variant in variants:
            row, synced = (in_fresh_process(name, preset, variant, steps, warmup, train_images, test_images, threads,
                                            syncs, tuple(overrides)) for syncs in (False, True))
            row["synced_steps_per_s"] = synced["steps_per_s"]
            if row["schedule"]:
                total, evaluations = row["schedule"]
                row["projected_min"] = (total / row["steps_per_s"] / 60, evaluations * row["eval_s"] / 60)
            rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'model':<12}{'variant':<14}{'params':>8}{'batch':>6}{'steps/s':>9}{'+3 syncs':>10}{'sync ms':>9}"
             f"{'eval s':>8}{'peak MiB':>10}  paper schedule (train + evaluation)"]
    for r in rows:
        sync_ms = 1e3 * (1 / r["synced_steps_per_s"] - 1 / r["steps_per_s"])
        projected = ""
        if r.get("projected_min"):
            total, evaluations = r["schedule"]
            train_min, eval_min = r["projected_min"]
            projected = (f"  {total} steps: {train_min:.1f} + {eval_min:.1f} min ({evaluations:.0f} evaluations)")
        lines.append(f"{r['model']:<12}{r['variant']:<14}{r['params_M']:>7.2f}M{r['batch']:>6}{r['steps_per_s']:>9.1f}"
                     f"{r['synced_steps_per_s']:>10.1f}{sync_ms:>9.2f}{r['eval_s']:>8.1f}{r['peak_mib']:>10.0f}"
                     f"{projected}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=("quick", "paper"))
    parser.add_argument("--steps", type=int, default=200, help="measured steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn", "transformer", "uniad", "omniad"])
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), help="default: both on CUDA, one on CPU")
    parser.add_argument("--train-images", type=int, default=3629, help="synthetic train split (capped at ~2 GB)")
    parser.add_argument("--test-images", type=int, default=64, help="synthetic test split (eval s is scaled)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="more config overrides")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {args.threads} threads"
    print(f"{device}, preset {args.preset}, {args.warmup} warm-up + {args.steps} measured steps; "
          "each measurement in a fresh process", file=sys.stderr)
    print(format_rows(run(args.models, args.preset, args.steps, args.warmup, args.train_images, args.test_images,
                          args.threads, args.variants, args.set)))


if __name__ == "__main__":
    main()
