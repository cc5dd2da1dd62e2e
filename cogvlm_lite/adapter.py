"""The adapter: image feature grid -> image tokens in the language model's embedding space.

CogVLM's projector (Linear -> LayerNorm -> GELU -> SwiGLU) with an optional 2x2 stride-2
downsample first (CogVLM2 / GLM-4V), then an RMSNorm whose gain starts at the LM's embedding
scale. By default (`words`) each cell's vector then picks words: its cosine similarity to every
input embedding of the language model, scaled, goes through a softmax, and the cell's token is
that mixture of word embeddings. A frozen language model reads such tokens from the first step
(a cell that is mostly " dog" reads as "dog"); the raw projection it does not. All image patches
share one rotary position in the language model, so the spatial layout is carried by learned 2-D
position embeddings (row + column) added to each token; a CNN's features carry little absolute
position of their own. Learned begin- and end-of-image vectors (BOI/EOI) frame the patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AdapterConfig:
    downsample: bool = False  # 2x2 stride-2 convolution before the projection
    intermediate_size: int | None = None  # SwiGLU width; None: the language model's FFN width
    words: bool = True  # tokens as mixtures of the LM's word embeddings (else the projection)


WORD_SCALE = 20.0  # initial cosine-similarity -> logit scale of the word mixture


def resize_positions(table: torch.Tensor, n: int) -> torch.Tensor:
    """A (k, width) table of row or column position embeddings stretched to n rows (linear)."""
    stretched = F.interpolate(table.detach().float().T[None], size=n, mode="linear",
                              align_corners=False)
    return stretched[0].T.to(table.dtype).contiguous()


class Adapter(nn.Module):
    """(B, C, h, w) features -> (B, 2 + tokens, width): BOI, one token per grid cell, EOI."""

    def __init__(self, config: AdapterConfig, channels: int, grid: tuple[int, int], width: int,
                 lm_intermediate: int, embed_std: float = 0.02):
        super().__init__()
        self.config = config
        self.downsample = nn.Conv2d(channels, channels, 2, stride=2) if config.downsample else None
        rows, cols = (grid[0] // 2, grid[1] // 2) if config.downsample else grid
        self.grid = (rows, cols)
        hidden = config.intermediate_size or lm_intermediate
        self.linear = nn.Linear(channels, width)
        self.norm = nn.LayerNorm(width)
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        # Image tokens on the scale of the LM's word embeddings: otherwise the projection's
        # output grows far past them and drowns the position embeddings added next.
        self.out_norm = nn.RMSNorm(width, eps=1e-6)
        nn.init.constant_(self.out_norm.weight, embed_std)
        self.word_scale = nn.Parameter(torch.tensor(WORD_SCALE)) if config.words else None
        # Beside word mixtures, position embeddings start small enough not to blur the words.
        pos_std = embed_std * (0.25 if config.words else 1.0)
        self.row_embed = nn.Parameter(torch.randn(rows, width) * pos_std)
        self.col_embed = nn.Parameter(torch.randn(cols, width) * pos_std)
        # Small random, not zero: a zero BOI right after a text token gave NaN rms_norm grads.
        self.boi = nn.Parameter(torch.randn(width) * embed_std)
        self.eoi = nn.Parameter(torch.randn(width) * embed_std)
        self._unit_vocabulary: tuple[tuple, torch.Tensor] | None = None  # (source, unit rows)

    @property
    def num_tokens(self) -> int:
        """Tokens one image takes in the sequence, BOI and EOI included."""
        return self.grid[0] * self.grid[1] + 2

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, rows*cols, width), row-major, before position embeddings."""
        if self.downsample is not None:
            features = self.downsample(features)
        x = features.flatten(2).transpose(1, 2)
        x = F.gelu(self.norm(self.linear(x)))
        x = self.down(F.silu(self.gate(x)) * self.up(x))
        # Normalised in fp32 whatever the weights' dtype (bf16 on a GPU) or autocast's.
        norm = self.out_norm
        return F.rms_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.eps).to(x.dtype)

    def word_logits(self, x: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity of projected cells (..., width) to word embeddings (V, width)."""
        scale = self.word_scale if self.word_scale is not None else WORD_SCALE
        return scale * F.normalize(x, dim=-1) @ self.unit_vocabulary(vocabulary, x.dtype).T

    def unit_vocabulary(self, vocabulary: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Word embeddings scaled to unit length; kept while the frozen table is unchanged."""
        if vocabulary.requires_grad:
            return F.normalize(vocabulary.to(dtype), dim=-1)
        key = (vocabulary, vocabulary.data_ptr(), vocabulary._version, dtype)
        cached = self._unit_vocabulary
        if cached is None or cached[0][0] is not vocabulary or cached[0][1:] != key[1:]:
            self._unit_vocabulary = cached = key, F.normalize(vocabulary.to(dtype), dim=-1)
        return cached[1]

    def cells(self, features: torch.Tensor, vocabulary: torch.Tensor | None) -> torch.Tensor:
        """(B, C, h, w) -> (B, rows*cols, width) cell tokens, before position embeddings."""
        x = self.project(features)
        if self.word_scale is None:
            return x
        if vocabulary is None:
            raise ValueError("this adapter writes word mixtures: pass the LM's input embeddings")
        weights = self.word_logits(x, vocabulary).softmax(-1)
        return weights @ vocabulary.to(weights.dtype)

    def forward(self, features: torch.Tensor, vocabulary: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens; `vocabulary` is the LM's input embedding table (needed with `words`)."""
        x = self.cells(features, vocabulary)
        pos = (self.row_embed[:, None, :] + self.col_embed[None, :, :]).flatten(0, 1)
        x = x + pos.to(x.dtype)
        b = x.shape[0]
        boi = self.boi.to(x.dtype).expand(b, 1, -1)
        eoi = self.eoi.to(x.dtype).expand(b, 1, -1)
        return torch.cat([boi, x, eoi], dim=1)
