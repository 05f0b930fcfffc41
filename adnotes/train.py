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
states are saved). ``mode="separate"`` trains one model per class (Fig. 4), each in its own
folder; several seeds run one after another, each in ``seed<k>/``.

Run folder ``runs/<name>/``: ``config.yaml``, ``environment.json``, and per seed (and class)
``curves.csv``, ``metrics.json`` (final per-class table), ``checkpoint.pt``.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from .backbone import Backbone
from .data import load_dataset
from .evaluation import evaluate_maps
from .features import FeatureSet, cached_features
from .metrics import METRIC_NAMES, metrics_table
from .models import create
from .models.objectives import anomaly_map, reconstruction_loss
from .paths import runs_dir

__all__ = ["Config", "train", "fit", "load_features", "evaluate_model", "evaluate_run", "summarise"]


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


@dataclass
class TrainSection:
    mode: str = "unified"        # unified (one model, all classes) | separate (one per class)
    steps: int = 2000            # or give epochs: steps = epochs · ceil(N / batch_size)
    epochs: int | None = None
    batch_size: int = 8          # UniAD: 8 per GPU
    lr: float = 1e-4             # AdamW, UniAD §4.1
    weight_decay: float = 1e-4
    clip_grad: float = 0.1       # official config clip_max_norm
    decay_at: float = 0.8        # ×decay of the learning rate at this fraction of the run
    decay: float = 0.1
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"         # auto | cpu | cuda
    amp: bool = True             # bf16 autocast on CUDA (ignored on CPU)


@dataclass
class EvalSection:
    every: int = 200             # steps between evaluations (and checkpoints)
    pool: int | None = 16        # image score: max of the pool×pool average-pooled map (UniAD)
    reduce: str = "max"          # "mean" for semantic AD (UniAD's CIFAR-10 rule)
    aupro: bool = False          # AUPRO in the curves (always in the final table)


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
            known = {f.name for f in fields(section)}
            if unknown := sorted(set(values or {}) - known):
                raise ValueError(f"unknown key(s) {unknown} in section {name!r}; keys: {', '.join(sorted(known))}")
            for key, value in (values or {}).items():
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

def load_features(cfg: Config, device: str = "cpu") -> tuple[FeatureSet, FeatureSet]:
    """Cached backbone features of the train and test splits the config names."""
    d = cfg.data
    backbone = Backbone(d.backbone, stages=tuple(d.stages), weights=d.weights)
    split = dict(root=d.root, classes=d.classes, normal=d.normal, image_size=d.image_size)
    return (cached_features(backbone, load_dataset(d.dataset, "train", **split), device=device),
            cached_features(backbone, load_dataset(d.dataset, "test", **split), device=device))


# ----------------------------------------------------------------------------- one model

def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def build_model(cfg: Config, in_channels: int, feature_size: tuple[int, int]) -> torch.nn.Module:
    args = dict(cfg.model.args)
    if cfg.model.name in ("uniad", "transformer", "mlp"):
        args.setdefault("feature_size", tuple(feature_size))
    return create(cfg.model.name, preset=cfg.model.preset, in_channels=in_channels, **args)


def _loss_kind(model: torch.nn.Module) -> str:
    return getattr(getattr(model, "config", None), "loss", "mse")


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, test: FeatureSet, ev: EvalSection, *, aupro: bool,
                   device: torch.device, batch: int = 64) -> pd.DataFrame:
    """Per-class metric table of a model on cached test features (one evaluation path)."""
    was_training = model.training
    model.eval()
    maps = []
    for x in test.features.split(batch):
        x = x.to(device).float()                                   # (B, C, h, w)
        maps.append(anomaly_map(x, model(x), _loss_kind(model)).float().cpu())  # (B, h, w)
    model.train(was_training)
    return evaluate_maps(torch.cat(maps), test, pool=ev.pool, reduce=ev.reduce, aupro=aupro, progress=False)


