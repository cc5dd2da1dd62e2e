"""Conversations -> token ids and loss labels, with the image at the start of the first user turn.

One function, `ConversationBuilder.encode`, builds both the inference prompt and the training
labels, from the language model's own chat template (ChatML for SmolLM2). The image goes right
after the opening tokens of the first user turn (`<|im_start|>user\\n`), so a real text token is
always first. The image is one `IMAGE_TOKEN_ID` in the ids; the model expands it into BOI, the
patch tokens and EOI. When the context would overflow, the oldest turns are dropped; the image
and the current question never are. `typed_as_trained` reads a question about an image as the
training questions are typed ("is there a dog" as "Is there a dog?").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .grounding import regions_before_punctuation

IMAGE_TOKEN_ID = -200  # placeholder id for the image, as LLaVA uses
IGNORE = -100  # label of a token that carries no loss
_MARK = "\ue000"  # private-use character marking the image inside the rendered template

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

# The first words of a sentence that asks ("Is there ...", "How many ...", "What's ...").
_ASKING = frozenset(
    "what whats what's which where wheres where's how hows how's who whose whom why when "
    "is are am was were do does did can could would will should shall may might has have had".split()
)
_SENTENCES = re.compile(r"(?<=[.?!])\s+")
_SENTENCE_START = re.compile(r"(^|[.?!]\s+)([a-z])")
_WORD = re.compile(r"[a-z']+")
_CLAUSE_START = re.compile(r"[:,;]\s*([a-z]+)")  # "The cat or the dog: which is higher"
_ALONE_I = re.compile(r"\bi\b")
_SPACES = re.compile(r"\s+")
_REPEATED_END = re.compile(r"([?.!])[?.!]+$")  # "Is there a cat??"


@dataclass
class Encoded:
    input_ids: list[int]  # IMAGE_TOKEN_ID where the image goes
    labels: list[int]  # the token where it is trained on, else IGNORE
    dropped_turns: int = 0  # oldest exchanges left out to fit the context


def as_messages(history, query: str | None = None, system: str | None = None) -> list[Message]:
    """History as (user, assistant) pairs or message dicts, plus the new query -> messages.

    Raises ValueError naming a query, system prompt or history item that is not text (or a pair
    of texts, or a dict with "role" and "content")."""
    if system is not None and not isinstance(system, str):
        raise ValueError(f"the system prompt must be text, got {_shown(system)}")
    if query is not None and not isinstance(query, str):
        raise ValueError(f"the question must be text, got {_shown(query)}")
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    for i, item in enumerate(history or []):
        if isinstance(item, dict) and "role" in item and "content" in item:
            messages.append({"role": item["role"], "content": item["content"]})
        elif (isinstance(item, (tuple, list)) and len(item) == 2
              and all(isinstance(text, str) for text in item)):
            messages += [{"role": "user", "content": item[0]},
                         {"role": "assistant", "content": item[1]}]
        else:
            raise ValueError(f"history item {i} must be a (question, answer) pair of texts or a "
                             f"message dict with 'role' and 'content', got {_shown(item)}")
    if query is not None:
        messages.append({"role": "user", "content": query})
    return messages


def dropped_note(dropped: int) -> str:
    """What a chat says when the oldest `dropped` exchanges were left out to fit the context."""
    if dropped == 1:
        return "the oldest exchange no longer fits the context and was left out"
    return f"the oldest {dropped} exchanges no longer fit the context and were left out"


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def typed_as_trained(question: str) -> str:
    """`question` about an image, typed as the questions the model learned from.

    Spaces and line breaks around it are dropped, and runs of them inside it become one space; a
    final "??" or "?!" becomes its first mark, a region typed after the final punctuation is
    moved before it ("What is this? [[...]]"), a question typed all in lower case gets capitals
    where its sentences begin (and "I"), and one that ends in a letter, a digit or a region gets
    the final punctuation it lacks: a question mark where its last sentence asks (it opens with a
    question word or an auxiliary verb, as "Is there a dog", its second word is "which" or "of",
    as "In which corner ..." and "Number of cats", or a clause opens with "which", "what",
    "where" or "how", as "The cat or the dog: which is higher"), else a full stop.
    """
    question = _REPEATED_END.sub(r"\1", _SPACES.sub(" ", question).strip())
    question = regions_before_punctuation(question)
    if question and (question[-1].isalnum() or question[-1] == "]"):
        last = _SENTENCES.split(question)[-1].lower()
        words = _WORD.findall(last)
        clauses = _CLAUSE_START.findall(last)
        asks = bool(words) and (words[0] in _ASKING or words[1:2] in (["which"], ["of"])
                                or any(w in ("which", "what", "where", "how") for w in clauses))
        question += "?" if asks else "."
    if not any(c.isupper() for c in question):
        question = _SENTENCE_START.sub(lambda m: m[1] + m[2].upper(), question)
        question = _ALONE_I.sub("I", question)
    return question


def map_questions(messages: Sequence[Message], change: Callable[[str], str]) -> list[Message]:
    """`messages` with each user turn's text replaced by `change(text)`."""
    return [{**m, "content": change(m["content"])} if m["role"] == "user" else m for m in messages]


