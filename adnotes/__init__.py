"""adnotes: a thin support package for notebooks on multi-class unsupervised anomaly detection.

Modules: ``backbone`` (frozen multi-stage features), ``features`` (the on-disk feature cache),
``data`` (datasets and downloads), ``metrics`` (the one evaluation module), ``plots`` (the one
plotting style), ``demo`` (the training-free baseline behind ``python -m adnotes demo``).
"""
__version__ = "0.1.0"
