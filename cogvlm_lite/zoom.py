"""Look again at a reply's boxes: on a crop around each, every look also mirrored.

On the 14x14 grid of the default checkpoint an object under a fifth of the image spans under three
cells: the model's boxes for such objects are mostly centred on them but too large, and small
regions are often misnamed. `zoom_in` looks again: it crops a square around a box (`CONTEXT`
times its longer side, at least `MIN_CROP` of the image's shorter side), asks about the crop, and
maps the crop's box back to the whole image. A question that points at one small region is
asked again on a crop around that region, in the crop's coordinates, and the crop's answer
replaces the reply.

Larger boxes are mostly centred too, but their sizes scatter, and a look at the mirror image
errs in part otherwise. So each crop is asked about as it is and mirrored (left and right
swapped in the question too), and the looks' boxes are averaged. A reply of one group holding
one box is asked the same question again. A box of `TINY` of the image or more becomes the mean
of its box, the mirrored whole image's and, where the box fits its crop with all its context
(`CONTEXT` times its longer side within the image's shorter side), the two looks at that crop;
one under `TINY` becomes the mean of its crop's two looks alone, since the whole image boxes
such objects poorly. The encoder sees every image squeezed to a square: an image more oblong
than any training scene (`TRAINED_ASPECT`) shows its objects out of shape there, so for such an
image the whole image's two looks are taken at the largest square around the box instead (both
asked, as it is and mirrored; `whole_view`).

A description (any other reply) names things it does not show, and puts boxes where its
thing is not. Each box of it is first checked on its crop: "Is there a <thing>?" (the phrase's
thing, one of it: "two cats" asks for a cat); a box the crop answers "no" to is dropped, its
phrase kept. The others are asked for again, "Where is the <thing>?": a box that shares its
group, and one under `SMALL` of the image, on its crop; a group's only box from `SMALL` up as a
lone reply's is. Two boxes of one thing ("two cats [[...;...]]", or "two cats [[...]] and a
cat [[...]]") whose looks overlap by more than `SAME_THING` (IoU) box it twice: the later one
is dropped. Points, boxes whose phrase names nothing, and looks whose answer holds no single
box (or, for a region, any box) are left alone.

The model boxes something for any object asked about, there or not. So a reply of one group of
boxes to a question that names one object of the scenes' vocabulary ("Where is the dog?", "Find
all the dogs.") is first checked on the whole image: "Is there a dog in the image?". Where that
answer is "no", each box is checked on its crop too, and a box whose crop also says "no" is
dropped; a reply with no box left becomes "There is no dog in the image.". A count of such an
object ("How many dogs are there?" answered "There are 2 dogs.") is checked the same way, on
the whole image and then on the crop around each box the model finds for "Where is the dog?";
where none shows one, the reply becomes "There are no dogs in the image.".

A question about where one such object is against another, as a yes or no ("Is the cat left of
the dog?") or which of the two ("Which one is on top: the cat or the dog?"), is answered from
boxes: each object is found ("Where is the cat?") and that reply looked at again as above, and
the centres of the two boxes give the answer, which shows the boxes ("No. The cat [[...]] is
higher up, the dog [[...]] lower down.", "The cat [[...]]."). Where either object is not found
as one box, the reply stands. Asked which object is the smallest or the largest, the model
describes the image with boxes (`DESCRIBE`), the description is looked at again as above, and
the thing of the smallest or largest box is the answer, with that box ("The cat [[...]].").

`looking_again` is `zoom_in` one look at a time: it pauses before each question it asks the
model, so a caller knows a look is coming and can stop between looks (the browser UI's Stop).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Generator
from typing import NamedTuple, TypeVar

from PIL import Image, ImageOps

from .evaluate import first_number, first_yes_no, without_count
from .grounding import (
    Box,
    Grounding,
    box_area,
    box_centre,
    box_side,
    check_regions,
    format_box,
    format_boxes,
    from_pixels,
    iou,
    names_thing,
    parse_boxes,
    parse_groundings,
    to_pixels,
)
from .images import load_image
from .objects import plural_of, vocabulary, with_article

SMALL = 0.25  # a box whose longer side is under this share of the image's is looked at again
TINY = 0.2  # a lone box under this share: only its crop's looks count, not the whole image's
CONTEXT = 3.0  # the crop's side, in the box's longer side
MIN_CROP = 0.4  # the crop's smallest side, in the image's shorter side
DESCRIBE = "Give a grounded description of the image."  # asked where a size is compared
DESCRIBE_TOKENS = 256  # the description's room, whatever the question's
SAME_THING = 0.4  # two boxes of one thing in a description overlapping more (IoU) box it twice
TRAINED_ASPECT = 5 / 3  # the most oblong training scene (each side drawn 0.75 to 1.25 of its size)

T = TypeVar("T")
Looks = Generator[None, None, T]  # pauses (yields None) before each answer; returns a T


def run_looks(looks: Looks[T], stop: Callable[[], bool] | None = None) -> T | None:
    """What `looks` returns, run to its end without pausing; None, and no more asked, once
    `stop()` is true at a pause."""
    while True:
        try:
            next(looks)
        except StopIteration as end:
            return end.value
        if stop is not None and stop():
            looks.close()
            return None


def answer(model, image: Image.Image, question: str, **generation) -> Looks[str]:
    """A pause; then `model`'s answer to `question` about `image`, asked alone."""
    yield
    return model.chat(image, question, history=[], **generation)


