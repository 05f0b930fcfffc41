"""The results cache: runs a lab should not wait for, kept small and versioned in ``results/``.

    run = adnotes.results.load_or_train("shortcut_mlp", S)   # "found cached result ... loading", or trains
    python -m adnotes results --list                         # what is cached, how it was made
    python -m adnotes results                                # regenerate everything (hours on a CPU)
    python -m adnotes results --only shortcut_mlp --full     # one recipe, the papers' settings (GPU)

Each *recipe* names a config and its overrides for quick and for full mode. Regenerating a
recipe trains it by the one trainer (:func:`adnotes.train.train_or_load`, into ``runs/``) and
copies the slim part into ``results/<name>[-full]/``: config, environment, curves and final
metrics of every seed, and the first seed's weights in float16 (no optimizer state). ``results/MANIFEST.json`` lists every file
with its sha256 and, per recipe, the command that made it; :func:`verify` checks them, and a
cached result whose files do not match is not used.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import atomic, locked
from .paths import configs_dir

__all__ = ["RECIPES", "ABLATIONS", "ablation_recipe", "Recipe", "results_dir", "load_or_train", "load_result", "cached", "cached_seeds", "regenerate", "verify", "manifest"]


@dataclass(frozen=True)
class Recipe:
    """A cached run: ``configs/<config>_quick.yaml`` (quick) or the full config, plus overrides."""

    config: str                                    # a model name of adnotes.notebook.FULL_CONFIGS
    quick: tuple[str, ...] = ()                    # overrides in quick mode
    full: tuple[str, ...] = ()                     # overrides in full mode
    what: str = ""                                 # one line for --list and the notebooks
    notebooks: tuple[str, ...] = field(default=())  # who reads it
    kind: str = "run"                              # "run": the trainer; "vis_decoder": UniAD's picture decoder
    weights: bool = True                           # cache the first seed's weights (False: tables and curves only)


SEEDS = "train.seeds=[0,1,2]"
# UniAD Fig. 2a's long curves, 3 seeds, long enough that AUROC and the copy gain have flattened or turned:
# on one CPU thread a 12 000-step MLP peaked at step 2 000 and slid after it, a 6 000-step transformer peaked at
# 1 000, and quick UniAD sat on a plateau for 4 000 steps before one seed climbed (issue notes). The paper's
# schedule is 1 000 epochs at batch 64, ~57 000 steps on MVTec-AD (§4.2). The first seed's weights are kept
# at steps 150, 600 and 2 000 (early vs late). CPU time per seed, one thread per process, measured: MLP ~25-32
# min, CNN ~17-35, transformer ~100, UniAD ~75 (seed 0 of shortcut_uniad left its plateau at step ~4 500).
_SHORTCUT = ("train.steps=8000", "eval.every=400", SEEDS, "eval.keep_steps=[150,600,2000]")
_SHORTCUT_ATTENTION = ("train.steps=10000", "eval.every=500", SEEDS, "eval.keep_steps=[150,600,2000]")
# The mechanism in isolation (notebook 01): minutes per run, tables and curves only. The MLP runs 1 000 steps
# (~3 min on one thread), the attention models 600 (~5 min): the copy gains of the shortcut runs have
# separated by then (step 600: MLP 0.81, CNN 0.47, transformer 0.21, UniAD 0.00).
_MECHANISM = ("train.steps=1000", "eval.every=250", SEEDS)
_MECHANISM_ATTENTION = ("train.steps=600", "eval.every=200", SEEDS)
WIDTHS = (32, 64, 128, 192, 384)  # the MLP's hidden width d against C_in = 192 (Lite0 stages 1-4)
# UniAD's designs added one at a time to the vanilla transformer (quick width): each row adds one switch.
ANATOMY = {"transformer": ("transformer", ()),
           "nma": ("transformer", ("model.args={neighbor_mask: [true, true, true]}",)),
           "queries": ("uniad", ("model.args={jitter_prob: 0.0}",)),
           "jitter": ("uniad", ())}
MINI_OBJECTS = "data.dataset=mini_objects"  # adnotes-mini with its object classes beside the textures
WINDOWS = (1, 3, 5, 9)  # UniAD's neighbour window k×k (7×7 is the anatomy's "jitter" row)
# What the neighbour mask costs: the mechanism runs stop while the normal error still falls fast (600 steps on
# mini_objects: 0.76 -> 0.73 over the last 200 steps, image AUROC +1.7 points) and before the vanilla transformer
# copies (g 0.02), so these run 3 000 steps, evaluated every 500 (measured: 26-27 min per seed on one thread).
_MASK_COST = ("train.steps=3000", "eval.every=500", SEEDS)
_ONE_SEED = ("train.steps=600", "eval.every=60", "train.seeds=[0]")
_ABLATION = ("train.steps=400", "eval.every=100", "train.seeds=[0]")

# UniAD's ablations (Tab. 5a-f, A3, A4) as config switches of the quick UniAD; the default of
# each table (query every, 2+2 layers here, 7×7, NMA everywhere, α 20, p 1, design a, MSE) is one row.
ABLATIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "5a_query": {"none": ("model.args={query: none, decoder_design: vanilla}",),
                 "first": ("model.args={query: first, decoder_design: vanilla}",), "every": ()},
    "5b_layers": {"1+1": ("model.args={num_encoder_layers: 1, num_decoder_layers: 1}",), "2+2": (),
                  "3+3": ("model.args={num_encoder_layers: 3, num_decoder_layers: 3}",)},
    "5c_neighbor": {f"{k}x{k}": (f"model.args={{neighbor_size: {k}}}",) for k in (1, 3, 5)} | {"7x7": ()},
    "5d_nma": {"none": ("model.args={neighbor_mask: [false, false, false]}",),
               "encoder": ("model.args={neighbor_mask: [true, false, false]}",),
               "decoder": ("model.args={neighbor_mask: [false, true, true]}",), "all": ()},
    "5e_jitter_scale": {"0": ("model.args={jitter_prob: 0.0}",), "10": ("model.args={jitter_scale: 10.0}",),
                        "20": (), "40": ("model.args={jitter_scale: 40.0}",)},
    "5f_jitter_prob": {"0.5": ("model.args={jitter_prob: 0.5}",), "1": ()},
    "A3_design": {d: (f"model.args={{decoder_design: {d}}}",) for d in "bcdef"} | {"a": ()},
    "A4_loss": {"mse": (), "nmse": ("model.args={loss: nmse}",), "cos": ("model.args={loss: cos}",)},
}
_DEFAULT_ROW = "ablation_default"

RECIPES: dict[str, Recipe] = {
    **{f"shortcut_{m}": Recipe(m, _SHORTCUT if m in ("mlp", "cnn") else _SHORTCUT_ATTENTION, (SEEDS,),
                               f"{m}: the long curve of Fig. 2a, 3 seeds", ("01_identity_shortcut", "09_explorer"))
       for m in ("mlp", "cnn", "transformer", "uniad")},
    **{f"width_mlp_{d}": Recipe("mlp", (*_MECHANISM, f"model.args={{hidden_dim: {d}}}"),
                                (SEEDS, f"model.args={{hidden_dim: {d}}}"),
                                f"MLP of hidden width {d}: copy gain against width", ("01_identity_shortcut",),
                                weights=False) for d in WIDTHS},
    **{f"anatomy_{row}": Recipe(model, (*_MECHANISM_ATTENTION, *overrides), (SEEDS, *overrides),
                                f"UniAD's designs one at a time: {row}", ("01_identity_shortcut",), weights=False)
       for row, (model, overrides) in ANATOMY.items()},
    # The official code starts every layer from one deep-copied layer (adnotes.models.uniad, clone_init):
    # UniAD with that start, beside the anatomy's "jitter" row (the same UniAD, independent draws).
    "anatomy_clone_init": Recipe("uniad", (*_MECHANISM_ATTENTION, "model.args={clone_init: true}"),
                                 (SEEDS, "model.args={clone_init: true}"),
                                 "UniAD started from cloned layers, as the official code", ("01_identity_shortcut",),
                                 weights=False),
    **{f"anatomy_window_{k}": Recipe("uniad", (*_MECHANISM_ATTENTION, f"model.args={{neighbor_size: {k}}}"),
                                     (SEEDS, f"model.args={{neighbor_size: {k}}}"),
                                     f"UniAD with a {k}x{k} neighbour mask: copy gain against the window",
                                     ("01_identity_shortcut",), weights=False) for k in WINDOWS},
    # What the neighbour mask costs, on textures and on aligned objects (shortcut.mask_cost_table): the anatomy's
    # "transformer" and "nma" rows on adnotes-mini with its object classes (MVTec-AD is two-thirds objects).
    **{f"maskcost_{row}": Recipe(ANATOMY[row][0], (*_MASK_COST, *ANATOMY[row][1], MINI_OBJECTS),
                                 (SEEDS, *ANATOMY[row][1], MINI_OBJECTS),
                                 f"the anatomy's {row} row on textures and objects: what the neighbour mask costs",
                                 ("01_identity_shortcut",), weights=False)
       for row in ("transformer", "nma")},
    "fig4_mlp_unified": Recipe("mlp", _ONE_SEED, (), "MLP, one model for all classes (Fig. 4)",
                               ("02_unified_vs_separate",)),
    "fig4_mlp_separate": Recipe("mlp", (*_ONE_SEED, "train.mode=separate"), ("train.mode=separate",),
                                "MLP, one model per class (Fig. 4)", ("02_unified_vs_separate",)),
    "omniad_quick": Recipe("omniad", ("train.seeds=[0]",), (), "Omni-AD, quick preset", ("06_omniad",)),
    "semantic_digits": Recipe("digits", ("train.steps=500", "eval.every=100", "train.seeds=[0]"), (),
                              "UniAD, many-vs-many on digits (Tab. 3)",
                              ("05_semantic_ad",)),
    "adtr_quick": Recipe("adtr", ("train.seeds=[0]",), (), "ADTR, normal images only (feature MSE)",
                         ("07_adtr_haloae", "08_method_zoo")),
    # ADTR+ continues the cached ADTR with confetti noise and the pixel push-pull loss (+300 epochs: SOURCES.md §4.5)
    "adtr_plus_quick": Recipe("adtr_plus", (), ("data.synthetic=confetti", "model.args={loss: pushpull_pixel}",
                                                "train.epochs=300", "train.init=results/adtr_quick-full"),
                              "ADTR+, continues adtr_quick with confetti anomalies (push-pull, Eq. 6-7)",
                              ("07_adtr_haloae", "08_method_zoo"), weights=False),
    "haloae_quick": Recipe("haloae", (), (), "HaloAE, one model per class", ("07_adtr_haloae", "08_method_zoo")),
    # UniAD App. B.3's picture decoder for the quick features: train images + adnotes-mini's own defect types
    # (the paper's decoder sees normal and defective images), images at 112² to keep it a CPU job.
    "vis_decoder": Recipe("uniad", ("data.keep_images=112", "data.synthetic=mini_defects", "train.steps=1500",
                                    "train.batch_size=8", "train.seeds=[0]"),
                          ("data.keep_images=224", "data.synthetic=mini_defects", "train.batch_size=32",
                           "train.mode=separate"),
                          "UniAD's visualisation decoder (App. B.3), for Fig. 2b as pictures",
                          ("01_identity_shortcut",), kind="vis_decoder"),
    # Notebook 04 reads the ablations' tables and curves only: their weights stay in runs/.
    _DEFAULT_ROW: Recipe("uniad", _ABLATION, (), "UniAD quick, the default row of every ablation table",
                         ("04_ablations",), weights=False),
    **{f"ablation_{table}_{label}": Recipe("uniad", (*_ABLATION, *overrides), overrides,
                                           f"UniAD quick, Tab. {table.split('_')[0]}: {label}", ("04_ablations",),
                                           weights=False)
       for table, rows in ABLATIONS.items() for label, overrides in rows.items() if overrides},
}


def ablation_recipe(table: str, label: str) -> str:
    """The recipe name of one row of an ablation table (the default row is shared by all tables)."""
    if table not in ABLATIONS or label not in ABLATIONS[table]:
        raise ValueError(f"unknown ablation {table}/{label}; tables: {', '.join(ABLATIONS)}")
    return f"ablation_{table}_{label}" if ABLATIONS[table][label] else _DEFAULT_ROW


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
            hidden = any(part.startswith(".") for part in path.relative_to(root).parts)  # .lock, a copy in progress
            if path.is_file() and rel != "MANIFEST.json" and not hidden and rel not in listed:
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


def _train(name: str, session) -> Path:
    """Train (or load from runs/) the recipe ``name`` in the session's mode."""
    from .models.vis_decoder import train_or_load_vis_decoder
    from .train import train_or_load

    trainer = train_or_load_vis_decoder if _recipe(name).kind == "vis_decoder" else train_or_load
    return trainer(_config(name, session), name)


