"""CogVLM's grounding format: writing, parsing and drawing boxes and points in text.

The model refers to image regions inline, right after the phrase they belong to:

    "There is a red apple [[012,340,560,998]] next to two cups [[100,100,200,200;300,100,400,200]]."

A box is ``[[x0,y0,x1,y1]]`` and a point is ``[[x,y]]``, top-left origin, each value
``round(relative * 1000)`` clamped to 0..999 and written with three digits, relative to the
original image. Several boxes (or points) for one phrase share a group, separated by ``;``.

Inside the package, boxes and points are relative floats in [0, 1]. Parsing is tolerant of
model output: anything that cannot be read is skipped, never raised.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

Box = tuple[float, float, float, float]  # relative (x0, y0, x1, y1), top-left origin
Point = tuple[float, float]  # relative (x, y)

# A [[...]] group with no brackets inside; an unclosed "[[" never matches.
_GROUP = re.compile(r"\[\[([^\[\]]*)\]\]")
_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only
_SENTENCE_END = re.compile(r"[.!?\n:;]")
_TRAILING_GROUPS = re.compile(r"(?s)(?P<head>.*\S)\s*(?P<end>[?.!])\s*(?P<groups>(?:\[\[[^\[\]]*\]\]\s*)+)")
# Words dropped from either end of a phrase, as long as one word remains.
_FILLERS = frozenset(
    "a an the this that these those there it its is are was were be "
    "at in on of to with and or by located found shown".split()
)
_PHRASE_PUNCT = " \t,\"'`()-–—"

_COLOURS = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (0, 0, 128),
]


def to_grid(v: float) -> int:
    """Map a relative coordinate to CogVLM's 0..999 grid: ``round(v * 1000)``, clamped."""
    if not math.isfinite(v):
        raise ValueError(f"coordinate must be a finite number, got {v!r}")
    return min(999, max(0, round(v * 1000)))


def format_box(box: Box) -> str:
    """Write one relative box as ``[[x0,y0,x1,y1]]`` with three digits per value.

    Values are written in the order given; pass a normalised box (x0 <= x1, y0 <= y1).
    """
    return format_boxes([box])


def format_boxes(boxes: Sequence[Box]) -> str:
    """Write several relative boxes for one phrase as ``[[a,b,c,d;e,f,g,h]]``."""
    if not boxes:
        raise ValueError("format_boxes needs at least one box; write no group for no boxes")
    parts = []
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"a box has 4 values (x0, y0, x1, y1), got {box!r}")
        parts.append(",".join(f"{to_grid(v):03d}" for v in box))
    return "[[" + ";".join(parts) + "]]"


def format_point(point: Point) -> str:
    """Write one relative point as ``[[xxx,yyy]]``."""
    if len(point) != 2:
        raise ValueError(f"a point has 2 values (x, y), got {point!r}")
    return "[[" + ",".join(f"{to_grid(v):03d}" for v in point) + "]]"


@dataclass(frozen=True)
class Grounding:
    """One ``[[...]]`` group found in text: its phrase, its boxes and points, and its span."""

    phrase: str  # the phrase just before the group (see `parse_groundings`), may be ""
    boxes: list[Box]  # relative, values = int/1000
    points: list[Point]
    start: int  # text[start:end] is the whole "[[...]]" group
    end: int


def _grid_numbers(member: str) -> list[int] | None:
    """One ``;``-separated member's 2 or 4 whole numbers, or None if it is not that."""
    fields = [f.strip() for f in member.split(",")]
    if len(fields) not in (2, 4) or not all(_NUMBER.fullmatch(f) for f in fields):
        return None
    return [int(f) for f in fields]


def _parse_member(member: str) -> tuple[float, ...] | None:
    """Read one ``;``-separated member as 2 or 4 grid values, or None if it is not one."""
    numbers = _grid_numbers(member)
    return None if numbers is None else tuple(min(n, 999) / 1000 for n in numbers)


