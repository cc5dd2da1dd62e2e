"""The visual expert: per-layer QKV, attention-output and FFN weights used only by image tokens.

CogVLM gives every decoder layer a second copy of its projections. Tokens are routed by type
(1 = BOI and image patches -> the expert, 0 = text, EOI and generated tokens -> the frozen
language weights); attention itself is shared. Two parameterisations:

- `full`: separate trainable matrices, initialised as copies of the language weights;
- `lowrank` (default): the frozen language weights plus a trainable low-rank delta `B @ A`,
  zero at initialisation, so a checkpoint holds only the small factors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .decoder import PROJECTIONS, Decoder


@dataclass
class ExpertConfig:
    kind: str = "lowrank"  # "lowrank" or "full"
    rank: int = 32
    projections: tuple[str, ...] = PROJECTIONS

    def __post_init__(self):
        if self.kind not in ("lowrank", "full"):
            raise ValueError(f"expert kind must be 'lowrank' or 'full', not {self.kind!r}")
        unknown = set(self.projections) - set(PROJECTIONS)
        if unknown:
            raise ValueError(f"unknown projections {sorted(unknown)}; choose from {PROJECTIONS}")
        self.projections = tuple(self.projections)


class Route:
    """Which flattened (batch * time) positions are image tokens and which are text."""

    def __init__(self, token_type_ids: torch.Tensor):
        flat = token_type_ids.reshape(-1).bool()
        self.vision = flat.nonzero().squeeze(1)
        self.text = (~flat).nonzero().squeeze(1)


class LowRankDelta(nn.Module):
    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class VisualExpert(nn.Module):
    """The expert of one decoder layer; called by `DecoderLayer.project` for each projection."""

    def __init__(self, layer: nn.Module, config: ExpertConfig):
        super().__init__()
        self.kind = config.kind
        parts = {}
        for name in config.projections:
            base: nn.Linear = getattr(layer, name)
            if config.kind == "full":
                copy = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
                copy.to(base.weight.device, base.weight.dtype)
                copy.load_state_dict(base.state_dict())
                parts[name] = copy
            else:
                delta = LowRankDelta(base, config.rank)
                parts[name] = delta.to(base.weight.device, base.weight.dtype)
        self.parts = nn.ModuleDict(parts)

    def forward(self, name: str, base: nn.Linear, x: torch.Tensor, route: Route) -> torch.Tensor:
        if name not in self.parts or route.vision.numel() == 0:
            return base(x)
        flat = x.reshape(-1, x.shape[-1])
        if self.kind == "lowrank":
            y = base(flat)
            delta = self.parts[name](flat[route.vision])
            y = y.index_add(0, route.vision, delta.to(y.dtype))
        else:
            text = base(flat[route.text])
            vision = self.parts[name](flat[route.vision]).to(text.dtype)
            y = text.new_empty(flat.shape[0], text.shape[-1])
            y = y.index_copy(0, route.text, text).index_copy(0, route.vision, vision)
        return y.view(*x.shape[:-1], -1)


def add_visual_experts(decoder: Decoder, config: ExpertConfig) -> None:
    """Give every decoder layer a visual expert (trainable; the language weights stay frozen)."""
    for layer in decoder.layers:
        layer.expert = VisualExpert(layer, config).requires_grad_(True)


@torch.no_grad()
def shrink_experts(decoder: Decoder, rank: int) -> float:
    """Cut every low-rank delta `B @ A` to its best rank-`rank` approximation (by SVD).

    Trained deltas use far fewer directions than they are given, so a smaller rank often keeps
    nearly all of them. Returns the smallest share of a delta's energy (squared Frobenius norm)
    kept.
    """
    kept = 1.0
    for layer in decoder.layers:
        parts = layer.expert.parts
        for name, delta in parts.items():
            up, down = delta.up.weight, delta.down.weight
            u, s, vh = torch.linalg.svd(up.double() @ down.double(), full_matrices=False)
            total = float((s**2).sum())
            if total > 0:
                kept = min(kept, float((s[:rank] ** 2).sum()) / total)
            root = s[:rank].sqrt()
            small = LowRankDelta(getattr(layer, name), rank).to(up.device, up.dtype)
            small.up.weight.copy_(u[:, :rank] * root)
            small.down.weight.copy_(root[:, None] * vh[:rank])
            parts[name] = small.requires_grad_(up.requires_grad)
    return kept
