"""Where adnotes keeps data, feature caches, runs and figures.

Everything lives under one home folder:

* ``$ADNOTES_HOME`` when set;
* else the repository root when adnotes runs from a checkout (the folder holding
  ``pyproject.toml`` next to the package), so data and figures sit beside the notebooks;
* else ``~/.cache/adnotes``.

Below it: ``data/`` (datasets), ``cache/`` (backbone features), ``runs/`` (training runs) and
``figures/``. ``data/``, ``cache/`` and ``runs/`` are git-ignored; ``figures/`` of the checkout is
versioned, so ``$ADNOTES_FIGURES`` (when set) takes the figures elsewhere: the tests set it to a
temporary folder, and notebook kernels inherit it.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["home", "data_dir", "cache_dir", "runs_dir", "figures_dir", "configs_dir"]


def home() -> Path:
    if env := os.environ.get("ADNOTES_HOME"):
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "adnotes").is_dir():
        return checkout
    return Path.home() / ".cache" / "adnotes"


def data_dir() -> Path:
    return home() / "data"


def cache_dir() -> Path:
    return home() / "cache"


def runs_dir() -> Path:
    return home() / "runs"


def figures_dir() -> Path:
    if env := os.environ.get("ADNOTES_FIGURES"):
        return Path(env).expanduser().resolve()
    return home() / "figures"


def configs_dir() -> Path:
    """The shipped YAML configs (``configs/`` of the checkout; adnotes is installed with ``pip install -e``)."""
    folder = Path(__file__).resolve().parents[1] / "configs"
    if not folder.is_dir():
        raise FileNotFoundError(f"no configs folder at {folder}: install adnotes from its repository with "
                                "'pip install -e .' so that configs/ sits beside the package")
    return folder
