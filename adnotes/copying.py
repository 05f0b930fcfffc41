"""Copying, measured: how much of a change of its input a reconstructor hands through to its output.

A feature reconstructor f that falls into the identity shortcut reconstructs *anything*,
anomalies included (UniAD §1, Fig. 2). AUROC shows that only indirectly; here we measure it.
Change the input on a region R of tokens, x' = x + δ, and look at what comes out:

    copy gain  g = Σ_{t∈R} ⟨f(x')_t − f(x)_t, δ_t⟩ / Σ_{t∈R} ‖δ_t‖²     1: copies the change, 0: ignores it
    leak       ℓ = Σ_{t∉R} ‖f(x')_t − f(x)_t‖² / Σ_{t∈R} ‖δ_t‖²        how far the change spreads outside R

g is the least-squares slope of the output's change on the input's change over R (sums pooled
over images). The identity has g = 1, ℓ = 0; a constant model g = 0, ℓ = 0; a per-token linear
map W has g = Σ δᵀWδ / Σ ‖δ‖². For a small δ, g is the directional derivative ⟨J δ, δ⟩/‖δ‖²
(the tests check all four against those references). A detector wants g ≈ 0 on anomalous
content: then the reconstruction error on R is ≈ ‖δ‖, the largest it can be.

Two kinds of δ (each a :class:`Probe`: x, x', R):

* **transplant** (:func:`transplant_probe`): in a normal test image, replace a block×block block
  of tokens by the tokens of a donor. ``donor="other_class"``: a normal test image of another
  class at the same position: content that is normal for a unified model, just not here (the
  multi-class hazard); ``"same_class"``: another normal image of the same class, its block from
  another position; ``"train"``: a training image of the same class, same position.
* **twin** (:func:`twin_probe`): a real defect against the same crop without it. adnotes-mini
  writes each defective test image's clean twin (:mod:`adnotes.data.mini`); R is the tokens whose
  features the defect changed by at least ``min_change`` of their norm.

    probe = transplant_probe(test_features, n=60, block=2, donor="other_class")
    copying(model, probe)                      # {"gain": 0.87, "leak": 0.02, ...}
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .features import FeatureSet

__all__ = ["DONORS", "Probe", "gain_and_leak", "transplant_probe", "twin_probe", "copying", "per_class", "linear_gain"]

DONORS = ("other_class", "same_class", "train")


@dataclass
class Probe:
    """Pairs of feature maps that differ on a region of tokens."""

    x: Tensor          # (N, C, H, W) the original features (float32)
    x_new: Tensor      # (N, C, H, W) the changed features
    region: Tensor     # (N, H, W) bool, the tokens that were changed (R)
    classes: list[str]  # (N,) class of each image

    def __post_init__(self):
        if self.x.shape != self.x_new.shape or self.x.ndim != 4 or self.region.shape != self.x.shape[:1] + self.x.shape[2:]:
            raise ValueError(f"a probe needs x and x_new of one (N, C, H, W) shape and an (N, H, W) region, got "
                             f"{tuple(self.x.shape)}, {tuple(self.x_new.shape)}, {tuple(self.region.shape)}")

    def __len__(self) -> int:
        return len(self.x)


def gain_and_leak(out: Tensor, out_new: Tensor, x: Tensor, x_new: Tensor, region: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: (Σ_R ⟨Δf, δ⟩, Σ_{not R} ‖Δf‖², Σ_R ‖δ‖²), each (N,); g and ℓ are ratios of their sums.

    ``out``/``out_new`` are f(x)/f(x') and ``x``/``x_new`` the inputs, all (N, C, H, W); ``region`` (N, H, W) bool."""
    d_out, delta = (out_new - out).double(), (x_new - x).double()  # (N, C, H, W)
    inside = region.unsqueeze(1).to(d_out.dtype)                    # (N, 1, H, W)
    along = ((d_out * delta) * inside).sum(dim=(1, 2, 3))           # Σ_R ⟨Δf_t, δ_t⟩
    spread = (d_out.square() * (1 - inside)).sum(dim=(1, 2, 3))     # Σ_{t∉R} ‖Δf_t‖²
    energy = (delta.square() * inside).sum(dim=(1, 2, 3))           # Σ_R ‖δ_t‖²
    return along, spread, energy


