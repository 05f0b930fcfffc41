"""The one trainer: any registered model, trained on cached backbone features.

    cfg = Config.load("configs/uniad_quick.yaml", ["train.steps=500"])
    run_dir = train(cfg, name="uniad-quick")

Settings follow UniAD (§4.1, method-specs §2.1): AdamW (lr 1e-4, weight decay 1e-4), grad-norm
clip 0.1, learning rate ×0.1 at 80 % of the run (StepLR(800, 0.1) of 1000 epochs), batch 8.

Curves are the product (UniAD Fig. 2a / Fig. 4): every ``eval.every`` steps the model is scored
on the test split by the one evaluation path (:func:`adnotes.evaluation.evaluate_maps`) and a row
per class (+ ``mean``) is appended to ``curves.csv`` at once. A checkpoint is written at every
evaluation; a killed run continues with ``resume=True`` and ends with the same weights and
curves as an uninterrupted one (the batch order is a function of seed and epoch, and the RNG
states are saved). The curves start at step 0, the untrained model: early on the score is
mostly the feature norm, the floor every curve is read against. ``mode="separate"`` trains one model per class (Fig. 4), each in its own
folder; several seeds run one after another, each in ``seed<k>/``.

Run folder ``runs/<name>/``: ``config.yaml``, ``environment.json``, and per seed (and class)
``curves.csv``, ``metrics.json`` (final per-class table), ``checkpoint.pt``.

On CUDA: bf16 autocast (``train.amp``), ``torch.compile`` (``train.compile``) and channels-last
memory for models with convolutions. Several GPUs (or CPU processes) through ``torchrun``:

    torchrun --nproc_per_node 8 -m adnotes train --config configs/uniad_mvtec.yaml

``train.batch_size`` is the *global* batch: each of the W processes takes every W-th image of
it and DDP averages the gradients, so W processes follow the single-process run step for step
(up to float rounding and the random streams of dropout and jitter, which differ per process).
Rank 0 evaluates, writes the curves and checkpoints; the others wait for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm.auto import tqdm

from .backbone import Backbone
from .data import load_dataset
from .evaluation import evaluate_maps
from .features import FeatureSet, cached_features
from .metrics import METRIC_NAMES, metrics_table
from .models import create
from .models.objectives import LOSS_KINDS, anomaly_map, reconstruction_loss
from .paths import runs_dir

__all__ = ["Config", "train", "train_or_load", "run_name", "fit", "load_features", "evaluate_model", "anomaly_maps",
           "evaluate_run", "summarise", "final_metrics", "load_model"]


# ----------------------------------------------------------------------------- config

@dataclass
class ModelSection:
    name: str = "uniad"          # a name of adnotes.models.list_models()
    preset: str = "quick"        # "paper" | "quick" (quick shrinks the model for CPU labs)
    args: dict = field(default_factory=dict)  # config fields of the model, e.g. {neighbor_size: 5}


@dataclass
class DataSection:
    dataset: str = "mini"        # mini | mvtec | visa | cifar10 | digits
    root: str | None = None
    classes: list[str] | None = None
    normal: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # semantic AD only
    backbone: str = "efficientnet_lite0"
    weights: str = "offline"
    stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    image_size: int = 224
    out_stride: int = 16         # stride of the concatenated feature grid (UniAD: 16, 14×14 at 224²)
    multiscale: bool = False     # True: each stage's map at its own stride (Omni-AD), not concatenated
    synthetic: str | list[str] | None = None  # generated anomalies added to the train split (adnotes.data.synthetic)
    synthetic_copies: int = 1    # views per train image and generator (1 confetti view: FCDD's p = 0.5)
    keep_images: int | None = None  # also cache the train/test images at this size (HaloAE's image branch)


@dataclass
class TrainSection:
    mode: str = "unified"        # unified (one model, all classes) | separate (one per class)
    steps: int = 2000            # or give epochs: steps = epochs · ceil(N / batch_size)
    epochs: int | None = None
    batch_size: int = 8          # UniAD: 8 per GPU
    lr: float = 1e-4             # AdamW, UniAD §4.1
    weight_decay: float = 1e-4
    decay_1d: bool = True        # false: no weight decay on biases and norm weights (Omni-AD §1.6)
    clip_grad: float = 0.1       # official config clip_max_norm
    decay_at: float = 0.8        # ×decay of the learning rate at this fraction of the run
    decay: float = 0.1
    seeds: list[int] = field(default_factory=lambda: [0])
    init: str | None = None      # start from these weights: a run folder (its first seed's final weights) or a
                                 # .pt file; relative paths also from the repository root (ADTR+ continues ADTR)
    device: str = "auto"         # auto | cpu | cuda
    amp: bool = True             # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = True         # torch.compile the model on CUDA (ignored on CPU)
    channels_last: bool = True   # channels-last memory on CUDA for models with convolutions


@dataclass
class EvalSection:
    every: int = 200             # steps between evaluations (and checkpoints)
    pool: int | None = 16        # image score: max of the pool×pool average-pooled map (UniAD)
    reduce: str = "max"          # "mean" for semantic AD (UniAD's CIFAR-10 rule)
    sigma: float | None = None   # Gaussian smoothing of the full-size map (Omni-AD: 4; UniAD: none)
    aupro: bool = False          # AUPRO in the curves (always in the final table)
    keep_steps: list[int] = field(default_factory=list)  # also keep the weights at these steps (0 = untrained)
    normalize: bool = False      # map := |map - its mean over the train set's normal images| (HaloAE eq. 7)


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        sections = {f.name: f.type for f in fields(cls)}
        if unknown := sorted(set(d) - set(sections)):
            raise ValueError(f"unknown config section(s) {unknown}; sections: {', '.join(sections)}")
        out = cls()
        for name, values in d.items():
            section = getattr(out, name)
            known = {f.name: f.type for f in fields(section)}
            if unknown := sorted(set(values or {}) - set(known)):
                raise ValueError(f"unknown key(s) {unknown} in section {name!r}; keys: {', '.join(sorted(known))}")
            for key, value in (values or {}).items():
                if isinstance(value, str) and known[key].startswith("float"):  # YAML reads 1e-3 as a string
                    try:
                        value = float(value)
                    except ValueError:
                        raise ValueError(f"{name}.{key}={value!r}: expected a number") from None
                setattr(section, key, value)
        return out

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] = ()) -> "Config":
        """A YAML file (sections model/data/train/eval) with ``section.key=value`` overrides."""
        d = yaml.safe_load(Path(path).read_text()) if path else {}
        for item in overrides:
            key, sep, value = item.partition("=")
            parts = key.split(".")
            if not sep or len(parts) < 2:
                raise ValueError(f"override {item!r}: write section.key=value, e.g. train.steps=500")
            target = d.setdefault(parts[0], {})
            for part in parts[1:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = yaml.safe_load(value)
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- data

def make_backbone(d: DataSection) -> nn.Module:
    """The frozen feature extractor a data config names (HaloAE's VGG19 taps, else a timm backbone)."""
    if d.backbone == "vgg19":
        from .backbone import VGG19Taps

        return VGG19Taps(weights=d.weights)
    return Backbone(d.backbone, stages=tuple(d.stages), weights=d.weights, out_stride=d.out_stride)


def load_features(cfg: Config, device: str = "cpu", splits: tuple[str, ...] = ("train", "test")
                  ) -> tuple[FeatureSet, ...]:
    """Cached backbone features of the splits the config names, in the order asked: the train split
    comes with its generated anomalies (``data.synthetic``)."""
    from .data.synthetic import with_synthetic

    d = cfg.data
    backbone = make_backbone(d)
    split = dict(root=d.root, classes=d.classes, normal=d.normal, image_size=d.image_size)

    def dataset(name: str):
        data = load_dataset(d.dataset, name, **split)
        return with_synthetic(data, d.synthetic, d.synthetic_copies) if name == "train" else data

    return tuple(cached_features(backbone, dataset(name), multiscale=d.multiscale, keep_images=d.keep_images,
                                 device=device) for name in splits)


# ----------------------------------------------------------------------------- one model

def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def build_model(cfg: Config, features: FeatureSet) -> nn.Module:
    """The configured model, sized to the features it will reconstruct."""
    args = dict(cfg.model.args)
    if features.multiscale:  # Omni-AD: channels and strides of each teacher map
        args.setdefault("in_strides", tuple(cfg.data.image_size // f.shape[-1] for f in features.features))
    elif cfg.model.name in ("uniad", "transformer", "mlp", "adtr"):
        args.setdefault("feature_size", features.grid)
    return create(cfg.model.name, preset=cfg.model.preset, in_channels=features.channels, **args)


def _kinds(model: nn.Module) -> tuple[str, str]:
    """(loss kind, map kind) of a model: its config's ``loss`` and ``map_kind`` (default: the loss's
    when that is a shared kind, else "mse"; models with their own ``training_loss`` name other losses)."""
    config = getattr(model, "config", None)
    loss = getattr(config, "loss", "mse")
    return loss, getattr(config, "map_kind", loss if loss in LOSS_KINDS else "mse")


@torch.no_grad()
def anomaly_maps(model: nn.Module, test: FeatureSet, *, device: str | torch.device = "cpu",
                 batch: int = 64, reference: FeatureSet | None = None) -> torch.Tensor:
    """(N, h, w) float32 anomaly maps of a model on cached test features, on the feature grid
    (multi-scale features: the mean over scales at the image size): what :func:`evaluate_model` scores.

    The map is the model's own ``anomaly_map`` when it has one, else its config's map kind. With
    ``reference`` (a train split) every map becomes |map − mean map of the reference's normal
    images| (HaloAE eq. 7, ``eval.normalize``)."""
    was_training = model.training
    model.eval()
    kind = _kinds(model)[1]
    size = test.masks.shape[-2:] if test.multiscale and test.masks is not None else None  # per scale to full size
    maps = []
    for idx in torch.arange(len(test)).split(batch):
        x = test.take(idx, device)                                   # (B, C, h, w) or a list per scale
        out = model(x)
        m = model.anomaly_map(x, out) if hasattr(model, "anomaly_map") else anomaly_map(x, out, kind, size=size)
        maps.append(m.float().cpu())                                 # (B, h, w)
    model.train(was_training)
    maps = torch.cat(maps)
    if reference is not None:
        normal = torch.nonzero(reference.labels == 0).flatten()
        if len(normal) == 0:
            raise ValueError("eval.normalize needs normal images in the train split to average")
        normal_set = FeatureSet(reference.take(normal), reference.labels[normal], [reference.classes[i] for i in normal],
                                None)
        maps = (maps - anomaly_maps(model, normal_set, device=device, batch=batch).mean(0)).abs()
    return maps


def evaluate_model(model: nn.Module, test: FeatureSet, ev: EvalSection, *, aupro: bool,
                   device: torch.device, batch: int = 64, reference: FeatureSet | None = None) -> pd.DataFrame:
    """Per-class metric table of a model on cached test features (one evaluation path);
    ``reference``: the train split, needed when ``ev.normalize``."""
    if ev.normalize and reference is None:
        raise ValueError("eval.normalize: pass the train split as reference=")
    maps = anomaly_maps(model, test, device=device, batch=batch, reference=reference if ev.normalize else None)
    return evaluate_maps(maps, test, pool=ev.pool, reduce=ev.reduce, sigma=ev.sigma, aupro=aupro, progress=False)


def _batches(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch at ``step``: epoch-wise permutations that depend only on (seed, epoch)."""
    per_epoch = max(1, n // batch_size)  # drop the last incomplete batch, as the official loader
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[i * batch_size:(i + 1) * batch_size]


def _log_curves(model: nn.Module, test: FeatureSet, ev: EvalSection, step: int, loss: float, path: Path, *,
                aupro: bool, device: torch.device, reference: FeatureSet) -> pd.DataFrame:
    """Evaluate and append one row per class (+ mean) to ``curves.csv``; ``loss`` = mean training loss since the last row."""
    table = evaluate_model(model, test, ev, aupro=aupro, device=device, reference=reference)
    rows = table.reindex(columns=METRIC_NAMES).reset_index(names="cls")  # fixed columns, NaN if not computed
    rows.assign(step=step, loss=loss).to_csv(path, mode="a", header=not path.exists(), index=False)
    return table


def _init_weights(spec: str, device: torch.device, cls: str | None = None) -> dict:
    """The state dict ``train.init`` names: a weights/checkpoint file, or a run (or cached result) folder
    (of a separate-mode run: the model of class ``cls``)."""
    from .paths import configs_dir

    path = Path(spec)
    if not path.exists() and not path.is_absolute():
        path = configs_dir().parent / spec  # e.g. results/adtr_quick, from any working directory
    if path.is_dir():
        seed = yaml.safe_load((path / "config.yaml").read_text())["train"]["seeds"][0]
        folder = path / f"seed{seed}"
        folder = folder / cls if cls and (folder / cls).is_dir() else folder
        path = next((p for p in (folder / "weights.pt", folder / "checkpoint.pt") if p.is_file()), folder / "weights.pt")
    if not path.is_file():
        raise FileNotFoundError(f"train.init={spec!r}: no weights at {path}; give a run folder, a cached result "
                                "(e.g. results/adtr_quick) or a .pt file")
    state = torch.load(path, map_location=device, weights_only=True)
    state = state["model"] if "model" in state and isinstance(state["model"], dict) else state
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless running under torch.distributed."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _optimizer(model: nn.Module, t: TrainSection) -> torch.optim.Optimizer:
    """AdamW; with ``decay_1d=False`` biases and norm weights (tensors of < 2 dims) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if t.decay_1d:
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr)


def fit(cfg: Config, train_set: FeatureSet, test: FeatureSet, folder: Path, seed: int,
        resume: bool = False, desc: str = "train") -> pd.DataFrame:
    """Train one model on ``train_set`` and evaluate it on ``test`` every ``eval.every`` steps."""
    t, ev = cfg.train, cfg.eval
    rank, world = _world()
    device = _device(t.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    folder.mkdir(parents=True, exist_ok=True)
    n = len(train_set)
    steps = t.epochs * max(1, n // t.batch_size) if t.epochs else t.steps
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = build_model(cfg, train_set).to(device)
    if t.init and not (resume and (folder / "checkpoint.pt").is_file()):
        model.load_state_dict(_init_weights(t.init, device, None if folder.name.startswith("seed") else folder.name))
    optimizer = _optimizer(model, t)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(t.decay_at * steps)), gamma=t.decay)
    loss_kind = _kinds(model)[0]
    checkpoint, curves_path = folder / "checkpoint.pt", folder / "curves.csv"
    start, losses = 0, []
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        if rank == 0:
            curves = pd.read_csv(curves_path)
            curves[curves.step <= start].to_csv(curves_path, index=False)  # drop rows after the checkpoint
    elif curves_path.exists() and rank == 0:
        curves_path.unlink()

    # The module that is trained: channels-last, compiled and DDP-wrapped where that applies.
    # ``model`` stays the plain module: evaluation and checkpoints use it.
    convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = t.channels_last and device.type == "cuda" and convs and not train_set.multiscale
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = model
    if t.compile and device.type == "cuda":
        step_model = torch.compile(step_model)
    if world > 1:
        torch.manual_seed(seed + 1000 * rank)  # dropout and jitter draw differently per rank
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda")
    if start == 0 and rank == 0:  # the untrained model: the floor every curve starts from
        _log_curves(model, test, ev, 0, float("nan"), curves_path, aupro=ev.aupro, device=device, reference=train_set)
        if 0 in ev.keep_steps:
            torch.save(model.state_dict(), folder / "weights_step0.pt")
    model.train()
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, unit="step", disable=rank != 0)
    last, table = "", None
    for step in bar:
        idx = _batches(n, t.batch_size, seed, step)[rank::world]     # this rank's share of the global batch
        x = train_set.take(idx, device)                               # (B, C, h, w) or a list per scale
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            out = step_model(x)
            if hasattr(model, "training_loss"):  # a method's own objective (ADTR+, HaloAE)
                loss = model.training_loss(x, out, train_set.batch(idx, device), progress=step / steps)
            else:
                loss = reconstruction_loss(x, out, loss_kind)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at step {step + 1} of {desc}: stopped. The last good "
                               f"checkpoint is {checkpoint} (step {start}); try a lower lr or amp=false.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
        optimizer.step()
        scheduler.step()
        if step + 1 in ev.keep_steps and rank == 0:  # weights_step<k>.pt: for early-vs-late views
            torch.save(model.state_dict(), folder / f"weights_step{step + 1}.pt")
        if world > 1:  # the logged loss is the global batch's
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= world
        losses.append(loss.item())
        if (step + 1) % ev.every == 0 or step + 1 == steps:
            if rank == 0:
                table = _log_curves(model, test, ev, step + 1, sum(losses) / len(losses), curves_path,
                                    aupro=ev.aupro or step + 1 == steps, device=device, reference=train_set)
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "step": step + 1,
                            "seed": seed}, checkpoint)
                last = f"image AUROC {table.loc['mean', 'image_AUROC']:.3f}"
            if world > 1:
                dist.barrier()
            losses, start = [], step + 1
        bar.set_postfix_str(f"loss {loss.item():.4f} {last}")
    if rank != 0:
        return pd.DataFrame()
    if table is None:  # else the last curve row (step == steps) already scored the final weights, with AUPRO
        table = evaluate_model(model, test, ev, aupro=True, device=device, reference=train_set)
    (folder / "metrics.json").write_text(json.dumps(table.to_dict(orient="index"), indent=2))
    return table


