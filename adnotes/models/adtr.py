"""ADTR: Anomaly Detection TRansformer with feature reconstruction (You et al., ICONIP 2022).

    model = adnotes.models.create("adtr", preset="quick", in_channels=512, feature_size=14)
    rec = model(features)                                     # (B, C_in, H, W) -> (B, C_in, H, W)
    loss = model.training_loss(features, rec, batch, progress)  # the loss that config.loss names

Sources (notebooks/SOURCES.md §4; the section numbers § in this file are that file's): only the
abstract and introduction were read first-hand. Everything else, including the loss formulas and the training schedule, is
[secondary]: from two independent reading notes of arXiv 2209.01816v3, which agree on every number
used here. There is no official code. Settings no source gives are marked "not found for ADTR";
they take UniAD's defaults (same first author, successor paper).

Pipeline (§4.1). The frozen EfficientNet-B4 stages 1-5 (24+32+56+160+448 = 720 channels) are
resized to one grid and concatenated (:class:`adnotes.backbone.Backbone`). Tokens go through a 1×1
conv C_in -> 256, a transformer encoder and decoder, and a 1×1 conv 256 -> C_in back. It is the
vanilla transformer with a query embedding (UniAD App. B.1), built from UniAD's layers:

- encoder: 4 post-norm layers, self-attention (8 heads) -> Add & Norm -> FFN 256-1024-256 -> Add & Norm;
- decoder: 4 layers, self-attention -> Add & Norm -> cross-attention (key/value = encoder output)
  -> Add & Norm -> FFN -> Add & Norm. The first layer's input is a learned query embedding, one
  256-d token per grid position; later layers take the previous layer's output;
- a learned position embedding is added to queries and keys of *every* attention (appendix).

A 1×1 conv on a feature map is a Linear on its tokens; we use Linear (as UniAD does), so the
parameter count is that of the conv. Why the query (§4.2): with a learned query as the decoder's
input, copying needs attention close to the identity, which a query fitted to normal data should
not give anomalous tokens (the paper's argument, as UniAD §3.1 Eq. 2). It makes copying harder,
not impossible: UniAD §3.1 says the transformer with a query still suffers from the shortcut, and
our quick ADTR hands about a third of a transplanted patch through (copy gain, `adnotes.copying`).

Losses (§4.3; d = f - f̂, C channels, HW positions, one term per image, averaged over the batch):

    "mse"             UniAD's feature MSE, mean over C·H·W (the shared objective); normal images only
    "norm"            Eq. 1 as printed: (1/HW)·‖f - f̂‖₂², sum over channels = C × "mse"
    "pushpull_pixel"  Eq. 6-7, pixel labels y(u) (ADTR+ with confetti noise, MVTec):
                      (1/HW)·Σ_u (1 - y(u))·φ(u)  -  α·log(1 - exp(-(1/HW)·Σ_u y(u)·φ(u)))
    "pushpull_image"  Eq. 8-9, image labels y (ADTR+ with CIFAR-100 outliers, CIFAR-10):
                      q = mean of the top-k φ(u);  (1 - y)·q  -  α·y·log(1 - exp(-q))

with φ(u) = sqrt(m(u)² + 1) - 1, m(u) = (1/C)·Σ_i |d(i, u)| (a pseudo-Huber of the channel-mean
absolute error), α = 0.003, k = 20. The normal-only model uses "mse": its /C scale matches the
channel-mean φ of the push-pull losses and the trainer's UniAD settings (lr 1e-4, clip 0.1); the
factor C changes nothing else (Adam is scale invariant up to its ε and the clipping).

Two guards that no source gives (the paper does not say how it handles either):
- an image without any anomalous position would get -α·log(1 - e⁰) = +∞: the push term is applied
  only to images that contain anomalous positions;
- ``1 - exp(-s)`` is clamped at ``eps`` (config) before the log, so a perfectly reconstructed
  anomaly costs at most -α·log(eps) instead of +∞ (below s ≈ eps the push has no gradient).

Pixel labels reach the loss as (B, S, S) masks at image size; a grid cell is anomalous when more
than ``mask_threshold`` of its pixels are (default 0: any). Any, not majority: a cell's backbone
features see far more than its own pixels, so a cell touched by an anomaly has anomalous features,
and pulling it toward a small error teaches the model to reconstruct the anomaly; a majority rule
also drops small blobs (an 8-px confetti square is a quarter of a 16-px cell) and leaves such
images with no push at all.

Inference (§4.6): anomaly map ‖f - f̂‖₂ over channels, the shared "mse" map (``map_kind``), and
image score = max of the average-pooled map (the trainer's ``eval.pool``; UniAD's 16, ADTR's
kernel is not found).

Parameters, paper preset (C_in 720, 16×16): 7.813 M = encoder 4 × 0.790 M + decoder 4 × 1.053 M +
query table 256 × 256 (0.066 M) + projections 0.370 M + position tables 0.004 M + final LayerNorm;
the same count as UniAD's transformer baseline at that size. Quick preset (C_in 512, 14×14): 1.085 M.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register
from .objectives import LOSS_KINDS, reconstruction_loss
from .uniad import DecoderLayer, EncoderLayer, NeighborMaskedAttention, PositionEmbedding, _pair

__all__ = ["ADTRConfig", "ADTR", "PRESETS", "LOSSES", "PUBLISHED", "loss_norm", "pseudo_huber_error",
           "pushpull_pixel_loss", "pushpull_image_loss", "cell_labels"]

LOSSES = ("mse", "norm", "pushpull_pixel", "pushpull_image")

# Reported numbers (§4.7), for the method zoo (adnotes.zoo); values in %. [secondary]: read from two
# reading notes of the paper, not from the PDF (§4.0, §4.7).
_NOTES = "[secondary: reading notes of the paper, notebooks/SOURCES.md §4.7]"
PUBLISHED = [
    {"method": "ADTR", "dataset": "MVTec-AD", "setting": "one model per class, normal images only, EfficientNet-B4",
     "image_AUROC": 96.4, "pixel_AUROC": 97.2, "source": f"ADTR paper, Tab. 2 / Tab. 1 {_NOTES}"},
    {"method": "ADTR+", "dataset": "MVTec-AD", "setting": "one model per class, + confetti noise, push-pull L_px",
     "image_AUROC": 96.9, "pixel_AUROC": 97.5, "source": f"ADTR paper, Tab. 2 / Tab. 1 {_NOTES}"},
    {"method": "ADTR", "dataset": "CIFAR-10", "setting": "one-class (1 normal class), mean of 10, normal only",
     "image_AUROC": 94.7, "source": f"ADTR paper, Tab. 3 {_NOTES}"},
    {"method": "ADTR+", "dataset": "CIFAR-10", "setting": "one-class, mean of 10, + CIFAR-100 outliers, L_img",
     "image_AUROC": 96.1, "source": f"ADTR paper, Tab. 3 {_NOTES}"},
]

# Presets shrink the model. "quick" is for CPU labs and the offline backbone (EfficientNet-Lite0
# stages 1-5 = 512 channels, 224 px at stride 16 -> 14×14). Results with it are NOT the paper's model.
PRESETS: dict[str, dict] = {
    "paper": {},
    "quick": dict(in_channels=512, feature_size=14, num_encoder_layers=2, num_decoder_layers=2,
                  hidden_dim=128, num_heads=4, ffn_dim=512),
}


@dataclass
class ADTRConfig:
    in_channels: int = 720                   # EfficientNet-B4 stages 1-5: 24+32+56+160+448 (§4.1)
    feature_size: int | tuple[int, int] = 16  # MVTec 256 px, main text (16×16); the appendix says
    #                                          32×32 (stride 8): a config alternative, feature_size=32
    hidden_dim: int = 256                    # 1×1 conv 720 -> 256 (§4.1)
    num_encoder_layers: int = 4              # §4.1
    num_decoder_layers: int = 4              # §4.1
    num_heads: int = 8                       # §4.1
    ffn_dim: int = 1024                      # §4.1
    dropout: float = 0.1                     # not found for ADTR: UniAD's (attention, residuals, FFN)
    loss: str = "mse"                        # one of LOSSES (§4.3), read by training_loss
    alpha: float = 0.003                     # α of Eq. 7 and Eq. 9 (MVTec / CIFAR-10)
    top_k: int = 20                          # k of Eq. 8 (CIFAR-10, 8×8 = 64 positions)
    eps: float = 1e-6                        # log guard: 1 - exp(-s) clamped at eps (ours, not in the paper)
    mask_threshold: float = 0.0              # cell anomalous if > this fraction of its pixels are (ours; 0 = any)
    map_kind: str = "mse"                    # ‖f - f̂‖₂ over channels (§4.6); for the trainer

    def __post_init__(self) -> None:
        self.feature_size = _pair(self.feature_size, "feature_size")
        checks = [
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.map_kind in LOSS_KINDS, f"map_kind must be one of {LOSS_KINDS}, got {self.map_kind!r}"),
            (self.hidden_dim % 2 == 0,
             f"hidden_dim must be even (the position embedding has two halves), got {self.hidden_dim}"),
            (self.hidden_dim % self.num_heads == 0,
             f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads}"),
            (self.num_encoder_layers >= 0 and self.num_decoder_layers >= 1,
             "need num_encoder_layers >= 0 and num_decoder_layers >= 1 (the query enters the decoder)"),
            (self.alpha >= 0 and self.top_k >= 1 and self.eps > 0,
             f"need alpha >= 0, top_k >= 1, eps > 0; got {self.alpha}, {self.top_k}, {self.eps}"),
            (0 <= self.mask_threshold < 1, f"mask_threshold must be in [0, 1), got {self.mask_threshold}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def preset(cls, name: str = "paper", **fields_) -> ADTRConfig:
        """A preset ("paper" | "quick") with some fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise ValueError(f"unknown ADTR config field(s) {unknown}; fields: {', '.join(sorted(known))}")
        return cls(**{**PRESETS[name], **fields_})


