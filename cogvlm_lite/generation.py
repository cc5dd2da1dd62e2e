"""Choosing the next token: greedy, or sampling with temperature, top-k, top-p and a
repetition penalty; and the decoding loop over a prefilled KV cache."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .decoder import Decoder, KVCache


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        """Raise ValueError naming the first setting of the wrong type or out of range."""
        for name, least in (("max_new_tokens", 1), ("top_k", 0), ("seed", 0)):
            value = getattr(self, name)
            if name == "seed" and value is None:
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number{' or None' if name == 'seed' else ''}, "
                                 f"got {value!r}")
            if value < least:
                raise ValueError(f"{name} must be at least {least}, got {value!r}")
            setattr(self, name, int(value))
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
            setattr(self, name, float(value))
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number, at least 0, got {self.temperature:g}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be above 0 and at most 1, got {self.top_p:g}")
        if not 0 < self.repetition_penalty < math.inf:
            raise ValueError("repetition_penalty must be a finite number above 0, got "
                             f"{self.repetition_penalty:g}")


def pick_token(logits: torch.Tensor, config: GenerationConfig, previous: list[int],
               generator: torch.Generator | None = None) -> int:
    """One token id from 1-D `logits`."""
    logits = logits.float()
    if config.repetition_penalty != 1.0 and previous:
        seen = torch.tensor(sorted(set(previous)), device=logits.device)
        scores = logits[seen]
        penalised = torch.where(scores > 0, scores / config.repetition_penalty,
                                scores * config.repetition_penalty)
        logits = logits.index_copy(0, seen, penalised)
    if config.temperature == 0:
        return int(logits.argmax())
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the first always stays).
        drop = probs.cumsum(-1) - probs >= config.top_p
        logits = logits.index_fill(0, order[drop], float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def decode_tokens(decoder: Decoder, cache: KVCache, last_logits: torch.Tensor,
                  next_position: int, config: GenerationConfig, stop_ids: set[int],
                  previous: list[int] | None = None) -> Iterator[int]:
    """Yield generated token ids after a prefill; the stop token is yielded last, if reached.

    `last_logits` are the scores after the prompt, `next_position` the rotary position of the
    first generated token, `previous` the prompt ids the repetition penalty looks at.
    """
    generator = None
    if config.seed is not None:
        generator = torch.Generator().manual_seed(config.seed)
    seen = list(previous or [])
    device = last_logits.device
    logits = last_logits
    for step in range(config.max_new_tokens):
        token = pick_token(logits, config, seen, generator)
        yield token
        if token in stop_ids or step == config.max_new_tokens - 1:
            return
        seen.append(token)
        cache.ensure(cache.length + 1)
        ids = torch.tensor([[token]], device=device)
        pos = torch.tensor([[next_position + step]], device=device)
        with torch.no_grad():
            logits = decoder.logits(decoder(ids, position_ids=pos, cache=cache)[0, -1])
