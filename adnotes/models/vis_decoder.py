"""UniAD's visualisation decoder: render backbone features as images (UniAD App. B.3, Fig. 2b).

    folder = train_vis_decoder(fs.features, fs.extras["images"], steps=2000, folder=runs / "vis")
    decoder = load_vis_decoder(folder)
    pictures = render(decoder, reconstructed_features)     # (B, 224, 224, 3) uint8

Feature reconstruction cannot be looked at directly, so UniAD pre-trains a decoder that maps the
frozen backbone's features back to the image, "on both normal and anomalous samples", and
feeds it the *reconstructed* features to show what a model reconstructs (is a defect copied
through - the identical shortcut - or repaired?). It is only for pictures: no score uses it,
and it is not an anomaly detector (so it is not in the model registry).

Architecture (App. B.3): "a reversed architecture of ResNet-34 ... the down-sampling in the
original network is replaced by up-sampling implemented by the transposed convolution". ResNet-34
is a stem (7×7/2 conv, 3×3/2 max-pool) and four stages of BasicBlocks, widths 64/128/256/512 and
3/4/6/3 blocks, stages 2-4 halving the resolution. Run backwards, from features at stride s:

    (B, C_in, H/s, W/s)
    stage 4 (512 wide, 3 blocks)   ×2 if s = 32, else same size
    stage 3 (256 wide, 6 blocks)   ×2 if s ≥ 16
    stage 2 (128 wide, 4 blocks)   ×2 if s ≥ 8
    stage 1 ( 64 wide, 3 blocks)   same size (stride 4)
    stem: ×2 (undoes the max-pool), ×2 (undoes the 7×7/2 conv), 7×7 conv to RGB
    (B, 3, H, W)  in ImageNet-normalised space (no output activation)

so the offline Lite0 features (192 channels at stride 16, 14×14 at 224²) become 224×224 images.
A block that up-samples is BasicBlock reversed: 3×3 conv, BN, ReLU, then a 4×4 transposed conv of
stride 2 (kernel divisible by the stride: every output pixel gets the same number of taps, which
avoids checkerboard artefacts), BN, plus a 2×2/2 transposed-conv shortcut with BN, then ReLU.
The official code (`zhiyuanyou/UniAD`, `models/reconstructions/vis_decoder.py`) differs from the
paper's text: it up-samples with bilinear `nn.Upsample`, its last stage is 128 wide and it ends in
a 1×1 conv; we follow the paper's text.

Training (official `experiments/train_vis_decoder/config.yaml`; the paper gives no loss): MSE
between the decoded and the input image, both ImageNet-normalised (`ImageMSELoss`), AdamW lr 1e-4,
weight decay 1e-4, batch 32, gradient clipping 0.1, 1000 epochs with the lr ×0.1 after 800, one
decoder per MVTec class trained on that class's *test* images (normal and defective). Our
:func:`train_vis_decoder` takes whatever images it is given (for the unified setting: the
train images of all classes, plus test images if one wants defects seen in training too).

Parameters (C_in 192): "paper" 24.30 M (ResNet-34 itself: 21.8 M); "quick" (a quarter of the widths,
one block per stage) about 1 M. The quick results recipe draws 112² pictures (features at stride 8
of them), ~0.4 s per step of batch 8 on one CPU thread; train "paper" on a GPU.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.datasets import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["VisDecoderConfig", "VisDecoder", "PRESETS", "train_vis_decoder", "train_or_load_vis_decoder",
           "load_vis_decoder", "render"]

PRESETS: dict[str, dict] = {
    "paper": {},                                            # ResNet-34 reversed (App. B.3)
    "quick": dict(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)),  # CPU labs; NOT the paper's decoder
}


@dataclass
class VisDecoderConfig:
    in_channels: int = 192                     # C_in: offline Lite0 stages 1-4 (16+24+40+112); UniAD: 272
    image_size: int = 224                      # output H = W (UniAD §4.2)
    in_stride: int = 16                        # image_size / feature size: 14×14 at 224² (UniAD §4.2)
    widths: tuple[int, ...] = (64, 128, 256, 512)  # ResNet-34 stage widths, stage 1..4 (run 4 -> 1)
    blocks: tuple[int, ...] = (3, 4, 6, 3)     # ResNet-34 blocks per stage, stage 1..4

    def __post_init__(self) -> None:
        self.widths, self.blocks = tuple(int(w) for w in self.widths), tuple(int(b) for b in self.blocks)
        checks = [
            (len(self.widths) == 4 and len(self.blocks) == 4, "widths and blocks take 4 numbers (ResNet stages 1..4)"),
            (all(w > 0 for w in self.widths) and all(b > 0 for b in self.blocks), "widths and blocks must be > 0"),
            (self.in_stride in (4, 8, 16, 32), f"in_stride must be 4, 8, 16 or 32, got {self.in_stride}"),
            (self.image_size % self.in_stride == 0,
             f"image_size {self.image_size} must be a multiple of in_stride {self.in_stride}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def feature_size(self) -> int:
        return self.image_size // self.in_stride

    @classmethod
    def preset(cls, name: str = "paper", **fields_) -> VisDecoderConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(fields_) - known):
            raise ValueError(f"unknown VisDecoder config field(s) {unknown}; fields: {', '.join(sorted(known))}")
        return cls(**{**PRESETS[name], **fields_})


# ----------------------------------------------------------------------------- blocks
class UpBlock(nn.Module):
    """ResNet's BasicBlock run backwards; ``up``: the second conv is a ×2 transposed conv."""

    def __init__(self, c_in: int, c_out: int, up: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = (nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False) if up
                      else nn.Conv2d(c_in, c_out, 3, padding=1, bias=False))
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if up:
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False),
                                          nn.BatchNorm2d(c_out))
        elif c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))          # (B, C_in, h, w)
        out = self.bn2(self.conv2(out))                   # (B, C_out, 2h, 2w) if up, else (B, C_out, h, w)
        return self.relu(out + self.shortcut(x))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """×2 transposed conv, BN, ReLU: one reversed down-sampling of the ResNet stem."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class VisDecoder(nn.Module):
    """Backbone features (B, C_in, S/s, S/s) -> image (B, 3, S, S), ImageNet-normalised."""

    def __init__(self, in_channels: int = 192, image_size: int = 224, *, preset: str = "paper", **fields_):
        super().__init__()
        self.config = cfg = VisDecoderConfig.preset(preset, in_channels=in_channels, image_size=image_size, **fields_)
        stages, c = [], cfg.in_channels
        for k in (4, 3, 2, 1):  # ResNet stage k, run backwards
            width, n = cfg.widths[k - 1], cfg.blocks[k - 1]
            up = k >= 2 and 2 ** (k + 1) <= cfg.in_stride  # stage k's output stride is 2^(k+1); undo its halving
            stage = [UpBlock(c, width, up)] + [UpBlock(width, width, False) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            c = width
        self.stages = nn.ModuleList(stages)                       # stage 4, 3, 2, 1
        w = cfg.widths[0]
        self.unpool = _up(w, w)                                   # undoes the stem's 3×3/2 max-pool
        self.unstem = _up(w, w)                                   # undoes the stem's 7×7/2 conv ...
        self.to_rgb = nn.Conv2d(w, 3, 7, padding=3)               # ... and its 7×7 kernel, to RGB
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # torchvision ResNet
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        assert x.ndim == 4 and x.shape[1] == cfg.in_channels and tuple(x.shape[-2:]) == (cfg.feature_size,) * 2, (
            f"VisDecoder expects (B, {cfg.in_channels}, {cfg.feature_size}, {cfg.feature_size}) features "
            f"(image_size {cfg.image_size} / in_stride {cfg.in_stride}), got {tuple(x.shape)}")
        for stage in self.stages:
            x = stage(x)                                          # ... -> (B, widths[0], S/4, S/4)
        x = self.unstem(self.unpool(x))                           # (B, widths[0], S, S)
        return self.to_rgb(x)                                     # (B, 3, S, S)


# ----------------------------------------------------------------------------- training and rendering
def train_vis_decoder(features: Tensor, images: Tensor, *, steps: int = 2000, batch_size: int = 32,
                      lr: float = 1e-4, seed: int = 0, folder: str | Path, preset: str = "paper",
                      weight_decay: float = 1e-4, clip_grad: float = 0.1, decay_at: float = 0.8,
                      device: str = "auto", **decoder_args) -> Path:
    """Fit a :class:`VisDecoder` from ``features`` (N, C, h, w) to ``images`` (N, 3, S, S),
    ImageNet-normalised, with MSE. Writes ``config.json``, ``curves.csv`` (step, loss) and
    ``weights.pt`` to ``folder`` and returns it. Defaults: the official config (module docstring);
    batches are epoch-wise permutations fixed by ``seed`` (the trainer's ``_batches``)."""
    from tqdm.auto import tqdm

    from ..train import TrainSection, _batches, _device, _optimizer

    if features.ndim != 4 or images.ndim != 4 or images.shape[1] != 3 or len(features) != len(images):
        raise ValueError(f"need features (N, C, h, w) and images (N, 3, S, S) of the same N, got "
                         f"{tuple(features.shape)} and {tuple(images.shape)}")
    if images.shape[-1] % features.shape[-1]:
        raise ValueError(f"image size {images.shape[-1]} is not a multiple of the feature size {features.shape[-1]}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dev = _device(device)
    torch.manual_seed(seed)
    decoder = VisDecoder(features.shape[1], images.shape[-1], preset=preset,
                         in_stride=images.shape[-1] // features.shape[-1], **decoder_args).to(dev)
    t = TrainSection(lr=lr, weight_decay=weight_decay)
    optimizer = _optimizer(decoder, t)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, int(decay_at * steps)), gamma=0.1)
    settings = dict(preset=preset, decoder=asdict(decoder.config), steps=steps, batch_size=batch_size, lr=lr,
                    seed=seed, weight_decay=weight_decay, clip_grad=clip_grad, decay_at=decay_at,
                    n_images=len(images), loss="mse on ImageNet-normalised images (official ImageMSELoss)")
    (folder / "config.json").write_text(json.dumps(settings, indent=2))
    decoder.train()
    rows = []
    bar = tqdm(range(steps), desc="vis decoder", unit="step")
    for step in bar:
        idx = _batches(len(images), batch_size, seed, step)
        x, y = features[idx].to(dev).float(), images[idx].to(dev).float()  # (B, C, h, w), (B, 3, S, S)
        loss = nn.functional.mse_loss(decoder(x), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at step {step + 1}: stopped; try a lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), clip_grad)
        optimizer.step()
        scheduler.step()
        rows.append((step + 1, loss.item()))
        bar.set_postfix_str(f"loss {rows[-1][1]:.4f}")
    with open(folder / "curves.csv", "w", newline="") as f:
        csv.writer(f).writerows([("step", "loss"), *rows])
    torch.save(decoder.state_dict(), folder / "weights.pt")
    return folder


