"""Notebook 01's bookkeeping: the identity shortcut measured on the results cache.

The notebook shows the idea of each step; loading the runs, the tables, the figures and the
verdict live here, each built from :mod:`adnotes.copying` (the copy gain g and leak),
:mod:`adnotes.train` (runs, models, the anomaly maps scored by :mod:`adnotes.evaluation`) and
:mod:`adnotes.plots` (the one style; the notebook saves every figure with ``plots.save_figure``).

    sc = shortcut.load(S)                          # the four shortcut_* runs, their features, the probe
    kept = shortcut.kept_table(sc)                 # per model and kept step: g, leak, twin g, AUROC per kind
    width = shortcut.width_table(sc)               # the width sweep beside the linear reference
    print(shortcut.verdict(kept, shortcut.auroc_stats(sc), width=width))
    cost = shortcut.mask_cost_table(S)              # what the neighbour mask costs, textures vs objects

A mechanism recipe (width, anatomy, unified vs separate) that is not in the results cache is
never trained here (hours on a CPU): :func:`cached_or_skip` prints the command that makes it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

from . import plots, results
from .copying import Probe, copying, gain_and_leak, linear_gain, transplant_probe, twin_probe
from .data.datasets import MINI_DATASETS
from .data.mini import TEXTURE_CLASSES
from .evaluation import evaluate_maps
from .features import FeatureSet
from .train import Config, anomaly_maps, build_model, copy_probe, kept_steps, load_features, load_model, summarise

__all__ = ["MODELS", "ANATOMY", "WINDOWS", "PAPER_STEPS", "PAPER_BATCH", "Shortcut", "cached_or_skip", "load",
           "provenance", "schedule_table", "block_errors", "plot_live", "kept_table", "plot_copy_gain",
           "decoded_pictures", "auroc_curves", "auroc_stats", "seed_by_seed", "attention_by_step", "final_rows",
           "mechanism_table", "width_table", "plot_width", "donor_gains", "donor_table", "MASK_COST", "mask_cost_table",
           "verdict"]

MODELS = ("mlp", "cnn", "transformer", "uniad")   # the four panels of UniAD Fig. 2a
ANATOMY = {"anatomy_transformer": "vanilla transformer (one query)", "anatomy_nma": "+ neighbour mask",
           "anatomy_queries": "+ layer-wise queries (= UniAD without jitter)", "anatomy_jitter": "+ jitter (= UniAD)",
           "anatomy_clone_init": "UniAD, layers cloned at init (official code)"}
WINDOWS = {f"anatomy_window_{k}": f"UniAD, {k}×{k} neighbour mask" for k in results.WINDOWS}
PAPER_STEPS, PAPER_BATCH = 57_000, 64   # UniAD §4.2: 1 000 epochs at batch 64 on MVTec-AD (SOURCES.md §2.2)
_FINAL = ("copy_gain", "copy_leak", "image_AUROC", "pixel_AUROC")


@dataclass
class Shortcut:
    """What notebook 01 reads: the four long runs and the features they were trained and scored on."""

    session: object               # adnotes.notebook.Session whose results are shown (quick after a fallback)
    runs: dict[str, Path]         # model -> run folder (a cached result, or trained now)
    train: FeatureSet             # (N, C, h, w) the train split
    test: FeatureSet              # (M, C, h, w) the test split
    twins: FeatureSet | None      # adnotes-mini's clean twins of the defective test images (None elsewhere)
    probe: Probe                  # the transplant probe behind the curves' copy_gain column
    config: Config                # the config of the first run (data, eval)


def cached_or_skip(name: str, session) -> Path | None:
    """The cached result of recipe ``name`` in the session's mode, or None after one line saying how to make it."""
    if folder := results.cached(name, session.quick):
        return folder
    print(f"{name}: not in the results cache yet: `python -m adnotes results --only {name}"
          f"{'' if session.quick else ' --full'}` makes it")
    return None


def _run_config(run: Path) -> Config:
    return Config.load(Path(run) / "config.yaml")


def _recipe_config(name: str, session) -> Config:
    recipe = results.RECIPES[name]
    return session.config(recipe.config, list(recipe.quick if session.quick else recipe.full))


def _full_or_fallback(session, train_missing: bool):
    """Full mode: the session itself when its four results are cached (or ``train_missing`` and the data
    are there), else the quick session, saying so and printing the commands that make the full ones."""
    from .data import load_dataset
    from .paths import data_dir

    missing = [f"shortcut_{m}" for m in MODELS if results.cached(f"shortcut_{m}", quick=False) is None]
    if session.quick or not missing:
        return session
    cfg = _recipe_config(missing[0], session)
    try:
        load_dataset(cfg.data.dataset, "test", root=cfg.data.root)
        have_data = True
    except FileNotFoundError as err:
        have_data = False
        print(f"no {cfg.data.dataset} data: {str(err).splitlines()[0]}")
    print("Full-mode results missing:", ", ".join(missing), "\nMake them on a GPU (hours per recipe):\n"
          f"    python -m adnotes data get {cfg.data.dataset} --root {data_dir()}    # once\n"
          f"    python -m adnotes results --only {' '.join(missing)} --full")
    if have_data and train_missing:
        return session
    print("-> FALLING BACK to the quick-mode cached results: shrunk models on adnotes-mini, NOT the paper's "
          "settings.\n   (With the data in place, TRAIN_MISSING = True trains the missing ones here instead.)")
    return replace(session, quick=True)