# ----------------------------------------------------------------------------- losses (§4.3)
def _check_pair(features: Tensor, reconstructed: Tensor) -> None:
    if features.shape != reconstructed.shape or features.ndim != 4:
        raise ValueError(f"expected features and reconstruction as two (B, C, H, W) tensors of one shape, "
                         f"got {tuple(features.shape)} and {tuple(reconstructed.shape)}")


def loss_norm(features: Tensor, reconstructed: Tensor) -> Tensor:
    """Eq. 1: (1/HW)·‖f - f̂‖₂², squared error summed over channels, averaged over positions and
    the batch. C times UniAD's feature MSE (which also averages over channels)."""
    _check_pair(features, reconstructed)
    return (features - reconstructed).square().sum(dim=1).mean()


def pseudo_huber_error(features: Tensor, reconstructed: Tensor) -> Tensor:
    """φ(u) = sqrt(m(u)² + 1) - 1 with m(u) the channel-mean |f - f̂| (Eq. 6). (B, C, H, W) -> (B, H, W)."""
    _check_pair(features, reconstructed)
    m = (features - reconstructed).abs().mean(dim=1)  # (B, H, W)
    return torch.sqrt(m.square() + 1) - 1


def _push(s: Tensor, alpha: float, eps: float) -> Tensor:
    """-α·log(1 - exp(-s)), with 1 - exp(-s) clamped at eps (s -> 0 would give +∞)."""
    return -alpha * torch.log(torch.clamp(-torch.expm1(-s), min=eps))


