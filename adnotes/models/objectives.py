"""Reconstruction losses and the anomaly maps that go with them, shared by every model.

    loss = reconstruction_loss(features, model(features), kind)   # scalar
    maps = anomaly_map(features, model(features), kind)            # (B, H, W)

Three kinds, UniAD App. C.3 (Tab. A4: all three score within 0.2 AUROC of each other):

    kind    loss                                           map (B, H, W)
    "mse"   mean over elements of (f_org - f_rec)²         ‖f_org - f_rec‖₂ over channels (Eq. 5)
    "nmse"  mean over positions of ‖n(f_org) - n(f_rec)‖²  ‖n(f_org) - n(f_rec)‖₂, n(f) = f/‖f‖₂ (Eq. A2)
    "cos"   mean over positions of 1 - cos(f_org, f_rec)   1 - cos(f_org, f_rec) (Eq. A3)

Conventions. "mse" follows the official UniAD code (`FeatureMSELoss`: torch's mean over B·C·H·W,
which is Eq. 4 / A1 divided by C), so its learning rate and clip-norm 0.1 carry over. "nmse" and
"cos" follow Eq. A2 / A3 (per-position quantities averaged over positions and the batch). Eq. A3
prints "Σ cos"; the text says the *cosine distance* is minimised, which is what we do. The nmse
map is sqrt(2·cos map), so both normalised kinds rank pixels identically.

Multi-scale models (Omni-AD) pass lists of (B, C_i, H_i, W_i) maps: the loss is the sum over
scales (ADer's per-scale MSE terms with weight 1); the anomaly map is the mean over scales after
bilinear upsampling (align_corners=True) to `size`, by default the largest scale's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import reconstruction_error, upsample

__all__ = ["LOSS_KINDS", "reconstruction_loss", "anomaly_map", "loss_fn"]

LOSS_KINDS = ("mse", "nmse", "cos")
Features = Tensor | Sequence[Tensor]


def _check(features: Tensor, reconstructed: Tensor, kind: str) -> None:
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; kinds: {', '.join(LOSS_KINDS)}")
    if features.shape != reconstructed.shape or features.ndim != 4:
        raise ValueError(f"expected features and reconstruction as two (B, C, H, W) tensors of one shape, "
                         f"got {tuple(features.shape)} and {tuple(reconstructed.shape)}")


def _scales(features: Features, reconstructed: Features) -> list[tuple[Tensor, Tensor]]:
    """Pairs (features, reconstruction) per scale; one pair for single tensors."""
    if isinstance(features, Tensor) and isinstance(reconstructed, Tensor):
        return [(features, reconstructed)]
    if isinstance(features, Tensor) or isinstance(reconstructed, Tensor) or len(features) != len(reconstructed):
        raise ValueError("pass two tensors, or two lists of tensors with one entry per scale")
    return list(zip(features, reconstructed))


def _map(features: Tensor, reconstructed: Tensor, kind: str) -> Tensor:
    """(B, C, H, W) × 2 -> (B, H, W) for one scale."""
    _check(features, reconstructed, kind)
    if kind == "mse":
        return reconstruction_error(features, reconstructed)
    if kind == "nmse":
        diff = F.normalize(features, dim=1) - F.normalize(reconstructed, dim=1)
        return torch.linalg.vector_norm(diff, dim=1)
    return 1 - F.cosine_similarity(features, reconstructed, dim=1)


def _loss(features: Tensor, reconstructed: Tensor, kind: str) -> Tensor:
    if kind == "mse":
        _check(features, reconstructed, kind)
        return F.mse_loss(reconstructed, features)
    per_position = _map(features, reconstructed, kind)  # (B, H, W)
    return per_position.square().mean() if kind == "nmse" else per_position.mean()


def reconstruction_loss(features: Features, reconstructed: Features, kind: str = "mse") -> Tensor:
    """The training loss (a scalar), summed over scales for lists."""
    return sum(_loss(f, r, kind) for f, r in _scales(features, reconstructed))


def anomaly_map(features: Features, reconstructed: Features, kind: str = "mse",
                size: int | tuple[int, int] | None = None) -> Tensor:
    """(B, H, W) anomaly map matching the loss `kind`; lists are averaged over scales at `size`."""
    pairs = _scales(features, reconstructed)
    maps = [_map(f, r, kind) for f, r in pairs]  # each (B, H_i, W_i)
    if len(maps) == 1 and size is None:
        return maps[0]
    size = size or max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    return torch.stack([upsample(m, size) for m in maps]).mean(dim=0)  # (B, H, W)


def loss_fn(kind: str) -> Callable[[Features, Features], Tensor]:
    """``loss_fn("cos")(features, reconstructed)``: the loss of one kind as a function."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; kinds: {', '.join(LOSS_KINDS)}")
    return lambda features, reconstructed: reconstruction_loss(features, reconstructed, kind)
