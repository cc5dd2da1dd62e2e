"""The fused, compact decode path against the reference decoder."""

import pytest
import torch
from tiny import greedy_cached, write_tiny_lm

from cogvlm_lite import fastdecode
from cogvlm_lite.decoder import PROJECTIONS, Decoder
from cogvlm_lite.fastdecode import FORMATS, FastDecoder, fake_quantize


def step_logits(model: Decoder, decoder, ids: torch.Tensor, n: int = 6) -> torch.Tensor:
    """Scores after each of `n` teacher-forced tokens, decoded one at a time by `decoder`."""
    cache = model.new_cache(1, ids.shape[1] + n)
    with torch.no_grad():
        model(ids[:, :-n], cache=cache)
        rows = []
        for i in range(ids.shape[1] - n, ids.shape[1]):
            hidden = decoder(ids[:, i : i + 1], position_ids=torch.tensor([[i]]), cache=cache)
            rows.append(decoder.logits(hidden)[0, -1].float())
    return torch.stack(rows)


def quantized_reference(path, fmt: str) -> Decoder:
    """The plain decoder whose frozen matrices hold what `fmt` effectively multiplies by."""
    model = Decoder.from_pretrained(path)
    with torch.no_grad():
        for layer in model.layers:
            for name in PROJECTIONS:
                weight = getattr(layer, name).weight
                weight.copy_(fake_quantize(weight, fmt))
        model.lm_head.weight = torch.nn.Parameter(fake_quantize(model.lm_head.weight, fmt),
                                                  requires_grad=False)
    return model


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("model_type,tie", [("llama", True), ("qwen2", False)])
def test_fused_fp32_gives_the_reference_tokens(tmp_path, monkeypatch, model_type, tie, blocks):
    """In one piece (`F.linear`) or in row blocks (`bmm`), whichever `row_blocks` picks."""
    monkeypatch.setattr(fastdecode, "row_blocks", lambda rows, cols: blocks)
    model = Decoder.from_pretrained(write_tiny_lm(tmp_path, model_type, tie))
    ids = torch.randint(0, 300, (1, 9))
    fast = FastDecoder(model, "fp32")
    assert len(fast.head.weight) == blocks
    assert fast.split_share() == (blocks > 1)
    assert greedy_cached(model, ids, 24, fast) == greedy_cached(model, ids, 24)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "fp32"])
def test_compact_formats_match_a_reference_with_the_same_weights(tmp_path, fmt):
    path = write_tiny_lm(tmp_path, "qwen2", False)
    model = Decoder.from_pretrained(path)
    reference = quantized_reference(path, fmt)
    ids = torch.randint(0, 300, (1, 12))
    fast = step_logits(model, FastDecoder(model, fmt), ids)
    exact = step_logits(reference, reference, ids)
    # Only the activations' bf16 rounding separates them (a wrong packing would give ~1).
    gap = (fast - exact).abs().max() / exact.abs().max()
    assert gap < 0.05, gap


def test_weight_bytes_count_what_one_token_reads(tiny_lm_dir):
    decoder = Decoder.from_pretrained(tiny_lm_dir)
    linears = [decoder.lm_head] + [getattr(layer, name) for layer in decoder.layers
                                   for name in PROJECTIONS]
    fp32 = sum(4 * linear.weight.numel() + 4 * (linear.bias is not None and linear.bias.numel())
               for linear in linears)
    sizes = {fmt: FastDecoder(decoder, fmt).weight_bytes() for fmt in FORMATS}
    assert sizes["fp32"] == fp32
    assert sizes["bf16"] == fp32 // 2
    assert sizes["int4"] < sizes["int8"] < sizes["bf16"]


