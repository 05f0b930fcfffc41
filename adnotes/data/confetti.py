"""Confetti noise: FCDD's synthetic anomalies (Liznerski et al., ICLR 2021), as ADTR+ uses them.

    view, mask = confetti(image, np.random.default_rng(0))   # (H, W, 3) uint8 -> uint8, (H, W) bool

ADTR+ (notebooks/SOURCES.md §4.4; [secondary]: from reading notes of the paper) adds confetti noise to normal MVTec training
images and trains its push-pull loss on the noise footprint. ADTR gives no parameters of its own
(not found), so we take FCDD's "confetti" noise mode (``fcdd/datasets/noise_modes.py`` @ 452b078,
``noise.py`` and ``online_supervisor.py`` @ 308dafb), written here from its description:

- two layers of rotated squares ("blobs"; FCDD's default ``onlysquared``), side 8-54 px, rotation
  uniform in ±45°, later blobs of a layer overwrite earlier ones;
- layer 1 is coloured: one value per blob and channel, uniform in [-256, 0); layer 2 is dark: -255;
- the two layers are summed and smoothed with a Gaussian (kernel 25, σ 5), then added to the image
  and clamped to [0, 255];
- FCDD inverts the noise (adds it with the opposite sign) when adding it changes the image by less
  than 0.025 grey levels on average and inverting changes it more: dark images get bright blobs;
- the mask is the set of changed pixels (FCDD's ``malformed_normal_gt``).

Our choices, where FCDD's setting does not carry over:

- Blob count. FCDD draws blob centres per pixel (probability 1.8e-5 coloured, 1.2e-5 dark) and
  redraws a layer with no blob at all ("ensureblob"). On its 224×224 images that is 0.90 and 0.60
  expected blobs. We draw the count per image and layer from the same law, a Poisson of mean 0.90
  (0.60) conditioned on at least one blob: 1.52 + 1.33 ≈ 2.9 blobs per image, never none.
- Image size. All lengths (sides, σ, kernel) are FCDD's at 224 px and scale with the image's shorter
  side / 224, and the blob count stays per image, so the noise covers the same fraction of any
  image (MVTec at 256 px: sides 9-62 px; a 64-px test image: 2-15 px).
- Mask. "Changed noticeably": a pixel is anomalous when some channel changed by at least
  ``min_change`` grey levels (default 8, 3 % of the range); the faint Gaussian tails below that are
  set back to the original, so pixels outside the mask are exactly unchanged. FCDD counts any change
  (its tails reach ~12 px beyond a blob, mostly 1-2 grey levels, invisible).
- If an image can change by ``min_change`` in neither direction where the blobs fall, the noise is
  drawn again (this needs an almost flat, extreme image; we have not seen it happen).

Registered as ``data.synthetic: confetti`` (:mod:`adnotes.data.synthetic`).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .synthetic import register_synthetic

__all__ = ["confetti", "confetti_noise", "rotated_square", "REFERENCE_SIZE"]

REFERENCE_SIZE = 224               # FCDD's image size: the lengths below are at this size
SIDE_RANGE = (8, 54)               # blob side in px, inclusive (FCDD blobshaperange ((8, 8), (54, 54)))
MAX_ROTATION = 45.0                # degrees, uniform in ±45 (FCDD rotation=45)
COLOUR_BLOBS = 1.8e-5 * 224 ** 2   # ≈ 0.90 expected coloured blobs per image (FCDD p = 1.8e-5 per pixel)
DARK_BLOBS = 1.2e-5 * 224 ** 2     # ≈ 0.60 expected dark blobs per image (FCDD p = 1.2e-5 per pixel)
COLOUR_RANGE = (-256, 0)           # per blob and channel, integers in [-256, 0) (FCDD colorrange)
DARK_FILL = -255.0                 # FCDD fillval of the dark layer
SMOOTH_SIGMA = 5.0                 # Gaussian σ in px (FCDD smooth_noise(·, 25, 5))
SMOOTH_RADIUS = 12                 # kernel 25 = 2·12 + 1
INVERT_BELOW = 0.025               # mean |change| in grey levels under which the noise is inverted (FCDD)
MIN_CHANGE = 8                     # grey levels: the mask's "changed noticeably" (ours)
MAX_TRIES = 100


def rotated_square(height: int, width: int, centre: tuple[float, float], side: float, angle: float) -> np.ndarray:
    """(H, W) bool: pixels whose centre (y + ½, x + ½) lies inside the square of `side` px centred at
    `centre` = (y, x) and rotated by `angle` degrees."""
    y = np.arange(height)[:, None] + 0.5 - centre[0]
    x = np.arange(width)[None, :] + 0.5 - centre[1]
    t = np.deg2rad(angle)
    u, v = np.cos(t) * y + np.sin(t) * x, -np.sin(t) * y + np.cos(t) * x  # coordinates along the square's axes
    return (np.abs(u) < side / 2) & (np.abs(v) < side / 2)


def _count(mean: float, rng: np.random.Generator) -> int:
    """Poisson(mean) conditioned on >= 1 (FCDD redraws a layer without blobs)."""
    n = 0
    while n == 0:
        n = int(rng.poisson(mean))
    return n


def confetti_noise(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 signed noise (<= 0): a coloured and a dark layer of rotated squares,
    summed and Gaussian-smoothed. Lengths are FCDD's at 224 px scaled by min(H, W) / 224."""
    scale = min(height, width) / REFERENCE_SIZE
    lo, hi = (max(1, round(s * scale)) for s in SIDE_RANGE)
    noise = np.zeros((height, width, 3), np.float32)
    for mean, coloured in ((COLOUR_BLOBS, True), (DARK_BLOBS, False)):
        layer = np.zeros_like(noise)
        for _ in range(_count(mean, rng)):
            centre = (rng.uniform(0, height), rng.uniform(0, width))
            side = int(rng.integers(lo, hi + 1))
            angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
            value = rng.integers(*COLOUR_RANGE, size=3) if coloured else DARK_FILL
            layer[rotated_square(height, width, centre, side, angle)] = value  # later blobs overwrite
        noise += layer
    sigma = SMOOTH_SIGMA * scale
    return gaussian_filter(noise, sigma=(sigma, sigma, 0), truncate=SMOOTH_RADIUS / SMOOTH_SIGMA,
                           mode="reflect").astype(np.float32)


