"""Zoom in: ask again about a small box on a crop around it, where the object looks bigger.

On the encoder's grid an object under a fifth of the image covers a cell or two, and the model's
boxes for such objects are mostly centred on them but too large. `zoom_in` takes a reply that
holds one small box, crops a square around that box (`CONTEXT` times its longer side, at least
`MIN_CROP` of the image's shorter side), asks the same question about the crop, and puts the
crop's box, mapped back to the whole image, in place of the first one. The rest of the reply is
kept as it was. Replies with no box or several, questions that point at a region themselves, and
crops whose reply holds no single box are left alone.
"""

from __future__ import annotations

from PIL import Image

from .grounding import (
    Box,
    box_side,
    format_box,
    from_pixels,
    parse_boxes,
    parse_groundings,
    to_pixels,
)
from .images import load_image

SMALL = 0.2  # a box whose longer side is under this share of the image's is looked at again
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


def zoom_in(model, image, question: str, reply: str, **generation) -> str:
    """`reply` with its one small box found again on a crop around it (see the module's doc).

    `model` answers with `model.chat`, given `generation` (generation settings, `system`). The
    crop is asked `question` alone, without the conversation's earlier turns.
    """
    groundings = parse_groundings(reply)
    if len(groundings) != 1 or len(groundings[0].boxes) != 1 or groundings[0].points:
        return reply
    if parse_groundings(question):
        return reply  # its region is in the whole image's coordinates, not the crop's
    box = groundings[0].boxes[0]
    if box_side(box) >= SMALL:
        return reply
    image = image if isinstance(image, Image.Image) else load_image(image)
    crop = crop_around(box, *image.size)
    boxes = parse_boxes(model.chat(image.crop(crop), question, history=[], **generation))
    if len(boxes) != 1:
        return reply
    found = format_box(from_crop(boxes[0], crop, *image.size))
    return reply[: groundings[0].start] + found + reply[groundings[0].end :]