class ConversationBuilder:
    """Encodes conversations with a tokenizer's chat template."""

    def __init__(self, tokenizer, max_length: int = 2048):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; use an instruct/chat model.")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, messages: Sequence[Message], *, image_tokens: int = 0,
               generation_prompt: bool = True, reserve: int = 0) -> Encoded:
        """Token ids and labels; `image_tokens` > 0 places an image taking that many positions.

        `reserve` keeps room for that many generated tokens. Assistant replies (and their end
        token) are labelled; everything else is not.
        """
        messages = validate(messages)
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        dropped = 0
        while True:
            enc = self._encode(system + turns, image_tokens, generation_prompt)
            length = len(enc.input_ids) + max(image_tokens - 1, 0)
            if length + reserve <= self.max_length:
                enc.dropped_turns = dropped
                return enc
            cut = _first_exchange_end(turns)
            if cut is None:
                raise ValueError(
                    f"the conversation is too long: the current message needs {length} tokens "
                    f"(the image included) plus {reserve} to answer, and the context holds "
                    f"{self.max_length}. Shorten the message"
                    + (", or allow fewer new tokens for the answer." if reserve else ".")
                )
            turns = turns[cut:]
            dropped += 1

    def _encode(self, messages, image_tokens: int, generation_prompt: bool) -> Encoded:
        messages = [dict(m) for m in messages]
        if image_tokens:
            first_user = next(m for m in messages if m["role"] == "user")
            first_user["content"] = _MARK + first_user["content"]
        render = self._render
        full = render(messages, generation_prompt and messages[-1]["role"] == "user")
        # Character spans of the assistant replies, found by rendering growing prefixes.
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(render(messages[:i], True))
            end = len(render(messages[: i + 1], False))
            spans.append((start, end))
        ids: list[int] = []
        labels: list[int] = []
        cursor = 0
        for start, end in [*spans, (len(full), len(full))]:
            self._append(full[cursor:start], ids, labels, trained=False)
            self._append(full[start:end], ids, labels, trained=True)
            cursor = end
        return Encoded(ids, labels)

    def _render(self, messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _append(self, text: str, ids: list, labels: list, trained: bool) -> None:
        for k, piece in enumerate(text.split(_MARK)):
            if k:
                ids.append(IMAGE_TOKEN_ID)
                labels.append(IGNORE)
            tokens = self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            ids += tokens
            labels += tokens if trained else [IGNORE] * len(tokens)


def validate(messages: Sequence[Message]) -> list[Message]:
    """Check roles: an optional system message, then user/assistant turns starting with user."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be a dict with a string 'content'")
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"message {i} has role {m.get('role')!r}; use system/user/assistant")
        out.append({"role": m["role"], "content": m["content"]})
    body = out[1:] if out and out[0]["role"] == "system" else out
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(
                f"turn {i} is {m['role']!r} but should be {expected!r}: after an optional system "
                "message, user and assistant turns alternate, starting with user"
            )
    if not body:
        raise ValueError("the conversation has no user message")
    return out


def _first_exchange_end(turns: list[Message]) -> int | None:
    """Index just after the oldest user+assistant exchange, or None if only the last turn is left."""
    if len(turns) <= 2 and turns[-1]["role"] == "assistant" or len(turns) <= 1:
        return None
    return 2