def pushpull_pixel_loss(features: Tensor, reconstructed: Tensor, anomalous: Tensor, alpha: float = 0.003,
                        eps: float = 1e-6) -> Tensor:
    """Eq. 6-7 with pixel labels on the feature grid, `anomalous` (B, H, W) bool: pull normal
    positions, push the anomalous mean up. Both sums are divided by HW (not by the number of
    positions of each kind); images with no anomalous position get no push term (it would be +∞)."""
    phi = pseudo_huber_error(features, reconstructed)  # (B, H, W)
    if anomalous.shape != phi.shape:
        raise ValueError(f"anomalous must be (B, H, W) = {tuple(phi.shape)} on the feature grid, "
                         f"got {tuple(anomalous.shape)}; see cell_labels for image-size masks")
    y = anomalous.to(phi.dtype).flatten(1)               # (B, HW)
    phi = phi.flatten(1)                                  # (B, HW)
    pull = ((1 - y) * phi).mean(dim=1)                   # (B,) (1/HW)·Σ (1 - y)·φ
    s = (y * phi).mean(dim=1)                            # (B,) (1/HW)·Σ y·φ
    has_anomaly = y.sum(dim=1) > 0
    push = torch.where(has_anomaly, _push(s, alpha, eps), torch.zeros_like(s))  # (B,)
    return (pull + push).mean()


def pushpull_image_loss(features: Tensor, reconstructed: Tensor, labels: Tensor, alpha: float = 0.003,
                        k: int = 20, eps: float = 1e-6) -> Tensor:
    """Eq. 8-9 with image labels (B,) (1 = anomalous): q = mean of the top-k φ over positions
    (k capped at HW); loss (1 - y)·q - α·y·log(1 - exp(-q)), averaged over the batch."""
    phi = pseudo_huber_error(features, reconstructed).flatten(1)  # (B, HW)
    if labels.shape != phi.shape[:1]:
        raise ValueError(f"labels must be (B,) = ({len(phi)},), got {tuple(labels.shape)}")
    q = phi.topk(min(k, phi.shape[1]), dim=1).values.mean(dim=1)  # (B,)
    y = labels.to(q.dtype)
    return ((1 - y) * q + y * _push(q, alpha, eps)).mean()