# ----------------------------------------------------------------------------- a whole run

def _environment() -> dict:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "platform": platform.platform(), "cuda": torch.cuda.is_available(),
            "threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _init_distributed(cfg: Config) -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        cuda = _device(cfg.train.device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = _world()
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is the global batch: make it a multiple of "
                         f"the {world} processes")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def train(cfg: Config, name: str, *, resume: bool = False, runs: str | Path | None = None,
          features: tuple[FeatureSet, FeatureSet] | None = None) -> Path:
    """Train every seed (and, in separate mode, every class) of a run into ``runs/<name>``."""
    run_dir = Path(runs) if runs is not None else runs_dir()
    run_dir = run_dir / name
    if run_dir.exists() and not resume:
        raise FileExistsError(f"run folder {run_dir} exists: continue it with --resume, or give a new --name")
    if resume and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"nothing to resume at {run_dir}: it has no config.yaml")
    if resume:  # the saved config wins: a resumed run must be the same run
        cfg = Config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if cfg.train.mode not in ("unified", "separate"):
        raise ValueError(f"train.mode must be 'unified' or 'separate', not {cfg.train.mode!r}")
    _init_distributed(cfg)
    rank = _world()[0]
    _barrier()  # every rank has checked the folder before rank 0 creates it
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (run_dir / "environment.json").write_text(json.dumps(_environment() | {"processes": _world()[1]}, indent=2))
        train_set, test = features or load_features(cfg, device=str(_device(cfg.train.device)))
    _barrier()  # rank 0 has filled the feature cache; the others read it
    if rank != 0:
        train_set, test = features or load_features(cfg, device=str(_device(cfg.train.device)))
    for seed in cfg.train.seeds:
        if cfg.train.mode == "unified":
            fit(cfg, train_set, test, run_dir / f"seed{seed}", seed, resume, desc=f"{name} seed {seed}")
        else:
            for cls in sorted(set(test.classes)):
                fit(cfg, train_set.select(cls), test.select(cls), run_dir / f"seed{seed}" / cls, seed, resume,
                    desc=f"{name} seed {seed} {cls}")
    if rank == 0:
        summarise(run_dir).to_csv(run_dir / "curves_summary.csv", index=False)
    _barrier()
    return run_dir


