"""UniAD's visualisation decoder: shapes, ×2 transposed-conv stages, training, de-normalised rendering."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adnotes.models.vis_decoder import VisDecoder, load_vis_decoder, render, train_vis_decoder

MEAN = np.array([0.485, 0.456, 0.406])  # ImageNet statistics, written out here on purpose
STD = np.array([0.229, 0.224, 0.225])


@pytest.mark.parametrize("preset, blocks", [("paper", (3, 6, 4, 3)), ("quick", (1, 1, 1, 1))])
def test_offline_features_become_224_images(preset, blocks, one_thread):
    decoder = VisDecoder(192, preset=preset).eval()  # offline Lite0: 192 channels, 14×14 at 224²
    with torch.no_grad():
        out = decoder(torch.randn(1, 192, 14, 14))
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    assert tuple(len(s) for s in decoder.stages) == blocks  # ResNet-34's 3/4/6/3, stage 4 first
    with pytest.raises(AssertionError, match=r"expects \(B, 192, 14, 14\)"):
        decoder(torch.randn(1, 192, 7, 7))


@pytest.mark.parametrize("in_stride, doubling", [(16, [False, True, True, False, True, True]),
                                                  (32, [True, True, True, False, True, True])])
def test_each_upsampling_stage_doubles_with_a_transposed_conv(in_stride, doubling, one_thread):
    decoder = VisDecoder(8, 64, preset="quick", widths=(4, 4, 8, 8), in_stride=in_stride).eval()
    parts = [*decoder.stages, decoder.unpool, decoder.unstem]  # stage 4, 3, 2, 1, then the reversed stem
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append((i[0].shape[-1], o.shape[-1]))) for m in parts]
    with torch.no_grad():
        out = decoder(torch.randn(2, 8, 64 // in_stride, 64 // in_stride))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 3, 64, 64)
    for part, (h_in, h_out), up in zip(parts, sizes, doubling):
        transposed = [m for m in part.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert h_out == (2 * h_in if up else h_in)
        assert bool(transposed) == up and all(m.stride == (2, 2) for m in transposed)
    assert not any(isinstance(m, nn.Upsample) for m in decoder.modules())


def _tiny_problem(n=16):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(n, 4, 2, 2, generator=g)
    images = F.interpolate(features[:, :3], size=32, mode="bilinear", align_corners=False)  # a learnable target
    return features.half(), images


def test_training_lowers_the_loss_and_writes_its_folder(tmp_path, one_thread):
    features, images = _tiny_problem()
    args = dict(steps=30, batch_size=8, lr=1e-2, seed=1, preset="quick", widths=(8, 8, 8, 8), device="cpu")
    folder = train_vis_decoder(features, images, folder=tmp_path / "a", **args)
    with open(folder / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    config = json.loads((folder / "config.json").read_text())
    assert config["decoder"]["in_stride"] == 16 and config["decoder"]["image_size"] == 32 and config["seed"] == 1
    # The saved decoder reproduces the trained one; the same seed reproduces the run.
    decoder = load_vis_decoder(folder)
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in decoder.state_dict().items())
    final = F.mse_loss(decoder(features.float()), images).item()
    assert final < np.mean(losses[:5])
    again = train_vis_decoder(features, images, folder=tmp_path / "b", **args)
    assert (again / "curves.csv").read_text() == (folder / "curves.csv").read_text()


class _Fixed(nn.Module):
    """A 'decoder' that returns a given normalised image, whatever the features."""

    def __init__(self, output):
        super().__init__()
        self.output, self.done = output, 0

    def forward(self, x):  # successive calls return successive images (render works in chunks)
        self.done += len(x)
        return self.output[self.done - len(x): self.done]


def test_render_undoes_the_imagenet_normalisation():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    image[0, 0, 0] = (0, 255, 128)
    normalised = (image / 255.0 - MEAN) / STD                       # (B, H, W, 3), by hand
    output = torch.tensor(normalised, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()
    output[1, :, 0, 0] = 10.0                                        # far above white ...
    output[1, :, 0, 1] = -10.0                                       # ... and below black: clamped
    decoder = _Fixed(output).train()
    pictures = render(decoder, torch.zeros(3, 4, 2, 2), batch_size=2)
    expected = image.astype(int)
    expected[1, 0, 0], expected[1, 0, 1] = 255, 0
    assert pictures.shape == (3, 8, 8, 3) and pictures.dtype == np.uint8
    assert np.abs(pictures.astype(int) - expected).max() <= 1
    assert decoder.training  # render() puts the decoder back in the mode it found it in


def test_train_or_load_trains_one_decoder_per_class_in_separate_mode(tmp_path, monkeypatch, one_thread):
    from adnotes.features import FeatureSet
    from adnotes.models.vis_decoder import load_vis_decoder, train_or_load_vis_decoder
    from adnotes.train import Config

    g = torch.Generator().manual_seed(0)
    fs = FeatureSet(torch.randn(6, 8, 4, 4, generator=g).half(), torch.zeros(6, dtype=torch.long),
                    ["a", "a", "a", "b", "b", "b"], None, {"images": torch.randn(6, 3, 16, 16, generator=g).half()})
    monkeypatch.setattr("adnotes.train.load_features", lambda cfg, device="cpu", splits=("train", "test"): (fs,))
    cfg = Config.load(None, ["data.keep_images=16", "train.steps=2", "train.batch_size=2", "train.mode=separate",
                             "train.device=cpu", "model.preset=quick"])
    folder = train_or_load_vis_decoder(cfg, "vis", runs=tmp_path)
    assert sorted(p.parent.name for p in folder.glob("*/weights.pt")) == ["a", "b"]
    assert load_vis_decoder(folder, cls="b")(fs.features[:1].float()).shape == (1, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="one decoder per class"):
        load_vis_decoder(folder)
    assert train_or_load_vis_decoder(cfg, "vis", runs=tmp_path) == folder  # finished: loaded, not trained again
