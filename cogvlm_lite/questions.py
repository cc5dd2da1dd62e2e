"""Grounded questions and answers about a synthetic scene, from its objects' boxes.

The questions and answers of `cogvlm_lite.scenes`' data sets, in CogVLM's grounding format (see
`cogvlm_lite.grounding`):

- ``rec``: referring expression -> box ("Where is the dog?" -> ``[[x0,y0,x1,y1]]``);
- ``reg``: box or point -> name ("What is in [[...]]?" -> "A dog.");
- ``count``, ``exist``, ``spatial``: short answers derived from the boxes;
- ``gcap`` and ``caption``: a description of every object, with or without boxes.

Each kind has phrasings in three wordings: those training uses, more of them (``varied``), and
ones training never uses (``unseen``, for testing). `scene_conversations` writes a scene's
training conversations, `scene_questions` its held-out VQA items, and `with_extras` adds a
conversation per scene that counts or finds every object.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from cogvlm_lite.conversation import map_questions
from cogvlm_lite.evaluate import TASK_TYPES
from cogvlm_lite.grounding import (
    Box,
    box_area,
    box_centre,
    format_box,
    format_boxes,
    format_point,
)
from cogvlm_lite.objects import plural_of, vocabulary, with_article

if TYPE_CHECKING:
    from cogvlm_lite.scenes import Scene

MARGIN = 0.1  # relative gap needed before a left/right/above/below relation is asked
EXTRAS_SEED = 5  # the shuffle and wordings of `with_extras` (`write_dataset(counting=, locating=)`)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(parts: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _left_to_right(boxes: Sequence[Box]) -> list[Box]:
    return sorted(boxes, key=lambda b: (b[0], b[1], b[2], b[3]))


class _View:
    """What the question writers need to know about one scene."""

    def __init__(self, scene: Scene, wording: str = "trained"):
        if not scene.objects:
            raise ValueError("a scene needs at least one object to ask about")
        if wording not in WORDINGS:
            raise ValueError(f"wording must be one of {WORDINGS}, not {wording!r}")
        self.wording = wording
        self.objects = scene.objects
        self.size = scene.image.size
        self.groups: dict[str, list[Box]] = {}
        for obj in scene.objects:
            self.groups.setdefault(obj.name, []).append(obj.box)
        self.unique = [name for name, boxes in self.groups.items() if len(boxes) == 1]
        # Classes in reading order: by their leftmost box.
        self.ordered = sorted(
            self.groups, key=lambda n: (*_left_to_right(self.groups[n])[0][:2], n)
        )

    def say(self, rng: np.random.Generator, templates: tuple[str, ...]) -> str:
        """One of `templates`; in the unseen wording, its counterpart in `UNSEEN_WORDINGS`; in
        the varied one, half the time one of `VARIED_WORDINGS`.

        Unseen counterparts pair one to one and take the same random draw, so the trained and
        unseen wordings give the same scenes, the same answers and the same choice of questions.
        """
        i = int(rng.integers(len(templates)))
        if self.wording == "unseen":
            return UNSEEN_WORDINGS[templates][i]
        if self.wording == "varied" and rng.random() < 0.5:
            return _pick(rng, VARIED_WORDINGS[templates])
        return templates[i]

    def phrase(self, name: str) -> str:
        """'a dog' or 'two dogs'."""
        count = len(self.groups[name])
        if count == 1:
            return with_article(name)
        word = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)
        return f"{word} {plural_of(name)}"


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


_REC = (
    "Where is the {n}?",
    "Find the {n}.",
    "Give the bounding box of the {n}.",
    "Locate the {n}. Answer in [[x0,y0,x1,y1]] format.",
    "Where is the {n} in the image? Answer with its bounding box.",
    "Detect the {n}.",
    "Show me the {n}.",
    "Where is the {n}? Answer in [[x0,y0,x1,y1]] format.",
)
_REC_ALL = (
    "Where are all the {p}?",
    "Find all the {p}.",
    "Give the bounding boxes of all the {p}.",
    "Locate every {n}. Answer in [[x0,y0,x1,y1]] format.",
    "Detect all {p}.",
)
_REC_WHICH = {  # which one of several: phrasings of "the leftmost dog" and friends
    "left": ("the leftmost {n}", "the {n} on the left", "the {n} furthest to the left"),
    "right": ("the rightmost {n}", "the {n} on the right", "the {n} furthest to the right"),
    "top": ("the topmost {n}", "the {n} at the top", "the highest {n}"),
    "bottom": ("the bottommost {n}", "the {n} at the bottom", "the lowest {n}"),
}
_REC_ONE = (
    "Where is {t}?",
    "Find {t}.",
    "Give the bounding box of {t}.",
    "Locate {t}. Answer in [[x0,y0,x1,y1]] format.",
)
_REG_BOX = (
    "What is in {b}?",
    "What object is in the region {b}?",
    "Name the object in {b}.",
    "What is inside the box {b}?",
    "What can you see in {b}?",
)
_REG_POINT = (
    "What is at {b}?",
    "What object is at the point {b}?",
    "Name the object at {b}.",
    "What is at the point {b} in the image?",
)
_COUNT = (
    "How many {p} are there?",
    "How many {p} are in the image?",
    "Count the {p}.",
    "How many {p} can you see?",
    "What is the number of {p} in the image?",
)
_COUNT_ALL = (
    "How many objects are there?",
    "How many objects are in the image?",
    "Count the objects in the image.",
)
_EXIST = (
    "Is there {a} in the image?",
    "Is there {a}?",
    "Does the image contain {a}?",
    "Can you see {a} in the picture?",
    "Is there {a} in this picture?",
)
_RELATION = {  # direction -> question phrasings
    "left": ("Is the {a} to the left of the {b}?", "Is the {a} left of the {b}?"),
    "right": ("Is the {a} to the right of the {b}?", "Is the {a} right of the {b}?"),
    "above": ("Is the {a} above the {b}?", "Is the {a} higher than the {b}?"),
    "below": ("Is the {a} below the {b}?", "Is the {a} lower than the {b}?"),
}
_WHICH_OF_TWO = {
    "left": (
        "Which is further left, the {a} or the {b}?",
        "Which one is on the left: the {a} or the {b}?",
    ),
    "right": (
        "Which is further right, the {a} or the {b}?",
        "Which one is on the right: the {a} or the {b}?",
    ),
    "above": ("Which is higher, the {a} or the {b}?", "Which one is on top: the {a} or the {b}?"),
    "below": (
        "Which is lower, the {a} or the {b}?",
        "Which one is at the bottom: the {a} or the {b}?",
    ),
}
_EXTREME = {
    "biggest": ("Which object is the biggest?", "What is the largest object in the image?"),
    "smallest": ("Which object is the smallest?", "What is the smallest object in the image?"),
    "left": ("Which object is furthest to the left?", "What is the leftmost object?"),
    "right": ("Which object is furthest to the right?", "What is the rightmost object?"),
    "top": ("Which object is at the very top?", "What is the topmost object?"),
    "bottom": ("Which object is at the very bottom?", "What is the bottommost object?"),
}
_CORNER = ("Which object is in the {c} corner?", "What is in the {c} corner of the image?")
_GCAP = (
    "Describe the image and give the coordinates of each object you mention.",
    "Describe the image and give the coordinates [[x0,y0,x1,y1]] of each object you mention.",
    "What objects are in the image? Give their bounding boxes.",
    "List the objects in the image with their boxes.",
    "Give a grounded description of the image.",
)
_CAPTION = (
    "Describe the image.",
    "What is in the image?",
    "What do you see?",
    "Briefly describe the picture.",
    "List the objects in the image.",
)

# Wordings the training data never uses, for testing how a model copes with new phrasings
# (`--wording unseen`): each template tuple above -> as many unseen counterparts.
UNSEEN_WORDINGS: dict[tuple[str, ...], tuple[str, ...]] = {
    _REC: (
        "Could you tell me where I can see the {n} in this picture, with its coordinates?",
        "Point out the {n} with a box.",
        "In which region of the picture is the {n}?",
        "Mark the {n} with its bounding box, please.",
        "Which part of the picture holds the {n}? Reply with a box.",
        "I am looking for the {n}: give me its box.",
        "Draw a box around the {n}.",
        "Tell me the coordinates of the {n}.",
    ),
    _REC_ALL: (
        "Mark every one of the {p} with a box.",
        "Where in this picture are the {p}? Give a box for each.",
        "Box each of the {p}.",
        "Draw a box around each of the {p}.",
        "Tell me the coordinates of every one of the {p}.",
    ),
    _REC_WHICH["left"]: ("the {n} nearest the left edge", "the {n} closest to the left side",
                         "the {n} over on the left side"),
    _REC_WHICH["right"]: ("the {n} nearest the right edge", "the {n} closest to the right side",
                          "the {n} over on the right side"),
    _REC_WHICH["top"]: ("the {n} nearest the top edge", "the {n} closest to the top side",
                        "the {n} up near the top side"),
    _REC_WHICH["bottom"]: ("the {n} nearest the bottom edge", "the {n} closest to the bottom side",
                           "the {n} down near the bottom side"),
    _REC_ONE: (
        "Could you tell me where I can see {t}, with its coordinates?",
        "Point out {t} with a box.",
        "Mark {t} with its bounding box, please.",
        "Draw a box around {t}.",
    ),
    _REG_BOX: (
        "Tell me what the box {b} contains.",
        "Which object does the region {b} hold?",
        "Identify the thing inside {b}.",
        "Tell me the name of whatever occupies {b}.",
        "Which thing lies within {b}?",
    ),
    _REG_POINT: (
        "Tell me what lies at the point {b}.",
        "Which object is found at {b}?",
        "Identify the thing at {b}.",
        "Tell me the name of whatever is under the point {b}.",
    ),
    _COUNT: (
        "Tell me how many {p} this picture holds.",
        "What's the count of {p} here?",
        "How many {p} does the picture show?",
        "Tell me the number of {p} you can find.",
        "Could you count how many {p} appear here?",
    ),
    _COUNT_ALL: (
        "Tell me how many objects this picture holds.",
        "How many things does the picture show?",
        "Could you count the things in this picture?",
    ),
    _EXIST: (
        "Does this picture show {a}?",
        "Can {a} be found here?",
        "Is {a} visible anywhere in the picture?",
        "Would I find {a} in this picture?",
        "Tell me whether {a} appears here.",
    ),
    _RELATION["left"]: ("Is the {a} further left than the {b}?", "Does the {a} sit left of the {b}?"),
    _RELATION["right"]: ("Is the {a} further right than the {b}?", "Does the {a} sit right of the {b}?"),
    _RELATION["above"]: ("Is the {a} placed over the {b}?", "Does the {a} sit higher up than the {b}?"),
    _RELATION["below"]: ("Is the {a} placed under the {b}?", "Does the {a} sit lower down than the {b}?"),
    _WHICH_OF_TWO["left"]: (
        "Of the {a} and the {b}, which is nearer the left edge?",
        "Between the {a} and the {b}, which sits more to the left?",
    ),
    _WHICH_OF_TWO["right"]: (
        "Of the {a} and the {b}, which is nearer the right edge?",
        "Between the {a} and the {b}, which sits more to the right?",
    ),
    _WHICH_OF_TWO["above"]: (
        "Of the {a} and the {b}, which is nearer the top edge?",
        "Between the {a} and the {b}, which sits higher up?",
    ),
    _WHICH_OF_TWO["below"]: (
        "Of the {a} and the {b}, which is nearer the bottom edge?",
        "Between the {a} and the {b}, which sits lower down?",
    ),
    _EXTREME["biggest"]: (
        "Name the object that takes up the most space.",
        "Which thing in the picture is the largest?",
    ),
    _EXTREME["smallest"]: (
        "Name the object that takes up the least space.",
        "Which thing in the picture is the smallest?",
    ),
    _EXTREME["left"]: ("Name the object nearest the left edge.", "Which thing sits furthest left?"),
    _EXTREME["right"]: ("Name the object nearest the right edge.", "Which thing sits furthest right?"),
    _EXTREME["top"]: ("Name the object nearest the top edge.", "Which thing sits highest?"),
    _EXTREME["bottom"]: ("Name the object nearest the bottom edge.", "Which thing sits lowest?"),
    _CORNER: ("Which thing occupies the {c} corner?", "Which thing sits in the {c} corner of the picture?"),
    _GCAP: (
        "Tell me what this picture shows, with a box for every object.",
        "Describe this picture and box each thing you name.",
        "Which objects does the picture hold? Give each one's coordinates.",
        "Summarise this picture, giving the coordinates of each thing.",
        "Tell me which things appear here and where, with boxes.",
    ),
    _CAPTION: (
        "Tell me what this picture shows.",
        "Which objects does the picture hold?",
        "Give a short description of this picture.",
        "Summarise this picture in one sentence.",
        "Tell me which things appear in this picture.",
    ),
}
# More phrasings for training (`--wording varied`: about half the questions take one of these),
# none of them in the unseen set above, so that set stays a test of phrasings never trained on.
VARIED_WORDINGS: dict[tuple[str, ...], tuple[str, ...]] = {
    _REC: (
        "Please locate the {n}.",
        "Output the bounding box of the {n}.",
        "Where does the {n} appear?",
        "Find the {n} and return its box.",
        "Box of the {n}?",
    ),
    _REC_ALL: (
        "Please locate all the {p}.",
        "Output the bounding boxes of the {p}.",
        "Where do the {p} appear?",
        "Find each {n} and return the boxes.",
    ),
    _REC_WHICH["left"]: ("the {n} at the far left", "the left-hand {n}"),
    _REC_WHICH["right"]: ("the {n} at the far right", "the right-hand {n}"),
    _REC_WHICH["top"]: ("the uppermost {n}", "the {n} highest up"),
    _REC_WHICH["bottom"]: ("the {n} lowest down", "the {n} at the foot of the image"),
    _REC_ONE: (
        "Please locate {t}.",
        "Output the bounding box of {t}.",
        "Where does {t} appear?",
    ),
    _REG_BOX: (
        "What is shown in the box {b}?",
        "Which object is shown in {b}?",
        "Name the thing in the region {b}.",
    ),
    _REG_POINT: (
        "What is shown at {b}?",
        "Which object is shown at the point {b}?",
        "Name the thing at the point {b}.",
    ),
    _COUNT: (
        "How many {p} does the image contain?",
        "Please count the {p}.",
        "Number of {p} in the image?",
    ),
    _COUNT_ALL: (
        "How many objects does the image contain?",
        "Please count the objects.",
        "Number of objects in the image?",
    ),
    _EXIST: (
        "Is {a} present in the image?",
        "Do you see {a}?",
        "Does {a} appear in the image?",
    ),
    _RELATION["left"]: ("Is the {a} on the left side of the {b}?",),
    _RELATION["right"]: ("Is the {a} on the right side of the {b}?",),
    _RELATION["above"]: ("Is the {a} situated above the {b}?",),
    _RELATION["below"]: ("Is the {a} situated below the {b}?",),
    _WHICH_OF_TWO["left"]: ("The {a} or the {b}: which is on the left?",),
    _WHICH_OF_TWO["right"]: ("The {a} or the {b}: which is on the right?",),
    _WHICH_OF_TWO["above"]: ("The {a} or the {b}: which is higher?",),
    _WHICH_OF_TWO["below"]: ("The {a} or the {b}: which is lower?",),
    _EXTREME["biggest"]: ("What is the biggest thing in the image?",),
    _EXTREME["smallest"]: ("What is the tiniest object in the image?",),
    _EXTREME["left"]: ("What object is on the far left?",),
    _EXTREME["right"]: ("What object is on the far right?",),
    _EXTREME["top"]: ("What object is highest in the image?",),
    _EXTREME["bottom"]: ("What object is lowest in the image?",),
    _CORNER: ("Name the object in the {c} corner.",),
    _GCAP: (
        "Describe the image with bounding boxes.",
        "Name the objects in the image and give their boxes.",
        "What is in the image? Answer with a box for each object.",
    ),
    _CAPTION: (
        "Describe this image.",
        "What does the image show?",
        "Name the objects in the image.",
    ),
}
WORDINGS = ("trained", "varied", "unseen")
TYPINGS = ("exact", "loose")


def typed_loosely(text: str, rng: np.random.Generator) -> str:
    """`text` as people often type a question, half the time: without its final punctuation
    (a quarter of the time), in lower case (an eighth) or both (an eighth)."""
    draw = rng.random()
    if draw < 0.375:
        text = text.rstrip("?.!")
    if 0.25 <= draw < 0.5:
        text = text.lower()
    return text

QA = tuple[str, str]


def _ask_rec(view: _View, rng: np.random.Generator) -> QA:
    dups = [n for n, boxes in view.groups.items() if len(boxes) > 1]
    if view.unique and (not dups or rng.random() < 0.6):
        name = _pick(rng, view.unique)
        return view.say(rng, _REC).format(n=name), format_box(view.groups[name][0])
    name = _pick(rng, dups)
    boxes = view.groups[name]
    which = [d for d in _REC_WHICH if _extreme_of(boxes, d) is not None]
    if which and rng.random() < 0.6:
        direction = _pick(rng, which)
        target = view.say(rng, _REC_WHICH[direction]).format(n=name)
        return view.say(rng, _REC_ONE).format(t=target), format_box(_extreme_of(boxes, direction))
    question = view.say(rng, _REC_ALL).format(n=name, p=plural_of(name))
    return question, format_boxes(_left_to_right(boxes))


def _extreme_of(boxes: Sequence[Box], direction: str) -> Box | None:
    """The box clearly furthest in `direction` ("left", "right", "top", "bottom"), else None."""
    axis = 0 if direction in ("left", "right") else 1
    sign = 1 if direction in ("left", "top") else -1
    order = sorted(boxes, key=lambda b: sign * box_centre(b)[axis])
    first, second = order[0], order[1]
    gap = sign * (box_centre(second)[axis] - box_centre(first)[axis])
    # Clear margin between centres, and the edges agree with the centres.
    edges_agree = all(
        sign * first[axis] <= sign * b[axis] and sign * first[axis + 2] <= sign * b[axis + 2]
        for b in order[1:]
    )
    return first if gap >= MARGIN and edges_agree else None


def _ask_reg(view: _View, rng: np.random.Generator) -> QA:
    obj = _pick(rng, view.objects)
    answer = _capital(with_article(obj.name)) + "."
    if obj.mask is not None and rng.random() < 0.4:
        point = _inner_point(obj.mask, rng)
        if point is not None:
            width, height = view.size
            rel = ((point[0] + 0.5) / width, (point[1] + 0.5) / height)
            return view.say(rng, _REG_POINT).format(b=format_point(rel)), answer
    return view.say(rng, _REG_BOX).format(b=format_box(obj.box)), answer


def _inner_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A pixel (x, y) well inside `mask`: at least half as deep as its deepest pixel."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    deepest = float(depth.max())
    if deepest < 2:
        return None
    ys, xs = np.nonzero(depth >= max(2.0, deepest / 2))
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def _count_answer(count: int, name: str, plural: str) -> str:
    return f"There is 1 {name}." if count == 1 else f"There are {count} {plural}."


def _ask_count(view: _View, rng: np.random.Generator) -> QA:
    # Most classes appear once, so ask about all objects or a repeated class often enough
    # that the answer is not simply "1".
    if len(view.objects) > 1 and rng.random() < 0.4:
        return view.say(rng, _COUNT_ALL), _count_answer(len(view.objects), "object", "objects")
    repeated = [name for name, group in view.groups.items() if len(group) > 1]
    name = _pick(rng, repeated if repeated and rng.random() < 0.8 else list(view.groups))
    plural = plural_of(name)
    question = view.say(rng, _COUNT).format(p=plural)
    return question, _count_answer(len(view.groups[name]), name, plural)


def _ask_exist(view: _View, rng: np.random.Generator) -> QA:
    if rng.random() < 0.5:
        name, answer = _pick(rng, list(view.groups)), "Yes."
    else:
        absent = [c.name for c in vocabulary() if c.name not in view.groups]
        name, answer = _pick(rng, absent), "No."
    return view.say(rng, _EXIST).format(a=with_article(name)), answer


def _relation(a: Box, b: Box, direction: str) -> bool:
    """True when `a` is clearly `direction` ("left", "right", "above", "below") of `b`."""
    if direction in ("right", "below"):
        return _relation(b, a, {"right": "left", "below": "above"}[direction])
    axis = 0 if direction == "left" else 1
    return (
        box_centre(a)[axis] + MARGIN <= box_centre(b)[axis]
        and a[axis] < b[axis]
        and a[axis + 2] < b[axis + 2]
    )


def _ask_spatial(view: _View, rng: np.random.Generator) -> QA | None:
    askers: list[Callable[[], QA | None]] = [
        lambda: _ask_relation(view, rng),
        lambda: _ask_which_of_two(view, rng),
        lambda: _ask_extreme(view, rng),
        lambda: _ask_corner(view, rng),
    ]
    for i in rng.permutation(len(askers)):
        qa = askers[i]()
        if qa is not None:
            return qa
    return None


def _clear_pairs(view: _View) -> list[tuple[str, str, str]]:
    """(a, b, direction) for unique classes a, b where a is clearly `direction` of b."""
    pairs = []
    for a in view.unique:
        for b in view.unique:
            for direction in _RELATION:
                if a != b and _relation(view.groups[a][0], view.groups[b][0], direction):
                    pairs.append((a, b, direction))
    return pairs


def _ask_relation(view: _View, rng: np.random.Generator) -> QA | None:
    pairs = _clear_pairs(view)
    if not pairs:
        return None
    a, b, direction = _pick(rng, pairs)
    if rng.random() < 0.5:  # ask the opposite relation: the answer is "No."
        opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}
        return view.say(rng, _RELATION[opposite[direction]]).format(a=a, b=b), "No."
    return view.say(rng, _RELATION[direction]).format(a=a, b=b), "Yes."


def _ask_which_of_two(view: _View, rng: np.random.Generator) -> QA | None:
    pairs = _clear_pairs(view)
    if not pairs:
        return None
    a, b, direction = _pick(rng, pairs)
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    return view.say(rng, _WHICH_OF_TWO[direction]).format(a=first, b=second), f"The {a}."


def _ask_extreme(view: _View, rng: np.random.Generator) -> QA | None:
    if len(view.objects) < 2:
        return None
    options = []
    by_area = sorted(view.objects, key=lambda o: box_area(o.box))
    if box_area(by_area[-1].box) >= 1.5 * box_area(by_area[-2].box):
        options.append(("biggest", by_area[-1].name))
    if box_area(by_area[0].box) * 1.5 <= box_area(by_area[1].box):
        options.append(("smallest", by_area[0].name))
    boxes = [o.box for o in view.objects]
    for direction in ("left", "right", "top", "bottom"):
        box = _extreme_of(boxes, direction)
        if box is not None:
            options.append((direction, view.objects[boxes.index(box)].name))
    options = [(kind, name) for kind, name in options if name in view.unique]
    if not options:
        return None
    kind, name = _pick(rng, options)
    return view.say(rng, _EXTREME[kind]), f"The {name}."


def _ask_corner(view: _View, rng: np.random.Generator) -> QA | None:
    options = []
    for vertical in ("top", "bottom"):
        for horizontal in ("left", "right"):
            inside, near = [], 0
            for obj in view.objects:
                cx, cy = box_centre(obj.box)
                dx = cx if horizontal == "left" else 1 - cx
                dy = cy if vertical == "top" else 1 - cy
                if dx < 1 / 3 and dy < 1 / 3:
                    inside.append(obj)
                if dx < 1 / 3 + MARGIN and dy < 1 / 3 + MARGIN:
                    near += 1
            if len(inside) == 1 and near == 1 and inside[0].name in view.unique:
                options.append((f"{vertical} {horizontal}", inside[0].name))
    if not options:
        return None
    corner, name = _pick(rng, options)
    return view.say(rng, _CORNER).format(c=corner), f"The {name}."


def _ask_gcap(view: _View, rng: np.random.Generator) -> QA:
    parts = [
        f"{view.phrase(name)} {format_boxes(_left_to_right(view.groups[name]))}"
        for name in view.ordered
    ]
    return view.say(rng, _GCAP), _capital(_join(parts)) + "."


def _ask_caption(view: _View, rng: np.random.Generator) -> QA:
    return view.say(rng, _CAPTION), _capital(_join([view.phrase(n) for n in view.ordered])) + "."


_ASKERS: dict[str, Callable[[_View, np.random.Generator], QA | None]] = {
    "rec": _ask_rec,
    "reg": _ask_reg,
    "count": _ask_count,
    "exist": _ask_exist,
    "spatial": _ask_spatial,
    "gcap": _ask_gcap,
    "caption": _ask_caption,
}
_WEIGHTS = np.array([0.30, 0.15, 0.10, 0.10, 0.12, 0.13, 0.10])  # in TASK_TYPES order


def ask(scene: Scene, kind: str, rng: np.random.Generator) -> QA | None:
    """One (question, answer) pair of task `kind` about `scene`, or None if none applies."""
    if kind not in _ASKERS:
        raise ValueError(f"unknown task kind {kind!r}; choose one of {TASK_TYPES}")
    return _ASKERS[kind](_View(scene), rng)


def _key(kind: str, qa: QA) -> tuple[str, str]:
    """What makes two turns alike: the answer for rec, count, gcap, caption; else the question."""
    return (kind, qa[1]) if kind in ("rec", "count", "gcap", "caption") else (kind, qa[0])


def _ask_some(
    view: _View, rng: np.random.Generator, exclude: set[tuple[str, str]]
) -> tuple[str, QA]:
    """A (kind, (question, answer)) drawn by `_WEIGHTS`, unlike the turns keyed in `exclude`."""
    for _ in range(20):
        kind = TASK_TYPES[int(rng.choice(len(TASK_TYPES), p=_WEIGHTS))]
        qa = _ASKERS[kind](view, rng)
        if qa is not None and _key(kind, qa) not in exclude:
            return kind, qa
    return "exist", _ask_exist(view, rng)  # always applies


def scene_conversations(scene: Scene, rng: np.random.Generator, wording: str = "trained") -> list[dict]:
    """3-5 conversations about `scene`: mostly one turn, about a quarter 2-4 turns of mixed kinds.

    Each is ``{"kind": ..., "messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``;
    ``kind`` is the task type, or ``"multi"`` for a conversation of several turns.
    """
    view = _View(scene, wording)
    conversations = []
    for _ in range(int(rng.integers(3, 6))):
        turns = int(rng.integers(2, 5)) if rng.random() < 0.25 else 1
        messages, kinds, asked = [], [], set()
        for _ in range(turns):
            kind, (question, answer) = _ask_some(view, rng, asked)
            asked.add(_key(kind, (question, answer)))
            kinds.append(kind)
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        conversations.append({"kind": kinds[0] if turns == 1 else "multi", "messages": messages})
    return conversations


def scene_questions(scene: Scene, rng: np.random.Generator, wording: str = "trained") -> list[dict]:
    """VQA items about `scene`: one ``rec`` and three other task types, when they apply.

    Each is ``{"question": ..., "answer": ..., "type": ...}``.
    """
    view = _View(scene, wording)
    others = [TASK_TYPES[i] for i in rng.permutation(len(TASK_TYPES)) if TASK_TYPES[i] != "rec"]
    items = []
    for kind in ["rec", *others]:
        qa = _ASKERS[kind](view, rng)
        if qa is not None:
            items.append({"question": qa[0], "answer": qa[1], "type": kind})
        if len(items) == 4:
            break
    return items


def _counting_turns(objects: list[dict], rng: random.Random) -> list[dict]:
    """How many objects there are (two or more), of each repeated class and of one seen once."""
    groups = Counter(o["name"] for o in objects)
    messages = []
    if len(objects) > 1:
        messages += [{"role": "user", "content": rng.choice(_COUNT_ALL)},
                     {"role": "assistant",
                      "content": _count_answer(len(objects), "object", "objects")}]
    names = [name for name, k in groups.items() if k > 1]
    singles = [name for name, k in groups.items() if k == 1]
    if singles:
        names.append(rng.choice(singles))
    for name in names:
        plural = plural_of(name)
        messages += [{"role": "user", "content": rng.choice(_COUNT).format(p=plural)},
                     {"role": "assistant", "content": _count_answer(groups[name], name, plural)}]
    return messages


def _locating_turns(objects: list[dict], rng: random.Random) -> list[dict]:
    """Where each class is, in random order: its box, or all its boxes left to right."""
    groups: dict[str, list[Box]] = {}
    for obj in objects:
        groups.setdefault(obj["name"], []).append(tuple(obj["box"]))
    names = sorted(groups)
    rng.shuffle(names)
    messages = []
    for name in names:
        boxes = groups[name]
        if len(boxes) == 1:
            question, answer = rng.choice(_REC).format(n=name), format_box(boxes[0])
        else:
            question = rng.choice(_REC_ALL).format(n=name, p=plural_of(name))
            answer = format_boxes(_left_to_right(boxes))
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer}]
    return messages


# name -> (the extra conversation's task kind, its turns)
EXTRAS = {"count": ("count", _counting_turns), "locate": ("rec", _locating_turns)}


def with_extras(
    conversations: list[dict], extras: Sequence[str] = ("count",), seed: int = EXTRAS_SEED,
    typist: Callable[[str], str] | None = None,
) -> list[dict]:
    """`conversations` plus, for each scene, one more conversation per name in `extras`; shuffled.

    ``"count"`` asks, in the trained wording, how many objects there are (scenes of two or
    more), how many of each repeated class and of one class seen once; ``"locate"`` asks where
    every class is and answers with all its boxes. Counting and finding each object are what a
    scene's few mixed turns teach least. Scenes are told apart by their ``image``, and their
    objects come from the records' ``objects``. `typist` retypes each new conversation's
    questions (`write_dataset`'s loose typing).
    """
    unknown = [name for name in extras if name not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown extra conversation {unknown[0]!r}; choose from {tuple(EXTRAS)}")
    rng = random.Random(seed)
    extra, seen = [], set()
    for record in conversations:
        if record["image"] in seen:
            continue
        seen.add(record["image"])
        for name in extras:
            kind, turns = EXTRAS[name]
            messages = turns(record["objects"], rng)
            if not messages:
                continue
            if typist:
                messages = map_questions(messages, typist)
            extra.append({"image": record["image"], "messages": messages, "kind": kind,
                          "objects": record["objects"]})
    records = [*conversations, *extra]
    rng.shuffle(records)
    return records
