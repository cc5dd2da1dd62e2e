"""The vision-language model: routing, gradients, expert initialisation, caching, checkpoints."""

import functools
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import tiny_config

from cogvlm_lite.conversation import IGNORE, IMAGE_TOKEN_ID, as_messages
from cogvlm_lite.decoder import Decoder
from cogvlm_lite.model import CheckpointError, average_checkpoints, build_model, load_model


def image(seed=0, size=(80, 60)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def prompt_with_image(model, text="Where is the dog?"):
    enc = model.builder.encode([{"role": "user", "content": text}],
                               image_tokens=model.adapter.num_tokens)
    return torch.tensor([enc.input_ids])


def test_text_only_logits_are_the_plain_decoders(tiny_model, tiny_lm_dir):
    ids = torch.randint(0, 300, (2, 11))
    plain = Decoder.from_pretrained(tiny_lm_dir)
    with torch.no_grad():
        assert torch.equal(tiny_model(input_ids=ids).logits, plain.logits(plain(ids)))


def test_image_tokens_positions_and_types(tiny_model):
    ids = prompt_with_image(tiny_model)
    i = ids[0].tolist().index(IMAGE_TOKEN_ID)
    n = tiny_model.adapter.num_tokens
    embeds = tiny_model.image_embeddings([image()])
    inputs = tiny_model.prepare(ids, embeds)
    pos = inputs.position_ids[0].tolist()
    types = inputs.token_type_ids[0].tolist()
    assert len(pos) == ids.shape[1] - 1 + n
    assert pos[i] == i and set(pos[i + 1 : i + n - 1]) == {i + 1} and pos[i + n - 1] == i + 2
    assert pos[i + n] == i + 3  # text after the image continues
    assert types[:i] == [0] * i and types[i : i + n - 1] == [1] * (n - 1) and types[i + n - 1] == 0


def test_only_expert_and_adapter_get_gradients(tiny_model):
    tiny_model.train()
    ids = prompt_with_image(tiny_model)
    labels = ids.clone()
    labels[labels == IMAGE_TOKEN_ID] = IGNORE
    out = tiny_model(input_ids=ids, images=[image()], labels=labels)
    # Make the low-rank "up" factors non-zero so every expert weight gets a gradient.
    out.loss.backward()
    grads = {n for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("adapter.") or ".expert." in n for n in grads)
    assert any(".expert." in n for n in grads) and any(n.startswith("adapter.") for n in grads)
    for n, p in tiny_model.named_parameters():
        if n.startswith(("lm.", "encoder.")) and ".expert." not in n:
            assert not p.requires_grad, n


def layer1_image_outputs(model, ids, embeds, use_expert: bool):
    inputs = model.prepare(ids, embeds)
    route = None
    if use_expert:
        from cogvlm_lite.expert import Route

        route = Route(inputs.token_type_ids)
    layer = model.lm.layers[0]
    cos, sin = model.lm.rotary(inputs.position_ids, inputs.embeds.dtype)
    with torch.no_grad():
        out = layer(inputs.embeds, cos, sin, None, None, route)
    return out[inputs.token_type_ids.bool()]


def test_expert_at_init_equals_language_weights(tiny_lm_dir, tiny_encoder_file):
    low = build_model(tiny_config(tiny_lm_dir, tiny_encoder_file), device="cpu")
    full = build_model(tiny_config(tiny_lm_dir, tiny_encoder_file, kind="full"), device="cpu")
    ids = prompt_with_image(low)
    embeds = low.image_embeddings([image()])
    reference = layer1_image_outputs(low, ids, embeds, use_expert=False)
    assert torch.allclose(layer1_image_outputs(low, ids, embeds, True), reference, atol=1e-6)
    assert torch.allclose(layer1_image_outputs(full, ids, embeds, True), reference, atol=1e-6)


def test_trained_expert_changes_only_image_tokens(tiny_model):
    with torch.no_grad():
        for layer in tiny_model.lm.layers:
            for part in layer.expert.parts.values():
                part.up.weight.normal_(0, 0.5)
    ids = prompt_with_image(tiny_model)
    embeds = tiny_model.image_embeddings([image()])
    inputs = tiny_model.prepare(ids, embeds)
    with torch.no_grad():
        routed = tiny_model.hidden_states(inputs)
        inputs.token_type_ids.zero_()
        plain = tiny_model.hidden_states(inputs)
    i = ids[0].tolist().index(IMAGE_TOKEN_ID)
    assert torch.equal(routed[0, :i], plain[0, :i])  # text before the image is untouched
    assert not torch.allclose(routed[0, i + 1], plain[0, i + 1])


def test_cached_multi_turn_equals_recomputing(tiny_model):
    im = image(1)
    kwargs = dict(max_new_tokens=12)
    first = tiny_model.chat(im, "Where is the dog?", **kwargs)
    history = [("Where is the dog?", first)]
    second = tiny_model.chat(im, "How many cats are there?", history, **kwargs)
    assert tiny_model._session["cache"].length > 0
    tiny_model.reset()
    assert tiny_model.chat(im, "How many cats are there?", history, **kwargs) == second
    # The stream's last value is the whole reply.
    tiny_model.reset()
    assert list(tiny_model.stream_chat(im, "Where is the dog?", **kwargs))[-1] == first


def test_questions_about_an_image_are_read_as_trained(tiny_model, monkeypatch):
    """No trailing line break, regions inside the question, capitals and the final question mark
    typed (`conversation.typed_as_trained`); text-only turns stay as typed."""
    seen, encode = [], tiny_model.builder.encode

    def spy(messages, **kwargs):
        seen.append([m["content"] for m in messages])
        return encode(messages, **kwargs)

    monkeypatch.setattr(tiny_model.builder, "encode", spy)
    history = [("What is this? [[100,200]]", "A cat. [[1,2]]")]
    tiny_model.chat(image(), "  is there a cat\n", history, max_new_tokens=2)
    tiny_model.chat(None, "hello? [[1,2]]\n", max_new_tokens=2)
    assert seen[0][-3:] == ["What is this [[100,200]]?", "A cat. [[1,2]]",
                            "Is there a cat?"]
    assert seen[1][-1] == "hello? [[1,2]]\n"


def cached_keys_and_values(model) -> torch.Tensor:
    """A copy of the filled part of the cached conversation's keys and values."""
    cache = model._session["cache"]
    return torch.cat([cache.k[..., : cache.length, :], cache.v[..., : cache.length, :]])


def test_a_new_question_reuses_only_the_system_prompt_and_image(tiny_model, monkeypatch):
    """They are prefilled as a chunk of their own, so a question's prefill, and its answer, do not
    depend on the questions asked before about the same image (a chunk's rounding depends on its
    length); a conversation that goes on reuses all of its cache."""
    monkeypatch.setattr(tiny_model, "image_prefill_bf16", True)
    lengths = []
    hidden_states = tiny_model.hidden_states

    def spy(inputs, cache=None, weights=None):
        lengths.append(inputs.embeds.shape[1])
        return hidden_states(inputs, cache=cache, weights=weights)

    monkeypatch.setattr(tiny_model, "hidden_states", spy)
    im, kwargs = image(2), dict(max_new_tokens=6)
    ids = {q: prompt_with_image(tiny_model, q)[0].tolist()
           for q in ("Where is the dog?", "Where is the cat?")}
    shared = ids["Where is the dog?"].index(IMAGE_TOKEN_ID) + tiny_model.adapter.num_tokens
    rest = {q: len(v) - v.index(IMAGE_TOKEN_ID) - 1 for q, v in ids.items()}
    tiny_model.chat(im, "Where is the dog?", **kwargs)
    after = tiny_model.chat(im, "Where is the cat?", **kwargs)
    kv = cached_keys_and_values(tiny_model)
    tiny_model.reset()
    assert tiny_model.chat(im, "Where is the cat?", **kwargs) == after
    assert torch.equal(kv, cached_keys_and_values(tiny_model))
    assert lengths == [shared, rest["Where is the dog?"], rest["Where is the cat?"],
                       shared, rest["Where is the cat?"]]
    history = [("Where is the cat?", after)]
    tiny_model.chat(im, "And the dog?", history, **kwargs)
    messages = as_messages(history, "And the dog?", tiny_model.config.system_prompt)
    longer = tiny_model.builder.encode(messages, image_tokens=1).input_ids
    assert lengths[-1] <= len(longer) - len(ids["Where is the cat?"])


def test_an_answer_interrupted_anywhere_leaves_no_stale_cache(tiny_model, monkeypatch):
    """Ctrl-C may land in the middle of a prefill, after the cache was reused and written to: the
    conversation that goes on afterwards must not reuse keys and values of the lost question."""
    im, kwargs = image(3), dict(max_new_tokens=8)
    first = tiny_model.chat(im, "Where is the dog?", **kwargs)
    history = [("Where is the dog?", first)]
    tiny_model.reset()
    tiny_model.chat(im, "How many cats are there?", history, **kwargs)
    expected = cached_keys_and_values(tiny_model)
    tiny_model.reset()
    tiny_model.chat(im, "Where is the dog?", **kwargs)
    hidden_states = tiny_model.hidden_states

    def interrupted(inputs, cache=None, weights=None):
        hidden = hidden_states(inputs, cache=cache, weights=weights)
        if inputs.embeds.shape[1] > 1 and cache.length > tiny_model.adapter.num_tokens:
            raise KeyboardInterrupt  # the question's keys and values are written
        return hidden

    monkeypatch.setattr(tiny_model, "hidden_states", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_model.chat(im, "Describe the image in every detail, please.", **kwargs)
    monkeypatch.setattr(tiny_model, "hidden_states", hidden_states)
    tiny_model.chat(im, "How many cats are there?", history, **kwargs)
    assert torch.allclose(cached_keys_and_values(tiny_model), expected, atol=1e-4)


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    kwargs = dict(temperature=1.0, top_p=0.9, top_k=50, seed=3, max_new_tokens=10)
    a = tiny_model.chat(image(), "Describe the image.", **kwargs)
    tiny_model.reset()
    assert tiny_model.chat(image(), "Describe the image.", **kwargs) == a


def test_checkpoint_round_trip(tiny_model, tmp_path):
    with torch.no_grad():
        tiny_model.adapter.boi.add_(1.0)
    tiny_model.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["base"]["language_model"] and meta["trainable_parameters"] > 0
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "ckpt").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"], modes
    again = load_model(tmp_path / "ckpt", device="cpu")
    assert torch.equal(again.adapter.boi, tiny_model.adapter.boi)
    assert again.trainable_state_dict().keys() == tiny_model.trainable_state_dict().keys()


def test_checkpoint_on_another_base_is_refused(tiny_model, tmp_path):
    from tiny import write_tiny_lm

    tiny_model.save_pretrained(tmp_path / "ckpt")
    other = write_tiny_lm(tmp_path / "other-lm", seed=1)
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    meta["config"]["language_model"] = str(other)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="different base model"):
        load_model(tmp_path / "ckpt", device="cpu")


