"""UniAD: a transformer that reconstructs frozen backbone features (You et al., NeurIPS 2022).

    model = adnotes.models.create("uniad", in_channels=192, feature_size=14)
    rec = model(features)                                   # (B, C_in, H, W) -> (B, C_in, H, W)

The whole model is in this file. Features are cut into H·W tokens, projected C_in -> C, passed
through a Neighbor Masked Encoder (NME) and a Layer-wise Query Decoder (LQD), and projected
back C -> C_in (§3.3, App. B.3). Three designs keep it from learning the "identical shortcut"
(copying its input), and each is a config switch so that every ablation of the paper is one
keyword away:

- feature jittering (§3.2, Eq. 3): in training, every raw C_in token f gets Gaussian noise of
  std α·‖f‖₂/C_in, with probability p (one draw per batch, as the official code does);
- neighbor masked attention (§3.2, Fig. 5): query token (i, j) may not look at any key in the
  k×k window around (i, j), itself included (clipped at the borders);
- layer-wise query decoder (§3.2, App. C.2): every decoder layer owns a learned query embedding.

Conventions follow the official code (zhiyuanyou/UniAD; notebooks/SOURCES.md §2.4): DETR post-norm
layers, a learned 2-D position embedding [col_j ‖ row_i] added to queries and keys (never to
values) of every attention, a final decoder LayerNorm, xavier-uniform Linear weights. Tokens are
batch-first, row-major: token t is grid cell (t // W, t % W).

Query modes (`query`, Tab. 5a / A2). Each decoder layer has three inputs: its query embedding Q,
the encoder output E and the previous layer's output P (E for the first layer).

    "every"  layer-wise query: each decoder layer owns a learned (H·W, C) table Q   (UniAD)
    "first"  one query: only the first layer owns a table; later layers use Q := P (vanilla)
    "none"   no query: no table; every layer uses Q := P, so the first decoder layer gets the
             encoder output as its input ("the encoder embeddings are directly input to the
             decoder", §4.6) - a plain transformer without query embedding

LQD designs (`decoder_design`, Fig. A1 / Tab. A3). The figure is not in our copy of the paper;
the six designs below are OUR derivation from App. C.2's text. Two attentions run in series and
must fuse Q, E and P; Q must be the *query* of an attention; R is the first attention's result.
If Q is in the first attention it is its query, the other slot is E or P (2 ways), and the second
attention pairs R with the remaining input in either role (2 ways): 4 designs. If Q is not in
the first attention, that one fuses E and P in either order (2 ways) and the second must be
"Q attends to R": 2 designs. 4 + 2 = 6, the paper's count. Every attention's residual follows its
query (DETR): out = LayerNorm(query + attention(query, key/value)).

    design     attn1 query  attn1 key/value  attn2 query  attn2 key/value  Tab. A3 det. / loc.
    "a"        Q            E                R            P                95.0 / 96.5  UniAD (official code)
    "b"        Q            P                R            E                94.4 / 96.3
    "c"        Q            E                P            R                78.4 / 87.0
    "d"        Q            P                E            R                77.9 / 87.0
    "e"        P            E                Q            R                78.2 / 89.9
    "f"        E            P                Q            R                89.8 / 94.0
    "vanilla"  Q            Q (self-attn.)   R            E                87.6 / 92.8  1 query, App. B.1

(Tab. A3: layer-wise queries for a-f, one query for vanilla, all without NMA and FJ.)

App. C.2 says (a), (b), (f) are the good ones and share: P is a key/value, and if Q is in the
first attention then R is the query of the second. Exactly our rows a, b, f have both properties;
c, d, e each break at least one, and they are the three bad columns of Tab. A3. Which good design is "b" and which is
"f", and the order of c, d, e, follow our enumeration order (not stated in the text). "vanilla"
with query="first" and no NMA/FJ is the transformer baseline (see `baselines.py`).

Parameters at the paper defaults (C_in 272): 7.717 M = encoder 4 × 0.790 M + decoder 4 × 1.053 M
+ query tables 4 × 196 × 256 (0.201 M) + projections 0.140 M + position tables 0.004 M + final
LayerNorm. Tab. A7 reports 7.48 M for the same architecture (the counting method is not stated;
without the query tables it would be 7.52 M).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from . import register
from .objectives import LOSS_KINDS

__all__ = ["UniADConfig", "UniAD", "LQD_DESIGNS", "QUERY_MODES", "PRESETS",
           "neighbor_mask", "feature_jitter"]

# (attn1 query, attn1 key/value, attn2 query, attn2 key/value); R = attn1's result. See above.
LQD_DESIGNS: dict[str, tuple[str, str, str, str]] = {
    "a": ("Q", "E", "R", "P"),
    "b": ("Q", "P", "R", "E"),
    "c": ("Q", "E", "P", "R"),
    "d": ("Q", "P", "E", "R"),
    "e": ("P", "E", "Q", "R"),
    "f": ("E", "P", "Q", "R"),
    "vanilla": ("Q", "Q", "R", "E"),
}
QUERY_MODES = ("none", "first", "every")

# Presets shrink the model. "quick" is for CPU labs: a training step at batch 8 is ~4× faster than
# at the paper size (1.0 M vs 7.7 M parameters). Results with it are NOT the paper's model.
PRESETS: dict[str, dict] = {
    "paper": {},
    "quick": dict(num_encoder_layers=2, num_decoder_layers=2, hidden_dim=128, ffn_dim=512),
}


@dataclass
class UniADConfig:
    in_channels: int = 272                   # C_org: EfficientNet-b4 stages 1-4, 24+32+56+160 (§4.2)
    feature_size: int | tuple[int, int] = 14  # H×W of the feature map: 224 / 16 (§4.2)
    hidden_dim: int = 256                    # C, the reduced channel dimension (§4.2, App. B.3)
    num_encoder_layers: int = 4              # Tab. 5b (0 allowed)
    num_decoder_layers: int = 4              # Tab. 5b (0 allowed)
    num_heads: int = 8                       # official config (notebooks/SOURCES.md §2.3)
    ffn_dim: int = 1024                      # Tab. A1
    dropout: float = 0.1                     # official config; in attention, residuals and FFN
    query: str = "every"                     # "none" | "first" | "every" (Tab. 5a / A2)
    decoder_design: str = "a"                # "a".."f" (Fig. A1 / Tab. A3) or "vanilla"
    neighbor_mask: tuple[bool, bool, bool] = (True, True, True)  # NMA in (enc, attn1, attn2), Tab. 5d
    neighbor_size: int | tuple[int, int] = 7  # k×k window, odd (Tab. 5c)
    jitter_scale: float = 20.0               # α of Eq. 3 (Tab. 5e)
    jitter_prob: float = 1.0                 # p: chance a training batch is jittered; 0 = FJ off (Tab. 5f)
    pos_embed: bool = True                   # learned 2-D position embedding (§3.3); False for the MLP
    loss: str = "mse"                        # "mse" | "nmse" | "cos" (App. C.3, Tab. A4), for the trainer
    clone_init: bool = False                 # True: the official code's start, layers deep-copied from one
                                             # (equal attention in-projections and query tables at step 0)

    def __post_init__(self) -> None:
        self.feature_size = _pair(self.feature_size, "feature_size")
        self.neighbor_size = _pair(self.neighbor_size, "neighbor_size")
        self.neighbor_mask = tuple(bool(m) for m in self.neighbor_mask)
        checks = [
            (self.query in QUERY_MODES, f"query must be one of {QUERY_MODES}, got {self.query!r}"),
            (self.decoder_design in LQD_DESIGNS,
             f"decoder_design must be one of {sorted(LQD_DESIGNS)}, got {self.decoder_design!r}"),
            (not (self.query == "every" and self.decoder_design == "vanilla" and self.num_decoder_layers > 1),
             "the vanilla decoder never reads the previous layer's output when every layer has its own "
             "query (the layers would be disconnected); use query='first' or a design 'a'..'f'"),
            (len(self.neighbor_mask) == 3,
             "neighbor_mask takes 3 booleans: (encoder, decoder attn1, decoder attn2)"),
            (all(k % 2 == 1 for k in self.neighbor_size),
             f"neighbor_size must be odd, got {self.neighbor_size}"),
            (self.hidden_dim % 2 == 0,
             f"hidden_dim must be even (the position embedding has two halves), got {self.hidden_dim}"),
            (self.hidden_dim % self.num_heads == 0,
             f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads}"),
            (self.num_encoder_layers >= 0 and self.num_decoder_layers >= 0, "layer counts must be >= 0"),
            (self.jitter_scale >= 0 and 0 <= self.jitter_prob <= 1,
             f"need jitter_scale >= 0 and 0 <= jitter_prob <= 1, got {self.jitter_scale}, {self.jitter_prob}"),
            (self.loss in LOSS_KINDS, f"loss must be one of {LOSS_KINDS}, got {self.loss!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def preset(cls, name: str = "paper", **fields_) -> UniADConfig:
        """A preset ("paper" | "quick") with some fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise ValueError(f"unknown UniAD config field(s) {unknown}; fields: {', '.join(sorted(known))}")
        return cls(**{**PRESETS[name], **fields_})

    @classmethod
    def quick(cls, **fields_) -> UniADConfig:
        """The small CPU preset: 2+2 layers, hidden 128, FFN 512 (shrinks the model!)."""
        return cls.preset("quick", **fields_)


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of them, got {value!r}")
    return pair


