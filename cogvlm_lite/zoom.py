"""Zoom in: ask again about a small box on a crop around it, where the object looks bigger.

On the encoder's grid an object under a fifth of the image covers a cell or two: the model's
boxes for such objects are mostly centred on them but too large (so a box under a quarter of the
image counts as small), and small regions are often misnamed. `zoom_in` looks again at each
small box of a reply that stands alone in its group: it crops a square around the box (`CONTEXT`
times its longer side, at least `MIN_CROP` of the image's shorter side), asks about the crop,
and puts the crop's box, mapped back to the whole image, in place of the first one. A reply of
one group is asked the same question again; in a reply of several groups (a grounded
description) each small box is asked for by its phrase, "Where is the <phrase>?". A question
that points at one small region is asked again on a crop around that region, in the crop's
coordinates, and the crop's answer replaces the reply. Groups of several boxes, points, boxes
whose phrase names nothing, and crops whose answer holds no single box (or, for a region, any
box) are left alone.
"""

from __future__ import annotations

from PIL import Image

from .grounding import (
    Box,
    Grounding,
    box_side,
    format_box,
    from_pixels,
    names_thing,
    parse_boxes,
    parse_groundings,
    to_pixels,
)
from .images import load_image

SMALL = 0.25  # a box whose longer side is under this share of the image's is looked at again
CONTEXT = 3.0  # the crop's side, in the box's longer side
MIN_CROP = 0.4  # the crop's smallest side, in the image's shorter side


def crop_around(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The square pixel crop (left, top, right, bottom) around `box`, inside the image."""
    x0, y0, x1, y1 = to_pixels(box, width, height)
    side = max(CONTEXT * max(x1 - x0, y1 - y0), MIN_CROP * min(width, height))
    side = round(min(side, width, height))
    left = round(min(max((x0 + x1 - side) / 2, 0), width - side))
    top = round(min(max((y0 + y1 - side) / 2, 0), height - side))
    return left, top, left + side, top + side


def from_crop(box: Box, crop: tuple[int, int, int, int], width: int, height: int) -> Box:
    """A box relative to `crop` as a box relative to the whole `width` x `height` image."""
    left, top, right, bottom = crop
    w, h = right - left, bottom - top
    pixels = (left + box[0] * w, top + box[1] * h, left + box[2] * w, top + box[3] * h)
    return from_pixels(pixels, width, height)


def to_crop(box: Box, crop: tuple[int, int, int, int], width: int, height: int) -> Box:
    """A box relative to the whole `width` x `height` image as a box relative to `crop`."""
    left, top, right, bottom = crop
    x0, y0, x1, y1 = to_pixels(box, width, height)
    return from_pixels((x0 - left, y0 - top, x1 - left, y1 - top), right - left, bottom - top)


def _one_small_box(group: Grounding) -> bool:
    """Whether a group is a single box (no points) under `SMALL` of the image."""
    return len(group.boxes) == 1 and not group.points and box_side(group.boxes[0]) < SMALL


def ask_on_region_crop(model, image, question: str, **generation) -> str | None:
    """The answer to `question` about one small region, asked on a crop around that region.

    None where that does not apply: `question` points at no region, at several, at a large one
    or at a point (which gives no size to crop to), or the crop's answer holds a box (which
    would be in the crop's coordinates).
    """
    regions = parse_groundings(question)
    if len(regions) != 1 or not _one_small_box(regions[0]):
        return None
    region = regions[0].boxes[0]
    image = image if isinstance(image, Image.Image) else load_image(image)
    crop = crop_around(region, *image.size)
    inside = format_box(to_crop(region, crop, *image.size))
    question = question[: regions[0].start] + inside + question[regions[0].end :]
    answer = model.chat(image.crop(crop), question, history=[], **generation)
    return None if parse_groundings(answer) else answer


def zoom_in(model, image, question: str, reply: str, **generation) -> str:
    """`reply`, looked at again on crops: its small boxes, or the small region `question` is about.

    `model` answers with `model.chat`, given `generation` (generation settings, `system`). Each
    crop is asked without the conversation's earlier turns: `question` itself when the reply
    holds one group, "Where is the <phrase>?" for each group of one small box of a longer reply,
    and `question` in the crop's coordinates for a region (see the module's doc).
    """
    if parse_groundings(question):
        answer = ask_on_region_crop(model, image, question, **generation)
        return reply if answer is None else answer
    groundings = parse_groundings(reply)
    alone = len(groundings) == 1
    small = [g for g in groundings if _one_small_box(g) and (alone or names_thing(g.phrase))]
    if not small:
        return reply
    image = image if isinstance(image, Image.Image) else load_image(image)
    pieces, done = [], 0
    for g in small:
        crop = crop_around(g.boxes[0], *image.size)
        query = question if alone else f"Where is the {g.phrase}?"
        boxes = parse_boxes(model.chat(image.crop(crop), query, history=[], **generation))
        if len(boxes) == 1:
            pieces += [reply[done : g.start], format_box(from_crop(boxes[0], crop, *image.size))]
            done = g.end
    return "".join(pieces) + reply[done:]
