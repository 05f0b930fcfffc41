"""Tests for adnotes.metrics against scikit-learn, scipy, and brute-force definitions written here."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label as skimage_label
from sklearn.metrics import average_precision_score, roc_auc_score

from adnotes import metrics as M


def random_problem(seed: int, n: int = 2000, pos_rate: float = 0.3, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < pos_rate
    scores = rng.normal(size=n) + 0.8 * labels
    if decimals is not None:  # heavy ties
        scores = np.round(scores, decimals)
    return labels, scores


CASES = [  # (seed, n, positive rate, rounding)
    (0, 2000, 0.3, None), (1, 2000, 0.3, 1), (2, 5000, 0.01, None), (3, 5000, 0.01, 0), (4, 50, 0.9, 1),
]


# ----------------------------------------------------------------------------- AUROC / AP / F1max
@pytest.mark.parametrize("seed, n, rate, decimals", CASES)
def test_auroc_and_ap_match_sklearn(seed, n, rate, decimals):
    labels, scores = random_problem(seed, n, rate, decimals)
    assert M.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert M.average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_all_tied_scores_give_half_auroc():
    assert M.auroc([0, 1, 0, 1, 1], [0.5] * 5) == pytest.approx(0.5)


def test_accepts_torch_tensors():
    labels, scores = random_problem(5)
    expected = roc_auc_score(labels, scores)
    assert M.auroc(torch.from_numpy(labels), torch.from_numpy(scores)) == pytest.approx(expected)


def f1_max_slow(labels, scores):
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        fp = np.sum(predicted & ~labels)
        fn = np.sum(~predicted & labels)
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


@pytest.mark.parametrize("seed, n, rate, decimals", CASES)
def test_f1_max_matches_brute_force(seed, n, rate, decimals):
    labels, scores = random_problem(seed, n, rate, decimals)
    assert M.f1_max(labels, scores) == pytest.approx(f1_max_slow(labels, scores), abs=1e-12)


@pytest.mark.parametrize("fn", [M.auroc, M.average_precision, M.f1_max])
def test_one_class_raises(fn):
    with pytest.raises(ValueError, match="both normal"):
        fn(np.zeros(10), np.arange(10.0))
    with pytest.raises(ValueError, match="NaN"):
        fn([0, 1], [0.1, np.nan])


# ----------------------------------------------------------------------------- AUPRO
def blob_problem(seed: int, n: int = 6, size: int = 32, decimals: int | None = None):
    """Masks with several random blobs per image (some images normal) and noisy maps correlated with them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(1, n):  # image 0 stays normal
        for _ in range(rng.integers(1, 5)):
            cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.uniform(1, 5)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    maps = ndimage.gaussian_filter(masks.astype(float), sigma=(0, 1.5, 1.5)) + 0.3 * rng.random(masks.shape)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return masks, maps


def aupro_slow(masks, maps, fpr_limit=0.3):
    """Straight from the definition: loop over every distinct threshold."""
    regions = [skimage_label(m, connectivity=2) for m in masks]  # 8-connectivity, per image
    region_masks = [(i, regions[i] == r) for i in range(len(masks)) for r in range(1, regions[i].max() + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fprs.append(np.sum(predicted & normal) / np.sum(normal))
        pros.append(np.mean([predicted[i][region].mean() for i, region in region_masks]))
    fprs, pros = np.array(fprs), np.array(pros)
    inside = fprs <= fpr_limit
    first_out = np.argmax(~inside)  # first point past the limit
    f0, f1, p0, p1 = fprs[first_out - 1], fprs[first_out], pros[first_out - 1], pros[first_out]
    curve_f = np.r_[fprs[inside], fpr_limit]
    curve_p = np.r_[pros[inside], p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)]
    return np.trapezoid(curve_p, curve_f) / fpr_limit


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, 2), (2, 1)])
def test_aupro_matches_brute_force(seed, decimals):
    masks, maps = blob_problem(seed, decimals=decimals)
    assert skimage_label(masks[1:], connectivity=2).max() >= 5  # several regions in the problem
    for limit in (0.3, 0.05):
        assert M.aupro(masks, maps, limit) == pytest.approx(aupro_slow(masks, maps, limit), abs=1e-6)


def test_aupro_perfect_and_inverted_maps():
    masks, _ = blob_problem(3)
    assert M.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert M.aupro(masks, 1.0 - masks) == pytest.approx(0.0, abs=1e-9)
    # a constant map is one tie group: the curve is the diagonal, cut (interpolated) at 0.3 -> 0.15
    assert M.aupro(masks, np.zeros(masks.shape)) == pytest.approx(0.15)
    assert M.aupro(torch.from_numpy(masks), torch.from_numpy(masks.astype(np.float32))) == pytest.approx(1.0)


