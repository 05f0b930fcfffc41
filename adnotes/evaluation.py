"""The one evaluation path: anomaly maps on the feature grid -> per-class metric table.

Every model (and the training-free demo baseline) produces a map per test image on its feature
grid (14×14 at 224² for UniAD). Here the maps are upsampled once to the image size (bilinear,
align_corners=True as UniAD's official code), optionally Gaussian-smoothed (Omni-AD uses σ=4),
reduced to an image score (UniAD: max of the 16×16 average-pooled map; the kernel is the official
code's, the paper gives none), and scored per class with :mod:`adnotes.metrics`; the table's last
row is the mean over classes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .features import FeatureSet
from .metrics import auroc, compute_metrics, gaussian_smooth, image_score, metrics_table, upsample

__all__ = ["full_size_maps", "evaluate_maps", "kind_column"]


def full_size_maps(maps: torch.Tensor, image_size: int, sigma: float | None = None,
                   batch: int = 64) -> torch.Tensor:
    """(N, h, w) maps on the feature grid -> (N, S, S) float32 maps at the image size."""
    out = []
    for chunk in maps.float().split(batch):
        chunk = upsample(chunk, (image_size, image_size))
        out.append(gaussian_smooth(chunk, sigma) if sigma else chunk)
    return torch.cat(out)


def evaluate_maps(maps: torch.Tensor, test: FeatureSet, *, pool: int | None = 16,
                  reduce: str = "max", sigma: float | None = None, pixel: bool = True,
                  aupro: bool = True, progress: bool = True) -> pd.DataFrame:
    """Per-class metrics of anomaly maps ``maps`` (N, h, w) for the test split ``test``.

    ``pool``/``reduce`` choose the image score (UniAD: max of the ``pool``×``pool`` average-pooled
    map for MVTec, the mean of the map for CIFAR-10). Pixel metrics need ``test.masks``.
    Returns a DataFrame with one row per class and a final ``mean`` row. When the test split knows
    its defect types, ``image_AUROC_<kind>`` columns add each kind's image AUROC (the class's normal
    images against its images of that kind; NaN where a class has none of it).
    """
    if len(maps) != len(test):
        raise ValueError(f"{len(maps)} maps for {len(test)} test images")
    pixel = pixel and test.masks is not None
    size = test.masks.shape[-1] if test.masks is not None else 224
    results = {}
    classes = sorted(set(test.classes))
    for cls in tqdm(classes, desc="evaluate", disable=not progress):
        idx = torch.tensor([i for i, c in enumerate(test.classes) if c == cls])
        full = full_size_maps(maps[idx], size, sigma)                    # (n, S, S)
        scores = image_score(full, pool=pool, reduce=reduce)             # (n,)
        labels = test.labels[idx].numpy()
        results[cls] = compute_metrics(
            labels, scores.numpy(),
            masks=test.masks[idx].numpy() if pixel else None,
            maps=full.numpy() if pixel else None, pixel=pixel, aupro=aupro and pixel)
        if test.defects is not None:  # per defect kind: the normal images of the class against that kind's
            kinds = np.array([test.defects[i] for i in idx.tolist()])
            for kind in sorted(set(kinds[labels == 1])):
                keep = (labels == 0) | (kinds == kind)
                results[cls][kind_column(kind)] = auroc(labels[keep], scores.numpy()[keep])
    return metrics_table(results)


def kind_column(kind: str) -> str:
    """The column of the image AUROC of one defect kind, e.g. ``image_AUROC_scratch``."""
    return f"image_AUROC_{kind}"
