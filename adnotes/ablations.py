"""Notebook 04's tables and figures: UniAD's ablations (Tab. 5a-f, A2, A3, A4) beside ours.

The runs are the ``ablation_*`` recipes of :mod:`adnotes.results` (one config switch of the quick
UniAD per table row, ``results.ABLATIONS``); here are the paper's numbers, how our rows are matched to
the paper's, the verdict that compares the two changes, and the one figure.

    grid = ablations.grid(S)                   # one row per (table, row): recipe, overrides, cached?
    ours = ablations.load_runs(grid, S)        # recipe -> run_summary(run): final AUROCs, floor, best
    table = ablations.compare(ours)            # ours beside the matched paper row, with the verdict
    fig, data = ablations.plot_table(table, ablations.describe(S))
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from . import plots, results
from .train import final_metrics

__all__ = ["TITLES", "PAPER", "MATCH", "PAPER_BASE", "NOISE", "PAPER_EFFECT", "DEFAULT", "ORDER", "describe",
           "grid", "unmatched", "run_summary", "load_runs", "direction", "verdict", "compare", "verdict_lines",
           "seed_noise", "plot_table"]

TITLES = {"5a_query": "Tab. 5a · query embedding", "5b_layers": "Tab. 5b · encoder + decoder layers",
          "5c_neighbor": "Tab. 5c · NMA neighbour size", "5d_nma": "Tab. 5d · where NMA is used",
          "5e_jitter_scale": "Tab. 5e · jitter scale α", "5f_jitter_prob": "Tab. 5f · jitter probability p",
          "A3_design": "Tab. A3 · decoder (LQD) design", "A4_loss": "Tab. A4 · loss"}
DEFAULT = {table: next(label for label, overrides in rows.items() if not overrides)   # table -> its default row
           for table, rows in results.ABLATIONS.items()}
ORDER = {table: sorted(rows) if table == "A3_design" else list(rows) for table, rows in results.ABLATIONS.items()}

# UniAD (NeurIPS 2022) on MVTec-AD, unified: (table, row, Det. = image AUROC, Loc. = pixel AUROC), in %.
# Tab. 5a-f (§4.6) and App. C Tab. A2 (the full Tab. 5a), A3 (decoder designs, first row only), A4 (losses).
PAPER = pd.DataFrame([
    ("Tab. 5a", "w/o query", 69.5, 79.4), ("Tab. 5a", "1 query", 87.6, 92.8),
    ("Tab. 5a", "layer-wise query", 95.0, 96.5), ("Tab. 5a", "1 query + NMA", 96.1, 96.3),
    ("Tab. 5a", "1 query + FJ", 95.0, 95.8), ("Tab. 5a", "layer-wise + NMA + FJ", 96.5, 96.8),
    ("Tab. A2", "1 query + NMA + FJ", 96.2, 96.6), ("Tab. A2", "layer-wise + NMA", 95.8, 96.5),
    ("Tab. A2", "layer-wise + FJ", 94.9, 96.2),
    ("Tab. 5b", "vanilla 4+0", 69.8, 79.2), ("Tab. 5b", "UniAD 4+0", 94.9, 96.0),
    ("Tab. 5b", "vanilla 0+4", 80.5, 88.3), ("Tab. 5b", "UniAD 0+4", 96.1, 96.3),
    ("Tab. 5b", "vanilla 2+2", 84.7, 90.6), ("Tab. 5b", "UniAD 2+2", 95.1, 96.0),
    ("Tab. 5b", "vanilla 4+4", 87.6, 92.8), ("Tab. 5b", "UniAD 4+4", 96.5, 96.8),
    ("Tab. 5b", "vanilla 6+6", 86.1, 91.9), ("Tab. 5b", "UniAD 6+6", 96.5, 96.7),
    ("Tab. 5c", "1×1", 94.6, 96.3), ("Tab. 5c", "5×5", 96.4, 96.8), ("Tab. 5c", "7×7", 96.5, 96.8),
    ("Tab. 5c", "9×9", 96.3, 96.7),
    ("Tab. 5d", "Enc", 95.8, 96.3), ("Tab. 5d", "Enc+Dec1", 96.4, 96.8), ("Tab. 5d", "Enc+Dec2", 96.5, 96.7),
    ("Tab. 5d", "All", 96.5, 96.8),
    ("Tab. 5e", "α = 5", 96.1, 96.7), ("Tab. 5e", "α = 10", 96.4, 96.7), ("Tab. 5e", "α = 20", 96.5, 96.8),
    ("Tab. 5e", "α = 30", 95.7, 96.6),
    ("Tab. 5f", "p = 0.25", 95.6, 96.5), ("Tab. 5f", "p = 0.50", 95.8, 96.7), ("Tab. 5f", "p = 0.75", 96.3, 96.7),
    ("Tab. 5f", "p = 1", 96.5, 96.8),
    ("Tab. A3", "vanilla (1 query)", 87.6, 92.8), ("Tab. A3", "(a)", 95.0, 96.5), ("Tab. A3", "(b)", 94.4, 96.3),
    ("Tab. A3", "(c)", 78.4, 87.0), ("Tab. A3", "(d)", 77.9, 87.0), ("Tab. A3", "(e)", 78.2, 89.9),
    ("Tab. A3", "(f)", 89.8, 94.0),
    ("Tab. A4", "MSE", 96.5, 96.8), ("Tab. A4", "Norm MSE", 96.4, 96.9), ("Tab. A4", "Cosine", 96.6, 96.8),
], columns=["table", "paper row", "Det.", "Loc."])

# (our table, our row) -> (paper table, paper row, "same" | "nearest", what differs)
MATCH = {
    ("5a_query", "none"): ("Tab. 5a", "w/o query", "nearest", "paper: no NMA, no FJ"),
    ("5a_query", "first"): ("Tab. A2", "1 query + NMA + FJ", "same", ""),
    ("5a_query", "every"): ("Tab. 5a", "layer-wise + NMA + FJ", "same", "UniAD"),
    ("5b_layers", "1+1"): ("Tab. 5b", "UniAD 2+2", "nearest", "half the default depth"),
    ("5b_layers", "2+2"): ("Tab. 5b", "UniAD 4+4", "nearest", "the default depth"),
    ("5b_layers", "3+3"): ("Tab. 5b", "UniAD 6+6", "nearest", "1.5× the default depth"),
    ("5c_neighbor", "1x1"): ("Tab. 5c", "1×1", "same", ""),
    ("5c_neighbor", "5x5"): ("Tab. 5c", "5×5", "same", ""),
    ("5c_neighbor", "7x7"): ("Tab. 5c", "7×7", "same", ""),
    ("5d_nma", "none"): ("Tab. A2", "layer-wise + FJ", "same", ""),
    ("5d_nma", "encoder"): ("Tab. 5d", "Enc", "same", ""),
    ("5d_nma", "all"): ("Tab. 5d", "All", "same", ""),
    ("5e_jitter_scale", "0"): ("Tab. A2", "layer-wise + NMA", "same", "FJ off"),
    ("5e_jitter_scale", "10"): ("Tab. 5e", "α = 10", "same", ""),
    ("5e_jitter_scale", "20"): ("Tab. 5e", "α = 20", "same", ""),
    ("5e_jitter_scale", "40"): ("Tab. 5e", "α = 30", "nearest", "paper's largest α is 30"),
    ("5f_jitter_prob", "0.5"): ("Tab. 5f", "p = 0.50", "same", ""),
    ("5f_jitter_prob", "1"): ("Tab. 5f", "p = 1", "same", ""),
    ("A3_design", "a"): ("Tab. 5a", "layer-wise + NMA + FJ", "same", "(a) with NMA + FJ is UniAD"),
    **{("A3_design", d): ("Tab. A3", f"({d})", "nearest", "paper: no NMA, no FJ") for d in "bcdef"},
    ("A4_loss", "mse"): ("Tab. A4", "MSE", "same", ""),
    ("A4_loss", "nmse"): ("Tab. A4", "Norm MSE", "same", ""),
    ("A4_loss", "cos"): ("Tab. A4", "Cosine", "same", ""),
}
# The paper row each paper Δ is taken against: its row with the same other switches. Rows run without NMA
# and FJ -> layer-wise query without NMA and FJ (= design (a) of Tab. A3); all others -> UniAD.
UNIAD, NO_NMA_FJ = ("Tab. 5a", "layer-wise + NMA + FJ"), ("Tab. 5a", "layer-wise query")
PAPER_BASE = {("Tab. 5a", "w/o query"): NO_NMA_FJ, **{("Tab. A3", f"({d})"): NO_NMA_FJ for d in "bcdef"}}
NOISE, PAPER_EFFECT = 1.0, 0.5   # points of AUROC: smaller changes count as "no change" (ours, the paper's)


def describe(session) -> str:
    """What our rows are, in one line, for the tables' and the figure's titles."""
    return "UniAD quick, 400 steps, seed 0, adnotes-mini" if session.quick else "UniAD at the paper's settings, MVTec-AD"


def _recipes() -> list[str]:
    """The distinct runs behind the tables, in table order (the default row once)."""
    return list(dict.fromkeys(results.ablation_recipe(t, label) for t, rows in results.ABLATIONS.items()
                              for label in rows))


def grid(session) -> pd.DataFrame:
    """One row per (table, row): its recipe, its config overrides and whether it is cached in the session's mode."""
    rows = pd.DataFrame([{"table": table, "row": label, "recipe": results.ablation_recipe(table, label),
                          "overrides": "; ".join(overrides) or "(the default row)"}
                         for table, rows in results.ABLATIONS.items() for label, overrides in rows.items()])
    is_cached = {name: results.cached(name, session.quick) is not None for name in rows.recipe.unique()}
    return rows.assign(cached=rows.recipe.map(is_cached))