def load(session, *, train_missing: bool = False) -> Shortcut:
    """The four ``shortcut_<model>`` results in the session's mode (full mode falls back to quick when
    they are missing), their train/test features (and adnotes-mini's twins) and the copy probe.
    A missing recipe is skipped with the command that makes it, or trained now with ``train_missing``."""
    source = _full_or_fallback(session, train_missing)
    runs = {}
    for m in MODELS:
        name = f"shortcut_{m}"
        if train_missing or results.cached(name, source.quick) is not None:
            runs[m] = results.load_or_train(name, source)
        else:
            cached_or_skip(name, source)
    cfg = _run_config(next(iter(runs.values()))) if runs else _recipe_config("shortcut_mlp", source)
    twins = cfg.data.dataset in MINI_DATASETS
    train, test, *rest = load_features(cfg, splits=("train", "test", "twins") if twins else ("train", "test"))
    for m, run in runs.items():
        c = _run_config(run)
        print(f"{m:12s} {run.name}: {c.model.preset} preset on {c.data.dataset}, {c.train.steps} steps, "
              f"seeds {c.train.seeds}, evaluated every {c.eval.every}")
    probe = copy_probe(test, replace(cfg.eval, copy_images=cfg.eval.copy_images or 60))
    return Shortcut(source, runs, train, test, rest[0] if rest else None, probe, cfg)


def provenance(sc: Shortcut) -> dict:
    """The mode and the run folders (with how each cached one was made), for a figure's JSON."""
    made = results.manifest()["recipes"]
    return {"mode": sc.session.mode, "runs": {m: str(r) for m, r in sc.runs.items()},
            "made": {m: made.get(r.name, {}).get("made") for m, r in sc.runs.items()}}


