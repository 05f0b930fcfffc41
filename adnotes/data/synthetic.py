"""Generated anomalies for training: extra views of the normal training images.

Two seed methods train on more than normal images:

- ADTR+ (notebooks/SOURCES.md §4.4) adds FCDD's *confetti noise* to normal images and trains its push–pull loss on
  the noise footprint (pixel labels): :mod:`adnotes.data.confetti`.
- HaloAE (notebooks/SOURCES.md §5.4) classifies CutPaste views against the originals (image labels):
  :mod:`adnotes.data.cutpaste`.

``mini_defects`` draws the offline dataset's own defect types (:func:`adnotes.data.mini.apply_defect`)
on training images: the "labelled anomalies available" setting. They are the same kinds of defect
as the test set's, so a model trained on them is told what to look for: an upper bound, not a
fair comparison with normal-only training.

A generator maps one (H, W, 3) uint8 image and a NumPy generator to a new image and its pixel
mask (bool (H, W), or None when it gives image labels only). :func:`synthetic_records` applies
generators to every image of a split, ``copies`` times each, deterministically per (seed, image,
generator, copy); the views join the split as label-1 records and go through the feature cache
like any image (the cache key hashes their pixels).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .datasets import ADDataset, Record

__all__ = ["SYNTHETIC", "register_synthetic", "generator", "synthetic_records", "with_synthetic"]

Generator = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, "np.ndarray | None"]]
SYNTHETIC: dict[str, Generator] = {}
_MODULES = ("confetti", "cutpaste")  # files whose generators register themselves on import


def register_synthetic(name: str):
    """Function decorator: make a generator available to ``data.synthetic`` under ``name``."""
    def add(fn: Generator) -> Generator:
        if name in SYNTHETIC:
            raise ValueError(f"synthetic generator {name!r} is registered twice")
        SYNTHETIC[name] = fn
        return fn
    return add


def generator(name: str) -> Generator:
    """The generator registered as ``name`` (its module imported first); a clear error lists the others."""
    for module in _MODULES:
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{module}":
                raise
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic anomaly {name!r}; choose one of {', '.join(sorted(SYNTHETIC))}")
    return SYNTHETIC[name]


@register_synthetic("mini_defects")
def mini_defects(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One of adnotes-mini's defect types (foreign patch, scratch, hole, stain, deformation), at random;
    another type when that one cannot be made visible here (a deformation of a flat region). The
    foreign patch's donor surface is the image itself, turned upside down and inverted."""
    from .mini import DEFECT_TYPES, apply_defect

    donor = np.ascontiguousarray(255 - image[::-1, ::-1])
    for kind in rng.permutation(DEFECT_TYPES):
        try:
            return apply_defect(image, str(kind), rng, donor)
        except RuntimeError:
            continue
    raise RuntimeError(f"no visible defect of any type fits this {image.shape} image: is it flat?")


def synthetic_records(dataset: ADDataset, kinds: str | Sequence[str], copies: int = 1,
                      seed: int = 0) -> list[Record]:
    """Generated views of every normal image of ``dataset``: ``copies`` per image and generator.

    Each view is an in-memory record at the dataset's image size (label 1, ``defect`` = the
    generator's name, its mask when the generator gives one)."""
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if copies < 1:
        raise ValueError(f"synthetic_copies={copies}: give at least 1 view per image and generator")
    generators = [generator(k) for k in kinds]
    size = (dataset.image_size, dataset.image_size)
    out = []
    for i in tqdm(range(len(dataset)), desc=f"synthetic {'+'.join(kinds)}", unit="image"):
        record = dataset.records[i]
        if record.label:
            continue
        image = np.asarray(dataset.load_image(i).resize(size, Image.BILINEAR))  # (S, S, 3) uint8
        for g, (kind, generate) in enumerate(zip(kinds, generators)):
            for k in range(copies):
                view, mask = generate(image.copy(), np.random.default_rng([seed, i, g, k]))
                out.append(Record(view, 1, record.cls, kind, None if mask is None else np.asarray(mask, bool)))
    return out


def with_synthetic(dataset: ADDataset, kinds: str | Sequence[str] | None, copies: int = 1,
                   seed: int = 0) -> ADDataset:
    """``dataset`` plus its generated views (unchanged when ``kinds`` is None or empty)."""
    if not kinds:
        return dataset
    label = kinds if isinstance(kinds, str) else "+".join(kinds)
    views = synthetic_records(dataset, kinds, copies, seed)
    return ADDataset(dataset.records + views, dataset.image_size, name=f"{dataset.name}+{label}x{copies}")
