"""A cheap head start for the adapter, without running the language model.

Each grid cell is trained to pick the words of the object covering it: the adapter's word logits
(its cells' cosine similarity to the LM's input embeddings) go through a softmax over the words
of every object name, a comma (for cells with no object: it reads as next to nothing), and a fresh
random sample of other words each step, with the cell's name tokens as the target. With the
default word-mixture adapter, a cell over a dog then *is* roughly the embedding of " dog", and a
frozen language model already reads it so. It needs object boxes per image: the `objects` field
that `cogvlm-lite scenes` writes beside each conversation. The 2-D position embeddings are left
out here; the main training teaches them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BACKGROUND = "background"
BACKGROUND_TEXT = ","  # what a cell with no object should read as: nearly nothing
NEGATIVES = 2048  # random other words in each step's softmax


def read_objects(path: str | Path) -> dict[Path, list[dict]]:
    """Image path -> its objects (name, relative box), from a scenes training file."""
    from .data import read_utf8

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; give a train.jsonl written by `cogvlm-lite scenes`")
    out: dict[Path, list[dict]] = {}
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); "
                             "fix or delete that line") from None
        if not isinstance(record, dict) or "objects" not in record or "image" not in record:
            raise ValueError(f"{path}, line {n}: needs 'image' and 'objects' fields; pre-alignment "
                             "needs object boxes as written by `cogvlm-lite scenes`")
        out[path.parent / record["image"]] = record["objects"]
    return out


def cell_labels(objects: list[dict], grid: tuple[int, int], min_cover: float = 0.3) -> list[str]:
    """The name covering each cell (row-major), or BACKGROUND; later-drawn objects win ties."""
    rows, cols = grid
    labels = []
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = c / cols, r / rows, (c + 1) / cols, (r + 1) / rows
            best, name = min_cover, BACKGROUND
            for obj in objects:
                bx0, by0, bx1, by1 = obj["box"]
                w = max(0.0, min(x1, bx1) - max(x0, bx0)) * cols
                h = max(0.0, min(y1, by1) - max(y0, by0)) * rows
                if w * h >= best:
                    best, name = w * h, obj["name"]
            labels.append(name)
    return labels


def name_tokens(tokenizer, names: list[str]) -> list[list[int]]:
    """Token ids of each name as it appears in a sentence (leading space); BACKGROUND: a comma."""
    return [tokenizer(BACKGROUND_TEXT if n == BACKGROUND else " " + n,
                      add_special_tokens=False)["input_ids"] for n in names]


def name_targets(tokenizer, names: list[str], device=None) -> tuple[list[int], torch.Tensor]:
    """The words of all `names` (sorted token ids) and, per name, a distribution over them:
    uniform over the name's own words."""
    tokens = name_tokens(tokenizer, names)
    words = sorted({t for ids in tokens for t in ids})
    column = {t: i for i, t in enumerate(words)}
    target = torch.zeros(len(names), len(words), device=device)
    for i, ids in enumerate(tokens):
        for t in ids:
            target[i, column[t]] += 1 / len(ids)
    return words, target


