"""Command line: ``python -m adnotes demo | train | eval RUN | results | figures | zoo | copying | data get NAME | data mini``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def pd_options():
    import pandas as pd

    return pd.option_context("display.width", 140, "display.max_columns", 20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adnotes", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="nearest-neighbour baseline and quick UniAD on the offline data")
    demo.add_argument("--dataset", default="mini", choices=("mini", "mini_objects", "mvtec", "visa", "realiad"))
    demo.add_argument("--root", help="dataset folder (default: <ADNOTES_HOME>/data/<dataset>)")
    demo.add_argument("--backbone", default="efficientnet_lite0",
                      help="timm model name; efficientnet_b4 is the paper's (needs --weights hub)")
    demo.add_argument("--weights", default="offline", help="offline | hub | path to a .pth file")
    demo.add_argument("--image-size", type=int, default=224)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--steps", type=int, help="UniAD training steps (default: configs/uniad_quick.yaml's; "
                      "0 skips UniAD)")

    train = commands.add_parser("train", help="train a model on cached features (see configs/)")
    train.add_argument("--config", type=Path, help="YAML with sections model/data/train/eval")
    train.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                       help="overrides, e.g. train.steps=500 data.root=/data/mvtec")
    train.add_argument("--name", help="run folder name under runs/ (default: the config file's name)")
    train.add_argument("--resume", action="store_true", help="continue the run folder from its last checkpoint")
    evaluate = commands.add_parser("eval", help="score the final checkpoints of a run folder")
    evaluate.add_argument("run", type=Path, help="runs/<name> (or just <name>)")

    results = commands.add_parser("results", help="regenerate the results cache (results/) the notebooks read")
    results.add_argument("--only", nargs="*", metavar="NAME", help="these recipes only (default: all)")
    results.add_argument("--full", action="store_true", help="the papers' settings (GPU) instead of quick mode")
    results.add_argument("--list", action="store_true", help="list the recipes and what is cached")
    results.add_argument("--seeds", nargs="+", type=int, metavar="K",
                         help="these seeds of the recipes only (each seed lands in the cache when it finishes)")

    figures = commands.add_parser("figures", help="execute the notebooks, regenerating every figure in figures/")
    figures.add_argument("--full", action="store_true", help="full mode (the papers' settings; GPU)")
    figures.add_argument("--only", nargs="*", metavar="NOTEBOOK", help="notebook name prefixes, e.g. 01 03")
    figures.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")

    zoo = commands.add_parser("zoo", help="every method on the same data: one table with cost and published numbers")
    zoo.add_argument("--only", nargs="*", metavar="METHOD", help="these methods only (default: all)")
    zoo.add_argument("--full", action="store_true", help="full mode (the papers' settings; GPU)")
    zoo.add_argument("--per-class", action="store_true", help="also print the per-class table")

    copy = commands.add_parser("copying", help="the copy gain of the cached shortcut models at their kept steps")
    copy.add_argument("--full", action="store_true", help="the full-mode results (else quick)")

    data = commands.add_parser("data", help="make or download datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    get = data_commands.add_parser("get", help="download, verify (sha256) and extract a dataset")
    get.add_argument("name", choices=("mvtec", "visa", "cifar10"))
    get.add_argument("--root", required=True, type=Path, help="folder to download and extract into")
    get.add_argument("--force", action="store_true", help="extract (and convert) again over an incomplete folder")
    mini = data_commands.add_parser("mini", help="generate the offline adnotes-mini dataset")
    mini.add_argument("--root", type=Path, help="output folder (default: <ADNOTES_HOME>/data/adnotes-mini, "
                      "with --objects adnotes-mini-objects)")
    mini.add_argument("--seed", type=int, default=0)
    mini.add_argument("--size", default="default", help="test images per class, or a preset name")
    mini.add_argument("--objects", action="store_true",
                      help="add the object classes beside the textures (the mini_objects dataset)")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import DemoConfig, run_demo, side_by_side, train_uniad_quick

            cfg = DemoConfig(dataset=args.dataset, root=args.root, backbone=args.backbone, weights=args.weights,
                             image_size=args.image_size, seed=args.seed)
            knn = run_demo(cfg, device=args.device)
            if args.steps != 0:
                uniad = train_uniad_quick(cfg, steps=args.steps, device=args.device)
                print("\nThe training-free baseline beside UniAD in quick mode (values in %):")
                with pd_options():
                    print(side_by_side({"kNN": knn, "UniAD-quick": uniad}).to_string())
        elif args.command == "train":
            from .paths import runs_dir
            from .train import Config, train

            name = args.name or (args.config.stem if args.config else None)
            if not name:
                raise ValueError("give --name (or a --config, whose file name becomes the run name)")
            saved = runs_dir() / name / "config.yaml"  # --resume without --config: the run's own config
            cfg = Config.load(args.config or (saved if args.resume and saved.is_file() else None), args.set)
            print(f"run folder: {train(cfg, name, resume=args.resume)}")
        elif args.command == "eval":
            from .train import evaluate_run

            with pd_options():
                print(evaluate_run(args.run).mul(100).round(1).to_string())
        elif args.command == "results":
            from . import results

            if args.list:
                listed = results.manifest()["recipes"]
                for name, recipe in results.RECIPES.items():
                    made = [f"{k} ({v['made']}" + (f"; seeds {v['seeds']}, missing {v['missing_seeds']}"
                                                   if v.get("missing_seeds") else "") + ")"
                            for k, v in listed.items() if k.split("-full")[0] == name]
                    old = (made and recipe.kind == "run" and results.cached(name) is not None
                           and not results.cached_seeds(name))   # its config is not the recipe's any more
                    print(f"{name:<28} {recipe.what}; cached: {', '.join(made) or 'no'}"
                          + ("; made with another config than the recipe's now: rerun it to replace" if old else ""))
                if problems := results.verify():
                    print("problems:\n  " + "\n  ".join(problems))
            else:
                results.regenerate(args.only, quick=not args.full, seeds=args.seeds)
        elif args.command == "figures":
            from .figures import execute_notebooks

            execute_notebooks(args.only, quick=not args.full, timeout=args.timeout)
        elif args.command == "zoo":
            from .notebook import setup
            from .zoo import published_table, zoo_table

            summary, per_class = zoo_table(setup(not args.full, verbose=False), args.only)
            with pd_options():
                print("\nOurs (values in %; mean over classes; cost of the model alone on cached features):")
                print(summary.round(2).to_string())
                if args.per_class:
                    print("\nPer class:")
                    print(per_class.round(1).to_string(index=False))
                print("\nPublished (other data, backbones and schedules: context, not a comparison):")
                print(published_table(args.only).to_string(index=False))
        elif args.command == "copying":
            from . import shortcut
            from .notebook import setup

            sc = shortcut.load(setup(not args.full, verbose=False))
            columns = ["copy_gain", "copy_leak", "twin_gain", "image_AUROC"]
            print("Copy gain of a 2x2 block from another class's image, leak, twin gain on real defects and image "
                  "AUROC of each shortcut model's first seed, per kept step (notebook 01, adnotes.copying):")
            with pd_options():
                print(shortcut.kept_table(sc)[columns].round(3).to_string())
        elif args.data_command == "get":
            from .data.download import get

            print(f"{args.name} is ready at {get(args.name, args.root, force=args.force)}")
        else:
            from .data.datasets import FOLDERS
            from .data.mini import make_mini
            from .paths import data_dir

            size = int(args.size) if args.size.isdigit() else args.size
            name = "mini_objects" if args.objects else "mini"
            root = make_mini(args.root or data_dir() / FOLDERS[name], seed=args.seed, size=size, objects=args.objects)
            print(f"adnotes-mini{' with its object classes' if args.objects else ''} is ready at {root}")
    except (OSError, ValueError, RuntimeError) as error:  # bad input: the message says what to do
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