def load_vis_decoder(folder: str | Path, device: str | torch.device = "cpu", cls: str | None = None) -> VisDecoder:
    """The decoder :func:`train_vis_decoder` wrote to ``folder`` (``cls``: the one of that class, when
    one decoder per class was trained), in eval mode."""
    folder = Path(folder) / (cls or "")
    if not (folder / "weights.pt").is_file():
        per_class = sorted(p.parent.name for p in folder.glob("*/weights.pt"))
        if per_class:
            raise FileNotFoundError(f"{folder} holds one decoder per class: pass cls= one of {', '.join(per_class)}")
        raise FileNotFoundError(f"no weights.pt in {folder}: train it with train_vis_decoder(..., folder=...)")
    settings = json.loads((folder / "config.json").read_text())
    decoder = VisDecoder(**settings["decoder"])  # the full config, so the preset adds nothing
    decoder.load_state_dict(torch.load(folder / "weights.pt", map_location=device, weights_only=True))
    return decoder.to(device).eval()


@torch.no_grad()
def render(decoder: nn.Module, features: Tensor, batch_size: int = 32) -> np.ndarray:
    """Decode ``features`` (B, C, h, w) into (B, S, S, 3) uint8 pictures: undo the ImageNet
    normalisation (x·std + mean), clamp to [0, 1], scale to 0..255 and round."""
    was_training = decoder.training
    decoder.eval()
    device = next(decoder.parameters(), torch.empty(0)).device
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    out = []
    try:
        for chunk in features.split(batch_size):
            x = decoder(chunk.to(device).float())                        # (b, 3, S, S) normalised
            x = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
            out.append(x.permute(0, 2, 3, 1).cpu())                      # (b, S, S, 3)
    finally:
        decoder.train(was_training)
    return torch.cat(out).numpy()


