"""Fast text decoding: one token at a time through fused, optionally compact, weights.

Generated tokens are text, so decoding never needs the visual experts: only the frozen language
weights run. `FastDecoder` keeps them per layer as one fused QKV and one fused gate-up matrix, in
one of these formats:

- `fp32`: the language model's own weights (the same greedy tokens as the reference path). Some
  BLAS builds run a one-row product on one core, which cannot stream the weights fast enough:
  where `bmm` over row blocks, one per thread, is clearly the faster here (`row_blocks`, timed
  once per shape), the product goes through it, else through `F.linear`;
- `bf16`: bf16 weights, and bf16 inputs to each product; on CPU the weights are prepacked for
  oneDNN's kernel (AVX-512 bf16 or AMX where the CPU has them), a quarter faster than `F.linear`;
- `int8`: weight-only int8, one scale per output row (`torch._weight_int8pack_mm`);
- `int4`: weight-only 4-bit, a scale and offset per 32 inputs of a row (PyTorch's tinygemm
  kernel for CPU), as llama.cpp's Q4_1 does.

In every format the residual stream and the norms stay fp32; only the products' inputs are
rounded (rounding the residual to bf16 after each addition cost int8 a quarter of its box
accuracy on held-out scenes: 0.16 against 0.21 exact, 0.19 with the fp32 residual). Prefill (the
image and the prompt) still runs through `Decoder`, experts included; the KV cache is shared.
Text-only answers in a format are exactly those of the base model in the same format.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import Decoder, DecoderLayer, KVCache

FORMATS = ("fp32", "bf16", "int8", "int4")
INT4_GROUP = 32


class PackedLinear:
    """y = x @ W.T (+ b) with W stored in a decode format; `x` is (tokens, in_features)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, fmt: str):
        self.fmt = fmt
        weight = weight.detach().float()
        self.bias = None if bias is None else bias.detach().to(compute_dtype(fmt))
        if fmt == "fp32":
            self.out_features = weight.shape[0]
            blocks = row_blocks(*weight.shape) if weight.is_cpu else 1
            if weight.shape[0] % blocks or not weight.is_contiguous():  # else a view, no copy
                weight = F.pad(weight, (0, 0, 0, -weight.shape[0] % blocks)).contiguous()
            self.weight = weight.view(blocks, -1, weight.shape[1])
        elif fmt == "bf16":
            self.weight = weight.to(torch.bfloat16).contiguous()
            if self.weight.is_cpu and onednn_bf16():  # prepacked for oneDNN's one-row kernel
                self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, 1)
        elif fmt == "int8":
            q, scale = quantize_int8(weight)
            self.weight, self.scale = q, scale.to(torch.bfloat16)
        else:
            self.out_features = weight.shape[0]
            weight = F.pad(weight, (0, 0, 0, -weight.shape[0] % 16))  # the kernel packs 16 rows
            q, scale, zero = quantize_int4(weight)
            n, k = weight.shape
            # the kernel computes (q - 8) * scale + zero, per group of INT4_GROUP inputs
            self.scales_zeros = torch.stack([scale.t(), zero.t()], -1).to(torch.bfloat16).contiguous()
            self.weight = torch._convert_weight_to_int4pack_for_cpu(q.view(n, k), 2)

    @property
    def nbytes(self) -> int:
        """Bytes one call reads: the weight and its scales, offsets and bias."""
        parts = (getattr(self, name, None) for name in ("weight", "scale", "scales_zeros", "bias"))
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt == "fp32" and len(self.weight) == 1:
            y = F.linear(x, self.weight[0])
        elif self.fmt == "fp32":  # (blocks, rows, in) @ (blocks, in, tokens)
            y = torch.bmm(self.weight, x.t().expand(len(self.weight), -1, -1))
            y = y.reshape(-1, x.shape[0]).t()[:, : self.out_features]
        elif self.fmt == "bf16" and self.weight.is_mkldnn:
            y = torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "")
        elif self.fmt == "bf16":
            y = F.linear(x, self.weight)
        elif self.fmt == "int8":
            y = torch._weight_int8pack_mm(x, self.weight, self.scale)
        else:
            y = torch._weight_int4pack_mm_for_cpu(x, self.weight, INT4_GROUP, self.scales_zeros)
            y = y[..., : self.out_features]
        return y if self.bias is None else y + self.bias


