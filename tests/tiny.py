"""Tiny random models and a tiny tokenizer for the mechanics tests."""

from __future__ import annotations

import torch

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a test assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer():
    """A byte-level BPE tokenizer with ChatML special tokens, trained in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    text = ["Where is the dog? The dog is at the left of the red apple.",
            "How many cats are there? There are 2 cats. Describe the image."] * 20
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def write_tiny_lm(path, model_type: str = "llama", tie: bool = True, seed: int = 0):
    """A tiny random Llama or Qwen2 saved with transformers' save_pretrained, plus tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, tie_word_embeddings=tie, rope_theta=10000.0,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    if model_type == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    with torch.no_grad():  # random norms and biases so the test covers them
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(lm_dir, encoder_file, **expert):
    from cogvlm_lite.model import ExpertConfig, ModelConfig, VisionConfig

    return ModelConfig(language_model=str(lm_dir),
                       vision=VisionConfig(weights=str(encoder_file), image_size=64),
                       expert=ExpertConfig(**({"rank": 4} | expert)), max_length=512)


def greedy_cached(model, ids: torch.Tensor, n: int, decoder=None) -> list[int]:
    """Prefill `ids` with `model` through its KV cache, then decode `n` greedy tokens with
    `decoder` (default: `model` itself)."""
    from cogvlm_lite.generation import GenerationConfig, decode_tokens

    cache = model.new_cache(1, 8)  # small on purpose: it must grow
    with torch.no_grad():
        last = model.logits(model(ids, cache=cache))[0, -1]
    config = GenerationConfig(max_new_tokens=n)
    return list(decode_tokens(decoder or model, cache, last, ids.shape[1], config, stop_ids=set()))