def load_or_train(name: str, session) -> Path:
    """A run folder for recipe ``name``: the cached result when there is one, else trained now."""

    if folder := cached(name, session.quick):
        made = manifest()["recipes"].get(_key(name, session.quick), {})
        print(f"found cached result {folder.relative_to(results_dir().parent)} "
              f"(made {made.get('made', '?')} by `{made.get('command', 'python -m adnotes results')}`): loading")
        return folder
    print(f"no cached result for {name!r} in {session.mode} mode: training it now "
          f"(`python -m adnotes results --only {name}{'' if session.quick else ' --full'}` caches it)")
    return _train(name, session)


def load_result(name: str, session):
    """``(run folder, session)`` for recipe ``name``, as :func:`load_or_train`; in full mode, when the
    paper's data or backbone weights are missing here, the quick cached result instead, said plainly, with
    the quick session it belongs to (a notebook carries on with that session: ``run, S = load_result(...)``)."""
    from .notebook import setup

    try:
        return load_or_train(name, session), session
    except (FileNotFoundError, RuntimeError) as error:  # no MVTec-AD / no hub weights on this machine
        if session.quick:
            raise
        print(f"full mode is not possible here ({str(error).splitlines()[0]})\n"
              "-> falling back to the QUICK cached result: the numbers below are not the paper's setting")
        quick = setup(True, seed=session.seed, device=session.device.type, verbose=False)
        return load_or_train(name, quick), quick