# ----------------------------------------------------------------------------- probes

def _normal(fs: FeatureSet) -> FeatureSet:
    idx = torch.nonzero(fs.labels == 0).flatten()
    return FeatureSet(fs.features[idx], fs.labels[idx], [fs.classes[i] for i in idx.tolist()], None)


def transplant_probe(test: FeatureSet, *, n: int = 60, block: int = 2, donor: str = "other_class",
                     train: FeatureSet | None = None, seed: int = 0) -> Probe:
    """Transplanted blocks: in ``n`` normal test images (drawn at random), a random ``block``×``block``
    block of tokens replaced by a donor's tokens (``donor``: see the module docstring; ``"train"`` needs
    ``train``, the train split). Deterministic in ``seed``."""
    if test.multiscale:
        raise ValueError("the copy gain is defined on one feature grid; multi-scale features have several")
    if donor not in DONORS:
        raise ValueError(f"unknown donor {donor!r}; choose one of {', '.join(DONORS)}")
    if donor == "train" and train is None:
        raise ValueError('donor="train" needs the train split: pass train=')
    normal = _normal(test)
    H, W = normal.grid
    if not 1 <= block <= min(H, W):
        raise ValueError(f"block={block} must be between 1 and the grid size {min(H, W)}")
    classes = np.array(normal.classes)
    pool = _normal(train) if donor == "train" else normal
    pool_classes = np.array(pool.classes)
    candidates = {c: np.flatnonzero(pool_classes == c) for c in sorted(set(pool.classes))}
    if donor == "other_class" and len(candidates) < 2:
        raise ValueError('donor="other_class" needs normal test images of at least two classes')

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(normal), size=min(n, len(normal)), replace=False)
    x = normal.features[torch.as_tensor(picks)].float()
    x_new, region = x.clone(), torch.zeros(len(picks), H, W, dtype=torch.bool)
    for k, i in enumerate(picks):
        cls = classes[i]
        if donor == "other_class":
            others = np.concatenate([v for c, v in candidates.items() if c != cls])
            j = rng.choice(others)
        elif donor == "same_class":
            if len(candidates[cls]) < 2:
                raise ValueError(f'donor="same_class" needs two normal test images of class {cls!r}, found one')
            j = rng.choice(np.setdiff1d(candidates[cls], [i]))
        else:
            if cls not in candidates:
                raise ValueError(f"no normal train image of class {cls!r} to use as a donor")
            j = rng.choice(candidates[cls])
        r, c = rng.integers(0, H - block + 1), rng.integers(0, W - block + 1)
        rs, cs = (rng.integers(0, H - block + 1), rng.integers(0, W - block + 1)) if donor == "same_class" else (r, c)
        x_new[k, :, r:r + block, c:c + block] = pool.features[j, :, rs:rs + block, cs:cs + block].float()
        region[k, r:r + block, c:c + block] = True
    return Probe(x, x_new, region, [str(classes[i]) for i in picks])


def twin_probe(test: FeatureSet, twins: FeatureSet, *, min_change: float = 0.2) -> Probe:
    """Real defects against their clean twins: x = a twin's features, x' = its defective image's,
    R = the tokens where ‖δ_t‖ ≥ ``min_change``·‖x_t‖. ``twins`` pairs up in order with the defective
    images of ``test`` (``load_features(cfg, splits=("test", "twins"))``); images whose defect changed
    no token that much are left out."""
    defective = torch.nonzero(test.labels == 1).flatten()
    if len(defective) != len(twins):
        raise ValueError(f"{len(defective)} defective test images but {len(twins)} twins: they must pair up in order")
    x, x_new = twins.features.float(), test.features[defective].float()  # (N, C, H, W)
    change = torch.linalg.vector_norm(x_new - x, dim=1)                   # (N, H, W)
    region = change >= min_change * torch.linalg.vector_norm(x, dim=1)
    keep = region.flatten(1).any(1)
    if not keep.any():
        raise ValueError(f"no defect changed any token's features by {min_change:.0%} of its norm: lower min_change")
    idx = torch.nonzero(keep).flatten()
    return Probe(x[idx], x_new[idx], region[idx], [twins.classes[i] for i in idx.tolist()])


