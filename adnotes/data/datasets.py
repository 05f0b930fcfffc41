"""Datasets of the multi-class (unified) anomaly-detection protocol.

Industrial AD (MVTec-AD, VisA, Real-IAD, adnotes-mini): one training set made of the normal images
of *all* classes, and a test set per class with normal and defective images and pixel masks
(UniAD §4.1, "unified" setting). Real-IAD (:mod:`adnotes.data.realiad`) is multi-view: every
object is 5 images, one per camera, and also scored per object. Semantic AD (CIFAR-10, digits):
a set of classes is normal and the rest anomalous (UniAD Tab. 3, many-vs-many); there are no
pixel masks.

Every source is read into a list of :class:`Record` and served by :class:`ADDataset`, whose items
are the papers' transforms: resize to ``image_size`` (bilinear), ImageNet normalisation; masks
resized with nearest neighbour (UniAD `datasets/custom_dataset.py`).
"""
from __future__ import annotations

import csv
import hashlib
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}

MVTEC_CLASSES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                 "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
VISA_CLASSES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
                "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

MVTEC_LAYOUT = """\
  <root>/<class>/train/good/*.png
  <root>/<class>/test/good/*.png
  <root>/<class>/test/<defect>/*.png
  <root>/<class>/ground_truth/<defect>/<name>_mask.png"""


@dataclass(frozen=True)
class Record:
    """One image of a dataset: where it is, its label and, for a defect, its mask."""

    image: Path | np.ndarray  # a file, or an in-memory (H, W, 3) uint8 array (semantic AD)
    label: int                # 0 normal, 1 anomalous
    cls: str                  # class name; for semantic AD the name of the normal set
    defect: str = "good"
    mask: Path | np.ndarray | None = None  # a file or an (H, W) bool array; None: all-normal (or no pixel labels)


def _missing(root: Path, what: str, layout: str, where: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found at {root}.\nExpected layout:\n{layout}\n{where}"
    )


# --------------------------------------------------------------------------- MVTec layout

def mvtec_records(root: str | Path, split: str, classes: Sequence[str] | None = None) -> list[Record]:
    """Records of a dataset in the MVTec-AD layout (MVTec-AD, converted VisA, adnotes-mini).

    ``split`` is "train" (normal images of every class: the unified training set) or "test".
    ``classes`` defaults to every class folder found under ``root``.
    """
    root = Path(root)
    where = ("Get MVTec-AD with `python -m adnotes data get mvtec --root DIR` "
             "(https://www.mvtec.com/company/research/datasets/mvtec-ad), or make the offline "
             "dataset with `python -m adnotes data mini --root DIR`.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    # a class folder has a train or a test split (one without train/good images is an error below)
    found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir()) \
        if root.is_dir() else []
    if not found:
        raise _missing(root, "A dataset in the MVTec-AD layout", MVTEC_LAYOUT, where)
    classes = list(classes) if classes is not None else found
    if unknown := sorted(set(classes) - set(found)):
        raise _missing(root / unknown[0], f"Class folder(s) {unknown} (found: {found})", MVTEC_LAYOUT, where)

    records = []
    for cls in classes:
        normal = root / cls / "train" / "good"
        if not (normal.is_dir() and _images(normal)):
            raise _missing(normal, f"No normal training images of class {cls!r}", MVTEC_LAYOUT,
                           "Every class needs its train/good images; add them, or leave the class out "
                           "(classes=[...], config data.classes).")
        split_dir = root / cls / split
        if not split_dir.is_dir():
            raise _missing(split_dir, f"The {split} split of class {cls!r}", MVTEC_LAYOUT, where)
        for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            defect = defect_dir.name
            for image in _images(defect_dir):
                if defect == "good":
                    records.append(Record(image, 0, cls))
                    continue
                mask = root / cls / "ground_truth" / defect / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise _missing(mask, f"The mask of {image}", MVTEC_LAYOUT, where)
                records.append(Record(image, 1, cls, defect, mask))
    if split == "test" and not any(r.label for r in records):
        raise ValueError(f"The test split under {root} has no defective image: is it complete?")
    return records


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- VisA (raw)

