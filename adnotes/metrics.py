"""Evaluation metrics and anomaly-map helpers for multi-class anomaly detection.

Metric names follow anomalib; the set is the one multi-class benchmarks such as ADer report
(ADer's definitions: notebooks/SOURCES.md §3.1), each computed per class and then averaged over classes:

    image_AUROC  image_AP  image_F1max  pixel_AUROC  pixel_AP  pixel_F1max  pixel_AUPRO
    mAD = mean of those seven

Every metric here is an EXACT threshold sweep (one sort, cumulative counts per tie group).
ADer's numbers use coarser conventions in places: pixel AUROC/AP via the histogram-binned ADEval
accumulator, pixel F1-max over 21 thresholds on min-max-normalised maps, and AUPRO over 100
(or 50) thresholds with the FPR axis min-max rescaled. Expect small differences, mostly for
F1-max and AUPRO. Unlike UniAD's evaluator we never flip an AUROC below 0.5 to 1 - AUROC.

Inputs are numpy arrays or torch tensors; labels/masks use 0 = normal, nonzero = anomalous, and
higher scores mean "more anomalous". Metrics return Python floats, fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage

IMAGE_METRICS = ("image_AUROC", "image_AP", "image_F1max")
PIXEL_METRICS = ("pixel_AUROC", "pixel_AP", "pixel_F1max", "pixel_AUPRO")
METRIC_NAMES = (*IMAGE_METRICS, *PIXEL_METRICS, "mAD")


# ----------------------------------------------------------------------------- threshold sweeps
def _numpy(x) -> np.ndarray:
    """numpy view of an array-like or a (possibly CUDA, possibly grad-tracking) torch tensor."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _labels_and_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Flatten and validate a (labels, scores) pair for a binary ranking metric."""
    y, s = _numpy(labels).ravel() != 0, _numpy(scores).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same number of elements, got {y.size} and {s.size}.")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN; check the anomaly maps / model output before evaluating.")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"need both normal (0) and anomalous (nonzero) labels, got {n_pos} anomalous of {y.size}; "
            "evaluate on a test set that contains both."
        )
    return y, s


def _sweep(labels, scores) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cumulative (TP, FP) when thresholding at each distinct score, from high to low.

    Entry k counts the samples with score >= the k-th largest distinct score, so tied samples
    enter together. Returns (tp, fp, n_pos, n_neg).
    """
    y, s = _labels_and_scores(labels, scores)
    order = np.argsort(s)[::-1]  # one sort; descending
    s, y = s[order], y[order]
    group_end = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each tie group
    tp = np.cumsum(y)[group_end]
    fp = group_end + 1 - tp
    return tp, fp, int(tp[-1]), int(fp[-1])


def _auroc(tp, fp, n_pos, n_neg) -> float:
    # trapezoid under the ROC curve from (0, 0); a tie group is a diagonal segment (= 1/2 credit)
    return float(np.trapezoid(np.r_[0, tp] / n_pos, np.r_[0, fp] / n_neg))


def _average_precision(tp, fp, n_pos, n_neg) -> float:
    # step-wise AP = sum_k (R_k - R_{k-1}) P_k, scikit-learn's definition (no interpolation)
    return float(np.sum(np.diff(np.r_[0, tp]) / n_pos * tp / (tp + fp)))


def _f1_max(tp, fp, n_pos, n_neg) -> float:
    return float(np.max(2 * tp / (tp + fp + n_pos)))  # 2PR/(P+R) = 2TP / (2TP + FP + FN)


def auroc(labels, scores) -> float:
    """Area under the ROC curve; equals `sklearn.metrics.roc_auc_score` (ties included)."""
    return _auroc(*_sweep(labels, scores))


def average_precision(labels, scores) -> float:
    """Step-wise average precision; equals `sklearn.metrics.average_precision_score`."""
    return _average_precision(*_sweep(labels, scores))


def f1_max(labels, scores) -> float:
    """Best F1 = 2PR/(P+R) over every distinct threshold (exact; ADer's pixel F1-max uses 21)."""
    return _f1_max(*_sweep(labels, scores))


def _ranking_metrics(labels, scores, prefix: str) -> dict[str, float]:
    """AUROC, AP and F1max from a single sort (the sort dominates on ~10M pixels)."""
    counts = _sweep(labels, scores)
    return {f"{prefix}_AUROC": _auroc(*counts), f"{prefix}_AP": _average_precision(*counts),
            f"{prefix}_F1max": _f1_max(*counts)}


# ----------------------------------------------------------------------------- AUPRO
def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to `fpr_limit`.

    masks: (N, H, W) ground truth (nonzero = anomalous); maps: (N, H, W) anomaly scores.
    Convention of anomalib >= 2.3 (MVTec AD, Bergmann et al. 2021), computed exactly:
    - GT regions = 8-connected components of each image's mask (regions never span images);
    - one global sort of all pixels, one curve point per distinct score;
    - FPR = false positives / all normal pixels of all images pooled;
    - PRO = mean over all regions of the fraction of that region above the threshold;
    - curve from (0, 0), cut at FPR = fpr_limit (linear interpolation), trapezoid area / fpr_limit.
    ADer/CFlow instead use 100 evenly spaced thresholds and min-max rescale the kept FPRs.
    """
    masks, maps = _numpy(masks) != 0, _numpy(maps)
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(f"masks and maps must both be (N, H, W) of the same shape, got {masks.shape} and "
                         f"{maps.shape}; upsample the maps to the mask resolution first (see `upsample`).")
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    if np.isnan(maps).any():
        raise ValueError("maps contain NaN; check the anomaly maps before evaluating.")

    # 8-connectivity inside each image, none across images: a 3x3x3 structure with only the middle slice
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    regions, n_regions = ndimage.label(masks, structure=structure)  # (N, H, W) ids 1..n_regions
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError(f"AUPRO needs anomalous regions and normal pixels, got {n_regions} regions and "
                         f"{n_normal} normal pixels; evaluate a class whose test set has defective images.")

    # each pixel of region r adds 1 / (|r| * n_regions) to PRO; each normal pixel adds 1 / n_normal to FPR
    sizes = np.bincount(regions.ravel())
    region_weight = np.r_[0.0, 1.0 / (sizes[1:] * n_regions)]
    order = np.argsort(maps.ravel())[::-1]
    s, r = maps.ravel()[order], regions.ravel()[order]
    group_end = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    fpr = np.r_[0.0, np.cumsum(r == 0)[group_end] / n_normal]
    pro = np.r_[0.0, np.cumsum(region_weight[r])[group_end]]

    # keep points with FPR <= limit and add the interpolated point at the limit
    k = np.searchsorted(fpr, fpr_limit, side="right")  # fpr[k - 1] <= limit < fpr[k]
    if k < fpr.size:
        t = (fpr_limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        fpr = np.r_[fpr[:k], fpr_limit]
        pro = np.r_[pro[:k], pro[k - 1] + t * (pro[k] - pro[k - 1])]
    return float(np.trapezoid(pro, fpr) / fpr_limit)


_aupro = aupro  # compute_metrics' `aupro` flag shadows the function name


# ----------------------------------------------------------------------------- metric sets
def compute_metrics(image_labels, image_scores, masks=None, maps=None,
                    pixel: bool = True, aupro: bool = True) -> dict[str, float]:
    """All metrics for one class: image_labels/scores (N,), masks/maps (N, H, W).

    Pixel metrics are skipped when `masks` is None or `pixel` is False; `mAD` is added only
    when all seven metrics are present.
    """
    out = _ranking_metrics(image_labels, image_scores, "image")
    if pixel and masks is not None:
        if maps is None:
            raise ValueError("masks were given but maps is None; pass the (N, H, W) anomaly maps too.")
        out |= _ranking_metrics(masks, maps, "pixel")
        if aupro:
            out["pixel_AUPRO"] = _aupro(masks, maps)
    if all(name in out for name in METRIC_NAMES[:-1]):
        out["mAD"] = float(np.mean([out[name] for name in METRIC_NAMES[:-1]]))
    return out


def metrics_table(results: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Rows = classes plus a final "mean" row (NaN-skipping), columns = metric names."""
    table = pd.DataFrame.from_dict(results, orient="index")
    table = table[[c for c in METRIC_NAMES if c in table] + [c for c in table if c not in METRIC_NAMES]]
    table.loc["mean"] = table.mean(numeric_only=True)
    return table


# ----------------------------------------------------------------------------- anomaly maps (torch)
def reconstruction_error(features: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), (B, C, H, W) -> (B, H, W): L2 norm over channels, UniAD's ||rec - feat||_2."""
    if features.shape != reconstructed.shape or features.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(features.shape)} "
                         f"and {tuple(reconstructed.shape)}.")
    return torch.linalg.vector_norm(reconstructed - features, dim=1)