# ----------------------------------------------------------------------------- measuring a model

@torch.no_grad()
def _sums(model: nn.Module, probe: Probe, device: str | torch.device, batch: int) -> tuple[Tensor, ...] | None:
    was_training = model.training
    model.eval()
    parts = []
    try:
        for idx in torch.arange(len(probe)).split(batch):
            x, x_new = probe.x[idx].to(device), probe.x_new[idx].to(device)
            out, out_new = model(x), model(x_new)
            if not (isinstance(out, Tensor) and out.shape == x.shape):
                return None  # not a reconstruction of its input (e.g. HaloAE's tuple of outputs)
            along, spread, energy = gain_and_leak(out, out_new, x, x_new, probe.region[idx].to(device))
            error = torch.linalg.vector_norm(out - x, dim=1).double().flatten(1).sum(1)  # Σ_t ‖f(x)_t − x_t‖
            norm = torch.linalg.vector_norm(x, dim=1).double().flatten(1).sum(1)       # Σ_t ‖x_t‖
            parts.append([s.cpu() for s in (along, spread, energy, error, norm)])
    finally:
        model.train(was_training)
    return tuple(torch.cat(p) for p in zip(*parts))


def copying(model: nn.Module, probe: Probe, *, device: str | torch.device = "cpu", batch: int = 64) -> dict | None:
    """``{"gain": g, "leak": ℓ, "images": N}`` of a model on a probe (sums pooled over its images), or
    None when the model's output is not a reconstruction of its input's shape."""
    sums = _sums(model, probe, device, batch)
    if sums is None:
        return None
    along, spread, energy = (s.sum().item() for s in sums[:3])
    return {"gain": along / energy, "leak": spread / energy, "images": len(probe)}


def per_class(model: nn.Module, probe: Probe, *, device: str | torch.device = "cpu", batch: int = 64
              ) -> dict[str, dict[str, float]] | None:
    """:func:`copying` per class of the probe's images, plus ``"mean"``: pooled over all of them; and
    ``normal_error`` = Σ_t ‖f(x)_t − x_t‖ / Σ_t ‖x_t‖ over every token of the probe's (normal) images x,
    how well the model reconstructs normal content (the price a mask that hides a token's own input pays)."""
    sums = _sums(model, probe, device, batch)
    if sums is None:
        return None
    classes = np.array(probe.classes)
    out = {}
    for cls in [*sorted(set(probe.classes)), "mean"]:
        keep = torch.as_tensor(classes == cls if cls != "mean" else np.ones(len(classes), bool))
        along, spread, energy, error, norm = (s[keep].sum().item() for s in sums)
        out[cls] = {"copy_gain": along / energy, "copy_leak": spread / energy, "normal_error": error / norm}
    return out


# ----------------------------------------------------------------------------- the linear reference

def linear_gain(train: FeatureSet, probe: Probe, widths) -> dict[int, float]:
    """The copy gain of the best linear autoencoder of width d, for each d of ``widths``: it projects a
    token onto the top-d principal components of the normal training tokens, f(x) = μ + U_d U_dᵀ (x − μ),
    so Δf = U_d U_dᵀ δ and g = Σ ‖U_dᵀ δ_t‖² / Σ ‖δ_t‖² over the region (no leak: it works token by token).
    The reference line of the width sweep: a bottleneck of d ≥ C_in copies everything (g = 1)."""
    normal = _normal(train).features.float()                                      # (N, C, H, W)
    tokens = normal.permute(0, 2, 3, 1).reshape(-1, normal.shape[1]).double()       # (N·H·W, C)
    _, _, vh = torch.linalg.svd(tokens - tokens.mean(0), full_matrices=False)      # rows: principal axes
    delta = (probe.x_new - probe.x).double().permute(0, 2, 3, 1)[probe.region]      # (T, C) changed tokens
    energy = delta.square().sum()
    return {d: (delta @ vh[:d].T).square().sum().item() / energy.item() for d in widths}

