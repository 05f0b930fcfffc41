"""Notebook 05's tables and figures: semantic anomaly detection, many classes normal, many anomalous (UniAD §4.4).

The notebook keeps the protocol's steps (the run, its untrained floor, the scores, the AUROCs); the
bookkeeping lives here: the CIFAR-10 / digits fallback, which class each test image shows, the
image scores (mean of the upsampled map), the per-class table, the paper's Tab. 3 and the figures
(saved by the notebook with ``plots.save_figure``).

    run, session = semantic.load_run("semantic_digits", S)      # CIFAR-10 in full mode, else the digits
    ids = semantic.class_ids(test_set, cfg.data)                # (N,) class of every test image
    scores = {"UniAD": semantic.model_scores(model, test_fs, cfg.data.image_size)}
    semantic.per_class_table(scores, labels, ids, semantic.class_names(cfg.data.dataset), cfg.data.normal)
"""
from __future__ import annotations

import pickle
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from torch import Tensor, nn

from . import plots, results
from .data import CIFAR10_CLASSES, load_dataset
from .evaluation import full_size_maps
from .features import FeatureSet
from .metrics import auroc, image_score
from .models.objectives import anomaly_map
from .paths import data_dir

__all__ = ["PAPER_TAB3", "paper_table", "load_run", "class_ids", "class_names", "class_counts", "image_scores",
           "model_scores", "knn_scores", "verdict", "per_class_table", "plot_samples", "plot_scores"]

# UniAD (NeurIPS 2022) Tab. 3: CIFAR-10, {01234} = classes 0-4 normal, the rest anomalous. Image AUROC, %.
PAPER_TAB3 = {
    "US": [51.3, 51.3, 63.9, 56.8, 55.9], "FCDD": [55.0, 50.3, 59.2, 58.5, 55.8],
    "FCDD+OE": [71.8, 73.7, 85.3, 85.0, 78.9], "PANDA": [66.6, 73.2, 77.1, 72.9, 72.4],
    "MKD": [64.2, 69.3, 76.4, 78.7, 72.1], "UniAD": [84.4, 80.9, 93.0, 90.6, 87.2],
    "UniAD ± (5 seeds)": [0.02, 0.02, 0.03, 0.09, 0.03],
}
PAPER_SPLITS = ("{01234}", "{56789}", "{02468}", "{13579}", "mean")   # the rows of PAPER_TAB3


def paper_table() -> pd.DataFrame:
    """UniAD Tab. 3 as a table: rows the normal-class split (+ mean), columns the methods, image AUROC in %."""
    return pd.DataFrame(PAPER_TAB3, index=pd.Index(list(PAPER_SPLITS), name="normal classes"))


def load_run(recipe: str, session):
    """``(run folder, session)`` of ``recipe`` (:func:`adnotes.results.load_or_train`). In full mode, without
    CIFAR-10 on disk, without a GPU for an uncached run, or when training fails (no backbone weights), it says
    so and falls back to the cached digits result with a quick session."""
    from .notebook import setup

    def quick():
        return setup(True, verbose=False)

    if not session.quick:
        try:
            load_dataset("cifar10", "test")
            if session.device.type != "cuda" and results.cached(recipe, False) is None:
                print("CIFAR-10 is here but there is no GPU: the paper's schedule would take days on a CPU. "
                      "Falling back to the cached digits result (quick mode).")
                session = quick()
        except FileNotFoundError as error:
            print(f"{error}\n\nCIFAR-10 is not on this machine: get it with "
                  f"`python -m adnotes data get cifar10 --root {data_dir()}`. Falling back to the digits (quick mode).")
            session = quick()
    try:
        return results.load_or_train(recipe, session), session
    except (OSError, RuntimeError) as error:   # e.g. the EfficientNet-B4 hub weights cannot be downloaded
        if session.quick:
            raise
        print(f"full-mode training failed: {error}\nFalling back to the digits (quick mode).")
        session = quick()
        return results.load_or_train(recipe, session), session


def class_ids(dataset, data) -> np.ndarray:
    """(N,) the class index each image of a semantic test set shows (its records only say normal / anomalous).
    ``data``: the run's data config (``dataset``, ``root``). CIFAR-10: the test batch's labels (the test set is
    that batch in order); digits: each image matched to scikit-learn's digits by its pixels."""
    if data.dataset == "cifar10":
        root = data.root or data_dir() / "cifar-10-batches-py"
        with open(f"{root}/test_batch", "rb") as f:
            return np.asarray(pickle.load(f, encoding="bytes")[b"labels"])
    from sklearn.datasets import load_digits
    digits = load_digits()
    reference = torch.tensor(digits.images.reshape(len(digits.images), -1) * (255 / 16))     # (1797, 64)
    ours = torch.tensor(np.stack([r.image[..., 0].reshape(-1) for r in dataset.records]), dtype=torch.float64)
    distance, nearest = torch.cdist(ours, reference).min(dim=1)
    assert distance.max() < 8, "a test image is not among scikit-learn's digits"   # < 1 per pixel: uint8 rounding
    return digits.target[nearest.numpy()]


