"""The method zoo: every model of the collection on the same data, in one table (notebook 08's tables and figures).

    python -m adnotes zoo            # quick mode: the cached quick runs (results/), else trained
    summary, per_class = adnotes.zoo.zoo_table(adnotes.setup())
    fig, data = adnotes.zoo.plot_zoo(summary, per_class, "quick")   # notebook 08's figure

Columns are the multi-class AD benchmark's (ADer: image AUROC / AP / F1-max, pixel AUROC / AP /
F1-max, AUPRO, mAD = mean of those seven), per class and as the mean over classes, plus each
model's cost: parameters, forward FLOPs per image (``torch.utils.flop_counter``, which counts a
multiply-add as 2 FLOPs) and forward throughput on cached features (images/s, batch 8, this
machine; the frozen backbone's cost is the same for every model and not included).

Each row is one results recipe (``adnotes.results.RECIPES``): the runs differ in their step
budgets (written in the ``steps`` column), so read the table as "what each method reaches in
its quick recipe", not as a controlled comparison. The published numbers of each method (the
``PUBLISHED`` list of its model file) are a separate table, labelled with their source; they
come from other data (MVTec-AD, VisA), other backbones and full schedules.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from . import plots
from .metrics import METRIC_NAMES

__all__ = ["ZOO", "zoo_table", "model_cost", "published_table", "plot_zoo"]

# label -> (results recipe, model file holding PUBLISHED)
ZOO: dict[str, tuple[str, str]] = {
    "MLP": ("shortcut_mlp", "baselines"),
    "CNN": ("shortcut_cnn", "cnn"),
    "transformer": ("shortcut_transformer", "baselines"),
    "UniAD": ("shortcut_uniad", "uniad"),
    "Omni-AD": ("omniad_quick", "omniad"),
    "ADTR": ("adtr_quick", "adtr"),
    "ADTR+": ("adtr_plus_quick", "adtr"),
    "HaloAE": ("haloae_quick", "haloae"),
}


@torch.no_grad()
def model_cost(model: torch.nn.Module, x: torch.Tensor | list[torch.Tensor], *, seconds: float = 1.0) -> dict:
    """Parameters, forward GFLOPs per image and forward images/s of ``model`` on the batch ``x``."""
    model = model.eval()
    one = [t[:1] for t in x] if isinstance(x, list) else x[:1]
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:  # its module hooks need autograd
        model(one)
    model(x)  # warm-up
    _wait_for_gpu()
    batch, runs, start = (x[0] if isinstance(x, list) else x).shape[0], 0, time.perf_counter()
    while True:
        model(x)
        runs += 1
        _wait_for_gpu()  # CUDA runs asynchronously: the clock must not stop before the GPU does
        if (elapsed := time.perf_counter() - start) >= seconds and runs >= 2:
            break
    return {"params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "GFLOPs": counter.get_total_flops() / 1e9, "images_per_s": batch * runs / elapsed}


def _wait_for_gpu() -> None:
    """Wait for the GPU work queued so far (when this process uses CUDA)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _run_cost(run: Path, device: str) -> dict:
    """The cost of a run's model: built from its config (cost does not depend on the weights)."""
    from .train import Config, build_model, load_features

    cfg = Config.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    test, = load_features(cfg, splits=("test",))
    cls = sorted(set(test.classes))[0] if cfg.train.mode == "separate" else None
    model = build_model(cfg, test).to(device)
    cost = model_cost(model, test.take(torch.arange(min(8, len(test))), device))
    steps = cfg.train.epochs or cfg.train.steps
    per = "epochs" if cfg.train.epochs else "steps"
    return cost | {"schedule": f"{steps} {per}" + (" per class" if cls else ""), "seeds": len(cfg.train.seeds)}


def zoo_table(session, methods: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per_class): the mean-over-classes row of every method with its cost, and the
    long per-class table (method, class, metrics). Values in %."""
    from . import results
    from .train import final_metrics

    unknown = sorted(set(methods or ()) - set(ZOO))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; the zoo has {', '.join(ZOO)}")
    summary, per_class = [], []
    for label in methods or list(ZOO):
        run = results.load_or_train(ZOO[label][0], session)
        table = final_metrics(run).reindex(columns=list(METRIC_NAMES)) * 100
        per_class.append(table.drop(index="mean").reset_index(names="class").assign(method=label))
        summary.append({"method": label, **table.loc["mean"].to_dict(), **_run_cost(run, str(session.device)),
                        "recipe": ZOO[label][0]})
    per_class = pd.concat(per_class)[["method", "class", *METRIC_NAMES]]
    return pd.DataFrame(summary).set_index("method"), per_class


def published_table(methods: list[str] | None = None) -> pd.DataFrame:
    """The numbers each method's paper (or a re-run we can cite) reports, with their source."""
    rows = []
    modules = dict.fromkeys(ZOO[m][1] for m in (methods or ZOO))
    for module in modules:
        rows += [row for row in getattr(importlib.import_module(f"adnotes.models.{module}"), "PUBLISHED", [])
                 if methods is None or row["method"] in methods]
    columns = ["method", "dataset", "setting", *[m for m in METRIC_NAMES if any(m in r for r in rows)], "source"]
    return pd.DataFrame(rows).reindex(columns=columns)


def plot_zoo(summary: pd.DataFrame, per_class: pd.DataFrame, mode: str) -> tuple[plt.Figure, dict]:
    """Image and pixel AUROC per method and class (heatmaps), and mean image AUROC against forward GFLOPs
    (marker area ~ parameters). ``summary``, ``per_class``: :func:`zoo_table`'s. Returns the figure and its data."""
    image = per_class.pivot(index="method", columns="class", values="image_AUROC").loc[summary.index]
    pixel = per_class.pivot(index="method", columns="class", values="pixel_AUROC").loc[summary.index]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for ax, table, title in ((axes[0], image, "image AUROC (%)"), (axes[1], pixel, "pixel AUROC (%)")):
        sns.heatmap(table, annot=True, fmt=".0f", cmap="viridis", vmin=50, vmax=100, cbar=False, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("")
        ax.set_ylabel("")
    axes[1].set_yticklabels([])
    ax = axes[2]
    for method, row in summary.iterrows():
        key = method.lower().replace("-", "").replace("+", "")
        ax.scatter(row.GFLOPs, row.image_AUROC, s=30 + 40 * row.params_M, color=plots.MODEL_COLORS.get(key, "0.3"),
                   marker="s" if method.endswith("+") else "o")
        ax.annotate(method, (row.GFLOPs, row.image_AUROC), textcoords="offset points", xytext=(5, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("forward GFLOPs per image (model only)")
    ax.set_ylabel("image AUROC (%), mean over classes")
    ax.set_title("quality against cost (marker area ~ parameters)")
    fig.suptitle(f"The method zoo on adnotes-mini ({mode} mode; each method's own recipe, see the schedule column)")
    fig.tight_layout()
    return fig, {"summary": summary.reset_index().to_dict(orient="list"), "per_class": per_class.to_dict(orient="list")}