def schedule_table(sc: Shortcut) -> pd.DataFrame:
    """Per model: parameters, steps, batch and the images seen, against the paper's schedule
    (1 000 epochs at batch 64 ≈ 57 000 steps on MVTec-AD, UniAD §4.2)."""
    rows = {}
    for m, run in sc.runs.items():
        c = _run_config(run)
        model = build_model(c, sc.test)
        steps = c.train.epochs * max(1, len(sc.train) // c.train.batch_size) if c.train.epochs else c.train.steps
        rows[m] = {"preset": c.model.preset, "params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                   "steps": steps, "batch": c.train.batch_size, "lr": c.train.lr, "seeds": len(c.train.seeds),
                   "images seen": steps * c.train.batch_size,
                   "% of the paper's images": round(100 * steps * c.train.batch_size / (PAPER_STEPS * PAPER_BATCH), 2)}
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------------- errors on a probe

@torch.no_grad()
def block_errors(model: nn.Module, probe: Probe, *, device: str | torch.device = "cpu", batch: int = 64
                 ) -> dict[str, float]:
    """How visible the transplanted blocks are in the reconstruction error e(x) = ‖f(x) − x‖ per token (Eq. 5),
    from one pass over the probe: ``visibility`` = Σ_R e(x′) / Σ_R e(x), the block's error after the
    transplant over the same tokens' error before it (1: the transplant raises no error, it is invisible);
    ``normal_error`` = Σ e(x) / Σ ‖x‖ over all tokens of the original images (how well normal content is
    reconstructed); and the copy gain and leak of the same outputs (``gain``, ``leak``: as
    :func:`adnotes.copying.copying`)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)   # Σ_R⟨Δf,δ⟩, Σ_¬R‖Δf‖², Σ_R‖δ‖², Σ_R e(x′), Σ_R e(x), Σ e(x)
    for idx in torch.arange(len(probe)).split(batch):
        x, x_new, region = probe.x[idx].to(device), probe.x_new[idx].to(device), probe.region[idx].to(device)
        out, out_new = model(x), model(x_new)                                      # (B, C, H, W)
        e = torch.linalg.vector_norm(out - x, dim=1).double()                     # (B, H, W)
        e_new = torch.linalg.vector_norm(out_new - x_new, dim=1).double()
        along, spread, energy = gain_and_leak(out, out_new, x, x_new, region)
        sums += torch.stack([along.sum(), spread.sum(), energy.sum(), e_new[region].sum(), e[region].sum(),
                             e.sum()]).cpu()
    model.train(was_training)
    norm = torch.linalg.vector_norm(probe.x.double(), dim=1).sum()
    return {"gain": (sums[0] / sums[2]).item(), "leak": (sums[1] / sums[2]).item(),
            "visibility": (sums[3] / sums[4]).item(), "normal_error": (sums[5] / norm).item()}


@torch.no_grad()
def _token_maps(model: nn.Module, probe: Probe, i: int) -> dict[str, np.ndarray]:
    """(H, W) maps of probe image i: the output change ‖f(x′) − f(x)‖ and the errors ‖f(x) − x‖, ‖f(x′) − x′‖."""
    was_training = model.training
    model.eval()
    x, x_new = probe.x[i:i + 1], probe.x_new[i:i + 1]                            # (1, C, H, W)
    out, out_new = model(x), model(x_new)
    model.train(was_training)
    norm = lambda t: torch.linalg.vector_norm(t, dim=1)[0].numpy()             # noqa: E731
    return {"change": norm(out_new - out), "error": norm(out - x), "error_new": norm(out_new - x_new)}


def _outline(ax, region: np.ndarray, color: str = "cyan") -> None:
    rows, cols = np.nonzero(region)
    ax.add_patch(plt.Rectangle((cols.min() - 0.5, rows.min() - 0.5), np.ptp(cols) + 1, np.ptp(rows) + 1,
                               fill=False, ec=color, lw=1.5))


def plot_live(history: list[dict], snapshots: dict[int, nn.Module], probe: Probe, index: int = 0):
    """The live reconstructor: g (and the block's visibility) against the step, and for probe image
    ``index`` the output change and the error map at the first and the last snapshot. Returns (fig, data)."""
    h = pd.DataFrame(history)
    first, last = min(snapshots), max(snapshots)
    maps = {s: _token_maps(snapshots[s], probe, index) for s in (first, last)}
    delta = torch.linalg.vector_norm(probe.x_new[index] - probe.x[index], dim=0).numpy()   # (H, W) ‖δ‖
    region = probe.region[index].numpy()
    fig = plt.figure(figsize=(12, 4.6), layout="constrained")
    grid = fig.add_gridspec(2, 4, width_ratios=[1.6, 1, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    ax.plot(h.step, h.gain, color=plots.MODEL_COLORS["mlp"], lw=2, label="copy gain g")
    ax.plot(h.step, h.visibility - 1, color="0.3", ls="--", label="block visibility − 1")
    ax.set(xlabel="training step", ylim=(min(-0.05, (h.visibility - 1).min() - 0.05), 1.05),
           title="copying, measured every few steps")
    ax.legend(fontsize=9, loc="center right")
    top = max(delta.max(), *(m["change"].max() for m in maps.values()))
    err = max(m[k].max() for m in maps.values() for k in ("error", "error_new"))
    panels = [(grid[0, 1], delta, top, "input change ‖δ‖"),
              (grid[1, 1], maps[last]["error"], err, f"error ‖f(x) − x‖, no transplant, step {last}")]
    for col, s in ((2, first), (3, last)):
        g = h.set_index("step").gain.get(s, np.nan)
        vis = h.set_index("step").visibility.get(s, np.nan)
        panels += [(grid[0, col], maps[s]["change"], top, f"step {s}: output change, g = {g:.2f}"),
                   (grid[1, col], maps[s]["error_new"], err, f"step {s}: error ‖f(x′) − x′‖, vis. {vis:.2f}")]
    for spec, image, vmax, title in panels:
        a = fig.add_subplot(spec)
        a.imshow(image, cmap="inferno", vmin=0, vmax=vmax)
        _outline(a, region)
        a.set_title(title, fontsize=8)
        a.set_xticks([]), a.set_yticks([]), a.grid(False)
    fig.suptitle(f"The live per-token bottleneck and a 2×2 block from another class (cyan): probe image {index} "
                 f"({probe.classes[index]})", fontsize=11)
    return fig, {"history": h.to_dict(orient="list"), "image": index, "class": probe.classes[index]}


# ----------------------------------------------------------------------------- the four long runs

def kept_table(sc: Shortcut, *, device: str | torch.device = "cpu") -> pd.DataFrame:
    """Per model and kept step of its first seed (:func:`adnotes.train.kept_steps`): the copy gain and leak
    on the transplant probe with the block's visibility and the normal error (:func:`block_errors`), the
    twin gain on real defects, and the image AUROC, overall and per defect kind (``image_AUROC_<kind>``).
    The AUROCs are the run's own curves.csv row at that step when it has the per-kind columns, else the
    anomaly maps of the kept weights scored now by the one evaluation path (image scores only; the cache's
    float16 weights agree with the logged ones to about 1e-3). Index (model, step); AUROCs in [0, 1]."""
    twin = twin_probe(sc.test, sc.twins) if sc.twins is not None else None
    rows = []
    for m, run in sc.runs.items():
        steps, ev = kept_steps(run), _run_config(run).eval
        logged = _logged_kinds(run)
        for step in steps:
            model = load_model(run, step=step, features=sc.test, device=device)
            if step in logged.index:
                auroc = logged.loc[step].to_dict()
            else:
                maps = anomaly_maps(model, sc.test, device=device)                     # (N, h, w)
                table = evaluate_maps(maps, sc.test, pool=ev.pool, reduce=ev.reduce, sigma=ev.sigma, pixel=False,
                                      aupro=False, progress=False)
                auroc = table.loc["mean", [c for c in table.columns if c.startswith("image_AUROC")]].to_dict()
            rows.append({"model": m, "step": step, **block_errors(model, sc.probe, device=device),
                         "twin_gain": copying(model, twin, device=device)["gain"] if twin is not None else np.nan,
                         **auroc})
    table = pd.DataFrame(rows, columns=["model", "step"] if not rows else None)
    return table.set_index(["model", "step"]).rename(columns={"gain": "copy_gain", "leak": "copy_leak"})


def _logged_kinds(run: Path) -> pd.DataFrame:
    """The first seed's class-mean image AUROCs (overall and per kind) at the steps where curves.csv has every
    per-kind column (runs made before those columns existed: none). Index step."""
    path = Path(run) / f"seed{_run_config(run).train.seeds[0]}" / "curves.csv"
    curves = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["cls", "step"])
    columns = [c for c in curves.columns if c.startswith("image_AUROC")]
    if not any(c.startswith("image_AUROC_") for c in columns):
        return pd.DataFrame(columns=columns)
    rows = curves[curves.cls == "mean"].set_index("step")[columns]
    return rows.dropna()


def _summaries(sc: Shortcut) -> dict[str, pd.DataFrame]:
    return {m: summarise(run) for m, run in sc.runs.items()}


def _curve(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """(step, mean, std) of the class-mean rows of one metric, NaN steps dropped."""
    rows = summary[(summary.cls == "mean") & (summary.metric == metric)].dropna(subset=["mean"])
    return rows.sort_values("step")[["step", "mean", "std"]].reset_index(drop=True)


def plot_copy_gain(sc: Shortcut, kept: pd.DataFrame):
    """g against the step per model: the whole curve (mean ± std over seeds) when the run logged a
    ``copy_gain`` column, and the kept steps of the first seed measured now (dots). Returns (fig, data)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    data = {}
    for m, summary in _summaries(sc).items():
        color = plots.MODEL_COLORS[m]
        curve = _curve(summary, "copy_gain")
        for ax, column in zip(axes, ("copy_gain", "copy_leak")):
            logged = _curve(summary, column)
            if len(logged):
                std = logged["std"].fillna(0)
                ax.plot(logged.step, logged["mean"], color=color, lw=1.6, label=f"{m} · curve, all seeds")
                ax.fill_between(logged.step, logged["mean"] - std, logged["mean"] + std, color=color, alpha=0.2, lw=0)
            if m in kept.index.get_level_values(0):
                points = kept.loc[m, column]
                ax.plot(points.index, points.values, "o", ms=5, color=color, mfc="white" if len(logged) else color,
                        ls="none" if len(logged) else "-", label=f"{m} · kept weights, seed 0")
        data[m] = {"curve": curve.to_dict(orient="list"),
                   "kept": kept.loc[m, ["copy_gain", "copy_leak"]].reset_index().to_dict(orient="list")
                   if m in kept.index.get_level_values(0) else {}}
    axes[0].set(title="copy gain g (1: copies the block, 0: ignores it)", xlabel="training step", ylim=(-0.05, 1.05))
    axes[1].set(title="leak (change outside the block)", xlabel="training step")
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(f"Copying over training: a 2×2 block from another class, {len(sc.probe)} normal test images "
                 f"({sc.session.mode} mode)", fontsize=11)
    return fig, data


def _picks(sc: Shortcut, images) -> list[int]:
    """Three defective test images, chosen by a rule, not by eye: three classes evenly spaced in alphabetical
    order and, in the k-th of them, the first image with the k-th defect kind (alphabetical)."""
    classes = sorted(set(sc.test.classes))
    show = classes[::max(1, len(classes) // 3)][:3]
    labels = sc.test.labels.tolist()
    kinds = sorted({r.defect for r, y in zip(images.records, labels) if y == 1})
    picks = []
    for k, c in enumerate(show):
        defective = [i for i, (cls, y) in enumerate(zip(sc.test.classes, labels)) if cls == c and y == 1]
        picks.append(next((i for i in defective if images.records[i].defect == kinds[k % len(kinds)]), defective[0]))
    return picks


def decoded_pictures(sc: Shortcut, decoder: nn.Module, *, device: str | torch.device = "cpu"):
    """UniAD Fig. 2b as pictures: each model's reconstruction of three defective test images, drawn by the
    visualisation decoder (App. B.3) at every kept step after 0. Above each picture: the mean difference
    from the decoded true features inside the defect over outside it (ratio), and outside (grey levels).
    Returns (fig, table of those numbers)."""
    from .data import load_dataset
    from .models.vis_decoder import render

    c = sc.config.data
    images = load_dataset(c.dataset, "test", root=c.root, classes=c.classes, image_size=c.image_size)
    if [r.cls for r in images.records] != sc.test.classes:
        raise ValueError("the dataset and its cached features disagree: delete the feature cache and rerun")
    picks = _picks(sc, images)
    x = sc.test.take(torch.tensor(picks), device)                              # (3, C, h, w) true features
    side = decoder.config.image_size
    masks = torch.nn.functional.interpolate(sc.test.masks[picks][:, None].float(), size=(side, side),
                                            mode="nearest")[:, 0].bool().numpy()   # (3, s, s)
    truth = render(decoder, x)                                                 # (3, s, s, 3) uint8
    pictures, numbers = {}, {}
    for m, run in sc.runs.items():
        steps = kept_steps(run)
        for step in steps[1:] if len(steps) <= 4 else [steps[1], steps[-2], steps[-1]]:   # at most 3 per model
            model = load_model(run, step=step, features=sc.test, device=device)
            with torch.no_grad():
                decoded = render(decoder, model(x))
            diff = np.abs(decoded.astype(np.float32) - truth.astype(np.float32)).mean(-1)   # (3, s, s)
            inside, outside = (np.array([d[k == want].mean() for d, k in zip(diff, masks)]) for want in (True, False))
            pictures[(m, step)] = decoded
            numbers[(m, step)] = {"ratio": inside / np.maximum(outside, 1e-6), "outside": outside}
    cols = ["image", "decoded f_org", *[f"{m} {s}" for m, s in pictures]]
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(1.45 * len(cols), 1.6 * len(picks)), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    for k, i in enumerate(picks):
        axes[k, 0].imshow(plots.denormalize(images[i]["image"]))
        axes[k, 0].contour(sc.test.masks[i].numpy(), levels=[0.5], colors="red", linewidths=0.8)
        axes[k, 0].set_ylabel(f"{sc.test.classes[i]}\n{images.records[i].defect}", fontsize=8)
        axes[k, 1].imshow(truth[k])
        for j, (key, decoded) in enumerate(pictures.items(), start=2):
            axes[k, j].imshow(decoded[k])
            axes[k, j].set_title(f"{numbers[key]['ratio'][k]:.2f} · {numbers[key]['outside'][k]:.0f}", fontsize=8)
    for j, name in enumerate(cols):
        axes[0, j].set_title((name + "\n" + axes[0, j].get_title()).strip(), fontsize=8,
                             color=plots.MODEL_COLORS.get(name.split()[0], "black"))
    fig.suptitle("Reconstructed features drawn by UniAD's visualisation decoder (App. B.3); "
                 "numbers: inside/outside ratio · outside difference (grey levels)", fontsize=10)
    table = pd.DataFrame({key: {"ratio, mean": v["ratio"].mean(), "outside, mean": v["outside"].mean()}
                          for key, v in numbers.items()}).T.rename_axis(["model", "step"])
    return fig, table


def auroc_curves(sc: Shortcut):
    """UniAD Fig. 2a on the cached runs: loss, image and pixel AUROC against the step (mean ± std over
    seeds), with the untrained floor (the mean of the four step-0 values). Returns (fig, data)."""
    summaries = _summaries(sc)
    seeds = {m: len(_run_config(sc.runs[m]).train.seeds) for m in summaries}
    labels = {m: f"{m} · {n} seed{'s' * (n > 1)}" for m, n in seeds.items()}
    floor = {}
    for metric in ("image_AUROC", "pixel_AUROC"):
        start = [c.loc[c.step == 0, "mean"] for c in (_curve(s, metric) for s in summaries.values())]
        if values := [v.iloc[0] for v in start if len(v)]:
            floor[metric] = float(np.mean(values))
    fig = plots.training_curves({labels[m]: s for m, s in summaries.items()}, ("loss", "image_AUROC", "pixel_AUROC"),
                                floor=floor)
    fig.suptitle(f"UniAD Fig. 2a on our data ({sc.session.mode} mode): mean ± std over seeds", fontsize=11)
    data = {labels[m]: s.query("cls == 'mean'").pivot(index="step", columns="metric", values="mean")
            .reindex(columns=["loss", "image_AUROC", "pixel_AUROC"]).reset_index().to_dict(orient="list")
            for m, s in summaries.items()}
    return fig, {"curves": data, "floor": floor}


def auroc_stats(sc: Shortcut) -> pd.DataFrame:
    """Per model and metric (image, pixel), in %: untrained, the best step and value, the final value with
    its std over seeds, the drop from best to final, and the seed spread (the larger std of the two)."""
    return _auroc_stats(_summaries(sc))


def _auroc_stats(summaries: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = {}
    for m, summary in summaries.items():
        for metric in ("image_AUROC", "pixel_AUROC"):
            curve = _curve(summary, metric).set_index("step") * 100
            if curve.empty:
                continue
            best, last = curve["mean"].idxmax(), curve.index.max()
            rows[(m, metric.split("_")[0])] = {
                "untrained": curve["mean"].get(0, np.nan), "best step": best, "best": curve.loc[best, "mean"],
                "final step": last, "final": curve.loc[last, "mean"], "final std": curve.loc[last, "std"],
                "drop": curve.loc[best, "mean"] - curve.loc[last, "mean"],
                "spread": curve.loc[[best, last], "std"].max(skipna=False)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["model", "AUROC"])
    return table


_SEED_METRICS = ("loss", "normal_error", "copy_gain", "image_AUROC", "pixel_AUROC")


def seed_by_seed(sc: Shortcut, model: str = "uniad", *, every: int = 2000):
    """One model's curves seed by seed, not averaged: whether and when each seed leaves a plateau is hidden
    by a mean ± std. Figure: loss, normal error, g and image AUROC against the step, one line per seed.
    Table: per seed, the class-mean row at every ``every``-th step and at the last (AUROCs in %).
    Returns (fig, table)."""
    curves = {int(p.parent.name[4:]): pd.read_csv(p) for p in sorted(Path(sc.runs[model]).glob("seed*/curves.csv"))}
    rows = {s: c[c.cls == "mean"].set_index("step").sort_index().reindex(columns=list(_SEED_METRICS))
            for s, c in curves.items()}
    long = {f"{model} · seed {s}": r.reset_index().melt(id_vars="step", var_name="metric", value_name="mean")
            .assign(cls="mean", std=np.nan) for s, r in rows.items()}
    styles = {label: {"ls": ("-", "--", "-.", ":")[k % 4]} for k, label in enumerate(long)}
    fig = plots.training_curves(long, ("loss", "normal_error", "copy_gain", "image_AUROC"), styles=styles)
    fig.suptitle(f"{model} seed by seed ({sc.session.mode} mode)", fontsize=11)
    picked = {s: r.loc[[t for t in r.index if t % every == 0 or t == r.index.max()]] for s, r in rows.items()}
    table = pd.concat(picked, names=["seed", "step"])
    table[["image_AUROC", "pixel_AUROC"]] *= 100
    return fig, table


def attention_by_step(sc: Shortcut, models: tuple[str, ...] = ("transformer", "uniad"), *, every: int = 12,
                      device: str | torch.device = "cpu") -> pd.DataFrame:
    """What changes in the attention over training: at each kept step of each model's first seed, on every
    ``every``-th test image, per attention module the share of a token's attention on itself and in its own
    window, the effective number of keys it reads, and the share that is the same in every image
    (:func:`adnotes.uniad_steps.attention_spread`). Rows (module, quantity); columns (model, step)."""
    from .models.uniad import neighbor_mask, recording_attention
    from .uniad_steps import attention_spread

    x = sc.test.take(torch.arange(0, len(sc.test), every), device)   # (B, C, h, w)
    tables = {}
    for model in models:
        for step in kept_steps(sc.runs[model]):
            m = load_model(sc.runs[model], step=step, features=sc.test, device=device)
            with torch.no_grad(), recording_attention(m) as weights:
                m(x)
            if not weights:
                raise ValueError(f"{model} has no attention to record")
            window = neighbor_mask(*m.config.feature_size, m.config.neighbor_size)   # (HW, HW) the own window
            tables[(model, step)] = attention_spread({k: a.cpu() for k, a in weights.items()}, window).stack()
    return pd.concat(tables, axis=1, names=["model", "step"]).rename_axis(["module", "quantity"])


# ----------------------------------------------------------------------------- the mechanism in isolation

def final_rows(run: str | Path) -> dict[str, float]:
    """The last evaluation of a run (its class-mean row): mean and std over seeds of g, leak, image and
    pixel AUROC (``<metric>`` and ``<metric> std``), the step, and the number of seeds."""
    curves = [pd.read_csv(p) for p in sorted(Path(run).glob("seed*/curves.csv"))]
    if not curves:
        raise FileNotFoundError(f"no seed*/curves.csv under {run}")
    last = pd.DataFrame([c[c.cls == "mean"].sort_values("step").iloc[-1] for c in curves])
    out = {"step": int(last.step.max()), "seeds": len(last)}
    for metric in _FINAL:
        values = last[metric].astype(float) if metric in last else pd.Series([np.nan] * len(last))
        out[metric], out[f"{metric} std"] = values.mean(), values.std()   # std over seeds (ddof 1)
    return out


def mechanism_table(recipes: dict[str, str], session) -> pd.DataFrame:
    """One row per cached recipe of ``recipes`` (name -> row label): :func:`final_rows`. A recipe missing
    from the cache is skipped with one line saying how to make it (never trained here)."""
    rows = {}
    for name, label in recipes.items():
        if folder := cached_or_skip(name, session):
            rows[label] = final_rows(folder)
    return pd.DataFrame.from_dict(rows, orient="index")


def width_table(sc: Shortcut, widths=results.WIDTHS) -> pd.DataFrame:
    """The MLP's hidden width d against g and AUROC (``width_mlp_<d>``, final rows, mean ± std over seeds),
    beside the best linear autoencoder of width d (:func:`adnotes.copying.linear_gain`: ``linear_gain``).
    Rows of missing recipes keep the linear reference and NaN elsewhere. Index d; C_in is in ``attrs``."""
    measured = mechanism_table({f"width_mlp_{d}": d for d in widths}, sc.session)
    table = measured.reindex(list(widths)).rename_axis("d")
    table["linear_gain"] = pd.Series(linear_gain(sc.train, sc.probe, widths))
    table.attrs["in_channels"] = sc.test.channels
    return table


def plot_width(table: pd.DataFrame):
    """g and image AUROC against the MLP's width d, the linear reference as a line. Returns (fig, data)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    d = table.index.to_numpy()
    color = plots.MODEL_COLORS["mlp"]
    axes[0].plot(d, table["linear_gain"], color="0.4", ls="--", marker=".", label="linear AE (PCA), closed form")
    for ax, metric, scale in ((axes[0], "copy_gain", 1), (axes[1], "image_AUROC", 100)):
        if metric in table and table[metric].notna().any():
            ax.errorbar(d, table[metric] * scale, yerr=table[f"{metric} std"] * scale, color=color, marker="o",
                        capsize=3, label="MLP, final, mean ± std over seeds")
    if "in_channels" in table.attrs:
        axes[0].axvline(table.attrs["in_channels"], color="0.7", lw=1, label=f"C_in = {table.attrs['in_channels']}")
    axes[0].set(xscale="log", xlabel="hidden width d", title="copy gain g", ylim=(-0.05, 1.05))
    axes[1].set(xscale="log", xlabel="hidden width d", title="image AUROC (%)")
    for ax in axes:
        ax.set_xticks(d, [str(v) for v in d])
        ax.minorticks_off()
    axes[0].legend(fontsize=8)
    missing = table.index[table["copy_gain"].isna()].tolist() if "copy_gain" in table else list(d)
    fig.suptitle("Width sweep: the MLP against the linear reference"
                 + (f" (not in the cache yet: d = {', '.join(map(str, missing))})" if missing else ""), fontsize=11)
    return fig, {"width": table.reset_index().to_dict(orient="list")}


def _pooled(model: nn.Module, probe: Probe, keep: np.ndarray, device) -> tuple[float, float, float]:
    """(Σ g·E, Σ ℓ·E, E) of a model on the probe images ``keep``: sums that pool over several models."""
    idx = torch.as_tensor(np.flatnonzero(keep))
    sub = Probe(probe.x[idx], probe.x_new[idx], probe.region[idx], [probe.classes[i] for i in idx.tolist()])
    energy = ((sub.x_new - sub.x).double().square() * sub.region.unsqueeze(1)).sum().item()   # Σ_R ‖δ‖²
    measured = copying(model, sub, device=device)
    return measured["gain"] * energy, measured["leak"] * energy, energy


def donor_gains(models: dict[str | None, nn.Module], probe: Probe, *, device="cpu") -> dict[str, float]:
    """g and leak of a unified model (``{None: model}``) or of one model per class (``{cls: model}``, each on
    its class's probe images, sums pooled over classes)."""
    classes = np.array(probe.classes)
    sums = np.array([_pooled(model, probe, classes == cls if cls else np.ones(len(classes), bool), device)
                     for cls, model in models.items()]).sum(0)
    return {"gain": sums[0] / sums[2], "leak": sums[1] / sums[2]}


def donor_table(sc: Shortcut, *, device="cpu") -> pd.DataFrame:
    """Unified vs separate (UniAD Fig. 4, ``fig4_mlp_unified`` / ``fig4_mlp_separate``): g with a donor of
    another class and of the same class (another image, another position), and the final image AUROC."""
    probes = {donor: transplant_probe(sc.test, n=len(sc.probe), block=2, donor=donor)
              for donor in ("other_class", "same_class")}
    rows = {}
    for name, label in (("fig4_mlp_unified", "unified: one MLP"), ("fig4_mlp_separate", "separate: one MLP per class")):
        if not (run := cached_or_skip(name, sc.session)):
            continue
        first = run / f"seed{_run_config(run).train.seeds[0]}"
        classes = sorted(p.parent.name for p in first.glob("*/weights.pt")) or [None]
        models = {c: load_model(run, cls=c, features=sc.test, device=device) for c in classes}
        rows[label] = {f"g, donor: {donor.replace('_', ' ')}": donor_gains(models, probe, device=device)["gain"]
                       for donor, probe in probes.items()} | {"image_AUROC": _final_image_auroc(run)}
    return pd.DataFrame.from_dict(rows, orient="index")


def _final_image_auroc(run: Path) -> float:
    """The final class-mean image AUROC of a run (separate mode: the mean over its per-class models)."""
    curve = _curve(summarise(run), "image_AUROC")
    return float(curve["mean"].iloc[-1])


# ----------------------------------------------------------------------------- what the neighbour mask costs

MASK_COST = {"maskcost_transformer": "no mask", "maskcost_nma": "mask"}   # recipe -> column label
_TEXTURES = {*TEXTURE_CLASSES, "carpet", "grid", "leather", "tile", "wood"}  # adnotes-mini's and MVTec-AD's


def _final_by_class(run: str | Path) -> pd.DataFrame:
    """Per class (index, the ``mean`` row left out): ``normal_error``, ``image_AUROC`` and ``copy_gain`` of each
    seed's last evaluation, averaged over seeds (NaN for a column the run did not log). ``attrs``: the last
    step and the number of seeds."""
    curves = [pd.read_csv(p) for p in sorted(Path(run).glob("seed*/curves.csv"))]
    if not curves:
        raise FileNotFoundError(f"no seed*/curves.csv under {run}")
    last = pd.concat([c[(c.step == c.step.max()) & (c.cls != "mean")] for c in curves])
    table = last.reindex(columns=["cls", "normal_error", "image_AUROC", "copy_gain"]).groupby("cls").mean()
    table.attrs = {"step": int(last.step.max()), "seeds": len(curves)}
    return table


def mask_cost_table(session, recipes: dict[str, str] = MASK_COST) -> pd.DataFrame:
    """What UniAD's neighbour mask costs on normal content, per class and kind: the vanilla transformer
    without and with the mask (``maskcost_transformer``, ``maskcost_nma``; adnotes-mini with its aligned
    object classes). Per class: ``kind`` (texture or object), the normal error Σ‖f(x) − x‖ / Σ‖x‖ on the copy
    probe's normal tokens, the image AUROC and the copy gain g without → with the mask (final evaluation, mean
    over seeds), and their changes ``Δ`` (with − without); then the rows ``textures`` and ``objects``, the
    means over their classes. ``attrs["runs"]``: per column label, the final step and the number of seeds.
    A recipe missing from the cache is skipped with one line saying how to make it (never trained here):
    its columns are NaN, and the table is empty when both are missing."""
    finals = {label: _final_by_class(folder) for name, label in recipes.items()
              if (folder := cached_or_skip(name, session))}
    if not finals:
        return pd.DataFrame()
    classes = sorted(set().union(*(f.index for f in finals.values())), key=lambda c: (c not in _TEXTURES, c))
    table = pd.DataFrame({"kind": ["texture" if c in _TEXTURES else "object" for c in classes]}, index=classes)
    without, with_mask = recipes.values()
    for metric, short in (("normal_error", "normal error"), ("image_AUROC", "image AUROC"), ("copy_gain", "g")):
        for label in (without, with_mask):
            table[f"{short}, {label}"] = finals[label][metric] if label in finals else np.nan
        table[f"Δ {short}"] = table[f"{short}, {with_mask}"] - table[f"{short}, {without}"]
    means = table.groupby("kind").mean().rename(index={"texture": "textures", "object": "objects"})
    means.insert(0, "kind", means.index.str.removesuffix("s"))
    table = pd.concat([table, means.reindex([k for k in ("textures", "objects") if k in means.index])])
    table.attrs["runs"] = {label: final.attrs for label, final in finals.items()}
    return table


# ----------------------------------------------------------------------------- the verdict

def _fmt(values: dict, digits: int = 2) -> str:
    return ", ".join(f"{k} {v:.{digits}f}" for k, v in values.items())


def verdict(kept: pd.DataFrame, stats: pd.DataFrame, *, width: pd.DataFrame | None = None,
            anatomy: pd.DataFrame | None = None, donors: pd.DataFrame | None = None,
            mask_cost: pd.DataFrame | None = None, seeds: pd.DataFrame | None = None) -> str:
    """What the numbers say, as sentences built from the tables (:func:`kept_table`, :func:`auroc_stats`,
    :func:`width_table`, :func:`mechanism_table` of ``ANATOMY``, :func:`donor_table`,
    :func:`mask_cost_table`, UniAD's :func:`seed_by_seed`); a missing table gives a sentence saying so."""
    lines = []
    final = kept.groupby(level="model").tail(1).reset_index(level="step")     # the last kept step per model
    g = final["copy_gain"].to_dict()
    lines.append(f"Copy gain g at the last step (seed 0, a 2×2 block from another class): {_fmt(g)}.")
    if all(m in g for m in MODELS):
        holds = min(g["mlp"], g["cnn"]) > g["transformer"] > g["uniad"]
        lines.append("The order UniAD §3.1 argues for (the MLP and the CNN copy more than the transformer with one "
                     f"query, which copies more than UniAD) {'holds' if holds else 'does NOT hold'} on these runs.")
    if final["twin_gain"].notna().any():
        lines.append(f"On real defects against their clean twins, g at the last step: {_fmt(final['twin_gain'].to_dict())}.")
    lines.append(f"Block visibility (error on the block after / before the transplant) at the last step: "
                 f"{_fmt(final['visibility'].to_dict())}; normal error / feature norm: "
                 f"{_fmt(final['normal_error'].to_dict())}.")
    if len(image := stats.xs("image", level="AUROC")) > 0:
        ends = image["final"].to_dict()
        lines.append(f"Image AUROC at the end (mean over seeds, %): {_fmt(ends, 1)}.")
        if "uniad" in ends and len(ends) > 1:
            rival = max((m for m in ends if m != "uniad"), key=ends.get)
            diff = ends["uniad"] - ends[rival]
            stds = [image.loc[m, "final std"] for m in ("uniad", rival)]
            spread = max((s for s in stds if not np.isnan(s)), default=np.nan)
            where = ("ahead of" if diff > spread else "behind" if diff < -spread else "level with") \
                if not np.isnan(spread) else ("ahead of" if diff > 0 else "behind")
            lines.append(f"UniAD ends {where} the best baseline, {rival}: {diff:+.1f} points "
                         + (f"(seed spread {spread:.1f})." if not np.isnan(spread) else "(one seed: no spread to judge by)."))
        peaks = lambda models: ", ".join(f"{m} ({image.loc[m, 'best']:.1f} at step {int(image.loc[m, 'best step'])} → "
                                         f"{image.loc[m, 'final']:.1f})" for m in models)
        turned = image[image["best step"] < image["final step"]]
        dropped = [m for m, r in turned.iterrows() if r["drop"] > r["spread"]]
        lines.append(f"Image AUROC falls from its peak by more than the seed spread for: {peaks(dropped) or 'no model'}.")
        if single := [m for m, r in turned.iterrows() if np.isnan(r["spread"]) and r["drop"] > 0]:
            lines.append(f"Of one seed so far (no spread to judge a drop by), below their peak at the end: {peaks(single)}.")
        most, least = max(g, key=g.get), min(g, key=g.get)
        if most in ends and least in ends and most != least:
            lines.append(f"The model that copies most ({most}, g {g[most]:.2f}) ends at {ends[most]:.1f}, the one that "
                         f"copies least ({least}, g {g[least]:.2f}) at {ends[least]:.1f}: AUROC "
                         f"{'follows' if ends[least] > ends[most] else 'does NOT follow'} g here.")
    if seeds is not None and len(seeds):
        parts = []
        for seed, rows in seeds.groupby(level="seed"):
            rows = rows.droplevel("seed")
            first, last = rows.index[rows.index > 0].min(), rows.index.max()
            parts.append(f"seed {seed}: image AUROC {rows.loc[first, 'image_AUROC']:.1f} → {rows.loc[last, 'image_AUROC']:.1f}, "
                         f"normal error {rows.loc[first, 'normal_error']:.2f} → {rows.loc[last, 'normal_error']:.2f}, "
                         f"g {rows.loc[first, 'copy_gain']:.2f} → {rows.loc[last, 'copy_gain']:.2f}")
        lines.append(f"UniAD seed by seed, from step {first} to step {last}: " + "; ".join(parts) + ".")
    kinds = [c for c in final.columns if c.startswith("image_AUROC_")]
    if kinds:
        best = {c.removeprefix("image_AUROC_"): f"{final[c].idxmax()} {100 * final[c].max():.1f}" for c in kinds}
        lines.append("Best model per defect kind at the last step (seed 0, %): "
                     + "; ".join(f"{k}: {v}" for k, v in best.items()) + ".")
    if width is not None and "copy_gain" in width and width["copy_gain"].notna().sum() >= 2:
        w = width.dropna(subset=["copy_gain"])
        rising = bool(np.all(np.diff(w["copy_gain"].to_numpy()) >= 0))
        lines.append(f"Width sweep: g goes from {w['copy_gain'].iloc[0]:.2f} (d = {w.index[0]}) to "
                     f"{w['copy_gain'].iloc[-1]:.2f} (d = {w.index[-1]}), {'rising' if rising else 'not monotone'} "
                     f"with d; the linear reference from {w['linear_gain'].iloc[0]:.2f} to {w['linear_gain'].iloc[-1]:.2f}; "
                     f"image AUROC from {100 * w['image_AUROC'].iloc[0]:.1f} to {100 * w['image_AUROC'].iloc[-1]:.1f}.")
    else:
        lines.append("Width sweep: not enough of it in the results cache to judge.")
    if anatomy is not None and len(anatomy) >= 2:
        steps = [f"{label}: g {r['copy_gain']:.2f} ± {r['copy_gain std']:.2f}, image AUROC {100 * r['image_AUROC']:.1f}"
                 for label, r in anatomy.iterrows()]
        lines.append("Anatomy of UniAD (final, mean ± std over seeds): " + "; ".join(steps) + ".")
    else:
        lines.append("Anatomy of UniAD: not enough of it in the results cache to judge.")
    if donors is not None and len(donors):
        parts = [f"{label}: " + ", ".join(f"{c.removeprefix('g, donor: ')} {v:.2f}" for c, v in r.items() if c.startswith("g"))
                 for label, r in donors.iterrows()]
        lines.append("Copy gain by donor (" + "; ".join(parts) + ").")
    else:
        lines.append("Unified vs separate: not in the results cache.")
    kinds = [k for k in ("textures", "objects") if mask_cost is not None and k in mask_cost.index]
    if kinds and mask_cost.loc[kinds, ["Δ normal error", "Δ image AUROC"]].notna().all().all():
        parts = [f"{k}: normal error {mask_cost.loc[k, 'Δ normal error']:+.3f}, image AUROC "
                 f"{100 * mask_cost.loc[k, 'Δ image AUROC']:+.1f} points" for k in kinds]
        classes = mask_cost[~mask_cost.index.isin(["textures", "objects"])]
        worse = int((classes["Δ normal error"] > 0).sum())
        runs = "; ".join(f"{label} {r['step']} steps, {r['seeds']} seed{'s' * (r['seeds'] > 1)}"
                         for label, r in mask_cost.attrs.get("runs", {}).items())
        copied = ", ".join(f"{mask_cost.loc[k, 'g, no mask']:.2f} → {mask_cost.loc[k, 'g, mask']:.2f} on {k}"
                           for k in kinds if "g, no mask" in mask_cost and not np.isnan(mask_cost.loc[k, "g, no mask"]))
        lines.append("The neighbour mask's cost (with − without, mean per kind"
                     + (f"; {runs}" if runs else "") + "): " + "; ".join(parts)
                     + f". It raises the normal error in {worse} of {len(classes)} classes, by at most "
                     f"{classes['Δ normal error'].max():.3f}" + (f" (copy gain without → with the mask: {copied})" if copied else "") + ".")
    else:
        lines.append("What the neighbour mask costs: not in the results cache.")
    return "\n".join(lines)