def class_names(dataset: str) -> list[str]:
    """The ten class names of a semantic dataset, by class index."""
    return list(CIFAR10_CLASSES) if dataset == "cifar10" else [str(d) for d in range(10)]


def class_counts(ids: np.ndarray, names: list[str], normal) -> pd.DataFrame:
    """One row per class: its name, its role (normal / anomalous) and its number of test images."""
    return pd.DataFrame({"class": names, "role": ["normal" if k in normal else "anomalous" for k in range(len(names))],
                         "test images": np.bincount(ids, minlength=len(names))})


@torch.no_grad()
def image_scores(map_fn: Callable[[Tensor], Tensor], features: FeatureSet, image_size: int, *, batch: int = 128,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """(N,) image scores: ``map_fn`` gives each batch's (B, h, w) maps on the feature grid; each map is upsampled
    to the image size (bilinear, as in evaluation) and reduced by its mean (the semantic rule)."""
    out = []
    for idx in torch.arange(len(features)).split(batch):
        maps = map_fn(features.take(idx, device)).float().cpu()                    # (B, h, w)
        out.append(image_score(full_size_maps(maps, image_size), reduce="mean"))
    return torch.cat(out).numpy()


def model_scores(model: nn.Module, features: FeatureSet, image_size: int, *,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """(N,) mean-of-map image scores of a reconstruction model (its map goes with its loss: objectives.py)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "map_kind", getattr(config, "loss", "mse"))
    return image_scores(lambda x: anomaly_map(x, model(x), kind), features, image_size, device=device)


def knn_scores(bank: Tensor, features: FeatureSet, image_size: int, *,
               device: str | torch.device = "cpu") -> np.ndarray:
    """(N,) mean-of-map image scores of the nearest-neighbour baseline with an (M, C) memory bank (adnotes.demo)."""
    from .demo import nearest_neighbour_maps

    return image_scores(lambda x: nearest_neighbour_maps(bank, x), features, image_size, batch=1024, device=device)


def verdict(scores: dict[str, np.ndarray], labels, curve: pd.Series, bank_size: int) -> str:
    """What the numbers say: training's gain over the untrained floor, UniAD against the kNN baseline, and
    whether the image-AUROC ``curve`` (index step) still peaked at its last evaluation."""
    gain = (auroc(labels, scores["UniAD"]) - auroc(labels, scores["UniAD untrained"])) * 100
    edge = (auroc(labels, scores["UniAD"]) - auroc(labels, scores["kNN"])) * 100
    lines = [f"\nas measured: training adds {gain:+.1f} points over the untrained floor; UniAD is {abs(edge):.1f} "
             f"points {'above' if edge > 0 else 'below'} the training-free kNN baseline (bank of {bank_size} tokens)"]
    if curve.idxmax() == curve.index.max():
        lines.append(f"the image AUROC is highest at the last evaluation (step {curve.index.max()}): "
                     "the quick run may not have converged")
    return "\n".join(lines)


def per_class_table(scores: dict[str, np.ndarray], labels, ids: np.ndarray, names: list[str], normal) -> pd.DataFrame:
    """Image AUROC (%) of every scorer per class: a normal class against all anomalies, an anomalous class
    against all normal images; the last row "all": the normal set against all anomalies. Also the mean
    UniAD score of each class."""
    labels = np.asarray(labels)
    rows = []
    for k, name in enumerate(names):
        normal_class = k in normal
        keep = (ids == k) | (labels == (1 if normal_class else 0))      # this class against the other side
        row = {"class": name, "role": "normal" if normal_class else "anomalous",
               "compared with": "all anomalies" if normal_class else "all normal images"}
        row |= {label: auroc(labels[keep], s[keep]) * 100 for label, s in scores.items()}
        row["mean UniAD score"] = scores["UniAD"][ids == k].mean()
        rows.append(row)
    rows.append({"class": "all", "role": "", "compared with": "normal set vs all anomalies",
                 **{label: auroc(labels, s) * 100 for label, s in scores.items()}, "mean UniAD score": np.nan})
    return pd.DataFrame(rows).set_index("class")


def plot_samples(dataset, ids: np.ndarray, names: list[str], data) -> tuple[plt.Figure, dict]:
    """Two test images of each class (seeded choice), as the backbone sees them; normal classes in black,
    anomalous ones in red. ``data``: the run's data config. Returns the figure and its numbers."""
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(2, len(names), figsize=(15, 3.6), layout="constrained")
    for k in range(len(names)):
        for row, i in enumerate(rng.choice(np.flatnonzero(ids == k), 2, replace=False)):
            ax = axes[row, k]
            ax.imshow(plots.denormalize(dataset[int(i)]["image"]))
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            if row == 0:
                ax.set_title(f"{names[k]}\n{'normal' if k in data.normal else 'anomalous'}", fontsize=10,
                             color="black" if k in data.normal else "firebrick")
    fig.suptitle(f"{data.dataset}: test images at {data.image_size}×{data.image_size}; normal classes {data.normal}")
    return fig, {"dataset": data.dataset, "normal": data.normal}


def plot_scores(per_class: pd.DataFrame, scores: dict[str, np.ndarray], labels, curve: pd.Series, data,
                quick: bool) -> tuple[plt.Figure, dict]:
    """Three panels: the per-class AUROCs of every scorer (``per_class_table``), the distribution of UniAD's image
    scores for normal and anomalous images, and UniAD's image-AUROC ``curve`` (index step, in [0, 1]) against its
    untrained floor (step 0) and the kNN baseline. ``data``: the run's data config. Returns the figure and its
    numbers."""
    labels = np.asarray(labels)
    colors = {"UniAD": plots.MODEL_COLORS["uniad"], "UniAD untrained": plots.MODEL_COLORS["untrained"],
              "kNN": plots.MODEL_COLORS["knn"]}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.3), layout="constrained", width_ratios=[2.2, 1.2, 1.2])
    bars = per_class.drop(index="all").reset_index().melt(id_vars=["class", "role"], value_vars=list(scores),
                                                          var_name="scorer", value_name="AUROC")
    sns.barplot(data=bars, x="class", y="AUROC", hue="scorer", palette=colors, ax=axes[0])
    axes[0].axhline(50, color="0.3", lw=1, ls="--")
    axes[0].axvline(len(data.normal) - 0.5, color="0.3", lw=1)
    axes[0].set_ylim(0, 100)
    axes[0].set_title("normal class vs all anomalies  |  all normal vs anomalous class", fontsize=10)
    axes[0].set_ylabel("image AUROC (%)")
    for bar in axes[0].containers[1]:                     # untrained: hatched, kNN keeps its colour
        bar.set(facecolor="white", edgecolor=colors["UniAD untrained"], hatch="///")
    axes[0].legend(handles=axes[0].containers, labels=list(scores), fontsize=9, loc="lower left")

    hist = pd.DataFrame({"score": scores["UniAD"], "test image": np.where(labels == 1, "anomalous", "normal")})
    sns.histplot(data=hist, x="score", hue="test image", bins=40, stat="density", common_norm=False,
                 palette={"normal": "0.4", "anomalous": "firebrick"}, ax=axes[1])
    axes[1].set_title("UniAD image scores (mean of the map)", fontsize=10)

    floor = curve.loc[0]
    axes[2].plot(curve.index, curve.to_numpy() * 100, color=colors["UniAD"], lw=1.8, marker="o", label="UniAD")
    axes[2].axhline(floor * 100, color=colors["UniAD untrained"], ls=":", lw=1.5, label="untrained (step 0)")
    axes[2].axhline(auroc(labels, scores["kNN"]) * 100, color=colors["kNN"], ls="--", lw=1.5, label="kNN (no training)")
    axes[2].set_xlabel("training step")
    axes[2].set_ylabel("image AUROC (%)")
    axes[2].set_title("normal set vs all anomalies", fontsize=10)
    axes[2].legend(fontsize=9)
    mode = "quick: UniAD quick preset, offline" if quick else "full: paper settings"
    fig.suptitle(f"Semantic AD, many-vs-many on {data.dataset} (normal {data.normal}); "
                 f"image score = mean of the map; {mode}")
    table = per_class.reset_index()
    numbers = {"per_class": table.astype(object).where(table.notna(), None).to_dict(orient="records"),
               "overall": {label: round(auroc(labels, s) * 100, 1) for label, s in scores.items()},
               "untrained_floor_curve": floor, "curve": {int(k): float(v) for k, v in curve.items()},
               "paper_tab3_uniad_mean": PAPER_TAB3["UniAD"][PAPER_SPLITS.index("mean")]}
    return fig, numbers
