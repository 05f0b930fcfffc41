"""adnotes: a thin support package for notebooks on multi-class unsupervised anomaly detection.

Modules: ``backbone`` (frozen multi-stage features), ``features`` (the on-disk feature cache),
``data`` (datasets and downloads), ``metrics`` (the one evaluation module), ``plots`` (the one
plotting style), ``demo`` (the training-free baseline behind ``python -m adnotes demo``).
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``adnotes.setup`` without importing torch on ``import adnotes``."""
    if name == "setup":
        from .notebook import setup

        return setup
    raise AttributeError(f"module 'adnotes' has no attribute {name!r}")