def run_name(cfg: Config, prefix: str) -> str:
    """``<prefix>-<hash of the config>``: another config is another run, the same config the same run."""
    return f"{prefix}-{hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]}"


def _finished(run_dir: Path) -> bool:
    """train() writes curves_summary.csv last, after every seed (and class) has finished."""
    return (run_dir / "config.yaml").is_file() and (run_dir / "curves_summary.csv").is_file()


def train_or_load(cfg: Config, prefix: str, *, runs: str | Path | None = None,
                  features: tuple[FeatureSet, FeatureSet] | None = None) -> Path:
    """The run of this exact config: loaded when finished, resumed when interrupted, else trained.

    Its folder is ``runs/<prefix>-<config hash>`` (:func:`run_name`), so nothing that exists is
    overwritten and a changed config never mixes with an old run."""
    run_dir = (Path(runs) if runs is not None else runs_dir()) / run_name(cfg, prefix)
    if _finished(run_dir):
        print(f"found finished run {run_dir}: loading")
        return run_dir
    resume = (run_dir / "config.yaml").is_file()
    print(f"{'resuming' if resume else 'training'} {run_dir.name}: {cfg.model.name} ({cfg.model.preset} preset), "
          f"{cfg.train.epochs or cfg.train.steps} {'epochs' if cfg.train.epochs else 'steps'}, seeds {cfg.train.seeds}")
    return train(cfg, run_dir.name, resume=resume, runs=run_dir.parent, features=features)


