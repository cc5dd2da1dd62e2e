"""The adapter: image feature grid -> image tokens in the language model's embedding space.

CogVLM's projector (Linear -> LayerNorm -> GELU -> SwiGLU) with an optional 2x2 stride-2
downsample first (CogVLM2 / GLM-4V), then an RMSNorm whose gain starts at the LM's embedding
scale. All image patches share one rotary position in the language
model, so the spatial layout is carried by learned 2-D position embeddings (row + column) added to
each token; a CNN's features carry little absolute position of their own. Learned begin- and
end-of-image vectors (BOI/EOI) frame the patches.
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
        self.row_embed = nn.Parameter(torch.randn(rows, width) * embed_std)
        self.col_embed = nn.Parameter(torch.randn(cols, width) * embed_std)
        # Small random, not zero: a zero BOI right after a text token gave NaN rms_norm grads.
        self.boi = nn.Parameter(torch.randn(width) * embed_std)
        self.eoi = nn.Parameter(torch.randn(width) * embed_std)

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
        return self.out_norm(self.down(F.silu(self.gate(x)) * self.up(x)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.project(features)
        pos = (self.row_embed[:, None, :] + self.col_embed[None, :, :]).flatten(0, 1)
        x = x + pos.to(x.dtype)
        b = x.shape[0]
        boi = self.boi.to(x.dtype).expand(b, 1, -1)
        eoi = self.eoi.to(x.dtype).expand(b, 1, -1)
        return torch.cat([boi, x, eoi], dim=1)
