"""adnotes: a thin support package for notebooks on multi-class unsupervised anomaly detection.

Modules: ``backbone`` (frozen multi-stage features), ``features`` (the on-disk feature cache),
``data`` (datasets and downloads), ``metrics`` (the one evaluation module), ``plots`` (the one
plotting style), ``demo`` (the training-free baseline behind ``python -m adnotes demo``), ``models``,
``train`` (the one trainer), ``results`` (the cache the notebooks read), ``copying`` (the copy gain),
``figures`` (notebooks executed, figures and HTML copies regenerated), and one module of tables and
figures per notebook: ``tour`` (00), ``shortcut`` (01), ``unified`` (02), ``uniad_steps`` (03),
``ablations`` (04), ``semantic`` (05), ``omni`` (06), ``adtr_haloae`` (07), ``zoo`` (08), ``explorer``
(09), ``fullscale`` (10).
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``adnotes.setup`` without importing torch on ``import adnotes``."""
    if name == "setup":
        from .notebook import setup

        return setup
    raise AttributeError(f"module 'adnotes' has no attribute {name!r}")
