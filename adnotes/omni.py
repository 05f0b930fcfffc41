"""Notebook 06's tables and figures: Omni-AD's two branches, its untrained attention MLP, Omni-AD beside UniAD.

The notebook shows the idea of each step (the branch probe, the per-part norms, the switch that
drops a branch, the fresh-MLP passes); loading the run, the small tables and the figures live here,
built from :mod:`adnotes.train` (runs, models, :func:`adnotes.train.anomaly_maps`),
:mod:`adnotes.evaluation` (the one scoring path) and :mod:`adnotes.plots` (the one style).

    OM = omni.load(run)                                     # config, features, test images, model
    maps = omni.full_maps(OM.model, OM.test, OM.config)     # (N, S, S) Omni-AD's maps (1 - cos, σ = 4)
    omni.scores(maps, OM.test, OM.config).loc["mean"]       # image / pixel AUROC, mean over classes
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from . import plots
from .data import load_dataset
from .evaluation import evaluate_maps, full_size_maps
from .features import FeatureSet
from .metrics import auroc, image_score
from .models import omniad
from .train import Config, anomaly_maps, build_model, load_features, load_model

__all__ = ["OmniRun", "load", "stage_shapes", "last_blocks", "defect_contrast", "branch_table", "subset", "full_maps",
           "scores", "plot_branches", "fresh_mlp_copy", "class_mean_auroc", "fresh_mlp_table", "parameter_table",
           "seed_table", "comparison_note", "rank_in_class", "plot_maps"]


@dataclass
class OmniRun:
    """What notebook 06 reads of a trained Omni-AD run."""

    run: Path                 # the run folder (a cached result)
    config: Config            # its config (data.multiscale: true)
    train: FeatureSet         # features: a list per scale, (N, C_k, H_k, W_k)
    test: FeatureSet          # the same for the test split
    images: object            # the test images (adnotes.data dataset), in the features' order
    model: nn.Module          # seed 0, final weights, eval mode


def load(run: str | Path) -> OmniRun:
    """The run's config, its multi-scale features, its test images and its trained model."""
    run = Path(run)
    cfg = Config.load(run / "config.yaml")
    train, test = load_features(cfg)
    images = load_dataset(cfg.data.dataset, "test", root=cfg.data.root, classes=cfg.data.classes,
                          image_size=cfg.data.image_size)
    return OmniRun(run, cfg, train, test, images, load_model(run, features=test))


@torch.no_grad()
def stage_shapes(model: nn.Module, x: list[torch.Tensor]) -> dict[str, tuple]:
    """Shape of one image's tensors inside Omni-AD (no batch dim): the neck's bottleneck, every decoder stage's
    output (forward hooks) and the outputs, finest first. ``x``: the teacher maps of one image."""
    shapes = {}  # a forward hook must return None (a returned value would replace the module's output)
    hooks = [model.neck.register_forward_hook(
        lambda m, i, o: shapes.update({"neck: bottleneck (B, C, h, w)": tuple(o.shape[1:])}))]
    hooks += [stage.register_forward_hook(
        lambda m, i, o, s=s: shapes.update({f"stage {s} (B, H, W, C)": tuple(o.shape[1:])}))
        for s, stage in enumerate(model.stages)]
    try:
        student = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    shapes["outputs, finest first"] = [tuple(o.shape[1:]) for o in student]
    return shapes


def last_blocks(seen: dict[str, dict]) -> dict[int, str]:
    """Decoder stage -> name of its last Omni-block (``stages.<s>.<k>``) among the blocks ``branch_probe`` saw."""
    last = {}                                            # stage -> (block index, name)
    for name in seen:
        stage, block = (int(part) for part in name.split(".")[1:3])
        if stage not in last or block > last[stage][0]:
            last[stage] = (block, name)
    return {stage: last[stage][1] for stage in sorted(last)}