def unmatched() -> list[str]:
    """Our rows the paper did not run ("table/row")."""
    return [f"{t}/{label}" for t, rows in results.ABLATIONS.items() for label in rows if (t, label) not in MATCH]


def run_summary(run: str | Path) -> dict:
    """Final mean-over-classes AUROCs of a run (%), its untrained floor (image AUROC at step 0) and its best
    evaluation (image AUROC, step), read from ``final_metrics`` and ``curves_summary.csv``."""
    final = final_metrics(run).loc["mean"]
    curves = pd.read_csv(Path(run) / "curves_summary.csv")
    image = curves[(curves.cls == "mean") & (curves.metric == "image_AUROC")].set_index("step")["mean"] * 100
    return {"image": final["image_AUROC"] * 100, "pixel": final.get("pixel_AUROC", np.nan) * 100,
            "floor": image.get(0, np.nan),
            "best": image.max(), "best_step": int(image.idxmax()), "steps": int(image.index.max())}


def load_runs(grid: pd.DataFrame, session) -> dict[str, dict]:
    """recipe -> :func:`run_summary` of every run of ``grid``. A run that is not cached is skipped, with the
    command that makes it: always in quick mode, in full mode unless there is a GPU to train it on."""
    ours = {}
    for name, cached in grid.drop_duplicates("recipe").set_index("recipe").cached.items():
        if not cached:
            if session.quick:
                print(f"not cached: python -m adnotes results --only {name}")
                continue
            if session.device.type != "cuda":
                print(f"not cached: python -m adnotes results --only {name} --full  (paper size: run it on a GPU)")
                continue
        ours[name] = run_summary(results.load_or_train(name, session))
    return ours


