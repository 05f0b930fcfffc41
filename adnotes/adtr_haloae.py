"""Notebook 07's tables and figures: ADTR's push-pull loss, the generated anomalies, ADTR vs ADTR+, HaloAE's attention.

The notebook shows the idea of each step (the loss on a toy image, the halo attention with and
without the inverted mask, the loss schedule); the tables and figures built around them live here,
from :mod:`adnotes.models.adtr` (the loss, the paper's numbers), :mod:`adnotes.data.synthetic` (the
anomaly generators), :mod:`adnotes.train` (a run's final table) and :mod:`adnotes.plots` (the one style).

    fig, data = adtr_haloae.plot_pushpull(np.linspace(0, 2, 81))   # both terms of ADTR's Eq. 6-7
    table = adtr_haloae.adtr_table(runs)                            # ADTR and ADTR+ beside the paper's numbers
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from . import plots
from .data.synthetic import generator
from .models import adtr
from .train import final_metrics

__all__ = ["two_region_loss", "plot_pushpull", "plot_generated", "adtr_table", "plot_adtr_curves", "plot_halo"]


def two_region_loss(e_normal: float, e_anomalous: float, anomalous: bool = True) -> float:
    """ADTR's pixel push-pull loss (α = 0.003) of one 8×8 image of 16 channels whose top-left quarter is anomalous
    (``anomalous=False``: no anomalous position) with reconstruction error ``e_anomalous``, the rest ``e_normal``."""
    f = torch.zeros(1, 16, 8, 8)
    y = torch.zeros(1, 8, 8, dtype=torch.bool)
    if anomalous:
        y[:, :4, :4] = True
    rec = torch.where(y[:, None], torch.full_like(f, e_anomalous), torch.full_like(f, e_normal))
    return adtr.pushpull_pixel_loss(f, rec, y).item()


def plot_pushpull(errors: np.ndarray) -> tuple[plt.Figure, dict]:
    """Left: the push, the loss against the anomalous quarter's error (normal error 0 and 0.5). Right: the pull,
    the loss against the normal positions' error, with an anomalous quarter (error 1) and for an all-normal image."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for e_n in (0.0, 0.5):
        axes[0].plot(errors, [two_region_loss(e_n, e) for e in errors], label=f"normal error {e_n}")
    axes[0].set(xlabel="error on the anomalous quarter, e_a", ylabel="loss", title="push: falls as e_a grows",
                yscale="log")
    axes[0].legend()
    axes[1].plot(errors, [two_region_loss(e, 1.0) for e in errors], label="with an anomalous quarter (e_a = 1)")
    axes[1].plot(errors, [two_region_loss(e, 1.0, anomalous=False) for e in errors], "--", label="all-normal image")
    axes[1].set(xlabel="error on normal positions, e_n", ylabel="loss", title="pull: grows with e_n")
    axes[1].legend()
    fig.suptitle("ADTR's pixel push-pull loss (Eq. 6-7, α = 0.003)")
    fig.tight_layout()
    return fig, {"errors": errors}


def plot_generated(dataset, show: list[int], kinds: list[str], size: int = 224) -> tuple[plt.Figure, dict]:
    """One row per training image ``show[r]``: the original, then a view of each generator ``kind`` drawn with
    ``np.random.default_rng(r)``, its label outlined in red."""
    fig, axes = plt.subplots(len(show), 1 + len(kinds), figsize=(2.2 * (1 + len(kinds)), 2.2 * len(show)),
                             squeeze=False, layout="constrained")
    for row, i in enumerate(show):
        image = np.asarray(dataset.load_image(i).resize((size, size)))
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(dataset.records[i].cls)
        for col, kind in enumerate(kinds, start=1):
            view, mask = generator(kind)(image.copy(), np.random.default_rng(row))
            axes[row, col].imshow(view)
            if mask is not None:
                axes[row, col].contour(mask, levels=[0.5], colors="red", linewidths=0.8)
    for col, title in enumerate(["original", *kinds]):
        axes[0, col].set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    fig.suptitle("Generated anomalies: ADTR+'s confetti noise, HaloAE's CutPaste views (red: label)")
    return fig, {"images": [str(dataset.records[i].image) for i in show]}


