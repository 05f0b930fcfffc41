"""The results cache: runs a lab should not wait for, kept small and versioned in ``results/``.

    run = adnotes.results.load_or_train("shortcut_mlp", S)   # "found cached result ... loading", or trains
    python -m adnotes results --list                         # what is cached, how it was made
    python -m adnotes results                                # regenerate everything (hours on a CPU)
    python -m adnotes results --only shortcut_mlp --full     # one recipe, the papers' settings (GPU)

Each *recipe* names a config and its overrides for quick and for full mode. Regenerating a
recipe trains it by the one trainer (:func:`adnotes.train.train_or_load`, into ``runs/``) and
copies the slim part into ``results/<name>[-full]/``: config, environment, curves, final
metrics and the model weights (no optimizer state). ``results/MANIFEST.json`` lists every file
with its sha256 and, per recipe, the command that made it; :func:`verify` checks them, and a
cached result whose files do not match is not used.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .paths import configs_dir

__all__ = ["RECIPES", "Recipe", "results_dir", "load_or_train", "cached", "regenerate", "verify", "manifest"]


@dataclass(frozen=True)
class Recipe:
    """A cached run: ``configs/<config>_quick.yaml`` (quick) or the full config, plus overrides."""

    config: str                                    # a model name of adnotes.notebook.FULL_CONFIGS
    quick: tuple[str, ...] = ()                    # overrides in quick mode
    full: tuple[str, ...] = ()                     # overrides in full mode
    what: str = ""                                 # one line for --list and the notebooks
    notebooks: tuple[str, ...] = field(default=())  # who reads it


SEEDS = "train.seeds=[0,1,2]"
# The long-schedule curves of UniAD Fig. 2a: 3 seeds, weights kept at every evaluation (early vs late maps).
_SHORTCUT = ("train.steps=3000", "eval.every=250", "train.lr=1.0e-3", SEEDS, "eval.keep_weights=true")
RECIPES: dict[str, Recipe] = {
    **{f"shortcut_{m}": Recipe(m, _SHORTCUT, (SEEDS,), f"{m}: the long curve of Fig. 2a, 3 seeds",
                               ("01_identity_shortcut",))
       for m in ("mlp", "cnn", "transformer", "uniad")},
}


def results_dir() -> Path:
    """``results/`` of the checkout (versioned with the code)."""
    return configs_dir().parent / "results"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest() -> dict:
    path = results_dir() / "MANIFEST.json"
    return json.loads(path.read_text()) if path.is_file() else {"files": {}, "recipes": {}}


def verify(name: str | None = None) -> list[str]:
    """Problems with the cached files (of one cached result, or all): missing, unlisted or changed."""
    root, listed = results_dir(), manifest()["files"]
    prefix = f"{name}/" if name else ""
    problems = []
    for rel, sha in listed.items():
        if rel.startswith(prefix):
            path = root / rel
            if not path.is_file():
                problems.append(f"{rel}: listed in MANIFEST.json but missing")
            elif _sha256(path) != sha:
                problems.append(f"{rel}: sha256 differs from MANIFEST.json")
    folder = root / name if name else root
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and rel != "MANIFEST.json" and rel not in listed:
                problems.append(f"{rel}: not in MANIFEST.json")
    return problems


def _key(name: str, quick: bool) -> str:
    return name if quick else f"{name}-full"


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown result {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def _config(name: str, session):
    recipe = _recipe(name)
    return session.config(recipe.config, list(recipe.quick if session.quick else recipe.full))


def cached(name: str, quick: bool = True) -> Path | None:
    """The cached result's folder when it exists and matches the manifest, else None."""
    _recipe(name)
    folder = results_dir() / _key(name, quick)
    if not (folder / "config.yaml").is_file():
        return None
    if problems := verify(_key(name, quick)):
        print(f"cached result {folder} does not match results/MANIFEST.json ({problems[0]}): not using it")
        return None
    return folder


def load_or_train(name: str, session) -> Path:
    """A run folder for recipe ``name``: the cached result when there is one, else trained now."""
    from .train import train_or_load

    if folder := cached(name, session.quick):
        made = manifest()["recipes"].get(_key(name, session.quick), {})
        print(f"found cached result {folder.relative_to(results_dir().parent)} "
              f"(made {made.get('made', '?')} by `{made.get('command', 'python -m adnotes results')}`): loading")
        return folder
    print(f"no cached result for {name!r} in {session.mode} mode: training it now "
          f"(`python -m adnotes results --only {name}{'' if session.quick else ' --full'}` caches it)")
    return train_or_load(_config(name, session), name)


def _slim_copy(run: Path, dest: Path) -> None:
    """Config, environment, curves, metrics and weights only (optimizer state dropped)."""
    if dest.exists():
        shutil.rmtree(dest)
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run)
        if not path.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "checkpoint.pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            torch.save(state["model"], target.with_name("weights.pt"))
        elif path.suffix in (".yaml", ".json", ".csv") or path.name.startswith("weights_step"):
            shutil.copy2(path, target)


def _write_manifest(recipes: dict) -> None:
    root = results_dir()
    files = {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != "MANIFEST.json"}
    (root / "MANIFEST.json").write_text(json.dumps({"files": files, "recipes": recipes}, indent=1, sort_keys=True))


def regenerate(names: list[str] | None = None, *, quick: bool = True) -> list[Path]:
    """Train (or load from runs/) each recipe and copy it into the cache; rewrites the manifest."""
    from .notebook import setup
    from .train import train_or_load

    session = setup(quick)
    recipes = manifest()["recipes"]
    out = []
    for name in names or list(RECIPES):
        run = train_or_load(_config(name, session), name)
        dest = results_dir() / _key(name, quick)
        _slim_copy(run, dest)
        recipes[_key(name, quick)] = {
            "command": f"python -m adnotes results --only {name}{'' if quick else ' --full'}",
            "made": time.strftime("%Y-%m-%d"), "run": run.name,
            "environment": json.loads((run / "environment.json").read_text())}
        _write_manifest(recipes)
        print(f"cached {dest}")
        out.append(dest)
    return out