VISA_LAYOUT = """\
  <root>/split_csv/1cls.csv            (columns: object,split,label,image,mask)
  <root>/<class>/Data/Images/{Normal,Anomaly}/*.JPG
  <root>/<class>/Data/Masks/Anomaly/*.png"""


def visa_records(root: str | Path, split: str, classes: Sequence[str] | None = None) -> list[Record]:
    """Records of VisA's own 1cls protocol, read from ``split_csv/1cls.csv``.

    A VisA folder already converted to the MVTec layout (``python -m adnotes data get visa``
    writes ``visa_pytorch/``) is read with :func:`mvtec_records` instead.
    """
    root = Path(root)
    table = root / "split_csv" / "1cls.csv"
    if not table.is_file():
        if root.is_dir() and any((p / "train").is_dir() for p in root.iterdir()):
            return mvtec_records(root, split, classes)
        raise _missing(root, "VisA", VISA_LAYOUT,
                       "Get it with `python -m adnotes data get visa --root DIR` "
                       "(https://github.com/amazon-science/spot-diff).")
    with open(table, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    if classes is not None:
        rows = [r for r in rows if r["object"] in set(classes)]
    records = []
    for r in rows:
        anomalous = r["label"] == "anomaly"
        image = root / r["image"]
        mask = root / r["mask"] if anomalous and r.get("mask") else None
        for path in (image, mask):
            if path is not None and not path.is_file():
                raise _missing(path, "A file listed in split_csv/1cls.csv", VISA_LAYOUT,
                               "The VisA folder looks incomplete: extract the archive again.")
        records.append(Record(image, int(anomalous), r["object"], "bad" if anomalous else "good", mask))
    return records


# --------------------------------------------------------------------------- semantic AD

def cifar10_records(root: str | Path, split: str, normal: Sequence[int]) -> list[Record]:
    """CIFAR-10 many-vs-many (UniAD Tab. 3): ``normal`` classes are normal, the others anomalous.

    Reads the standard python pickle batches (``data_batch_1..5``, ``test_batch``) from ``root``
    (the ``cifar-10-batches-py`` folder). Train: the normal classes' training images. Test: every
    test image (5 000 normal + 5 000 anomalous for 5 normal classes, as UniAD's sampling amounts to).
    """
    root = Path(root)
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in files:
        path = root / name
        if not path.is_file():
            raise _missing(path, "CIFAR-10 (python version)",
                           "  <root>/data_batch_1 … data_batch_5, <root>/test_batch",
                           "Get it with `python -m adnotes data get cifar10 --root DIR` "
                           "(https://www.cs.toronto.edu/~kriz/cifar.html).")
        batch = _load_batch(path)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"]))
    return _semantic(np.concatenate(images), np.concatenate(labels), split, normal, "cifar10")


# The only globals a CIFAR-10 batch names: numpy's array reconstruction (numpy 1 and 2 spell its
# module differently) and, in pickles of protocol 2 written by Python 3, the bytes codec.
_BATCH_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: any other global (a function to call, a
    class to build) is refused before it is looked up, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _BATCH_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    """One CIFAR-10 python batch: a dict with b"data" (N, 3072) uint8 and b"labels" (N,)."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a refused global, a truncated or foreign file
        raise ValueError(f"{path} is not a CIFAR-10 batch ({type(e).__name__}: {e}); it was not "
                         "executed. Delete the folder and get it again with "
                         "`python -m adnotes data get cifar10 --root DIR`.") from None
    if not (isinstance(batch, dict) and {b"data", b"labels"} <= set(batch)):
        raise ValueError(f"{path} is not a CIFAR-10 batch (expected a dict with b'data' and b'labels'); "
                         "get it again with `python -m adnotes data get cifar10 --root DIR`.")
    return batch


def digits_records(split: str, normal: Sequence[int], seed: int = 0) -> list[Record]:
    """scikit-learn's 8×8 digits as the offline stand-in for CIFAR-10, same protocol.

    The 1 797 images are split half/half into train and test, stratified by digit, with ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.repeat((digits.images * (255 / 16)).astype(np.uint8)[..., None], 3, axis=-1)  # (N, 8, 8, 3)
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=0.5,
                                           stratify=digits.target, random_state=seed)
    idx = idx_train if split == "train" else idx_test
    return _semantic(images[idx], digits.target[idx], split, normal, "digits")


