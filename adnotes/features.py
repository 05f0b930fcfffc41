"""The feature cache: backbone features of a dataset split, computed once and kept on disk.

The backbone is frozen, so its features never change: every experiment after the first reads
them from ``<cache>/features/<key>/`` instead of running the backbone again. This is what
makes CPU labs possible (training on cached 14×14 features is ~100× cheaper than on images).

The key names everything the features depend on: the backbone's fingerprint (model, weights,
stages, output stride), the image size and the dataset's fingerprint (files, sizes, mtimes,
labels). An entry is a folder of ``.npy`` arrays (features float16, masks bool at the image size,
labels, cached images) and ``meta.json`` (classes). Extraction streams each batch into the
arrays on disk and says the size first, so a split larger than memory fits (HaloAE's VGG19 taps
are 5.8 MB per image: ~63 GB for MVTec's train split with two CutPaste views); reading
memory-maps them, so the features are paged in as batches touch them and several processes
(DDP ranks) share one copy. The folder appears by an atomic rename when complete, and a lock
file lets one process extract while others wait for it.

Two layouts: UniAD's (default), every stage resized to stride 16 and concatenated into one
``(N, ΣC, h, w)`` tensor; and ``multiscale=True`` for multi-scale models (Omni-AD), a list with
each stage's map at its own stride, ``[(N, C_k, H / 2**k, W / 2**k), ...]``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import ADDataset
from .files import locked
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
    defects: list[str] | None = None  # (N,) defect type of each image ("good" for normal ones), when known

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

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor of the split (features, labels, masks, extras)."""
        tensors = [*(self.features if self.multiscale else [self.features]), self.labels, *self.extras.values()]
        return sum(t.numel() * t.element_size() for t in tensors + ([self.masks] if self.masks is not None else []))

    def to(self, device: str | torch.device) -> "FeatureSet":
        """The split with every tensor on ``device`` (a GPU-resident train split: no per-step copies)."""
        features = [_to(f, device) for f in self.features] if self.multiscale else _to(self.features, device)
        return FeatureSet(features, _to(self.labels, device), self.classes,
                          None if self.masks is None else _to(self.masks, device),
                          {k: _to(v, device) for k, v in self.extras.items()}, self.defects)

    def take(self, idx: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor | list[torch.Tensor]:
        """float32 features of the images ``idx`` on ``device``: (B, C, h, w), or a list per stage."""
        idx = _to(idx, self.labels.device)
        if self.multiscale:
            return [_to(f[idx], device).float() for f in self.features]
        return _to(self.features[idx], device).float()

    def select(self, cls: str) -> "FeatureSet":
        """The images of one class."""
        idx = torch.tensor([i for i, c in enumerate(self.classes) if c == cls], dtype=torch.long)
        if len(idx) == 0:
            raise KeyError(f"no images of class {cls!r}; classes: {sorted(set(self.classes))}")
        features = [f[idx] for f in self.features] if self.multiscale else self.features[idx]
        return FeatureSet(features, self.labels[idx], [cls] * len(idx),
                          None if self.masks is None else self.masks[idx],
                          {k: v[idx] for k, v in self.extras.items()},
                          None if self.defects is None else [self.defects[i] for i in idx.tolist()])

    def batch(self, idx: torch.Tensor, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """What a model's ``training_loss`` may need beside the features: ``labels`` (B,), ``masks``
        (B, S, S) bool when the split has pixel labels, and every extra (float32) of the images ``idx``."""
        idx = _to(idx, self.labels.device)
        out = {"labels": _to(self.labels[idx], device)}
        if self.masks is not None:
            out["masks"] = _to(self.masks[idx], device)
        return out | {k: _to(v[idx], device).float() for k, v in self.extras.items()}


def _to(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """``t`` on ``device``; from the CPU to a GPU through pinned memory, so the copy does not block the host."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def _extracted(backbone: torch.nn.Module, dataset: ADDataset, *, multiscale: bool, keep_images: int | None,
               masks: bool, batch_size: int, device: str | torch.device):
    """Per batch of the split, its arrays by name (CPU): ``features`` (B, C, h, w) float16, or
    ``features_<k>`` per stage; ``masks`` (B, S, S) bool if asked; ``images`` (B, 3, s, s) float16."""
    backbone = backbone.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in tqdm(loader, desc=f"features {dataset.name}", unit="batch"):
        images = batch["image"].to(device)
        if multiscale:  # per stage (B, C_k, h_k, w_k)
            out = {f"features_{k}": m.half().cpu() for k, m in enumerate(backbone.stage_maps(images))}
        else:
            out = {"features": backbone(images).half().cpu()}
        if masks:
            out["masks"] = batch["mask"][:, 0] > 0.5
        if keep_images:
            out["images"] = F.interpolate(batch["image"], size=(keep_images, keep_images), mode="bilinear",
                                          antialias=True, align_corners=False).half()
        yield out


def _feature_set(arrays: dict[str, torch.Tensor], dataset: ADDataset) -> FeatureSet:
    """A FeatureSet from the arrays of :func:`_extracted` (whole split) and the dataset's records (labels,
    classes and defect types: the cache key holds the dataset's fingerprint, labels included)."""
    stages = sorted((k for k in arrays if k.startswith("features_")), key=lambda k: int(k.split("_")[1]))
    features = [arrays[k] for k in stages] if stages else arrays["features"]
    extras = {"images": arrays["images"]} if "images" in arrays else {}
    return FeatureSet(features, torch.as_tensor(dataset.labels, dtype=torch.long), [r.cls for r in dataset.records],
                      arrays.get("masks"), extras, [r.defect for r in dataset.records])


def _keeps_masks(dataset: ADDataset) -> bool:
    """Masks are kept for splits with anomalies and pixel labels (not for normal-only train splits)."""
    return bool(np.asarray(dataset.labels).any()) and dataset.has_masks


def extract_features(backbone: torch.nn.Module, dataset: ADDataset, *, multiscale: bool = False,
                     keep_images: int | None = None, batch_size: int = 16,
                     device: str | torch.device = "cpu") -> FeatureSet:
    """Run the frozen backbone over a dataset split, in memory (``multiscale``: keep each stage's own
    map; ``keep_images=s``: also keep the normalised images at s×s, ``extras["images"]``, for models
    that reconstruct pixels, HaloAE). :func:`cached_features` streams them to disk instead."""
    parts: dict[str, list[torch.Tensor]] = {}
    for arrays in _extracted(backbone, dataset, multiscale=multiscale, keep_images=keep_images,
                             masks=_keeps_masks(dataset), batch_size=batch_size, device=device):
        for name, value in arrays.items():
            parts.setdefault(name, []).append(value)
    return _feature_set({name: torch.cat(values) for name, values in parts.items()}, dataset)


def cache_key(backbone: torch.nn.Module, dataset: ADDataset, multiscale: bool = False,
              keep_images: int | None = None) -> str:
    name = dataset.name.replace("/", "-")
    layout = ("-multiscale" if multiscale else "") + (f"-images{keep_images}" if keep_images else "")
    return f"{backbone.fingerprint}{layout}-{name}-{dataset.image_size}px-{dataset.fingerprint()}"


def cached_features(backbone: torch.nn.Module, dataset: ADDataset, *, multiscale: bool = False,
                    keep_images: int | None = None, cache_dir: str | Path | None = None, batch_size: int = 16,
                    device: str | torch.device = "cpu", verbose: bool = True) -> FeatureSet:
    """Features from the cache (memory-mapped), extracted and stored first when they are not there yet."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "features"
    path = folder / cache_key(backbone, dataset, multiscale, keep_images)
    if not path.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / f"{path.name}.lock"):  # one process extracts; the others wait, then read it
            if not path.is_dir():
                _write_cache(path, backbone, dataset, multiscale=multiscale, keep_images=keep_images,
                             batch_size=batch_size, device=device, verbose=verbose)
                if verbose:
                    print(f"cached features in {path}")
                return _read_cache(path, dataset)
    if verbose:
        print(f"found cached features {path.name}: loading")
    return _read_cache(path, dataset)


def _write_cache(path: Path, backbone: torch.nn.Module, dataset: ADDataset, *, multiscale: bool,
                 keep_images: int | None, batch_size: int, device: str | torch.device, verbose: bool) -> None:
    """Extract a split batch by batch into ``.npy`` arrays of a temporary folder (the size is said, and
    checked against the free disk, after the first batch), then rename it to ``path``: atomic, so a
    killed extraction never leaves a half-written entry."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"dataset {dataset.name!r} has no images: nothing to extract")
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files, i = {}, 0
        for arrays in _extracted(backbone, dataset, multiscale=multiscale, keep_images=keep_images,
                                 masks=_keeps_masks(dataset), batch_size=batch_size, device=device):
            if not files:  # the first batch gives the shapes, hence the size of the whole split
                size = n * sum(v[0].numel() * v.element_size() for v in arrays.values())
                free = shutil.disk_usage(tmp).free
                if verbose:
                    print(f"extracting features of {n} images ({dataset.name}): {size / 1e9:.2f} GB "
                          f"to {path.parent} ({free / 1e9:.0f} GB free)")
                if size > free:
                    raise OSError(f"the features of {dataset.name} need {size / 1e9:.1f} GB but {path.parent} "
                                  f"has {free / 1e9:.1f} GB free: set ADNOTES_HOME to a larger disk")
                files = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", shape=(n, *v.shape[1:]),
                                                         dtype=v.numpy().dtype) for name, v in arrays.items()}
            b = len(next(iter(arrays.values())))
            for name, value in arrays.items():
                files[name][i:i + b] = value.numpy()
            i += b
        shapes = {name: [*array.shape] for name, array in files.items()}
        for array in files.values():
            array.flush()
        del files
        (tmp / "meta.json").write_text(json.dumps({"dataset": dataset.name, "arrays": shapes}))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(path: Path, dataset: ADDataset) -> FeatureSet:
    """A cache entry, memory-mapped (copy-on-write: writes stay in memory, the files never change)."""
    return _feature_set({p.stem: torch.from_numpy(np.load(p, mmap_mode="c")) for p in path.glob("*.npy")}, dataset)


