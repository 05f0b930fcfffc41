"""Real-IAD (Wang et al., CVPR 2024): 30 classes, each object photographed by 5 cameras (C1..C5).

    train = realiad_records(root, "train")                  # the normal images of all 30 classes
    test = realiad_records(root, "test", classes=["usb"])   # one class's test images, view by view
    samples = sample_scores(image_scores, test)             # one row per object: max over its views

A *sample* is one physical object; its 5 photos are 5 records here, one per view. The paper's
multi-view protocol scores images as usual (image AUROC, pixel AUROC/AUPRO) and adds a
sample-level detection AUROC: a sample's label is 1 if any of its views shows a defect, its
score is the maximum over its views (:func:`sample_scores`; the official evaluation tool ADEval
groups images into samples by the file-name pattern in :data:`SAMPLE_KEY_PATTERN`).

Layout (the official release: `Tencent/AnomalyDetection_Real-IAD` README). The data needs a
request form (https://realiad4ad.github.io/Real-IAD/), so nothing here downloads it::

  <root>/realiad_1024/<class>/OK/S0001/<class>_0001_OK_C1_<time>.jpg         (or realiad_512/,
  <root>/realiad_1024/<class>/NG/<code>/S0001/<class>_0001_NG_<code>_C1_<time>.jpg    realiad_256/,
  <root>/realiad_1024/<class>/NG/<code>/S0001/<class>_0001_NG_<code>_C1_<time>.png    realiad_raw/)
  <root>/realiad_jsons/<class>.json            multi-view UIAD: all 5 views          (protocol names)
  <root>/realiad_jsons_sv/<class>.json         single-view UIAD: view C1 only
  <root>/realiad_jsons_fuiad_<r>/<class>.json  fully unsupervised: noise ratio r in train

The JSON folders may also sit one level down, ``<root>/realiad_jsons/<protocol>/<class>.json``
(how anomalib lays the archive out). Only the image paths that a JSON lists are read.

JSON schema (ASSUMED: read from the official loader ``datasets/explicit_dataset.py`` of
`Tencent/AnomalyDetection_Real-IAD` and anomalib's ``realiad.py``; we have not seen the files)::

  {"meta":  {"prefix": "<class>", "normal_class": "OK", ...},
   "train": [sample, ...],
   "test":  [sample, ...]}
  sample = {"category": "<class>", "anomaly_class": "OK" | "<code>",
            "image_path": "OK/S0001/....jpg", "mask_path": "NG/.../....png" | null}

A file is ``<root>/<image folder>/<meta.prefix>/<image_path>``. Labels follow the official
loader: a test view is anomalous iff its ``anomaly_class`` is not ``normal_class`` *and* it has
a mask (a defect need not be visible from every camera; the other views of a defective object
count as normal images). Every train record is normal (label 0, no mask) whatever the JSON says:
in the FUIAD protocols the training set deliberately holds unlabelled defective objects, and a
method must not see which. Their ``anomaly_class`` survives in ``Record.defect``.

``Record`` has no view field, so the view rides in ``Record.defect`` as ``"<anomaly_class>/<view>"``
(``"OK/C3"``, ``"QS/C1"``); :func:`record_view` and :func:`sample_key` read it back. Defect
codes are pinyin initials; :data:`DEFECT_NAMES` gives the English names of the paper's eight
defect types (our reading of the initials; the release's own table is behind the form).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import Record, _missing

__all__ = ["REALIAD_CLASSES", "REALIAD_PROTOCOLS", "REALIAD_LAYOUT", "DEFECT_NAMES", "SAMPLE_KEY_PATTERN",
           "realiad_records", "record_view", "sample_key", "sample_scores", "SampleScores"]

REALIAD_CLASSES = ("audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint",
                   "mounts", "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll",
                   "regulator", "rolled_strip_base", "sim_card_set", "switch", "tape", "terminalblock",
                   "toothbrush", "toy", "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor", "vcpill",
                   "wooden_beads", "woodstick", "zipper")
REALIAD_PROTOCOLS = ("realiad_jsons", "realiad_jsons_sv", "realiad_jsons_fuiad_0.0", "realiad_jsons_fuiad_0.1",
                     "realiad_jsons_fuiad_0.2", "realiad_jsons_fuiad_0.4")
IMAGE_FOLDERS = ("realiad_1024", "realiad_512", "realiad_256", "realiad_raw")  # first found is used
DEFECT_NAMES = {"AK": "pit", "BX": "deformation", "CH": "abrasion", "HS": "scratch", "PS": "damage",
                "QS": "missing parts", "YW": "foreign objects", "ZW": "contamination"}

# ADEval's --sample_key_pat for every Real-IAD setting (official README): the object's key, then the view.
SAMPLE_KEY_PATTERN = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_(C[0-9])_")

REALIAD_LAYOUT = """\
  <root>/realiad_1024/<class>/...                 (images and *.png masks; or realiad_256/, realiad_512/)
  <root>/<protocol>/<class>.json                  (protocol: realiad_jsons, realiad_jsons_sv,
                                                   realiad_jsons_fuiad_0.0 ... 0.4)
  JSON: {"meta": {"prefix": ..., "normal_class": "OK"}, "train": [...], "test": [...]}, each sample
        {"category", "anomaly_class", "image_path", "mask_path"}; file = <images>/<prefix>/<image_path>"""
WHERE = ("Real-IAD is not downloadable without a request form: ask for it at "
         "https://realiad4ad.github.io/Real-IAD/ , unzip realiad_jsons.zip into <root> and each class's "
         "image archive into <root>/realiad_1024/ (or realiad_256/ ...).")
SAMPLE_FIELDS = ("category", "anomaly_class", "image_path", "mask_path")


# --------------------------------------------------------------------------- records

def realiad_records(root: str | Path, split: str, classes: Sequence[str] | None = None,
                    protocol: str = "realiad_jsons", images: str | None = None) -> list[Record]:
    """Records of Real-IAD's ``split`` ("train" | "test") under ``protocol`` (a JSON folder name).

    Unified protocol: "train" is the training list of every class together, "test" every class's
    test list (evaluated per class). ``classes`` defaults to every ``<class>.json`` found;
    ``images`` is the image folder (default: the first of realiad_1024, _512, _256, _raw found).
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    json_dir = _json_dir(root, protocol)
    image_dir = _image_dir(root, images)
    found = sorted(p.stem for p in json_dir.glob("*.json"))
    classes = list(classes) if classes is not None else found
    if unknown := sorted(set(classes) - set(found)):
        raise _missing(json_dir / f"{unknown[0]}.json", f"Real-IAD class(es) {unknown} (found: {found})",
                       REALIAD_LAYOUT, WHERE)
    records = []
    for cls in classes:
        records += _parse(json_dir / f"{cls}.json", split, image_dir)
    if split == "test" and not any(r.label for r in records):
        raise ValueError(f"The Real-IAD test split of {classes} under {json_dir} has no defective image: "
                         f"is it complete?")
    return records


