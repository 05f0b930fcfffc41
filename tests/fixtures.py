"""Tiny datasets in the real datasets' on-disk layouts, built by the tests."""
import numpy as np
from PIL import Image


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_mvtec(root, classes=("bottle", "wood"), n_train=3, defects=("crack", "hole"), size=20):
    """A tiny MVTec-AD tree; each defect image has a square mask at a known place."""
    rng = np.random.default_rng(0)
    for cls in classes:
        for i in range(n_train):
            png(root / cls / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (size, size, 3), np.uint8))
        png(root / cls / "test" / "good" / "000.png", rng.integers(0, 255, (size, size, 3), np.uint8))
        for defect in defects:
            png(root / cls / "test" / defect / "000.png", rng.integers(0, 255, (size, size, 3), np.uint8))
            mask = np.zeros((size, size), np.uint8)
            mask[2:6, 10:14] = 255
            png(root / cls / "ground_truth" / defect / "000_mask.png", mask)
    return root


def make_visa(root, classes=("candle", "pcb1"), size=16):
    rng = np.random.default_rng(1)
    rows = ["object,split,label,image,mask"]
    for cls in classes:
        for i, (split, label) in enumerate([("train", "normal")] * 3 + [("test", "normal"), ("test", "anomaly")]):
            kind = "Anomaly" if label == "anomaly" else "Normal"
            image = f"{cls}/Data/Images/{kind}/{i:03d}.JPG"
            png(root / image, rng.integers(0, 255, (size, size, 3), np.uint8))
            mask = ""
            if label == "anomaly":
                mask = f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
                m = np.zeros((size, size), np.uint8)
                m[4:8, 4:8] = 3  # VisA masks hold region ids, not 255
                png(root / mask, m)
            rows.append(f"{cls},{split},{label},{image},{mask}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root
