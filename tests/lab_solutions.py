"""Reference solutions of the lab TODO cells (notebooks/labs/), used only by tests/test_labs.py.

Written from the papers' descriptions, independently of the package code they are checked
against: loops and explicit formulas rather than the package's vectorised versions. Each
function is self-contained (its imports at module level below are put in front of it when a
test pastes it into a notebook cell).
"""
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

IMPORTS = ("import numpy as np\nimport torch\nimport torch.nn.functional as F\n"
           "from scipy import ndimage\n\n")


def neighbor_mask(height, width, k):
    """(H·W, H·W) bool, True = blocked: every key within k // 2 rows and columns of the query, itself too."""
    n, r = height * width, k // 2
    mask = torch.zeros(n, n, dtype=torch.bool)
    for t in range(n):
        i, j = divmod(t, width)                          # row-major: token t is cell (t // W, t % W)
        for a in range(max(0, i - r), min(height, i + r + 1)):
            for b in range(max(0, j - r), min(width, j + r + 1)):
                mask[t, a * width + b] = True
    return mask


def feature_jitter(tokens, scale, prob):
    """Eq. 3: tokens (B, N, C) + N(0, (scale·‖f‖₂/C)²) noise per token, with probability prob (one coin per call)."""
    if not torch.rand(()) < prob:
        return tokens
    channels = tokens.shape[-1]
    norm = torch.sqrt((tokens ** 2).sum(dim=-1, keepdim=True))      # (B, N, 1)
    sigma = scale * norm / channels
    return tokens + sigma * torch.randn_like(tokens)


def local_branch(x, params):
    """Omni-block local branch: x (B, H, W, C) -> (B, H, W, C)."""
    def instance_norm(z):                                # each channel of each image over H×W
        mean = z.mean(dim=(2, 3), keepdim=True)
        var = z.var(dim=(2, 3), keepdim=True, unbiased=False)
        return (z - mean) / torch.sqrt(var + 1e-5)

    def separable(z, k):
        c = z.shape[1]
        z = F.conv2d(z, params[f"dw{k}.weight"], params[f"dw{k}.bias"], padding=k // 2, groups=c)
        z = F.silu(instance_norm(z))
        z = F.conv2d(z, params[f"pw{k}.weight"], params[f"pw{k}.bias"])
        return F.silu(instance_norm(z))

    y = x.permute(0, 3, 1, 2)                            # (B, C, H, W)
    y = torch.cat([separable(y, 3), separable(y, 5)], dim=1)  # (B, 2C, H, W)
    y = F.silu(instance_norm(F.conv2d(y, params["merge.weight"], params["merge.bias"])))
    return y.permute(0, 2, 3, 1)                         # (B, H, W, C)


def image_score(maps, pool=16):
    """Max over H, W of the pool×pool (stride 1) box average, via an integral image."""
    m = np.asarray(maps, dtype=np.float64)
    b, h, w = m.shape
    integral = np.zeros((b, h + 1, w + 1))
    integral[:, 1:, 1:] = m.cumsum(axis=1).cumsum(axis=2)
    box = (integral[:, pool:, pool:] - integral[:, :-pool, pool:]
           - integral[:, pool:, :-pool] + integral[:, :-pool, :-pool]) / pool ** 2   # (B, H-pool+1, W-pool+1)
    return torch.from_numpy(box.max(axis=(1, 2)))


def auroc(labels, scores):
    """ROC from a sweep over every distinct score (high to low, score ≥ t), trapezoid area."""
    labels, scores = np.asarray(labels) != 0, np.asarray(scores, dtype=float)
    tpr, fpr = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:
        predicted = scores >= t
        tpr.append((predicted & labels).sum() / labels.sum())
        fpr.append((predicted & ~labels).sum() / (~labels).sum())
    return float(np.trapezoid(tpr, fpr))


def aupro(masks, maps, fpr_limit=0.3):
    """PRO curve over every distinct score; 8-connected regions per image; area to fpr_limit / fpr_limit."""
    masks, maps = np.asarray(masks) != 0, np.asarray(maps, dtype=float)
    regions = []                                        # one boolean (N, H, W) array per region
    for i in range(len(masks)):
        labelled, count = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for r in range(1, count + 1):
            region = np.zeros(masks.shape, bool)
            region[i] = labelled == r
            regions.append(region)
    normal = ~masks
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fpr.append((above & normal).sum() / normal.sum())
        pro.append(np.mean([(above & region).sum() / region.sum() for region in regions]))
        if fpr[-1] >= fpr_limit:
            break
    fpr, pro = np.array(fpr), np.array(pro)
    if fpr[-1] > fpr_limit:                              # cut at the limit, interpolating the last segment
        share = (fpr_limit - fpr[-2]) / (fpr[-1] - fpr[-2])
        pro[-1] = pro[-2] + share * (pro[-1] - pro[-2])
        fpr[-1] = fpr_limit
    return float(np.trapezoid(pro, fpr) / fpr_limit)


SOLUTIONS = {"neighbor_mask": neighbor_mask, "feature_jitter": feature_jitter, "local_branch": local_branch,
             "image_score": image_score, "auroc": auroc, "aupro": aupro}
