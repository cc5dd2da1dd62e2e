"""A cheap head start for the adapter, without running the language model.

Each grid cell's image token is trained to point in the direction of the language model's input
embedding of the name of the object covering that cell ("dog"), and of a comma elsewhere: a
classification over all names by cosine similarity (a plain distance to the target collapses to
the mean name). A frozen language model already reads such tokens: given cells that are " dog"
and ",", it tends to answer "dog". It needs object boxes per image: the `objects` field that
`cogvlm-lite scenes` writes beside each conversation. The 2-D position embeddings are left out
here; the main training teaches them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKGROUND = "background"
BACKGROUND_TEXT = ","  # what a cell with no object should read as: nearly nothing
SCALE = 20.0  # cosine similarity -> logit


def read_objects(path: str | Path) -> dict[Path, list[dict]]:
    """Image path -> its objects (name, relative box), from a scenes training file."""
    path = Path(path)
    out: dict[Path, list[dict]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if "objects" not in record:
            raise ValueError(f"{path}, line {n}: no 'objects' field; pre-alignment needs object "
                             "boxes as written by `cogvlm-lite scenes`")
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


def name_embeddings(model, names: list[str]) -> torch.Tensor:
    """Mean input embedding of each name's tokens (with a leading space, as in a sentence)."""
    table = model.lm.embed_tokens.weight.detach().float()
    rows = []
    for name in names:
        text = BACKGROUND_TEXT if name == BACKGROUND else " " + name
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append(table[ids].mean(0))
    return torch.stack(rows)


def prealign(model, data: str | Path, images: list[Path], features: torch.Tensor,
             epochs: int = 10, lr: float = 3e-3, batch: int = 8, seed: int = 0) -> float:
    """Train the adapter's projection so cell tokens point at object-name embeddings.

    Returns the last epoch's accuracy of the nearest name over the cells an object covers.
    """
    objects = read_objects(data)
    adapter = model.adapter
    grid = adapter.grid
    names = sorted({o["name"] for objs in objects.values() for o in objs} | {BACKGROUND})
    index = {n: i for i, n in enumerate(names)}
    targets = F.normalize(name_embeddings(model, names), dim=-1)
    labels = torch.tensor([[index[n] for n in cell_labels(objects.get(p, []), grid)]
                           for p in images])
    params = [p for n, p in adapter.named_parameters()
              if n.split(".")[0] in ("downsample", "linear", "norm", "gate", "up", "down", "out_norm")]
    optimizer = torch.optim.AdamW(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    # Background cells outnumber object cells: weigh both kinds equally in the loss.
    is_object = labels != index[BACKGROUND]
    share = float(is_object.float().mean().clamp(0.01, 0.99))
    weight = torch.tensor([0.5 / (1 - share), 0.5 / share])
    accuracy = float("nan")
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        hits, count = 0, 0
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            feats = features[idx].to(adapter.linear.weight.device, torch.float32)
            tokens = F.normalize(adapter.project(feats).flatten(0, 1), dim=-1)
            logits = SCALE * tokens @ targets.to(tokens.device).T
            target = labels[idx].flatten().to(tokens.device)
            w = weight.to(tokens.device)[is_object[idx].flatten().long()]
            loss = (F.cross_entropy(logits, target, reduction="none") * w).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            on_object = is_object[idx].flatten().to(tokens.device)
            hits += int((logits.argmax(-1) == target)[on_object].sum())
            count += int(on_object.sum())
        accuracy = hits / max(count, 1)
        log.info("pre-alignment epoch %d/%d: nearest name right on %.1f%% of object cells",
                 epoch + 1, epochs, 100 * accuracy)
    return accuracy