def _opened(image) -> Image.Image:
    """`image` as it is where it is a PIL image, else loaded from its path or bytes."""
    return image if isinstance(image, Image.Image) else load_image(image)


def crop_around(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The square pixel crop (left, top, right, bottom) around `box`, inside the image."""
    pixels = to_pixels(box, width, height)
    x0, y0, x1, y1 = pixels
    side = max(CONTEXT * max(x1 - x0, y1 - y0), MIN_CROP * min(width, height), 1)
    return _square(pixels, round(min(side, width, height)), width, height)


def whole_view(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel crop zoom takes as the whole image around `box`: the image itself, but for an
    image more oblong than `TRAINED_ASPECT` the largest square around `box`, where `box` fits in
    it."""
    pixels = to_pixels(box, width, height)
    x0, y0, x1, y1 = pixels
    side = min(width, height)
    if max(width, height) / side <= TRAINED_ASPECT or max(x1 - x0, y1 - y0) > side:
        return 0, 0, width, height
    return _square(pixels, side, width, height)


def _square(pixels: tuple[int, int, int, int], side: int, width: int,
            height: int) -> tuple[int, int, int, int]:
    """The square pixel crop of `side` centred on the pixel box `pixels`, moved inside the
    image."""
    x0, y0, x1, y1 = pixels
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


def mirrored(question: str) -> str:
    """`question` as asked about the mirrored image: left and right swapped."""
    def swap(match: re.Match) -> str:
        word = {"left": "right", "right": "left"}[match.group(1).lower()]
        return word.capitalize() if match.group(1)[0].isupper() else word

    return re.sub(r"\b(left|right)(?=(most|-hand|ward)?\b)", swap, question, flags=re.IGNORECASE)


def _one_box(group: Grounding) -> bool:
    """Whether a group is a single box, and no points."""
    return len(group.boxes) == 1 and not group.points


def _one_small_box(group: Grounding) -> bool:
    """Whether a group is a single box (no points) under `SMALL` of the image."""
    return _one_box(group) and box_side(group.boxes[0]) < SMALL


def fits_crop(box: Box, width: int, height: int) -> bool:
    """Whether `box`'s crop holds all its context: `CONTEXT` times its longer side fits within
    the image's shorter side (else the crop is cut to the image, or is the whole of it)."""
    x0, y0, x1, y1 = to_pixels(box, width, height)
    return CONTEXT * max(x1 - x0, y1 - y0) < min(width, height)


def ask_on_region_crop(model, image, question: str, **generation) -> str | None:
    """The answer to `question` about one small region, asked on a crop around that region.

    None where that does not apply: `question` points at no region, at several, at a large one
    or at a point (which gives no size to crop to), or the crop's answer holds a box (which
    would be in the crop's coordinates).
    """
    return run_looks(region_look(model, image, question, **generation))


def region_look(model, image, question: str, **generation) -> Looks[str | None]:
    """`ask_on_region_crop`, pausing before the crop's answer."""
    regions = parse_groundings(question)
    if len(regions) != 1 or not _one_small_box(regions[0]):
        return None
    region = regions[0].boxes[0]
    image = _opened(image)
    crop = crop_around(region, *image.size)
    inside = format_box(to_crop(region, crop, *image.size))
    try:
        check_regions(inside)
    except ValueError:  # a region under a thousandth of the crop: no box left to ask about
        return None
    question = question[: regions[0].start] + inside + question[regions[0].end :]
    text = yield from answer(model, image.crop(crop), question, **generation)
    return None if parse_groundings(text) else text


def zoom_in(model, image, question: str, reply: str, **generation) -> str:
    """`reply`, looked at again: a lone box on its crop and in the mirror image, a description's
    boxes checked and looked at on their crops, the small region `question` is about on a crop,
    an object asked for or counted checked, where one object is against another answered from
    their boxes, or which object is the smallest or largest from a description's.

    `model` answers with `model.chat`, given `generation` (generation settings, `system`). Each
    look is asked without the conversation's earlier turns: `question` itself when the reply
    is one box, "Where is the <thing>?" for each box of a description and each object of a
    relation, `DESCRIBE` where sizes are compared, and `question` in the crop's coordinates for
    a region (see the module's doc).
    """
    return run_looks(looking_again(model, image, question, reply, **generation))


def looking_again(model, image, question: str, reply: str, **generation) -> Looks[str]:
    """`zoom_in`, pausing before each of the model's answers: closed at a pause, it asks no
    more; it does not pause at all where there is nothing to look at again."""
    if parse_groundings(question):
        text = yield from region_look(model, image, question, **generation)
        return reply if text is None else text
    groundings = parse_groundings(reply)
    relation = None if groundings else asked_relation(question)
    if relation is not None:
        image = _opened(image)
        return (yield from _related(model, image, relation, reply, **generation))
    extreme = None if groundings else asked_size(question)
    if extreme is not None:
        image = _opened(image)
        return (yield from _sized(model, image, extreme, reply, **generation))
    name = asked_thing(question)
    if name is not None and not groundings and first_number(reply):
        image = _opened(image)
        shown = yield from _count_shown(model, image, name, **generation)
        return reply if shown else f"There are no {plural_of(name)} in the image."
    one_group = len(groundings) == 1 and groundings[0].boxes and not groundings[0].points
    if name is not None and one_group:
        image = _opened(image)
        group = groundings[0]
        kept = yield from _boxes_shown(model, image, name, group.boxes, **generation)
        if not kept:
            return f"There is no {name} in the image."
        if kept != group.boxes:
            reply = reply[: group.start] + format_boxes(kept) + reply[group.end :]
            groundings = parse_groundings(reply)
    alone = len(groundings) == 1 and _one_box(groundings[0])
    groups = groundings if alone else [
        g for g in groundings if g.boxes and not g.points and names_thing(g.phrase)]
    if not groups:
        return reply
    image = _opened(image)
    pieces, done = [], 0
    given: dict[str, list[Box]] = {}  # a description's boxes so far, by their thing
    for g in groups:
        if alone:
            box = yield from look_again(model, image, g.boxes[0], question,
                                        box_side(g.boxes[0]) >= TINY, **generation)
            boxes = g.boxes if box is None else [box]
        else:
            boxes = yield from _described_boxes(model, image, g, given, **generation)
        if boxes == g.boxes:
            continue
        before = reply[done : g.start]
        pieces += [before, format_boxes(boxes)] if boxes else [before.rstrip()]
        done = g.end
    return "".join(pieces) + reply[done:]


def _shown(model, view: Image.Image, name: str, **generation) -> Looks[bool]:
    """Whether `view` shows a `name`, as the model answers "Is there a <name> in the image?"
    (anything but a "no" counts as yes)."""
    question = f"Is there {with_article(name)} in the image?"
    return first_yes_no((yield from answer(model, view, question, **generation))) != "no"


def _shown_on_crop(model, image: Image.Image, box: Box, name: str, **generation) -> Looks[bool]:
    """Whether the crop around `box` (`crop_around`) shows a `name` (`_shown`)."""
    return (yield from _shown(model, image.crop(crop_around(box, *image.size)), name, **generation))


def _boxes_shown(model, image: Image.Image, name: str, boxes: list[Box],
                 **generation) -> Looks[list[Box]]:
    """`boxes`, where the whole image shows a `name`; else those whose crop shows one."""
    if (yield from _shown(model, image, name, **generation)):
        return boxes
    kept = []
    for box in boxes:
        if (yield from _shown_on_crop(model, image, box, name, **generation)):
            kept.append(box)
    return kept


def _count_shown(model, image: Image.Image, name: str, **generation) -> Looks[bool]:
    """Whether the whole image shows a `name`, or else the crop around a box the model finds
    for "Where is the <name>?" does."""
    if (yield from _shown(model, image, name, **generation)):
        return True
    found = yield from answer(model, image, f"Where is the {name}?", **generation)
    for box in parse_boxes(found):
        if (yield from _shown_on_crop(model, image, box, name, **generation)):
            return True
    return False


def _related(model, image: Image.Image, relation: Relation, reply: str,
             **generation) -> Looks[str]:
    """The answer to `relation` that the centres of its two objects' boxes give, each found by
    "Where is the <object>?" and looked at again, with those boxes: "No. The cat [[...]] is to the
    right, the dog [[...]] to the left." or "The cat [[...]]."; `reply` where either is not one
    box."""
    boxes = []
    for name in (relation.a, relation.b):
        question = f"Where is the {name}?"
        found = yield from answer(model, image, question, **generation)
        looked = parse_boxes((yield from looking_again(model, image, question, found, **generation)))
        if len(looked) != 1:
            return reply
        boxes.append(looked[0])
    axis, sign = _AXES[relation.direction]
    a, b = (box_centre(box)[axis] for box in boxes)
    if a == b:
        return reply
    further = sign * (a - b) > 0  # a lies further that way than b
    if not relation.yes_no:
        name, box = (relation.a, boxes[0]) if further else (relation.b, boxes[1])
        return f"The {name} {format_box(box)}."
    side_a, side_b = _SIDES[axis] if a < b else _SIDES[axis][::-1]
    return (f"{'Yes' if further else 'No'}. The {relation.a} {format_box(boxes[0])} is {side_a}, "
            f"the {relation.b} {format_box(boxes[1])} {side_b}.")


def _sized(model, image: Image.Image, extreme: str, reply: str, **generation) -> Looks[str]:
    """The thing whose box is the `extreme` ("smallest" or "largest") in the model's description
    of `image`, looked at again; `reply` where the description boxes nothing it names."""
    described = {**generation, "max_new_tokens": max(generation.get("max_new_tokens", 0),
                                                     DESCRIBE_TOKENS)}
    text = yield from answer(model, image, DESCRIBE, **described)
    text = yield from looking_again(model, image, DESCRIBE, text, **described)
    sized = [(box_area(box), thing(g.phrase), box) for g in parse_groundings(text)
             if names_thing(g.phrase) for box in g.boxes]
    if not sized:
        return reply
    _, name, box = (min if extreme == "smallest" else max)(sized)
    return f"The {name} {format_box(box)}."


def _described_boxes(model, image: Image.Image, group: Grounding, given: dict[str, list[Box]],
                     **generation) -> Looks[list[Box]]:
    """A description's group of boxes looked at again: each box whose crop shows no such thing
    is dropped; the others become the mean of their looks, and one that overlaps a box `given`
    for the same thing by more than `SAME_THING` (IoU) is dropped too. The boxes kept are added
    to `given`."""
    name = thing(group.phrase)
    query = f"Where is the {name}?"
    before = given.setdefault(name, [])
    boxes = []
    for box in group.boxes:
        if not (yield from _shown_on_crop(model, image, box, name, **generation)):
            continue
        whole = len(group.boxes) == 1 and box_side(box) >= SMALL
        mean = yield from look_again(model, image, box, query, whole, **generation)
        box = box if mean is None else mean
        if all(iou(box, other) <= SAME_THING for other in before):
            boxes.append(box)
            before.append(box)
    return boxes


def look_again(model, image: Image.Image, box: Box, question: str, whole: bool,
               **generation) -> Looks[Box | None]:
    """The mean of `box`'s looks, or None where no look (besides `box` itself) gives one box.

    With `whole`, the looks are the two (as it is and mirrored) at the whole image around `box`
    (`whole_view`; where that is the image itself, the look as it is is `box`), and the crop's
    two where `box` fits it (`fits_crop`); without, the crop's two alone.
    """
    width, height = image.size
    looks = []
    own = False  # whether `box` stands as a look: the reply's own view, as it is
    if whole:
        view = whole_view(box, width, height)
        own = view == (0, 0, width, height)
        looks.append(box if own else (yield from look(model, image, view, question, False,
                                                      **generation)))
        looks.append((yield from look(model, image, view, question, True, **generation)))
    if not whole or fits_crop(box, width, height):
        crop = crop_around(box, width, height)
        for flip in (False, True):
            looks.append((yield from look(model, image, crop, question, flip, **generation)))
    looks = [b for b in looks if b is not None]
    if len(looks) <= own:  # no look besides `box` itself
        return None
    return tuple(sum(values) / len(looks) for values in zip(*looks, strict=True))


def thing(phrase: str) -> str:
    """What a description's phrase names, one of it: "two red apples" gives "red apple".

    Leading numbers are dropped and a plural object name of the scenes' vocabulary is made
    singular; other phrases are kept as they are.
    """
    words = without_count(phrase.split())
    singulars = _singulars()
    for n in range(len(words)):
        tail = " ".join(words[n:]).lower()
        if tail in singulars:
            return " ".join([*words[:n], singulars[tail]])
    return " ".join(words)


def asked_thing(question: str) -> str | None:
    """The one object of the scenes' vocabulary that `question` names, singular ("Where are all
    the pool balls?" gives "pool ball"); None where it names none, or several."""
    pattern, singular = _vocabulary_words()
    found = {singular[word] for word in pattern.findall(question.lower())}
    return found.pop() if len(found) == 1 else None


class Relation(NamedTuple):
    """A question about where object `a` is against object `b`: "Is the <a> <direction> of the
    <b>?" (`yes_no`), or "Which is further <direction>, the <a> or the <b>?"."""

    yes_no: bool
    a: str
    b: str
    direction: str  # "left", "right", "above" or "below"


_DIRECTIONS = {
    "left": re.compile(r"\bleft\b"),
    "right": re.compile(r"\bright\b"),
    "above": re.compile(r"\b(?:above|higher|top|over)\b"),
    "below": re.compile(r"\b(?:below|lower|bottom|under|beneath)\b"),
}
_AXES = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}  # axis, sign
_SIDES = (("to the left", "to the right"), ("higher up", "lower down"))  # by axis: nearer 0, 999


