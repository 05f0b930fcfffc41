"""adnotes-mini: MVTec layout, exact masks, determinism, disjoint train/test regions, safe roots.

Independent references: masks are checked against the pixels that really changed (a clean crop
rebuilt from the manifest's crop record and the scikit-image photo), boxes against brute-force
intersection, and bytes against a second generation. The object classes (``objects=True``): the
textures' bytes against a generation without them, their alignment against the textures' (pairwise
correlation) and against the jitter bounds (the recorded affine maps decomposed by hand).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adnotes.data import mini
from adnotes.data.mini import (CLASSES, DEFECT_TYPES, GENERATOR_VERSION, MANIFEST_NAME, OBJECT_CLASSES,
                               TEXTURE_CLASSES, MiniSettings, apply_defect, make_mini, source_images)

SIZE = 10  # test images per class: 5 good + one of each of the 5 defect types
PARAMS = dict(seed=0, size=SIZE, image_size=96)
SMALL = dict(seed=0, size="small", image_size=96)  # 20 test images per class


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_mini(tmp_path_factory.mktemp("mini") / "adnotes-mini", **PARAMS)


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path]:
    """The "small" dataset at 96 px without and with the object classes."""
    base = tmp_path_factory.mktemp("small")
    return make_mini(base / "default", **SMALL), make_mini(base / "objects", **SMALL, objects=True)


def clean_crop(row: dict, image_size: int) -> np.ndarray:
    """Rebuild a crop from its manifest record: the photo through the recorded affine map (objects: then
    the recorded brightness and contrast, image = round(gain * resampled + offset))."""
    photo = Image.fromarray(source_images()[row["class"]])
    image = np.asarray(photo.transform((image_size, image_size), Image.AFFINE, row["affine"], Image.BICUBIC))
    if "photometric" in row:
        gain, offset = row["photometric"]
        image = np.clip(np.round(gain * image.astype(np.float64) + offset), 0, 255).astype(np.uint8)
    return image


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_constants():
    assert len(CLASSES) >= 5 and len(set(CLASSES)) == len(CLASSES)
    assert set(DEFECT_TYPES) >= {"foreign_patch", "scratch", "hole", "stain", "deformation"}
    for name, photo in source_images().items():
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, name


def test_mvtec_layout(dataset):
    S = PARAMS["image_size"]
    for cls in CLASSES:
        train = sorted((dataset / cls / "train").iterdir())
        assert [p.name for p in train] == ["good"]
        assert len(list((dataset / cls / "train" / "good").glob("*.png"))) == SIZE + SIZE // 3
        test_dirs = sorted(p.name for p in (dataset / cls / "test").iterdir())
        assert test_dirs == sorted(["good", *DEFECT_TYPES])
        assert len(list((dataset / cls / "test" / "good").glob("*.png"))) == SIZE - SIZE // 2
        assert sorted(p.name for p in (dataset / cls / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
        for split_dir in (dataset / cls / "train" / "good", dataset / cls / "test" / "good"):
            for image in split_dir.glob("*.png"):
                assert Image.open(image).size == (S, S)
        for kind in DEFECT_TYPES:
            images = sorted((dataset / cls / "test" / kind).glob("*.png"))
            masks = sorted((dataset / cls / "ground_truth" / kind).glob("*.png"))
            assert [f"{p.stem}_mask.png" for p in images] == [p.name for p in masks]
            for image, mask_file in zip(images, masks):
                mask = Image.open(mask_file)
                assert Image.open(image).mode == "RGB" and mask.size == Image.open(image).size == (S, S)
                values = set(np.unique(np.asarray(mask)).tolist())
                assert values == {0, 255}, f"{mask_file} is empty or not binary 0/255: {values}"


def test_manifest_rows_match_files(dataset):
    meta = manifest(dataset)
    rows = meta["images"]
    on_disk = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*.png")}
    listed = {r["file"] for r in rows} | {r["mask"] for r in rows if r["mask"]} | {r["twin"] for r in rows if r["twin"]}
    assert listed == on_disk
    assert meta["params"]["seed"] == 0 and meta["params"]["image_size"] == PARAMS["image_size"]
    for row in rows:
        if row["defect_type"] == "good":
            assert row["mask"] is None and row["bbox"] is None and row["area"] == 0 and row["twin"] is None
            continue
        assert row["twin"] == row["file"].replace("/test/", "/twins/"), "the twin sits beside the MVTec folders"
        mask = np.asarray(Image.open(dataset / row["mask"])) > 0
        ys, xs = np.nonzero(mask)
        assert row["area"] == mask.sum()
        assert row["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("which", ["textures", "with objects"])
def test_files_are_clean_crops_outside_the_masks(dataset, small, which):
    """Every good image is exactly its recorded crop; a defective one differs from that crop
    nowhere outside its mask, and on most of the mask's pixels."""
    dataset = dataset if which == "textures" else small[1]
    rows = manifest(dataset)["images"]
    assert {r["class"] for r in rows} == set(CLASSES if which == "textures" else (*CLASSES, *OBJECT_CLASSES))
    for row in rows:
        image = np.asarray(Image.open(dataset / row["file"]))
        changed = (image != clean_crop(row, PARAMS["image_size"])).any(-1)
        if row["mask"] is None:
            assert not changed.any(), row["file"]
        else:
            mask = np.asarray(Image.open(dataset / row["mask"])) > 0
            assert not changed[~mask].any(), f"{row['file']} changed outside its mask"
            assert changed[mask].mean() >= 0.5, f"{row['file']}: most of the mask is unchanged"
            # its clean twin is exactly the recorded crop: the same image without the defect
            twin = np.asarray(Image.open(dataset / row["twin"]))
            assert np.array_equal(twin, clean_crop(row, PARAMS["image_size"])), row["twin"]


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_apply_defect_masks_are_exact(kind):
    photos = source_images()
    for c, cls in enumerate(CLASSES):
        for trial in range(3):
            rng = np.random.default_rng([c, trial])
            y, x = rng.integers(0, 300, 2)
            clean = np.ascontiguousarray(photos[cls][y:y + 200, x:x + 200])  # (200, 200, 3)
            donor = np.ascontiguousarray(photos[CLASSES[c - 1]][:200, :200])
            defective, mask = apply_defect(clean, kind, rng, donor)
            assert defective.dtype == np.uint8 and defective.shape == clean.shape
            assert mask.dtype == bool and mask.shape == clean.shape[:2]
            changed = np.abs(defective.astype(int) - clean).max(-1) > 0
            assert not changed[~mask].any(), f"{kind} on {cls}: pixels changed outside the mask"
            assert changed[mask].mean() >= 0.5, f"{kind} on {cls}: most of the mask is unchanged"
            # areas are drawn up to 6 % of the image; a deformation's mask is ~1.3x larger
            assert 0 < mask.mean() < 0.15, f"{kind} on {cls}: implausible defect area {mask.mean():.3f}"


