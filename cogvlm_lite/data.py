"""Training data: conversation files, encoded samples, frozen-encoder feature caching, batches.

Two formats, one conversation per record, image paths relative to the file:

- ours (JSONL): `{"image": "img/0001.png", "messages": [{"role": "user", "content": ...}, ...]}`
- LLaVA (JSON list or JSONL): `{"image": ..., "conversations": [{"from": "human", "value":
  "<image>\\nWhat is ..."}, {"from": "gpt", "value": ...}]}`

The image always goes at the start of the first user turn (CogVLM takes one image, first), so
LLaVA's `<image>` marker is dropped wherever it stands. Loss labels come from
`ConversationBuilder.encode`: assistant tokens only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .conversation import IGNORE, ConversationBuilder, validate

log = logging.getLogger(__name__)

LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
               "system": "system"}


@dataclass
class Sample:
    image: Path | None
    messages: list[dict]
    source: str = ""  # where the record is, for messages: "train.jsonl, line 3"


def read_conversations(path: str | Path, *, skip_bad: bool = False) -> list[Sample]:
    """Read our JSONL or LLaVA JSON/JSONL; a bad record is an error naming file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data {path} not found")
    text = read_utf8(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = [(i + 1, r) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        where = "record"
    else:
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                records.append((n, line))
        where = "line"
    samples, bad = [], 0
    for n, record in records:
        source = f"{path}, {where} {n}"
        try:
            if isinstance(record, str):
                try:
                    record = json.loads(record)
                except json.JSONDecodeError as e:
                    raise ValueError(f"not valid JSON ({e.msg})") from e
            sample = parse_record(record, path.parent)
        except ValueError as e:
            if not skip_bad:
                raise ValueError(bad_record(source, e)) from e
            bad += 1
            log.warning("skipped %s: %s", source, e)
            continue
        sample.source = source
        samples.append(sample)
    if bad:
        log.warning("skipped %d bad records of %d in %s", bad, len(records), path)
    if not samples:
        raise ValueError(f"{path} holds no usable conversations")
    return samples


def read_utf8(path: Path) -> str:
    """The text of a data file, a UTF-8 byte-order mark skipped; ValueError naming a folder, or
    the first line that is not UTF-8."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the data file in it")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text; save the file as UTF-8") from None


def bad_record(source: str, problem: Exception) -> str:
    """The error for a bad record: where it is, what is wrong, what to do."""
    return f"{source}: {str(problem).rstrip('.')}. Fix it, or pass --skip-bad to skip bad records."


def usable_samples(samples: list[Sample], builder: ConversationBuilder, image_tokens: int, *,
                   skip_bad: bool = False) -> list[Sample]:
    """The samples whose image decodes and whose conversation fits the context.

    A bad one is an error naming its file and line; with `skip_bad`, a warning. Images are
    decoded by one thread per core.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .images import load_image

    def image_problem(path: Path) -> ValueError | None:
        try:
            load_image(path)
        except ValueError as e:
            return e
        return None

    images = list(dict.fromkeys(s.image for s in samples if s.image is not None))
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        problems = dict(zip(images, pool.map(image_problem, images), strict=True))
    usable, bad = [], 0
    for s in samples:
        problem = problems.get(s.image)
        if problem is None:
            try:
                builder.encode(s.messages, image_tokens=image_tokens if s.image else 0,
                               generation_prompt=False)
            except ValueError as e:
                problem = e
        if problem is None:
            usable.append(s)
        elif skip_bad:
            bad += 1
            log.warning("skipped %s: %s", s.source, problem)
        else:
            raise ValueError(bad_record(s.source, problem)) from problem
    if bad:
        log.warning("skipped %d of %d records: an image that cannot be decoded, or a conversation "
                    "too long for the context", bad, len(samples))
    if not usable:
        raise ValueError("no usable conversations are left after skipping the bad ones")
    return usable


def parse_record(record, root: Path) -> Sample:
    if not isinstance(record, dict):
        raise ValueError("a record must be a JSON object")
    if "messages" in record:
        messages = record["messages"]
    elif "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise ValueError("'conversations' must be a list")
        messages = []
        for t in turns:
            if not isinstance(t, dict) or t.get("from") not in LLAVA_ROLES:
                raise ValueError(f"bad LLaVA turn {t!r}: need 'from' (human/gpt) and 'value'")
            value = t.get("value")
            if not isinstance(value, str):
                raise ValueError("a LLaVA turn's 'value' must be a string")
            value = value.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "")
            messages.append({"role": LLAVA_ROLES[t["from"]], "content": value.strip()})
    else:
        raise ValueError("a record needs 'messages' (ours) or 'conversations' (LLaVA)")
    if not isinstance(messages, list):
        raise ValueError("'messages' must be a list")
    messages = validate(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant reply to learn from")
    image = record.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise ValueError("'image' must be a path string")
        image = root / image
        if not image.is_file():
            raise ValueError(f"image {image} not found")
    return Sample(image, messages)


def pack_by_image(samples: list[Sample], max_turns: int = 24) -> list[Sample]:
    """Merge the conversations about one image into multi-turn ones of up to `max_turns` turns.

    The image is encoded and prefilled once for many answers, which makes a training step
    carry several times more supervision for about the same cost.
    """
    packed: dict[Path | None, list[list[dict]]] = {}
    out: list[Sample] = []
    for s in samples:
        if s.image is None or s.messages[0]["role"] == "system":
            out.append(s)
            continue
        groups = packed.setdefault(s.image, [[]])
        if groups[-1] and len(groups[-1]) + len(s.messages) > max_turns:
            groups.append([])
        groups[-1].extend(s.messages)
    for image, groups in packed.items():
        out.extend(Sample(image, messages) for messages in groups)
    return out


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image: int  # index into the data set's image list, -1 for none


class ConversationData:
    """Encoded samples plus the list of distinct images they refer to."""

    def __init__(self, samples: list[Sample], builder: ConversationBuilder, image_tokens: int):
        self.images: list[Path] = []
        index: dict[Path, int] = {}
        self.items: list[Encoded] = []
        for s in samples:
            enc = builder.encode(s.messages, image_tokens=image_tokens if s.image else 0,
                                 generation_prompt=False)
            k = -1
            if s.image is not None:
                k = index.setdefault(s.image, len(self.images))
                if k == len(self.images):
                    self.images.append(s.image)
            self.items.append(Encoded(enc.input_ids, enc.labels, k))

    def __len__(self) -> int:
        return len(self.items)

    def tokens(self, i: int, image_tokens: int) -> int:
        item = self.items[i]
        return len(item.input_ids) + (image_tokens - 1 if item.image >= 0 else 0)


def collate(items: list[Encoded], pad_id: int):
    """Right-padded (input_ids, labels) tensors and the image index of each row."""
    length = max(len(x.input_ids) for x in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    for r, x in enumerate(items):
        ids[r, : len(x.input_ids)] = torch.tensor(x.input_ids)
        labels[r, : len(x.labels)] = torch.tensor(x.labels)
    return ids, labels, [x.image for x in items]


class BatchSampler:
    """Deterministic global batches over epochs; each rank takes its share of every batch.

    With `lengths` and `groups` > 1, the samples of `groups` consecutive optimizer steps are
    drawn as one window, sorted by length, cut into steps and served in a shuffled order: each
    step then holds conversations of similar length, so little of it is padding, and the data
    seen over a window is the same as without grouping. A step is `micro_batches` batches
    (gradient accumulation); grouping never changes which samples share a step.

    The position is the number of (micro-)batches drawn, so saving and restoring it resumes
    exactly where an unbroken run would be.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 lengths: list[int] | None = None, groups: int = 1, micro_batches: int = 1):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} must divide evenly over {world} processes")
        if groups < 1:
            raise ValueError(f"length groups must be at least 1, not {groups}")
        if groups > 1 and (lengths is None or len(lengths) != n):
            raise ValueError("grouping batches by length needs the length of every sample")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        # A window holds at most one pass over the data; only one that spans the end of a pass
        # may hold a sample twice (as an ungrouped batch across that end may).
        self.groups = max(1, min(groups, n // (batch_size * micro_batches)))
        self.lengths, self.micro_batches = lengths, micro_batches
        self.position = 0
        self._epoch, self._order = -1, None

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._order

    def _drawn(self, start: int, count: int) -> list[int]:
        """`count` sample indices from position `start` of the endless shuffled sequence."""
        return [int(self._order_of(k // self.n)[k % self.n]) for k in range(start, start + count)]

    def next(self) -> list[int]:
        size, groups, micro = self.batch_size, self.groups, self.micro_batches
        if groups == 1:
            indices = self._drawn(self.position * size, size)
        else:
            step, part = divmod(self.position, micro)
            window, slot = divmod(step, groups)
            span = groups * micro * size
            drawn = sorted(self._drawn(window * span, span), key=self.lengths.__getitem__)
            served = np.random.default_rng([self.seed, window, 1]).permutation(groups)[slot]
            start = (served * micro + part) * size
            indices = drawn[start : start + size]
        self.position += 1
        return indices[self.rank :: self.world]

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "n": self.n, "groups": self.groups,
                "micro_batches": self.micro_batches}

    def load_state_dict(self, state: dict) -> None:
        groups = state.get("groups", 1)  # ungrouped, the order ignores the micro-batches
        saved = state["n"], state["seed"], groups, state.get("micro_batches", 1) * (groups > 1)
        if saved != (self.n, self.seed, self.groups, self.micro_batches * (self.groups > 1)):
            raise ValueError("the data, seed, batch size or length grouping changed since this run "
                             "was saved; resume with the same --data, --seed, --batch-size, "
                             "--length-groups and --grad-accum, or start a new run")
        self.position = state["position"]


@torch.no_grad()
def encode_images(model, paths: list[Path], batch: int = 32, dtype=torch.bfloat16,
                  progress: bool = False) -> torch.Tensor:
    """Frozen-encoder features of every image, computed once: (N, C, h, w).

    Images are decoded by one thread per core (Pillow decodes without holding the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    out = []
    chunks = range(0, len(paths), batch)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for start in tqdm(chunks, desc="encoding images", disable=not progress, unit="batch"):
            names = [str(p) for p in paths[start : start + batch]]
            pixels = torch.cat(list(pool.map(model.pixels, names)))
            out.append(model.encoder(pixels.to(model.device)).to("cpu", dtype))
    return torch.cat(out) if out else torch.empty(0)
