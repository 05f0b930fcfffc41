"""Notebook 03's tables and figures: UniAD's three designs opened on a trained model.

The notebook keeps each step's idea (the mask, the attention recording, the jitter, the decoder
probe); the bookkeeping behind it lives here, built on :mod:`adnotes.models.uniad` (the model),
:mod:`adnotes.models.objectives` (the anomaly map of Eq. 5) and :mod:`adnotes.plots` (the one style;
the notebook saves every figure with ``plots.save_figure``).

    i, t, cover = uniad_steps.defect_token(test, (h, w))       # the token on the largest defect
    model_off = uniad_steps.without_mask(model, cfg, test)     # the same weights, NMA switched off
    share = uniad_steps.attention_share(attention, window, cover > 0.5, divmod(t, w))
    layer_maps = uniad_steps.decoder_layer_maps(model, test)  # one (N, h, w) map per decoder layer
    uniad_steps.paper_table()                                  # UniAD Tab. 1 / Tab. 2 on MVTec-AD
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from . import plots
from .features import FeatureSet
from .models import uniad
from .models.objectives import anomaly_map
from .train import Config, build_model

__all__ = ["PAPER_IMAGE_AUROC", "PAPER_PIXEL_AUROC", "paper_table", "cell_cover", "defect_token", "without_mask",
           "attention_share", "attention_spread", "plot_neighbor_mask", "plot_attention", "denoise_table",
           "plot_jitter", "decoder_layer_maps", "layer_table", "seed_rows", "plot_anomaly_maps"]

# UniAD (NeurIPS 2022), "Ours", unified case on MVTec-AD: Tab. 1 (image AUROC), all 15 classes and the mean.
PAPER_IMAGE_AUROC = {"bottle": 99.7, "cable": 95.2, "capsule": 86.9, "hazelnut": 99.8, "metal_nut": 99.2,
                     "pill": 93.7, "screw": 87.5, "toothbrush": 94.2, "transistor": 99.8, "zipper": 95.8,
                     "carpet": 99.8, "grid": 98.2, "leather": 100.0, "tile": 99.3, "wood": 98.6, "mean": 96.5}
# Tab. 2 (pixel AUROC): our copy of the paper lists only the ten object classes and the mean.
PAPER_PIXEL_AUROC = {"bottle": 98.1, "cable": 97.3, "capsule": 98.5, "hazelnut": 98.1, "metal_nut": 94.8,
                     "pill": 95.0, "screw": 98.3, "toothbrush": 98.4, "transistor": 97.9, "zipper": 96.8,
                     "mean": 96.8}


def paper_table() -> pd.DataFrame:
    """UniAD's published unified-case numbers on MVTec-AD, in %: rows class (+ mean), NaN = not in our copy."""
    return pd.DataFrame({"image_AUROC (Tab. 1)": PAPER_IMAGE_AUROC, "pixel_AUROC (Tab. 2)": PAPER_PIXEL_AUROC})


def cell_cover(masks: Tensor, grid: int) -> Tensor:
    """(..., S, S) ground-truth masks -> (..., grid, grid) defect fraction of each token's S/grid-pixel cell."""
    cell = masks.shape[-1] // grid
    return F.avg_pool2d(masks.unsqueeze(-3).float(), cell).squeeze(-3)


def defect_token(test: FeatureSet, grid: tuple[int, int]) -> tuple[int, int, Tensor]:
    """``(image, token, cover)`` chosen by the ground truth alone: the test image with the largest defect, and on
    it the token whose cell the defect covers most (the one nearest the defect's centre of mass if several
    are). Tokens are row-major (token t is cell ``divmod(t, w)``); ``cover``: (h, w) defect fraction per cell."""
    h, w = grid
    i = int(test.masks.flatten(1).float().mean(1).argmax())
    cover = cell_cover(test.masks[i], h)                                              # (h, w)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centre = [float((g * cover).sum() / cover.sum()) for g in (rows, cols)]           # the defect's centre of mass
    distance = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    t = int(torch.where(cover == cover.max(), distance, torch.inf).flatten().argmin())  # most covered, most central
    return i, t, cover


def without_mask(model: nn.Module, cfg: Config, features: FeatureSet) -> nn.Module:
    """The same trained weights with the neighbour mask switched off everywhere, in eval mode (the mask has no
    parameters, so the state dict loads as is): an inference-time illustration, not a retrained ablation."""
    cfg_off = copy.deepcopy(cfg)
    cfg_off.model.args = {**cfg.model.args, "neighbor_mask": (False, False, False)}
    model_off = build_model(cfg_off, features)
    model_off.load_state_dict(model.state_dict())
    return model_off.eval()


