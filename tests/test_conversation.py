"""The conversation builder: template, image placement, labels, truncation; and sampling."""

import re

import numpy as np
import pytest
import torch
from tiny import tiny_tokenizer

from cogvlm_lite.conversation import (
    IGNORE,
    IMAGE_TOKEN_ID,
    ConversationBuilder,
    as_messages,
    typed_as_trained,
)
from cogvlm_lite.generation import GenerationConfig, pick_token


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize(("typed", "read"), [
    ("  Is there a cat?\n", "Is there a cat?"),
    ("is there a cat in the image", "Is there a cat in the image?"),
    ("Is there a cat in the image", "Is there a cat in the image?"),
    ("how many cats are there", "How many cats are there?"),
    ("find the dog", "Find the dog."),
    ("where is the cat? answer in [[x0,y0,x1,y1]] format",
     "Where is the cat? Answer in [[x0,y0,x1,y1]] format."),
    ("what is this [[100,200,300,400]]", "What is this [[100,200,300,400]]?"),
    ("What is this? [[100,200,300,400]]", "What is this [[100,200,300,400]]?"),
    ("the cat or the dog: which is higher", "The cat or the dog: which is higher?"),
    ("in which part of the picture is the cup", "In which part of the picture is the cup?"),
    ("number of cats in the image", "Number of cats in the image?"),
    ("i am looking for the cat: give me its box", "I am looking for the cat: give me its box."),
    ("whats in the image", "Whats in the image?"),
    ("Is there an iPhone", "Is there an iPhone?"),  # capitals typed: kept as typed
    ("Describe the image:", "Describe the image:"),  # ends in other punctuation: kept
    ("describe it 🙂", "Describe it 🙂"),
    ("Is there a  cat\n in the image?", "Is there a cat in the image?"),
    ("is there a cat??", "Is there a cat?"),
    ("How many cats?!", "How many cats?"),
    ("", ""),
])
def test_questions_are_read_as_typed_in_training(typed, read):
    """A question about an image: stripped, runs of spaces made one, a trailing region moved in,
    sentences capitalised when typed in lower case, one final question mark or full stop."""
    assert typed_as_trained(typed) == read
    assert typed_as_trained(read) == read


def test_prompt_is_the_chat_template(tok):
    builder = ConversationBuilder(tok)
    messages = as_messages([], "Where is the dog?")
    enc = builder.encode(messages)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert enc.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert enc.labels == [IGNORE] * len(enc.input_ids)


def test_image_follows_the_first_user_turn_opening(tok):
    builder = ConversationBuilder(tok)
    history = [("Where is the dog?", "[[001,002,003,004]]")]
    enc = builder.encode(as_messages(history, "How many cats?"), image_tokens=10)
    ids = enc.input_ids
    assert ids.count(IMAGE_TOKEN_ID) == 1
    before = tok.decode(ids[: ids.index(IMAGE_TOKEN_ID)])
    assert before.endswith("<|im_start|>user\n") and before.count("<|im_start|>user") == 1
    assert tok.decode(ids[ids.index(IMAGE_TOKEN_ID) + 1 :]).startswith("Where is the dog?")


def test_labels_cover_exactly_the_assistant_replies(tok):
    builder = ConversationBuilder(tok)
    history = [("Where is the dog?", "The dog is at the left."), ("How many cats?", "There are 2 cats.")]
    enc = builder.encode(as_messages(history), image_tokens=5, generation_prompt=False)
    trained = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    text = tok.decode(trained)
    assert text.replace("\n", "") == "The dog is at the left.<|im_end|>There are 2 cats.<|im_end|>"
    assert all(lab in (IGNORE, t) for t, lab in zip(enc.input_ids, enc.labels, strict=True))


def test_oldest_turns_are_dropped_never_the_image_or_question(tok):
    history = [(f"Where is the dog {i}?", "The dog is at the left.") for i in range(30)]
    messages = as_messages(history, "How many cats are there?", system="Be brief.")
    builder = ConversationBuilder(tok, max_length=200)
    enc = builder.encode(messages, image_tokens=50, reserve=20)
    assert 0 < enc.dropped_turns < 30
    assert len(enc.input_ids) + 49 + 20 <= 200
    text = tok.decode([t for t in enc.input_ids if t >= 0])
    assert "Be brief." in text
    assert text.rstrip().endswith("How many cats are there?<|im_end|>\n<|im_start|>assistant")
    assert IMAGE_TOKEN_ID in enc.input_ids and "dog 29" in text and "dog 0?" not in text


def test_a_question_too_long_for_the_context_is_a_clear_error(tok):
    builder = ConversationBuilder(tok, max_length=64)
    with pytest.raises(ValueError, match="too long"):
        builder.encode(as_messages([], "dog " * 100), image_tokens=10)


@pytest.mark.parametrize("messages,match", [
    ([], "no user message"),
    ([{"role": "assistant", "content": "hi"}], "should be 'user'"),
    ([{"role": "robot", "content": "hi"}], "role"),
    ([{"role": "user", "content": 3}], "string"),
])
def test_bad_messages(tok, messages, match):
    with pytest.raises(ValueError, match=match):
        ConversationBuilder(tok).encode(messages)


def test_pick_token_rules():
    logits = torch.tensor([0.0, 3.0, 2.0, 1.0])
    assert pick_token(logits, GenerationConfig(), []) == 1
    assert pick_token(logits, GenerationConfig(temperature=1.0, top_k=1), []) == 1
    # top_p keeps only the first token when it alone holds enough mass
    assert pick_token(torch.tensor([10.0, 0, 0, 0]), GenerationConfig(temperature=1.0, top_p=0.5), []) == 0
    # a strong repetition penalty moves greedy off the repeated token
    assert pick_token(logits, GenerationConfig(repetition_penalty=10.0), [1]) == 2
    g = torch.Generator().manual_seed(0)
    draws = {pick_token(logits, GenerationConfig(temperature=5.0), [], g) for _ in range(200)}
    assert draws == {0, 1, 2, 3}


@pytest.mark.parametrize("setting, message", [
    ({"top_p": 0}, "top_p must be above 0 and at most 1, got 0"),
    ({"top_p": 1.5}, "top_p must be above 0 and at most 1, got 1.5"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
    ({"max_new_tokens": 4.5}, "max_new_tokens must be a whole number, got 4.5"),
    ({"max_new_tokens": True}, "max_new_tokens must be a whole number, got True"),
    ({"temperature": "0.5"}, "temperature must be a number, got '0.5'"),
    ({"temperature": -1}, "temperature must be a finite number, at least 0, got -1"),
    ({"temperature": float("nan")}, "temperature must be a finite number, at least 0, got nan"),
    ({"top_k": 2.5}, "top_k must be a whole number, got 2.5"),
    ({"top_k": -1}, "top_k must be at least 0, got -1"),
    ({"seed": "x"}, "seed must be a whole number or None, got 'x'"),
    ({"seed": -1}, "seed must be at least 0, got -1"),
    ({"repetition_penalty": 0}, "repetition_penalty must be a finite number above 0, got 0"),
])
def test_bad_generation_settings_are_named(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GenerationConfig(**setting)


def test_numpy_numbers_are_settings_too():
    config = GenerationConfig(max_new_tokens=np.int64(8), temperature=np.float32(0.5), seed=np.int64(3))
    assert config.max_new_tokens == 8 and config.seed == 3
