"""The one trainer: any registered model, trained on cached backbone features.

    cfg = Config.load("configs/uniad_quick.yaml", ["train.steps=500"])
    run_dir = train(cfg, name="uniad-quick")

Default settings follow UniAD (§4.2 and its official config, notebooks/SOURCES.md §2.3): AdamW
(lr 1e-4, weight decay 1e-4), grad-norm clip 0.1, learning rate ×0.1 at 80 % of the run
(StepLR(800, 0.1) of 1000 epochs), batch 8 (the official batch per GPU; the paper's global batch is
64 = 8 GPUs × 8, which configs/uniad_mvtec.yaml uses).

Curves are the product (UniAD Fig. 2a / Fig. 4): every ``eval.every`` steps the model is scored
on the test split by the one evaluation path (:func:`adnotes.evaluation.evaluate_maps`) and a row
per class (+ ``mean``) is appended to ``curves.csv`` at once. A checkpoint is written at every
evaluation (atomically: a temporary file, then a rename); a killed run continues with
``resume=True`` and on the CPU ends with the same weights and curves as an uninterrupted one (the
batch order is a function of seed and epoch, and the RNG states are saved; on CUDA see
:func:`fit`). Ctrl-C stops at the next step boundary, writes a checkpoint and says how to resume.
The curves start at step 0, the untrained model: early on the score is
mostly the feature norm, the floor every curve is read against. ``mode="separate"`` trains one model per class (Fig. 4), each in its own
folder; several seeds run one after another, each in ``seed<k>/``.

Run folder ``runs/<name>/``: ``config.yaml``, ``environment.json``, and per seed (and class)
``curves.csv``, ``metrics.json`` (final per-class table), ``checkpoint.pt``.

On CUDA: bf16 autocast (``train.amp``), ``torch.compile`` (``train.compile``; training is eager,
with one line saying why, when the host lacks Triton or a C compiler), channels-last memory for
models with convolutions, and the train features on the GPU when they take at most a quarter of
its free memory. The loop makes no host sync per step (the loss is read at each curve row).
Several GPUs (or CPU processes) through ``torchrun``:

    torchrun --nproc_per_node 8 -m adnotes train --config configs/uniad_mvtec.yaml

``train.batch_size`` is the *global* batch: each of the W processes takes every W-th image of
it and DDP averages the gradients, so W processes follow the single-process run step for step
(up to float rounding and the random streams of dropout and jitter, which differ per process).
Rank 0 evaluates, writes the curves and checkpoints; the others wait for it.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from collections.abc import Callable
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
from .data.datasets import DATASETS, MINI_DATASETS
from .copying import Probe, per_class, transplant_probe
from .evaluation import evaluate_maps, kind_column
from .features import FeatureSet, cached_features
from .files import atomic
from .metrics import METRIC_NAMES, metrics_table
from .models import create
from .models.objectives import LOSS_KINDS, anomaly_map, reconstruction_loss
from .paths import runs_dir

__all__ = ["Config", "train", "train_or_load", "run_name", "fit", "TrainingInterrupted", "load_features", "copy_probe",
           "evaluate_model", "anomaly_maps", "evaluate_run", "summarise", "final_metrics", "load_model"]


# ----------------------------------------------------------------------------- config

@dataclass
class ModelSection:
    name: str = "uniad"          # a name of adnotes.models.list_models()
    preset: str = "quick"        # "paper" | "quick" (quick shrinks the model for CPU labs)
    args: dict = field(default_factory=dict)  # config fields of the model, e.g. {neighbor_size: 5}


@dataclass
class DataSection:
    dataset: str = "mini"        # mini | mini_objects | mvtec | visa | realiad | cifar10 | digits
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
    copy_images: int = 60        # transplant probes for the curves' copy gain (adnotes.copying); 0: off


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    @classmethod
    def from_dict(cls, d: dict, source: str | dict[str, str] = "") -> "Config":
        """A config from nested dicts, every field checked (:meth:`validate`). ``source`` names where
        the values came from in error messages: one label, or one per ``section.key``."""
        def where(key: str) -> str:  # the label of a field, or of the first field under a section
            if not isinstance(source, dict):
                return source
            under = (label for k, label in source.items() if k.startswith(f"{key}."))
            return source.get(key) or next(under, source.get("", ""))

        sections = {f.name: f.type for f in fields(cls)}
        if unknown := sorted(set(d) - set(sections)):
            raise ValueError(f"{_at(where(unknown[0]))}unknown config section(s) {unknown}; "
                             f"sections: {', '.join(sections)}")
        out = cls()
        for name, values in d.items():
            section = getattr(out, name)
            if not isinstance(values or {}, dict):
                raise ValueError(f"{_at(where(name))}section {name!r} must hold key: value pairs, not {values!r}")
            known = {f.name: f.type for f in fields(section)}
            if unknown := sorted(set(values or {}) - set(known)):
                raise ValueError(f"{_at(where(f'{name}.{unknown[0]}'))}unknown key(s) {unknown} in section {name!r}; "
                                 f"keys: {', '.join(sorted(known))}")
            for key, value in (values or {}).items():
                setattr(section, key, _typed(value, known[key], f"{name}.{key}", where(f"{name}.{key}")))
        out.validate(where)
        return out

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | dict = ()) -> "Config":
        """A YAML file (sections model/data/train/eval) with overrides: ``section.key=value`` strings
        (the CLI's ``--set``; each value is read as its field's type, a text field takes the text
        as it is) or a dict ``{"section.key": value}`` of typed values (from Python)."""
        d = _read_yaml(Path(path)) if path else {}
        source = {"": str(path or "")} | {f"{s}.{k}": str(path) for s, keys in d.items() if isinstance(keys, dict)
                                          for k in keys}
        pairs = overrides.items() if isinstance(overrides, dict) else map(_parse_override, overrides)
        for key, value in pairs:
            parts = key.split(".")
            target = d.setdefault(parts[0], {})
            if not isinstance(target, dict):
                raise ValueError(f"{_at(str(path))}section {parts[0]!r} must hold key: value pairs, not {target!r}")
            for part in parts[1:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = value
            source[".".join(parts[:2])] = "--set" if not isinstance(overrides, dict) else "overrides"
        return cls.from_dict(d, source)

    def validate(self, source: Callable[[str], str] = lambda key: "") -> None:
        """Raise ValueError, naming the field, unless every field has its type and a usable value
        (``source(key)``: where the value came from, for the message)."""
        for section in fields(self):
            for f in fields(getattr(self, section.name)):
                key, value = f"{section.name}.{f.name}", getattr(getattr(self, section.name), f.name)
                _typed(value, f.type, key, source(key))
                check, expected = _RULES.get(key, (None, ""))
                if check is not None and value is not None and not check(value):
                    raise ValueError(f"{_at(source(key))}{key}={value!r}: must be {expected}")

    def to_dict(self) -> dict:
        return asdict(self)


def _at(source: str) -> str:
    return f"{source}: " if source else ""


def _read_yaml(path: Path) -> dict:
    """A config file's sections; a missing, empty or malformed file is a one-line error naming it."""
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: not valid YAML{line} ({getattr(e, 'problem', None) or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; give a YAML config") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: {'empty' if d is None else 'not key: value pairs'}; a config has the "
                         "sections model, data, train and eval (see configs/)")
    return d


def _field_type(key: str) -> str | None:
    """The annotation of config field ``section.key`` (e.g. "int | None"), None if there is no such field."""
    section, _, name = key.partition(".")
    classes = {f.name: f.default_factory for f in fields(Config)}
    if section not in classes:
        return None
    return next((f.type for f in fields(classes[section]()) if f.name == name.split(".")[0]), None)


def _parse_override(item: str) -> tuple[str, object]:
    """``section.key=value`` -> (key, value as the field's type): a text field takes the text as it
    is (a path may hold '#' or ': '), None is null, other values are read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or len(key.split(".")) < 2:
        raise ValueError(f"override {item!r}: write section.key=value, e.g. train.steps=500")
    kind = _field_type(key)
    if kind is None or len(key.split(".")) > 2:  # unknown (from_dict names it) or inside a dict field
        return key, yaml.safe_load(text)
    options = [o.strip() for o in kind.split("|")]
    if "None" in options and text.strip() in ("null", "None", "none", "~"):
        return key, None
    if "str" in options and not ("list[str]" in options and text.lstrip().startswith("[")):
        return key, text
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"--set: {key}={text!r}: not a value of type {kind}") from None


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a text",
               "dict": "a mapping {key: value}", "None": "null", "list[int]": "a list of integers",
               "list[str]": "a list of names"}


def _typed(value, annotation: str, key: str, source: str = ""):
    """``value`` as the annotated type ("int", "float | None", "list[int]", ...), else a ValueError
    naming the field. A float field also takes a number written as text (YAML 1.1 reads 1e-3 so)."""
    options = [o.strip() for o in annotation.split("|")]
    for option in options:
        if option == "None":
            if value is None:
                return None
        elif option.startswith("list["):
            if isinstance(value, (list, tuple)) and all(_is(v, option[5:-1]) for v in value):
                return value
        elif option == "float" and isinstance(value, str):
            try:
                return _typed(float(value), "float", key, source)
            except ValueError:
                continue
        elif _is(value, option):
            return value
    expected = " or ".join(_TYPE_NAMES[o] for o in options)
    raise ValueError(f"{_at(source)}{key}={value!r}: expected {expected}")


def _is(value, kind: str) -> bool:
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict}[kind])


def _device_name(name: str) -> bool:
    try:
        return name == "auto" or torch.device(name).type in ("cpu", "cuda", "mps")
    except RuntimeError:
        return False


def _model_names() -> list[str]:
    from .models import list_models

    return list_models()


def _synthetic_known(names: str | list[str]) -> bool:
    from .data.synthetic import generator

    try:
        for name in [names] if isinstance(names, str) else names:
            generator(name)
    except ValueError:
        return False
    return True


_RULES = {  # field -> (test of a non-None value, what it must be)
    "model.name": (lambda v: v in _model_names(), "a registered model (adnotes.models.list_models())"),
    "model.preset": (lambda v: v in ("paper", "quick"), "'paper' or 'quick'"),
    "data.dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "data.classes": (lambda v: len(v) > 0, "a non-empty list of class names, or null for all"),
    "data.normal": (lambda v: len(v) > 0, "a non-empty list of class indices"),
    "data.stages": (lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of stage numbers ≥ 1"),
    "data.image_size": (lambda v: v >= 1, "an integer ≥ 1"),
    "data.out_stride": (lambda v: v >= 1, "an integer ≥ 1"),
    "data.synthetic": (_synthetic_known, "null or names of adnotes.data.synthetic.SYNTHETIC"),
    "data.synthetic_copies": (lambda v: v >= 1, "an integer ≥ 1"),
    "data.keep_images": (lambda v: v >= 1, "null or an integer ≥ 1"),
    "train.mode": (lambda v: v in ("unified", "separate"), "'unified' or 'separate'"),
    "train.steps": (lambda v: v >= 1, "an integer ≥ 1"),
    "train.epochs": (lambda v: v >= 1, "null or an integer ≥ 1"),
    "train.batch_size": (lambda v: v >= 1, "an integer ≥ 1"),
    "train.lr": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "train.weight_decay": (lambda v: v >= 0, "a number ≥ 0"),
    "train.clip_grad": (lambda v: v > 0, "a number > 0 (.inf: no clipping)"),
    "train.decay_at": (lambda v: 0 < v <= 1, "a fraction of the run in (0, 1]"),
    "train.decay": (lambda v: v > 0, "a number > 0"),
    "train.seeds": (lambda v: len(v) > 0 and min(v) >= 0 and len(set(v)) == len(v), "a non-empty list of distinct "
                    "integers ≥ 0"),
    "train.device": (_device_name, "auto, cpu, cuda or cuda:<index>"),
    "eval.every": (lambda v: v >= 1, "an integer ≥ 1"),
    "eval.pool": (lambda v: v >= 1, "null or an integer ≥ 1"),
    "eval.reduce": (lambda v: v in ("max", "mean"), "'max' or 'mean'"),
    "eval.sigma": (lambda v: v > 0, "null or a number > 0"),
    "eval.keep_steps": (lambda v: all(k >= 0 for k in v), "a list of steps ≥ 0"),
    "eval.copy_images": (lambda v: v >= 0, "an integer ≥ 0"),
}


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
    comes with its generated anomalies (``data.synthetic``); ``"twins"`` (adnotes-mini, with or without its
    objects) are the clean twins of the test split's defective images, in their order
    (:func:`adnotes.copying.twin_probe`)."""
    from .data.datasets import ADDataset
    from .data.mini import twin_records
    from .data.synthetic import with_synthetic

    d = cfg.data
    backbone = make_backbone(d)
    split = dict(root=d.root, classes=d.classes, normal=d.normal, image_size=d.image_size)

    def dataset(name: str):
        if name == "twins":  # adnotes-mini's clean twins of the defective test images, in their order
            if d.dataset not in MINI_DATASETS:
                raise ValueError(f"the twins split exists for adnotes-mini only ({', '.join(MINI_DATASETS)}), "
                                 f"not {d.dataset!r}")
            test = load_dataset(d.dataset, "test", **split)
            return ADDataset(twin_records(test.records), d.image_size, name=f"{d.dataset}/twins")
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


def copy_probe(test: FeatureSet, ev: EvalSection) -> Probe | None:
    """The transplant probe behind the curves' ``copy_gain``/``copy_leak`` columns (:mod:`adnotes.copying`):
    ``eval.copy_images`` normal test images, a 2×2 block of each from another class's normal image (from
    the same class, elsewhere, when the test split has one class), seed 0, so every run meets the same
    probe. None when off or undefined (multi-scale features)."""
    if not ev.copy_images or test.multiscale or not (test.labels == 0).any():
        return None
    normal = [c for c, y in zip(test.classes, test.labels.tolist()) if y == 0]
    if len(set(normal)) > 1:
        return transplant_probe(test, n=ev.copy_images, block=2, donor="other_class")
    return transplant_probe(test, n=ev.copy_images, block=2, donor="same_class") if len(normal) > 1 else None


def _curve_columns(test: FeatureSet) -> list[str]:
    """The columns of ``curves.csv`` after ``cls``, fixed for a run: NaN where a value was not computed."""
    kinds = sorted({k for k, y in zip(test.defects or [], test.labels.tolist()) if y == 1})
    return [*METRIC_NAMES, *map(kind_column, kinds), "copy_gain", "copy_leak", "normal_error"]


def _log_curves(model: nn.Module, test: FeatureSet, ev: EvalSection, step: int, loss: float, path: Path, *,
                aupro: bool, device: torch.device, reference: FeatureSet, probe: Probe | None) -> pd.DataFrame:
    """Evaluate and append one row per class (+ mean) to ``curves.csv``: the metrics, the image AUROC per
    defect kind and the copy gain, leak and normal error on ``probe``; ``loss`` = mean training loss since the last row."""
    table = evaluate_model(model, test, ev, aupro=aupro, device=device, reference=reference)
    if probe is not None and (copied := per_class(model, probe, device=device)) is not None:
        table = table.join(pd.DataFrame(copied).T)
    rows = table.reindex(columns=_curve_columns(test)).reset_index(names="cls")
    rows.assign(step=step, loss=loss).to_csv(path, mode="a", header=not path.exists(), index=False)
    return table


def _init_path(spec: str, cls: str | None = None) -> Path:
    """The weights file ``train.init`` names: a weights/checkpoint file, or a run (or cached result) folder
    (of a separate-mode run: the model of class ``cls``). A cached result is verified against its manifest."""
    from . import results
    from .paths import configs_dir

    path = Path(spec)
    if not path.exists() and not path.is_absolute():
        path = configs_dir().parent / spec  # e.g. results/adtr_quick, from any working directory
    cache = results.results_dir().resolve()
    if path.resolve().is_relative_to(cache) and path.resolve() != cache:
        key = path.resolve().relative_to(cache).parts[0]
        if problems := results.verify(key):
            raise ValueError(f"train.init={spec!r}: the cached result {key} does not match results/MANIFEST.json "
                             f"({problems[0]}); regenerate it: python -m adnotes results --only "
                             f"{key.removesuffix('-full')}{' --full' if key.endswith('-full') else ''}")
    if path.is_dir():
        seed = yaml.safe_load((path / "config.yaml").read_text())["train"]["seeds"][0]
        folder = path / f"seed{seed}"
        folder = folder / cls if cls and (folder / cls).is_dir() else folder
        path = next((p for p in (folder / "weights.pt", folder / "checkpoint.pt") if p.is_file()), folder / "weights.pt")
    if not path.is_file():
        raise FileNotFoundError(f"train.init={spec!r}: no weights at {path}; give a run folder, a cached result "
                                "(e.g. results/adtr_quick) or a .pt file")
    return path


def _init_weights(spec: str, device: torch.device, cls: str | None = None) -> dict:
    """The state dict ``train.init`` names (see :func:`_init_path`), as float32."""
    state = torch.load(_init_path(spec, cls), map_location=device, weights_only=True)
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


class TrainingInterrupted(KeyboardInterrupt, RuntimeError):
    """Training stopped by Ctrl-C at a step boundary, with a checkpoint to resume from: a KeyboardInterrupt
    (what stops on Ctrl-C still stops) that is also a RuntimeError (the command line prints its message)."""


@contextmanager
def _stop_on_sigint(enabled: bool = True):
    """While training, the first Ctrl-C (SIGINT) sets ``flag["stop"]``, for the loop to stop at the next
    step boundary; a second one interrupts at once. Only in a single process's main thread (torchrun
    forwards the signal to every process, which could stop at different steps)."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)
    if not enabled or threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield flag
        return
    restore = previous if previous is not None else signal.default_int_handler

    def ask_to_stop(signum, frame):
        flag["stop"] = True
        signal.signal(signal.SIGINT, restore)
        print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again stops at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, restore)


def _save(obj, path: Path) -> None:
    with atomic(path) as tmp:
        torch.save(obj, tmp)


def _rng_state(device: torch.device) -> dict:
    """The random states a resumed run restores: the CPU's and, on CUDA, the device's (dropout, jitter)."""
    return {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:  # a checkpoint made on CUDA, resumed on CUDA
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _load_checkpoint(path: Path, curves: Path) -> dict:
    """A checkpoint, on the CPU (``load_state_dict`` moves each part to its device; the RNG states must
    stay CPU tensors); a damaged one is an error naming it and the last evaluation that was recorded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "rng", "step"} <= set(state):
            raise ValueError("not a checkpoint of this trainer")
        return state
    except Exception as error:  # empty, truncated, or not a checkpoint
        try:
            last = f"step {int(pd.read_csv(curves).step.max())}"
        except Exception:
            last = "unknown (no readable curves.csv)"
        raise RuntimeError(f"cannot resume from {path}: the file is damaged ({type(error).__name__}: {error}); the "
                           f"last evaluation in {curves.name} is at {last}. Delete {path.parent} to train this "
                           "model again from step 0.") from None