def final_metrics(run: str | Path) -> pd.DataFrame:
    """The per-class table a run wrote when it finished (mean over seeds; separate mode: per class), no recomputation."""
    run_dir = Path(run)
    tables = []
    for path in sorted(run_dir.glob("seed*/**/metrics.json")):
        table = pd.DataFrame(json.loads(path.read_text())).T
        tables.append(table if path.parent.name.startswith("seed") else table.drop(index="mean"))
    if not tables:
        raise FileNotFoundError(f"no metrics.json under {run_dir}: the run has not finished")
    per_class = pd.concat(tables).groupby(level=0).mean()
    return metrics_table(per_class.drop(index="mean", errors="ignore").to_dict(orient="index"))


def load_model(run: str | Path, *, seed: int | None = None, cls: str | None = None, step: int | None = None,
               features: FeatureSet | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A trained model of a run folder (or of a cached result), in eval mode.

    ``seed``: the run's first seed by default; ``cls``: the class of a separate-mode run; ``step``:
    the weights kept at that step (``eval.keep_steps``), else the final ones. The model is
    sized from ``features`` or, without them, from the run's data config (loads the cached features)."""
    run_dir = Path(run)
    cfg = Config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    folder = run_dir / f"seed{cfg.train.seeds[0] if seed is None else seed}" / (cls or "")
    if step is not None:
        path = folder / f"weights_step{step}.pt"
    else:
        path = next((p for p in (folder / "weights.pt", folder / "checkpoint.pt") if p.is_file()), folder / "weights.pt")
    def model_for() -> nn.Module:
        return build_model(cfg, features if features is not None else load_features(cfg, splits=("test",))[0])
    if step == 0 and not path.is_file():  # the untrained model: fit()'s seeded initialisation (or train.init)
        torch.manual_seed(cfg.train.seeds[0] if seed is None else seed)
        model = model_for().to(device)
        if cfg.train.init:
            model.load_state_dict(_init_weights(cfg.train.init, torch.device(device), cls))
        return model.eval()
    if not path.is_file():
        kept = sorted(int(p.stem[12:]) for p in folder.glob("weights_step*.pt"))
        raise FileNotFoundError(f"no weights at {path}" + (f"; kept steps: {kept}" if kept else ""))
    state = torch.load(path, map_location=device, weights_only=True)
    state = state["model"] if path.name == "checkpoint.pt" else state
    model = model_for().to(device)
    model.load_state_dict(state)  # float16 weights of the results cache are cast to the model's float32
    return model.eval()


def evaluate_run(run: str | Path, features: tuple[FeatureSet, FeatureSet] | None = None) -> pd.DataFrame:
    """The per-class table of a run's final checkpoints (mean over seeds; separate mode: per class)."""
    run_dir = Path(run) if Path(run).is_dir() else runs_dir() / run
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml); runs are in {runs_dir()}")
    cfg = Config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    device = _device(cfg.train.device)
    train_set, test = features or load_features(cfg, device=str(device))
    tables = []
    for checkpoint in sorted(run_dir.glob("seed*/**/checkpoint.pt")):
        folder = checkpoint.parent
        per_class = not folder.name.startswith("seed")
        subset = test.select(folder.name) if per_class else test
        reference = train_set.select(folder.name) if per_class else train_set
        model = build_model(cfg, test).to(device)
        model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True)["model"])
        table = evaluate_model(model, subset, cfg.eval, aupro=True, device=device, reference=reference)
        tables.append(table if folder.name.startswith("seed") else table.drop(index="mean"))
    if not tables:
        raise FileNotFoundError(f"no checkpoint under {run_dir}: has the run evaluated yet?")
    per_class = pd.concat(tables).groupby(level=0).mean()
    return metrics_table(per_class.drop(index="mean", errors="ignore").to_dict(orient="index"))


def summarise(run_dir: str | Path) -> pd.DataFrame:
    """All curves of a run as one long table: per step, class and metric, the mean and std over seeds.

    In separate mode (``seed<k>/<class>/curves.csv``) the ``mean`` rows are rebuilt as the mean
    over the per-class models, as Fig. 4 averages them."""
    frames = []
    for path in sorted(Path(run_dir).glob("seed*/**/curves.csv")):
        parts = path.relative_to(run_dir).parts            # ("seed0", "curves.csv") or ("seed0", cls, ...)
        curves = pd.read_csv(path).assign(seed=int(parts[0][4:]))
        frames.append(curves if len(parts) == 2 else curves[curves.cls != "mean"])
    if not frames:
        raise FileNotFoundError(f"no curves.csv under {run_dir}: has the run evaluated yet?")
    curves = pd.concat(frames)
    if "mean" not in set(curves.cls):  # separate mode
        means = curves.drop(columns="cls").groupby(["seed", "step"], as_index=False).mean().assign(cls="mean")
        curves = pd.concat([curves, means])
    long = curves.melt(id_vars=["seed", "step", "cls"], var_name="metric")
    return long.groupby(["step", "cls", "metric"])["value"].agg(["mean", "std"]).reset_index()
