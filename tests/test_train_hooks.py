"""The trainer's hooks for methods beyond plain reconstruction: a model's own loss and map, generated
anomalies in the train split, cached images, and HaloAE's train-set normalisation (eq. 7)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adnotes.backbone import Backbone
from adnotes.data import ADDataset, Record
from adnotes.data.synthetic import SYNTHETIC, register_synthetic, synthetic_records, with_synthetic
from adnotes.features import FeatureSet, extract_features
from adnotes.train import anomaly_maps, train

from fixtures import tiny_config, tiny_features


def _photo_records(n=3, size=48, cls="a"):
    rng = np.random.default_rng(0)
    return [Record(rng.integers(0, 255, (size, size, 3), np.uint8), 0, cls) for _ in range(n)]


@pytest.fixture(scope="module")
def square():
    """A generator that paints a white 8×8 square at a random place and says where."""
    @register_synthetic("test_square") if "test_square" not in SYNTHETIC else (lambda f: f)
    def paint(image, rng):
        y, x = rng.integers(0, image.shape[0] - 8, 2)
        out, mask = image.copy(), np.zeros(image.shape[:2], bool)
        out[y:y + 8, x:x + 8] = 255
        mask[y:y + 8, x:x + 8] = True
        return out, mask
    return "test_square"


def test_synthetic_views_are_labelled_deterministic_and_masked(square):
    dataset = ADDataset(_photo_records(), image_size=32, name="toy/train")
    views = synthetic_records(dataset, [square, square], copies=2, seed=3)
    assert len(views) == 3 * 2 * 2 and all(v.label == 1 and v.defect == square for v in views)
    again = synthetic_records(dataset, [square, square], copies=2, seed=3)
    assert all((a.image == b.image).all() and (a.mask == b.mask).all() for a, b in zip(views, again))
    for v in views:  # at the dataset's image size, the mask where the pixels were painted
        assert v.image.shape == (32, 32, 3) and v.mask.sum() == 64 and (v.image[v.mask] == 255).all()
    merged = with_synthetic(dataset, square, copies=1)
    assert len(merged) == 6 and merged.has_masks and merged.labels.tolist() == [0, 0, 0, 1, 1, 1]
    item = merged[4]  # the dataset serves a view's mask like a file mask
    assert torch.equal(item["mask"][0] > 0.5, torch.from_numpy(merged.records[4].mask)) and item["label"] == 1


def test_unknown_generator_lists_the_known_ones():
    dataset = ADDataset(_photo_records(), image_size=32)
    with pytest.raises(ValueError, match="mini_defects"):
        synthetic_records(dataset, "no_such_noise")


def test_mini_defects_change_only_the_masked_pixels():
    image = np.asarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3)), np.uint8)
    out, mask = SYNTHETIC["mini_defects"](image, np.random.default_rng(0))
    assert mask.any() and (out[~mask] == image[~mask]).all() and (out[mask] != image[mask]).any()


def test_keep_images_caches_the_resized_normalised_images(square):
    dataset = with_synthetic(ADDataset(_photo_records(n=2), image_size=32), square)
    fs = extract_features(Backbone(weights="none", stages=(1, 2)), dataset, keep_images=16)
    assert fs.masks is not None and fs.masks.shape == (4, 32, 32) and fs.masks[2:].any() and not fs.masks[:2].any()
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    expected = F.interpolate(images, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    assert fs.extras["images"].shape == (4, 3, 16, 16)
    assert torch.allclose(fs.extras["images"].float(), expected, atol=2e-2)  # float16 storage
    batch = fs.batch(torch.tensor([3, 0]))
    assert batch["labels"].tolist() == [1, 0] and batch["masks"].shape == (2, 32, 32)
    assert batch["images"].dtype == torch.float32 and torch.equal(fs.select("a").extras["images"], fs.extras["images"])


class _Scaled(nn.Module):
    """x -> w·x, with its own loss and map: records what the trainer hands it."""

    def __init__(self, **_):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.seen = []

    def forward(self, x):
        return self.w * x

    def training_loss(self, features, output, batch, progress):
        self.seen.append((batch["labels"].clone(), progress))
        return (output - features).square().mean()

    def anomaly_map(self, features, output):
        return (output - features).abs().sum(1)  # (B, h, w): an L1 map, unlike the shared kinds


def test_a_models_own_loss_and_map_are_used(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr("adnotes.train.create", lambda name, **kw: made.append(_Scaled()) or made[-1])
    features = tiny_features()
    train(tiny_config(steps=4), "own", runs=tmp_path, features=features)
    model = made[-1]
    assert [p for _, p in model.seen] == [0.0, 0.25, 0.5, 0.75]
    assert all(len(labels) == 4 for labels, _ in model.seen)
    x = features[1].take(torch.arange(3))
    assert torch.allclose(anomaly_maps(model, FeatureSet(x.half(), torch.zeros(3), ["a"] * 3, None)),
                          ((model.w.detach() - 1) * x).abs().sum(1), atol=1e-5)


def test_normalize_subtracts_the_train_sets_mean_normal_map():
    train_set, test = tiny_features()
    train_set.labels[:3] = 1  # anomalous train views must not enter the reference mean
    model = _Scaled().eval()
    with torch.no_grad():
        def raw(fs):
            x = fs.features.float()
            return (model(x) - x).abs().sum(1)
        reference = raw(train_set)[3:].mean(0)
        expected = (raw(test) - reference).abs()
    assert torch.allclose(anomaly_maps(model, test, reference=train_set), expected, atol=1e-5)


def test_train_init_starts_from_another_runs_final_weights(tmp_path):
    from adnotes.train import load_model

    features = tiny_features()
    first = train(tiny_config(steps=4), "first", runs=tmp_path, features=features)
    cfg = tiny_config(steps=2, init=str(first))
    cfg.eval.keep_steps = [0]
    second = train(cfg, "second", runs=tmp_path, features=features)
    final = torch.load(first / "seed0" / "checkpoint.pt", weights_only=True)["model"]
    start = torch.load(second / "seed0" / "weights_step0.pt", weights_only=True)
    assert final.keys() == start.keys() and all(torch.equal(final[k], start[k]) for k in final)
    rebuilt = load_model(second, step=0, features=features[1]).state_dict()
    assert all(torch.equal(final[k], rebuilt[k]) for k in final)
    with pytest.raises(FileNotFoundError, match="train.init"):
        train(tiny_config(init=str(tmp_path / "nothing")), "third", runs=tmp_path, features=features)
