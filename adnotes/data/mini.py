"""adnotes-mini: a small, offline multi-class anomaly-detection dataset made from real photos.

MVTec-AD and VisA cannot be downloaded everywhere, so every lab can run on this dataset instead.
It is generated in seconds from photos that scikit-image ships (no network), and written in the
MVTec-AD layout so the same loaders read it::

    <root>/<class>/train/good/000.png
    <root>/<class>/test/good/000.png
    <root>/<class>/test/<defect_type>/000.png
    <root>/<class>/ground_truth/<defect_type>/000_mask.png      (binary 0/255, same H x W)
    <root>/<class>/twins/<defect_type>/000.png                  (the same crop without its defect)
    <root>/adnotes_mini.json                                    (manifest, see below)

Conventions:

* One class per source photo: brick, grass and moon (grey photos, tinted), tissue
  (immunohistochemistry), stars (Hubble deep field) and fundus (retina). The photo is cut into
  2 x 2 tiles with gaps; two diagonal tiles feed the training set, the other two the test set,
  so a test image never shares a pixel with a training image.
* A crop has a random position, rotation (any angle, quarter or half turns, per class), mirror
  flip and scale, and is resampled to ``image_size`` by one bicubic affine map. No two crops are
  pixel-identical, so a model cannot memorise the training tiles.
* Object classes (opt-in, ``make_mini(root, objects=True)``, the ``mini_objects`` dataset): cat,
  cup, rocket, astronaut and cameraman, each **one fixed view** (a square box around the photo's
  subject). Normal images vary only a little: a shift of up to 3 % of the side, a scale change of
  up to 5 %, a rotation of up to 3 degrees (no flips), brightness and contrast within 10 %
  (:data:`OBJECT_JITTER`), so context and position predict normal content, as on MVTec-AD's aligned
  objects. An object has one view: its train and test images come from the same view (the same
  photo pixels), unlike the textures. The six textures are written beside them, byte-identical to
  the default dataset of the same seed.
* Defects are synthetic, in the spirit of DRAEM / CutPaste: a foreign patch, a scratch, a hole, a
  stain and a deformation. Masks are exact: every pixel outside the mask is byte-identical to the
  clean crop (:func:`apply_defect` guarantees it by construction) and most pixels inside it
  changed. Sizes range from ~0.3 % to ~6 % of the image (scratches are thinner) and contrasts
  from subtle to obvious (:class:`MiniSettings`), so that a good model does not reach 100 %.
* Everything is deterministic from ``seed``: the same seed and parameters give byte-identical
  files. Boxes are ``[x0, y0, x1, y1]`` in pixels, half-open.
* ``adnotes_mini.json`` holds the generator version, seed and parameters (``params``), the photo
  and tiles of every class (``classes``), and one row per image (``images``: file, mask, crop box
  and affine map, defect type, bbox, area, strength, donor, twin), so
  ``pandas.DataFrame(manifest["images"])`` is a ready-made table of the dataset. Object rows
  also hold ``photometric`` = [gain, offset]: the image is round(gain * resampled + offset).
"""
from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from ..files import locked

__all__ = ["CLASSES", "TEXTURE_CLASSES", "OBJECT_CLASSES", "OBJECT_JITTER", "DEFECT_TYPES", "twin_path",
           "twin_records", "SIZES", "MiniSettings", "make_mini", "apply_defect", "source_images", "MANIFEST_NAME",
           "GENERATOR_VERSION"]

GENERATOR_VERSION = 3  # 3: clean twins of the defective test images. Bump whenever the generated pixels change for the same parameters
MANIFEST_NAME = "adnotes_mini.json"
SIZES = {"small": 20, "default": 60, "large": 120}  # test images per class; half of them defective
DEFECT_TYPES = ("foreign_patch", "scratch", "hole", "stain", "deformation")


Box = tuple[int, int, int, int]  # [x0, y0, x1, y1] in pixels, half-open


