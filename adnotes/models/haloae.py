"""HaloAE: a HaloNet local-transformer auto-encoder (Mathian et al., VISAPP 2023, arXiv 2208.03486).

    model = adnotes.models.create("haloae", preset="quick", in_channels=80)
    rec = model(features)                         # (B, C_in, h, w) -> (B, C_in, h, w)
    loss = model.training_loss(features, rec, batch, progress)
    maps = model.anomaly_map(features, rec)       # (B, h, w), eq. 6

The whole model is in this file (block letters of the paper's Fig. 2; § = sections of
notebooks/SOURCES.md §5; "code" = IARCbioinfo/HaloAE @ 1ed45f7):

- B (not here): a frozen multi-scale feature map, VGG19 relu1_1 + relu2_1 + relu3_1 + relu3_4 =
  704 channels at 64×64 for 256² images (:class:`adnotes.backbone.VGG19Taps`).
- C: HaloNet auto-encoder on that map (§5.2). Encoder: 5×5 conv without padding (64 -> 60), then
  4 bottleneck blocks whose middle is a :class:`HaloAttention` (block 12, halo 2, dim_head 16),
  widths 234 -> 117 -> 58 -> 29. Decoder: 5 such blocks built from transposed convs, widths
  29 -> 59 -> 118 -> 237 -> 704, then a nearest upsample back to the input grid (60 -> 64).
- D: a "transposed VGG" from the reconstructed map to an image (§5.3): reflect-pad 3×3 convs
  704 -> 380 -> 190 -> 95 -> 47 -> 23 -> 3 -> 3, with two ×2 nearest upsamplings (64 -> 256).
- E: a linear SSL head on the reconstructed image, Linear(3·256·256 -> 2): original (0) or
  CutPaste view (1) (§5.4; the views come from :mod:`adnotes.data.cutpaste`).

Loss (§5.5): L = α1·CE + α2·(MSE + 1 − SSIM) on features + α3·(MSE + 1 − SSIM) on images, the
reconstruction terms on the originals (label 0) only; the α follow the per-epoch inverse-logistic
schedule of Fig. 3 (§5.6, :func:`loss_weights`). Anomaly map (eq. 6): channel-mean squared error
of the feature map. Eq. 7 (|A − mean A of normal train images|), the Gaussian blur and the image
score (mean of the map) are the trainer's: ``eval.normalize: true``, ``eval.sigma``,
``eval.pool: null, eval.reduce: mean`` (configs/haloae_*.yaml).

Code quirks (§5.9) and what we do:

1. Inverted padding mask in HaloAttention (inherited from lucidrains/halonet-pytorch, issue #4):
   fixed here; ``inverted_mask=True`` reproduces it (attention becomes a box average; see
   :class:`HaloAttention`). The paper links this code, so its 91.4 / 91.2 were presumably obtained
   with the bug: our inference, which we cannot check (§5.9).
2. The eq. 7 reference map is the mean over the TEST set's good images in the code: not
   reproduced; the trainer uses the train split's normal images.
3. max(AUC, 1 − AUC) for image AUROC: not reproduced (the one evaluation path reports AUC).
4. The image branch ends in a ReLU (Îm ≥ 0) but is compared with ImageNet-normalised images,
   which are negative in places: not reproduced by default (the last layer is linear);
   ``image_relu=True`` reproduces it.
5. Unused stride-2 convs and the FMOnly classifier: left out.

Not in the paper: ``standardize`` (on in the "quick" preset) reconstructs per-channel standardised
features (mean/std of the first training batch, kept as buffers; the output is mapped back, so the
loss and eq. 6 are on the raw features as in the paper). Without it a short run cannot reach the
scale of the offline backbone's features (see PRESETS).

HaloAE trains one model per class (``train.mode: separate``). Parameters: "paper" 11.86 M at
C_in 704 (the SSL head 0.39 M of it); "quick" 0.34 M at C_in 80, Lite0 stages 1-3 (SSL head 0.08 M).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register

__all__ = ["HaloAEConfig", "HaloAE", "HaloAttention", "HaloBlock", "PRESETS", "PAPER_ALPHAS", "PUBLISHED",
           "inverse_logistic", "loss_weights", "ssim", "gaussian_window"]

# §5.6 / code train.py: (a, b, c, d) of α̃1 (classification), α̃2 (feature map), α̃3 (image).
PAPER_ALPHAS: tuple[tuple[float, float, float, float], ...] = (
    (1.0, 0.4, 80.0, 0.07), (-1e-8, 1.2, 150.0, 0.05), (-1e-8, 2.0, 300.0, 0.05))

# Presets. "quick" is for CPU labs on the offline backbone: EfficientNet-Lite0 stages 1-3 at stride
# 8 (80 channels at 28×28 for 224² images). After the 5×5 head conv the map is 24×24; block 6 and
# halo 1 divide it (4×4 blocks) and keep the paper's halo : block ratio (2 : 12 = 1 : 6); the 8×8
# key window is 8/28 = 29 % of the side (paper: 16/64 = 25 %, the VISAPP abstract's "25 %").
# Widths 40 -> 20 -> 10 -> 5 follow the paper's ×½ steps (latent 5 / 80 channels ≈ paper 29 / 704),
# the decoder doubles back (5, 10, 20, 40, 80); heads 2/4/4/4 of dim 8; the image branch 64 -> 32
# -> 16 -> 8 -> 3 -> 3 with two ×2 upsamplings gives 112² from the 28² grid. The Lite0 features
# are signed (about half are negative), so the decoder's last block has no final ReLU; their std is
# ~6 and BatchNorm keeps the decoder's output near unit scale until its γ has grown, which takes far
# more than a quick run's few hundred steps (MSE stuck at the feature variance), so quick
# standardises the features per channel (``standardize``; not in the paper).
PRESETS: dict[str, dict] = {
    "paper": {},
    "quick": dict(head_channels=40, encoder_heads=(2, 4, 4, 4), decoder_multipliers=(1, 2, 2, 2, 2),
                  decoder_heads=(2, 4, 4, 4, 4), block_size=6, halo=1, dim_head=8, final_relu=False,
                  standardize=True, image_channels=64, image_middle=3, image_size=112),
}


@dataclass
class HaloAEConfig:
    in_channels: int = 704                   # C_in: VGG19 64 + 128 + 256 + 256 (§5.1)
    feature_size: int | tuple[int, int] | None = None  # (h, w) of the input grid if known (paper 64); checked early
    head_kernel: int = 5                     # encoder head conv k×k, no padding: 64 -> 60 (§5.2)
    head_channels: int | None = None         # None: int(C_in / 3), code int(704 / 3) = 234
    encoder_multipliers: tuple[float, ...] = (1, 0.5, 0.5, 0.5)  # cumulative, int(): 234, 117, 58, 29
    encoder_heads: tuple[int, ...] = (4, 8, 8, 8)
    encoder_kernels: tuple[int, ...] = (3, 3, 5, 5)
    decoder_multipliers: tuple[float, ...] = (1, 2.025, 2, 2.006, 2.97)  # width int(), output round()
    decoder_heads: tuple[int, ...] = (4, 8, 8, 8, 8)
    decoder_kernels: tuple[int, ...] = (3, 3, 3, 5, 1)  # transposed convs, size-preserving
    block_size: int = 12                     # HaloAttention query block b (§5.2)
    halo: int = 2                            # halo h: keys from the (b + 2h)² window around each block
    dim_head: int = 16
    inverted_mask: bool = False              # True: the code's padding-mask bug (§5.9 quirk 1)
    final_relu: bool = True                  # the decoder's last block ends in ReLU (code; VGG features are ≥ 0)
    standardize: bool = False                # not in the paper: reconstruct per-channel standardised features
                                             # (stats of the first training batch, kept as buffers); see HaloAE
    image_channels: int = 380                # block D head 704 -> 380 (code n_first_out_channels)
    image_middle: int = 4                    # halving 3×3 layers (code n_layer_vgg): 380 -> ... -> 23
    image_tail: int = 2                      # tail layers, each followed by ×2 nearest upsampling
    image_size: int = 256                    # side of Îm (nearest-resized to it if grid·2^tail differs)
    image_relu: bool = False                 # True: Îm ≥ 0 as in the code (§5.9 quirk 4)
    num_classes: int = 2                     # SSL head: original / CutPaste view (§5.4)
    schedule_epochs: float = 251             # x = progress · schedule_epochs in g(x; a, b, c, d) (§5.6)
    alphas: tuple[tuple[float, float, float, float], ...] = PAPER_ALPHAS
    ssim_window: int = 11                    # §5.5: 11×11 Gaussian window, σ 1.5, C1 0.01², C2 0.03²
    ssim_sigma: float = 1.5
    ssim_padding: str = "same"               # "same": zero padding, as the code's pytorch_ssim; "valid": skimage

    def __post_init__(self) -> None:
        for name in ("encoder_multipliers", "encoder_heads", "encoder_kernels", "decoder_multipliers",
                     "decoder_heads", "decoder_kernels"):
            setattr(self, name, tuple(getattr(self, name)))
        self.alphas = tuple(tuple(float(v) for v in a) for a in self.alphas)
        if self.feature_size is not None:
            fs = self.feature_size
            self.feature_size = (fs, fs) if isinstance(fs, int) else tuple(fs)
        checks = [
            (len(self.encoder_multipliers) == len(self.encoder_heads) == len(self.encoder_kernels) >= 1,
             "encoder_multipliers, encoder_heads and encoder_kernels need one entry per encoder block"),
            (len(self.decoder_multipliers) == len(self.decoder_heads) == len(self.decoder_kernels) >= 1,
             "decoder_multipliers, decoder_heads and decoder_kernels need one entry per decoder block"),
            (all(k % 2 == 1 for k in self.encoder_kernels + self.decoder_kernels),
             "block conv kernels must be odd (size-preserving)"),
            (self.block_size >= 1 and self.halo >= 0, f"need block_size >= 1 and halo >= 0, got "
                                                      f"{self.block_size}, {self.halo}"),
            (self.image_tail >= 1 and self.image_middle >= 0, "need image_tail >= 1 and image_middle >= 0"),
            (self.ssim_padding in ("same", "valid"), f"ssim_padding must be 'same' or 'valid', got {self.ssim_padding!r}"),
            (len(self.alphas) == 3 and all(len(a) == 4 for a in self.alphas),
             "alphas: three (a, b, c, d) tuples, for classification, feature map and image"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.feature_size is not None:
            check_grid(self, self.feature_size)

    @property
    def encoder_widths(self) -> list[int]:
        """Widths after the head and each encoder block; code: int() at every step (§5.2)."""
        widths = [self.head_channels or int(self.in_channels / 3)]
        for m in self.encoder_multipliers:
            widths.append(int(widths[-1] * m))
        return widths[1:]

    @property
    def decoder_widths(self) -> list[tuple[int, int]]:
        """(attention width, output width) per decoder block: int(c·m), round(c·m) (code); the last
        output is C_in. Paper: (29, 29), (58, 59), (118, 118), (236, 237), (703, 704)."""
        c, out = self.encoder_widths[-1], []
        for m in self.decoder_multipliers:
            out.append((int(c * m), round(c * m)))
            c = out[-1][1]
        out[-1] = (out[-1][0], self.in_channels)
        return out

    @classmethod
    def preset(cls, name: str = "paper", **fields_) -> "HaloAEConfig":
        """A preset ("paper" | "quick") with some fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(fields_) - known):
            raise ValueError(f"unknown HaloAE config field(s) {unknown}; fields: {', '.join(sorted(known))}")
        return cls(**{**PRESETS[name], **fields_})


