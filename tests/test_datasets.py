"""Loaders on tiny fixtures in the MVTec-AD, VisA (1cls.csv) and CIFAR-10 (pickle) layouts."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import png, make_mvtec, make_visa

from adnotes.data import (IMAGENET_MEAN, IMAGENET_STD, ADDataset, cifar10_records, digits_records,
                          load_dataset, mvtec_records, visa_records)


def test_mvtec_unified_train_and_test(tmp_path):
    root = make_mvtec(tmp_path)
    train = mvtec_records(root, "train")
    assert len(train) == 6 and {r.cls for r in train} == {"bottle", "wood"}  # all classes, one set
    assert all(r.label == 0 and r.mask is None for r in train)
    test = mvtec_records(root, "test", classes=["wood"])
    assert [(r.defect, r.label) for r in test] == [("crack", 1), ("good", 0), ("hole", 1)]
    assert test[0].mask == root / "wood" / "ground_truth" / "crack" / "000_mask.png"


def test_items_follow_the_papers_transforms(tmp_path):
    root = make_mvtec(tmp_path, size=20)
    ds = ADDataset(mvtec_records(root, "test"), image_size=40)
    item = ds[0]
    assert item["image"].shape == (3, 40, 40) and item["mask"].shape == (1, 40, 40)
    # Normalisation: undo it by hand and compare with a plain bilinear resize of the file.
    raw = Image.open(ds.records[0].image).convert("RGB").resize((40, 40), Image.BILINEAR)
    expected = (torch.tensor(np.asarray(raw), dtype=torch.float32) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(item["image"].permute(1, 2, 0), expected, atol=1e-5)
    # Nearest-neighbour mask resize keeps it binary and scales the square exactly ×2.
    expected_mask = np.zeros((40, 40))
    expected_mask[4:12, 20:28] = 1
    assert np.array_equal(item["mask"][0].numpy(), expected_mask)


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        mvtec_records(tmp_path / "nowhere", "train")
    text = str(e.value)
    assert "nowhere" in text and "ground_truth" in text and "data get mvtec" in text
    with pytest.raises(FileNotFoundError, match="data get visa"):
        visa_records(tmp_path / "nowhere", "train")


def test_partial_dataset_names_the_missing_mask(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "bottle" / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="000_mask.png"):
        mvtec_records(root, "test")


def test_corrupt_image_and_wrong_mask_size_are_named(tmp_path):
    root = make_mvtec(tmp_path)
    bad = root / "bottle" / "test" / "crack" / "000.png"
    bad.write_bytes(b"not a png")
    ds = ADDataset(mvtec_records(root, "test", ["bottle"]))
    with pytest.raises(ValueError, match="cannot read image .*000.png"):
        ds[0]
    png(bad, np.zeros((20, 20, 3), np.uint8))
    png(root / "bottle" / "ground_truth" / "crack" / "000_mask.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="mask .*000_mask.png is 10×10 but its image .*000.png is 20×20"):
        ds[0]


def test_visa_1cls_protocol(tmp_path):
    root = make_visa(tmp_path)
    train, test = visa_records(root, "train"), visa_records(root, "test")
    assert len(train) == 6 and all(r.label == 0 for r in train)
    assert sorted((r.cls, r.label) for r in test) == [("candle", 0), ("candle", 1), ("pcb1", 0), ("pcb1", 1)]
    ds = ADDataset(test, image_size=16)
    anomalous = next(i for i, r in enumerate(ds.records) if r.label)
    assert ds[anomalous]["mask"].sum() == 16  # region id 3 counts as defect


def test_cifar10_many_vs_many(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 20) for i in range(1, 6)] + [("test_batch", 30)]:
        labels = [i % 10 for i in range(n)]
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (n, 3072), np.uint8), b"labels": labels}, f)
    train = cifar10_records(tmp_path, "train", normal=[0, 1, 2, 3, 4])
    assert len(train) == 50 and all(r.label == 0 for r in train)
    test = cifar10_records(tmp_path, "test", normal=[0, 2, 4, 6, 8])
    assert len(test) == 30 and sum(r.label for r in test) == 15
    # The pickle stores channel planes: pixel (0, 0) of image 0 is bytes 0, 1024, 2048.
    with open(tmp_path / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"][0]
    assert test[0].image.shape == (32, 32, 3)
    assert list(test[0].image[0, 0]) == [raw[0], raw[1024], raw[2048]]
    with pytest.raises(FileNotFoundError, match="data get cifar10"):
        cifar10_records(tmp_path / "none", "train", normal=[0])


def test_digits_stand_in():
    train, test = digits_records("train", normal=[0, 1, 2, 3, 4]), digits_records("test", normal=[0, 1, 2, 3, 4])
    assert {r.defect for r in train} == {"good"}
    assert abs(sum(r.label for r in test) / len(test) - 0.5) < 0.05  # about half the digits are 5–9
    assert len(train) + len(test) < 1797  # train holds the normal half only
    ds = ADDataset(test, image_size=32)
    assert not ds.has_masks and ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="proper subset"):
        digits_records("train", normal=range(10))


def test_load_dataset_by_name(tmp_path):
    make_mvtec(tmp_path / "m")
    ds = load_dataset("mvtec", "test", root=tmp_path / "m", image_size=32)
    assert ds.classes == ["bottle", "wood"] and len(ds) == 6
    with pytest.raises(ValueError, match="choose one of"):
        load_dataset("mnist", "train")


# --------------------------------------------------------------------------- bad input

def test_crafted_cifar_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "the_pickle_ran"

    class Payload:  # what a malicious batch file holds: a call to run on unpickling
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": Payload(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR-10 batch .*builtins\.exec"):
        cifar10_records(tmp_path, "train", normal=[0])
    assert not marker.exists()
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match="data_batch_1 is not a CIFAR-10 batch"):
        cifar10_records(tmp_path, "train", normal=[0])


def one_image_dataset(tmp_path, image: Image.Image, suffix=".png") -> ADDataset:
    root = make_mvtec(tmp_path / "m", classes=("bottle",), defects=("crack",), size=4)
    path = root / "bottle" / "test" / "good" / f"000{suffix}"
    (root / "bottle" / "test" / "good" / "000.png").unlink()
    image.save(path)
    records = [r for r in mvtec_records(root, "test") if r.image == path]
    return ADDataset(records, image_size=4)


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 16).round().astype(np.uint16).reshape(4, 4)
    ds = one_image_dataset(tmp_path, Image.fromarray(values))  # a 16-bit PNG (mode I;16)
    got = np.asarray(ds.load_image(0))
    expected = np.round(values / 65535 * 255).astype(np.uint8)  # by hand: 0..65535 -> 0..255
    assert got.shape == (4, 4, 3) and all(np.array_equal(got[..., c], expected) for c in range(3))
    assert (got == 255).mean() < 0.1  # the old conversion saturated ~all of them


@pytest.mark.parametrize("mode, pixel, expected", [
    ("1", 1, (255, 255, 255)), ("L", 77, (77, 77, 77)), ("LA", (90, 10), (90, 90, 90)),
    ("RGBA", (1, 2, 3, 0), (1, 2, 3)), ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("I", 65535, (255, 255, 255)), ("I", 257 * 100, (100, 100, 100))])
def test_other_modes_become_the_right_rgb(tmp_path, mode, pixel, expected):
    suffix = ".tif" if mode in ("CMYK", "I") else ".png"
    ds = one_image_dataset(tmp_path, Image.new(mode, (4, 4), pixel), suffix)
    assert np.asarray(ds.load_image(0))[0, 0].tolist() == list(expected)


def test_palette_image_uses_its_palette_and_masks_keep_region_ids(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)  # index 1 is (200, 30, 60)
    ds = one_image_dataset(tmp_path, image)
    assert np.asarray(ds.load_image(0))[0, 0].tolist() == [200, 30, 60]
    root = tmp_path / "m"
    mask = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    ids = np.zeros((4, 4), np.uint16)
    ids[1, 2] = 3  # a 16-bit mask holding region id 3: defect, though 3/257 rounds to 0 in 8 bits
    Image.fromarray(ids).save(mask)
    ds = ADDataset(mvtec_records(root, "test"), image_size=4)
    defect = next(i for i, r in enumerate(ds.records) if r.label)
    assert np.array_equal(ds.load_mask(defect, (4, 4)), ids > 0)


@pytest.mark.parametrize("image, match", [
    (Image.new("F", (4, 4), 0.5), "floating point"),
    (Image.fromarray(np.full((4, 4), 70000, np.int32)), "outside 16 bits")])
def test_images_without_a_clear_8bit_meaning_are_refused(tmp_path, image, match):
    ds = one_image_dataset(tmp_path, image, ".tif")
    with pytest.raises(ValueError, match=f"000.tif.*{match}"):
        ds[0]


def _png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG that claims width x height (Pillow reads the size before pixels)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_oversized_images_are_a_clear_error(tmp_path, monkeypatch):
    root = make_mvtec(tmp_path, classes=("bottle",))
    path = root / "bottle" / "test" / "good" / "000.png"
    path.write_bytes(_png_header(20_000, 20_000))
    ds = ADDataset(mvtec_records(root, "test"))
    index = next(i for i, r in enumerate(ds.records) if r.image == path)
    with pytest.raises(ValueError, match=r"image .*good/000.png is too large"):
        ds[index]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 20x20 = 400: Pillow only warns (1x-2x the limit)
    png(path, np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image .*good/000.png is too large"):
        ds[index]


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_class_without_normal_training_images_is_an_error(tmp_path, split):
    root = make_mvtec(tmp_path)
    for p in (root / "wood" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(FileNotFoundError, match=r"No normal training images of class 'wood'.*wood/train/good"):
        mvtec_records(root, split)
    (root / "wood" / "train" / "good").rmdir()
    (root / "wood" / "train").rmdir()  # no train folder at all: still the class's error, not a skip
    with pytest.raises(FileNotFoundError, match="class 'wood'"):
        mvtec_records(root, split)
