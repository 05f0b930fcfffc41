"""Benchmark: exact vectorised `adnotes.metrics.aupro` against a classic threshold-loop AUPRO.

    python benchmarks/metrics.py

Data: 100 anomaly maps of 256 x 256 (fixed seed); 80 images carry 1-4 random elliptical blobs as
ground truth, 20 are normal; maps = blurred mask + uniform noise (float32).
The slow reference is the CFlow / ADer-style routine: a Python loop over evenly spaced thresholds
and, inside it, over every connected GT region. It uses 200 thresholds (not every distinct score,
which would take hours) but the same curve cut as ours (interpolated at FPR 0.3, area / 0.3), so
the two values differ only by the threshold grid.
"""

import time

import numpy as np
from scipy import ndimage
from skimage.measure import label
from tqdm.auto import tqdm

from adnotes.metrics import aupro

N_IMAGES, SIZE, N_THRESHOLDS, FPR_LIMIT = 100, 256, 200, 0.3


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((N_IMAGES, SIZE, SIZE), dtype=bool)  # (N, H, W)
    for mask in masks[N_IMAGES // 5:]:
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.integers(0, SIZE, size=2)
            ry, rx = rng.uniform(3, 30, size=2)
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    maps = ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, 6, 6)) + 0.5 * rng.random(masks.shape)
    return masks, maps.astype(np.float32)


def aupro_threshold_loop(masks: np.ndarray, maps: np.ndarray, n_thresholds: int = N_THRESHOLDS) -> float:
    """Classic routine: evenly spaced thresholds, per-region overlap in a Python loop."""
    region_pixels = []  # flat indices of every 8-connected GT region
    for i, mask in enumerate(masks):
        regions = label(mask, connectivity=2)
        for r in range(1, regions.max() + 1):
            region_pixels.append(i * mask.size + np.flatnonzero(regions == r))
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in tqdm(np.linspace(maps.max(), maps.min(), n_thresholds), desc="threshold loop", leave=False):
        predicted = maps >= t
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean([predicted.flat[idx].mean() for idx in region_pixels]))
    fprs, pros = np.array(fprs), np.array(pros)
    k = np.searchsorted(fprs, FPR_LIMIT, side="right")  # first point past the limit
    cut = pros[k - 1] + (pros[k] - pros[k - 1]) * (FPR_LIMIT - fprs[k - 1]) / (fprs[k] - fprs[k - 1])
    return float(np.trapezoid(np.r_[pros[:k], cut], np.r_[fprs[:k], FPR_LIMIT]) / FPR_LIMIT)


def best_of(repeats: int, fn, *args) -> tuple[float, float]:
    """(fastest wall time in s, result) over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    masks, maps = make_data()
    n_regions = sum(label(mask, connectivity=2).max() for mask in masks)
    print(f"data: {N_IMAGES} maps of {SIZE}x{SIZE} = {maps.size:,} pixels, {np.unique(maps).size:,} distinct scores, "
          f"{masks.any(axis=(1, 2)).sum()} defective images, {n_regions} GT regions")

    t_exact, exact = best_of(3, aupro, masks, maps, FPR_LIMIT)
    t_loop, loop = best_of(3, aupro_threshold_loop, masks, maps)

    print(f"adnotes.metrics.aupro (exact sweep, every distinct score): {t_exact:7.2f} s   AUPRO = {exact:.6f}")
    print(f"threshold loop ({N_THRESHOLDS} evenly spaced thresholds):       {t_loop:7.2f} s   AUPRO = {loop:.6f}")
    print("(best of 3 runs each)")
    print(f"speed ratio loop / exact: {t_loop / t_exact:.1f}x   |difference| = {abs(exact - loop):.2e}")
    per_threshold = t_loop / N_THRESHOLDS
    print(f"the loop at every distinct score would take ~{per_threshold * np.unique(maps).size / 3600:.0f} h "
          f"({per_threshold * 1e3:.1f} ms per threshold)")
    image_score_benchmark()


def image_score_benchmark() -> None:
    """UniAD's image score, max of the 16×16 stride-1 average-pooled 224² map: one 2-D pooling vs
    the separable k×1 then 1×k pooling adnotes.metrics.image_score uses (same numbers)."""
    import torch
    import torch.nn.functional as F

    from adnotes.metrics import image_score

    maps = torch.rand(360, 224, 224, generator=torch.Generator().manual_seed(0))
    direct = lambda: F.avg_pool2d(maps[:, None], 16, stride=1)[:, 0].amax(dim=(1, 2))  # noqa: E731
    t_direct, a = best_of(3, direct)
    t_sep, b = best_of(3, lambda: image_score(maps, pool=16))
    print(f"image score of 360 maps 224², 16×16 pooling: 2-D {t_direct:.2f} s, separable {t_sep:.2f} s, "
          f"ratio {t_direct / t_sep:.1f}x, max |difference| {float((a - b).abs().max()):.1e}")


if __name__ == "__main__":
    main()