def test_damaged_or_missing_checkpoints(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="not a cogvlm_lite checkpoint"):
        load_model(tmp_path, device="cpu")
    tiny_model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(tmp_path / "ckpt", device="cpu")


@pytest.mark.parametrize("part, key, value, message", [
    ("expert", "rank", "sixteen", "expert.rank should be a whole number, at least 1, not 'sixteen'"),
    ("expert", "rank", -1, "expert.rank should be"),
    ("vision", "image_size", 0, "vision.image_size should be a whole number from 32 to 1536"),
    ("vision", "image_size", 100000, "vision.image_size should be"),
    ("vision", "model_name", "no_such_net", "vision.model_name should be the name of a timm model"),
    (None, "system_prompt", 5, "system_prompt should be text or null, not 5"),
    (None, "max_length", 10, "max_length should be a whole number of tokens, at least 256"),
    ("adapter", "words", "yes", "adapter.words should be true or false"),
])
def test_a_config_of_wrong_types_or_ranges_is_refused_by_name(tiny_model, tmp_path, part, key, value,
                                                              message):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (meta["config"][part] if part else meta["config"])[key] = value
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"config\.json is not a valid .*{message}"):
        load_model(tmp_path / "ckpt", device="cpu")


def test_weights_that_are_not_finite_are_refused(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_model.save_pretrained(tmp_path / "ckpt")
    state = load_file(tmp_path / "ckpt" / "model.safetensors")
    state["adapter.boi"][0] = float("nan")
    save_file(state, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"holds NaN or infinite values \(adapter\.boi\)"):
        load_model(tmp_path / "ckpt", device="cpu")
    with pytest.raises(ValueError, match="give one weight a checkpoint"):
        average_checkpoints([tmp_path / "ckpt", tmp_path / "ckpt"], [float("nan"), 1.0])


def test_a_region_off_the_grid_is_refused_before_answering(tiny_model):
    for ask in (tiny_model.chat, lambda *a: list(tiny_model.stream_chat(*a))):
        with pytest.raises(ValueError, match=r"\[\[2000,2000,3000,3000\]\] is not a region"):
            ask(image(), "What is in [[2000,2000,3000,3000]]?")
    assert isinstance(tiny_model.chat(None, "What is [[2000]]?", max_new_tokens=2), str)  # text only


@pytest.mark.parametrize("call, message", [
    ({"query": None}, "the question must be text, got None"),
    ({"query": 5}, "the question must be text, got 5"),
    ({"history": [("Hi",)]}, "history item 0 must be a (question, answer) pair of texts or a message "
                             "dict with 'role' and 'content', got ('Hi',)"),
    ({"history": ["Hi", "Hello"]}, "history item 0 must be a (question, answer) pair"),
    ({"history": [("Hi", "Hello"), (None, "x")]}, "history item 1 must be a (question, answer) pair"),
    ({"system": 5}, "the system prompt must be text, got 5"),
    ({"temperature": "0.5"}, "temperature must be a number, got '0.5'"),
    ({"max_new_tokens": 10**9}, "Shorten the message, or allow fewer new tokens for the answer."),
])
def test_the_python_api_names_what_is_wrong_with_a_call(tiny_model, call, message):
    options = {"query": "What is this?", "history": [], "max_new_tokens": 2} | call
    query, history = options.pop("query"), options.pop("history")
    zoomed = functools.partial(tiny_model.chat, zoom=True)
    for ask in (tiny_model.chat, zoomed, lambda *a, **k: list(tiny_model.stream_chat(*a, **k))):
        with pytest.raises(ValueError, match=re.escape(message)):
            ask(image(), query, history, **options)


@pytest.mark.parametrize("size", [5000, 0, "256", 100.5])
def test_an_image_size_no_checkpoint_can_have_is_refused_at_load(tiny_model, tmp_path, size):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=re.escape(f"vision.image_size should be a whole number from 32 "
                                                   f"to 1536, not {size!r}")):
        load_model(tmp_path / "ckpt", device="cpu", image_size=size)