def _slim_copy(run: Path, target: Path, weights: bool = True) -> None:
    """Into the new folder ``target``: config, environment, curves and metrics of every seed; the first
    seed's weights in float16 (no optimizer state; none with ``weights=False``). Other seeds' weights stay
    in runs/: the cache holds what the notebooks read."""
    import yaml

    first = f"seed{yaml.safe_load((run / 'config.yaml').read_text())['train']['seeds'][0]}"
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run)
        if not path.is_file():
            continue
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        first_seed = rel.parts[0] == first and weights
        if path.name == "weights.pt" and not rel.parts[0].startswith("seed") and weights:  # picture decoders
            _save_half(torch.load(path, map_location="cpu", weights_only=True), out)
        elif path.name == "checkpoint.pt" and first_seed:  # float16: half the size, same maps to ~1e-3
            _save_half(torch.load(path, map_location="cpu", weights_only=True)["model"], out.with_name("weights.pt"))
        elif path.name.startswith("weights_step") and first_seed:
            _save_half(torch.load(path, map_location="cpu", weights_only=True), out)
        elif path.suffix in (".yaml", ".json", ".csv"):
            shutil.copy2(path, out)


def _save_half(state: dict, path: Path) -> None:
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)


def _swap_in(build, dest: Path) -> None:
    """``build(folder)`` writes a new result aside, which then replaces ``dest``: a killed copy never
    leaves a half result."""
    new, old = (dest.with_name(f".{dest.name}.{what}{os.getpid()}") for what in ("new", "old"))
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    build(new)
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _without_seeds(cfg) -> dict:
    d = json.loads(json.dumps(cfg.to_dict()))
    d["train"].pop("seeds")
    return d


