"""The main job, ``python -m adnotes demo``: a training-free baseline, then UniAD in quick mode.

Nearest-neighbour feature distance: the memory bank holds the backbone tokens of the normal
training images of *all* classes (unified protocol: one bank serves every class, as one model
would), and a test token's anomaly score is its L2 distance to the nearest bank token — PatchCore
(Roth et al., CVPR 2022) without its coreset and re-weighting; the bank is a seeded random
subset of the training tokens instead. The map is then scored by the same evaluation path every
model uses (UniAD's image score: max of the 16×16 average-pooled map).

It needs no training, so it is the reference every reconstruction model is compared with.

Then :func:`train_uniad_quick` trains UniAD with ``configs/uniad_quick.yaml`` (a shrunk model, 2+2
layers, width 128: not the paper's) by the one trainer, into ``runs/demo_uniad_quick-<hash>``
(the hash names the config, so another dataset or schedule is another run). A finished run is
loaded, not retrained; an interrupted one is resumed. Both tables are printed side by side.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .backbone import Backbone
from .data import load_dataset
from .evaluation import evaluate_maps, full_size_maps
from .features import FeatureSet, cached_features
from .paths import configs_dir

__all__ = ["DemoConfig", "memory_bank", "nearest_neighbour_maps", "run_demo", "train_uniad_quick", "side_by_side"]


@dataclass
class DemoConfig:
    dataset: str = "mini"                    # mini (offline) | mvtec | visa
    root: str | None = None                  # dataset folder; default adnotes.paths.data_dir()/<name>
    backbone: str = "efficientnet_lite0"     # the paper's: efficientnet_b4 (weights="hub")
    weights: str = "offline"
    stages: tuple[int, ...] = (1, 2, 3, 4)   # UniAD §3.3, §4.2: stages 1-4, resized to stride 16
    image_size: int = 224
    bank_size: int = 20_000                  # tokens kept in the memory bank
    pool: int = 16                           # image score: max of the pool×pool average-pooled map
    seed: int = 0


def memory_bank(train: FeatureSet, size: int, seed: int = 0) -> torch.Tensor:
    """(M, C) float32: a seeded random subset of all training tokens."""
    tokens = train.features.permute(0, 2, 3, 1).reshape(-1, train.features.shape[1])  # (N·h·w, C)
    if size < len(tokens):
        keep = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed))[:size]
        tokens = tokens[keep]
    return tokens.float()


@torch.no_grad()
def nearest_neighbour_maps(bank: torch.Tensor, features: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(M, C) bank, (N, C, h, w) features -> (N, h, w) distance of each token to its nearest bank token."""
    n, c, h, w = features.shape
    tokens = features.permute(0, 2, 3, 1).reshape(-1, c).float()                      # (N·h·w, C)
    nearest = torch.cat([torch.cdist(part, bank).min(dim=1).values
                         for part in tqdm(tokens.split(chunk), desc="nearest neighbours", leave=False)])
    return nearest.view(n, h, w)


def run_demo(cfg: DemoConfig = DemoConfig(), device: str = "cpu") -> pd.DataFrame:
    """Build the data, extract (or load cached) features, score, print and plot. Returns the table."""
    from . import plots

    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    backbone = Backbone(cfg.backbone, stages=cfg.stages, weights=cfg.weights)
    train_set = load_dataset(cfg.dataset, "train", root=cfg.root, image_size=cfg.image_size)
    test_set = load_dataset(cfg.dataset, "test", root=cfg.root, image_size=cfg.image_size)
    train = cached_features(backbone, train_set, device=device)
    test = cached_features(backbone, test_set, device=device)

    bank = memory_bank(train, cfg.bank_size, cfg.seed)
    maps = nearest_neighbour_maps(bank, test.features)                                # (N, h, w)
    table = evaluate_maps(maps, test, pool=cfg.pool)
    seconds = time.perf_counter() - start

    print(f"\nNearest-neighbour baseline, {cfg.backbone} ({cfg.weights} weights), stages {cfg.stages}, "
          f"{len(train)} train / {len(test)} test images, bank of {len(bank)} tokens.")
    print(f"Image score: max of the {cfg.pool}×{cfg.pool} average-pooled map (UniAD). Values in %.")
    with pd.option_context("display.width", 120, "display.precision", 1):
        print((table * 100).to_string(float_format=lambda v: f"{v:.1f}"))
    print(f"({seconds:.0f} s)")

    plots.set_style()
    fig, shown = _figure(test_set, test, maps, cfg)
    # No timing in the record: the same data and code write the same files, so the demo leaves figures/ unchanged.
    path = plots.save_figure(fig, "demo_anomaly_maps", config=asdict(cfg) | {"device": device},
                             data={"metrics": table.to_dict(orient="index"), "shown": shown})
    print(f"figure: {path}")
    return table


def _figure(dataset, test: FeatureSet, maps: torch.Tensor, cfg: DemoConfig):
    """One defective test image per class, a different defect kind in each row (not hand-picked)."""
    from . import plots

    columns, shown = ([], [], [], []), []
    vmax = float(np.quantile(maps.numpy(), 0.999))
    for row, cls in enumerate(sorted(set(test.classes))):
        defective = [i for i, c in enumerate(test.classes) if c == cls and test.labels[i] == 1]
        kinds = sorted({dataset.records[i].defect for i in defective})
        i = next(i for i in defective if dataset.records[i].defect == kinds[row % len(kinds)])
        item = dataset[i]
        full = full_size_maps(maps[i:i + 1], cfg.image_size)[0]
        record = dataset.records[i]
        for column, value in zip(columns, (plots.denormalize(item["image"]), item["mask"][0].numpy() > 0.5,
                                        full.numpy(), f"{cls}\n{record.defect}")):
            column.append(value)
        shown.append(str(record.image))
    return plots.anomaly_map_panels(*columns, vmax=vmax), shown


def train_uniad_quick(cfg: DemoConfig = DemoConfig(), steps: int | None = None, device: str = "cpu") -> pd.DataFrame:
    """UniAD in quick mode on the demo's data: trained once into runs/, then loaded. Returns its table."""
    from .train import Config, final_metrics, train_or_load

    overrides = {"data.dataset": cfg.dataset, "data.backbone": cfg.backbone, "data.weights": cfg.weights,
                 "data.stages": list(cfg.stages), "data.image_size": cfg.image_size, "train.seeds": [cfg.seed],
                 "train.device": device}  # values, not text to parse: a root may hold '#' or ': '
    overrides |= {"data.root": str(cfg.root)} if cfg.root else {}
    overrides |= {"train.steps": steps} if steps else {}
    config = Config.load(configs_dir() / "uniad_quick.yaml", overrides)
    print(f"\nUniAD in quick mode: {config.train.steps} steps of a shrunk model (2+2 layers, width 128), "
          "not the paper's size")
    return final_metrics(train_or_load(config, "demo_uniad_quick"))


def side_by_side(tables: dict[str, pd.DataFrame],
                 metrics: tuple[str, ...] = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "mAD")) -> pd.DataFrame:
    """Per-class tables of several models as one, each metric's columns next to each other (in %)."""
    both = pd.concat({name: t.reindex(columns=list(metrics)) for name, t in tables.items()}, axis=1)
    return (both.swaplevel(axis=1).reindex(columns=list(metrics), level=0) * 100).round(1)