def train_or_load_vis_decoder(cfg, prefix: str = "vis_decoder", *, runs: str | Path | None = None) -> Path:
    """The decoder for the features that the run config ``cfg`` names, trained once.

    It learns from ``cfg``'s train split (with its generated defects, ``data.synthetic``, so that
    it has seen defects as the paper's decoder has) and the images cached beside the features
    (``data.keep_images`` sets their size, hence the decoder's output size). ``train.steps``,
    ``train.batch_size``, ``train.lr``, ``train.seeds[0]`` and ``model.preset`` set the training;
    ``train.mode: separate`` trains one decoder per class in ``<folder>/<class>/``, as the official
    code does. The folder is ``runs/<prefix>-<config hash>`` with ``config.yaml`` beside the decoders."""
    import yaml

    from ..paths import runs_dir
    from ..train import _environment, load_features, run_name

    folder = (Path(runs) if runs is not None else runs_dir()) / run_name(cfg, prefix)
    done = folder / "classes.json"  # written last: the decoder (or every per-class one) has finished
    if done.is_file():
        print(f"found trained decoder {folder}: loading")
        return folder
    if not cfg.data.keep_images:
        raise ValueError("the decoder learns to draw the cached images: set data.keep_images (e.g. 112)")
    train_set, = load_features(cfg, splits=("train",))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (folder / "environment.json").write_text(json.dumps(_environment(), indent=2))
    t = cfg.train
    classes = sorted(set(train_set.classes)) if t.mode == "separate" else [None]
    for cls in classes:
        subset = train_set.select(cls) if cls else train_set
        steps = t.epochs * max(1, len(subset) // t.batch_size) if t.epochs else t.steps
        train_vis_decoder(subset.features, subset.extras["images"], steps=steps, batch_size=t.batch_size, lr=t.lr,
                          seed=t.seeds[0], folder=folder / (cls or ""), preset=cfg.model.preset,
                          weight_decay=t.weight_decay, clip_grad=t.clip_grad, decay_at=t.decay_at, device=t.device)
    done.write_text(json.dumps([c for c in classes if c]))
    return folder