def _semantic(images: np.ndarray, labels: np.ndarray, split: str, normal: Sequence[int], name: str) -> list[Record]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    normal = set(int(c) for c in normal)
    if not normal or not normal < set(int(c) for c in np.unique(labels)):
        raise ValueError(f"normal classes {sorted(normal)} must be a non-empty proper subset of the labels")
    cls = f"{name}-" + "".join(str(c) for c in sorted(normal))
    keep = [i for i, y in enumerate(labels) if split == "test" or int(y) in normal]
    return [Record(images[i], int(int(labels[i]) not in normal), cls,
                   "good" if int(labels[i]) in normal else f"class{int(labels[i])}") for i in keep]


# --------------------------------------------------------------------------- the dataset

class ADDataset(Dataset):
    """Images (and masks) of a list of records, transformed as in the papers.

    Item: ``{"image": (3, S, S) float, "mask": (1, S, S) float in {0, 1}, "label": int,
    "cls": str, "index": int}`` with S = ``image_size``. Semantic-AD records have no pixel
    labels: ``has_masks`` is False and their masks are all zero.
    """

    def __init__(self, records: Sequence[Record], image_size: int = 224, name: str = "dataset"):
        if not records:
            raise ValueError(f"{name}: no images")
        self.records = list(records)
        self.image_size = image_size
        self.name = name
        # Semantic AD (in-memory images, no masks) has no pixel labels; generated anomalies carry theirs.
        self.has_masks = any(not isinstance(r.image, np.ndarray) or r.mask is not None for r in self.records)
        self.classes = sorted({r.cls for r in self.records})
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records])

    def load_image(self, index: int) -> Image.Image:
        """The image as stored (RGB, original size)."""
        r = self.records[index]
        if isinstance(r.image, np.ndarray):
            return Image.fromarray(r.image)
        return _rgb(_open(r.image), r.image)

    def load_mask(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """The (H, W) bool mask (any non-zero pixel is defect) at the stored image's ``size`` (W, H)."""
        r = self.records[index]
        if r.mask is None:
            return np.zeros(size[::-1], dtype=bool)
        mask = np.asarray(r.mask, dtype=bool) if isinstance(r.mask, np.ndarray) else _nonzero(_open(r.mask))
        if mask.shape != size[::-1]:
            raise ValueError(f"mask {r.mask} is {mask.shape[1]}×{mask.shape[0]} but its image {r.image} "
                             f"is {size[0]}×{size[1]}: they must have the same size")
        return mask

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        image = self.load_image(index)
        mask = self.load_mask(index, image.size)
        s = self.image_size
        image = image.resize((s, s), Image.BILINEAR)
        mask = Image.fromarray(mask).resize((s, s), Image.NEAREST)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        return {
            "image": (x - self._mean) / self._std,                              # (3, S, S)
            "mask": torch.from_numpy(np.asarray(mask, dtype=np.float32))[None],  # (1, S, S)
            "label": r.label,
            "cls": r.cls,
            "index": index,
        }

    def fingerprint(self) -> str:
        """A short hash of the files (path, size, mtime), labels and image size: the cache key."""
        h = hashlib.sha1(f"{self.image_size}".encode())
        for r in self.records:
            if isinstance(r.image, np.ndarray):
                h.update(r.image.tobytes())
                if isinstance(r.mask, np.ndarray):
                    h.update(np.packbits(r.mask).tobytes())
            else:
                for p in (r.image, r.mask):
                    if p is not None:
                        st = p.stat()
                        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
            h.update(f"|{r.label}|{r.cls}".encode())
        return h.hexdigest()[:12]


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():  # Pillow only warns between 1× and 2× its pixel limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"image {path} is too large to read safely ({e}); resize it to at most "
                         f"{Image.MAX_IMAGE_PIXELS} pixels.") from None
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"cannot read image {path}: {e}. Replace or delete the file.") from None
    return image