@functools.cache
def _compile_works(device: torch.device) -> bool:
    """Preflight of ``train.compile``: torch.compile needs Triton and a C compiler on the host. When one
    is missing, or a tiny test compilation fails, say so in one line and train eager."""
    reason = None
    if importlib.util.find_spec("triton") is None:
        reason = "Triton is not installed"
    elif not any(shutil.which(c) for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c):
        reason = "no C compiler (cc, gcc or clang) on PATH"
    else:
        try:
            torch.compile(lambda x: x * 2 + 1)(torch.ones(8, device=device))
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            reason = f"a test compilation failed: {type(error).__name__}: {first_line}"
    if reason:
        print(f"torch.compile is unavailable here ({reason}): training eager")
    return reason is None


def _on_device(data: FeatureSet, device: torch.device) -> FeatureSet:
    """The train split for the training loop: on CUDA moved to the GPU once when it takes at most a
    quarter of the free memory (no per-step indexing on the host or copies); else it stays in (memory-
    mapped) host memory and each batch travels through pinned memory."""
    if device.type != "cuda" or data.nbytes > torch.cuda.mem_get_info(device)[0] / 4:
        return data
    return data.to(device)


def fit(cfg: Config, train_set: FeatureSet, test: FeatureSet, folder: Path, seed: int,
        resume: bool = False, desc: str = "train") -> pd.DataFrame:
    """Train one model on ``train_set`` and evaluate it on ``test`` every ``eval.every`` steps.

    ``resume`` continues from ``folder/checkpoint.pt``: weights, optimizer, scheduler, RNG states and
    the training loss summed since the last curve row. On the CPU the resumed run then ends with the
    same weights and curves as an uninterrupted one, bit for bit. On CUDA the device's RNG state
    (dropout, jitter, torch.compile's random seeds) is restored too, so the random draws are the same,
    but kernels that accumulate with atomics (the backward of indexing) are not bitwise deterministic:
    a resumed CUDA run matches up to float rounding. Under DDP only rank 0's stream is restored.
    Resuming a finished model adds no steps and leaves its files as they are. Ctrl-C stops at the next
    step boundary with a checkpoint (:class:`TrainingInterrupted`).

    No host sync per step: the loss stays on the device, and is read and checked for NaN/inf when a
    curve row is written (and at kept steps and Ctrl-C). ``table.attrs["timing"]``: per curve interval
    of this call, (first step, last step, training seconds, evaluation + checkpoint seconds)."""
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
    checkpoint, curves_path, metrics_path = folder / "checkpoint.pt", folder / "curves.csv", folder / "metrics.json"
    probe = copy_probe(test, ev) if rank == 0 else None
    if world > 1:
        torch.manual_seed(seed + 1000 * rank)  # dropout and jitter draw differently per rank
    start, loss_sum, loss_count = 0, 0.0, 0  # the loss summed over the steps since the last curve row
    if resume and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, curves_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if rank == 0:
            _set_rng_state(state, device)
        start, loss_sum, loss_count = state["step"], state.get("loss_sum", 0.0), state.get("loss_count", 0)
        if start >= steps and metrics_path.is_file():  # finished: nothing to add, nothing to rewrite
            return pd.DataFrame(json.loads(metrics_path.read_text())).T if rank == 0 else pd.DataFrame()
        if rank == 0:
            curves = pd.read_csv(curves_path)
            with atomic(curves_path) as tmp:
                curves[curves.step <= start].to_csv(tmp, index=False)  # drop rows after the checkpoint
    elif curves_path.exists() and rank == 0:
        curves_path.unlink()

    # The module that is trained: channels-last, compiled and DDP-wrapped where that applies.
    # ``model`` stays the plain module: evaluation and checkpoints use it.
    convs = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = t.channels_last and device.type == "cuda" and convs and not train_set.multiscale
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = model
    if t.compile and device.type == "cuda" and _compile_works(device):
        step_model = torch.compile(step_model)
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp and device.type == "cuda")
    data = _on_device(train_set, device)
    if start == 0 and rank == 0:  # the untrained model: the floor every curve starts from
        _log_curves(model, test, ev, 0, float("nan"), curves_path, aupro=ev.aupro, device=device, reference=train_set,
                    probe=probe)
        if 0 in ev.keep_steps:
            _save(model.state_dict(), folder / "weights_step0.pt")
    saved, pending, timing, table = start, [], [], None  # saved: the step of the checkpoint on disk

    def read_losses(step: int) -> None:
        """Add the losses since the last read to loss_sum (one host sync); stop at a non-finite one."""
        nonlocal pending, loss_sum, loss_count
        if not pending:
            return
        values = torch.stack(pending).float()                    # (k,) the losses of steps step-k+1 .. step
        if world > 1:  # the logged loss is the global batch's
            dist.all_reduce(values)
            values /= world
        values, pending = values.tolist(), []
        if bad := [i for i, v in enumerate(values) if not math.isfinite(v)]:
            raise RuntimeError(f"loss is {values[bad[0]]} at step {step - len(values) + bad[0] + 1} of {desc}: "
                               f"stopped. The last good checkpoint is {checkpoint} (step {saved}); try a lower lr "
                               "or amp=false.")
        loss_sum, loss_count = sum(values, loss_sum), loss_count + len(values)

    def save_checkpoint(step: int) -> None:
        nonlocal saved
        _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               **_rng_state(device), "step": step, "seed": seed, "loss_sum": loss_sum, "loss_count": loss_count},
              checkpoint)
        saved = step

    model.train()
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, unit="step", disable=rank != 0)
    first, clock = start, time.perf_counter()
    with _stop_on_sigint(enabled=world == 1) as sigint:
        for step in bar:
            idx = _batches(n, t.batch_size, seed, step)[rank::world]     # this rank's share of the global batch
            x = data.take(idx, device)                                    # (B, C, h, w) or a list per scale
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                out = step_model(x)
                if hasattr(model, "training_loss"):  # a method's own objective (ADTR+, HaloAE)
                    loss = model.training_loss(x, out, data.batch(idx, device), progress=step / steps)
                else:
                    loss = reconstruction_loss(x, out, loss_kind)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
            optimizer.step()
            scheduler.step()
            pending.append(loss.detach())
            if step + 1 in ev.keep_steps:  # weights_step<k>.pt: for early-vs-late views
                read_losses(step + 1)
                if rank == 0:
                    _save(model.state_dict(), folder / f"weights_step{step + 1}.pt")
            if (step + 1) % ev.every == 0 or step + 1 == steps:
                read_losses(step + 1)
                trained = time.perf_counter() - clock
                mean_loss, loss_sum, loss_count = loss_sum / loss_count, 0.0, 0
                if rank == 0:
                    table = _log_curves(model, test, ev, step + 1, mean_loss, curves_path,
                                        aupro=ev.aupro or step + 1 == steps, device=device, reference=train_set,
                                        probe=probe)
                    save_checkpoint(step + 1)
                    bar.set_postfix_str(f"loss {mean_loss:.4f} image AUROC {table.loc['mean', 'image_AUROC']:.3f}")
                if world > 1:
                    dist.barrier()
                timing.append((first, step + 1, trained, time.perf_counter() - clock - trained))
                first, clock = step + 1, time.perf_counter()
            if sigint["stop"] and step + 1 < steps:
                read_losses(step + 1)
                if saved != step + 1:
                    save_checkpoint(step + 1)
                run = folder.parent if folder.name.startswith("seed") else folder.parent.parent
                how = (f"`python -m adnotes train --name {run.name} --resume`, or from Python "
                       if run.parent.resolve() == runs_dir().resolve() else "")
                raise TrainingInterrupted(f"{desc}: stopped by Ctrl-C after step {step + 1} of {steps}; checkpoint "
                                          f"{checkpoint}. Continue with {how}train(..., resume=True) or "
                                          "train_or_load(...) on the same run.")
    if rank != 0:
        return pd.DataFrame()
    if table is None:  # else the last curve row (step == steps) already scored the final weights, with AUPRO
        table = evaluate_model(model, test, ev, aupro=True, device=device, reference=train_set)
    with atomic(metrics_path) as tmp:
        tmp.write_text(json.dumps(table.to_dict(orient="index"), indent=2))
    table.attrs["timing"] = timing
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
    """Train every seed (and, in separate mode, every class) of a run into ``runs/<name>``.

    Everything that can be checked is checked before the run folder is written: the name, every
    config field, that a resumed run keeps its saved config, ``train.init``, the data and the model
    arguments. A mistake leaves no run folder behind."""
    _check_run_name(name)
    run_dir = (Path(runs) if runs is not None else runs_dir()) / name
    cfg.validate()  # also a Config built or changed in Python
    if run_dir.exists() and not resume:
        raise FileExistsError(f"run folder {run_dir} exists: continue it with --resume, or give a new --name")
    if resume:  # the saved config wins: a resumed run must be the same run
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"nothing to resume at {run_dir}: it has no config.yaml")
        saved = Config.load(run_dir / "config.yaml")
        if changed := _differences(saved, cfg):
            raise ValueError(f"--resume: {run_dir} was made with {'; '.join(changed)}. Resume it without "
                             "changing them, or start a new run with --name.")
        cfg = saved
    _init_distributed(cfg)
    rank = _world()[0]
    if cfg.train.init:
        _init_path(cfg.train.init)
    # Every rank reads the feature cache. On a cold cache one process extracts (a file lock) while the
    # others wait on the lock, outside any collective: extraction may outlast NCCL's 10-minute timeout.
    train_set, test = features or load_features(cfg, device=str(_device(cfg.train.device)))
    with torch.random.fork_rng(devices=[]):  # model.args: build the model once (fit() seeds its own)
        try:
            build_model(cfg, train_set)
        except (TypeError, ValueError) as e:
            raise ValueError(f"model.args={cfg.model.args} for {cfg.model.name!r} ({cfg.model.preset}): {e}") from None
    _barrier()  # every rank has checked the folder before rank 0 creates it
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (run_dir / "environment.json").write_text(json.dumps(_environment() | {"processes": _world()[1]}, indent=2))
    _barrier()
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