def cached_seeds(name: str, quick: bool = True) -> list[int]:
    """The seeds of recipe ``name`` already in the cache and made with its current config (else [])."""
    from .notebook import setup
    from .train import Config

    folder = results_dir() / _key(name, quick)
    if not (folder / "config.yaml").is_file() or verify(_key(name, quick)):
        return []
    saved = Config.load(folder / "config.yaml")
    if _without_seeds(saved) != _without_seeds(_config(name, setup(quick, verbose=False))):
        return []
    return [s for s in saved.train.seeds if (folder / f"seed{s}").is_dir()]


def _merge_seed(run: Path, dest: Path, cfg, seed: int, weights: bool) -> list[int]:
    """Put the one-seed run ``run`` into the cached result ``dest`` beside the seeds it already holds
    (when they were made with the same config; otherwise it starts afresh). The config lists the seeds
    held, in the recipe's order; only the first of them keeps weights. Returns the seeds held."""
    import yaml

    from .train import Config, summarise

    same = (dest / "config.yaml").is_file() and _without_seeds(Config.load(dest / "config.yaml")) == _without_seeds(cfg)
    held = [s for s in Config.load(dest / "config.yaml").train.seeds if (dest / f"seed{s}").is_dir()] if same else []
    seeds = [s for s in cfg.train.seeds if s in {*held, seed}]

    def build(new: Path) -> None:
        _slim_copy(run, new, weights)
        for s in held:
            if s != seed:
                shutil.copytree(dest / f"seed{s}", new / f"seed{s}")
        merged = cfg.to_dict()
        merged["train"]["seeds"] = seeds
        (new / "config.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
        for s in seeds[1:]:  # the cache keeps the first seed's weights only
            for path in (new / f"seed{s}").glob("weights*.pt"):
                path.unlink()
        summarise(new).to_csv(new / "curves_summary.csv", index=False)

    _swap_in(build, dest)
    return seeds


def _write_manifest(key: str, entry: dict) -> None:
    """Record how ``key`` was made and the sha256 of its files only: the other results' entries are kept
    as they were, so a file of theirs that changed without being regenerated stays flagged by verify()."""
    root, old = results_dir(), manifest()
    recipes = old["recipes"] | {key: entry}
    files = {rel: sha for rel, sha in old["files"].items() if not rel.startswith(f"{key}/")}
    files |= {p.relative_to(root).as_posix(): _sha256(p) for p in sorted((root / key).rglob("*"))
              if p.is_file() and not p.name.startswith(".")}
    with atomic(root / "MANIFEST.json") as tmp:
        tmp.write_text(json.dumps({"files": files, "recipes": recipes}, indent=1, sort_keys=True))


def regenerate(names: list[str] | None = None, *, quick: bool = True, seeds: list[int] | None = None) -> list[Path]:
    """Train (or load from runs/) each recipe and copy it into the cache; rewrites the manifest.

    A recipe of several seeds trains them one run per seed, and each seed lands in the cache as soon as it
    has finished: a long recipe can grow across sessions (``seeds``: only these; seeds already cached with
    the same config are skipped)."""
    from .notebook import setup
    from .train import Config, train_or_load

    session = setup(quick)
    out = []
    for name in names or list(RECIPES):
        recipe, cfg, key = _recipe(name), _config(name, session), _key(name, quick)
        dest = results_dir() / key
        if recipe.kind != "run":
            run = _train(name, session)
            with locked(results_dir() / ".lock"):  # several `results` processes may share the cache
                _swap_in(lambda new: _slim_copy(run, new, recipe.weights), dest)
                _write_manifest(key, _entry(name, quick, [run]))
            print(f"cached {dest}")
            out.append(dest)
            continue
        if unknown := sorted(set(seeds or []) - set(cfg.train.seeds)):
            raise ValueError(f"{name}: seeds {unknown} are not in the recipe's seeds {cfg.train.seeds}")
        done = cached_seeds(name, quick)
        for seed in [s for s in cfg.train.seeds if s in (seeds or cfg.train.seeds)]:
            if seed in done:
                print(f"{name} seed {seed}: already cached")
                continue
            one = Config.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "seeds": [seed]}})
            run = train_or_load(one, name)
            with locked(results_dir() / ".lock"):
                done = _merge_seed(run, dest, cfg, seed, recipe.weights)
                _write_manifest(key, _entry(name, quick, [run], done, cfg.train.seeds))
            print(f"cached {dest} (seeds {done} of {cfg.train.seeds})")
        out.append(dest)
    return out


def _entry(name: str, quick: bool, runs: list[Path], seeds: list[int] | None = None,
           wanted: list[int] | None = None) -> dict:
    """The manifest's record of how a result was made (and, for a recipe still growing, what is missing)."""
    entry = {"command": f"python -m adnotes results --only {name}{'' if quick else ' --full'}",
             "made": time.strftime("%Y-%m-%d"), "run": runs[-1].name,
             "environment": json.loads((runs[-1] / "environment.json").read_text())}
    if seeds is not None:
        entry["seeds"] = seeds
        if missing := [s for s in wanted if s not in seeds]:
            entry["missing_seeds"] = missing
    return entry
