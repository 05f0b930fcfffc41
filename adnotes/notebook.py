"""The one setup call every notebook starts with.

    import adnotes
    S = adnotes.setup(QUICK)          # QUICK from the notebook's parameter cell (None: read ADNOTES_QUICK)
    cfg = S.config("uniad")           # configs/uniad_quick.yaml in quick mode, configs/uniad_mvtec.yaml in full

Quick mode (the default) fits a 2-core laptop CPU in minutes: shrunk models on the offline
dataset, long curves read from the results cache. Full mode uses the papers' settings and data
and wants a GPU. ``ADNOTES_QUICK=0`` switches every notebook (and ``python -m adnotes figures
--full``) to full mode without editing them.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import plots
from .paths import configs_dir, figures_dir, home, runs_dir

__all__ = ["Session", "setup", "quick_from_env"]

# Full mode: which paper config stands for each quick config's model.
FULL_CONFIGS = {"uniad": "uniad_mvtec", "omniad": "omniad_mvtec", "mlp": "uniad_mvtec", "cnn": "uniad_mvtec",
                "transformer": "uniad_mvtec", "digits": "uniad_cifar10", "adtr": "adtr_mvtec",
                "adtr_plus": "adtr_mvtec", "haloae": "haloae_mvtec"}


def quick_from_env(default: bool = True) -> bool:
    """``ADNOTES_QUICK``: "0", "false", "no" or "full" mean full mode; unset means ``default``."""
    value = os.environ.get("ADNOTES_QUICK")
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "full", "off")


@dataclass(frozen=True)
class Session:
    """What a notebook needs to know about where and how it runs."""

    quick: bool
    device: torch.device
    seed: int
    home: Path
    figures: Path
    runs: Path

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def config(self, model: str, overrides: list[str] = ()):
        """The run config for ``model`` in this mode: ``configs/<model>_quick.yaml`` or the paper's.

        In full mode the baselines (mlp, cnn, transformer) use UniAD's MVTec-AD data and schedule
        with their own model at the paper's size (UniAD App. B.1)."""
        from .train import Config

        if self.quick:
            return Config.load(configs_dir() / f"{model}_quick.yaml", [f"train.device={self.device.type}", *overrides])
        full = FULL_CONFIGS.get(model)
        if full is None:
            raise ValueError(f"no full-mode config for {model!r}; models: {', '.join(sorted(FULL_CONFIGS))}")
        extra = [f"model.name={model}", "model.preset=paper"] if model in ("mlp", "cnn", "transformer") else []
        return Config.load(configs_dir() / f"{full}.yaml", [*extra, f"train.device={self.device.type}", *overrides])


def setup(quick: bool | None = None, *, seed: int = 0, device: str = "auto", verbose: bool = True) -> Session:
    """Fix the seeds, pick the device, apply the plotting style and say what mode this is.

    ``quick``: True/False, or None to read ``ADNOTES_QUICK`` (default quick)."""
    quick = quick_from_env() if quick is None else bool(quick)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    plots.set_style()
    session = Session(quick=quick, device=dev, seed=seed, home=home(), figures=figures_dir(), runs=runs_dir())
    if verbose:
        hint = "set ADNOTES_QUICK=0 for full mode" if quick else "full mode: the papers' settings, a GPU helps"
        print(f"adnotes · {session.mode} mode ({hint}) · device {dev} · seed {seed} · "
              f"{torch.get_num_threads()} CPU threads · home {session.home}")
        if not quick and dev.type == "cpu":
            print("warning: full mode on a CPU trains for hours; cached results are used where they exist")
    return session
