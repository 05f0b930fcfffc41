"""Notebook 00's tables and figures: a tour of the data, the backbone, the tokens and the untrained floor.

The notebook shows the idea of each step (load a split, run the frozen backbone, embed the tokens,
score the feature norm with :func:`adnotes.evaluation.evaluate_maps`); the full-mode fallbacks, the
generator's manifest, the token bookkeeping and the figures live here.

    DATASET = tour.choose_dataset(S)                 # "mini", or "mvtec" in full mode when it is on disk
    T = tour.tokens(train, test)                     # every token a row, with its class and defect label
    fig, data = tour.plot_embedding({"PCA": xy}, T, sample)
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F

from . import plots
from .backbone import Backbone
from .data import ADDataset, load_dataset
from .features import FeatureSet
from .metrics import auroc

__all__ = ["DEFECTIVE", "choose_dataset", "backbone", "manifest_summary", "pick_examples", "plot_dataset_grid",
           "Tokens", "tokens", "token_sample", "plot_embedding", "kind_table", "plot_feature_norm"]

DEFECTIVE = 0.25   # a token is defective when at least this fraction of its patch is in the mask


def choose_dataset(session) -> str:
    """``"mini"`` in quick mode; in full mode ``"mvtec"`` when it is on disk, else ``"mini"`` after saying so."""
    if session.quick:
        return "mini"
    try:
        load_dataset("mvtec", "test")
    except FileNotFoundError as err:
        print(f"full mode: MVTec-AD is not on disk ({str(err).splitlines()[0]})\n"
              f"  get it with `python -m adnotes data get mvtec --root {session.home / 'data'}` (where the loader "
              "looks by default) -> using adnotes-mini instead")
        return "mini"
    return "mvtec"


def backbone(session) -> Backbone:
    """The offline EfficientNet-Lite0; in full mode UniAD's EfficientNet-B4 when its hub weights can be had."""
    model = Backbone()
    if not session.quick:
        try:
            model = Backbone("efficientnet_b4", weights="hub")
        except RuntimeError as err:
            print(f"full mode: {str(err).splitlines()[0]}\n  -> keeping the offline EfficientNet-Lite0")
    return model.to(session.device)


def manifest_summary(dataset: str) -> pd.DataFrame | None:
    """adnotes-mini's generator manifest summarised per defect kind: count, min, median and max of the defect
    area (% of the image) and strength of the defective test images. None (said) for real data."""
    if dataset != "mini":
        print(f"{dataset}: no generator manifest (real data)")
        return None
    from .data.mini import MANIFEST_NAME
    from .paths import data_dir

    manifest = json.loads((data_dir() / "adnotes-mini" / MANIFEST_NAME).read_text())
    rows = pd.DataFrame(manifest["images"])
    defects = rows[(rows.split == "test") & (rows.defect_type != "good")].copy()
    defects["area_%"] = 100 * defects["area"] / manifest["params"]["image_size"] ** 2
    print(f"generator v{manifest['params']['version']}, seed {manifest['params']['seed']}; per defect kind:")
    return (defects.groupby("defect_type")[["area_%", "strength"]].describe()
            .loc[:, (slice(None), ["count", "min", "50%", "max"])].round(2))


def pick_examples(ds: ADDataset, per_class: int = 5) -> dict[str, list[int]]:
    """Per class: the index of its first normal image, then of the first image of each defect kind (up to
    ``per_class`` kinds, in alphabetical order)."""
    chosen = {}
    for i, r in enumerate(ds.records):
        kinds = chosen.setdefault(r.cls, {})
        if r.defect not in kinds and (r.defect == "good" or len(kinds) <= per_class):
            kinds[r.defect] = i
    return {cls: [kinds[k] for k in sorted(kinds, key=lambda k: (k != "good", k))] for cls, kinds in chosen.items()}


def plot_dataset_grid(ds: ADDataset, examples: dict[str, list[int]], title: str) -> tuple[plt.Figure, dict]:
    """One row per class of ``examples`` (from :func:`pick_examples`): the images with the ground-truth mask
    as a red contour, titled with the defect kind and its area in %. Data: the image paths per class."""
    n_cols = max(len(v) for v in examples.values())
    # 1.25 inches per photo: large enough to see the defects, small enough to keep the PNG light
    fig, axes = plt.subplots(len(examples), n_cols, figsize=(1.25 * n_cols, 1.25 * len(examples)),
                             squeeze=False, layout="constrained")
    for row, (cls, indices) in enumerate(examples.items()):
        for col in range(n_cols):
            ax = axes[row, col]
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            if col >= len(indices):
                ax.axis("off")
                continue
            item = ds[indices[col]]
            mask = item["mask"][0].numpy() > 0.5                              # (S, S)
            ax.imshow(plots.denormalize(item["image"]))
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
            defect = ds.records[indices[col]].defect
            ax.set_title(defect if not mask.any() else f"{defect} ({100 * mask.mean():.1f} %)", fontsize=8)
        axes[row, 0].set_ylabel(cls, fontsize=10)
    fig.suptitle(title, fontsize=10)
    return fig, {"images": {c: [str(ds.records[i].image) for i in v] for c, v in examples.items()}}


@dataclass
class Tokens:
    """Every token of a train and a test split as a row (M = images × h × w), with what the figures colour by."""

    train: np.ndarray        # (M_train, C) float32
    train_cls: np.ndarray    # (M_train,) class of each training token
    test: np.ndarray         # (M_test, C) float32
    test_cls: np.ndarray     # (M_test,) class of each test token
    defective: np.ndarray    # (M_test,) bool: at least DEFECTIVE of the token's patch is in the mask
    from_normal: np.ndarray  # (M_test,) bool: the token belongs to a normal test image
    touched: int             # test tokens whose patch overlaps a defect at all
    classes: list[str]       # the classes, sorted


