"""The feature cache and the nearest-neighbour baseline, with a tiny stand-in backbone."""
import torch
from torch import nn

from adnotes.data import ADDataset, mvtec_records
from adnotes.demo import memory_bank, nearest_neighbour_maps
from adnotes.features import FeatureSet, cached_features

from fixtures import make_mvtec


def _entries(cache):
    """The cache entries (one folder each) in a cache folder."""
    return [p for p in cache.iterdir() if p.is_dir()]


class CountingBackbone(nn.Module):
    """Average-pools to stride 4 and counts its calls."""

    fingerprint = "toy-s1-os4"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return nn.functional.avg_pool2d(x, 4)

    def stage_maps(self, x):  # two "stages" at strides 2 and 4
        self.calls += 1
        return [nn.functional.avg_pool2d(x, 2), nn.functional.avg_pool2d(x, 4)]


def test_features_are_cached_and_keyed_by_dataset(tmp_path):
    root = make_mvtec(tmp_path / "d")
    ds = ADDataset(mvtec_records(root, "test"), image_size=16, name="toy/test")
    backbone = CountingBackbone()
    first = cached_features(backbone, ds, cache_dir=tmp_path / "cache", batch_size=4)
    calls = backbone.calls
    again = cached_features(backbone, ds, cache_dir=tmp_path / "cache", batch_size=4)
    assert backbone.calls == calls  # second time: read from disk
    assert torch.equal(first.features, again.features) and again.classes == first.classes
    assert first.features.dtype == torch.float16 and first.features.shape == (6, 3, 4, 4)
    # The features are the backbone's output on the dataset's items, in order.
    assert torch.allclose(first.features[2].float(), backbone(ds[2]["image"][None])[0], atol=1e-2)
    assert torch.equal(first.masks[0], ds[0]["mask"][0] > 0.5) and first.labels.tolist() == ds.labels.tolist()
    # Another image size is another dataset fingerprint, so another cache entry.
    ds32 = ADDataset(mvtec_records(root, "test"), image_size=32, name="toy/test")
    assert cached_features(backbone, ds32, cache_dir=tmp_path / "cache").features.shape[-1] == 8
    assert len(_entries(tmp_path / "cache")) == 2
    # A per-class view.
    assert first.select("wood").classes == ["wood"] * 3


def test_multiscale_features_keep_each_stage_and_have_their_own_cache_entry(tmp_path):
    root = make_mvtec(tmp_path / "d")
    ds = ADDataset(mvtec_records(root, "test"), image_size=16, name="toy/test")
    backbone = CountingBackbone()
    single = cached_features(backbone, ds, cache_dir=tmp_path / "cache")
    multi = cached_features(backbone, ds, cache_dir=tmp_path / "cache", multiscale=True)
    assert multi.multiscale and not single.multiscale and len(_entries(tmp_path / "cache")) == 2
    assert [tuple(f.shape) for f in multi.features] == [(6, 3, 8, 8), (6, 3, 4, 4)] and multi.channels == (3, 3)
    calls = backbone.calls
    again = cached_features(backbone, ds, cache_dir=tmp_path / "cache", multiscale=True)
    assert backbone.calls == calls and all(torch.equal(a, b) for a, b in zip(again.features, multi.features))
    expected = nn.functional.avg_pool2d(ds[4]["image"][None], 2)[0]
    assert torch.allclose(multi.features[0][4].float(), expected, atol=1e-2)
    wood = multi.select("wood")
    assert [f.shape[0] for f in wood.features] == [3, 3]
    batch = wood.take(torch.tensor([2, 0]))
    assert torch.equal(batch[1][0], wood.features[1][2].float())


def test_nearest_neighbour_maps_match_brute_force():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=g)
    feats = torch.randn(3, 8, 2, 5, generator=g)
    maps = nearest_neighbour_maps(bank, feats, chunk=7)
    for n in range(3):
        for i in range(2):
            for j in range(5):
                expected = min(float(torch.sqrt(((feats[n, :, i, j] - b) ** 2).sum())) for b in bank)
                assert abs(float(maps[n, i, j]) - expected) < 1e-4


def test_memory_bank_subsamples_all_training_tokens():
    feats = torch.arange(2 * 3 * 4 * 4, dtype=torch.float16).view(2, 3, 4, 4)
    train = FeatureSet(feats, torch.zeros(2, dtype=torch.long), ["a", "b"], None)
    full = memory_bank(train, size=10_000)
    assert full.shape == (32, 3)
    assert torch.equal(full[5], feats[0, :, 1, 1].float())  # token (1, 1) of image 0
    small = memory_bank(train, size=10, seed=1)
    assert small.shape == (10, 3) and torch.equal(small, memory_bank(train, size=10, seed=1))