def attention_share(attention: dict[str, dict[str, Tensor]], window: Tensor, defect: Tensor,
                    token: tuple[int, int]) -> pd.DataFrame:
    """Where one token's attention goes. ``attention``: label -> module -> (h, w) weights of the token (sum 1);
    ``window``, ``defect``: (h, w) bool. Rows: module; columns: (quantity, label), the weight share in the
    token's own window, on the token itself and on the defect cells."""
    r, c = token
    rows = {(name, label): {"in own window": float(a[window].sum()), "on itself": float(a[r, c]),
                            "on defect cells": float(a[defect].sum())}
            for label, maps in attention.items() for name, a in maps.items()}
    return pd.DataFrame(rows).T.unstack(level=1).reindex(list(next(iter(attention.values()))))


def attention_spread(weights: dict[str, Tensor], mask: Tensor) -> pd.DataFrame:
    """Per module, over all images and query tokens, means of: the attention share in the token's own window
    (the keys ``mask`` blocks, (HW, HW) bool) and on the token itself; the effective number of keys it reads,
    exp(entropy) (1 for one key, HW for uniform); the share that is the same in every image, Σ_k min(a_k, ā_k)
    with ā the mean row over the B images (1: where a token looks depends on its position only, as it does
    for uniform attention too). ``weights``: module -> (B, HW, HW) rows, as ``uniad.recording_attention``."""
    return pd.DataFrame({name: {
        "share in own window": float((a * mask).sum(-1).mean()),
        "share on itself": float(a.diagonal(dim1=-2, dim2=-1).mean()),
        "effective keys": float(torch.exp(-(a * a.clamp_min(1e-12).log()).sum(-1)).mean()),
        "same in every image": float(torch.minimum(a, a.mean(0, keepdim=True)).sum(-1).mean())}
        for name, a in weights.items()}).T