def _json_dir(root: Path, protocol: str) -> Path:
    for folder in (root / protocol, root / "realiad_jsons" / protocol):  # official, anomalib
        if folder.is_dir() and any(folder.glob("*.json")):
            return folder
    what = "Real-IAD" if not root.is_dir() else f"The Real-IAD JSON folder {protocol!r}"
    raise _missing(root, what, REALIAD_LAYOUT, WHERE)


def _image_dir(root: Path, images: str | None) -> Path:
    names = (images,) if images else IMAGE_FOLDERS
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise _missing(root, f"The Real-IAD image folder ({' or '.join(names)})", REALIAD_LAYOUT, WHERE)


def _parse(path: Path, split: str, image_dir: Path) -> list[Record]:
    """One class's JSON -> records of ``split``, checked key by key."""
    def fail(problem: str) -> ValueError:
        return ValueError(f"{path}: {problem}. Expected the Real-IAD meta-file schema:\n{REALIAD_LAYOUT}\n"
                          f"Is this an original realiad_jsons file? {WHERE}")

    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise fail(f"not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise fail(f"the top level is a {type(info).__name__}, not an object")
    for key in ("meta", split):
        if key not in info:
            raise fail(f"no top-level key {key!r} (keys: {sorted(info)})")
    meta, samples = info["meta"], info[split]
    if not isinstance(meta, dict) or not isinstance(samples, list):
        raise fail(f"'meta' must be an object and {split!r} a list")
    for key in ("prefix", "normal_class"):
        if key not in meta:
            raise fail(f"no key {key!r} in 'meta' (keys: {sorted(meta)})")
    folder = image_dir / meta["prefix"]
    normal = meta["normal_class"]

    records = []
    for i, s in enumerate(samples):
        where = f"{split}[{i}]"
        if not isinstance(s, dict):
            raise fail(f"{where} is a {type(s).__name__}, not an object")
        if missing := [k for k in SAMPLE_FIELDS if k not in s]:
            raise fail(f"{where} has no key(s) {missing} (keys: {sorted(s)})")
        image = folder / s["image_path"]
        view = _view(image)
        if split == "train":  # unsupervised: every training image counts as normal (FUIAD noise included)
            records.append(Record(image, 0, s["category"], f"{s['anomaly_class']}/{view}"))
            continue
        anomalous = s["anomaly_class"] != normal and s["mask_path"] is not None  # official `as_normal`
        mask = folder / s["mask_path"] if anomalous else None
        records.append(Record(image, int(anomalous), s["category"], f"{s['anomaly_class']}/{view}", mask))
    for r in records:
        for p in (r.image, r.mask):
            if p is not None and not p.is_file():
                raise _missing(p, f"A file listed in {path.name}", REALIAD_LAYOUT,
                               f"Is the class's image archive unpacked into {image_dir}? {WHERE}")
    return records


def _view(image: Path) -> str:
    match = SAMPLE_KEY_PATTERN.search(image.name)
    if match is None:
        raise ValueError(f"cannot read the object and view from the file name {image.name!r}: Real-IAD "
                         f"names are <class>_<4 digits>_<OK|NG_code>_C<view>_<time>.jpg "
                         f"(pattern {SAMPLE_KEY_PATTERN.pattern})")
    return match.group(2)


def record_view(record: Record) -> str:
    """The camera ("C1".."C5") of a Real-IAD record."""
    return record.defect.rsplit("/", 1)[-1]


def sample_key(record: Record) -> str:
    """The object a Real-IAD record shows, ``<class>_<nnnn>_<OK|NG_code>`` (ADEval's sample key)."""
    match = SAMPLE_KEY_PATTERN.search(Path(record.image).name) if not isinstance(record.image, np.ndarray) else None
    if match is None:
        raise ValueError(f"record {record.image!r} is not a Real-IAD image (file name pattern "
                         f"{SAMPLE_KEY_PATTERN.pattern})")
    return match.group(1)


# --------------------------------------------------------------------------- sample level

@dataclass
class SampleScores:
    """Per object (sample), in order of first appearance: its key, class, label, score, number of views."""

    keys: list[str]
    classes: list[str]
    labels: np.ndarray   # (S,) int: 1 if any view is anomalous
    scores: np.ndarray   # (S,) float: max over the views' image scores
    views: np.ndarray    # (S,) int: how many views the sample has (5 multi-view, 1 single-view)


def sample_scores(scores: Sequence[float] | np.ndarray, records: Sequence[Record]) -> SampleScores:
    """Aggregate image scores to Real-IAD samples: label = max of the views' labels, score = max of
    their scores (the multi-view protocol's sample-level detection)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(records):
        raise ValueError(f"{len(scores)} scores for {len(records)} records: give one score per record")
    groups: dict[tuple[str, str], list[int]] = {}  # (class, sample key) -> indices of its views
    for i, r in enumerate(records):
        groups.setdefault((r.cls, sample_key(r)), []).append(i)
    labels = np.array([max(records[i].label for i in idx) for idx in groups.values()], dtype=int)
    return SampleScores(keys=[key for _, key in groups], classes=[cls for cls, _ in groups], labels=labels,
                        scores=np.array([scores[idx].max() for idx in groups.values()]),
                        views=np.array([len(idx) for idx in groups.values()], dtype=int))