def direction(delta: float, threshold: float) -> str:
    """"+", "−", "≈0" (``|delta| < threshold``) or "" (no number)."""
    return "" if math.isnan(delta) else "≈0" if abs(delta) < threshold else "+" if delta > 0 else "−"


def verdict(ours_delta: float, paper_delta: float, is_default: bool, match: str) -> str:
    """Our change against the paper's: ours counts from ``NOISE`` points, the paper's from ``PAPER_EFFECT``."""
    if is_default:
        return "default row"
    if math.isnan(ours_delta):
        return "not run"
    if math.isnan(paper_delta):
        return "no paper row"
    a, b = direction(ours_delta, NOISE), direction(paper_delta, PAPER_EFFECT)
    if a == "≈0":
        return "both ≈0" if b == "≈0" else "ours within noise"
    said = "same direction" if a == b else "paper ≈0" if b == "≈0" else "opposite"
    return f"{said} (nearest row)" if match == "nearest" else said


def compare(ours: dict[str, dict]) -> pd.DataFrame:
    """One row per table row: our final AUROCs, our Δ against our default row, floor and best evaluation, the
    matched paper row, its numbers and its Δ against the paper's row with the same other switches, the verdict."""
    paper = PAPER.set_index(["table", "paper row"])
    rows = []
    for table, labels in ORDER.items():
        base = ours.get(results.ablation_recipe(table, DEFAULT[table]), {})
        for label in labels:
            r = ours.get(results.ablation_recipe(table, label), {})
            ptable, prow, kind, why = MATCH.get((table, label), ("", "", "", "not in the paper"))
            p = paper.loc[(ptable, prow)] if ptable else pd.Series({"Det.": np.nan, "Loc.": np.nan})
            pbase = PAPER_BASE.get((ptable, prow), UNIAD)   # the paper's row with the same other switches
            rows.append({"table": table, "row": label, "default": label == DEFAULT[table],
                         "image": r.get("image", np.nan), "pixel": r.get("pixel", np.nan),
                         "Δimage": r.get("image", np.nan) - base.get("image", np.nan),
                         "floor": r.get("floor", np.nan), "best": r.get("best", np.nan), "best_step": r.get("best_step"),
                         "paper row": f"{ptable} {prow}".strip(), "match": kind, "note": why,
                         "paper Det.": p["Det."], "paper Loc.": p["Loc."], "paper base": " ".join(pbase) if ptable else "",
                         "paper ΔDet.": p["Det."] - paper.loc[pbase, "Det."]})
    table = pd.DataFrame(rows)
    table["verdict"] = [verdict(*a) for a in zip(table["Δimage"], table["paper ΔDet."], table["default"], table["match"])]
    return table


