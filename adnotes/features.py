"""The feature cache: backbone features of a dataset split, computed once and kept on disk.

The backbone is frozen, so its features never change: every experiment after the first reads
them from ``<cache>/features/<key>.pt`` instead of running the backbone again. This is what
makes CPU labs possible (training on cached 14×14 features is ~100× cheaper than on images).

The key names everything the features depend on: the backbone's fingerprint (model, weights,
stages, output stride), the image size and the dataset's fingerprint (files, sizes, mtimes,
labels). Features are stored as float16, masks as bool at the image size.

Two layouts: UniAD's (default), every stage resized to stride 16 and concatenated into one
``(N, ΣC, h, w)`` tensor; and ``multiscale=True`` for multi-scale models (Omni-AD), a list with
each stage's map at its own stride, ``[(N, C_k, H / 2**k, W / 2**k), ...]``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import ADDataset
from .paths import cache_dir as default_cache_dir

__all__ = ["FeatureSet", "extract_features", "cached_features"]


@dataclass
class FeatureSet:
    """Features of one dataset split, with what evaluation needs alongside."""

    features: torch.Tensor | list[torch.Tensor]  # (N, C, h, w) float16; multiscale: per stage (N, C_k, h_k, w_k)
    labels: torch.Tensor         # (N,) int64, 1 = anomalous
    classes: list[str]           # (N,) class of each image
    masks: torch.Tensor | None   # (N, S, S) bool at the image size; None for normal-only splits
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per image, e.g. "images": (N, 3, s, s) float16

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multiscale(self) -> bool:
        return not isinstance(self.features, torch.Tensor)

    @property
    def channels(self) -> int | tuple[int, ...]:
        """C, or per stage (C_1, C_2, ...) for multi-scale features."""
        return tuple(f.shape[1] for f in self.features) if self.multiscale else self.features.shape[1]

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the feature grid (multi-scale: of the finest map)."""
        return tuple((self.features[0] if self.multiscale else self.features).shape[-2:])

    def take(self, idx: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor | list[torch.Tensor]:
        """float32 features of the images ``idx`` on ``device``: (B, C, h, w), or a list per stage."""
        if self.multiscale:
            return [f[idx].to(device).float() for f in self.features]
        return self.features[idx].to(device).float()

    def select(self, cls: str) -> "FeatureSet":
        """The images of one class."""
        idx = torch.tensor([i for i, c in enumerate(self.classes) if c == cls], dtype=torch.long)
        if len(idx) == 0:
            raise KeyError(f"no images of class {cls!r}; classes: {sorted(set(self.classes))}")
        features = [f[idx] for f in self.features] if self.multiscale else self.features[idx]
        return FeatureSet(features, self.labels[idx], [cls] * len(idx),
                          None if self.masks is None else self.masks[idx],
                          {k: v[idx] for k, v in self.extras.items()})

    def batch(self, idx: torch.Tensor, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """What a model's ``training_loss`` may need beside the features: ``labels`` (B,), ``masks``
        (B, S, S) bool when the split has pixel labels, and every extra (float32) of the images ``idx``."""
        out = {"labels": self.labels[idx].to(device)}
        if self.masks is not None:
            out["masks"] = self.masks[idx].to(device)
        return out | {k: v[idx].to(device).float() for k, v in self.extras.items()}


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, dataset: ADDataset, *, multiscale: bool = False,
                     keep_images: int | None = None, batch_size: int = 16,
                     device: str | torch.device = "cpu") -> FeatureSet:
    """Run the frozen backbone over a dataset split (``multiscale``: keep each stage's own map;
    ``keep_images=s``: also keep the normalised images at s×s, ``extras["images"]``, for models
    that reconstruct pixels, HaloAE)."""
    backbone = backbone.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    feats, masks, kept = [], [], []
    for batch in tqdm(loader, desc=f"features {dataset.name}", unit="batch"):
        images = batch["image"].to(device)
        if multiscale:
            feats.append([m.half().cpu() for m in backbone.stage_maps(images)])  # per stage (B, C_k, h_k, w_k)
        else:
            feats.append(backbone(images).half().cpu())                          # (B, C, h, w)
        masks.append(batch["mask"][:, 0] > 0.5)                                  # (B, S, S)
        if keep_images:
            kept.append(F.interpolate(batch["image"], size=(keep_images, keep_images), mode="bilinear",
                                        antialias=True, align_corners=False).half())  # (B, 3, s, s)
    labels = torch.as_tensor(dataset.labels, dtype=torch.long)
    keep_masks = bool(labels.any()) and dataset.has_masks
    features = [torch.cat(stage) for stage in zip(*feats)] if multiscale else torch.cat(feats)
    extras = {"images": torch.cat(kept)} if keep_images else {}
    return FeatureSet(features, labels, [r.cls for r in dataset.records], torch.cat(masks) if keep_masks else None,
                      extras)


def cache_key(backbone: torch.nn.Module, dataset: ADDataset, multiscale: bool = False,
              keep_images: int | None = None) -> str:
    name = dataset.name.replace("/", "-")
    layout = ("-multiscale" if multiscale else "") + (f"-images{keep_images}" if keep_images else "")
    return f"{backbone.fingerprint}{layout}-{name}-{dataset.image_size}px-{dataset.fingerprint()}"


def cached_features(backbone: torch.nn.Module, dataset: ADDataset, *, multiscale: bool = False,
                    keep_images: int | None = None, cache_dir: str | Path | None = None, batch_size: int = 16,
                    device: str | torch.device = "cpu", verbose: bool = True) -> FeatureSet:
    """Features from the cache, extracted and stored first when they are not there yet."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "features"
    path = folder / f"{cache_key(backbone, dataset, multiscale, keep_images)}.pt"
    if path.is_file():
        if verbose:
            print(f"found cached features {path.name}: loading")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return FeatureSet(state["features"], state["labels"], list(state["classes"]), state.get("masks"),
                          state.get("extras", {}))
    fs = extract_features(backbone, dataset, multiscale=multiscale, keep_images=keep_images,
                          batch_size=batch_size, device=device)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"features": fs.features, "labels": fs.labels, "classes": np.array(fs.classes).tolist(),
                "masks": fs.masks, "extras": fs.extras}, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache entry
    if verbose:
        print(f"cached features in {path}")
    return fs