@pytest.mark.parametrize("blocks", [1, 3])
def test_fp32_views_the_unfused_weights_instead_of_copying(tiny_lm_dir, monkeypatch, blocks):
    monkeypatch.setattr(fastdecode, "row_blocks", lambda rows, cols: blocks)
    decoder = Decoder.from_pretrained(tiny_lm_dir)
    fast = FastDecoder(decoder, "fp32")
    layer, fast_layer = decoder.layers[0], fast.layers[0]
    for packed, linear in [(fast_layer.o, layer.o_proj), (fast_layer.down, layer.down_proj),
                           (fast.head, decoder.lm_head)]:
        even = linear.weight.shape[0] % blocks == 0  # rows that split evenly need no padding
        assert (packed.weight.data_ptr() == linear.weight.data_ptr()) == even
        assert torch.equal(packed.weight.reshape(-1, linear.in_features)[: linear.out_features],
                           linear.weight)


@pytest.mark.parametrize("linear,split,blocks", [(1.0, 0.7, 2), (1.0, 0.9, 1), (1.0, 1.5, 1)])
def test_fp32_splits_rows_only_where_bmm_is_clearly_faster(monkeypatch, linear, split, blocks):
    timings = iter([linear, split])  # F.linear is timed first, then bmm over the row blocks
    monkeypatch.setattr(fastdecode, "_fastest", lambda run: next(timings))
    before = torch.get_num_threads()
    fastdecode._row_blocks.cache_clear()
    try:
        torch.set_num_threads(2)
        assert fastdecode.row_blocks(96, 64) == blocks
        torch.set_num_threads(1)
        assert fastdecode.row_blocks(96, 64) == 1  # one thread: nothing to split over, untimed
    finally:
        torch.set_num_threads(before)
        fastdecode._row_blocks.cache_clear()


def test_unknown_format_is_a_clear_error(tiny_lm_dir):
    with pytest.raises(ValueError, match="decode format"):
        FastDecoder(Decoder.from_pretrained(tiny_lm_dir), "int3")


def test_model_decode_option(tiny_model):
    with pytest.raises(ValueError, match="decode must be one of"):
        tiny_model.set_decode("fp16")
    tiny_model.set_decode("int8")
    assert isinstance(tiny_model.text_decoder, FastDecoder)
    tiny_model.set_decode("exact")
    assert tiny_model.text_decoder is tiny_model.lm


@pytest.mark.weights
def test_real_model_fast_paths_give_the_reference_tokens(default_model):
    """Fused fp32 decoding gives the reference tokens, text-only and after an image; the model's
    text-only answers with int8 decoding are the base model's with the same int8 weights."""
    from cogvlm_lite.bench import test_image
    from cogvlm_lite.weights import default_lm_dir

    model = default_model
    question = "Name three colours of the rainbow."
    try:
        tokens = {}
        for decode in ("exact", "fp32"):
            model._fast = None if decode == "exact" else FastDecoder(model.lm, "fp32")
            model.reset()
            tokens[decode] = (model.chat(None, question, max_new_tokens=16),
                              model.chat(test_image(), "What is in the image?", max_new_tokens=16))
        assert tokens["fp32"] == tokens["exact"]

        model.set_decode("int8")
        text = model.chat(None, question, max_new_tokens=16)
    finally:
        model.set_decode("exact")
    # The reference: the base model's prompt prefill, then its int8 weights in fp32 arithmetic.
    ids = model.builder.encode([{"role": "user", "content": question}], image_tokens=0).input_ids
    expected = greedy_cached(Decoder.from_pretrained(default_lm_dir()), torch.tensor([ids]), 16,
                      decoder=quantized_reference(default_lm_dir(), "int8"))
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = expected[: expected.index(end)] if end in expected else expected
    assert text == model.tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_prepacked_bf16_matches_plain_bf16(monkeypatch):
    weight, x = torch.randn(40, 64), torch.randn(3, 64).bfloat16()
    packed = fastdecode.PackedLinear(weight, None, "bf16")
    monkeypatch.setattr(fastdecode, "onednn_bf16", lambda: False)
    plain = fastdecode.PackedLinear(weight, None, "bf16")
    assert not plain.weight.is_mkldnn
    assert torch.equal(packed(x), plain(x))
    assert packed.nbytes == plain.nbytes == 40 * 64 * 2