def verdict_lines(table: pd.DataFrame) -> str:
    """The switched rows that ran, grouped by verdict (ours and the paper's Δ), or how to make them."""
    ran = table[~table.default & (table.verdict != "not run")]
    if ran.empty:
        return ("\nNo ablation row is cached yet, so there is nothing to compare: only the paper's numbers are shown. "
                "`python -m adnotes results --only " + " ".join(_recipes()) + "` makes them (about 20 runs).")
    return "\n".join(f"\n{what}: " + ", ".join(f"{t}/{r} (ours {o:+.1f}, paper {q:+.1f})" for t, r, o, q in
                                               zip(p.table, p.row, p["Δimage"], p["paper ΔDet."]))
                     for what, p in ((w, ran[ran.verdict == w]) for w in sorted(ran.verdict.unique())))


def seed_noise(name: str = "anatomy_jitter") -> str:
    """The seed-to-seed spread of quick UniAD's image AUROC near step 400, from a cached 3-seed run of the same
    quick UniAD (``anatomy_jitter``: 600 steps, evaluated every 200, so step 400 itself is evaluated)."""
    folder = results.cached(name, True)
    if folder is None:
        return f"{name} is not cached (python -m adnotes results --only {name}): no seed-noise estimate"
    summary = pd.read_csv(folder / "curves_summary.csv")
    image = summary[(summary.cls == "mean") & (summary.metric == "image_AUROC")].set_index("step")
    step = min(image.index[image.index > 0], key=lambda s: abs(s - 400))
    if image["std"].isna().all():
        return f"{name} has a single seed here: no seed-noise estimate"
    seeds = len(list(folder.glob("seed*/curves.csv")))
    return (f"quick UniAD ({name}), {seeds} seeds: image AUROC at step {step} = {image.loc[step, 'mean'] * 100:.1f} "
            f"± {image.loc[step, 'std'] * 100:.1f} (std over seeds, points); "
            f"at the end (step {image.index.max()}): ± {image['std'].iloc[-1] * 100:.1f}")