def test_usage_counts_the_tokens_generated_and_why_the_reply_ended(tiny_model, monkeypatch):
    import cogvlm_lite.model as model_module

    accent = tiny_model.tokenizer("é", add_special_tokens=False)["input_ids"]
    assert len(accent) == 2  # one byte a token: the first alone is half a character
    stop = next(iter(tiny_model.stop_ids))
    for tokens, limit, expected in (
            (accent[:1], 1, {"completion_tokens": 1, "finish_reason": "length"}),  # cut mid-character
            ([*accent, stop], 5, {"completion_tokens": 2, "finish_reason": "stop"}),
            (accent, 2, {"completion_tokens": 2, "finish_reason": "length"})):
        monkeypatch.setattr(model_module, "decode_tokens", lambda *a, tokens=tokens, **k: iter(tokens))
        usage = {}
        texts = list(tiny_model.stream_chat(None, "Hi", max_new_tokens=limit, usage=usage))
        assert usage == {"dropped_turns": 0, **expected}, tokens
        assert texts == ([] if limit == 1 else ["é"])


def test_two_images_in_one_sequence_are_refused(tiny_model):
    ids = torch.tensor([[5, IMAGE_TOKEN_ID, 6, IMAGE_TOKEN_ID]])
    with pytest.raises(ValueError, match="one image"):
        tiny_model(input_ids=ids, images=[image(), image()])