def defect_contrast(norm_map: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``norm_map`` (H, W) on defect positions / its mean elsewhere, the (S, S) ``mask`` area-resized to
    the map (a position is defective when more than half of it is); NaN when no position is."""
    size = norm_map.shape[-1]
    defect = F.interpolate(mask[None, None].float(), size=(size, size), mode="area")[0, 0] > 0.5
    return float(norm_map[defect].mean() / norm_map[~defect].mean()) if defect.any() else float("nan")


def branch_table(parts: dict[int, dict[str, torch.Tensor]], mask: torch.Tensor) -> pd.DataFrame:
    """One row per stage: the mean of each part's norm map, then each part's defect/normal ratio
    (:func:`defect_contrast`). ``parts``: stage -> {part name: (H, W) norm map}."""
    return pd.DataFrame({f"stage {s} {tuple(next(iter(p.values())).shape)}": {
        **{f"mean {n}": float(v.mean()) for n, v in p.items()},
        **{f"defect/normal {n.split()[0]}": defect_contrast(v, mask) for n, v in p.items()}}
        for s, p in parts.items()}).T


def subset(fs: FeatureSet, idx: torch.Tensor) -> FeatureSet:
    """The images ``idx`` of a split (features, labels, classes, masks, defects; no extras)."""
    features = [f[idx] for f in fs.features] if fs.multiscale else fs.features[idx]
    return FeatureSet(features, fs.labels[idx], [fs.classes[j] for j in idx.tolist()],
                      None if fs.masks is None else fs.masks[idx],
                      defects=None if fs.defects is None else [fs.defects[j] for j in idx.tolist()])


def full_maps(model: nn.Module, test: FeatureSet, cfg: Config) -> torch.Tensor:
    """(N, S, S) Omni-AD's maps at the image size: the mean over scales of 1 - cos, then Gaussian σ
    (``eval.sigma``), as the trainer's evaluation scores them; here we keep the maps."""
    return full_size_maps(anomaly_maps(model, test), test.masks.shape[-1], sigma=cfg.eval.sigma)


def scores(maps: torch.Tensor, test: FeatureSet, cfg: Config) -> pd.DataFrame:
    """Per-class image / pixel metrics (no AUPRO) of full-size maps, with the run's image score (Omni-AD: the
    plain max of the smoothed map)."""
    return evaluate_maps(maps, test, pool=cfg.eval.pool, aupro=False, progress=False)


def plot_branches(om: OmniRun, i: int, parts: dict[int, dict[str, torch.Tensor]], probe: pd.DataFrame,
                  table: pd.DataFrame, n_probe: int) -> tuple[plt.Figure, dict]:
    """Left: test image ``i`` with its defect, then each part's norm map, one row per stage. Right: the probe's
    AUROC per dropped branch (``probe``: rows -> image_AUROC, pixel_AUROC in %, over ``n_probe`` images)."""
    stages = sorted(parts)
    names = list(parts[stages[0]])
    rec, mask = om.images.records[i], om.test.masks[i].numpy()
    fig = plt.figure(figsize=(15, 2.6 * len(stages)), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[3.2, 1])
    axes = left.subplots(len(stages), len(names) + 1, squeeze=False)
    image = plots.denormalize(om.images[i]["image"])
    for row, s in enumerate(stages):
        axes[row, 0].imshow(image)
        axes[row, 0].contour(mask, levels=[0.5], colors="red", linewidths=1)
        axes[row, 0].set_ylabel(f"stage {s}, {tuple(parts[s][names[0]].shape)}", fontsize=9)
        for col, name in enumerate(names, start=1):
            im = axes[row, col].imshow(parts[s][name].numpy(), cmap="magma")
            left.colorbar(im, ax=axes[row, col], shrink=0.8)
            if row == 0:
                axes[row, col].set_title(name, fontsize=10)
    axes[0, 0].set_title(f"{rec.cls} / {rec.defect}", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    spacer, ax, spacer2 = right.subplots(3, 1, height_ratios=[1, 2, 1])
    spacer.axis("off"), spacer2.axis("off")
    y = np.arange(len(probe))
    for metric, marker, color in (("image_AUROC", "o", plots.MODEL_COLORS["omniad"]), ("pixel_AUROC", "s", "0.4")):
        ax.scatter(probe[metric], y, marker=marker, s=60, color=color, label=metric.replace("_", " "), zorder=3)
    ax.axvline(50, color="0.3", ls=":", lw=1, label="chance")
    ax.set_yticks(y, probe.index), ax.set_ylim(len(probe) - 0.5, -0.5), ax.set_xlim(45, 100)
    ax.set_xlabel("AUROC (%), mean over classes")
    ax.set_title(f"switch a branch off at inference\n({n_probe} test images)", fontsize=10)
    spacer2.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="upper center", frameon=False)
    return fig, {"image": str(rec.image), "probe": probe.to_dict(orient="index"),
                 "branches": table.to_dict(orient="index")}


def fresh_mlp_copy(model: nn.Module, cfg: Config, test: FeatureSet) -> tuple[nn.Module, list[str]]:
    """The model with ``fresh_attention_mlp=True`` (the official code: each attention MLP drawn anew on every call),
    loaded with the trained weights minus the MLPs; returns it (eval mode) and the names of the dropped tensors."""
    cfg_fresh = copy.deepcopy(cfg)
    cfg_fresh.model.args = {**cfg.model.args, "fresh_attention_mlp": True}
    fresh = build_model(cfg_fresh, test).eval()
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"the fresh-MLP model wants weights the trained one lacks: {missing}")
    return fresh, unexpected


def class_mean_auroc(image_scores: np.ndarray | torch.Tensor, fs: FeatureSet) -> float:
    """Mean over classes of the image AUROC (%) of per-image scores of the split ``fs``."""
    s, labels, classes = np.asarray(image_scores), fs.labels.numpy(), np.array(fs.classes)
    return 100 * float(np.mean([auroc(labels[classes == c], s[classes == c]) for c in sorted(set(fs.classes))]))


