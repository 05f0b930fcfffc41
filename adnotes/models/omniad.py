"""Omni-AD (Quan et al., ICME 2025, arXiv 2503.21125): multi-scale reverse distillation with Omni-blocks.

    cfg = OmniADConfig.quick()                       # Lite0 stages 2-4, 224 x 224 images
    model = adnotes.models.create("omniad", **vars(cfg))
    teacher = backbone.stage_maps(images)            # [(B, 24, 56, 56), (B, 40, 28, 28), (B, 112, 14, 14)]
    student = model(teacher)                         # the same shapes
    loss = omniad_loss(teacher, student)             # training
    amap = multiscale_cosine_map(teacher, student, size=224)   # (B, 224, 224); image score = amap max
    with branch_probe(model, drop="local") as seen:  # record the Omni-blocks' branches, switch one off
        model(teacher)

The layout follows the official code (easyoo/Omni-AD @ d85c5f4). Section numbers (§) in this file
are those of notebooks/SOURCES.md, here §1.3-1.7:

    teacher maps, strides 4/8/16 (ResNet-34 layers 1-3 in the paper: 64@64², 128@32², 256@16² at 256²)
    -> Neck: fuse the scales into one bottleneck                                 (B, 512, 8, 8)
    -> feature jitter (training only)
    -> decoder: 4 stages of Omni-blocks, depths 3/9/9/7, widths 512/256/128/64, a x2 PatchExpand
       before stages 2-4                                          (B, 8, 8, 512) ... (B, 64, 64, 64)
    -> the last three stages' outputs, finest first, reconstruct the teacher's three maps.

An Omni-block (§1.4) adds a global branch (two attentions around learnable tokens) and a local
branch (3x3 and 5x5 depthwise-separable convs), mixes them with Linear -> InstanceNorm -> SiLU ->
Linear and adds the block input. The decoder works channels-last, ``(B, H, W, C)``, as the official
one does; the model's inputs and outputs are ``(B, C, H, W)``.

Decisions on the official code's quirks (§1.5) and other details:

- Q1, the attention output MLP (Linear -> SiLU -> Linear) is built inside the official ``forward``:
  fresh random weights on every call, never trained, non-deterministic scores. Here it is a
  registered, trained layer (presumably what the paper describes). ``fresh_attention_mlp=True`` reproduces
  the official behaviour (PyTorch default init, new draw per call, not a parameter).
- Q2, the learned positional biases are added to the attention *probabilities*, after the softmax
  (rows then need not sum to 1): kept, as in the code.
- Q3, the InstanceNorm after the block's first Linear normalises each channel over H x W: kept.
- Q4-Q7 concern the data, the evaluator and logging, not the model.
- Feature jitter (scale 20) is applied on every training step (the code's p = 1) and never in
  eval mode, so ``model.eval()`` is deterministic.
- ``drop_path_rate = 0.2`` is computed but unused in the code: no drop path here either.
- Neck: the code's ``Neck`` *adds* each downsampled scale to the next one (RD4AD's OCBE
  concatenates them); we follow the code.
- Init as the code (§1.3): Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0), neck convs
  Kaiming-normal (fan_out), BatchNorm (1, 0), Omni-block convs PyTorch's default, tokens and
  positional biases zeros (so at first step A averages the map uniformly).
- The paper's decoder widths 256/128/64 equal the teacher's channels, so its outputs need no
  projection; for other teachers (our Lite0: 24/40/112) a Linear maps each output to the teacher's
  channels (identity where they already match).
- The anomaly map averages the three 1 - cos maps (the code divides their sum by 9, a constant).

Sizes: the teacher maps must halve from scale to scale and the coarsest must be even, i.e. images
whose side is a multiple of 32 for strides 4/8/16: 256² gives an 8 x 8 bottleneck (the paper's),
224² gives 7 x 7. Training settings (AdamW 1e-3, weight decay 1e-4 on tensors with >= 2 dims,
clip-norm 5, batch 16, 1000 epochs, x0.1 at 80%: §1.6) belong to the trainer, not to this file.

Parameters (§1.9): the paper preset counts 27.99 M, the official code 21.76 M. The whole difference
(6.23 M) is Q1: our 56 attention MLPs (two per block) are trained parameters, the official ones are
redrawn on every call; with ``fresh_attention_mlp=True`` the count is the official one.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from adnotes.metrics import gaussian_smooth
from adnotes.models import register
from adnotes.models.objectives import anomaly_map, reconstruction_loss


@dataclass
class OmniADConfig:
    in_channels: tuple[int, ...] = (64, 128, 256)  # teacher maps: ResNet-34 layers 1-3 (§1.3)
    in_strides: tuple[int, ...] = (4, 8, 16)  # their strides: 64/32/16 maps at 256², 56/28/14 at 224²
    widths: tuple[int, ...] = (512, 256, 128, 64)  # decoder stage widths; widths[0] = bottleneck channels
    depths: tuple[int, ...] = (3, 9, 9, 7)  # Omni-blocks per decoder stage, 28 in all (§1.3)
    neck_blocks: int = 3  # ResNet Bottleneck blocks ending the neck, the first with stride 2 (§1.3)
    num_tokens: int = 64  # learnable query tokens, and as many key/value tokens: an 8x8 grid (§1.4)
    heads: int = 8  # attention heads at every stage, head dim = width / 8 (§1.4)
    jitter_scale: float = 20.0  # feature jitter on the bottleneck, every training step (§1.3)
    fresh_attention_mlp: bool = False  # True: the official quirk Q1 (untrained random MLP per call)
    loss: str = "mse"  # training loss, summed over scales (official L2Loss, §1.6), for the trainer
    map_kind: str = "cos"  # anomaly map: mean over scales of 1 - cos (§1.7), for the trainer

    @classmethod
    def quick(cls, **overrides) -> "OmniADConfig":
        """Shrunk for CPU (not the paper's): Lite0 stages 2-4 (24/40/112 channels, strides 4/8/16),
        one Omni-block per stage at widths 128/64/32/16, and 49 tokens, a 7 x 7 grid matching the
        7 x 7 bottleneck of 224² images as the paper's 8 x 8 grid matches its 256² bottleneck."""
        quick = cls(in_channels=(24, 40, 112), widths=(128, 64, 32, 16), depths=(1, 1, 1, 1), num_tokens=49)
        return replace(quick, **overrides)

    def feature_shapes(self, image_size: int) -> list[tuple[int, int, int]]:
        """The teacher maps' (C, H, W) for square images of side ``image_size``."""
        return [(c, image_size // s, image_size // s) for c, s in zip(self.in_channels, self.in_strides)]


# ----------------------------------------------------------------------------- neck
class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=bias),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    """ResNet's 1x1 -> 3x3 (stride here) -> 1x1 x4 block with a projection shortcut when needed."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = ConvBNReLU(c_in, planes, 1)
        self.conv2 = ConvBNReLU(planes, planes, 3, stride)
        self.conv3 = nn.Sequential(nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, 4 planes, H / s, W / s)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class Neck(nn.Module):
    """Fuse the teacher's scales into one bottleneck (the official ``Neck``, RD4AD's OCBE as adapted).

    From the finest scale down: a 3x3 stride-2 conv brings the running map to the next scale, where
    a 1x1 conv of that scale's map is added; then a 1x1 conv and Bottleneck blocks, the first with
    stride 2. Paper: [64@64², 128@32², 256@16²] -> 512@8². The fusion convs are conv -> BN -> ReLU,
    the 3x3 ones without bias, the 1x1 ones with.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, blocks: int) -> None:
        super().__init__()
        c = list(in_channels)
        self.down = nn.ModuleList(ConvBNReLU(c[k], c[k + 1], 3, stride=2) for k in range(len(c) - 1))
        self.lateral = nn.ModuleList(ConvBNReLU(c[k], c[k], 1, bias=True) for k in range(1, len(c)))
        self.mix = ConvBNReLU(c[-1], c[-1], 1, bias=True)
        planes = out_channels // Bottleneck.expansion
        self.blocks = nn.Sequential(Bottleneck(c[-1], planes, stride=2),
                                    *[Bottleneck(out_channels, planes) for _ in range(blocks - 1)])

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        x = maps[0]  # (B, C_1, H_1, W_1), the finest scale
        for down, lateral, f in zip(self.down, self.lateral, maps[1:]):
            x = down(x) + lateral(f)  # (B, C_k, H_k, W_k)
        return self.blocks(self.mix(x))  # (B, C_bottleneck, H_n / 2, W_n / 2)


