"""Notebook 02's tables and figures: UniAD Fig. 4, one MLP for all classes (unified) vs one per class (separate).

The notebook loads the two cached runs (``fig4_mlp_unified``, ``fig4_mlp_separate``) with
:func:`adnotes.results.load_result`; reading their curves, the key numbers, the per-class table,
the figure and the checks of the paper's claims live here.

    numbers = unified.key_numbers(summaries)         # per setting: loss, AUROC floor / best / final
    fig, data = unified.plot_curves(summaries, numbers, title)
    print(unified.verdict(numbers, "mini", "quick"))
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from . import plots
from .train import final_metrics

__all__ = ["PAPER", "AUROCS", "paper_table", "run_config", "describe", "curve", "key_numbers", "plot_curves",
           "provenance", "formatted", "per_class", "checks", "verdict"]

# The closest numbers the UniAD paper prints for unified vs separate (MVTec-AD, mean AUROC in %); Fig. 4
# itself is a plot without numbers, and none are given for its MLP.
PAPER = [  # (model, task, unified, separate)
    ("transformer baseline, 1 query (Tab. 4)", "detection", 87.6, 94.7),     # UniAD Tab. 4
    ("transformer baseline, 1 query (Tab. 4)", "localisation", 92.8, 95.8),  # UniAD Tab. 4
    ("UniAD (Tab. 1 / Tab. 2)", "detection", 96.5, 96.6),                    # UniAD Tab. 1
    ("UniAD (Tab. 1 / Tab. 2)", "localisation", 96.8, 96.6),                 # UniAD Tab. 2
]
AUROCS = ("image_AUROC", "pixel_AUROC")


def paper_table() -> pd.DataFrame:
    """:data:`PAPER` indexed by (model, task), with the column unified - separate."""
    index = ["model (UniAD paper, MVTec-AD)", "task"]
    table = pd.DataFrame(PAPER, columns=[*index, "unified", "separate"]).set_index(index)
    table["unified - separate"] = table.unified - table.separate
    return table


def run_config(run: str | Path) -> dict:
    """The run's ``config.yaml`` as a plain dict."""
    return yaml.safe_load((Path(run) / "config.yaml").read_text())


def describe(config: dict) -> str:
    """One line: model, preset, data, mode and schedule of a run config (:func:`run_config`)."""
    t = config["train"]
    return (f"{config['model']['name']} {config['model']['preset']} preset on {config['data']['dataset']}, "
            f"mode {t['mode']}, {t['epochs'] or t['steps']} {'epochs' if t['epochs'] else 'steps'}, "
            f"batch {t['batch_size']}, lr {t['lr']}, seeds {t['seeds']}, eval every {config['eval']['every']}")


def curve(summary: pd.DataFrame, metric: str, cls: str = "mean") -> pd.Series:
    """One metric of one class (default: the mean over classes) of a ``curves_summary.csv``, indexed by step."""
    rows = summary[(summary.cls == cls) & (summary.metric == metric)].dropna(subset=["mean"])
    return rows.set_index("step")["mean"].sort_index()