def test_apply_defect_rejects_bad_input():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown defect type"):
        apply_defect(image, "crack", np.random.default_rng(0))
    with pytest.raises(ValueError, match="donor"):
        apply_defect(image, "foreign_patch", np.random.default_rng(0), donor=None)
    with pytest.raises(ValueError, match="uint8"):
        apply_defect(image.astype(float), "scratch", np.random.default_rng(0))


def test_train_and_test_regions_are_disjoint(dataset):
    meta = manifest(dataset)
    photos = source_images()
    S = PARAMS["image_size"]
    for cls, spec in meta["classes"].items():
        height, width = photos[cls].shape[:2]
        boxes = {"train": spec["train_boxes"], "test": spec["test_boxes"]}
        for box in boxes["train"] + boxes["test"]:
            assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height, (cls, box)
        assert not any(overlap(a, b) for a in boxes["train"] for b in boxes["test"]), cls
        rows = [r for r in meta["images"] if r["class"] == cls]
        for row in rows:
            x0, y0, x1, y1 = row["crop"]
            inside = [b[0] <= x0 < x1 <= b[2] and b[1] <= y0 < y1 <= b[3] for b in boxes[row["split"]]]
            assert any(inside), row["file"]
            # the box is honest: the affine map sends the whole output square (plus the 2-pixel
            # reach of bicubic interpolation) inside it
            a, b, c, d, e, f = row["affine"]
            for u, v in [(0, 0), (S, 0), (0, S), (S, S)]:
                x, y = a * u + b * v + c, d * u + e * v + f
                assert x0 + 2 <= x <= x1 - 2 and y0 + 2 <= y <= y1 - 2, row["file"]
        train_crops = [r["crop"] for r in rows if r["split"] == "train"]
        test_crops = [r["crop"] for r in rows if r["split"] == "test"]
        assert not any(overlap(a, b) for a in train_crops for b in test_crops), cls


