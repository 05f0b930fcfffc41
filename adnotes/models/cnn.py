"""The CNN reconstruction baseline of UniAD (You et al., NeurIPS 2022, App. B.1 and B.3).

    model = adnotes.models.create("cnn", in_channels=192)   # Lite0 stages 1-4
    rec = model(features)                                   # (B, 192, 14, 14) -> (B, 192, 14, 14)

A ResNet-34 body turned into a same-resolution feature reconstructor, the baseline that shows the
"identical shortcut" (UniAD §3.1, Fig. 2: it learns to copy anomalies too):

- 1x1 conv C_in -> C (App. B.3, "1x1 convolution for CNN" as the channel reduction);
- ResNet-34 stages 1-4, BasicBlocks with depths 3, 4, 6, 3, with the stem (7x7 conv, BN, ReLU,
  max-pool) removed and ALL strides 1, so the map keeps its size (App. B.1, points 1 and 2);
- stage widths C, C/2, C/2, C with C = 256 (App. B.1, point 3);
- 1x1 conv C -> C_in back to the feature channels (App. B.3).

A block whose width changes gets a 1x1 conv + BN shortcut, as in ResNet. The output has no
activation: it regresses features. Init follows UniAD's ``initializer: xavier_uniform`` for every
conv (official code: notebooks/SOURCES.md §2.4, item 7), BatchNorm weight 1 and bias 0. The loss, the anomaly map
and the training loop are shared code; this file only holds the network.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from adnotes.models import register


@dataclass
class CNNConfig:
    in_channels: int = 272  # C_org: EfficientNet-B4 stages 1-4, 24+32+56+160 (UniAD §4.2); Lite0: 192
    hidden: int = 256  # C, the reduced channel dimension (App. B.1 point 3, App. B.3)
    depths: tuple[int, ...] = (3, 4, 6, 3)  # BasicBlocks per stage, ResNet-34 (App. B.1)

    @classmethod
    def quick(cls, **overrides) -> "CNNConfig":
        """Shrunk for CPU (not the paper's): one block per stage, C = 128; 0.77 M parameters, not 10.1 M."""
        return replace(cls(hidden=128, depths=(1, 1, 1, 1)), **overrides)

    @property
    def widths(self) -> tuple[int, ...]:
        """Stage widths C, C/2, C/2, C (App. B.1 point 3)."""
        c = self.hidden
        return (c, c // 2, c // 2, c)


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block, here always with stride 1."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if in_channels != out_channels:  # ResNet's projection shortcut, without the stride
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_a, H, W) -> (B, C_b, H, W)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


@register("cnn")
class CNN(nn.Module):
    """UniAD's CNN baseline: features (B, C_in, H, W) -> their reconstruction, same shape.

    Build from a config, keyword overrides, or both: ``CNN(in_channels=192)``,
    ``CNN(CNNConfig.quick(in_channels=192))``.
    """

    def __init__(self, config: CNNConfig | None = None, *, preset: str = "paper", **overrides) -> None:
        super().__init__()
        cfg = replace(config or (CNNConfig.quick() if preset == "quick" else CNNConfig()), **overrides)
        if cfg.hidden % 2 or cfg.hidden < 2:
            raise ValueError(f"hidden={cfg.hidden}: use an even width (stages C, C/2, C/2, C; paper: 256)")
        if len(cfg.depths) != 4 or min(cfg.depths) < 1:
            raise ValueError(f"depths={cfg.depths}: give four positive block counts (ResNet-34: 3, 4, 6, 3)")
        self.config = cfg
        self.reduce = nn.Conv2d(cfg.in_channels, cfg.hidden, 1)  # App. B.3 channel reduction
        stages, width = [], cfg.hidden
        for depth, out in zip(cfg.depths, cfg.widths):
            stages.append(nn.Sequential(*[BasicBlock(width if i == 0 else out, out) for i in range(depth)]))
            width = out
        self.stages = nn.Sequential(*stages)
        self.expand = nn.Conv2d(cfg.hidden, cfg.in_channels, 1)  # back to C_in (App. B.3)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):  # UniAD initializer: xavier_uniform, biases 0
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        c_in = self.config.in_channels
        if features.ndim != 4 or features.shape[1] != c_in:
            raise ValueError(f"expected features of shape (B, {c_in}, H, W), got {tuple(features.shape)}; "
                             "set in_channels to the backbone's channel count (Backbone.out_channels)")
        x = self.reduce(features)  # (B, C, H, W)
        x = self.stages(x)  # (B, C, H, W): every stride is 1
        return self.expand(x)  # (B, C_in, H, W)