def _batches(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the batch at ``step``: epoch-wise permutations that depend only on (seed, epoch)."""
    per_epoch = max(1, n // batch_size)  # drop the last incomplete batch, as the official loader
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[i * batch_size:(i + 1) * batch_size]


def fit(cfg: Config, train_set: FeatureSet, test: FeatureSet, folder: Path, seed: int,
        resume: bool = False, desc: str = "train") -> pd.DataFrame:
    """Train one model on ``train_set`` and evaluate it on ``test`` every ``eval.every`` steps."""
    t, ev = cfg.train, cfg.eval
    device = _device(t.device)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(train_set)
    steps = t.epochs * max(1, n // t.batch_size) if t.epochs else t.steps
    torch.manual_seed(seed)
    model = build_model(cfg, train_set.features.shape[1], train_set.features.shape[-2:]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(t.decay_at * steps)), gamma=t.decay)
    kind = _loss_kind(model)
    checkpoint, curves_path = folder / "checkpoint.pt", folder / "curves.csv"
    start, losses = 0, []
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        curves = pd.read_csv(curves_path)
        curves[curves.step <= start].to_csv(curves_path, index=False)  # drop rows after the checkpoint
    elif curves_path.exists():
        curves_path.unlink()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda")
    model.train()
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, unit="step")
    last = ""
    for step in bar:
        idx = _batches(n, t.batch_size, seed, step)
        x = train_set.features[idx].to(device).float()              # (B, C, h, w)
        with autocast:
            loss = reconstruction_loss(x, model(x), kind)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at step {step + 1} of {desc}: stopped. The last good "
                               f"checkpoint is {checkpoint} (step {start}); try a lower lr or amp=false.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % ev.every == 0 or step + 1 == steps:
            table = evaluate_model(model, test, ev, aupro=ev.aupro or step + 1 == steps, device=device)
            rows = table.reindex(columns=METRIC_NAMES).reset_index(names="cls")  # fixed columns, NaN if not computed
            rows = rows.assign(step=step + 1, loss=sum(losses) / len(losses))
            rows.to_csv(curves_path, mode="a", header=not curves_path.exists(), index=False)
            losses, start = [], step + 1
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "step": step + 1,
                        "seed": seed}, checkpoint)
            last = f"image AUROC {table.loc['mean', 'image_AUROC']:.3f}"
        bar.set_postfix_str(f"loss {loss.item():.4f} {last}")
    table = evaluate_model(model, test, ev, aupro=True, device=device)
    (folder / "metrics.json").write_text(json.dumps(table.to_dict(orient="index"), indent=2))
    return table


# ----------------------------------------------------------------------------- a whole run

def _environment() -> dict:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "platform": platform.platform(), "cuda": torch.cuda.is_available(),
            "threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


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
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run_dir / "environment.json").write_text(json.dumps(_environment(), indent=2))

    train_set, test = features or load_features(cfg, device=str(_device(cfg.train.device)))
    if cfg.train.mode not in ("unified", "separate"):
        raise ValueError(f"train.mode must be 'unified' or 'separate', not {cfg.train.mode!r}")
    for seed in cfg.train.seeds:
        if cfg.train.mode == "unified":
            fit(cfg, train_set, test, run_dir / f"seed{seed}", seed, resume, desc=f"{name} seed {seed}")
        else:
            for cls in sorted(set(test.classes)):
                fit(cfg, train_set.select(cls), test.select(cls), run_dir / f"seed{seed}" / cls, seed, resume,
                    desc=f"{name} seed {seed} {cls}")
    summarise(run_dir).to_csv(run_dir / "curves_summary.csv", index=False)
    return run_dir


def evaluate_run(run: str | Path, features: tuple[FeatureSet, FeatureSet] | None = None) -> pd.DataFrame:
    """The per-class table of a run's final checkpoints (mean over seeds; separate mode: per class)."""
    run_dir = Path(run) if Path(run).is_dir() else runs_dir() / run
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml); runs are in {runs_dir()}")
    cfg = Config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    device = _device(cfg.train.device)
    _, test = features or load_features(cfg, device=str(device))
    tables = []
    for checkpoint in sorted(run_dir.glob("seed*/**/checkpoint.pt")):
        folder = checkpoint.parent
        subset = test if folder.name.startswith("seed") else test.select(folder.name)
        model = build_model(cfg, test.features.shape[1], test.features.shape[-2:]).to(device)
        model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True)["model"])
        table = evaluate_model(model, subset, cfg.eval, aupro=True, device=device)
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
