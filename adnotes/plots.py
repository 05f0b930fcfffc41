"""The one plotting style of the collection.

A seaborn theme, a fixed colour per model (the same model has the same colour in every
notebook), anomaly-map panels, and :func:`save_figure`, which writes every figure as PNG (and
PDF on request) together with a JSON of the numbers and the config/seed behind it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from .data import IMAGENET_MEAN, IMAGENET_STD
from .paths import data_dir, figures_dir, home

__all__ = ["MODEL_COLORS", "METRIC_LABELS", "set_style", "denormalize", "anomaly_map_panels", "one_defect_per_class", "training_curves",
           "save_figure"]

METRIC_LABELS = {"loss": "training loss", "image_AUROC": "image AUROC", "pixel_AUROC": "pixel AUROC",
                 "image_AP": "image AP", "pixel_AP": "pixel AP", "pixel_AUPRO": "pixel AUPRO", "mAD": "mAD",
                 "normal_error": "normal error / feature norm", "copy_gain": "copy gain g"}

_palette = sns.color_palette("colorblind")
MODEL_COLORS = {
    "untrained": "0.6", "knn": _palette[7],
    "mlp": _palette[0], "cnn": _palette[1], "transformer": _palette[2], "uniad": _palette[3],
    "omniad": _palette[4], "adtr": _palette[5], "haloae": _palette[6],
}


def set_style() -> None:
    """The seaborn theme every figure uses."""
    sns.set_theme(context="notebook", style="whitegrid", palette=list(_palette))
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
                                "image.interpolation": "nearest"})


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) ImageNet-normalised tensor -> (H, W, 3) float image in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def anomaly_map_panels(images: list[np.ndarray], masks: list[np.ndarray], maps: list[np.ndarray],
                       titles: list[str], vmax: float | None = None) -> plt.Figure:
    """One row per sample: the image, its ground-truth mask, and the anomaly map over the image.

    ``images`` are (H, W, 3) in [0, 1], ``masks`` (H, W) bool, ``maps`` (H, W) float. With
    ``vmax`` the maps share one colour scale (0..vmax), so rows can be compared.
    """
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(8, 2.5 * n), squeeze=False, layout="constrained")
    for row, (image, mask, amap, title) in enumerate(zip(images, masks, maps, titles)):
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(title, fontsize=9)
        axes[row, 1].imshow(image)
        axes[row, 1].contour(mask, levels=[0.5], colors="red", linewidths=1)
        axes[row, 2].imshow(image)
        im = axes[row, 2].imshow(amap, cmap="jet", alpha=0.5, vmin=0, vmax=vmax or float(amap.max()))
        for ax in axes[row]:
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
    for ax, name in zip(axes[0], ("image", "ground truth", "anomaly map")):
        ax.set_title(name, fontsize=10)
    fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.5, aspect=30, label="anomaly score")
    return fig


def one_defect_per_class(test, records) -> list[int]:
    """Indices of one defective test image per class, for a figure's rows: row r shows the first image of
    the r-th defect kind (cycling) of the r-th class, so the rows cover the kinds. ``test``: a FeatureSet
    (classes, labels); ``records``: the dataset's records in the same order (their ``defect``)."""
    picked = []
    for row, cls in enumerate(sorted(set(test.classes))):
        defective = [j for j, c in enumerate(test.classes) if c == cls and test.labels[j] == 1]
        if not defective:
            continue
        kinds = sorted({records[j].defect for j in defective})
        picked.append(next(j for j in defective if records[j].defect == kinds[row % len(kinds)]))
    return picked


def training_curves(curves: dict[str, "pd.DataFrame"], metrics: tuple[str, ...] = ("loss", "image_AUROC", "pixel_AUROC"),
                    *, cls: str = "mean", styles: dict[str, dict] | None = None, floor: dict[str, float] | None = None,
                    logy_loss: bool = True) -> plt.Figure:
    """UniAD Fig. 2a / Fig. 4 layout: one panel per metric against training steps, one line per run.

    ``curves``: label -> a run's ``curves_summary.csv`` (columns step, cls, metric, mean, std); the
    band is ± one std over seeds. A label's colour is its model's (``MODEL_COLORS``, matched on
    the first word of the label) unless ``styles[label]`` gives matplotlib line kwargs.
    ``floor``: metric -> value of the untrained model, drawn as a dotted grey line.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False, layout="constrained")
    for ax, metric in zip(axes[0], metrics):
        for label, summary in curves.items():
            rows = summary[(summary.cls == cls) & (summary.metric == metric)].dropna(subset=["mean"]).sort_values("step")
            style = {"color": MODEL_COLORS.get(label.split()[0].lower().split("-")[0], None), "lw": 1.8}
            style |= (styles or {}).get(label, {})
            ax.plot(rows.step, rows["mean"], label=label, **style)
            std = rows["std"].fillna(0).to_numpy()
            if std.any():
                ax.fill_between(rows.step, rows["mean"] - std, rows["mean"] + std, alpha=0.2, color=style["color"], lw=0)
        if floor and metric in floor:
            ax.axhline(floor[metric], color=MODEL_COLORS["untrained"], ls=":", lw=1.5, label="untrained")
        ax.set_xlabel("training step")
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=11)
        if metric == "loss" and logy_loss:
            ax.set_yscale("log")
    seen = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=9, frameon=False)
    return fig


def save_figure(fig: plt.Figure, name: str, *, data: dict | None = None, config: dict | None = None,
                folder: str | Path | None = None, pdf: bool = False) -> Path:
    """Write ``<folder>/<name>.png`` (+ ``.pdf``) and ``<name>.json`` with the numbers and config."""
    folder = Path(folder) if folder is not None else figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path)
    if pdf:
        fig.savefig(path.with_suffix(".pdf"))
    with open(path.with_suffix(".json"), "w") as f:
        json.dump(_portable({"figure": path.name, "config": config or {}, "data": data or {}}), f, indent=2,
                  default=_plain)
    return path


def _portable(value):
    """Absolute paths under the data folder, the home folder or the checkout become relative to it
    (``adnotes-mini/brick/test/hole/000.png``, ``results/shortcut_mlp``), and numbers keep 6 significant
    digits (the last digits of a float change with the thread count and the BLAS build): a figure's
    JSON does not record the machine that made it."""
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return _portable(_plain(value))
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if isinstance(value, (str, Path)) and os.path.isabs(value):
        for root in (data_dir(), home(), Path(__file__).resolve().parents[1]):
            if Path(value).is_relative_to(root):
                return Path(value).relative_to(root).as_posix()
    return value


def _plain(value):
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