def asked_relation(question: str) -> Relation | None:
    """Where `question` asks one object of the scenes' vocabulary is against another, as a yes
    or no ("Is the cat left of the dog?") or which of the two ("Which one is on top: the cat or
    the dog?"), in one direction; None for any other question."""
    text = question.lower()
    pattern, singular = _vocabulary_words()
    names = [singular[word] for word in pattern.findall(text)]
    rest = pattern.sub(" ", text)  # "top hat" names a hat, not a direction
    directions = [d for d, words in _DIRECTIONS.items() if words.search(rest)]
    if len(names) != 2 or names[0] == names[1] or len(directions) != 1:
        return None
    yes_no = text.split()[0] in ("is", "are", "does", "do")
    if not yes_no and not re.search(r"\bwhich\b", text):
        return None
    return Relation(yes_no, names[0], names[1], directions[0])


_SIZES = {
    "smallest": re.compile(r"\b(?:smallest|tiniest|least space)\b"),
    "largest": re.compile(r"\b(?:largest|biggest|most space)\b"),
}


def asked_size(question: str) -> str | None:
    """"smallest" or "largest" where `question` asks which object of the image is ("Which object
    is the smallest?", "Name the object that takes up the most space."); None for any other
    question, and for one that names an object of the scenes' vocabulary or several sizes."""
    text = question.lower()
    sizes = [size for size, words in _SIZES.items() if words.search(text)]
    if len(sizes) != 1 or _vocabulary_words()[0].search(text):
        return None
    return sizes[0]