def feature_jitter(x: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, C, H, W) + N(0, 1) noise * scale * ||x||_2 / C per position (UniAD §3.4, ADer ``add_jitter``)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True) / x.shape[1]  # (B, 1, H, W)
    return x + torch.randn_like(x) * norm * scale


# ----------------------------------------------------------------------------- Omni-block
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor) -> torch.Tensor:
    """Multi-head attention with a learned bias added to the probabilities, AFTER the softmax (Q2):
    (softmax(Q K^T / sqrt(d)) + bias) V, computed as fused attention plus bias V.

    q (B_q, N_q, C); k, v (B_k, N_k, C) with batch sizes that broadcast (a token set has batch 1);
    bias (1, heads, N_q or 1, N_k or 1), broadcast over the keys or the queries. Returns (B, N_q, C).
    """
    def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    batch = max(q.shape[0], k.shape[0])
    q, k, v = (split(t).expand(batch, -1, -1, -1) for t in (q, k, v))  # (B, h, N, d)
    out = F.scaled_dot_product_attention(q, k, v)  # softmax(Q K^T / sqrt(d)) V, (B, h, N_q, d)
    # + bias V without expanding the bias to N_q x N_k: a per-query bias multiplies the sum of V
    out = out + (bias * v.sum(dim=-2, keepdim=True) if bias.shape[-1] == 1 else bias @ v)
    return out.transpose(1, 2).flatten(2)  # (B, N_q, C)


def tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, N, C) tokens, read row-major as a sqrt(N) x sqrt(N) grid -> (B, H, W, C), nearest resampling."""
    b, n, c = tokens.shape
    side = math.isqrt(n)
    grid = tokens.transpose(1, 2).reshape(b, c, side, side)  # (B, C, side, side)
    return F.interpolate(grid, size=size, mode="nearest").permute(0, 2, 3, 1)  # (B, H, W, C)


class OutputMLP(nn.Module):
    """Linear -> SiLU -> Linear after each attention (the official ``Mlp``, hidden width = C).

    fresh=True is the official quirk Q1: new PyTorch-default Linear weights on every call, never trained.
    """

    def __init__(self, dim: int, fresh: bool = False) -> None:
        super().__init__()
        self.dim, self.fresh = dim, fresh
        if not fresh:
            self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fresh:
            fc1, fc2 = (nn.Linear(self.dim, self.dim, device=x.device, dtype=x.dtype) for _ in range(2))
        else:
            fc1, fc2 = self.fc1, self.fc2
        return fc2(F.silu(fc1(x)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, fresh={self.fresh}"


class GlobalBranch(nn.Module):
    """Two attentions in series around learnable tokens (the official ``ToProxy2``, §1.4).

    A: N learnable query tokens read the map (keys/values from x); the N outputs, seen as a
       sqrt(N) x sqrt(N) grid, are nearest-resampled to H x W and added to the map: m = x + up(A).
    B: the map m reads N learnable key/value tokens.
    Output B + m + x, that is B + up(A) + 2x, as in the code. No normalisation inside.
    """

    def __init__(self, dim: int, heads: int, num_tokens: int, fresh_mlp: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.query_tokens = nn.Parameter(torch.zeros(1, num_tokens, dim))  # T_q
        self.kv_tokens = nn.Parameter(torch.zeros(1, num_tokens, dim))  # T_kv
        self.q_a, self.kv_a = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)  # A: Q from T_q, K/V from x
        self.q_b, self.kv_b = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)  # B: Q from m, K/V from T_kv
        self.bias_a = nn.Parameter(torch.zeros(1, heads, num_tokens, 1))  # pe2: per query token
        self.bias_b = nn.Parameter(torch.zeros(1, heads, 1, num_tokens))  # pe1: per key/value token
        self.mlp_a, self.mlp_b = OutputMLP(dim, fresh_mlp), OutputMLP(dim, fresh_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape  # (B, H, W, C)
        k, v = self.kv_a(x.reshape(b, h * w, c)).chunk(2, dim=-1)  # (B, HW, C) each
        a = attend(self.q_a(self.query_tokens), k, v, self.heads, self.bias_a)  # (B, N, C)
        m = x + tokens_to_map(self.mlp_a(a), (h, w))  # (B, H, W, C)
        k, v = self.kv_b(self.kv_tokens).chunk(2, dim=-1)  # (1, N, C) each
        out = attend(self.q_b(m.reshape(b, h * w, c)), k, v, self.heads, self.bias_b)  # (B, HW, C)
        return self.mlp_b(out).view(b, h, w, c) + m + x  # (B, H, W, C)


def separable_conv(dim: int, kernel: int) -> nn.Sequential:
    """Depthwise kxk conv -> InstanceNorm -> SiLU -> 1x1 conv -> InstanceNorm -> SiLU (``DWConv``)."""
    return nn.Sequential(nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim), nn.InstanceNorm2d(dim),
                         nn.SiLU(), nn.Conv2d(dim, dim, 1), nn.InstanceNorm2d(dim), nn.SiLU())


class LocalBranch(nn.Module):
    """3x3 and 5x5 depthwise-separable convs, concatenated, fused by a 1x1 conv -> InstanceNorm -> SiLU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv3, self.conv5 = separable_conv(dim, 3), separable_conv(dim, 5)
        self.merge = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.InstanceNorm2d(dim), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        y = self.merge(torch.cat([self.conv3(y), self.conv5(y)], dim=1))  # (B, C, H, W)
        return y.permute(0, 2, 3, 1)  # (B, H, W, C)


