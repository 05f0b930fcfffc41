"""Quality: UniAD and the three baselines of its App. B.1 (and Omni-AD) trained in quick mode on
the offline data, with their final and best image / pixel AUROC, measured in one run.

    python benchmarks/quality.py                          # quick configs as shipped, seed 0
    python benchmarks/quality.py --steps 3000 --seeds 0 1 2 --runs runs/quality

The curves start at step 0 (the untrained model, whose score is mostly the feature norm), so the
table also shows that floor. "Shortcut" reads best-then-drop: a model whose best image AUROC
comes early and whose final one is lower by more than the seeds' spread has learnt to copy.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from adnotes.train import Config, load_features, train_or_load

CONFIGS = Path(__file__).parents[1] / "configs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["mlp", "cnn", "transformer", "uniad", "omniad"])
    parser.add_argument("--steps", type=int, help="training steps (default: each quick config's)")
    parser.add_argument("--every", type=int, help="evaluate every N steps (default: each config's)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--runs", type=Path, help="run folders (default: a temporary folder); a finished run "
                        "of the same config there is read, not retrained")
    args = parser.parse_args()

    runs = args.runs or Path(tempfile.mkdtemp(prefix="adnotes-quality-"))
    rows, features = [], {}
    for name in args.models:
        overrides = [f"train.seeds={args.seeds}"]
        overrides += [f"train.steps={args.steps}"] if args.steps else []
        overrides += [f"eval.every={args.every}"] if args.every else []
        cfg = Config.load(CONFIGS / f"{name}_quick.yaml", overrides)
        key = (cfg.data.multiscale, tuple(cfg.data.stages))
        features[key] = features.get(key) or load_features(cfg)
        run = train_or_load(cfg, f"quality_{name}", runs=runs, features=features[key])
        curves = pd.read_csv(run / "curves_summary.csv").query("cls == 'mean'")
        wide = curves.pivot(index="step", columns="metric", values="mean")
        spread = curves.query("metric == 'image_AUROC'").set_index("step")["std"]
        best = wide.image_AUROC.idxmax()
        rows.append({"model": name, "steps": wide.index.max(), "untrained": wide.image_AUROC.iloc[0],
                     "best": wide.image_AUROC.max(), "best_step": best, "final": wide.image_AUROC.iloc[-1],
                     "seed_std": spread.iloc[-1], "pixel_best": wide.pixel_AUROC.max(),
                     "pixel_final": wide.pixel_AUROC.iloc[-1], "final_loss": wide.loss.iloc[-1]})
    table = pd.DataFrame(rows).set_index("model")
    print(f"\nQuick mode on adnotes-mini, mean over classes (seeds {args.seeds}); image / pixel AUROC in %; "
          f"runs in {runs}")
    pct = ["untrained", "best", "final", "seed_std", "pixel_best", "pixel_final"]
    with pd.option_context("display.width", 160):
        print(table.assign(**{c: table[c] * 100 for c in pct}).round({**{c: 1 for c in pct}, "final_loss": 4})
              .to_string())


if __name__ == "__main__":
    main()