def _phrase(before: str) -> str:
    """The phrase a group refers to, from the text between the previous group and this one.

    The text is cut after its last sentence boundary (``. ! ? : ;`` or a newline) and its last
    comma between words (in "a cat, a dog [[...]]" the box is the dog's), stripped of spaces and
    punctuation, and filler words ("the", "a", "is", "at", ...) are dropped from both ends while
    at least one word remains: "There is a red apple" gives "red apple".
    """
    cuts = list(_SENTENCE_END.finditer(before))
    if cuts:
        before = before[cuts[-1].end() :]
    before = before.rstrip(_PHRASE_PUNCT).rsplit(",", 1)[-1]
    words = before.strip(_PHRASE_PUNCT).split()
    while len(words) > 1 and words[0].lower().strip(_PHRASE_PUNCT) in _FILLERS:
        words.pop(0)
    while len(words) > 1 and words[-1].lower().strip(_PHRASE_PUNCT) in _FILLERS:
        words.pop()
    return " ".join(words).strip(_PHRASE_PUNCT)


def names_thing(phrase: str) -> bool:
    """Whether a group's phrase names something ("red apple"), not only a filler word ("a")."""
    words = phrase.lower().split()
    return bool(words) and words[-1] not in _FILLERS


def parse_groundings(text: str) -> list[Grounding]:
    """Every readable ``[[...]]`` group in `text`, in order.

    A member of a group with four numbers is a box, one with two numbers a point; members that
    are neither are skipped, and so is a group with no readable member. Values above 999 are
    clamped to 999 and boxes are normalised so that x0 <= x1 and y0 <= y1. Spaces and fewer than
    three digits are accepted. The phrase is the text since the previous group or sentence
    boundary, with filler words trimmed from its ends (see `_phrase`).
    """
    groundings = []
    previous_end = 0
    for match in _GROUP.finditer(text):
        boxes: list[Box] = []
        points: list[Point] = []
        for member in match.group(1).split(";"):
            values = _parse_member(member)
            if values is None:
                continue
            if len(values) == 2:
                points.append((values[0], values[1]))
            else:
                x0, y0, x1, y1 = values
                boxes.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        if boxes or points:
            phrase = _phrase(text[previous_end : match.start()])
            groundings.append(Grounding(phrase, boxes, points, match.start(), match.end()))
        previous_end = match.end()
    return groundings


def parse_boxes(text: str) -> list[Box]:
    """All boxes in `text`, flattened over groups, in order."""
    return [box for g in parse_groundings(text) for box in g.boxes]


def box_centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def box_side(box: Box) -> float:
    """The box's longer side."""
    return max(box[2] - box[0], box[3] - box[1])


def box_area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes; 0 when they do not overlap or one has no area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    area_a, area_b = box_area(a), box_area(b)
    if area_a <= 0 or area_b <= 0:
        return 0.0
    inter = iw * ih
    return inter / (area_a + area_b - inter)


def merge_boxes(boxes: Sequence[Box]) -> Box:
    """The smallest box enclosing all `boxes`."""
    if not boxes:
        raise ValueError("merge_boxes needs at least one box")
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")