class OmniBlock(nn.Module):
    """x + Linear(SiLU(InstanceNorm(Linear(global(x) + local(x))))), channels-last (§1.4)."""

    def __init__(self, dim: int, heads: int, num_tokens: int, fresh_mlp: bool = False) -> None:
        super().__init__()
        self.global_branch = GlobalBranch(dim, heads, num_tokens, fresh_mlp)
        self.local_branch = LocalBranch(dim)
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        y = self.fc1(self.global_branch(x) + self.local_branch(x))
        y = F.instance_norm(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # Q3: per channel over H x W
        return x + self.fc2(F.silu(y))


class PatchExpand(nn.Module):
    """x2 upsampling: Linear to 4 C_out, pixel shuffle, LayerNorm (MambaAD's ``PatchExpand2D``)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 4 * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape  # (B, H, W, C)
        x = self.expand(x).view(b, h, w, 2, 2, -1)  # (B, H, W, 2, 2, C_out)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1)  # (B, 2H, 2W, C_out)
        return self.norm(x)


# ----------------------------------------------------------------------------- the model
@register("omniad")
class OmniAD(nn.Module):
    """Omni-AD's trainable part: teacher maps (list of (B, C_k, H_k, W_k)) -> reconstructions, same shapes.

    Build from a config, keyword overrides, or both: ``OmniAD()``, ``OmniAD(OmniADConfig.quick())``,
    ``OmniAD(depths=(1, 1, 1, 1))``. The teacher itself (frozen backbone) lives outside the model.
    """

    def __init__(self, config: OmniADConfig | None = None, *, preset: str = "paper", **overrides) -> None:
        super().__init__()
        cfg = replace(config or (OmniADConfig.quick() if preset == "quick" else OmniADConfig()), **overrides)
        n = len(cfg.in_channels)
        if len(cfg.in_strides) != n or any(b != 2 * a for a, b in zip(cfg.in_strides, cfg.in_strides[1:])):
            raise ValueError(f"in_strides={cfg.in_strides}: give one stride per teacher map (in_channels has "
                             f"{n}), each twice the previous, e.g. (4, 8, 16): the neck halves the size "
                             "per scale")
        if len(cfg.widths) != n + 1 or len(cfg.depths) != n + 1:
            raise ValueError(f"widths={cfg.widths}, depths={cfg.depths}: give {n + 1} decoder stages for {n} "
                             "teacher maps (the bottleneck stage plus one per map), e.g. (3, 9, 9, 7)")
        if cfg.widths[0] % Bottleneck.expansion or any(w % cfg.heads for w in cfg.widths):
            raise ValueError(f"widths={cfg.widths}: widths[0] must be a multiple of 4 (Bottleneck expansion) "
                             f"and every width a multiple of heads={cfg.heads}")
        if math.isqrt(cfg.num_tokens) ** 2 != cfg.num_tokens:
            raise ValueError(f"num_tokens={cfg.num_tokens}: use a square number (the tokens form a grid), "
                             "e.g. 64")
        self.config = cfg

        self.neck = Neck(cfg.in_channels, cfg.widths[0], cfg.neck_blocks)
        self.stages = nn.ModuleList()
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths)):
            expand = nn.Identity() if i == 0 else PatchExpand(cfg.widths[i - 1], width)  # x2 before stages 2+
            blocks = [OmniBlock(width, cfg.heads, cfg.num_tokens, cfg.fresh_attention_mlp)
                      for _ in range(depth)]
            self.stages.append(nn.Sequential(expand, *blocks))
        # stage n - k reconstructs teacher map k (the finest map comes from the last stage)
        self.project = nn.ModuleList(nn.Identity() if w == c else nn.Linear(w, c)
                                     for w, c in zip(cfg.widths[::-1], cfg.in_channels))
        self._init_weights()

    def _init_weights(self) -> None:
        """The official init (§1.3); Omni-block convs keep PyTorch's default, tokens and biases zeros."""
        for m in self.neck.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check(self, maps: Sequence[torch.Tensor]) -> None:
        cfg, n = self.config, len(self.config.in_channels)
        shapes = [tuple(m.shape) for m in maps]
        if len(maps) != n or any(len(s) != 4 or s[1] != c for s, c in zip(shapes, cfg.in_channels)):
            raise ValueError(f"expected {n} teacher maps (B, C, H, W) with C = {cfg.in_channels}, got shapes "
                             f"{shapes}; set in_channels to the backbone's stage channels")
        sizes = [s[2:] for s in shapes]
        (h, w), fold = sizes[-1], [2 ** (n - 1 - k) for k in range(n)]
        if sizes != [(h * f, w * f) for f in fold] or h % 2 or w % 2:
            raise ValueError(f"teacher map sizes {sizes} must halve from scale to scale, the coarsest "
                             f"even: use images whose sides are multiples of {2 * cfg.in_strides[-1]} "
                             "(e.g. 224 or 256)")

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check(maps)
        x = self.neck(maps)  # (B, C_0, h, w): 512 x 8 x 8 at 256² in the paper
        if self.training and self.config.jitter_scale > 0:
            x = feature_jitter(x, self.config.jitter_scale)
        x = x.permute(0, 2, 3, 1)  # (B, h, w, C_0), channels-last like the official decoder
        outputs = []
        for stage in self.stages:
            x = stage(x)  # (B, h * 2**i, w * 2**i, C_i)
            outputs.append(x)
        return [proj(out).permute(0, 3, 1, 2)  # (B, C_k, H_k, W_k), finest first
                for proj, out in zip(self.project, outputs[::-1])]


# ----------------------------------------------------------------------------- branch probe
BRANCH_DROPS = (None, "global", "attention", "local")


@contextmanager
def branch_probe(model: nn.Module, drop: str | None = None,
                 record: bool = True) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Record, and optionally switch off, the two branches of every Omni-block: an inference-time probe.

        with branch_probe(model, drop="local") as seen:
            model(maps)
        seen["stages.3.1"]   # {"input": x, "global": g(x), "local": l(x), "output": block(x)}, each (B, H, W, C)

    ``drop`` replaces one branch's output in every block (the trained weights are not touched):
    "global" -> 0, "attention" -> its 2x pass-through (g(x) = B + up(A) + 2x without B and up(A),
    i.e. both attentions removed), "local" -> 0. Recorded are the branches as computed, before
    the replacement (blocks after a dropped one see changed inputs). This shows what a trained
    model relies on; it is not an ablation (a model trained without a branch would adapt).
    ``record=False`` only drops (no tensors kept, e.g. while evaluating a whole test set).
    """
    if drop not in BRANCH_DROPS:
        raise ValueError(f"drop must be one of {BRANCH_DROPS}, got {drop!r}")
    seen: dict[str, dict[str, torch.Tensor]] = {}

    def replacement(branch: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        if drop == branch:  # "global" or "local": the branch's output -> 0
            return torch.zeros_like(out)
        if drop == "attention" and branch == "global":  # keep only the pass-through 2x
            return 2 * x
        return None  # a forward hook returning None keeps the output

    def hook(name: str, branch: str):
        def fn(module: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> torch.Tensor | None:
            x = inputs[0]  # (B, H, W, C)
            if record:
                seen.setdefault(name, {"input": x.detach()})[branch] = out.detach()
            return replacement(branch, x, out)
        return fn

    def output_hook(name: str):
        def fn(module: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
            if record:
                seen[name]["output"] = out.detach()
        return fn

    handles = []
    for name, block in model.named_modules():
        if isinstance(block, OmniBlock):
            handles.append(block.global_branch.register_forward_hook(hook(name, "global")))
            handles.append(block.local_branch.register_forward_hook(hook(name, "local")))
            handles.append(block.register_forward_hook(output_hook(name)))
    if not handles:
        raise ValueError("the model has no Omni-block")
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- loss and anomaly map
# Both are the shared objectives (adnotes.models.objectives) with Omni-AD's kinds; named here so
# that the paper's formulas read as one call.
def _check_pairs(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> None:
    if len(teacher) != len(student) or any(t.shape != s.shape for t, s in zip(teacher, student)):
        raise ValueError(f"teacher and student maps must pair up with equal shapes, got "
                         f"{[tuple(t.shape) for t in teacher]} and {[tuple(s.shape) for s in student]}")


def omniad_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of the mean squared error (official ``L2Loss``, weight 1, §1.6)."""
    _check_pairs(teacher, student)
    return reconstruction_loss(list(teacher), list(student), "mse")


def multiscale_cosine_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor],
                          size: int | Sequence[int], sigma: float = 4.0) -> torch.Tensor:
    """Omni-AD's anomaly map (§1.7): (B, H, W) with (H, W) = size.

    Per scale 1 - cosine similarity over channels, bilinearly upsampled (align_corners=True) to
    ``size``, averaged over scales, then Gaussian-smoothed with ``sigma`` (4; 0 turns it off).
    The image score is the map's plain max: ``adnotes.metrics.image_score(maps, pool=None)``.
    """
    _check_pairs(teacher, student)
    size = (size, size) if isinstance(size, int) else tuple(size)
    amap = anomaly_map(list(teacher), list(student), "cos", size=size)
    return gaussian_smooth(amap, sigma) if sigma else amap


# Reported numbers, for the method zoo: none. The Omni-AD paper's tables were not available to us
# (notebooks/SOURCES.md §1.8: only its abstract), and we do not transcribe third-party summaries.
PUBLISHED: list[dict] = []
