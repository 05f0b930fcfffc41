"""The transformer and MLP reconstruction baselines of UniAD (App. B.1, Fig. 2, Tab. 5a "1 query").

Both reuse UniAD's building blocks (:mod:`adnotes.models.uniad`) and its channel reduction
C_in -> 256 -> C_in (App. B.3), so that only what App. B.1 changes differs:

- "transformer": the vanilla transformer, 4 encoder + 4 decoder layers. A decoder layer is
  self-attention, then cross-attention (query = the self-attention's output, key/value = the
  encoder output), then the FFN; the learned query embedding is the input of the first decoder
  layer only; learned position embeddings in every attention; full attention; no jittering.
  This is exactly a UniAD config (query="first", decoder_design="vanilla", NMA off, p = 0), so
  it is built as one: ``transformer()`` returns a :class:`~adnotes.models.uniad.UniAD`.
- "mlp": the transformer with every attention replaced (App. B.1): self-attention -> Linear,
  LayerNorm, ReLU; cross-attention -> concatenation along channels, Linear, LayerNorm, ReLU; no
  position embeddings. Residuals, Add & Norm and the FFN stay. It has no spatial mixing at all:
  each output token depends on its own input token only.

Any UniAD field can still be overridden, e.g. ``create("transformer", neighbor_mask=(True,) * 3)``
for Tab. A2's "1 query + NMA" row, or ``preset="quick"`` for the small CPU size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import register
from .uniad import UniAD, UniADConfig

__all__ = ["TRANSFORMER", "MLP_FIELDS", "transformer", "MLP", "LinearMixer"]

TRANSFORMER = dict(query="first", decoder_design="vanilla", neighbor_mask=(False, False, False),
                   jitter_prob=0.0)
MLP_FIELDS = dict(TRANSFORMER, pos_embed=False)


@register("transformer")
def transformer(preset: str = "paper", **fields) -> UniAD:
    """The vanilla transformer baseline: UniAD with one query, vanilla decoder, no NMA, no FJ."""
    return UniAD(UniADConfig.preset(preset, **{**TRANSFORMER, **fields}))


class LinearMixer(nn.Module):
    """An attention slot of the MLP (App. B.1): Linear (of [query ‖ key/value] if `cross`), LayerNorm,
    ReLU. Position embedding and mask are not used."""

    def __init__(self, dim: int, cross: bool):
        super().__init__()
        self.cross = cross
        self.proj = nn.Linear(2 * dim if cross else dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: Tensor, kv: Tensor, pos: Tensor | None, mask: Tensor | None) -> Tensor:
        x = torch.cat([query, kv], dim=-1) if self.cross else query  # (B, HW, 2C) or (B, HW, C)
        return torch.relu(self.norm(self.proj(x)))                    # (B, HW, C)


@register("mlp")
class MLP(UniAD):
    """The MLP baseline: the transformer baseline with LinearMixer in every attention slot."""

    def __init__(self, config: UniADConfig | None = None, *, preset: str = "paper", **fields):
        if config is None:
            config = UniADConfig.preset(preset, **{**MLP_FIELDS, **fields})
        elif fields or preset != "paper":
            raise ValueError("pass either a UniADConfig or preset/field keywords, not both")
        if any(config.neighbor_mask) or config.pos_embed:
            raise ValueError("the MLP has no attention: keep neighbor_mask=(False, False, False) "
                             "and pos_embed=False")
        super().__init__(config)

    def make_mixer(self, cross: bool) -> nn.Module:
        return LinearMixer(self.config.hidden_dim, cross)


# Reported numbers, for the method zoo (adnotes.zoo); values in %. The MLP has none: UniAD Fig. 2a
# plots its curves without a table.
PUBLISHED = [
    {"method": "transformer", "dataset": "MVTec-AD", "setting": "unified, vanilla transformer with 1 query",
     "image_AUROC": 87.6, "pixel_AUROC": 92.8, "source": "UniAD paper, Tab. 5a (\"1 query\") / Tab. 4"},
]