# ----------------------------------------------------------------------------- the three designs
@functools.lru_cache(maxsize=32)
def neighbor_mask(height: int, width: int, size: tuple[int, int],
                  device: torch.device | str = "cpu") -> Tensor:
    """(H·W, H·W) bool, True = blocked: query (i, j) may not see keys in rows i ± kh//2 and
    cols j ± kw//2 (clipped at the borders; the token itself included). Cached per arguments."""
    rows = torch.arange(height, device=device).repeat_interleave(width)  # (HW,) row of each token
    cols = torch.arange(width, device=device).repeat(height)             # (HW,) column of each token
    blocked = ((rows[:, None] - rows[None, :]).abs() <= size[0] // 2) & \
              ((cols[:, None] - cols[None, :]).abs() <= size[1] // 2)    # (HW, HW)
    if blocked.all(dim=1).any():
        raise ValueError(f"a {size[0]}×{size[1]} neighbor window blocks every key of some tokens on a "
                         f"{height}×{width} grid; use a smaller neighbor_size")
    return blocked


def feature_jitter(tokens: Tensor, scale: float, prob: float) -> Tensor:
    """Eq. 3: tokens + ε, ε ~ N(0, (scale·‖f‖₂/C)²) per token, for the whole batch with probability
    `prob` (one draw per call, official code). tokens: (B, N, C).

    The coin is a tensor, not a Python ``if``: no host sync and no graph break under torch.compile.
    For prob 0 and 1 the random stream is the one of an ``if`` (the noise is drawn only when used);
    for 0 < prob < 1 the noise is drawn every call."""
    if scale == 0:
        return tokens
    jittered = torch.rand((), device=tokens.device) < prob
    if prob == 0:
        return tokens
    std = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1] * scale  # (B, N, 1)
    return torch.where(jittered, tokens + torch.randn_like(tokens) * std, tokens)


# ----------------------------------------------------------------------------- building blocks
class PositionEmbedding(nn.Module):
    """Learned 2-D position embedding (DETR's `PositionEmbeddingLearned`): cell (i, j) -> [col_j ‖ row_i]."""

    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        self.row = nn.Parameter(torch.empty(height, dim // 2))
        self.col = nn.Parameter(torch.empty(width, dim // 2))

    def forward(self) -> Tensor:
        h, w = len(self.row), len(self.col)
        col = self.col[None, :, :].expand(h, w, -1)  # (H, W, C/2)
        row = self.row[:, None, :].expand(h, w, -1)  # (H, W, C/2)
        return torch.cat([col, row], dim=-1).flatten(0, 1)  # (HW, C)


class NeighborMaskedAttention(nn.Module):
    """Multi-head attention; the position embedding is added to queries and keys, not values;
    `mask` (from :func:`neighbor_mask`, or None for full attention) blocks keys per query.
    Inside :func:`recording_attention` it keeps its last head-averaged weights in `.weights`."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.record, self.weights = False, None

    def forward(self, query: Tensor, kv: Tensor, pos: Tensor | None, mask: Tensor | None) -> Tensor:
        q, k = (query, kv) if pos is None else (query + pos, kv + pos)
        out, weights = self.mha(q, k, kv, attn_mask=mask, need_weights=self.record)
        if self.record:
            self.weights = weights.detach()  # (B, N_query, N_key), averaged over heads
        return out  # (B, N, C)


@contextmanager
def recording_attention(model: nn.Module):
    """Collect every attention's weights during a forward pass, named by module path:

        with recording_attention(model) as maps:
            model(x)
        maps["encoder.0.attn"]  # (B, HW, HW): row i = where token i looks
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, NeighborMaskedAttention)}
    maps: dict[str, Tensor] = {}
    for m in layers.values():
        m.record = True
    try:
        yield maps
    finally:
        for name, m in layers.items():
            m.record = False
            if m.weights is not None:
                maps[name] = m.weights
            m.weights = None


class AddNorm(nn.Module):
    """Post-norm residual ("Add & Norm"): LayerNorm(x + dropout(update))."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, update: Tensor) -> Tensor:
        return self.norm(x + self.drop(update))


class FeedForward(nn.Sequential):
    """Tab. A1: Linear C -> F, ReLU, (dropout), Linear F -> C."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """One NME layer: (masked) self-attention, then FFN, each with Add & Norm."""

    def __init__(self, mixer: nn.Module, dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.attn, self.norm1 = mixer, AddNorm(dim, dropout)
        self.ffn, self.norm2 = FeedForward(dim, ffn_dim, dropout), AddNorm(dim, dropout)

    def forward(self, x: Tensor, pos: Tensor | None, mask: Tensor | None) -> Tensor:
        x = self.norm1(x, self.attn(x, x, pos, mask))
        return self.norm2(x, self.ffn(x))  # (B, HW, C)


class DecoderLayer(nn.Module):
    """One LQD layer: two attentions wired by `design` (see LQD_DESIGNS), then FFN."""

    def __init__(self, mixer1: nn.Module, mixer2: nn.Module, design: str, dim: int, ffn_dim: int,
                 dropout: float):
        super().__init__()
        self.design = LQD_DESIGNS[design]
        self.attn1, self.norm1 = mixer1, AddNorm(dim, dropout)
        self.attn2, self.norm2 = mixer2, AddNorm(dim, dropout)
        self.ffn, self.norm3 = FeedForward(dim, ffn_dim, dropout), AddNorm(dim, dropout)

    def forward(self, q: Tensor, e: Tensor, p: Tensor, pos: Tensor | None,
                mask1: Tensor | None, mask2: Tensor | None) -> Tensor:
        q1, kv1, q2, kv2 = self.design
        x = {"Q": q, "E": e, "P": p}                                      # each (B, HW, C)
        x["R"] = self.norm1(x[q1], self.attn1(x[q1], x[kv1], pos, mask1))  # residual follows the query
        out = self.norm2(x[q2], self.attn2(x[q2], x[kv2], pos, mask2))
        return self.norm3(out, self.ffn(out))  # (B, HW, C)


# ----------------------------------------------------------------------------- the model
@register("uniad")
class UniAD(nn.Module):
    """UniAD feature reconstruction: (B, C_in, H, W) -> (B, C_in, H, W).

    Build with a config, ``UniAD(UniADConfig(...))``, or with a preset and field keywords,
    ``UniAD(preset="quick", in_channels=192)`` (what ``adnotes.models.create`` does).
    """

    def __init__(self, config: UniADConfig | None = None, *, preset: str = "paper", **fields_):
        super().__init__()
        if config is None:
            config = UniADConfig.preset(preset, **fields_)
        elif fields_ or preset != "paper":
            raise ValueError("pass either a UniADConfig or preset/field keywords, not both")
        self.config = c = config
        (h, w), dim = c.feature_size, c.hidden_dim
        n_queries = {"none": 0, "first": min(1, c.num_decoder_layers), "every": c.num_decoder_layers}[c.query]

        self.input_proj = nn.Linear(c.in_channels, dim)   # channel reduction (App. B.3)
        self.pos_embed = PositionEmbedding(h, w, dim) if c.pos_embed else None
        self.query_embed = nn.Parameter(torch.empty(n_queries, h * w, dim)) if n_queries else None
        self.encoder = nn.ModuleList(EncoderLayer(self.make_mixer(cross=False), dim, c.ffn_dim, c.dropout)
                                     for _ in range(c.num_encoder_layers))
        q1, kv1 = LQD_DESIGNS[c.decoder_design][:2]
        self.decoder = nn.ModuleList(
            DecoderLayer(self.make_mixer(cross=q1 != kv1), self.make_mixer(cross=True), c.decoder_design,
                         dim, c.ffn_dim, c.dropout) for _ in range(c.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)              # DETR's final decoder norm (official code)
        self.output_proj = nn.Linear(dim, c.in_channels)
        # (HW, HW) bool, True = blocked; built once here (a forward that builds and checks it breaks the
        # torch.compile graph); not saved in checkpoints, moved with the model
        blocked = neighbor_mask(h, w, c.neighbor_size) if any(c.neighbor_mask) else None
        self.register_buffer("blocked", blocked, persistent=False)
        self._init_weights()

    def make_mixer(self, cross: bool) -> nn.Module:
        """The token mixer of one attention slot (`cross`: query and key/value differ).
        Baselines override this (the MLP swaps attention for linear layers)."""
        return NeighborMaskedAttention(self.config.hidden_dim, self.config.num_heads, self.config.dropout)

    def _init_weights(self) -> None:
        """Official initializer: xavier-uniform Linear weights, zero biases (the attention
        in-projection keeps PyTorch's own xavier); query tables N(0, 1) as `nn.Embedding`;
        position tables U[0, 1) as DETR."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.query_embed is not None:
            nn.init.normal_(self.query_embed)
        if self.pos_embed is not None:
            nn.init.uniform_(self.pos_embed.row)
            nn.init.uniform_(self.pos_embed.col)
        if self.config.clone_init:
            self._clone_layers()

    @torch.no_grad()
    def _clone_layers(self) -> None:
        """The official code builds one encoder (decoder) layer and deep-copies it N times (DETR's
        ``_get_clones``), then re-draws every Linear/Conv weight xavier-uniform per copy. What that
        re-draw does not touch stays equal across layers: each attention's in-projection (not an
        ``nn.Linear``) and, in the decoder, each layer's query table (an ``nn.Embedding`` inside the
        layer). Here: copy those from the first layer of the stack (our reading of the official
        ``models/reconstructions/uniad.py`` and ``models/initializer.py``)."""
        for stack in (self.encoder, self.decoder):
            first = [m for m in stack[0].modules() if isinstance(m, nn.MultiheadAttention)] if len(stack) else []
            for layer in list(stack)[1:]:
                for src, dst in zip(first, [m for m in layer.modules() if isinstance(m, nn.MultiheadAttention)]):
                    dst.in_proj_weight.copy_(src.in_proj_weight)
                    dst.in_proj_bias.copy_(src.in_proj_bias)
        if self.query_embed is not None:
            self.query_embed[1:] = self.query_embed[:1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels or tuple(x.shape[2:]) != c.feature_size:
            h, w = c.feature_size
            raise ValueError(f"expected features (B, {c.in_channels}, {h}, {w}), "
                             f"got {tuple(x.shape)}; set in_channels/feature_size to your backbone's output")
        b, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                    # (B, HW, C_in)
        if self.training:
            tokens = feature_jitter(tokens, c.jitter_scale, c.jitter_prob)
        pos = self.pos_embed() if self.pos_embed is not None else None  # (HW, C)
        enc_mask, dec1_mask, dec2_mask = (self.blocked if on else None for on in c.neighbor_mask)

        enc = self.input_proj(tokens)                            # (B, HW, C)
        for layer in self.encoder:
            enc = layer(enc, pos, enc_mask)
        out = enc                                                # P of the first decoder layer
        for i, layer in enumerate(self.decoder):
            has_query = self.query_embed is not None and i < len(self.query_embed)
            query = self.query_embed[i].expand(b, -1, -1) if has_query else out  # no own table: Q := P
            out = layer(query, enc, out, pos, dec1_mask, dec2_mask)
        out = self.output_proj(self.decoder_norm(out))           # (B, HW, C_in)
        return out.transpose(1, 2).reshape(b, c.in_channels, h, w)  # (B, C_in, H, W)


# Reported numbers, for the method zoo (adnotes.zoo); values in %.
_ADER = "ADer benchmark README, zhangzjn/ADer @ 902937a (notebooks/SOURCES.md §3.2)"
PUBLISHED = [
    {"method": "UniAD", "dataset": "MVTec-AD", "setting": "unified, 1000 epochs, EfficientNet-B4",
     "image_AUROC": 96.5, "pixel_AUROC": 96.8, "source": "UniAD paper, Tab. 1 / Tab. 2 (mean of 5 seeds)"},
    {"method": "UniAD", "dataset": "MVTec-AD", "setting": "unified, 100 epochs (ADer re-run)",
     "image_AUROC": 92.5, "image_AP": 97.3, "image_F1max": 95.4, "pixel_AUROC": 95.8, "pixel_AP": 42.7,
     "pixel_F1max": 48.0, "pixel_AUPRO": 89.3, "mAD": 80.1, "source": _ADER},
    {"method": "UniAD", "dataset": "VisA", "setting": "unified, 100 epochs (ADer re-run)",
     "image_AUROC": 89.0, "image_AP": 91.0, "image_F1max": 85.8, "pixel_AUROC": 98.3, "pixel_AP": 34.5,
     "pixel_F1max": 39.6, "pixel_AUPRO": 86.5, "mAD": 75.0, "source": _ADER},
]
