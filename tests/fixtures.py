"""Tiny datasets in the real datasets' on-disk layouts, and tiny cached features, built by the tests."""
import numpy as np
import torch
from PIL import Image

from adnotes.features import FeatureSet
from adnotes.train import Config


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


def tiny_features(seed=0, classes=("a", "b"), n_train=12, n_test=8, c=8, s=32):
    """Normal tokens ~ N(0, 1); a defective test image gets +3 in a 2×2 patch of its 4×4 grid."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n_train * len(classes), c, 4, 4, generator=g)
    test = torch.randn(n_test * len(classes), c, 4, 4, generator=g)
    labels = torch.tensor([i % 2 for i in range(len(test))])
    masks = torch.zeros(len(test), s, s, dtype=torch.bool)
    for i in torch.nonzero(labels).flatten():
        test[i, :, 1:3, 1:3] += 3
        masks[i, 8:24, 8:24] = True
    return (FeatureSet(train.half(), torch.zeros(len(train), dtype=torch.long),
                       [c for c in classes for _ in range(n_train)], None),
            FeatureSet(test.half(), labels, [c for c in classes for _ in range(n_test)], masks))


def tiny_config(**train):
    return Config.load(None, [
        "model.name=uniad", "model.preset=quick",
        "model.args={hidden_dim: 16, num_heads: 2, ffn_dim: 32, num_encoder_layers: 1, "
        "num_decoder_layers: 1, neighbor_size: 1, dropout: 0.0}",
        "eval.every=2", "eval.pool=4", "train.steps=6", "train.batch_size=4", "train.lr=0.001",
        "train.device=cpu",  # what the tests compare against is computed on the CPU, also on a GPU host
        *[f"train.{k}={v}" for k, v in train.items()]])


def tiny_multiscale_features(seed=0, classes=("a", "b"), n_train=8, n_test=8, channels=(4, 6, 8), s=64):
    """Three maps at strides 4/8/16 of s×s images (16², 8², 4²); defects: +3 over a quarter of each map."""
    g = torch.Generator().manual_seed(seed)
    sizes = [s // 4, s // 8, s // 16]
    train = [torch.randn(n_train * len(classes), c, k, k, generator=g) for c, k in zip(channels, sizes)]
    test = [torch.randn(n_test * len(classes), c, k, k, generator=g) for c, k in zip(channels, sizes)]
    labels = torch.tensor([i % 2 for i in range(n_test * len(classes))])
    masks = torch.zeros(len(labels), s, s, dtype=torch.bool)
    for i in torch.nonzero(labels).flatten():
        for m, k in zip(test, sizes):
            m[i, :, k // 4:k // 2, k // 4:k // 2] += 3
        masks[i, s // 4:s // 2, s // 4:s // 2] = True
    return (FeatureSet([m.half() for m in train], torch.zeros(len(train[0]), dtype=torch.long),
                       [c for c in classes for _ in range(n_train)], None),
            FeatureSet([m.half() for m in test], labels, [c for c in classes for _ in range(n_test)], masks))