def fresh_mlp_table(trained: torch.Tensor, fresh: list[torch.Tensor], fs: FeatureSet) -> pd.DataFrame:
    """Image AUROC (%) and Spearman ρ against the trained model's scores, for the trained model's image scores
    ``trained`` (N,) and each fresh-MLP pass's ``fresh[k]`` (N,) on the split ``fs``."""
    base = np.asarray(trained)
    rows = {"trained MLP": {"image_AUROC (%)": class_mean_auroc(base, fs), "Spearman ρ vs trained": 1.0}}
    for n, s in enumerate(fresh, start=1):
        rows[f"fresh MLP, pass {n}"] = {"image_AUROC (%)": class_mean_auroc(s, fs),
                                        "Spearman ρ vs trained": spearmanr(np.asarray(s), base)[0]}
    return pd.DataFrame(rows).T


def parameter_table(preset: str = "paper") -> pd.DataFrame:
    """Trainable parameters per component of Omni-AD, official code (fresh MLPs) against ours (trained MLPs),
    and their difference."""
    def count(module):
        return sum(p.numel() for p in module.parameters())

    def of(m, kind):
        return sum(count(b) for b in m.modules() if isinstance(b, kind))

    sizes = {}
    for label, fresh in (("official code (fresh MLPs)", True), ("adnotes default (trained MLPs)", False)):
        m = omniad.OmniAD(preset=preset, fresh_attention_mlp=fresh)   # paper: ResNet-34 teacher, depths 3/9/9/7
        mlps = of(m, omniad.OutputMLP)
        sizes[label] = {"neck": count(m.neck), "PatchExpand ×3": of(m, omniad.PatchExpand),
                        "Omni-blocks without the MLPs": of(m, omniad.OmniBlock) - mlps, "attention MLPs": mlps,
                        "total": count(m)}
    sizes = pd.DataFrame(sizes)
    sizes["difference"] = sizes.iloc[:, 1] - sizes.iloc[:, 0]
    return sizes


def seed_table(run: str | Path, seed: int = 0) -> pd.DataFrame:
    """A run's final per-class table of one seed (``seed<k>/metrics.json``, written when that seed finished)."""
    return pd.DataFrame(json.loads((Path(run) / f"seed{seed}" / "metrics.json").read_text())).T


def comparison_note(cfg: Config, ucfg: Config) -> str:
    """One sentence on how the Omni-AD run ``cfg`` and the UniAD run ``ucfg`` were trained and scored."""
    t, u, pool = cfg.train, ucfg.train, ucfg.eval.pool
    return (f"trained: Omni-AD {t.steps} steps at batch {t.batch_size}, lr {t.lr:g}; "
            f"UniAD {u.steps} steps at batch {u.batch_size}, lr {u.lr:g}. Image score: Omni-AD "
            f"max of the σ = {cfg.eval.sigma:g} smoothed map; UniAD and kNN max of the {pool}×{pool} average-pooled map")


def rank_in_class(image_scores: torch.Tensor, classes: list[str]) -> torch.Tensor:
    """(N,) each score's rank among the scores of its class, 0 (lowest) .. 1 (highest)."""
    rank = torch.zeros(len(image_scores))
    for cls in set(classes):
        idx = torch.tensor([j for j, c in enumerate(classes) if c == cls])
        rank[idx] = image_scores[idx].argsort().argsort().float() / (len(idx) - 1)
    return rank


def plot_maps(full: dict[str, torch.Tensor], pools: dict[str, int | None], om: OmniRun, picked: list[int],
              comparison: pd.DataFrame) -> tuple[plt.Figure, dict]:
    """One row per picked test image: the image with its defect, then each model's map over it, its own colour scale
    (0 to the 99.9 % quantile of its maps), and the image's score rank in its class. ``full``: model -> (N, S, S)
    full-size maps; ``pools``: model -> its image score's pool; ``comparison``: the table saved beside."""
    test, records = om.test, om.images.records
    rank = {name: rank_in_class(image_score(m, pool=pools[name]), test.classes) for name, m in full.items()}
    vmax = {name: float(np.quantile(m.numpy(), 0.999)) for name, m in full.items()}
    fig, axes = plt.subplots(len(picked), 1 + len(full), figsize=(2.5 * (1 + len(full)), 2.4 * len(picked)),
                             squeeze=False, layout="constrained")
    for row, j in enumerate(picked):
        image = plots.denormalize(om.images[j]["image"])
        axes[row, 0].imshow(image)
        axes[row, 0].contour(test.masks[j].numpy(), levels=[0.5], colors="red", linewidths=1)
        axes[row, 0].set_ylabel(f"{records[j].cls} / {records[j].defect}", fontsize=9)
        for col, name in enumerate(full, start=1):
            axes[row, col].imshow(image)
            im = axes[row, col].imshow(full[name][j].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=vmax[name])
            axes[row, col].set_xlabel(f"rank in class {rank[name][j]:.2f}", fontsize=8)
            if row == len(picked) - 1:
                fig.colorbar(im, ax=axes[:, col].tolist(), shrink=0.6, aspect=25, location="bottom",
                             label=f"{name} map")
    for ax, title in zip(axes[0], ("image + ground truth", *(f"{name} (quick)" for name in full))):
        ax.set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    return fig, {"shown": [str(records[j].image) for j in picked],
                 "rank_in_class": {name: [float(q[j]) for j in picked] for name, q in rank.items()}, "vmax": vmax,
                 "table": {" | ".join(col): comparison[col].to_dict() for col in comparison.columns}}