def test_deterministic_and_seeded(dataset, tmp_path):
    again = make_mini(tmp_path / "again", **PARAMS)
    assert files(again) == files(dataset)  # byte-identical, manifest included
    other = make_mini(tmp_path / "other", **{**PARAMS, "seed": 1})
    a, b = files(dataset), files(other)
    assert a.keys() == b.keys()
    differing = [name for name in a if name.endswith(".png") and a[name] != b[name]]
    assert len(differing) > 0.9 * sum(name.endswith(".png") for name in a)


def test_reuses_a_matching_dataset(dataset, monkeypatch):
    before = files(dataset)
    monkeypatch.setattr(mini, "_generate", lambda *a, **k: pytest.fail("regenerated a matching dataset"))
    assert make_mini(dataset, **PARAMS) == dataset
    assert files(dataset) == before


def test_refuses_a_dataset_with_other_params(dataset):
    before = files(dataset)
    with pytest.raises(RuntimeError, match="other parameters.*seed"):
        make_mini(dataset, **{**PARAMS, "seed": 3})
    assert files(dataset) == before


def test_refuses_a_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("my thesis")
    with pytest.raises(RuntimeError, match="another root"):
        make_mini(root, **PARAMS)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    assert (root / "notes.txt").read_text() == "my thesis"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no partial sibling either


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_save(*args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle
        return real_save(*args)

    real_save = mini._save_png
    monkeypatch.setattr(mini, "_save_png", failing_save)
    root = tmp_path / "adnotes-mini"
    root.mkdir()  # an existing empty folder is fine to fill
    with pytest.raises(KeyboardInterrupt):
        make_mini(root, **PARAMS)
    assert [p.name for p in tmp_path.iterdir()] == ["adnotes-mini"]
    assert not any(root.iterdir())


def test_rejects_bad_arguments(tmp_path):
    for bad in ({"size": "huge"}, {"size": 1}, {"size": 2.5}, {"seed": -1}, {"image_size": 16}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_mini(tmp_path / "x", **bad)
    assert not (tmp_path / "x").exists()


def test_loads_with_the_mvtec_loader(dataset):
    from adnotes.data.datasets import mvtec_records

    test = mvtec_records(dataset, "test")
    assert len(test) == len(CLASSES) * SIZE
    assert sum(r.label for r in test) == len(CLASSES) * (SIZE // 2)
    assert len(mvtec_records(dataset, "train")) == len(CLASSES) * (SIZE + SIZE // 3)


@pytest.mark.parametrize("key", ["file", "mask", "twin"])
def test_a_dataset_with_a_file_deleted_is_not_ready(dataset, tmp_path, key):
    import shutil

    from adnotes.data import load_dataset

    root = shutil.copytree(dataset, tmp_path / "adnotes-mini")
    row = next(r for r in manifest(root)["images"] if r["split"] == "test" and r.get(key))
    (root / row[key]).unlink()
    with pytest.raises(FileNotFoundError, match=f"incomplete adnotes-mini: {row[key]} and 0 more"):
        make_mini(root, **PARAMS)
    with pytest.raises(FileNotFoundError, match=row[key]):
        load_dataset("mini", "train", root=root)  # also a split that does not hold the file


def _make_in_child(root: str) -> str:
    return str(make_mini(root, **PARAMS))


def test_two_processes_at_once_share_one_dataset(dataset, tmp_path):
    """Two trainings started together both get the dataset: before the lock, the second one's rename
    failed with 'Directory not empty'."""
    import multiprocessing

    root = str(tmp_path / "shared")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        made = pool.map(_make_in_child, [root, root])
    assert made == [root, root]
    assert files(Path(root)) == files(dataset)           # the same bytes as one process alone writes
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]  # no partial sibling or lock file left


# ----------------------------------------------------------------------------- object classes

def sha256s(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_object_classes_leave_the_default_dataset_unchanged(small):
    default, objects = small
    expected = {"generator": "adnotes.data.mini", "version": GENERATOR_VERSION, "seed": 0, "size": "small",
                "n_train": 26, "n_test_good": 10, "n_test_defect": 10, "image_size": 96,
                "settings": json.loads(json.dumps(asdict(MiniSettings())))}
    assert manifest(default)["params"] == expected            # no trace of the option when it is off
    params = manifest(objects)["params"]
    assert params.pop("objects")["classes"] == list(OBJECT_CLASSES) and params == expected
    assert sorted(p.name for p in default.iterdir() if p.is_dir()) == sorted(TEXTURE_CLASSES)
    assert sorted(p.name for p in objects.iterdir() if p.is_dir()) == sorted((*TEXTURE_CLASSES, *OBJECT_CLASSES))
    before, after = sha256s(default), sha256s(objects)
    del before[MANIFEST_NAME]
    assert {k: v for k, v in after.items() if k.split("/")[0] in TEXTURE_CLASSES} == before  # the same bytes
    rows = manifest(objects)["images"]
    assert [r for r in rows if r["class"] in TEXTURE_CLASSES] == manifest(default)["images"]
    assert all(set(r) == set(rows[0]) | {"photometric"} for r in rows if r["class"] in OBJECT_CLASSES)
    assert CLASSES == TEXTURE_CLASSES and not set(TEXTURE_CLASSES) & set(OBJECT_CLASSES) and len(OBJECT_CLASSES) >= 4


def grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L").resize((48, 48), Image.BILINEAR), np.float64).ravel()


def test_object_images_are_aligned_and_texture_crops_are_not(small):
    """Two normal images of an object show the same view: their pixels correlate strongly, where two
    crops of a texture (random position, rotation, flip) do not correlate at all on average."""
    root = small[1]

    def mean_correlation(cls: str) -> float:
        images = [grey(p) for p in sorted((root / cls / "train" / "good").glob("*.png"))[:12]]
        return float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in itertools.combinations(images, 2)]))

    objects = {c: mean_correlation(c) for c in OBJECT_CLASSES}
    textures = {c: mean_correlation(c) for c in TEXTURE_CLASSES}
    assert min(objects.values()) > 0.5, objects
    assert max(abs(v) for v in textures.values()) < 0.2, textures


def test_object_maps_stay_near_the_fixed_view(small):
    """The recorded affine map of every object image, decomposed by hand: no flip, and rotation, scale
    and shift of the view within the recorded jitter; it reads inside the photo (with the 2-pixel reach
    of bicubic interpolation); brightness and contrast within theirs. Train and test share the view."""
    meta = manifest(small[1])
    jitter, S = meta["params"]["objects"]["jitter"], SMALL["image_size"]
    photos = source_images()
    for cls in OBJECT_CLASSES:
        x0, y0, x1, y1 = view = meta["classes"][cls]["view_box"]
        side = x1 - x0
        assert y1 - y0 == side, f"{cls}: the view is not square"
        rows = [r for r in meta["images"] if r["class"] == cls]
        assert {r["split"] for r in rows} == {"train", "test"}
        height, width = photos[cls].shape[:2]
        for row in rows:
            a, b, c, d, e, f = row["affine"]
            assert a * e - b * d > 0, f"{row['file']}: mirrored"
            assert math.degrees(abs(math.atan2(d, a))) <= jitter["rotation"] + 1e-9, row["file"]
            assert abs(math.hypot(a, d) * S / side - 1) <= jitter["scale"] + 1e-9, row["file"]
            cx, cy = a * S / 2 + b * S / 2 + c, d * S / 2 + e * S / 2 + f   # where the image centre reads
            assert abs(cx - (x0 + x1) / 2) <= jitter["shift"] * side + 1e-6, row["file"]
            assert abs(cy - (y0 + y1) / 2) <= jitter["shift"] * side + 1e-6, row["file"]
            for u, v in [(0, 0), (S, 0), (0, S), (S, S)]:
                x, y = a * u + b * v + c, d * u + e * v + f
                assert 2 <= x <= width - 2 and 2 <= y <= height - 2, (row["file"], view)
            # image = brightness * (128 + contrast * (resampled - 128)) = gain * resampled + offset
            gain, offset = row["photometric"]
            brightness = gain + offset / 128
            assert abs(brightness - 1) <= jitter["brightness"] + 1e-9, row["file"]
            assert abs(gain / brightness - 1) <= jitter["contrast"] + 1e-9, row["file"]


def test_objects_are_deterministic(small, tmp_path):
    again = make_mini(tmp_path / "again", **SMALL, objects=True)
    assert sha256s(again) == sha256s(small[1])


def test_the_loader_reads_mini_objects(small, tmp_path, monkeypatch):
    from adnotes.data import load_dataset

    test = load_dataset("mini_objects", "test", root=small[1])
    assert test.classes == sorted((*TEXTURE_CLASSES, *OBJECT_CLASSES))
    assert len(test) == 20 * len(test.classes) and sum(r.label for r in test.records) == 10 * len(test.classes)
    # made on first use at <data>/adnotes-mini-objects, with the object classes
    made = []
    real = mini.make_mini
    monkeypatch.setenv("ADNOTES_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(mini, "make_mini", lambda root, **kw: made.append((root, kw)) or real(root, **PARAMS, **kw))
    train = load_dataset("mini_objects", "train")
    assert [(r.name, kw) for r, kw in made] == [("adnotes-mini-objects", {"objects": True})]
    assert "cat" in train.classes and "brick" in train.classes
    load_dataset("mini", "train")
    assert [(r.name, kw) for r, kw in made[1:]] == [("adnotes-mini", {"objects": False})]


def test_the_trainer_reads_mini_objects_and_its_twins(small, monkeypatch):
    """``data.dataset=mini_objects`` passes the config check, and the trainer's splits (train, test, the clean
    twins) come from its folder, each under its own feature-cache name; the twins pair up with the defective
    test images in order (the same crop without its defect)."""
    from adnotes import train as trainer

    seen = {}
    monkeypatch.setattr(trainer, "make_backbone", lambda d: None)
    monkeypatch.setattr(trainer, "cached_features", lambda backbone, data, **kw: seen.setdefault(data.name, data))
    cfg = trainer.Config.load(None, ["data.dataset=mini_objects", f"data.root={small[1]}", "data.image_size=96"])
    trainer.load_features(cfg, splits=("train", "test", "twins"))
    assert list(seen) == ["mini_objects/train", "mini_objects/test", "mini_objects/twins"]
    defective = [r for r in seen["mini_objects/test"].records if r.label]
    twins = seen["mini_objects/twins"].records
    assert [(t.cls, t.defect, t.label) for t in twins] == [(r.cls, r.defect, 0) for r in defective]
    assert all(t.image == r.image.parents[2] / "twins" / r.defect / r.image.name for t, r in zip(twins, defective))
    assert {"cat", "brick"} <= set(seen["mini_objects/train"].classes)
    with pytest.raises(ValueError, match="twins split exists for adnotes-mini only"):
        trainer.load_features(trainer.Config.load(None, ["data.dataset=digits"]), splits=("twins",))