def _checkerboard(x0: int, y0: int, x1: int, y1: int, xgap: int = 16, ygap: int = 16
                  ) -> tuple[tuple[Box, ...], tuple[Box, ...]]:
    """Split a rectangle into 2 x 2 tiles separated by gaps: the top-left and bottom-right tiles
    for training, the other two for testing, so both splits see every part of the photo (its
    lighting, perspective and mix of content) and still share no pixel."""
    xm, ym = (x0 + x1) // 2, (y0 + y1) // 2
    left, right = (x0, xm - xgap // 2), (xm + xgap // 2, x1)
    top, bottom = (y0, ym - ygap // 2), (ym + ygap // 2, y1)

    def tile(xs: tuple[int, int], ys: tuple[int, int]) -> Box:
        return xs[0], ys[0], xs[1], ys[1]

    return (tile(left, top), tile(right, bottom)), (tile(right, top), tile(left, bottom))


@dataclass(frozen=True)
class _Source:
    """How one class is cut out of one scikit-image photo (boxes and crop side in photo pixels)."""
    name: str
    photo: str  # function name in skimage.data
    regions: tuple[tuple[Box, ...], tuple[Box, ...]]  # (train boxes, test boxes)
    crop: int  # side of a square crop before the scale jitter
    rotation: str = "any"  # "any" angle, "quarter" turns, or "half" turns (the photo has an up)
    duotone: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None  # grey 0 -> [0], 255 -> [1]
    view: Box | None = None  # object classes: the one fixed view (square); None for a texture


# Crop sides were chosen so that the training-free nearest-neighbour baseline of adnotes.demo finds
# every class hard but not hopeless: zoomed-in tissue (its tiles hold different glands) and
# full-resolution grass vary less from crop to crop than the alternatives tried.
_TILES_512 = _checkerboard(0, 0, 512, 512)
_SOURCES = (
    _Source("brick", "brick", _TILES_512, 160, "half", ((48, 20, 14), (236, 152, 118))),
    _Source("grass", "grass", _TILES_512, 236, "quarter", ((14, 34, 8), (176, 222, 124))),
    _Source("moon", "moon", _TILES_512, 160, "any", ((40, 42, 48), (225, 228, 235))),
    _Source("tissue", "immunohistochemistry", _TILES_512, 112),
    _Source("stars", "hubble_deep_field", _checkerboard(0, 0, 1000, 872), 224),
    # a band above and one below the macula, away from the optic disc and the black border
    _Source("fundus", "retina", _checkerboard(380, 180, 1100, 1240, ygap=220), 240),
)
CLASSES = tuple(s.name for s in _SOURCES)
TEXTURE_CLASSES = CLASSES


def _whole(width: int, height: int) -> tuple[tuple[Box], tuple[Box]]:
    return ((0, 0, width, height),), ((0, 0, width, height),)


# Object classes: one fixed square view around the subject, small enough that the jittered view (up to
# 1.05 x 1.051 of its side, shifted by 3 %, plus the bicubic reach) stays inside the photo. Their regions
# (the whole photo) and crop side only serve the "similar" foreign patches: a piece of the same photo at
# another scale and any angle (_donor); their other donors are the textures.
_GREY = ((0, 0, 0), (255, 255, 255))  # a grey photo kept grey
_OBJECTS = (
    _Source("cat", "chelsea", _whole(451, 300), 248, view=(106, 26, 354, 274)),
    _Source("cup", "coffee", _whole(600, 400), 336, view=(127, 32, 463, 368)),
    _Source("rocket", "rocket", _whole(640, 427), 276, view=(184, 124, 460, 400)),
    _Source("astronaut", "astronaut", _whole(512, 512), 430, view=(41, 41, 471, 471)),
    _Source("cameraman", "camera", _whole(512, 512), 430, duotone=_GREY, view=(41, 41, 471, 471)),
)
OBJECT_CLASSES = tuple(s.name for s in _OBJECTS)
_BY_NAME = {s.name: s for s in (*_SOURCES, *_OBJECTS)}
# how the normal images of an object vary around its view: shift (fraction of the side, per axis), scale
# (fraction), rotation (degrees), brightness and contrast (fractions), each drawn uniformly in +-value
OBJECT_JITTER = {"shift": 0.03, "scale": 0.05, "rotation": 3.0, "brightness": 0.1, "contrast": 0.1}


@dataclass(frozen=True)
class MiniSettings:
    """How hard the defects are (every defect draws its size and strength from these ranges), and
    how crops vary."""
    area: tuple[float, float] = (0.003, 0.06)  # blob area / image area, drawn log-uniformly
    strength: tuple[float, float] = (0.3, 1.0)  # contrast: 0 invisible, 1 obvious
    similar_donor: float = 0.5  # P(foreign patch = same photo at another scale, else another class)
    scratch_width: tuple[float, float] = (1.0, 3.5)  # pixels at image_size 224
    edge_alpha: float = 0.35  # opacity at a blob's edge; it ramps to 1 inward (no soft outer halo)
    min_contrast: float = 4.0  # a defect must change its mask by this many grey levels on average
    scale_jitter: float = 0.12  # crop side x exp(U(-j, j)), for normal images and defects alike
    png_compress_level: int = 3  # zlib level: 3 is ~3x faster to write than 6, files ~2 % larger


# --------------------------------------------------------------------------- source photos

@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data

    spec = _BY_NAME[name]
    image = getattr(skimage.data, spec.photo)()  # bundled with scikit-image: no download
    if image.ndim == 2:  # grey texture -> plausible colours with a two-colour ramp
        dark, light = (np.array(c, np.float32) for c in spec.duotone)
        image = dark + (light - dark) * (image[..., None].astype(np.float32) / 255)
        image = np.round(image).astype(np.uint8)
    image.setflags(write=False)
    return image  # (H, W, 3) uint8


def source_images() -> dict[str, np.ndarray]:
    """Class name (textures and objects) -> the scikit-image photo its crops come from, as (H, W, 3)
    uint8 RGB (grey textures already tinted the way the dataset shows them)."""
    return {name: _photo(name).copy() for name in (*CLASSES, *OBJECT_CLASSES)}


@functools.lru_cache(maxsize=None)
def _photo_pil(name: str) -> Image.Image:
    return Image.fromarray(_photo(name))


_SUPPORT = 2  # bicubic interpolation reads up to 2 photo pixels beyond a sample point


def _crop(name: str, split: int, side: float, image_size: int, jitter: float,
          rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A square crop of about ``side`` photo pixels from one of the split's boxes (0 train, 1 test),
    with a random position, rotation, mirror flip and scale ``exp(U(-jitter, jitter))``, resampled
    to ``image_size`` by one bicubic affine map.

    Returns the (S, S, 3) uint8 image and its record: ``affine``, the PIL AFFINE coefficients
    (output pixel (u, v) samples the photo at (a u + b v + c, d u + e v + f)), and ``crop``,
    the box of photo pixels it reads.
    """
    spec = _BY_NAME[name]
    boxes = spec.regions[split]
    x0, y0, x1, y1 = boxes[rng.integers(len(boxes))]
    side *= math.exp(rng.uniform(-jitter, jitter))
    if spec.rotation == "any":
        angle = rng.uniform(0, 2 * math.pi)
    else:
        turns = 4 if spec.rotation == "quarter" else 2
        angle = 2 * math.pi / turns * rng.integers(turns)
    flip = -1.0 if rng.integers(2) else 1.0
    cos, sin = math.cos(angle), math.sin(angle)
    span = abs(cos) + abs(sin)  # width of the rotated square's bounding box / its side
    side = min(side, (min(x1 - x0, y1 - y0) - 2 * _SUPPORT - 1) / span)  # big tilted crops: shrink
    half = side * span / 2 + _SUPPORT
    cx, cy = rng.uniform(x0 + half, x1 - half), rng.uniform(y0 + half, y1 - half)
    return _resample(name, cx, cy, side / image_size, cos, sin, flip, half, image_size)


def _resample(name: str, cx: float, cy: float, k: float, cos: float, sin: float, flip: float, half: float,
              image_size: int) -> tuple[np.ndarray, dict]:
    """The (S, S, 3) uint8 image whose centre samples the photo at (cx, cy), ``k`` photo pixels per output
    pixel, rotated by (cos, sin) and mirrored when ``flip`` is -1 (one bicubic affine map), and its record
    (``crop``: the photo pixels within ``half`` of the centre, ``affine``: the map, as :func:`_crop`)."""
    a, b, d, e = k * flip * cos, -k * sin, k * flip * sin, k * cos
    affine = [a, b, cx - (a + b) * image_size / 2, d, e, cy - (d + e) * image_size / 2]
    image = _photo_pil(name).transform((image_size, image_size), Image.AFFINE, affine, Image.BICUBIC)
    box = [math.floor(cx - half), math.floor(cy - half), math.ceil(cx + half), math.ceil(cy + half)]
    return np.asarray(image), {"crop": box, "affine": affine}


def _view(name: str, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A normal image of an object class: its fixed view, shifted, scaled and rotated a little and with
    its brightness and contrast changed a little (:data:`OBJECT_JITTER`; never flipped), resampled to
    ``image_size`` by one bicubic affine map. Returns the (S, S, 3) uint8 image and its record, that of
    :func:`_crop` plus ``photometric`` = [gain, offset]: image = round(gain * resampled + offset)."""
    j = OBJECT_JITTER
    x0, y0, x1, y1 = _BY_NAME[name].view  # square
    side = (x1 - x0) * (1 + rng.uniform(-j["scale"], j["scale"]))
    angle = math.radians(rng.uniform(-j["rotation"], j["rotation"]))
    cx = (x0 + x1) / 2 + (x1 - x0) * rng.uniform(-j["shift"], j["shift"])
    cy = (y0 + y1) / 2 + (y1 - y0) * rng.uniform(-j["shift"], j["shift"])
    cos, sin = math.cos(angle), math.sin(angle)
    half = side * (abs(cos) + abs(sin)) / 2 + _SUPPORT
    image, record = _resample(name, cx, cy, side / image_size, cos, sin, 1.0, half, image_size)
    contrast = 1 + rng.uniform(-j["contrast"], j["contrast"])      # about mid-grey
    brightness = 1 + rng.uniform(-j["brightness"], j["brightness"])
    gain, offset = brightness * contrast, brightness * (1 - contrast) * 128
    image = np.clip(np.round(gain * image.astype(np.float64) + offset), 0, 255).astype(np.uint8)
    return image, {**record, "photometric": [gain, offset]}


def _clean(name: str, split: int, image_size: int, s: MiniSettings, rng: np.random.Generator
           ) -> tuple[np.ndarray, dict]:
    """A normal image of any class and its record: a texture crop from the split's boxes, or an object's view."""
    spec = _BY_NAME[name]
    if spec.view is not None:
        return _view(name, image_size, rng)
    return _crop(name, split, spec.crop, image_size, s.scale_jitter, rng)


# --------------------------------------------------------------------------- defects
# Each defect maker takes the clean image (H, W, 3) float32, the generator, the donor image (only
# foreign_patch uses it), a strength in [0, 1] and an area in pixels, and returns the defective
# image (H, W, 3) float32 (apply_defect rounds it and keeps the clean pixels outside the mask) and
# the mask (H, W) bool.

def _blob(shape: tuple[int, int], rng: np.random.Generator, area: float) -> np.ndarray:
    """A hard-edged irregular blob of about ``area`` pixels: an ellipse whose radius wobbles with a
    few low harmonics. Returns a (H, W) bool mask (cut by the image border if it reaches it)."""
    h, w = shape
    r = math.sqrt(area / math.pi)
    stretch = math.exp(rng.uniform(-0.6, 0.6))
    a, b = r * stretch, r / stretch
    margin = min(max(a, b), min(h, w) / 2 - 1)
    centre = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    theta = np.arctan2(v / b, u / a)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += rng.uniform(0, 0.25 / k) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    mask = np.hypot(u / a, v / b) <= radius
    if not mask.any():  # a tiny blob that fell between pixel centres: keep its centre pixel
        mask[min(int(centre[0]), h - 1), min(int(centre[1]), w - 1)] = True
    return mask


def _inner_alpha(mask: np.ndarray, ramp: float, edge: float) -> np.ndarray:
    """Opacity that is ``edge`` on the blob's border pixels and rises to 1 over ``ramp`` pixels
    inward; exactly 0 outside. Softens edges without touching a pixel outside the mask."""
    inside = ndimage.distance_transform_edt(mask)  # 1 on border pixels, 0 outside
    ramp_up = np.clip((inside - 1) / max(ramp, 1e-6), 0, 1)
    return np.where(mask, edge + (1 - edge) * ramp_up, 0).astype(np.float32)  # (H, W)


def _foreign_patch(clean: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, strength: float,
                   area: float, s: MiniSettings) -> tuple[np.ndarray, np.ndarray]:
    """A piece of another surface pasted in. Low strength matches the donor's mean colour to the
    surrounding surface, so only its texture gives it away."""
    if donor is None or donor.shape != clean.shape:
        raise ValueError(f"foreign_patch needs a donor image of the same shape as the image "
                         f"{clean.shape}, got {None if donor is None else donor.shape}")
    mask = _blob(clean.shape[:2], rng, area)
    donor = donor.astype(np.float32)
    donor += (1 - strength) * (clean[mask].mean(0) - donor[mask].mean(0))  # colour matching
    alpha = _inner_alpha(mask, ramp=2, edge=s.edge_alpha)[..., None]
    return clean + alpha * (donor - clean), mask


def _scratch(clean: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, strength: float,
             area: float, s: MiniSettings) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved stroke (quadratic Bezier), brighter on dark surfaces and darker on light ones."""
    h, w = clean.shape[:2]
    scale = min(h, w) / 224
    length = rng.uniform(0.15, 0.6) * min(h, w)
    width = rng.uniform(*s.scratch_width) * scale
    start = rng.uniform(0.1, 0.9, 2) * (h, w)
    heading = rng.uniform(0, 2 * math.pi)
    end = start + length * np.array([math.sin(heading), math.cos(heading)])
    bend = start + (end - start) / 2 + rng.uniform(-0.35, 0.35) * length * np.array(
        [math.cos(heading), -math.sin(heading)])
    t = np.linspace(0, 1, int(4 * length) + 2)[:, None]
    points = np.round((1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t ** 2 * end).astype(int)
    points = points[(points[:, 0] >= 0) & (points[:, 0] < h) & (points[:, 1] >= 0) & (points[:, 1] < w)]
    line = np.zeros((h, w), bool)
    line[points[:, 0], points[:, 1]] = True  # the start lies inside, so the line is never empty
    to_line = ndimage.distance_transform_edt(~line)
    half = max(0.0, (width - 1) / 2)
    mask = to_line <= half
    profile = 1 - 0.5 * to_line / (half + 1)  # strongest on the centre line
    sign = 1.0 if clean[mask].mean() < 128 else -1.0
    delta = sign * (10 + 100 * strength) * profile
    return clean + np.where(mask, delta, 0)[..., None], mask


def _hole(clean: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, strength: float,
          area: float, s: MiniSettings) -> tuple[np.ndarray, np.ndarray]:
    """A dark pit: darkens toward a dark floor with depth, and shades the rim as if lit from one
    side (the inner wall facing the light brightens, the opposite wall darkens)."""
    mask = _blob(clean.shape[:2], rng, area)
    inside = ndimage.distance_transform_edt(mask)
    rim = max(1.5, 0.3 * math.sqrt(area / math.pi))
    depth = np.clip(inside / rim, 0, 1).astype(np.float32)  # > 0 on every mask pixel
    floor = 0.15 * clean + 12
    darkness = (0.4 + 0.6 * strength) * depth[..., None]
    out = clean + darkness * (floor - clean)
    light = rng.normal(size=2)
    light /= np.linalg.norm(light)
    gy, gx = np.gradient(ndimage.gaussian_filter(depth, 1.0))
    shade = -(gy * light[0] + gx * light[1]) * rim  # ~+-1 on the rim, 0 in the flat bottom
    out += np.where(mask, 70 * strength * np.clip(shade, -1, 1), 0)[..., None]
    return out, mask


_STAIN_COLOURS = np.array([[150, 75, 30], [95, 60, 35], [205, 175, 70], [45, 60, 150],
                           [95, 125, 45], [230, 225, 215], [25, 20, 20]], np.float32)


def _stain(clean: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, strength: float,
           area: float, s: MiniSettings) -> tuple[np.ndarray, np.ndarray]:
    """A tinted, translucent blob (rust, coffee, oil, ink, ...) with soft inner edges."""
    mask = _blob(clean.shape[:2], rng, area)
    mean = clean[mask].mean(0)
    far = _STAIN_COLOURS[np.abs(_STAIN_COLOURS - mean).max(1) >= 60]  # visibly different colours
    colour = far[rng.integers(len(far))] if len(far) else 255 - mean
    ramp = 0.3 * math.sqrt(area / math.pi)
    alpha = _inner_alpha(mask, ramp=ramp, edge=s.edge_alpha)[..., None]
    return clean + (0.1 + 0.65 * strength) * alpha * (colour - clean), mask


def _deformation(clean: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None, strength: float,
                 area: float, s: MiniSettings) -> tuple[np.ndarray, np.ndarray]:
    """A local bulge, pinch or swirl of the surface. The displacement falls smoothly to 0 at radius
    R; the mask is where it is >= 0.5 px, and the image is left untouched everywhere else."""
    h, w = clean.shape[:2]
    radius = max(12 * min(h, w) / 224, 1.5 * math.sqrt(area / math.pi))  # mask: ~1.3x area
    margin = min(radius, min(h, w) / 2 - 1)
    # a warp of a flat area changes nothing: of a few random centres, take the one with the most
    # edges (mean squared gradient) within the radius
    grey = clean.mean(-1)
    edges = ndimage.uniform_filter(ndimage.sobel(grey, 0) ** 2 + ndimage.sobel(grey, 1) ** 2, int(radius))
    candidates = rng.uniform(margin, (h - margin, w - margin), (16, 2))
    cy, cx = candidates[np.argmax(edges[candidates[:, 0].astype(int), candidates[:, 1].astype(int)])]

    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    falloff = np.clip(1 - np.hypot(dy, dx) / radius, 0, 1) ** 2  # 1 at the centre, 0 beyond R
    kind = rng.integers(3)
    if kind < 2:  # bulge (samples pulled toward the centre) or pinch (pushed away)
        k = (0.45 + 0.45 * strength) * (1 if kind == 0 else -1)  # max shift 4/27 * k * R
        sy, sx = cy + dy * (1 - k * falloff), cx + dx * (1 - k * falloff)
    else:  # swirl: rotate by an angle that fades with the distance
        phi = rng.choice((-1, 1)) * (1 + 3 * strength) * falloff
        sy = cy + dx * np.sin(phi) + dy * np.cos(phi)
        sx = cx + dx * np.cos(phi) - dy * np.sin(phi)
    mask = np.hypot(sy - yy, sx - xx) >= 0.5
    warped = np.stack([ndimage.map_coordinates(clean[..., c], [sy, sx], order=1, mode="nearest")
                       for c in range(clean.shape[2])], -1)
    return np.where(mask[..., None], warped, clean), mask


_TRIES = 20
MIN_CHANGED = 0.5  # at least this fraction of a mask's pixels differ from the clean image
_DEFECTS = dict(zip(DEFECT_TYPES, (_foreign_patch, _scratch, _hole, _stain, _deformation)))


def apply_defect(image: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray | None = None,
                 *, strength: float | None = None, settings: MiniSettings = MiniSettings()
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Add one synthetic defect to ``image`` (H, W, 3) uint8.

    ``donor`` (H, W, 3) uint8 is the surface pasted in by ``foreign_patch`` (ignored otherwise).
    ``strength`` in [0, 1] defaults to a draw from ``settings.strength``; the size is drawn from
    ``settings.area``. Returns ``(defective, mask)``: (H, W, 3) uint8 and (H, W) bool, with every
    pixel outside ``mask`` identical to ``image``. Inside it at least ``MIN_CHANGED`` of the pixels
    change, by ``settings.min_contrast`` grey levels on average (else the defect is drawn again,
    stronger).
    """
    defective, mask, _ = _apply_defect(image, kind, rng, donor, strength, settings)
    return defective, mask


def _apply_defect(image: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray | None,
                  strength: float | None, settings: MiniSettings) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`apply_defect`, also returning the strength finally used."""
    if kind not in _DEFECTS:
        raise ValueError(f"unknown defect type {kind!r}; choose one of {', '.join(DEFECT_TYPES)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if strength is None:
        strength = float(rng.uniform(*settings.strength))
    low, high = settings.area
    clean = image.astype(np.float32)
    # an invisible defect (a swirl of black sky, a look-alike patch) is drawn again elsewhere,
    # a little stronger each time
    for attempt in range(_TRIES):
        boosted = min(1.0, strength + attempt / (_TRIES - 1))
        area = math.exp(rng.uniform(math.log(low), math.log(high))) * image.shape[0] * image.shape[1]
        out, mask = _DEFECTS[kind](clean, rng, donor, boosted, area, settings)
        out = np.where(mask[..., None], np.clip(np.round(out), 0, 255).astype(np.uint8), image)
        change = np.abs(out.astype(np.int16) - image).max(-1)[mask]  # per mask pixel, grey levels
        if change.size and (change > 0).mean() >= MIN_CHANGED and change.mean() >= settings.min_contrast:
            return out, mask, boosted
    raise RuntimeError(f"could not make a visible {kind} on this {image.shape} image in {_TRIES} "
                       "tries: is the image flat, or too small?")


# --------------------------------------------------------------------------- the dataset

def _counts(size: str | int) -> dict[str, int]:
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}: use one of {', '.join(SIZES)} or a number of "
                             "test images per class (>= 2)")
        size = SIZES[size]
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be a preset ({', '.join(SIZES)}) or an int >= 2 "
                         f"(test images per class), got {size!r}")
    size = int(size)
    return {"n_train": size + size // 3, "n_test_good": size - size // 2, "n_test_defect": size // 2}


def _donor(name: str, similar: bool, image_size: int, s: MiniSettings, rng: np.random.Generator
           ) -> tuple[np.ndarray, str]:
    """The surface a foreign patch is cut from: the same photo at another scale (``similar``, hard)
    or another texture class (easy), always from test boxes, so no training pixel of a texture leaks into
    the test set (an object has one view: its test boxes are the whole photo)."""
    if similar:
        scale = float(rng.choice((0.6, 1.6)))
        image, _ = _crop(name, 1, _BY_NAME[name].crop * scale, image_size, s.scale_jitter, rng)
        return image, f"{name}@x{scale:g}"
    other = str(rng.choice([c for c in CLASSES if c != name]))
    image, _ = _crop(other, 1, _BY_NAME[other].crop, image_size, s.scale_jitter, rng)
    return image, other


def _save_png(array: np.ndarray, path: Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=level)


def _defective_crop(name: str, kind: str, image_size: int, s: MiniSettings, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """A test crop with one defect of ``kind``, its mask, its clean twin (the same crop without the
    defect) and record. A crop that cannot show the defect (a swirl of flat sky, a smooth surface
    pasted onto itself) is replaced by another."""
    for _ in range(5):
        clean, record = _clean(name, 1, image_size, s, rng)
        donor = None
        if kind == "foreign_patch":
            donor, record["donor"] = _donor(name, rng.random() < s.similar_donor, image_size, s, rng)
        try:
            image, mask, record["strength"] = _apply_defect(clean, kind, rng, donor, None, s)
        except RuntimeError:
            continue
        return image, mask, clean, record
    raise RuntimeError(f"could not place a visible {kind} on 5 crops of {name}")


def _generate(folder: Path, seed: int, counts: dict[str, int], image_size: int, s: MiniSettings,
              bar: tqdm, classes: tuple[str, ...] = CLASSES) -> list[dict]:
    """Write every class of ``classes`` (the textures, then any objects) into ``folder``; return one
    manifest row per image."""
    rows = []
    for c, name in enumerate(classes):
        jobs = ([("train", "good", i) for i in range(counts["n_train"])]
                + [("test", "good", i) for i in range(counts["n_test_good"])]
                + [("test", DEFECT_TYPES[i % len(DEFECT_TYPES)], i // len(DEFECT_TYPES))
                   for i in range(counts["n_test_defect"])])
        for split, kind, i in jobs:
            # one stream per image: each file depends only on (seed, class, split, kind, index)
            split_index = ("train", "test").index(split)
            rng = np.random.default_rng([seed, c, split_index, (("good",) + DEFECT_TYPES).index(kind), i])
            file = f"{name}/{split}/{kind}/{i:03d}.png"
            row = {"class": name, "split": split, "defect_type": kind, "file": file, "mask": None, "twin": None,
                   "bbox": None, "area": 0, "strength": None, "donor": None}  # + crop, affine
            if kind == "good":
                image, record = _clean(name, split_index, image_size, s, rng)
            else:
                image, mask, clean, record = _defective_crop(name, kind, image_size, s, rng)
                ys, xs = np.nonzero(mask)
                row.update(mask=f"{name}/ground_truth/{kind}/{i:03d}_mask.png", area=int(mask.sum()),
                           bbox=[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                           twin=twin_path(name, kind, f"{i:03d}.png"))
                record["strength"] = round(record["strength"], 4)
                _save_png(mask.astype(np.uint8) * 255, folder / row["mask"], s.png_compress_level)
                _save_png(clean, folder / row["twin"], s.png_compress_level)
            row.update(record)
            _save_png(image, folder / file, s.png_compress_level)
            rows.append(row)
            bar.update()
    return rows


def twin_path(cls: str, defect: str, name: str) -> str:
    """Where the clean twin of the defective test image ``<cls>/test/<defect>/<name>`` is, relative to the root:
    beside the MVTec folders (``twins/`` is no split or class folder), so the loaders never see it."""
    return f"{cls}/twins/{defect}/{name}"


def twin_records(test_records: list) -> list:
    """Records of the clean twins of a test split's defective images, in the split's order (label 0, the
    defect type kept): what :func:`adnotes.copying.twin_probe` pairs with the defective images."""
    from .datasets import Record

    records = []
    for r in test_records:
        if r.label:
            root, cls = r.image.parents[3], r.image.parents[2].name  # <root>/<cls>/test/<defect>/<name>
            path = root / twin_path(cls, r.defect, r.image.name)
            if not path.is_file():
                raise FileNotFoundError(
                    f"no clean twin of {r.image} at {path}: twins exist only in adnotes-mini made by generator "
                    f"version >= 3. Delete {root} and run `python -m adnotes data mini --root {root}` to remake it.")
            records.append(Record(path, 0, r.cls, r.defect))
    return records


def _params(seed: int, size: str | int, image_size: int, settings: MiniSettings, objects: bool = False) -> dict:
    params = {"generator": "adnotes.data.mini", "version": GENERATOR_VERSION, "seed": seed,
              "size": size, **_counts(size), "image_size": image_size, "settings": asdict(settings)}
    if objects:  # recorded only when on: the default dataset's parameters stay as they were
        params["objects"] = {"classes": OBJECT_CLASSES, "jitter": OBJECT_JITTER,
                             "views": "train and test images of an object come from its one fixed view"}
    return json.loads(json.dumps(params))  # tuples -> lists, as they come back from the file


def make_mini(root: str | Path, *, seed: int = 0, size: str | int = "default", image_size: int = 224,
              settings: MiniSettings = MiniSettings(), objects: bool = False) -> Path:
    """Generate adnotes-mini into ``root`` (MVTec-AD layout) and return ``root``.

    ``size`` is the number of test images per class (half of them defective, spread over
    :data:`DEFECT_TYPES`) or a preset of :data:`SIZES`; the training set has 4/3 as many normal
    images. ``objects`` adds the object classes (:data:`OBJECT_CLASSES`) beside the textures, whose
    files stay byte-identical to those of ``objects=False``.
    If ``root`` already holds adnotes-mini made with the same parameters it is reused as is.
    A folder with anything else in it is never touched: that raises ``RuntimeError``.
    """
    root = Path(root).expanduser()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    params = _params(seed, size, image_size, settings, bool(objects))
    root.parent.mkdir(parents=True, exist_ok=True)
    # one writer at a time (the parent folder is the lock): a second process, e.g. two trainings started
    # together, waits and then reuses the dataset the first one wrote
    with locked(root.parent):
        return _make_locked(root, seed, size, image_size, settings, params)


def _make_locked(root: Path, seed: int, size: str | int, image_size: int, settings: MiniSettings,
                 params: dict) -> Path:
    classes = (*CLASSES, *OBJECT_CLASSES) if "objects" in params else CLASSES
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())["params"]
        except (ValueError, KeyError) as error:
            raise RuntimeError(f"{manifest} is unreadable ({error}). If {root} is an old "
                               "adnotes-mini, delete that folder; otherwise pick another root.") from None
        if found == params:
            check_mini(root)
            return root
        changed = sorted(k for k in set(found) | set(params) if found.get(k) != params.get(k))
        raise RuntimeError(
            f"{root} holds adnotes-mini made with other parameters (differing: {', '.join(changed)}). "
            "It is not overwritten: pick another root for these parameters, or delete that folder "
            "to regenerate it.")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise RuntimeError(
            f"{root} exists and is not an adnotes-mini dataset (no {MANIFEST_NAME}); it is left "
            "untouched. Pick another root: a missing or empty folder.")

    # write into a hidden sibling and rename at the end: an interrupted run leaves no half dataset
    partial = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        total = len(classes) * (params["n_train"] + params["n_test_good"] + params["n_test_defect"])
        with tqdm(total=total, desc="adnotes-mini", unit="img") as bar:
            rows = _generate(partial, seed, _counts(size), image_size, settings, bar, classes)
        regions = {s.name: {"source": f"skimage.data.{s.photo}", "train_boxes": s.regions[0],
                            "test_boxes": s.regions[1], "crop_side": s.crop, "rotation": s.rotation}
                   for s in _SOURCES}
        regions |= {name: {"source": f"skimage.data.{_BY_NAME[name].photo}", "kind": "object",
                           "view_box": _BY_NAME[name].view, "views": "train and test: the same view"}
                    for name in classes if name not in CLASSES}
        content = {"params": params, "box_format": "[x0, y0, x1, y1], pixels, half-open",
                   "classes": regions, "defect_types": list(DEFECT_TYPES), "images": rows}
        (partial / MANIFEST_NAME).write_text(json.dumps(content, indent=1))
        if root.is_dir():
            root.rmdir()  # empty (checked above)
        partial.rename(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return root


def check_mini(root: str | Path) -> None:
    """Raise unless every file the manifest of adnotes-mini at ``root`` lists (image, mask, clean
    twin) is there: a folder with a file deleted is not a usable dataset."""
    root = Path(root)
    try:
        rows = json.loads((root / MANIFEST_NAME).read_text())["images"]
    except (OSError, ValueError, KeyError) as error:
        raise RuntimeError(f"{root / MANIFEST_NAME} is unreadable ({error}); delete {root} to regenerate "
                           "adnotes-mini.") from None
    listed = [row[key] for row in rows for key in ("file", "mask", "twin") if row.get(key)]
    if missing := [rel for rel in listed if not (root / rel).is_file()]:
        raise FileNotFoundError(
            f"{root} is an incomplete adnotes-mini: {missing[0]} and {len(missing) - 1} more of the "
            f"{len(listed)} files {MANIFEST_NAME} lists are missing. Delete {root} to regenerate it "
            "(on first use, or `python -m adnotes data mini`).")