def plot_table(table: pd.DataFrame, what: str) -> tuple[plt.Figure, dict]:
    """One panel per ablation table: image AUROC of every row, ours (circles), the paper's same-setting row
    (dark diamonds) and nearest row (light diamonds); our untrained floor dotted; "not run" where ours is missing.
    ``table``: :func:`compare`'s; ``what``: :func:`describe`'s. Returns the figure and its data (rows, floor)."""
    ours = f"ours · {what}"
    sources = {ours: (plots.MODEL_COLORS["uniad"], "o"), "paper · same setting": ("0.2", "D"),
               "paper · nearest row": ("0.65", "D")}
    long = pd.concat([
        table.assign(source=ours, value=table["image"]),
        table.assign(source=np.where(table.match == "same", "paper · same setting", "paper · nearest row"),
                     value=table["paper Det."]),
    ])[["table", "row", "source", "value"]].dropna(subset=["value"])
    defaults = table.loc[table.default, "floor"]   # every default row is the one run ablation_default
    floor = float(defaults.iloc[0]) if len(defaults) else np.nan

    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5), layout="constrained")
    for ax, name in zip(axes.flat, results.ABLATIONS):
        labels = ORDER[name]
        data = long[long.table == name]
        if len(data):
            sns.pointplot(data=data, x="row", y="value", order=labels, hue="source", hue_order=list(sources),
                          palette={s: c for s, (c, _) in sources.items()}, markers=[m for _, m in sources.values()],
                          linestyle="none", dodge=0.4, errorbar=None, legend=False, ax=ax)
        values = [*data.value, *([floor] if not math.isnan(floor) else [])]
        low = min(values, default=80.0) - 3
        ax.set_ylim(low, 100.5)
        if not math.isnan(floor):
            ax.axhline(floor, color=plots.MODEL_COLORS["untrained"], ls=":", lw=1.5)
        for x, label in enumerate(labels):
            if table[(table.table == name) & (table.row == label)]["image"].isna().all():
                ax.text(x, low + 0.5, "not run", rotation=90, ha="center", va="bottom", fontsize=8,
                        color=plots.MODEL_COLORS["uniad"], alpha=0.8)
        ax.set_xticks(range(len(labels)), [f"{label}*" if label == DEFAULT[name] else label for label in labels])
        ax.set_title(TITLES[name], fontsize=11)
        ax.set_xlabel("")
        ax.set_ylabel("image AUROC (%)")
    handles = [Line2D([], [], color=c, marker=m, ls="none", label=s) for s, (c, m) in sources.items()]
    handles.append(Line2D([], [], color=plots.MODEL_COLORS["untrained"], ls=":", label="untrained floor (ours)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)
    fig.suptitle(f"UniAD ablations, image AUROC. Ours: {what} (one seed: differences < 1 point are noise); "
                 "paper: MVTec-AD, EfficientNet-B4, 1000 epochs. * = default row", fontsize=12)
    data = {"rows": table.astype(object).where(table.notna(), None).to_dict(orient="records"),
            "untrained_floor": None if math.isnan(floor) else floor}
    return fig, data