def _apply(image: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image.astype(np.float32) + noise), 0, 255).astype(np.uint8)


@register_synthetic("confetti")
def confetti(image: np.ndarray, rng: np.random.Generator, *,
             min_change: int = MIN_CHANGE) -> tuple[np.ndarray, np.ndarray]:
    """FCDD confetti noise on one image: (H, W, 3) uint8 -> (new image uint8, mask bool (H, W)).

    The mask holds the pixels where some channel changed by at least `min_change` grey levels;
    every other pixel is unchanged. The mask is never empty."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"confetti needs an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if min_change < 1:
        raise ValueError(f"min_change must be >= 1 grey level, got {min_change}")
    original = image.astype(np.int16)
    for _ in range(MAX_TRIES):
        noise = confetti_noise(*image.shape[:2], rng)
        darker, brighter = _apply(image, noise), _apply(image, -noise)
        change = np.abs(darker - original).mean()
        if change < INVERT_BELOW and np.abs(brighter - original).mean() > change:  # FCDD's inversion
            darker = brighter
        for view in (darker, brighter):  # FCDD's choice first; the other sign if it shows nothing
            mask = np.abs(view.astype(np.int16) - original).max(axis=2) >= min_change  # (H, W)
            if mask.any():
                view = view.copy()
                view[~mask] = image[~mask]  # faint tails back to the original
                return view, mask
    raise RuntimeError(f"confetti noise changed no pixel by {min_change} grey levels in {MAX_TRIES} draws; "
                       f"is the image ({image.shape}) almost flat? Lower min_change.")