def check_grid(cfg: HaloAEConfig, size: tuple[int, int]) -> None:
    """The map after the head conv must split into whole blocks (HaloAttention's condition)."""
    inner = [s - cfg.head_kernel + 1 for s in size]
    if min(inner) < 1 or any(s % cfg.block_size for s in inner):
        ok = [b for b in range(2, max(min(inner), 2) + 1) if all(s % b == 0 for s in inner)]
        raise ValueError(f"a {size[0]}×{size[1]} feature grid is {inner[0]}×{inner[1]} after the "
                         f"{cfg.head_kernel}×{cfg.head_kernel} head conv, which block_size={cfg.block_size} does "
                         f"not divide; block sizes that do: {ok or 'none'} (paper: 64 -> 60, block 12; "
                         "quick: 28 -> 24, block 6). Or change the image size / feature stride.")


# ----------------------------------------------------------------------------- attention
class HaloAttention(nn.Module):
    """Blocked local self-attention with a halo (HaloNet, Vaswani et al. 2021; code §5.2).

    The (H, W) map is cut into b×b query blocks; every query of a block attends to the keys and
    values of the (b + 2h)×(b + 2h) window around it (its block plus a halo of h pixels). Window
    positions outside the map are zero padding: they are MASKED OUT of the softmax.

        logit(p, k) = dim_head^-½ · q_p · (k_k + r^H[Δy] + r^W[Δx]),  Δ = position(k) − position(p)

    with two relative-position tables r^H, r^W of (2(b + 2h) − 1, dim_head), initialised
    N(0, 1)·dim_head^-½ (as the code; it adds the logits of the already scaled q, hence the common
    factor). The code indexes the tables by offsets within the window, which shifts our index by
    the constant h: the same family of functions. q, k, v: Linear without bias; out: Linear with
    bias (inner -> dim), inner = heads · dim_head. Padded keys have k = v = 0 (no bias).

    ``inverted_mask=True`` reproduces the official code's bug (mask True at the VALID positions,
    masked_fill on them; lucidrains/halonet-pytorch issue #4, fixed upstream in PR #6). Then:
    interior blocks (window inside the map) get all logits equal, so attention is the plain
    uniform AVERAGE of v over the window, independent of q, k and the position tables; border
    blocks attend only to zero-padded keys (v = 0), so their output is the CONSTANT to_out.bias.
    """

    def __init__(self, dim: int, block_size: int = 12, halo: int = 2, heads: int = 8, dim_head: int = 16,
                 inverted_mask: bool = False) -> None:
        super().__init__()
        self.dim, self.block, self.halo, self.heads, self.dim_head = dim, block_size, halo, heads, dim_head
        self.window = block_size + 2 * halo
        self.inverted_mask = inverted_mask
        self.scale = dim_head ** -0.5
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)  # [k | v]
        self.to_out = nn.Linear(inner, dim)
        self.rel_height = nn.Parameter(torch.randn(2 * self.window - 1, dim_head) * self.scale)
        self.rel_width = nn.Parameter(torch.randn(2 * self.window - 1, dim_head) * self.scale)
        # Table row of (query at block offset i, key at window offset j): Δ + window − 1 with
        # Δ = j − (i + halo), the key's position minus the query's. (b, window) long.
        i, j = torch.arange(block_size)[:, None], torch.arange(self.window)[None, :]
        self.register_buffer("rel_index", j - i - halo + self.window - 1, persistent=False)

    def relative_logits(self, q: Tensor) -> Tensor:
        """q (..., b, b, d) for rows y, columns x of a block -> (..., b, b, w, w): q · (r^H[Δy] + r^W[Δx])
        for key row i and column j of the window."""
        r_h = self.rel_height[self.rel_index]                 # (b, w, d): row y, key row i
        r_w = self.rel_width[self.rel_index]                  # (b, w, d): column x, key column j
        logits_h = torch.einsum("...yxd,yid->...yxi", q, r_h)  # (..., b, b, w)
        logits_w = torch.einsum("...yxd,xjd->...yxj", q, r_w)  # (..., b, b, w)
        return logits_h[..., :, None] + logits_w[..., None, :]  # (..., b, b, w, w)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        B, C, H, W = x.shape
        b, w, n_heads, d = self.block, self.window, self.heads, self.dim_head
        if C != self.dim or H % b or W % b:
            raise ValueError(f"HaloAttention(dim={self.dim}, block_size={b}) got a map of shape {tuple(x.shape)}: "
                             f"need {self.dim} channels and H, W divisible by {b}")
        nh, nw = H // b, W // b
        tokens = x.permute(0, 2, 3, 1)                        # (B, H, W, C)
        # Queries: per block, rows y and columns x inside it.
        q = self.to_q(tokens).view(B, nh, b, nw, b, n_heads, d)
        q = q.permute(0, 1, 3, 5, 2, 4, 6).reshape(B, nh * nw, n_heads, b, b, d) * self.scale
        # Keys/values: project every pixel once, then cut the zero-padded windows (unfold).
        kv = self.to_kv(tokens).permute(0, 3, 1, 2)           # (B, 2·inner, H, W)
        kv = F.unfold(kv, kernel_size=w, stride=b, padding=self.halo)  # (B, 2·inner·w·w, nh·nw)
        kv = kv.view(B, 2, n_heads, d, w * w, nh * nw).permute(1, 0, 5, 2, 4, 3)  # (2, B, N, heads, w·w, d)
        k, v = kv[0], kv[1]
        logits = q.flatten(-3, -2) @ k.transpose(-1, -2)      # (B, N, heads, b·b, w·w)
        logits.view(B, nh * nw, n_heads, b, b, w, w).add_(self.relative_logits(q))
        valid = F.unfold(x.new_ones(1, 1, H, W), kernel_size=w, stride=b, padding=self.halo)  # (1, w·w, N)
        valid = valid[0].t().bool()[None, :, None, None, :]   # (1, N, 1, 1, w·w): key inside the map
        blocked = valid if self.inverted_mask else ~valid      # the code's bug masks the valid keys
        logits.masked_fill_(blocked, -torch.finfo(logits.dtype).max)
        out = logits.softmax(dim=-1) @ v                      # (B, N, heads, b·b, d)
        out = out.view(B, nh, nw, n_heads, b, b, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, n_heads * d)
        return self.to_out(out).permute(0, 3, 1, 2)           # (B, C, H, W)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, block={self.block}, halo={self.halo}, heads={self.heads}, "
                f"dim_head={self.dim_head}, inverted_mask={self.inverted_mask}")