def _summary(run: Path) -> pd.DataFrame:
    return pd.read_csv(Path(run) / "curves_summary.csv")


def adtr_table(runs: dict[str, Path]) -> pd.DataFrame:
    """One row per run (label -> run folder: "ADTR", "ADTR+"), in %: the image AUROC at its first logged step,
    its final mean image / pixel AUROC and AUPRO, and the paper's MVTec-AD image / pixel AUROC of the same method."""
    ours = pd.DataFrame({m: final_metrics(run).loc["mean"] * 100 for m, run in runs.items()}).T
    start = {}
    for m, run in runs.items():
        s = _summary(run)
        start[m] = 100 * s[(s.cls == "mean") & (s.metric == "image_AUROC") & (s.step == 0)]["mean"].item()
    ours.insert(0, "image AUROC at its start", pd.Series(start))
    paper = pd.DataFrame([r for r in adtr.PUBLISHED if r["dataset"] == "MVTec-AD"]).set_index("method")
    return ours[["image AUROC at its start", "image_AUROC", "pixel_AUROC", "pixel_AUPRO"]].join(
        paper[["image_AUROC", "pixel_AUROC"]].add_suffix(" (paper, MVTec-AD)"))


def plot_adtr_curves(runs: dict[str, Path], table: pd.DataFrame) -> tuple[plt.Figure, dict]:
    """The training curves of ADTR and of ADTR+, the latter drawn from ADTR's last step on (it continues ADTR's
    weights); ``table`` (:func:`adtr_table`) is saved beside."""
    adtr_run, plus_run = _summary(runs["ADTR"]), _summary(runs["ADTR+"])
    plus = "ADTR+ (continues ADTR, confetti + push-pull)"
    curves = {"ADTR (normal images only)": adtr_run,
              plus: plus_run.assign(step=plus_run.step + int(adtr_run.step.max()))}
    fig = plots.training_curves(curves, styles={plus: {"ls": "--", "color": "black"}})
    fig.suptitle("ADTR and ADTR+ on adnotes-mini (quick mode; ADTR+ starts from ADTR's final weights)")
    return fig, {"table": table.reset_index().to_dict(orient="list")}


def plot_halo(good: torch.Tensor, bad: torch.Tensor, block: int, halo: int, corner: tuple[int, int]) -> plt.Figure:
    """Left: the (H, H) map cut into ``block``² query blocks, the interior block at ``corner`` with its key window
    (``halo`` wide) and the top-left border window. Then channel 0 of the correct (``good``) and the inverted-mask
    (``bad``) outputs, (1, C, H, H) each."""
    size, (y0, x0), side = good.shape[-1], corner, block + 2 * halo
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.3), layout="constrained")
    axes[0].imshow(np.zeros((size, size)), cmap="gray_r", vmin=0, vmax=1)
    for k in range(0, size + 1, block):
        axes[0].axhline(k - 0.5, color="0.6", lw=0.6), axes[0].axvline(k - 0.5, color="0.6", lw=0.6)
    axes[0].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), block, block, color="tab:blue", alpha=0.5,
                                    label="query block"))
    axes[0].add_patch(plt.Rectangle((x0 - halo - 0.5, y0 - halo - 0.5), side, side, fill=False, ec="tab:red", lw=2,
                                    label="key window"))
    axes[0].add_patch(plt.Rectangle((-halo - 0.5, -halo - 0.5), side, side, fill=False, ec="tab:orange", lw=2, ls="--",
                                    label="border window (padding)"))
    axes[0].set_xlim(-2 * halo, size), axes[0].set_ylim(size, -2 * halo)
    axes[0].legend(fontsize=7, loc="lower right")
    axes[0].set_title(f"blocks {block}x{block}, halo {halo}")
    for ax, out, title in ((axes[1], good, "correct mask"), (axes[2], bad, "inverted mask (official code)")):
        ax.imshow(out[0, 0].numpy(), cmap="coolwarm")
        ax.set_title(f"{title}: channel 0")
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    return fig