def prealign(model, objects: dict[Path, list[dict]], images: list[Path], features: torch.Tensor,
             epochs: int = 10, lr: float = 3e-3, batch: int = 8, seed: int = 0) -> float:
    """Train the adapter's projection (and word scale) so each cell picks its object's words.

    `objects` maps image paths to their objects (`read_objects`). Returns the last epoch's share
    of object cells whose top word is one of their name's.
    """
    adapter = model.adapter
    vocabulary = model.lm.embed_tokens.weight.detach()
    device = adapter.linear.weight.device
    names = sorted({o["name"] for objs in objects.values() for o in objs} | {BACKGROUND})
    index = {n: i for i, n in enumerate(names)}
    words, target = name_targets(model.tokenizer, names, device)
    target = torch.nn.functional.pad(target, (0, NEGATIVES))  # the negatives' columns stay 0
    words = torch.tensor(words, device=device)
    labels = torch.tensor([[index[n] for n in cell_labels(objects.get(p, []), adapter.grid)]
                           for p in images], device=device)
    params = [p for n, p in adapter.named_parameters()
              if n.split(".")[0] in ("downsample", "linear", "norm", "gate", "up", "down", "out_norm",
                                     "word_scale")]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    # Background cells outnumber object cells: weigh both kinds equally in the loss.
    is_object = labels != index[BACKGROUND]
    share = float(is_object.float().mean().clamp(0.01, 0.99))
    weight = torch.tensor([0.5 / (1 - share), 0.5 / share], device=device)
    accuracy = float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        hits, count = 0, 0
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            negatives = torch.randint(0, len(vocabulary), (NEGATIVES,), generator=generator)
            columns = torch.cat([words, negatives.to(device)])
            cells = adapter.project(features[idx].to(device, torch.float32)).flatten(0, 1)
            logits = adapter.word_logits(cells, vocabulary[columns].float())
            label = labels[idx].flatten()
            goal = target[label]
            loss = -(goal * logits.log_softmax(-1)).sum(-1)
            loss = (loss * weight[is_object[idx].flatten().long()]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            on_object = is_object[idx].flatten()
            right = goal.gather(1, logits.argmax(-1, keepdim=True))[:, 0] > 0
            hits += int(right[on_object].sum())
            count += int(on_object.sum())
        accuracy = hits / max(count, 1)
        log.info("pre-alignment epoch %d/%d: top word right on %.1f%% of object cells",
                 epoch + 1, epochs, 100 * accuracy)
    return accuracy


def probe(model, objects: dict[Path, list[dict]], images: list[Path],
          features: torch.Tensor) -> dict:
    """How well the adapter's cells find and name objects, without the language model.

    For every object of every image: *naming* is right when the cell under the object's centre
    picks its name (of all names and background); *pointing* is right when the cell that picks
    the name most surely lies in the object's box. Both per object size (`evaluate.SIZES`, the
    box's longer side) and overall: ``{"n", "naming", "pointing"}`` each.
    """
    from .evaluate import SIZES, size_name

    adapter = model.adapter
    vocabulary = model.lm.embed_tokens.weight.detach()
    device = adapter.linear.weight.device
    names = sorted({o["name"] for p in images for o in objects.get(p, [])} | {BACKGROUND})
    index = {n: i for i, n in enumerate(names)}
    words, target = name_targets(model.tokenizer, names, device)
    word_embeddings = vocabulary[words].float()
    rows, cols = adapter.grid
    tally = {name: [0, 0, 0] for name, _ in SIZES}  # objects, named, pointed
    with torch.no_grad():
        for k, path in enumerate(images):
            cells = adapter.project(features[k : k + 1].to(device, torch.float32))[0]
            logits = adapter.word_logits(cells, word_embeddings)
            scores = logits.log_softmax(-1) @ target.T  # (cells, names)
            choice = scores.argmax(-1)
            for obj in objects.get(path, []):
                x0, y0, x1, y1 = obj["box"]
                name = index[obj["name"]]
                r = min(rows - 1, int((y0 + y1) / 2 * rows))
                c = min(cols - 1, int((x0 + x1) / 2 * cols))
                best = int(scores[:, name].argmax())
                bx, by = (best % cols + 0.5) / cols, (best // cols + 0.5) / rows
                counts = tally[size_name((x0, y0, x1, y1))]
                counts[0] += 1
                counts[1] += int(choice[r * cols + c]) == name
                counts[2] += x0 <= bx <= x1 and y0 <= by <= y1
    tally["all"] = [sum(column) for column in zip(*tally.values(), strict=True)]
    return {size: {"n": n, "naming": named / n if n else None,
                   "pointing": pointed / n if n else None}
            for size, (n, named, pointed) in tally.items()}


def probe_image_size(model, data: str | Path, eval_data: str | Path, images: int = 1500,
                     epochs: int = 10, seed: int = 0) -> dict:
    """`prealign` the model's adapter on the first `images` scenes of `data`, then `probe` it on
    every scene of `eval_data` (both scenes training files, with objects). On a fresh model, a
    measure of how much its encoder's grid at its image size tells about objects, in minutes."""
    from .data import encode_images

    train_objects, eval_objects = read_objects(data), read_objects(eval_data)
    train_images, eval_images = sorted(train_objects)[:images], sorted(eval_objects)
    features = encode_images(model, train_images)
    accuracy = prealign(model, train_objects, train_images, features, epochs, seed=seed)
    result = probe(model, eval_objects, eval_images, encode_images(model, eval_images))
    return {"image_size": model.config.vision.image_size, "grid": list(model.adapter.grid),
            "train_accuracy": accuracy, **result}