# ----------------------------------------------------------------------------- blocks
class HaloBlock(nn.Module):
    """HaloNet bottleneck, expansion 1 (§5.2): conv1×1 -> BN -> ReLU -> HaloAttention -> ReLU ->
    conv k×k -> BN, + shortcut (identity, or conv1×1 + BN when the width changes) -> ReLU.
    ``transposed``: every conv is a ConvTranspose2d (the decoder). All convs without bias, stride 1."""

    def __init__(self, in_channels: int, width: int, out_channels: int, *, heads: int, kernel: int,
                 transposed: bool, block_size: int, halo: int, dim_head: int, inverted_mask: bool,
                 final_relu: bool = True) -> None:
        super().__init__()
        Conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv1 = Conv(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.attn = HaloAttention(width, block_size, halo, heads, dim_head, inverted_mask)
        self.conv2 = Conv(width, out_channels, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(Conv(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.final_relu = final_relu

    def forward(self, x: Tensor) -> Tensor:  # (B, C_a, H, W) -> (B, C_b, H, W)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.attn(y))
        y = self.bn2(self.conv2(y)) + self.shortcut(x)
        return F.relu(y) if self.final_relu else y


def _vgg_layer(c_in: int, c_out: int, relu: bool = True, upsample: bool = False) -> nn.Sequential:
    """Block D layer (§5.3): ReflectionPad(1) -> conv3×3 (no padding) -> ReLU [-> ×2 nearest]."""
    layers = [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3)]
    layers += [nn.ReLU()] if relu else []
    layers += [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- loss helpers
def inverse_logistic(x: float, a: float, b: float, c: float, d: float) -> float:
    """Fig. 3 / code: g(x) = (a − b) / (1 + exp(x − c/2)^d) + b, from ≈a to b, centred at epoch c/2."""
    z = min(d * (x - c / 2), 700.0)  # exp(x − c/2)^d = exp(d·(x − c/2)); capped against overflow
    return (a - b) / (1 + math.exp(z)) + b


def loss_weights(epoch: float, alphas=PAPER_ALPHAS) -> tuple[float, float, float]:
    """(α1, α2, α3) at ``epoch``: the three curves of :func:`inverse_logistic`, normalised to sum 1 (§5.6)."""
    raw = [inverse_logistic(epoch, *p) for p in alphas]
    total = sum(raw)
    return tuple(r / total for r in raw)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """(size,) normalised 1-D Gaussian; the 2-D SSIM window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).float()


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5, padding: str = "same",
         c1: float = 0.01 ** 2, c2: float = 0.03 ** 2) -> Tensor:
    """Mean SSIM of two (B, C, H, W) tensors, per channel with a Gaussian window (Wang et al. 2004).

    ``padding="same"``: local statistics with zero padding, averaged over every pixel (the code's
    pytorch_ssim); ``"valid"``: only where the window fits, like scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
    The constants assume a data range of 1 (the code uses them for features and normalised images alike).
    Computed in float32 with autocast off: in bf16 the blurred moments lose the digits 1 − SSIM lives
    in (SSIM came out 1.05 where float32 gives 0.99).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    with torch.autocast(x.device.type, enabled=False):
        return _ssim(x.float(), y.float(), window, sigma, padding, c1, c2)


def _ssim(x: Tensor, y: Tensor, window: int, sigma: float, padding: str, c1: float, c2: float) -> Tensor:
    C = x.shape[1]
    g = gaussian_window(window, sigma).to(x)
    pad = window // 2 if padding == "same" else 0
    kh, kw = g.view(1, 1, -1, 1).expand(C, 1, -1, 1), g.view(1, 1, 1, -1).expand(C, 1, 1, -1)

    def blur(t: Tensor) -> Tensor:  # separable depthwise Gaussian filter
        t = F.conv2d(t, kh, padding=(pad, 0), groups=C)
        return F.conv2d(t, kw, padding=(0, pad), groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean()


# ----------------------------------------------------------------------------- the model
@register("haloae")
class HaloAE(nn.Module):
    """HaloAE blocks C (feature auto-encoder), D (image branch) and E (SSL head); see the module docstring.

    Build from a config, keyword overrides, or both: ``HaloAE(in_channels=80, preset="quick")``,
    ``HaloAE(HaloAEConfig.preset("quick", in_channels=80))``.
    """

    def __init__(self, config: HaloAEConfig | None = None, *, preset: str = "paper", **overrides) -> None:
        super().__init__()
        if config is None:
            config = HaloAEConfig.preset(preset, **overrides)
        elif overrides:
            config = HaloAEConfig(**{**{f.name: getattr(config, f.name) for f in fields(config)}, **overrides})
        self.config = cfg = config
        attn = dict(block_size=cfg.block_size, halo=cfg.halo, dim_head=cfg.dim_head, inverted_mask=cfg.inverted_mask)

        # Block C, encoder: head conv k×k without padding -> BN -> ReLU, then the bottlenecks.
        head = cfg.head_channels or int(cfg.in_channels / 3)
        self.head = nn.Sequential(nn.Conv2d(cfg.in_channels, head, cfg.head_kernel, bias=False),
                                  nn.BatchNorm2d(head), nn.ReLU())
        blocks, c = [], head
        for width, heads, k in zip(cfg.encoder_widths, cfg.encoder_heads, cfg.encoder_kernels):
            blocks.append(HaloBlock(c, width, width, heads=heads, kernel=k, transposed=False, **attn))
            c = width
        self.encoder = nn.Sequential(*blocks)
        # Block C, decoder: transposed-conv bottlenecks back to C_in.
        blocks, last = [], len(cfg.decoder_widths) - 1
        for i, ((width, out), heads, k) in enumerate(zip(cfg.decoder_widths, cfg.decoder_heads, cfg.decoder_kernels)):
            blocks.append(HaloBlock(c, width, out, heads=heads, kernel=k, transposed=True,
                                    final_relu=cfg.final_relu or i < last, **attn))
            c = out
        self.decoder = nn.Sequential(*blocks)
        # Block D: the "transposed VGG" (§5.3).
        layers, c = [_vgg_layer(cfg.in_channels, cfg.image_channels)], cfg.image_channels
        for _ in range(cfg.image_middle):
            layers.append(_vgg_layer(c, c // 2))
            c //= 2
        for i in range(cfg.image_tail):
            final = i == cfg.image_tail - 1
            layers.append(_vgg_layer(c if i == 0 else 3, 3, relu=cfg.image_relu or not final, upsample=True))
        self.image_branch = nn.Sequential(*layers)
        # Block E: the SSL head on the flattened reconstructed image.
        self.classifier = nn.Linear(3 * cfg.image_size ** 2, cfg.num_classes)

        # Per-channel feature statistics for ``standardize`` (set by the first training batch).
        self.register_buffer("feature_mean", torch.zeros(cfg.in_channels))
        self.register_buffer("feature_std", torch.ones(cfg.in_channels))
        self.register_buffer("feature_stats_set", torch.tensor(False))
        for part in (self.head, self.encoder, self.decoder, self.image_branch):
            part.apply(self._init_weights)  # the classifier and position tables keep their init (§5.2)
        self.last_losses: dict[str, Tensor] = {}

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Code ``initialize_weights``: kaiming-normal (fan_in) weights, zero biases; BN 1 / 0."""
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # --- forward passes ---------------------------------------------------------------------
    def encode(self, features: Tensor) -> Tensor:
        """(B, C_in, h, w) -> latent (B, C_latent, h − k + 1, w − k + 1) (paper 29×60×60)."""
        c_in = self.config.in_channels
        if features.ndim != 4 or features.shape[1] != c_in:
            raise ValueError(f"expected features of shape (B, {c_in}, h, w), got {tuple(features.shape)}; "
                             "set in_channels to the backbone's channel count")
        check_grid(self.config, features.shape[-2:])
        return self.encoder(self.head(features))

    def forward(self, features: Tensor) -> Tensor:
        """Block C: features (B, C_in, h, w) -> their reconstruction f̂m, same shape."""
        x = features
        if self.config.standardize:  # not in the paper: see the ``standardize`` option
            if self.training:  # data-dependent init (as Glow's ActNorm): the first training batch's statistics
                with torch.no_grad():  # torch.where, not an `if` on the buffer: no host sync, no graph break
                    first = ~self.feature_stats_set
                    self.feature_mean.copy_(torch.where(first, features.mean(dim=(0, 2, 3)), self.feature_mean))
                    self.feature_std.copy_(torch.where(first, features.std(dim=(0, 2, 3)).clamp_min(1e-6),
                                                       self.feature_std))
                    self.feature_stats_set.fill_(True)
            x = (features - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]
        z = self.encode(x)                                              # (B, C_latent, h', w')
        rec = self.decoder(z)                                           # (B, C_in, h', w')
        rec = F.interpolate(rec, size=features.shape[-2:], mode="nearest")  # 60 -> 64 (§5.2)
        if self.config.standardize:
            rec = rec * self.feature_std[:, None, None] + self.feature_mean[:, None, None]
        return rec

    def reconstruct_image(self, reconstruction: Tensor) -> Tensor:
        """Block D: f̂m (B, C_in, h, w) -> Îm (B, 3, S, S), S = image_size (from the standardised
        f̂m with ``standardize``)."""
        if self.config.standardize:
            reconstruction = (reconstruction - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]
        image = self.image_branch(reconstruction)                       # (B, 3, h·2^tail, w·2^tail)
        s = self.config.image_size
        if image.shape[-2:] != (s, s):
            image = F.interpolate(image, size=(s, s), mode="nearest")
        return image

    def classify(self, image: Tensor) -> Tensor:
        """Block E: Îm (B, 3, S, S) -> logits (B, 2), 0 = original, 1 = CutPaste view."""
        return self.classifier(image.flatten(1))

    # --- trainer hooks ----------------------------------------------------------------------
    def loss_weights(self, progress: float) -> tuple[float, float, float]:
        """(α1, α2, α3) at ``progress`` ∈ [0, 1) of the run: epoch x = progress · schedule_epochs (§5.6)."""
        return loss_weights(progress * self.config.schedule_epochs, self.config.alphas)

    def loss_terms(self, features: Tensor, output: Tensor, batch: dict) -> dict[str, Tensor]:
        """The unweighted terms of §5.5: ``cls`` (CE over all images), ``fm`` and ``im`` (MSE + 1 − SSIM
        on the label-0 images; 0 when the batch has none)."""
        cfg = self.config
        labels = batch["labels"]
        if "images" not in batch:
            raise KeyError("HaloAE's image branch needs the training images: set data.keep_images to the "
                           f"model's image_size ({cfg.image_size}), as configs/haloae_quick.yaml does")
        image_hat = self.reconstruct_image(output).float()              # (B, 3, S, S)
        terms = {"cls": F.cross_entropy(self.classify(image_hat), labels)}
        normal = labels == 0
        zero = image_hat.new_zeros(())
        if not normal.any():
            return terms | {"fm": zero, "im": zero}
        ssim_args = dict(window=cfg.ssim_window, sigma=cfg.ssim_sigma, padding=cfg.ssim_padding)
        f, f_hat = features[normal].float(), output[normal].float()
        terms["fm"] = F.mse_loss(f_hat, f) + 1 - ssim(f, f_hat, **ssim_args)
        image = batch["images"][normal].float()
        if image.shape[-2:] != image_hat.shape[-2:]:
            image = F.interpolate(image, size=image_hat.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
        terms["im"] = F.mse_loss(image_hat[normal], image) + 1 - ssim(image_hat[normal], image, **ssim_args)
        return terms

    def training_loss(self, features: Tensor, output: Tensor, batch: dict, progress: float) -> Tensor:
        """L = α1·L_cls + α2·L_fm + α3·L_im (§5.5, §5.6). ``output`` = ``forward(features)``.
        The last terms and weights are kept (detached) in ``last_losses`` for plots."""
        terms = self.loss_terms(features, output, batch)
        a1, a2, a3 = self.loss_weights(progress)
        loss = a1 * terms["cls"] + a2 * terms["fm"] + a3 * terms["im"]
        self.last_losses = {k: v.detach() for k, v in terms.items()} | {
            "alpha1": torch.tensor(a1), "alpha2": torch.tensor(a2), "alpha3": torch.tensor(a3)}
        return loss

    def anomaly_map(self, features: Tensor, output: Tensor) -> Tensor:
        """Eq. 6: channel-mean squared error of the feature map, (B, C, h, w) × 2 -> (B, h, w)."""
        return (features.float() - output.float()).square().mean(dim=1)


# Reported numbers, for the method zoo (adnotes.zoo); values in %. Presumably obtained with the public
# code's inverted padding mask and test-set normalisation of eq. 7 (our inference, §5.9: the paper links
# that code); per-class numbers were not found.
PUBLISHED = [
    {"method": "HaloAE", "dataset": "MVTec-AD", "setting": "one model per class, VGG19, 251 epochs",
     "image_AUROC": 91.4, "pixel_AUROC": 91.2, "source": "HaloAE paper, abstract (VISAPP 2023 / arXiv 2208.03486)"},
]