def row_blocks(rows: int, cols: int) -> int:
    """How many row blocks an fp32 (rows, cols) matrix is best split into for one-row products
    on this CPU: one per thread where `bmm` over them is clearly faster than `F.linear` on the
    whole, else 1. Timed once per shape and thread count."""
    return _row_blocks(rows, cols, torch.get_num_threads())


@functools.cache
def _row_blocks(rows: int, cols: int, threads: int) -> int:
    if threads < 2:
        return 1
    weight, x = torch.randn(rows + -rows % threads, cols), torch.randn(1, cols)
    blocks = weight.view(threads, -1, cols)
    linear = _fastest(lambda: F.linear(x, weight))
    split = _fastest(lambda: torch.bmm(blocks, x.t().expand(threads, -1, -1)))
    return threads if split < 0.8 * linear else 1


def _fastest(run, repeats: int = 5) -> float:
    """Seconds a call to `run()` takes: the shortest of `repeats` rounds of about a millisecond
    or more, after one call to warm up."""
    start = time.perf_counter()
    run()
    calls = max(1, round(1e-3 / (time.perf_counter() - start)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        times.append((time.perf_counter() - start) / calls)
    return min(times)


def onednn_bf16() -> bool:
    """Whether PyTorch's oneDNN runs bf16 products on this CPU."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: weight ~ q * scale[:, None]."""
    scale = weight.abs().amax(1).clamp(min=1e-12) / 127
    return (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit groups of INT4_GROUP inputs: weight ~ (q - 8) * scale + zero (per group).

    Returns q (out, in) int32 in 0..15 and scale, zero (out, in / INT4_GROUP), rounded to bf16
    as the kernel stores them.
    """
    n, k = weight.shape
    if k % INT4_GROUP:
        raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}, got {k}")
    groups = weight.view(n, k // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-12).to(torch.bfloat16).float()
    zero = (low + 8 * scale).to(torch.bfloat16).float()
    q = ((groups - zero[..., None]) / scale[..., None] + 8).round().clamp(0, 15)
    return q.to(torch.int32).view(n, k), scale, zero


def fake_quantize(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """The float weight a decode format effectively multiplies by (for references and errors)."""
    weight = weight.detach().float()
    if fmt == "fp32":
        return weight
    if fmt == "bf16":
        return weight.to(torch.bfloat16).float()
    if fmt == "int8":
        q, scale = quantize_int8(weight)
        return q.float() * scale.to(torch.bfloat16).float()[:, None]
    q, scale, zero = quantize_int4(weight)
    n, k = weight.shape
    groups = q.float().view(n, k // INT4_GROUP, INT4_GROUP)
    return ((groups - 8) * scale[..., None] + zero[..., None]).view(n, k)


def compute_dtype(fmt: str) -> torch.dtype:
    return torch.float32 if fmt == "fp32" else torch.bfloat16


def fuse(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([lin.weight for lin in linears])
    has_bias = [lin.bias is not None for lin in linears]
    if not any(has_bias):
        return weight, None
    bias = torch.cat([lin.bias if lin.bias is not None else weight.new_zeros(lin.out_features)
                      for lin in linears])
    return weight, bias


class FastLayer:
    def __init__(self, layer: DecoderLayer, fmt: str):
        self.qkv = PackedLinear(*fuse(layer.q_proj, layer.k_proj, layer.v_proj), fmt)
        self.o = PackedLinear(layer.o_proj.weight, layer.o_proj.bias, fmt)
        self.gate_up = PackedLinear(*fuse(layer.gate_proj, layer.up_proj), fmt)
        self.down = PackedLinear(layer.down_proj.weight, layer.down_proj.bias, fmt)
        self.norm1 = layer.input_layernorm.weight.detach().float()
        self.norm2 = layer.post_attention_layernorm.weight.detach().float()
        self.eps = layer.input_layernorm.eps
        self.heads, self.kv_heads, self.head_dim = layer.num_heads, layer.num_kv_heads, layer.head_dim


class FastDecoder:
    """Single-token decoding for a `Decoder` (call it like one: ids (1, 1), position_ids (1, 1)).

    It holds its own copies of the weights in `fmt` (in `fp32`, the unfused matrices are views of
    the decoder's own unless their row blocks need padding) and shares the embeddings and rotary
    tables.
    """

    def __init__(self, decoder: Decoder, fmt: str = "fp32"):
        if fmt not in FORMATS:
            raise ValueError(f"decode format must be one of {FORMATS}, not {fmt!r}")
        device = decoder.embed_tokens.weight.device
        if fmt in ("int8", "int4") and device.type != "cpu":
            raise ValueError(f"the {fmt} decode format runs on CPU; use bf16 on {device.type}")
        self.fmt, self.dtype = fmt, compute_dtype(fmt)
        self.embed_tokens, self.rotary = decoder.embed_tokens, decoder.rotary  # shared
        with torch.no_grad():
            self.layers = [FastLayer(layer, fmt) for layer in decoder.layers]
            self.head = PackedLinear(decoder.lm_head.weight, None, fmt)
            self.final_norm = decoder.norm.weight.detach().float()
        self.eps = decoder.norm.eps

    def linears(self) -> list[PackedLinear]:
        """The products one decoded token runs: the head and each layer's projections."""
        return [self.head] + [p for layer in self.layers
                              for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]

    def weight_bytes(self) -> int:
        """Bytes of weights one decoded token reads (projections and head; norms are tiny)."""
        return sum(linear.nbytes for linear in self.linears())

    def split_share(self) -> float:
        """The share of those bytes whose products run over row blocks (`fp32`, `row_blocks`)."""
        split = sum(p.nbytes for p in self.linears() if p.fmt == "fp32" and len(p.weight) > 1)
        return split / self.weight_bytes()

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor,
                cache: KVCache) -> torch.Tensor:
        # The residual stream stays fp32 in every format: only the products run in `dtype`.
        x = self.embed_tokens(input_ids[0]).float()  # (1, hidden)
        cos, sin = self.rotary(position_ids[0], self.dtype)  # (1, 1, head_dim)
        # rotate(x) = x * cos + cat(-x2, x1) * sin = x * cos + roll(x) * cat(-sin1, sin2)
        half = cos.shape[-1] // 2
        cos, sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), -1)
        position, end = cache.length, cache.length + 1
        cache.ensure(end)
        new_k, new_v = cache.k[:, 0, :, position], cache.v[:, 0, :, position]
        keys, values = cache.k[:, :, :, :end], cache.v[:, :, :, :end]
        heads = self.layers[0].heads
        rotated = heads + self.layers[0].kv_heads  # q and k heads, rotated together
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, x.shape[-1:], layer.norm1, layer.eps).to(self.dtype)
            qkv = layer.qkv(h).view(-1, layer.head_dim)  # q, k and v heads
            qk = qkv[:rotated]
            qk = qk * cos + qk.roll(half, -1) * sin
            new_k[i] = qk[heads:]
            new_v[i] = qkv[rotated:]
            a = F.scaled_dot_product_attention(qk[None, :heads, None].to(keys.dtype), keys[i],
                                               values[i], enable_gqa=True)
            x = x + layer.o(a.view(1, -1).to(self.dtype))
            h = F.rms_norm(x, x.shape[-1:], layer.norm2, layer.eps).to(self.dtype)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        cache.length = end
        return F.rms_norm(x, x.shape[-1:], self.final_norm, self.eps).to(self.dtype)[None]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden.reshape(-1, hidden.shape[-1])).float().view(*hidden.shape[:-1], -1)