@pytest.mark.weights
def test_default_model_text_is_exactly_the_base_lm(default_model):
    from cogvlm_lite.weights import default_lm_dir

    plain = Decoder.from_pretrained(default_lm_dir())
    ids = default_model.tokenizer("Hello, my name is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(default_model(input_ids=ids).logits, plain.logits(plain(ids)))


def test_bf16_checkpoint_loads_into_fp32(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "half", dtype=torch.bfloat16)
    again = load_model(tmp_path / "half", device="cpu")
    assert again.adapter.boi.dtype == torch.float32
    assert torch.equal(again.adapter.boi, tiny_model.adapter.boi.to(torch.bfloat16).float())


def test_image_cells_are_mixtures_of_word_embeddings(tiny_model):
    adapter, vocabulary = tiny_model.adapter, tiny_model.lm.embed_tokens.weight
    features = tiny_model.encoder(tiny_model.pixels([image()]))
    with torch.no_grad():
        adapter.word_scale.fill_(1e6)  # a softmax this sharp picks one word per cell
        cells = adapter.cells(features, vocabulary)[0]
        picked = adapter.word_logits(adapter.project(features), vocabulary)[0].argmax(-1)
    assert torch.allclose(cells, vocabulary[picked], atol=1e-5)
    with pytest.raises(ValueError, match="word mixtures"):
        adapter(features)


def test_unit_vocabulary_is_reused_until_the_table_changes():
    from cogvlm_lite.adapter import Adapter, AdapterConfig

    adapter = Adapter(AdapterConfig(), channels=4, grid=(2, 2), width=8, lm_intermediate=16)
    table = torch.randn(10, 8)
    first = adapter.unit_vocabulary(table, torch.float32)
    assert adapter.unit_vocabulary(table, torch.float32) is first
    table[3] *= 5  # edited in place: rows must be normalised again
    again = adapter.unit_vocabulary(table, torch.float32)
    assert again is not first and torch.allclose(again, F.normalize(table, dim=-1))
    other = table.clone()
    assert torch.allclose(adapter.unit_vocabulary(other, torch.bfloat16).float(),
                          F.normalize(other, dim=-1), atol=1e-2)


def test_projection_adapter_without_words(tiny_lm_dir, tiny_encoder_file):
    config = tiny_config(tiny_lm_dir, tiny_encoder_file)
    config.adapter.words = False
    model = build_model(config, device="cpu")
    assert model.adapter.word_scale is None
    embeds = model.image_embeddings([image()])
    assert embeds.shape == (1, model.adapter.num_tokens, model.lm.config.hidden_size)


def test_image_prompts_prefill_under_bf16_autocast_and_text_prompts_do_not(tiny_model, monkeypatch):
    from cogvlm_lite.fastdecode import onednn_bf16

    # by default only where the CPU has native bf16 products: elsewhere bf16 is the slow path
    assert tiny_model.image_prefill_bf16 == onednn_bf16()
    monkeypatch.setattr(tiny_model, "image_prefill_bf16", True)
    seen = []
    hidden_states = tiny_model.hidden_states

    def spy(inputs, cache=None, weights=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        return hidden_states(inputs, cache=cache, weights=weights)

    monkeypatch.setattr(tiny_model, "hidden_states", spy)
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    tiny_model.chat(image, "What is this?", max_new_tokens=2)
    tiny_model.chat(image, "And now?", history=[("What is this?", "A cat.")], max_new_tokens=2)
    tiny_model.chat(None, "Hello", max_new_tokens=2)
    monkeypatch.setattr(tiny_model, "image_prefill_bf16", False)
    tiny_model.chat(image, "What is this?", max_new_tokens=2)
    # a new image conversation prefills two chunks (system prompt and image, then the question)
    assert seen == [True, True, True, False, False, False]


def test_image_prefill_uses_bf16_copies_of_the_frozen_weights_with_the_same_products(
        tiny_model, monkeypatch):
    """Made once (autocast would cast them again on every call), and again after a change."""
    monkeypatch.setattr(tiny_model, "image_prefill_bf16", True)
    im, kwargs = image(3), dict(max_new_tokens=5)

    def answer_and_cache():
        tiny_model.reset()
        reply = tiny_model.chat(im, "Where is the dog?", **kwargs)
        cache = tiny_model._session["cache"]
        return reply, cache.k.clone(), cache.v.clone()

    copies = tiny_model._bf16_projections()
    assert copies and all(w.dtype == torch.bfloat16 for w in copies.values())
    assert not any(".expert." in name for name in copies)  # trainable: autocast caches those
    with_copies = answer_and_cache()
    assert tiny_model._bf16_projections() is copies
    monkeypatch.setattr(tiny_model, "_bf16_projections", lambda: {})  # plain autocast
    plain = answer_and_cache()
    assert with_copies[0] == plain[0]
    assert all(torch.equal(a, b) for a, b in zip(with_copies[1:], plain[1:], strict=True))
    monkeypatch.undo()
    with torch.no_grad():
        tiny_model.lm.layers[0].q_proj.weight.mul_(2)
    again = tiny_model._bf16_projections()
    assert again is not copies
    assert torch.equal(again["layers.0.q_proj.weight"],
                       tiny_model.lm.layers[0].q_proj.weight.to(torch.bfloat16))


def test_projection_normalised_in_fp32_in_any_dtype():
    """bf16 weights (a GPU) and bf16 autocast both give the fp32 projection, without warnings."""
    import warnings

    from cogvlm_lite.adapter import Adapter, AdapterConfig

    torch.manual_seed(0)
    adapter = Adapter(AdapterConfig(), channels=4, grid=(2, 2), width=8, lm_intermediate=16)
    features = torch.randn(2, 4, 2, 2)
    with torch.no_grad():
        reference = adapter.project(features)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = adapter.project(features)
            half = adapter.to(torch.bfloat16).project(features.bfloat16())
    assert mixed.dtype == half.dtype == torch.bfloat16
    assert torch.allclose(mixed.float(), reference, rtol=0.05, atol=0.05)
    assert torch.allclose(half.float(), reference, rtol=0.05, atol=0.05)


def test_shrinking_the_expert_keeps_what_its_deltas_use(tiny_model, tmp_path):
    """Deltas of rank 2 stored at rank 4: shrinking to 2 keeps the model's outputs; to 1, not."""
    with torch.no_grad():
        for layer in tiny_model.lm.layers:
            for part in layer.expert.parts.values():
                part.up.weight.normal_(0, 0.5)
                part.up.weight[:, 2:] = 0
    ids = prompt_with_image(tiny_model)
    with torch.no_grad():
        before = tiny_model(input_ids=ids, images=[image()]).logits
    tiny_model.save_pretrained(tmp_path / "rank4")
    assert tiny_model.shrink_expert(2) == pytest.approx(1.0)
    assert tiny_model.config.expert.rank == 2
    with torch.no_grad():
        assert torch.allclose(tiny_model(input_ids=ids, images=[image()]).logits, before,
                              atol=1e-4)
    tiny_model.save_pretrained(tmp_path / "rank2")
    loaded = load_model(tmp_path / "rank2", device="cpu")
    assert loaded.config.expert.rank == 2
    assert (tmp_path / "rank2/model.safetensors").stat().st_size < \
        (tmp_path / "rank4/model.safetensors").stat().st_size
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids, images=[image()]).logits, before, atol=1e-4)
    assert tiny_model.shrink_expert(1) < 0.99  # half of each delta is gone
    with pytest.raises(ValueError, match="already rank 1"):
        tiny_model.shrink_expert(1)