def _check_run_name(name: str) -> None:
    """A run is a folder directly under runs/: its name cannot hold a path."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"run name {name!r} must be a plain folder name (no '/', '\\' or '..'): runs are "
                         "folders directly under runs/")


def _differences(saved: Config, asked: Config) -> list[str]:
    """``section.key=saved (asked: value)`` for every field where two configs differ."""
    a, b = (json.loads(json.dumps(c.to_dict())) for c in (saved, asked))  # tuples -> lists, as in the file
    return [f"{s}.{k}={a[s][k]!r} (asked: {b[s][k]!r})" for s in a for k in a[s] if a[s][k] != b[s][k]]


def run_name(cfg: Config, prefix: str) -> str:
    """``<prefix>-<hash of the config>``: another config is another run, the same config the same run."""
    _check_run_name(prefix)
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
    the weights kept at that step (``eval.keep_steps``; the run's last step is its final weights, kept
    or not), else the final ones. The model is
    sized from ``features`` or, without them, from the run's data config (loads the cached features)."""
    run_dir = Path(run)
    cfg = Config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    folder = run_dir / f"seed{cfg.train.seeds[0] if seed is None else seed}" / (cls or "")
    if step is not None and (step != cfg.train.steps or (folder / f"weights_step{step}.pt").is_file()):
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


def kept_steps(run: str | Path) -> list[int]:
    """The steps :func:`load_model` can load for a run's first seed: 0 (the seeded initial weights, always
    available), every kept ``weights_step<k>.pt`` (``eval.keep_steps``) and the final step."""
    cfg = yaml.safe_load((Path(run) / "config.yaml").read_text())
    folder = Path(run) / f"seed{cfg['train']['seeds'][0]}"
    kept = (int(p.stem[len("weights_step"):]) for p in folder.glob("weights_step*.pt"))
    return sorted({0, *kept, cfg["train"]["steps"]})


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
