"""A compact Llama-family decoder (Llama, SmolLM2, Qwen2) with a preallocated KV cache.

RMSNorm -> rotary attention with grouped-query heads (fp32 softmax) -> SwiGLU MLP, repeated,
then a final norm and a tied or untied head. Weights load from a transformers checkpoint directory
through an explicit key map.

Every projection goes through `DecoderLayer.project`, which is where a visual expert
(`cogvlm_lite.expert`) takes over for image tokens; with no `route` the layer is the plain
language model, bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class DecoderConfig:
    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 has biases on q, k and v
    o_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf(cls, hf: dict) -> DecoderConfig:
        """Read a transformers `config.json` of a Llama or Qwen2 model."""
        model_type = hf.get("model_type")
        if model_type not in ("llama", "qwen2"):
            raise ValueError(
                f"model_type {model_type!r} is not supported: cogvlm_lite runs Llama-family "
                "decoders (model_type 'llama' or 'qwen2')."
            )
        rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope scaling {rope_type!r} is not supported; use a model without it.")
        heads = hf["num_attention_heads"]
        attention_bias = hf.get("attention_bias", False)
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=attention_bias,
            mlp_bias=hf.get("mlp_bias", False),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DecoderConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, scale in the input dtype (as transformers does).
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Rotary(nn.Module):
    """cos/sin tables for arbitrary position ids (image patches share one position)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Preallocated keys and values of every layer; the first `length` positions are filled.

    The buffers grow by doubling when a write would overflow them.
    """

    def __init__(self, config: DecoderConfig, batch: int, max_len: int, device, dtype):
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        self.ensure(end)
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def ensure(self, length: int) -> None:
        """Grow the buffers (doubling) so they hold at least `length` positions."""
        if length <= self.max_len:
            return
        size = max(length, 2 * self.max_len)
        k, v = (old.new_zeros(*old.shape[:3], size, old.shape[4]) for old in (self.k, self.v))
        k[:, :, :, : self.length] = self.k[:, :, :, : self.length]
        v[:, :, :, : self.length] = self.v[:, :, :, : self.length]
        self.k, self.v = k, v  # both or neither, should the copy be interrupted

    def crop(self, length: int) -> None:
        """Forget everything after the first `length` positions."""
        self.length = min(self.length, length)


class DecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig, index: int):
        super().__init__()
        c = config
        self.index = index
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.expert: nn.Module | None = None  # set by cogvlm_lite.expert.add_visual_experts

    def project(self, name: str, x: torch.Tensor, route) -> torch.Tensor:
        if route is None or self.expert is None:
            return getattr(self, name)(x)
        return self.expert(name, getattr(self, name), x, route)

    def forward(self, x, cos, sin, cache: KVCache | None, mask, route=None):
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        q = self.project("q_proj", h, route).view(b, t, self.num_heads, self.head_dim)
        k = self.project("k_proj", h, route).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.project("v_proj", h, route).view(b, t, self.num_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.index, k, v)
        a = attend(q, k, v, mask)
        a = a.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        x = x + self.project("o_proj", a, route)
        h = self.post_attention_layernorm(x)
        gated = F.silu(self.project("gate_proj", h, route)) * self.project("up_proj", h, route)
        return x + self.project("down_proj", gated, route)


def attend(q, k, v, mask) -> torch.Tensor:
    """Grouped-query attention. `mask`: None (causal over the keys), "all" (a single new token
    sees every cached key) or a boolean keep-mask. PyTorch's CPU and CUDA kernels accumulate the
    softmax in fp32 for half-precision inputs."""
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                          enable_gqa=True)


class Decoder(nn.Module):
    """The language model: embeddings, decoder layers, final norm and head."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = Rotary(config.head_dim, config.rope_theta)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        route=None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, hidden); `logits()` turns them into scores.

        `attention_mask` (B, cached + T) marks real tokens with 1 (left padding for batches);
        `route` sends image tokens through the visual experts.
        """
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, t, _ = x.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=x.device).expand(b, t)
        cos, sin = self.rotary(position_ids, x.dtype)
        mask = None
        if attention_mask is not None or past and t > 1:
            mask = causal_mask(t, past, attention_mask, x.device)
        elif past:
            mask = "all"
        for layer in self.layers:
            x = layer(x, cos, sin, cache, mask, route)
        if cache is not None:
            cache.length += t
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def new_cache(self, batch: int = 1, max_len: int = 256) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache(self.config, batch, max_len, p.device, p.dtype)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> Decoder:
        """Load a transformers checkpoint directory (`config.json` + `*.safetensors`)."""
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{config_file} not found: a language model directory needs the config.json and "
                "*.safetensors files written by transformers' save_pretrained."
            )
        config = DecoderConfig.from_hf(json.loads(config_file.read_text()))
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(
                f"no *.safetensors files in {path}: save the model with "
                "save_pretrained(..., safe_serialization=True)."
            )
        state = {}
        for f in files:
            try:
                state.update(load_file(f))
            except Exception as e:  # safetensors raises several types for damaged files
                raise ValueError(
                    f"{f} is not a readable safetensors file ({e}); delete it and save or "
                    "convert the model again."
                ) from e
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(map_hf_keys(state, config), strict=True, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        model.rotary = Rotary(config.head_dim, config.rope_theta)
        return model.to(dtype).eval().requires_grad_(False)


def map_hf_keys(state: dict[str, torch.Tensor], config: DecoderConfig) -> dict:
    """transformers key names -> ours: `model.layers.i.self_attn.q_proj` -> `layers.i.q_proj`."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix("model.")
        for block in ("self_attn.", "mlp."):
            name = name.replace(block, "")
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        out[name] = value
    if not config.tie_word_embeddings and "lm_head.weight" not in out:
        raise KeyError("lm_head.weight is missing and the config does not tie embeddings.")
    if config.tie_word_embeddings:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


def causal_mask(t: int, past: int, attention_mask, device) -> torch.Tensor:
    """Boolean keep-mask (B or 1, 1, t, past + t): causal, and padding hidden."""
    q = torch.arange(past, past + t, device=device)[:, None]
    k = torch.arange(past + t, device=device)[None, :]
    mask = (k <= q)[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, : past + t].bool()
        # A fully masked row (a left-pad query) would give NaN; let it see itself.
        mask = mask | (k == q)[None, None]
    return mask


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["Decoder", "DecoderConfig", "KVCache", "PROJECTIONS", "causal_mask", "num_params"]