def cell_labels(masks: Tensor, size: tuple[int, int], threshold: float = 0.0) -> Tensor:
    """(B, S, S) bool pixel masks -> (B, h, w) bool cell labels: a cell is anomalous when the
    fraction of anomalous pixels in it exceeds `threshold` (0: any pixel; 0.5: a majority).
    Cells are adaptive-average-pool bins, so S need not be a multiple of h."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, S, S), got {tuple(masks.shape)}")
    fraction = F.adaptive_avg_pool2d(masks[:, None].float(), size)[:, 0]  # (B, h, w)
    return fraction > threshold


# ----------------------------------------------------------------------------- the model
@register("adtr")
class ADTR(nn.Module):
    """ADTR feature reconstruction: (B, C_in, H, W) -> (B, C_in, H, W).

    Build with a config, ``ADTR(ADTRConfig(...))``, or with a preset and field keywords,
    ``ADTR(preset="quick", in_channels=512)`` (what ``adnotes.models.create`` does).
    """

    def __init__(self, config: ADTRConfig | None = None, *, preset: str = "paper", **fields_):
        super().__init__()
        if config is None:
            config = ADTRConfig.preset(preset, **fields_)
        elif fields_ or preset != "paper":
            raise ValueError("pass either an ADTRConfig or preset/field keywords, not both")
        self.config = c = config
        (h, w), dim = c.feature_size, c.hidden_dim

        def attention() -> nn.Module:  # full multi-head attention, position embedding on q and k
            return NeighborMaskedAttention(dim, c.num_heads, c.dropout)

        self.input_proj = nn.Linear(c.in_channels, dim)            # 1×1 conv C_in -> C (§4.1)
        self.pos_embed = PositionEmbedding(h, w, dim)              # learned, every attention (appendix)
        self.query_embed = nn.Parameter(torch.empty(h * w, dim))   # one learned query per position
        self.encoder = nn.ModuleList(EncoderLayer(attention(), dim, c.ffn_dim, c.dropout)
                                     for _ in range(c.num_encoder_layers))
        # "vanilla" decoder layer: self-attention on its input, then cross-attention to the encoder
        self.decoder = nn.ModuleList(DecoderLayer(attention(), attention(), "vanilla", dim, c.ffn_dim, c.dropout)
                                     for _ in range(c.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)                      # not found for ADTR: DETR / UniAD's final norm
        self.output_proj = nn.Linear(dim, c.in_channels)           # 1×1 conv C -> C_in (§4.1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Not found for ADTR; UniAD's: xavier-uniform Linear weights, zero biases (attention
        in-projections keep PyTorch's xavier), query table N(0, 1), position tables U[0, 1)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.query_embed)
        nn.init.uniform_(self.pos_embed.row)
        nn.init.uniform_(self.pos_embed.col)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels or tuple(x.shape[2:]) != c.feature_size:
            h, w = c.feature_size
            raise ValueError(f"expected features (B, {c.in_channels}, {h}, {w}), got {tuple(x.shape)}; "
                             f"set in_channels/feature_size to your backbone's output")
        b, _, h, w = x.shape
        pos = self.pos_embed()                                     # (HW, C)
        enc = self.input_proj(x.flatten(2).transpose(1, 2))        # (B, HW, C)
        for layer in self.encoder:
            enc = layer(enc, pos, None)                            # full attention
        out = self.query_embed.expand(b, -1, -1)                   # (B, HW, C): first decoder input
        for layer in self.decoder:
            out = layer(out, enc, out, pos, None, None)            # self-attn(out), cross-attn(-, enc), FFN
        out = self.output_proj(self.decoder_norm(out))             # (B, HW, C_in)
        return out.transpose(1, 2).reshape(b, c.in_channels, h, w)  # (B, C_in, H, W)

    def training_loss(self, features: Tensor, output: Tensor, batch: dict, progress: float = 0.0) -> Tensor:
        """The loss named by ``config.loss`` (a scalar; the trainer's hook). Computed in float32.

        "mse" / "norm" use the label-0 images of the batch only (normal-sample training);
        "pushpull_pixel" needs ``batch["masks"]`` (B, S, S) bool, "pushpull_image" ``batch["labels"]``."""
        c = self.config
        f, r = features.float(), output.float()
        labels = batch.get("labels")
        if c.loss in ("mse", "norm"):
            if labels is not None:
                normal = labels == 0
                if not normal.any():
                    return r.sum() * 0.0   # no normal image in this batch: nothing to reconstruct
                f, r = f[normal], r[normal]
            return reconstruction_loss(f, r, "mse") if c.loss == "mse" else loss_norm(f, r)
        if c.loss == "pushpull_pixel":
            if batch.get("masks") is None:
                raise ValueError("loss 'pushpull_pixel' needs pixel masks of the training images: train with "
                                 "data.synthetic (e.g. confetti), or use loss 'pushpull_image' or 'mse'")
            cells = cell_labels(batch["masks"].to(f.device), tuple(f.shape[-2:]), c.mask_threshold)
            return pushpull_pixel_loss(f, r, cells, c.alpha, c.eps)
        if labels is None:
            raise ValueError("loss 'pushpull_image' needs image labels (batch['labels'])")
        return pushpull_image_loss(f, r, labels.to(f.device), c.alpha, c.top_k, c.eps)