def upsample(maps: torch.Tensor, size: int | Sequence[int], align_corners: bool = True) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) bilinear; align_corners=True as UniAD's `UpsamplingBilinear2d`."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=align_corners)[:, 0]


def _reflect_index(n: int, radius: int, device) -> torch.Tensor:
    """Indices of a length-n axis padded by `radius` with scipy's "reflect" (d c b a | a b c d | d c b a)."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_smooth(maps: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0) -> torch.Tensor:
    """(B, H, W) separable Gaussian blur, like `scipy.ndimage.gaussian_filter(m, sigma)` per map.

    Kernel radius int(truncate * sigma + 0.5), scipy's "reflect" border. Omni-AD/ADer use sigma=4;
    UniAD applies no smoothing. sigma=0 returns the maps unchanged.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}.")
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return maps
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]  # (B, 1, H, W)
    for dim in (2, 3):  # blur along H, then along W
        out = out.index_select(dim, _reflect_index(out.shape[dim], radius, maps.device))
        shape = [1, 1, 1, 1]
        shape[dim] = kernel.numel()
        out = F.conv2d(out, kernel.view(shape))
    return out[:, 0]


def image_score(maps: torch.Tensor, pool: int | None = 16,
                reduce: Literal["max", "mean"] = "max") -> torch.Tensor:
    """(B, H, W) -> (B,) image-level anomaly score.

    "max": max of the map after a pool x pool average pooling with stride 1 (UniAD's MVTec rule:
    the paper, §3.3, says "max of the average-pooled map"; the 16 x 16 kernel on 224 x 224 maps is
    the official code's, notebooks/SOURCES.md §2.6); pool=1 or None is the plain max (MambaAD /
    Omni-AD / ADer default).
    "mean": mean of the map (the official code's CIFAR-10 rule, SOURCES.md §2.8; not in the paper);
    `pool` is ignored.
    """
    if reduce == "mean":
        return maps.mean(dim=(1, 2))
    if reduce != "max":
        raise ValueError(f'reduce must be "max" or "mean", got {reduce!r}.')
    if pool and pool > 1:
        if pool > min(maps.shape[-2:]):
            raise ValueError(f"pool={pool} is larger than the {tuple(maps.shape[-2:])} map; use a smaller pool.")
        # The k×k box filter is separable: a k×1 then a 1×k mean, 2k instead of k² adds per pixel.
        maps = F.avg_pool2d(F.avg_pool2d(maps[:, None], (pool, 1), stride=1), (1, pool), stride=1)[:, 0]
    return maps.amax(dim=(1, 2))