@functools.lru_cache(maxsize=1)
def _singulars() -> dict[str, str]:
    return {c.plural: c.name for c in vocabulary()}


@functools.lru_cache(maxsize=1)
def _vocabulary_words() -> tuple[re.Pattern, dict[str, str]]:
    """A pattern finding the vocabulary's names, singular or plural (longest first), and each
    such word's singular."""
    singular = {name: name for name in _singulars().values()} | _singulars()
    words = "|".join(re.escape(w) for w in sorted(singular, key=len, reverse=True))
    return re.compile(rf"\b(?:{words})\b"), singular


def look(model, image: Image.Image, crop: tuple[int, int, int, int], question: str, mirror: bool,
         **generation) -> Looks[Box | None]:
    """The one box `question` gets on `image`'s pixel `crop`, or on the crop's mirror image
    (`question` then with left and right swapped), as a box of the whole image; None where the
    answer holds no single box."""
    view = image.crop(crop)
    if mirror:
        view, question = ImageOps.mirror(view), mirrored(question)
    boxes = parse_boxes((yield from answer(model, view, question, **generation)))
    if len(boxes) != 1:
        return None
    x0, y0, x1, y1 = boxes[0]
    box = (1 - x1, y0, 1 - x0, y1) if mirror else boxes[0]
    return from_crop(box, crop, *image.size)
