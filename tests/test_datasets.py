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