_16BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # I: 32-bit integers, as some 16-bit files are read


def _rgb(image: Image.Image, path: Path) -> Image.Image:
    """An image of any common Pillow mode as 8-bit RGB. 16-bit greyscale is scaled by 255/65535
    (Pillow's own conversion clips it at 255); floating point (F) has no agreed range: refused."""
    if image.mode in _16BIT:
        a = np.asarray(image).astype(np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise ValueError(f"image {path} (mode {image.mode}) holds values {a.min()}..{a.max()}, outside "
                             "16 bits; save it as an 8- or 16-bit image.")
        image = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))  # round(v · 255 / 65535)
    elif image.mode == "F":
        raise ValueError(f"image {path} is floating point (mode F), which has no agreed value range; "
                         "save it as an 8- or 16-bit image.")
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ValueError(f"cannot convert image {path} from mode {image.mode} to RGB ({e}); save it as an "
                         "8- or 16-bit greyscale or RGB image.") from None


def _nonzero(mask: Image.Image) -> np.ndarray:
    """(H, W) bool: a pixel is defect when its stored value is non-zero (MVTec: 0/255, VisA: region
    ids, also as palette indices or 16-bit); colour masks: any colour channel, alpha ignored."""
    if mask.mode not in ("1", "L", "P", "F", *_16BIT):
        mask = mask.convert("RGB")
    a = np.asarray(mask)
    return a.any(axis=-1) if a.ndim == 3 else a != 0


# --------------------------------------------------------------------------- by name

DATASETS = ("mini", "mini_objects", "mvtec", "visa", "realiad", "cifar10", "digits")
MINI_DATASETS = ("mini", "mini_objects")  # adnotes-mini: the textures; with its object classes beside them
FOLDERS = {"mini": "adnotes-mini", "mini_objects": "adnotes-mini-objects", "mvtec": "mvtec_anomaly_detection",
           "visa": "visa_pytorch", "realiad": "Real-IAD", "cifar10": "cifar-10-batches-py"}  # under data_dir()


def load_dataset(name: str, split: str, *, root: str | Path | None = None,
                 classes: Sequence[str] | None = None, normal: Sequence[int] = (0, 1, 2, 3, 4),
                 image_size: int = 224) -> ADDataset:
    """A dataset by name: ``mini`` (offline default, made on first use), ``mini_objects`` (adnotes-mini with
    its object classes beside the textures, ``make_mini(objects=True)``, also made on first use), ``mvtec``,
    ``visa``, ``realiad`` (multi-view protocol ``realiad_jsons``, folder ``Real-IAD``; other protocols:
    :func:`adnotes.data.realiad.realiad_records`), ``cifar10`` or ``digits``. ``root`` defaults to
    ``adnotes.paths.data_dir() / <folder>``; ``normal`` are the normal classes of the semantic sets
    (UniAD Tab. 3 uses {0..4}, {5..9}, {0,2,4,6,8}, {1,3,5,7,9})."""
    from ..paths import data_dir

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = Path(root) if root is not None else data_dir() / FOLDERS.get(name, "")
    if name in MINI_DATASETS:
        from .mini import MANIFEST_NAME, check_mini, make_mini

        if not (root / MANIFEST_NAME).is_file():  # default parameters; `python -m adnotes data mini` makes others
            make_mini(root, objects=name == "mini_objects")
        check_mini(root)
        records = mvtec_records(root, split, classes)
    elif name == "mvtec":
        records = mvtec_records(root, split, classes)
    elif name == "visa":
        records = visa_records(root, split, classes)
    elif name == "realiad":
        from .realiad import realiad_records

        records = realiad_records(root, split, classes)
    elif name == "cifar10":
        records = cifar10_records(root, split, normal)
    else:
        records = digits_records(split, normal)
    return ADDataset(records, image_size, name=f"{name}/{split}")