def _rows(features: torch.Tensor) -> np.ndarray:
    """(N, C, h, w) -> (N * h * w, C) float32, image by image, row by row."""
    return features.float().permute(0, 2, 3, 1).reshape(-1, features.shape[1]).numpy()


def tokens(train: FeatureSet, test: FeatureSet, threshold: float = DEFECTIVE) -> Tokens:
    """The tokens of ``train`` and ``test`` as rows; a test token is defective when at least ``threshold`` of its
    patch (the mask average-pooled to the feature grid) is defective."""
    hw = test.grid[0] * test.grid[1]
    patch_frac = F.avg_pool2d(test.masks[:, None].float(), test.masks.shape[-1] // test.grid[0])[:, 0]  # (N, h, w)
    return Tokens(train=_rows(train.features), train_cls=np.repeat(np.array(train.classes), hw),
                  test=_rows(test.features), test_cls=np.repeat(np.array(test.classes), hw),
                  defective=(patch_frac >= threshold).flatten().numpy(),
                  from_normal=np.repeat(test.labels.numpy() == 0, hw),
                  touched=int((patch_frac > 0).sum()), classes=sorted(set(test.classes)))


def token_sample(T: Tokens, rng: np.random.Generator, normal: int = 200, defective: int = 60) -> np.ndarray:
    """Indices of test tokens: per class, ``normal`` tokens of normal images then up to ``defective`` defective
    tokens, drawn without replacement."""
    sample = []
    for cls in T.classes:
        pool = np.flatnonzero((T.test_cls == cls) & T.from_normal)
        sample += list(rng.choice(pool, min(normal, len(pool)), replace=False))
        pool = np.flatnonzero((T.test_cls == cls) & T.defective)
        sample += list(rng.choice(pool, min(defective, len(pool)), replace=False))
    return np.array(sample)


def plot_embedding(views: dict[str, np.ndarray], T: Tokens, sample: np.ndarray) -> tuple[plt.Figure, dict]:
    """One row per view (name -> (n, 2) coordinates of the tokens ``sample``): left coloured by class, right
    the same points in grey with the defective tokens on top in their class colour."""
    palette = dict(zip(T.classes, sns.color_palette("tab10" if len(T.classes) <= 10 else "tab20", len(T.classes))))
    is_def, cls_of = T.defective[sample], T.test_cls[sample]
    fig, axes = plt.subplots(len(views), 2, figsize=(11, 4.75 * len(views)), squeeze=False, layout="constrained")
    for row, (name, xy) in enumerate(views.items()):
        ax = axes[row, 0]
        for cls in T.classes:
            ax.scatter(*xy[cls_of == cls].T, s=5, alpha=0.6, color=palette[cls], label=cls)
        ax.set_title(f"{name} of test tokens, coloured by class")
        ax = axes[row, 1]
        ax.scatter(*xy[~is_def].T, s=4, alpha=0.25, color="0.7", label="normal image")
        for cls in T.classes:
            ax.scatter(*xy[is_def & (cls_of == cls)].T, s=14, marker="x", lw=0.9, color=palette[cls])
        ax.set_title(f"{name}: defective tokens (x, class colour) over all tokens (grey)")
        for ax in axes[row]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].legend(markerscale=3, fontsize=8, loc="best")
    return fig, {"n_tokens": int(len(sample)), "n_defective": int(is_def.sum())}


def kind_table(table: pd.DataFrame) -> pd.DataFrame:
    """The image AUROC per defect kind of an :func:`~adnotes.evaluation.evaluate_maps` table (its
    ``image_AUROC_<kind>`` columns: each kind's images against the class's normal images), one column per kind."""
    return table.filter(like="image_AUROC_").rename(columns=lambda c: c.removeprefix("image_AUROC_"))


def plot_feature_norm(table: pd.DataFrame, kinds: pd.DataFrame, norm_maps: torch.Tensor,
                      T: Tokens) -> tuple[plt.Figure, dict]:
    """Left: the per-class image and pixel AUROC of ``table`` (evaluate_maps of the feature norm); right: the
    norms ``norm_maps`` (N, h, w) of the tokens of normal images against the defective tokens of ``T``."""
    token_norm = norm_maps.flatten().numpy()                                  # (N * h * w,) in T's order
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained", width_ratios=(1.3, 1))
    (100 * table.drop(index="mean")[["image_AUROC", "pixel_AUROC"]]).rename(columns=plots.METRIC_LABELS).plot.bar(
        ax=ax1, rot=0, width=0.75, color=[plots.MODEL_COLORS["untrained"], "0.35"])
    ax1.axhline(50, color="k", lw=1, ls="--", label="chance")
    ax1.set_ylabel("AUROC (%)"), ax1.set_ylim(30, 100), ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title("feature norm, per class (no training)")
    bins = np.linspace(token_norm.min(), np.quantile(token_norm, 0.999), 60)
    ax2.hist(token_norm[T.from_normal], bins, density=True, alpha=0.6, color="0.5", label="tokens of normal images")
    ax2.hist(token_norm[T.defective], bins, density=True, alpha=0.6, color="C3", label="defective tokens")
    ax2.set_xlabel("token norm ‖f(x)‖₂"), ax2.set_ylabel("density"), ax2.legend(fontsize=8)
    scored = T.from_normal | T.defective
    ax2.set_title(f"token AUROC {100 * auroc(T.defective[scored], token_norm[scored]):.1f} %")
    return fig, {"per_class": table[["image_AUROC", "pixel_AUROC"]].to_dict(orient="index"),
                 "per_defect_kind_image_AUROC": kinds.loc["mean"].to_dict()}
