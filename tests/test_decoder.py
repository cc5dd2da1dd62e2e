"""Our decoder against transformers, and the KV cache against recomputation."""

import pytest
import torch
from tiny import greedy_cached, write_tiny_lm

from cogvlm_lite.decoder import Decoder


def reference_logits(path, ids):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(ids).logits


def greedy_uncached(model: Decoder, ids: torch.Tensor, n: int) -> list[int]:
    out = ids[0].tolist()
    with torch.no_grad():
        for _ in range(n):
            logits = model.logits(model(torch.tensor([out])))[0, -1]
            out.append(int(logits.argmax()))
    return out[ids.shape[1]:]


@pytest.mark.parametrize("model_type,tie", [("llama", True), ("llama", False), ("qwen2", False)])
def test_tiny_decoders_match_transformers(tmp_path, model_type, tie):
    path = write_tiny_lm(tmp_path, model_type, tie)
    ids = torch.randint(0, 300, (2, 17))
    ours = Decoder.from_pretrained(path)
    with torch.no_grad():
        logits = ours.logits(ours(ids))
    assert (logits - reference_logits(path, ids)).abs().max() <= 1e-4
    if model_type == "qwen2":
        assert ours.layers[0].q_proj.bias is not None and ours.layers[0].o_proj.bias is None


def test_tiny_cached_greedy_equals_uncached(tiny_lm_dir):
    model = Decoder.from_pretrained(tiny_lm_dir)
    ids = torch.randint(0, 300, (1, 9))
    assert greedy_cached(model, ids, 20) == greedy_uncached(model, ids, 20)


def test_left_padded_batch_matches_single_rows(tiny_lm_dir):
    model = Decoder.from_pretrained(tiny_lm_dir)
    a, b = torch.randint(0, 300, (1, 7)), torch.randint(0, 300, (1, 4))
    batch = torch.cat([a, torch.cat([torch.full((1, 3), 2), b], 1)])
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        both = model.logits(model(batch, attention_mask=mask, position_ids=positions))
        single = model.logits(model(b))
    assert (both[1, 3:] - single[0]).abs().max() < 1e-5


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Decoder.from_pretrained(tmp_path)


def test_corrupt_safetensors_names_the_file(tmp_path, tiny_lm_dir):
    import shutil

    shutil.copytree(tiny_lm_dir, tmp_path / "lm")
    (tmp_path / "lm" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        Decoder.from_pretrained(tmp_path / "lm")


@pytest.mark.weights
def test_smollm2_matches_transformers_and_caches_agree(default_model):
    from cogvlm_lite.weights import default_lm_dir

    path = default_lm_dir()
    tok = default_model.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    ours = Decoder.from_pretrained(path)
    with torch.no_grad():
        logits = ours.logits(ours(ids))
    assert (logits - reference_logits(path, ids)).abs().max() <= 1e-4
    assert greedy_cached(ours, ids, 12) == greedy_uncached(ours, ids, 12)


@pytest.mark.weights
def test_default_chat_knows_paris(default_model):
    reply = default_model.chat(None, "What is the capital of France? Answer briefly.")
    assert "Paris" in reply