def test_shrinking_needs_a_low_rank_expert(tiny_lm_dir, tiny_encoder_file):
    full = build_model(tiny_config(tiny_lm_dir, tiny_encoder_file, kind="full"), device="cpu")
    with pytest.raises(ValueError, match="only a low-rank expert"):
        full.shrink_expert(2)


@pytest.mark.weights
def test_without_a_default_checkpoint_the_untrained_model_takes_the_image_size(monkeypatch,
                                                                                 tmp_path):
    import cogvlm_lite.model as model_module

    monkeypatch.setattr(model_module, "DEFAULT_CHECKPOINT", tmp_path / "none")
    model = load_model(device="cpu", image_size=320)
    assert model.config.vision.image_size == 320
    assert model.pixels([image()]).shape[-2:] == (320, 320)


def test_averaging_checkpoints_gives_the_weighted_mean_of_their_tensors(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "a")
    first = {k: v.clone() for k, v in tiny_model.trainable_state_dict().items()}
    with torch.no_grad():
        for v in tiny_model.parameters():
            if v.requires_grad:
                v.add_(1.0)
    tiny_model.save_pretrained(tmp_path / "b")
    second = tiny_model.trainable_state_dict()
    mean = average_checkpoints([tmp_path / "a", tmp_path / "b"], [3, 1])
    for key, value in mean.trainable_state_dict().items():
        assert torch.allclose(value, 0.75 * first[key] + 0.25 * second[key], atol=1e-6), key
    with pytest.raises(ValueError, match="two checkpoints or more"):
        average_checkpoints([tmp_path / "a"])
    with pytest.raises(ValueError, match="one weight a checkpoint"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"], [1])


def test_averaging_refuses_checkpoints_of_different_configs(tiny_model, tiny_lm_dir,
                                                            tiny_encoder_file, tmp_path):
    tiny_model.save_pretrained(tmp_path / "rank4")
    full = build_model(tiny_config(tiny_lm_dir, tiny_encoder_file, kind="full"), device="cpu")
    full.save_pretrained(tmp_path / "full")
    with pytest.raises(CheckpointError, match="different config"):
        average_checkpoints([tmp_path / "rank4", tmp_path / "full"])