def plot_neighbor_mask(mask: Tensor, grid: tuple[int, int], window: tuple[int, int],
                       shown: dict[str, int]) -> tuple[plt.Figure, dict]:
    """The (HW, HW) neighbour mask: the blocked keys of the ``shown`` query tokens (name -> token) on the grid,
    and the whole matrix with their rows marked. Returns the figure and its numbers (keys blocked per token)."""
    h, w = grid
    blocked = mask.sum(dim=1)                                  # (HW,) keys blocked per query token
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), layout="constrained", gridspec_kw={"width_ratios": [1, 1, 1.25]})
    for ax, (name, t) in zip(axes, shown.items()):
        ax.imshow(mask[t].view(h, w).numpy(), cmap="Greys", vmin=0, vmax=1.5)
        ax.scatter([t % w], [t // w], marker="x", s=60, color="red")
        ax.set_title(f"query token {name}: {int(mask[t].sum())} keys blocked (grey)", fontsize=10)
        ax.set_xlabel("column j"), ax.set_ylabel("row i")
    axes[2].imshow(np.asarray(mask), cmap="Greys", vmin=0, vmax=1.5)
    for t in shown.values():
        axes[2].axhline(t, color="red", lw=0.8)
    axes[2].set_title(f"the whole mask, {h * w}×{h * w}: row = query, column = key", fontsize=10)
    axes[2].set_xlabel("key token"), axes[2].set_ylabel("query token")
    for ax in axes:
        ax.grid(False)
    data = {"grid": [h, w], "window": list(window),
            "blocked_per_token": {"min": int(blocked.min()), "max": int(blocked.max()),
                                  "mean": float(blocked.float().mean())},
            "tokens": {name: int(blocked[t]) for name, t in shown.items()}}
    return fig, data


def plot_attention(image: np.ndarray, mask: Tensor, attention: dict[str, dict[str, Tensor]],
                   maps: dict[str, Tensor], token: tuple[int, int], window: tuple[int, int],
                   title: str = "") -> plt.Figure:
    """One row per label of ``attention`` (label -> module -> (h, w) weights of one token): the image ((S, S, 3),
    defect in red, the token's cell in yellow), each module's map (white square: the token's window, red: the
    defect cells; one colour scale per module) and the label's anomaly map ``maps[label]`` (h, w)."""
    r0, c0 = token
    h = next(iter(maps.values())).shape[0]
    cell = mask.shape[-1] // h                                  # pixels per token
    defect = (cell_cover(mask, h) > 0.5).float().numpy()      # (h, w) defect cells
    modules = list(next(iter(attention.values())))
    fig, axes = plt.subplots(2, len(modules) + 2, figsize=(2.3 * (len(modules) + 2), 5.2), layout="constrained")
    vmax = max(float(a.max()) for a in maps.values())
    for row, label in enumerate(attention):
        axes[row, 0].imshow(image)
        axes[row, 0].contour(mask.numpy(), levels=[0.5], colors="red", linewidths=1)
        axes[row, 0].add_patch(Rectangle((c0 * cell, r0 * cell), cell, cell, fill=False, color="yellow", lw=1.5))
        axes[row, 0].set_ylabel(label, fontsize=11)
        for col, name in enumerate(modules, start=1):
            ax = axes[row, col]
            top = max(float(attention[lab][name].max()) for lab in attention)   # one scale per module
            ax.imshow(np.asarray(attention[label][name]), cmap="viridis", vmin=0, vmax=top)
            ax.contour(defect, levels=[0.5], colors="red", linewidths=1)
            corner = (c0 - window[1] // 2 - 0.5, r0 - window[0] // 2 - 0.5)   # the k×k window, in cell coordinates
            ax.add_patch(Rectangle(corner, window[1], window[0], fill=False, color="white", lw=1))
            ax.scatter([c0], [r0], marker="x", color="white", s=25)
            ax.set_title(name if row == 0 else "", fontsize=9)
        axes[row, -1].imshow(np.asarray(maps[label]), cmap="jet", vmin=0, vmax=vmax)
        axes[row, -1].contour(defect, levels=[0.5], colors="white", linewidths=1)
        axes[row, -1].set_title("anomaly map" if row == 0 else "", fontsize=9)
    axes[0, 0].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    return fig


@torch.no_grad()
def denoise_table(model: nn.Module, features: Tensor, alphas, seed: int = 0) -> pd.DataFrame:
    """The model on jittered copies of (n, C, h, w) ``features``, one row per jitter scale α (``uniad.feature_jitter``,
    p = 1, the noise seeded with ``seed`` for every α): mean per token of the noise, of the reconstruction's
    distance to the clean features and of its distance to the jittered ones (the anomaly map)."""
    rows = {}
    for alpha in alphas:
        torch.manual_seed(seed)
        tokens = features.flatten(2).transpose(1, 2)                                # (n, HW, C)
        noisy = uniad.feature_jitter(tokens, alpha, prob=1.0).transpose(1, 2).reshape(features.shape)
        rec = model(noisy)
        rows[alpha] = {"noise ‖f̃ − f‖": float((noisy - features).norm(dim=1).mean()),
                       "reconstruction ‖rec(f̃) − f‖": float((rec - features).norm(dim=1).mean()),
                       "‖rec(f̃) − f̃‖ (the anomaly map)": float((rec - noisy).norm(dim=1).mean())}
    return pd.DataFrame(rows).T.rename_axis("α")


def plot_jitter(norm: Tensor, norm_jit: Tensor, ratio: Tensor, cos: Tensor, denoise: pd.DataFrame,
                defect_error: float, alpha: float, channels: int) -> tuple[plt.Figure, dict]:
    """Feature jittering in three panels: token norms before / after (``norm``, ``norm_jit``), the noise relative
    to the token (``ratio`` = ‖D‖/‖f‖, against α/√C) and ``denoise_table``'s rows against the error on defect
    cells. ``cos``: cos(f + D, f) per token, for the numbers. Returns the figure and its numbers."""
    predicted = alpha / channels ** 0.5
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    bins = np.linspace(0, float(norm_jit.quantile(0.995)), 60)
    axes[0].hist(norm.numpy(), bins=bins, alpha=0.6, label="clean ‖f‖")
    axes[0].hist(norm_jit.numpy(), bins=bins, alpha=0.6, label=f"jittered ‖f + D‖, α = {alpha:g}")
    axes[0].set_xlabel("token norm"), axes[0].set_ylabel("tokens"), axes[0].legend(fontsize=8)
    axes[0].set_title("training tokens before / after jitter", fontsize=10)
    axes[1].hist(ratio.numpy(), bins=60, color="0.5")
    axes[1].axvline(predicted, color="red", ls="--", label=f"α/√C = {predicted:.2f}")
    axes[1].set_xlabel("‖D‖ / ‖f‖"), axes[1].legend(fontsize=8)
    axes[1].set_title("noise relative to the token (Eq. 3)", fontsize=10)
    for col, style in zip(denoise.columns, ("--", "-", ":")):
        color = plots.MODEL_COLORS["uniad"] if style == "-" else "0.4"
        axes[2].plot(denoise.index, denoise[col], style, marker="o", label=col, color=color)
    axes[2].axhline(defect_error, color="red", lw=1, label="error on defect cells (clean input)")
    axes[2].axvline(alpha, color="0.7", lw=1, ls=":")
    axes[2].set_xlabel("jitter scale α"), axes[2].set_ylabel("mean per token")
    axes[2].set_title("trained UniAD on jittered normal features", fontsize=10)
    axes[2].legend(fontsize=7)
    data = {"C": channels, "alpha": alpha, "ratio_mean": float(ratio.mean()), "predicted_ratio": predicted,
            "cos_mean": float(cos.mean()), "denoise": denoise.to_dict(orient="index"), "defect_error": defect_error}
    return fig, data


@torch.no_grad()
def decoder_layer_maps(model: nn.Module, test: FeatureSet, batch: int = 64) -> list[Tensor]:
    """One (N, h, w) anomaly map per decoder layer of a UniAD model: each layer's output read through the model's
    final LayerNorm and output projection, as if the decoder stopped there (for the last layer: the model's
    own maps; for earlier ones a probe the head was never trained for)."""
    outs = {}
    hooks = [layer.register_forward_hook(lambda mod, inp, out, l=l: outs.setdefault(l, []).append(out))
             for l, layer in enumerate(model.decoder)]
    try:
        for idx in torch.arange(len(test)).split(batch):
            model(test.take(idx))                                    # the forward pass the hooks listen to
    finally:
        for hook in hooks:
            hook.remove()
    h, w = model.config.feature_size
    maps = []
    for l in sorted(outs):
        out = torch.cat(outs[l])                                     # (N, HW, C) output of decoder layer l
        rec = model.output_proj(model.decoder_norm(out)).transpose(1, 2).reshape(len(test), -1, h, w)
        maps.append(anomaly_map(test.features.float(), rec, model.config.loss))   # (N, h, w)
    return maps


def layer_table(maps: list[Tensor], tables: list[pd.DataFrame], labels: Tensor, cells: Tensor) -> pd.DataFrame:
    """One row per decoder layer: the mean map on normal images (``labels`` 0) and on defect ``cells`` ((N, h, w)
    bool), and the mean-row image / pixel AUROC (in %) of that layer's per-class table in ``tables``."""
    return pd.DataFrame({f"after decoder layer {l + 1}": {
        "error, normal images": float(m[labels == 0].mean()), "error, defect cells": float(m[cells].mean()),
        "image_AUROC": 100 * table.loc["mean", "image_AUROC"], "pixel_AUROC": 100 * table.loc["mean", "pixel_AUROC"]}
        for l, (m, table) in enumerate(zip(maps, tables))}).T


def seed_rows(run: str | Path) -> pd.DataFrame:
    """Each seed's own final mean row (``seed<k>/metrics.json``, written when that seed finished): index the seed
    folder, columns the metrics, in [0, 1]; its ``std()`` is the spread over seeds of the run's mean row."""
    paths = sorted(Path(run).glob("seed*/metrics.json"))
    return pd.DataFrame({p.parent.name: json.loads(p.read_text())["mean"] for p in paths}).T


def plot_anomaly_maps(images, test: FeatureSet, full: Tensor, image_scores: Tensor,
                      picked: list[int]) -> tuple[plt.Figure, dict]:
    """The ``picked`` test images (e.g. ``plots.one_defect_per_class``) beside their ground truth and their (S, S)
    full-size maps ``full`` (all on one scale: 0 to the 99.9 % quantile of every test map), labelled with the
    image score. ``images``: the test dataset. Returns the figure and its numbers."""
    records = images.records
    vmax = float(np.quantile(full.numpy(), 0.999))
    fig = plots.anomaly_map_panels(
        [plots.denormalize(images[j]["image"]) for j in picked], [test.masks[j].numpy() for j in picked],
        [full[j].numpy() for j in picked],
        [f"{records[j].cls} / {records[j].defect}\nscore {image_scores[j]:.2f}" for j in picked], vmax=vmax)
    data = {"shown": [str(records[j].image) for j in picked], "image_scores": [float(image_scores[j]) for j in picked],
            "vmax": vmax, "normal_score_median": float(image_scores[test.labels == 0].median())}
    return fig, data
