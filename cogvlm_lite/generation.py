"""Choosing the next token: greedy, or sampling with temperature, top-k, top-p and a
repetition penalty; and the decoding loop over a prefilled KV cache."""

from __future__ import annotations

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
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0 <= self.temperature < float("inf") or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")
        if not 0 < self.repetition_penalty < float("inf"):
            raise ValueError("repetition_penalty must be positive")


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