def to_pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A relative box as rounded pixel coordinates in a `width` x `height` image, clamped."""
    _check_size(width, height)
    x0, y0, x1, y1 = box
    return (
        min(width, max(0, round(x0 * width))),
        min(height, max(0, round(y0 * height))),
        min(width, max(0, round(x1 * width))),
        min(height, max(0, round(y1 * height))),
    )


def from_pixels(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    """A pixel box in a `width` x `height` image as a relative box, clamped to [0, 1]."""
    _check_size(width, height)
    x0, y0, x1, y1 = box
    return (
        min(1.0, max(0.0, x0 / width)),
        min(1.0, max(0.0, y0 / height)),
        min(1.0, max(0.0, x1 / width)),
        min(1.0, max(0.0, y1 / height)),
    )


def strip_groundings(text: str) -> str:
    """`text` for display: every ``[[...]]`` group removed (readable or not), spacing tidied."""
    text = _GROUP.sub("", text)
    text = re.sub(r"[ \t]+([.,!?:;)])", r"\1", text)  # "apple ." -> "apple."
    text = re.sub(r"\(\s*\)", "", text)  # "apple ([[...]])" leaves "()"
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return text.strip()


def check_regions(question: str) -> None:
    """Raise ValueError naming the first ``[[...]]`` group in `question` that is not a region:
    points ``[[x,y]]`` and boxes ``[[x0,y0,x1,y1]]`` (several joined by ``;``) of whole numbers
    from 0 to 999, each box with x0 < x1 and y0 < y1. A group with letters is a format asked for
    ("Answer in [[x0,y0,x1,y1]] format."), not a region, and so is an empty one."""
    for match in _GROUP.finditer(question):
        if not match[1].strip() or any(c.isalpha() for c in match[1]):
            continue
        for member in match[1].split(";"):
            n = _grid_numbers(member)
            if n is None or max(n) > 999 or len(n) == 4 and not (n[0] < n[2] and n[1] < n[3]):
                raise ValueError(
                    f"{match[0]} is not a region: give a point [[x,y]] or a box [[x0,y0,x1,y1]] of "
                    "whole numbers from 0 to 999 (thousandths of the width and height), with "
                    "x0 < x1 and y0 < y1")


def regions_before_punctuation(question: str) -> str:
    """`question` with groups typed after its final punctuation moved before it.

    "What is this? [[...]]" becomes "What is this [[...]]?": the model learned regions inside
    questions, and names a region typed after the question mark far less often.
    """
    match = _TRAILING_GROUPS.fullmatch(question)
    if not match:
        return question
    groups = " ".join(match["groups"].split())
    return f"{match['head']} {groups}{match['end']}"


def _draw_label(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    text: str,
    anchor: tuple[int, int],
    colour: tuple[int, int, int],
    size: tuple[int, int],
) -> None:
    """Draw `text` in a filled rectangle above `anchor` (below it if there is no room)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x = max(0, min(anchor[0], size[0] - w))
    y = anchor[1] - h if anchor[1] - h >= 0 else anchor[1]
    y = max(0, min(y, size[1] - h))
    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)


def draw_groundings(image: Image.Image | str | os.PathLike | bytes, text: str) -> Image.Image:
    """Draw every box and point grounded in `text` on a new RGB copy of `image`.

    `image` is a PIL image, or a path or the bytes of an image file, read as the model reads it
    (`images.load_image`: upright by its EXIF orientation). Each group gets its own colour and a
    label with its phrase (no label when the phrase is empty). The input image is left untouched.
    """
    if not isinstance(image, Image.Image):
        from .images import load_image

        image = load_image(image)
    canvas = image.convert("RGB")  # always a new image, even from RGB
    width, height = canvas.size
    groundings = parse_groundings(text)
    if not groundings or width == 0 or height == 0:
        return canvas
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(min(width, height) / 200))
    radius = max(2, 2 * line)
    font = ImageFont.load_default(size=max(12, min(width, height) // 30))
    for i, g in enumerate(groundings):
        colour = _COLOURS[i % len(_COLOURS)]
        anchors = []
        for box in g.boxes:
            x0, y0, x1, y1 = to_pixels(box, width, height)
            x1, y1 = max(x0, x1 - 1), max(y0, y1 - 1)  # last pixel inside the box
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
            anchors.append((x0, y0))
        for point in g.points:
            x = min(width - 1, round(point[0] * width))
            y = min(height - 1, round(point[1] * height))
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius),
                fill=colour,
                outline=(255, 255, 255),
            )
            anchors.append((x - radius, y - radius))
        if g.phrase:
            for anchor in anchors:
                _draw_label(draw, font, g.phrase, anchor, colour, (width, height))
    return canvas
