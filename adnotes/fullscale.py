"""Notebook 10's tables and figures: the papers' configs beside their sources, and the cached results.

    cfgs = {name: Config.load(configs_dir() / f"{name}.yaml") for name in fullscale.PAPER_CONFIGS}
    fullscale.settings_table(cfgs)                      # each setting of the four configs, with where it comes from
    rows, missing = fullscale.cached_results(quick=True)  # one row per cached result (see describe)
    fig, data = fullscale.plot_overview(pd.DataFrame(rows))

A run's final AUROCs and untrained floor are read as notebook 04 reads them (:func:`adnotes.ablations.run_summary`).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml

from . import results
from .ablations import run_summary

__all__ = ["PAPER_CONFIGS", "SETTINGS", "settings_table", "describe", "cached_results", "plot_overview"]

PAPER_CONFIGS = ["uniad_mvtec", "uniad_visa", "omniad_mvtec", "omniad_visa"]
# (section, key, UniAD source, Omni-AD source). UniAD: the paper (§, Tab.) and the official code; Omni-AD: its
# official configs (SOURCES.md §1.x); arXiv 2503.21125 is Omni-AD's paper.
SETTINGS = [
    ("model", "name", "§3", "arXiv 2503.21125"),
    ("model", "preset", "4+4 layers, C 256, FFN 1024 (§4.2, Tab. A1); 8 heads (code)",
     "depths 3/9/9/7, widths 512…64 (SOURCES §1.3)"),
    ("data", "backbone", "EfficientNet-B4 (§3.3)", "ResNet-34 (SOURCES §1.3)"),
    ("data", "stages", "stages 1-4 → 272 ch, resized to 14×14 (§3.3, §4.2)", "layers 1-3, each at its own stride"),
    ("data", "image_size", "224 (§4.2)", "256 (SOURCES §1.2)"),
    ("train", "epochs", "1000, lr ×0.1 after 800 (§4.2)", "1000, ×0.1 at 80 % (SOURCES §1.6)"),
    ("train", "batch_size", "64 = 8 GPUs × 8 (§4.2); the code's 8 is per GPU (SOURCES §2.2)",
     "16 (SOURCES §1.6)"),
    ("train", "lr", "AdamW 1e-4 (§4.2)", "AdamW 1e-3 (SOURCES §1.6)"),
    ("train", "weight_decay", "1e-4 (§4.2)", "1e-4, matrices only (SOURCES §1.6)"),
    ("train", "decay_1d", "decay on all parameters (official code)", "no decay on biases and norms"),
    ("train", "clip_grad", "grad-norm clip 0.1 (official config)", "5.0 (SOURCES §1.6)"),
    ("train", "amp", "bf16 autocast on CUDA (ours)", "off, as the official code"),
    ("train", "seeds", "133, the official config's seed", "42 in the official code (SOURCES §1.2)"),
    ("eval", "every", "every 10 epochs (official)", "every 20 epochs (official)"),
    ("eval", "pool", "max of avg-pooled map (§3.3); 16×16 from the code (SOURCES §2.6)",
     "plain max (no pooling, SOURCES §1.7)"),
    ("eval", "sigma", "no smoothing (official code, SOURCES §2.4)", "Gaussian σ = 4 on the map (SOURCES §1.7)"),
]


def settings_table(cfgs: dict) -> pd.DataFrame:
    """One row per setting of :data:`SETTINGS`: its value in each config of ``cfgs`` (name -> Config) and its sources."""
    return pd.DataFrame([{"setting": f"{section}.{key}",
                          **{name: str(getattr(getattr(c, section), key)) for name, c in cfgs.items()},
                          "UniAD source": u, "Omni-AD source": o}
                         for section, key, u, o in SETTINGS]).set_index("setting")


def describe(name: str, folder: str | Path, mode: str) -> dict:
    """One row of the overview: a cached result's model, data, schedule, final AUROCs (%) and untrained floor."""
    c = yaml.safe_load((Path(folder) / "config.yaml").read_text())
    run = run_summary(folder)
    return {"result": name, "mode": mode, "model": c["model"]["name"], "dataset": c["data"]["dataset"],
            "train": c["train"]["mode"], "steps": run["steps"], "seeds": len(c["train"]["seeds"]),
            "image AUROC": run["image"], "pixel AUROC": run["pixel"], "untrained image AUROC": run["floor"]}


def cached_results(quick: bool, *, ablation_rows: bool = True) -> tuple[list[dict], list[str]]:
    """(:func:`describe` of every cached result of the trainer's recipes in that mode, the recipes not cached).
    ``ablation_rows=False`` leaves out the single ablation rows (notebook 04 has them) but keeps ablation_default."""
    names = [n for n, r in results.RECIPES.items() if r.kind == "run"]   # not the picture decoder
    if not ablation_rows:
        names = [n for n in names if not n.startswith("ablation_") or n == "ablation_default"]
    rows = [describe(n, folder, "quick" if quick else "full") for n in names if (folder := results.cached(n, quick))]
    return rows, [n for n in names if n not in {r["result"] for r in rows}]


def plot_overview(overview: pd.DataFrame) -> tuple[plt.Figure, dict]:
    """Mean image and pixel AUROC of every row of ``overview`` (:func:`describe`'s rows) as bars, the untrained
    floor as a black tick. Returns the figure and its data (the rows)."""
    overview = overview.copy()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * max(len(overview), 1) + 2), 5), layout="constrained")
    if overview.empty:
        ax.text(0.5, 0.5, "no cached results yet\n(python -m adnotes results)", ha="center", va="center",
                transform=ax.transAxes, fontsize=12)
        ax.set_xticks([]), ax.set_yticks([])
    else:
        overview["label"] = [f"{r}\n({m}, {d})" for r, m, d in zip(overview.result, overview["mode"], overview.dataset)]
        bars = overview.melt(id_vars=["label"], value_vars=["image AUROC", "pixel AUROC"], var_name="metric",
                             value_name="AUROC (%)")
        sns.barplot(data=bars, x="label", y="AUROC (%)", hue="metric", palette=["0.35", "0.7"], ax=ax)
        ax.scatter(np.arange(len(overview)) - 0.2, overview["untrained image AUROC"], marker="_", s=300,
                   color="black", linewidths=2, zorder=3, label="untrained (image)")   # over the image bars
        for x, value in enumerate(overview["pixel AUROC"]):
            if np.isnan(value):
                ax.text(x + 0.2, 2, "no pixel labels", rotation=90, ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelsize=8, labelrotation=30)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    kinds = " and ".join(sorted(set(overview["mode"]))) if not overview.empty else "none"
    ax.set_title(f"Cached results ({kinds} mode). Quick = shrunk models on offline data, not the papers' settings",
                 fontsize=11)
    rows = overview.drop(columns=["label"], errors="ignore")
    return fig, {"results": rows.astype(object).where(rows.notna(), None).to_dict(orient="records")}
