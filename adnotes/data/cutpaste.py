"""CutPaste views (Li et al., CVPR 2021) as used by HaloAE's SSL task (notebooks/SOURCES.md §5.4).

    view, mask = cutpaste_normal(image, rng)   # (H, W, 3) uint8 -> (H, W, 3) uint8, (H, W) bool
    view, mask = cutpaste_scar(image, rng)

Both copy a patch of the image, colour-jitter it and paste it elsewhere; HaloAE's classifier
learns "original (0) or CutPaste view (1)". Settings of the HaloAE code (`dataset/cutpaste.py`,
after LilitYolyan/CutPaste):

- normal: patch area U(2 %, 15 %) of the image, aspect ratio w/h log-uniform in [0.3, 1/0.3],
  taken at a random place and pasted at a random place (a rectangle);
- scar: width U(2, 16) px, height U(10, 25) px (at the paper's 256² images; we keep pixels),
  rotated by U(−45°, 45°) (nearest, canvas expanded) and pasted through its own alpha mask;
- patch colour jitter 0.1: brightness, contrast, saturation factors U(0.9, 1.1) and a hue
  shift U(−0.1, 0.1) of a turn, in random order (torchvision's ``ColorJitter(0.1, 0.1, 0.1, 0.1)``
  on PIL images, written here with PIL so that a NumPy generator drives every draw).

Not here: the code's ColorJitter of the WHOLE image before the three views (originals included);
this is train-set augmentation, and the trainer's originals are the plain images.

Both return the mask of the pasted area (HaloAE's loss uses image labels only; the mask
shows where the view differs, for plots and tests). The pasted pixels can equal the old ones.
Generators register in :data:`adnotes.data.synthetic.SYNTHETIC` (``data.synthetic: [cutpaste_normal,
cutpaste_scar]`` with ``synthetic_copies: 1`` gives HaloAE's 1 original : 2 views).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from .synthetic import register_synthetic

__all__ = ["cutpaste_normal", "cutpaste_scar", "color_jitter", "NORMAL_AREA", "NORMAL_ASPECT",
           "SCAR_WIDTH", "SCAR_HEIGHT", "SCAR_ROTATION", "JITTER"]

NORMAL_AREA = (0.02, 0.15)     # patch area / image area
NORMAL_ASPECT = 0.3            # w/h log-uniform in [0.3, 1/0.3]
SCAR_WIDTH = (2.0, 16.0)       # px
SCAR_HEIGHT = (10.0, 25.0)     # px
SCAR_ROTATION = (-45.0, 45.0)  # degrees
JITTER = 0.1                   # brightness, contrast, saturation, hue


def color_jitter(patch: Image.Image, rng: np.random.Generator, strength: float = JITTER) -> Image.Image:
    """torchvision-style ColorJitter(b, c, s, h = strength) of an RGB PIL image, drawn from ``rng``."""
    def hue(img: Image.Image, shift: float) -> Image.Image:
        h, s, v = img.convert("HSV").split()
        h = Image.fromarray(((np.asarray(h, np.int16) + round(shift * 255)) % 256).astype(np.uint8), "L")
        return Image.merge("HSV", (h, s, v)).convert("RGB")

    ops = [lambda img, f: ImageEnhance.Brightness(img).enhance(f),
           lambda img, f: ImageEnhance.Contrast(img).enhance(f),
           lambda img, f: ImageEnhance.Color(img).enhance(f),   # saturation
           hue]
    draws = [rng.uniform(1 - strength, 1 + strength) for _ in range(3)] + [rng.uniform(-strength, strength)]
    for i in rng.permutation(4):
        patch = ops[i](patch, draws[i])
    return patch


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")


@register_synthetic("cutpaste_normal")
def cutpaste_normal(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-normal: a jittered rectangle of 2-15 % of the image, aspect 0.3-3.3, moved elsewhere."""
    _check(image)
    H, W = image.shape[:2]
    area = rng.uniform(*NORMAL_AREA) * H * W
    aspect = math.exp(rng.uniform(math.log(NORMAL_ASPECT), -math.log(NORMAL_ASPECT)))  # w / h
    w = min(W, max(1, round(math.sqrt(area * aspect))))
    h = min(H, max(1, round(math.sqrt(area / aspect))))
    y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)  # where it is cut
    y1, x1 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)  # where it is pasted
    patch = color_jitter(Image.fromarray(image[y0:y0 + h, x0:x0 + w]), rng)
    out, mask = image.copy(), np.zeros((H, W), bool)
    out[y1:y1 + h, x1:x1 + w] = np.asarray(patch)
    mask[y1:y1 + h, x1:x1 + w] = True
    return out, mask


@register_synthetic("cutpaste_scar")
def cutpaste_scar(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste-scar: a thin jittered strip (2-16 × 10-25 px), rotated ±45°, pasted through its alpha."""
    _check(image)
    H, W = image.shape[:2]
    w = min(W, max(1, round(rng.uniform(*SCAR_WIDTH))))
    h = min(H, max(1, round(rng.uniform(*SCAR_HEIGHT))))
    y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
    patch = color_jitter(Image.fromarray(image[y0:y0 + h, x0:x0 + w]), rng).convert("RGBA")
    patch = patch.rotate(rng.uniform(*SCAR_ROTATION), resample=Image.NEAREST, expand=True)
    rgba = np.asarray(patch)[:H, :W]                          # (h', w', 4); alpha 255 inside the strip
    ph, pw = rgba.shape[:2]
    y1, x1 = rng.integers(0, H - ph + 1), rng.integers(0, W - pw + 1)
    inside = rgba[..., 3] > 0                                 # (h', w')
    out, mask = image.copy(), np.zeros((H, W), bool)
    region = out[y1:y1 + ph, x1:x1 + pw]
    region[inside] = rgba[..., :3][inside]
    mask[y1:y1 + ph, x1:x1 + pw] = inside
    return out, mask