def test_aupro_uses_8_connectivity():
    # pixels (0,0), (0,1) and (1,2): (1,2) only touches (0,1) diagonally, so they form ONE region of 3 pixels.
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 0, 0] = mask[0, 0, 1] = mask[0, 1, 2] = True
    maps = np.full(mask.shape, 0.5) + 0.01 * np.arange(36).reshape(1, 6, 6) / 36  # normal pixels in (0.5, 0.51)
    maps[0, 0, :2], maps[0, 1, 2] = 1.0, 0.0  # two pixels above every normal pixel, one below
    # PRO jumps to 2/3 at FPR 0 and stays there until FPR 1 -> AUPRO = 2/3 (4-connectivity would give 1/2)
    assert M.aupro(mask, maps) == pytest.approx(2 / 3)


def test_aupro_regions_do_not_span_images():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True  # region A: 1 pixel, detected
    masks[1, 0, :3] = True  # region B: 3 pixels at the same place in the next image, missed
    maps = np.full(masks.shape, 0.5)
    maps[0, 0, 0], maps[1, 0, :3] = 1.0, 0.0
    assert M.aupro(masks, maps) == pytest.approx(0.5)  # mean(1, 0); a merged region would give 1/4


def test_aupro_bad_input():
    with pytest.raises(ValueError, match="anomalous regions"):
        M.aupro(np.zeros((2, 8, 8)), np.random.rand(2, 8, 8))
    with pytest.raises(ValueError, match="upsample"):
        M.aupro(np.ones((2, 8, 8)), np.random.rand(2, 4, 4))


# ----------------------------------------------------------------------------- metric sets
def test_compute_metrics_and_table():
    masks, maps = blob_problem(4, n=8)
    labels, scores = masks.any(axis=(1, 2)), maps.max(axis=(1, 2))
    out = M.compute_metrics(labels, scores, masks, maps)
    assert list(out) == list(M.METRIC_NAMES)
    assert out["mAD"] == pytest.approx(np.mean([out[k] for k in M.METRIC_NAMES[:-1]]))
    assert out["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["pixel_AUROC"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert out["pixel_AP"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))
    assert out["pixel_AUPRO"] == pytest.approx(aupro_slow(masks, maps))

    image_only = M.compute_metrics(labels, scores)
    assert set(image_only) == set(M.IMAGE_METRICS)
    assert "mAD" not in M.compute_metrics(labels, scores, masks, maps, aupro=False)

    table = M.metrics_table({"a": out, "b": {k: v / 2 for k, v in out.items()}})
    assert list(table.index) == ["a", "b", "mean"] and list(table.columns) == list(M.METRIC_NAMES)
    assert table.loc["mean", "mAD"] == pytest.approx(0.75 * out["mAD"])


# ----------------------------------------------------------------------------- anomaly maps
def test_image_score_matches_window_loop():
    maps = torch.rand(2, 9, 11, dtype=torch.float64)
    pool = 4
    expected = [max(m[y:y + pool, x:x + pool].mean().item() for y in range(9 - pool + 1) for x in range(11 - pool + 1))
                for m in maps]
    assert M.image_score(maps, pool=pool).tolist() == pytest.approx(expected)
    assert M.image_score(maps, pool=1).tolist() == pytest.approx([m.max().item() for m in maps])
    assert M.image_score(maps, pool=None).tolist() == pytest.approx([m.max().item() for m in maps])
    assert M.image_score(maps, reduce="mean").tolist() == pytest.approx([m.mean().item() for m in maps])
    with pytest.raises(ValueError):
        M.image_score(maps, pool=16)


def test_reconstruction_error_is_channel_l2():
    feats, rec = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    err = M.reconstruction_error(feats, rec)
    assert err.shape == (2, 3, 4)
    b, y, x = 1, 2, 3
    expected = sum((rec[b, c, y, x] - feats[b, c, y, x]).item() ** 2 for c in range(5)) ** 0.5
    assert err[b, y, x].item() == pytest.approx(expected, rel=1e-5)


def test_upsample_align_corners():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = M.upsample(maps, 5)
    assert up.shape == (1, 5, 5)
    assert up[0, [0, 0, -1, -1], [0, -1, 0, -1]].tolist() == [0.0, 1.0, 2.0, 3.0]  # corners kept exactly
    assert up[0, 2, 2].item() == pytest.approx(1.5)  # centre = mean of the four
    assert M.upsample(maps, (4, 6), align_corners=False).shape == (1, 4, 6)


@pytest.mark.parametrize("shape, sigma", [((2, 40, 50), 4.0), ((1, 14, 14), 4.0), ((1, 20, 17), 1.3)])
def test_gaussian_smooth_matches_scipy(shape, sigma):
    maps = torch.rand(shape, dtype=torch.float64)
    ours = M.gaussian_smooth(maps, sigma).numpy()
    reference = np.stack([ndimage.gaussian_filter(m, sigma, mode="reflect", truncate=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(ours, reference, atol=1e-10)


def test_gaussian_smooth_keeps_constant_map():
    maps = torch.full((1, 30, 30), 0.7)
    torch.testing.assert_close(M.gaussian_smooth(maps, 4.0), maps)
    assert M.gaussian_smooth(maps, 0) is maps