def key_numbers(summaries: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per setting: the loss at the first and last evaluation, and per AUROC its floor (step 0), best,
    step of the best and final value (mean over classes)."""
    rows = {}
    for setting, summary in summaries.items():
        loss = curve(summary, "loss")
        out = {"loss, first eval": loss.iloc[0], "loss, final": loss.iloc[-1]}
        for metric in AUROCS:
            c = curve(summary, metric)
            out |= {f"{metric} floor": c.loc[0], f"{metric} best": c.max(), f"{metric} best step": int(c.idxmax()),
                    f"{metric} final": c.iloc[-1]}
        rows[setting] = out
    return pd.DataFrame(rows).T


def plot_curves(summaries: dict[str, pd.DataFrame], numbers: pd.DataFrame, title: str) -> tuple[plt.Figure, dict]:
    """Fig. 4's layout: loss, image and pixel AUROC against the step, unified solid and separate dashed, the
    untrained floor (the unified run's step 0) dotted. Data: the key numbers and the three mean curves."""
    metrics = ("loss", *AUROCS)
    color = plots.MODEL_COLORS["mlp"]
    fig = plots.training_curves({f"MLP {s}": summary for s, summary in summaries.items()}, metrics=metrics,
                                floor={m: numbers.loc["unified", f"{m} floor"] for m in AUROCS},
                                styles={"MLP unified": {"color": color}, "MLP separate": {"color": color, "ls": "--"}})
    fig.suptitle(title, fontsize=11)
    return fig, {"numbers": numbers.to_dict(orient="index"),
                 "curves": {s: {m: curve(summary, m).to_dict() for m in metrics} for s, summary in summaries.items()}}


def provenance(runs: dict[str, Path], made_in: dict[str, str], home: Path) -> dict:
    """The figure's config: each run folder (relative to ``home`` when under it) and the mode it was made in."""
    return {"runs": {s: str(r.relative_to(home)) if r.is_relative_to(home) else str(r) for s, r in runs.items()},
            "made_in": made_in}


def formatted(numbers: pd.DataFrame) -> pd.DataFrame:
    """:func:`key_numbers` as text, one column per setting: AUROCs in % (one decimal), steps as integers,
    losses with four decimals."""
    def fmt(column, value):
        return f"{int(value)}" if "step" in column else f"{100 * value:.1f}" if "AUROC" in column else f"{value:.4f}"

    return pd.DataFrame({col: [fmt(col, v) for v in numbers[col]] for col in numbers}, index=numbers.index).T


def per_class(runs: dict[str, Path], floor: pd.DataFrame) -> pd.DataFrame:
    """Final AUROC in % per class (mean last) of the unified and separate runs (``final_metrics``), beside the
    untrained floor read from the curves ``floor`` (step 0), and unified - separate; columns (image|pixel, ...)."""
    finals = {s: final_metrics(run) for s, run in runs.items()}
    table = {}
    for metric, short in (("image_AUROC", "image"), ("pixel_AUROC", "pixel")):
        table[(short, "untrained")] = floor[(floor.step == 0) & (floor.metric == metric)].set_index("cls")["mean"]
        table[(short, "unified")] = finals["unified"][metric]
        table[(short, "separate")] = finals["separate"][metric]
        table[(short, "unified - separate")] = finals["unified"][metric] - finals["separate"][metric]
    out = (100 * pd.DataFrame(table)).round(1)
    return out.loc[[c for c in out.index if c != "mean"] + ["mean"]]


def _pts(value: float) -> str:
    return f"{100 * value:.1f}"  # AUROC points


def checks(numbers: pd.DataFrame) -> list[tuple[str, bool, str]]:
    """The three claims of UniAD §3.1 / Fig. 4 on :func:`key_numbers`, as (claim, holds, detail); "keeps
    growing" means final >= best - 1 AUROC point, "falls" means final < best - 1 point."""
    u, s = numbers.loc["unified"], numbers.loc["separate"]

    def best(row, metric):
        return (f"best {_pts(row[f'{metric} best'])} at step {int(row[f'{metric} best step'])}, "
                f"final {_pts(row[f'{metric} final'])}")

    return [
        ("1. unified ends with the smaller training loss", u["loss, final"] < s["loss, final"],
         f"unified {u['loss, final']:.4f} vs separate {s['loss, final']:.4f}"),
        ("2a. unified detects worse (image AUROC)", u["image_AUROC final"] < s["image_AUROC final"],
         f"{_pts(u['image_AUROC final'])} vs {_pts(s['image_AUROC final'])}"),
        ("2b. unified localises worse (pixel AUROC)", u["pixel_AUROC final"] < s["pixel_AUROC final"],
         f"{_pts(u['pixel_AUROC final'])} vs {_pts(s['pixel_AUROC final'])}"),
        ("3a. separate: image AUROC keeps growing (final >= best - 1)",
         s["image_AUROC final"] >= s["image_AUROC best"] - 0.01, best(s, "image_AUROC")),
        ("3b. separate: pixel AUROC keeps growing (final >= best - 1)",
         s["pixel_AUROC final"] >= s["pixel_AUROC best"] - 0.01, best(s, "pixel_AUROC")),
        ("3c. unified: image AUROC peaks, then falls by > 1 point",
         u["image_AUROC final"] < u["image_AUROC best"] - 0.01, best(u, "image_AUROC")),
    ]


def verdict(numbers: pd.DataFrame, dataset: str, mode: str) -> str:
    """The checks one per line (REPRODUCED / NOT reproduced), their count, claims 1 and 2, and the image AUROC
    gained over the untrained floor."""
    found = checks(numbers)
    said = lambda ok: "reproduced" if ok else "NOT reproduced"
    lines = [f"{'REPRODUCED    ' if holds else 'NOT reproduced'}  {claim}: {detail}" for claim, holds, detail in found]
    lines += ["", f"verdict: {sum(holds for _, holds, _ in found)} of {len(found)} checks reproduced on {dataset} "
              f"({mode} mode); claim 2 (unified much worse) is {said(found[1][1] and found[2][1])}, "
              f"claim 1 (unified lower loss) is {said(found[0][1])}."]
    u, s = numbers.loc["unified"], numbers.loc["separate"]
    gain_u, gain_s = (100 * (row["image_AUROC final"] - row["image_AUROC floor"]) for row in (u, s))
    lines += ["", f"floor (untrained): image {_pts(u['image_AUROC floor'])}, pixel {_pts(u['pixel_AUROC floor'])}; "
              f"above the floor at the end: unified image {gain_u:+.1f}, separate image {gain_s:+.1f} points"]
    return "\n".join(lines)
