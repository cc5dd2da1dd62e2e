"""Tests for the synthetic grounded scenes: glyphs, boxes, determinism, JSONL schema, answers."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cogvlm_lite.conversation import typed_as_trained
from cogvlm_lite.evaluate import TASK_TYPES
from cogvlm_lite.grounding import iou, parse_boxes, parse_groundings
from cogvlm_lite.objects import plural_of, vocabulary
from cogvlm_lite.questions import (
    UNSEEN_WORDINGS,
    VARIED_WORDINGS,
    scene_conversations,
    scene_questions,
)
from cogvlm_lite.scenes import (
    BACKGROUNDS,
    MAX_IOU,
    Scene,
    background,
    make_scene,
    pattern_background,
    recolour_image,
    render_glyph,
    restyle,
    vary_glyph,
    write_dataset,
)

TOL = 1 / 1000 + 1e-9  # a [[...]] value is the relative coordinate rounded to 1/1000


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scenes") / "data"
    return out, write_dataset(out, 20, seed=0)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [make_scene(np.random.default_rng([3, i])) for i in range(20)]


# --- vocabulary and glyphs -------------------------------------------------------------------


def test_vocabulary_is_curated_and_unique():
    vocab = vocabulary()
    assert 200 <= len(vocab) <= 300
    names = [c.name for c in vocab]
    assert len(set(names)) == len(names)
    assert len({c.hexcode for c in vocab}) == len(vocab)
    for cls in vocab:
        assert cls.name == cls.name.strip().lower() and cls.plural.strip()
        assert "\t" not in cls.name and "[" not in cls.name


def test_every_glyph_renders_in_colour():
    for cls in vocabulary():
        glyph = np.asarray(render_glyph(cls, 40))
        assert max(glyph.shape[:2]) == 40, cls
        opaque = glyph[glyph[..., 3] >= 128][:, :3].astype(int)
        assert len(opaque) > 40, f"{cls.name} ({cls.hexcode}) draws (almost) nothing"
        # A colour glyph has fills besides its black outline.
        filled = (opaque.max(axis=1) > 60).mean()
        assert filled > 0.2, f"{cls.name} ({cls.hexcode}) is drawn without colour"


# --- scenes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKGROUNDS)
def test_backgrounds(kind):
    image = background(np.random.default_rng(0), 50, 40, kind)
    assert image.mode == "RGB" and image.size == (50, 40)
    if kind != "solid":
        assert np.asarray(image).std() > 0
    with pytest.raises(ValueError, match="unknown background"):
        background(np.random.default_rng(0), 50, 40, "stripes")


@pytest.mark.parametrize("seed", range(6))
def test_box_is_tight_around_visible_pixels(seed):
    scene = make_scene(np.random.default_rng([11, seed]), objects=(1, 1), backgrounds=("solid",))
    assert len(scene.objects) == 1
    pixels = np.asarray(scene.image).astype(int)
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    diff = np.abs(pixels - colours[counts.argmax()]).max(axis=2)
    width, height = scene.image.size
    x0, y0, x1, y1 = scene.objects[0].box
    box = round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)

    def bbox(mask):
        ys, xs = np.nonzero(mask)
        return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1

    strong, faint = bbox(diff > 48), bbox(diff > 0)
    # Every clearly drawn pixel is inside the box, and the box is inside the drawn area.
    assert box[0] <= strong[0] and box[1] <= strong[1]
    assert box[2] >= strong[2] and box[3] >= strong[3]
    assert faint[0] <= box[0] and faint[1] <= box[1]
    assert faint[2] >= box[2] and faint[3] >= box[3]


def test_scene_sizes_counts_and_overlap(scenes):
    counts = Counter()
    for scene in scenes:
        width, height = scene.image.size
        assert scene.image.mode == "RGB"
        assert 0.75 * 256 - 1 <= width <= 1.25 * 256 + 1
        assert 0.75 * 256 - 1 <= height <= 1.25 * 256 + 1
        assert 1 <= len(scene.objects) <= 8
        counts[len(scene.objects)] += 1
        for i, a in enumerate(scene.objects):
            x0, y0, x1, y1 = a.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            for b in scene.objects[:i]:
                inter_w = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
                inter_h = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
                inter = max(0, inter_w) * max(0, inter_h)
                union = (x1 - x0) * (y1 - y0) + (b.box[2] - b.box[0]) * (b.box[3] - b.box[1])
                assert inter / (union - inter) <= MAX_IOU + 0.05
    assert len(counts) >= 4  # varied numbers of objects
    assert any(len({o.name for o in s.objects}) < len(s.objects) for s in scenes)  # duplicates


def test_points_are_inside_the_named_object(scenes):
    found = 0
    for k, scene in enumerate(scenes):
        width, height = scene.image.size
        for conv in scene_conversations(scene, np.random.default_rng([5, k])):
            messages = conv["messages"]
            for question, answer in zip(messages[::2], messages[1::2], strict=True):
                groups = parse_groundings(question["content"])
                if not groups or not groups[0].points:
                    continue
                x, y = groups[0].points[0]
                px, py = min(int(x * width), width - 1), min(int(y * height), height - 1)
                owners = [o for o in scene.objects if o.mask[py, px]]
                assert [o.name for o in owners] == [_name_of(answer["content"])]
                found += 1
    assert found >= 3


# --- data set files --------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_prefixes(tmp_path):
    a = write_dataset(tmp_path / "a", 5, seed=0)
    b = write_dataset(tmp_path / "b", 5, seed=0)
    short = write_dataset(tmp_path / "short", 3, seed=0)
    other = write_dataset(tmp_path / "other", 3, seed=1)
    parallel = write_dataset(tmp_path / "parallel", 5, seed=0, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b") == _files(tmp_path / "parallel")
    assert parallel["question_types"] == a["question_types"]
    assert a["question_types"] == b["question_types"]
    for name in ("train.jsonl", "questions.jsonl"):
        full = (tmp_path / "a" / name).read_bytes()
        assert full.startswith((tmp_path / "short" / name).read_bytes())
        assert (tmp_path / "other" / name).read_bytes() != (tmp_path / "short" / name).read_bytes()
    for i in range(3):
        image = f"images/{i:06d}.png"
        assert (tmp_path / "short" / image).read_bytes() == (tmp_path / "a" / image).read_bytes()
        assert (tmp_path / "other" / image).read_bytes() != (tmp_path / "a" / image).read_bytes()
    assert short["scenes"] == 3 and other["seed"] == 1


def _template_pattern(template: str) -> re.Pattern:
    """A template as a regex: its placeholders ({n}, {p}, {a}, ...) match any text."""
    return re.compile(re.sub(r"\\\{\w\\\}", ".+", re.escape(template)))


def test_unseen_wording_asks_the_same_things_in_new_words(tmp_path, dataset):
    trained_dir, trained = dataset
    unseen_dir = tmp_path / "unseen"
    unseen = write_dataset(unseen_dir, 20, seed=0, wording="unseen")
    assert unseen["question_types"] == trained["question_types"]
    assert _files(unseen_dir)["images/000007.png"] == _files(trained_dir)["images/000007.png"]
    assert all(len(new) == len(old) for old, new in UNSEEN_WORDINGS.items())  # one to one
    patterns = [_template_pattern(t) for templates in UNSEEN_WORDINGS for t in templates]

    def asked(out: Path) -> list[tuple[str, str]]:
        """Every (question, answer): the VQA items, then each turn of every conversation."""
        pairs = [(q["question"], q["answer"]) for q in _read_jsonl(out / "questions.jsonl")]
        for conversation in _read_jsonl(out / "train.jsonl"):
            m = conversation["messages"]
            pairs += [(m[i]["content"], m[i + 1]["content"]) for i in range(0, len(m), 2)]
        return pairs

    old, new = asked(trained_dir), asked(unseen_dir)
    assert [a for _, a in new] == [a for _, a in old]  # the same answers, in the same order
    for question, _ in old:
        assert any(p.fullmatch(question) for p in patterns), question
    for question, _ in new:
        assert not any(p.fullmatch(question) for p in patterns), question
    with pytest.raises(ValueError, match="wording"):
        write_dataset(tmp_path / "bad", 1, wording="novel")


def test_varied_wording_adds_training_phrasings_and_none_of_the_unseen(tmp_path, dataset):
    trained_dir, trained = dataset
    varied_dir = tmp_path / "varied"
    varied = write_dataset(varied_dir, 20, seed=0, wording="varied")
    assert set(varied["question_types"]) == set(trained["question_types"])
    assert _files(varied_dir)["images/000007.png"] == _files(trained_dir)["images/000007.png"]
    assert set(VARIED_WORDINGS) == set(UNSEEN_WORDINGS)
    unseen = {t for templates in UNSEEN_WORDINGS.values() for t in templates}
    extra = {t for templates in VARIED_WORDINGS.values() for t in templates}
    assert not extra & unseen and not extra & set(UNSEEN_WORDINGS)  # nothing shared
    own = [_template_pattern(t) for templates in UNSEEN_WORDINGS for t in templates]
    more = [_template_pattern(t) for t in extra]
    never = [_template_pattern(t) for t in unseen]
    questions = [q["question"] for q in _read_jsonl(varied_dir / "questions.jsonl")]
    for conversation in _read_jsonl(varied_dir / "train.jsonl"):
        questions += [m["content"] for m in conversation["messages"] if m["role"] == "user"]
    new = [q for q in questions if not any(p.fullmatch(q) for p in own)]
    assert len(new) > len(questions) / 4, (len(new), len(questions))  # about half
    for question in new:
        assert any(p.fullmatch(question) for p in more), question
        assert not any(p.fullmatch(question) for p in never), question


def test_loose_typing_drops_final_punctuation_or_capitals_and_nothing_else(tmp_path, dataset):
    trained_dir, trained = dataset
    loose_dir = tmp_path / "loose"
    loose = write_dataset(loose_dir, 20, seed=0, typing="loose", counting=True)
    assert loose["question_types"] == trained["question_types"]
    assert _files(loose_dir)["images/000007.png"] == _files(trained_dir)["images/000007.png"]

    def turns(path: Path) -> list[tuple[str, str]]:
        """Every (role, text): the VQA items' questions and answers, then every message."""
        items = _read_jsonl(path / "questions.jsonl")
        pairs = [("user", q["question"]) for q in items] + [("assistant", q["answer"]) for q in items]
        for conversation in _read_jsonl(path / "train.jsonl"):
            pairs += [(m["role"], m["content"]) for m in conversation["messages"]]
        return pairs

    old, new = turns(trained_dir), turns(loose_dir)
    assert len(new) == len(old)
    changed = Counter()
    for (role, was), (_, typed) in zip(old, new, strict=True):
        if role == "assistant" or typed == was:
            assert typed == was
            continue
        bare = was.rstrip("?.!")
        kind = {bare: "unpunctuated", was.lower(): "lower case", bare.lower(): "both"}[typed]
        changed[kind] += 1
        assert typed_as_trained(typed) == was  # the model reads it as trained
    users = sum(role == "user" for role, _ in old)
    assert 0.35 < sum(changed.values()) / users < 0.65, (changed, users)  # about half
    assert min(changed.values()) > users / 20 and len(changed) == 3, changed
    # The conversations that only count are typed loosely too; the others as in train.jsonl.
    base = {json.dumps(r["messages"]) for r in _read_jsonl(loose_dir / "train.jsonl")}
    extended = _read_jsonl(loose_dir / "train-count.jsonl")
    extra = [r for r in extended if json.dumps(r["messages"]) not in base]
    assert len(extra) == len(extended) - len(base)
    questions = [m["content"] for r in extra for m in r["messages"] if m["role"] == "user"]
    assert any(not q.endswith(("?", ".")) or q[0].islower() for q in questions)
    with pytest.raises(ValueError, match="typing"):
        write_dataset(tmp_path / "bad", 1, typing="sloppy")


def test_jpeg_compression_saves_the_same_scenes_as_jpeg_files(tmp_path, dataset):
    trained_dir, trained = dataset
    jpeg_dir, mixed_dir = tmp_path / "jpeg", tmp_path / "mixed"
    jpeg = write_dataset(jpeg_dir, 20, seed=0, compression="jpeg")
    write_dataset(mixed_dir, 20, seed=0, compression="mixed")
    assert jpeg["question_types"] == trained["question_types"]

    def records(path: Path) -> list[str]:
        """Every line of the data set's files, its image paths read as PNG paths."""
        lines = []
        for name in ("train.jsonl", "questions.jsonl"):
            lines += (path / name).read_text().replace(".jpg", ".png").splitlines()
        return lines

    assert records(jpeg_dir) == records(trained_dir) == records(mixed_dir)
    images = sorted((jpeg_dir / "images").iterdir())
    assert [p.suffix for p in images] == [".jpg"] * 20
    tables = set()
    for path in images:
        with Image.open(path) as picture:
            assert picture.format == "JPEG"
            tables.add(str(picture.quantization[0]))
            png = np.asarray(Image.open(trained_dir / "images" / path.with_suffix(".png").name))
            error = np.abs(np.asarray(picture.convert("RGB"), np.float32) - png).mean()
        assert 0 < error < 12, (path.name, error)  # the same picture, compressed
    assert len(tables) > 5  # qualities vary
    mixed = Counter(p.suffix for p in (mixed_dir / "images").iterdir())
    assert 5 <= mixed[".jpg"] <= 15 and mixed[".jpg"] + mixed[".png"] == 20, mixed
    # A smaller data set written over it leaves no pictures of the larger one.
    write_dataset(jpeg_dir, 3, seed=0, force=True)
    assert sorted(p.name for p in (jpeg_dir / "images").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]
    with pytest.raises(ValueError, match="compression"):
        write_dataset(tmp_path / "bad", 1, compression="gif")


def test_aspect_widens_the_pictures(tmp_path, dataset):
    trained_dir, _ = dataset
    write_dataset(tmp_path / "wide", 20, seed=0, aspect=(1.78, 1.78))
    write_dataset(tmp_path / "shapes", 20, seed=0, aspect=(0.5, 2.0))
    for name in ("000000.png", "000007.png"):
        width, height = Image.open(trained_dir / "images" / name).size
        wide = Image.open(tmp_path / "wide" / "images" / name).size
        assert abs(wide[0] - 1.78 * width) <= 1 and wide[1] == height  # the same draw, wider
    ratios = [Image.open(p).width / Image.open(p).height
              for p in (tmp_path / "shapes" / "images").iterdir()]
    assert min(ratios) < 0.75 and max(ratios) > 1.5, ratios  # portrait to landscape
    for bad in ((0.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="aspect"):
            write_dataset(tmp_path / "bad", 1, aspect=bad)


def test_every_wording_typed_loosely_is_read_as_typed_in_training():
    """Each question template, trained, varied or unseen, typed without its final punctuation,
    in lower case or both, is read back as typed (`conversation.typed_as_trained`); the others
    are parts of questions ("the leftmost {n}")."""
    templates = {t for wordings in (UNSEEN_WORDINGS, VARIED_WORDINGS)
                 for old, new in wordings.items() for t in (*old, *new) if t.endswith(("?", "."))}
    assert len(templates) > 150
    for template in templates:
        question = re.sub(r"\{\w\}", "cat", template)
        bare = question.rstrip("?.!")
        for typed in (question, bare, question.lower(), bare.lower()):
            assert typed_as_trained(typed) == question, typed


@pytest.mark.parametrize("seed", range(6))
def test_restyled_glyph_keeps_its_shape_in_new_colours(seed):
    colourful = [c for c in vocabulary() if c.name in ("tomato", "banana", "frog", "strawberry",
                                                        "orange", "rainbow")]
    glyph = render_glyph(colourful[seed], 48)
    styled = restyle(glyph, np.random.default_rng(seed))
    assert styled.size == glyph.size and styled.mode == "RGBA"
    assert np.array_equal(np.asarray(styled)[..., 3], np.asarray(glyph)[..., 3])
    shown = np.asarray(glyph)[..., 3] >= 128
    before = np.asarray(glyph)[..., :3][shown].astype(int)
    after = np.asarray(styled)[..., :3][shown].astype(int)
    assert np.abs(after - before).mean() > 10


@pytest.mark.parametrize("seed", range(6))
def test_varied_glyph_keeps_its_colours_and_about_its_size(seed):
    glyph = render_glyph(next(c for c in vocabulary() if c.name == "tomato"), 48)
    rng = np.random.default_rng(seed)
    varied = [vary_glyph(glyph, rng) for _ in range(8)]
    area = (np.asarray(glyph)[..., 3] >= 128).sum()
    for v in varied:
        assert v.mode == "RGBA" and abs((np.asarray(v)[..., 3] >= 128).sum() / area - 1) < 0.2
        shown = np.asarray(v)[..., 3] >= 128
        red, green = np.asarray(v)[..., 0][shown].mean(), np.asarray(v)[..., 1][shown].mean()
        assert red > green + 30  # still a red tomato (restyle would make it grey or blue)
    assert any(v.size != glyph.size for v in varied)  # some are turned


def test_varied_style_augments_the_trained_scenes(tmp_path, dataset):
    trained_dir, trained = dataset
    varied = write_dataset(tmp_path / "varied", 20, seed=0, style="varied")
    assert set(varied["question_types"]) == set(trained["question_types"])
    assert _files(tmp_path / "varied")["images/000000.png"] != _files(trained_dir)["images/000000.png"]
    for seed in range(10):
        scene = make_scene(np.random.default_rng(seed), style="varied")
        assert scene.objects
        for o in scene.objects:  # each box is still the tight box of the object's pixels
            h, w = o.mask.shape
            x0, y0, x1, y1 = o.box
            rows, cols = np.flatnonzero(o.mask.any(1)), np.flatnonzero(o.mask.any(0))
            assert (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h) == o.box


def test_broad_style_adds_grey_and_turned_pictures_and_patterned_backgrounds(tmp_path, dataset):
    trained_dir, trained = dataset
    broad = write_dataset(tmp_path / "broad", 20, seed=0, style="broad")
    assert set(broad["question_types"]) == set(trained["question_types"])
    grey = 0
    for seed in range(30):
        scene = make_scene(np.random.default_rng(seed), style="broad")
        assert scene.objects
        pixels = np.asarray(scene.image, np.int16)
        grey += bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())
        for o in scene.objects:  # each box is still the tight box of the object's pixels
            h, w = o.mask.shape
            rows, cols = np.flatnonzero(o.mask.any(1)), np.flatnonzero(o.mask.any(0))
            assert (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h) == o.box
    assert 0 < grey < 15  # some whole pictures turned grey, most not

    tomato = next(c for c in vocabulary() if c.name == "tomato")
    picture = background(np.random.default_rng(0), 64, 64, "solid").convert("RGBA")
    picture.alpha_composite(render_glyph(tomato, 48), (8, 8))
    picture = picture.convert("RGB")
    recoloured = [np.asarray(recolour_image(picture, np.random.default_rng(s)), np.int16)
                  for s in range(8)]
    original = np.asarray(picture, np.int16)
    for r in recoloured:
        assert r.shape == original.shape and not np.array_equal(r, original)
    assert any((r[..., 0] == r[..., 2]).all() for r in recoloured)  # grey
    assert any((r[..., 0] != r[..., 2]).any() for r in recoloured)  # turned hues

    for seed in range(6):  # stripes, checks, clouds: busy, two-coloured
        pattern = np.asarray(pattern_background(np.random.default_rng(seed), 80, 60), np.float32)
        assert pattern.shape == (60, 80, 3) and pattern.std(axis=(0, 1)).max() > 5


def test_unseen_style_draws_other_scenes_with_the_same_kinds_of_questions(tmp_path, dataset):
    trained_dir, trained = dataset
    unseen = write_dataset(tmp_path / "looks", 20, seed=0, style="unseen")
    assert set(unseen["question_types"]) == set(trained["question_types"])
    assert _files(tmp_path / "looks")["images/000000.png"] != _files(trained_dir)["images/000000.png"]
    scene = make_scene(np.random.default_rng(3), style="unseen")
    assert scene.objects and all(0 <= v <= 1 for o in scene.objects for v in o.box)
    with pytest.raises(ValueError, match="style"):
        write_dataset(tmp_path / "bad", 1, style="pencil")


def test_counting_adds_one_conversation_a_scene_that_counts_its_objects(tmp_path, dataset):
    trained_dir, trained = dataset
    summary = write_dataset(tmp_path / "count", 20, seed=0, counting=True)
    assert _files(tmp_path / "count")["train.jsonl"] == _files(trained_dir)["train.jsonl"]
    plain = _read_jsonl(trained_dir / "train.jsonl")
    counted = _read_jsonl(Path(summary["train_count"]))
    extra = [r for r in counted if r not in plain]
    assert sorted(map(json.dumps, counted)) == sorted(map(json.dumps, plain + extra))
    assert len(extra) == 20 and counted != plain + extra  # one a scene, shuffled in
    number = re.compile(r"There (?:is|are) (\d+) (.+)\.")
    plurals = {c.plural: c.name for c in vocabulary()}
    for record in extra:
        names = Counter(o["name"] for o in record["objects"])
        answers = [number.fullmatch(m["content"]).groups() for m in record["messages"][1::2]]
        assert ("objects" in [noun for _, noun in answers]) == (len(record["objects"]) > 1)
        for count, noun in answers:
            want = len(record["objects"]) if noun == "objects" else names[plurals.get(noun, noun)]
            assert int(count) == want, (record, count, noun)
    write_dataset(tmp_path / "count", 20, seed=0, force=True)  # without: no stale extra file
    assert not (tmp_path / "count" / "train-count.jsonl").exists()


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "data"
    write_dataset(out, 3, seed=0)
    before = _files(out)
    with pytest.raises(FileExistsError, match="force"):
        write_dataset(out, 3, seed=1)
    assert _files(out) == before
    summary = write_dataset(out, 2, seed=1, force=True)
    assert summary["scenes"] == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="at least 1"):
        write_dataset(tmp_path / "empty", 0)


def test_a_stopped_overwrite_never_looks_like_a_whole_data_set(tmp_path, monkeypatch):
    import cogvlm_lite.scenes as scenes

    out = tmp_path / "data"
    write_dataset(out, 3, seed=0)
    drawn = []
    write_scene = scenes._write_scene

    def stopped_after_two(*args, **kwargs):
        if len(drawn) == 2:
            raise KeyboardInterrupt
        drawn.append(args[1])
        return write_scene(*args, **kwargs)

    monkeypatch.setattr(scenes, "_write_scene", stopped_after_two)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, 3, seed=1, force=True)
    assert not list(out.glob("*.jsonl")) and not list(out.glob("*.tmp"))
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="no questions: the pictures of a stopped run"):
        write_dataset(out, 3, seed=1)
    assert write_dataset(out, 3, seed=1, force=True)["scenes"] == 3


@pytest.mark.parametrize("options, message", [
    (dict(image_size=0), "image_size must be at least 32"),
    (dict(seed=-1), "need seed >= 0"),
    (dict(aspect=(1.0, float("inf"))), "aspect must be"),
    (dict(aspect=(1000.0, 1000.0)), "aspect must be"),
])
def test_bad_options_are_refused_before_the_folder_is_made(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        write_dataset(tmp_path / "data", 2, **options)
    assert not (tmp_path / "data").exists()


def test_jsonl_schema(dataset):
    out, summary = dataset
    assert summary["scenes"] == 20
    train = _read_jsonl(out / "train.jsonl")
    questions = _read_jsonl(out / "questions.jsonl")
    assert len(train) == summary["conversations"] and len(questions) == summary["question_count"]
    for record in train:
        assert list(record) == ["image", "messages", "kind", "objects"]
        assert (out / record["image"]).is_file()
        assert record["kind"] in (*TASK_TYPES, "multi")
        roles = [m["role"] for m in record["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert (len(roles) > 2) == (record["kind"] == "multi")
        assert all(isinstance(m["content"], str) and m["content"] for m in record["messages"])
        for obj in record["objects"]:
            assert list(obj) == ["name", "box"] and len(obj["box"]) == 4
            assert all(isinstance(v, float) and 0 <= v <= 1 for v in obj["box"])
    ids = [q["id"] for q in questions]
    assert len(set(ids)) == len(ids)
    for q in questions:
        assert list(q) == ["id", "image", "question", "answer", "type"]
        assert (out / q["image"]).is_file()
        assert re.fullmatch(r"[0-9]{6}-[a-z]+-[0-9]+", q["id"]) and q["type"] in q["id"]
    assert (out / "ATTRIBUTION.txt").read_text().startswith("Object images: OpenMoji")


def test_every_task_type_is_present(dataset):
    out, summary = dataset
    assert set(summary["question_types"]) == set(TASK_TYPES)
    assert set(TASK_TYPES) | {"multi"} == set(summary["conversation_kinds"])
    turns = [
        (m["content"], a["content"])
        for r in _read_jsonl(out / "train.jsonl")
        for m, a in zip(r["messages"][::2], r["messages"][1::2], strict=True)
    ]
    assert any(re.fullmatch(r"\[\[[0-9,]+(;[0-9,]+)+\]\]", a) for _, a in turns)  # all the dogs
    assert any(re.search(r"\[\[[0-9]{3},[0-9]{3}\]\]", q) for q, _ in turns)  # point -> name
    assert any("most" in q and a.startswith("[[") for q, a in turns)  # the leftmost dog
    assert any(a == "No." for _, a in turns) and any(a == "Yes." for _, a in turns)


# --- answers agree with the objects ----------------------------------------------------------

_COUNT = re.compile(r"There (?:is|are) ([0-9]+) (.+)\.")
_EXIST = re.compile(
    r"(?:Is there|Does the image contain|Can you see) an? (.+?)"
    r"(?: in the image| in the picture| in this picture)?\?"
)
_RELATION = re.compile(
    r"Is the (.+?) (to the left of|left of|to the right of|right of|above|higher than|below|"
    r"lower than) the (.+)\?"
)
_DIRECTION = {
    "to the left of": "left",
    "left of": "left",
    "to the right of": "right",
    "right of": "right",
    "above": "above",
    "higher than": "above",
    "below": "below",
    "lower than": "below",
}
_WHICH = re.compile(
    r"Which (?:is|one is) (further left|further right|higher|lower|on the left|on the right|"
    r"on top|at the bottom)[,:] the (.+?) or the (.+?)\?"
)
_SIDE = {
    "further left": "left",
    "on the left": "left",
    "further right": "right",
    "on the right": "right",
    "higher": "above",
    "on top": "above",
    "lower": "below",
    "at the bottom": "below",
}
_WHICH_ONE = {
    "leftmost": "left",
    "on the left": "left",
    "to the left": "left",
    "rightmost": "right",
    "on the right": "right",
    "to the right": "right",
    "topmost": "top",
    "at the top": "top",
    "highest": "top",
    "bottommost": "bottom",
    "at the bottom": "bottom",
    "lowest": "bottom",
}
_NAMES = {c.name for c in vocabulary()}
_PLURALS = {c.plural: c.name for c in vocabulary()}  # plural -> name
_PLURAL_OF = {c.name: c.plural for c in vocabulary()}


def _name_of(answer: str) -> str:
    """'A dog.' -> 'dog'."""
    match = re.fullmatch(r"(?:A|An|The) (.+)\.", answer)
    assert match, answer
    return match.group(1)


def _close(a, b) -> bool:
    return all(abs(x - y) <= TOL for x, y in zip(a, b, strict=True))


def _check_turn(kind: str, question: str, answer: str, objects: list[dict]) -> None:
    names = Counter(o["name"] for o in objects)
    boxes = {n: [o["box"] for o in objects if o["name"] == n] for n in names}
    if kind == "rec":
        found = parse_boxes(answer)
        assert found and answer.startswith("[[") and answer.endswith("]]")
        owners = {n for n in names for b in found if any(_close(b, ob) for ob in boxes[n])}
        assert len(owners) == 1, (question, answer)
        owner = owners.pop()
        assert owner in question or _PLURAL_OF[owner] in question
        if len(found) > 1:  # all of them, left to right
            assert len(found) == names[owner] and found == sorted(found)
        elif names[owner] > 1:  # one of several: the leftmost, the one at the top, ...
            side = next(side for words, side in _WHICH_ONE.items() if words in question)
            axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[side]
            centres = [sign * (b[axis] + b[axis + 2]) for b in boxes[owner]]
            assert sign * (found[0][axis] + found[0][axis + 2]) <= min(centres) + 2 * TOL
    elif kind == "reg":
        name = _name_of(answer)
        group = parse_groundings(question)[0]
        if group.boxes:
            assert any(_close(group.boxes[0], b) for b in boxes[name])
        else:
            x, y = group.points[0]
            assert any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes[name])
    elif kind == "count":
        number, noun = _COUNT.fullmatch(answer).groups()
        total = noun in ("object", "objects")
        assert int(number) == (len(objects) if total else names[_PLURALS.get(noun, noun)])
    elif kind == "exist":
        name = _EXIST.fullmatch(question).group(1)
        assert name in _NAMES
        assert answer == ("Yes." if name in names else "No.")
    elif kind == "spatial":
        match = _RELATION.fullmatch(question)
        if match:
            a, relation, b = match.groups()
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a][0], boxes[b][0]
            dx, dy = (ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2
            holds = {"left": dx < 0, "right": dx > 0, "above": dy < 0, "below": dy > 0}
            expected = "Yes." if holds[_DIRECTION[relation]] else "No."
            assert answer == expected, (question, answer)
        else:
            name = _name_of(answer)
            assert names[name] == 1 and name in _NAMES
            x0, y0, x1, y1 = boxes[name][0]
            which = _WHICH.fullmatch(question)
            if which:
                side, a, b = which.groups()
                assert name in (a, b)
                box, other = boxes[name][0], boxes[b if name == a else a][0]
                axis = 0 if _SIDE[side] in ("left", "right") else 1
                gap = other[axis] + other[axis + 2] - box[axis] - box[axis + 2]  # 2 x centres
                assert gap > 0 if _SIDE[side] in ("left", "above") else gap < 0
            areas = [(o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) for o in objects]
            if "biggest" in question or "largest" in question:
                assert (x1 - x0) * (y1 - y0) == max(areas)
            if "smallest" in question:
                assert (x1 - x0) * (y1 - y0) == min(areas)
    elif kind == "gcap":
        found = parse_boxes(answer)
        assert len(found) == len(objects)
        for obj in objects:
            assert any(_close(obj["box"], b) for b in found)
        assert answer[0].isupper() and answer.endswith("]].")
    elif kind == "caption":
        assert "[[" not in answer and answer.endswith(".")
        for name, count in names.items():
            assert (name if count == 1 else _PLURAL_OF[name]) in answer


def test_answers_agree_with_objects(dataset):
    out, _ = dataset
    train = _read_jsonl(out / "train.jsonl")
    for record in train:
        if record["kind"] == "multi":
            continue
        question, answer = (m["content"] for m in record["messages"])
        _check_turn(record["kind"], question, answer, record["objects"])
    objects = {r["image"]: r["objects"] for r in train}
    for q in _read_jsonl(out / "questions.jsonl"):
        _check_turn(q["type"], q["question"], q["answer"], objects[q["image"]])


def test_building_blocks_on_one_scene():
    scene = make_scene(np.random.default_rng([0, 0]), image_size=128, objects=(3, 3))
    assert 96 <= min(scene.image.size) and max(scene.image.size) <= 160
    rng = np.random.default_rng(1)
    conversations = scene_conversations(scene, rng)
    assert 3 <= len(conversations) <= 5
    assert {"kind", "messages"} <= set(conversations[0])
    questions = scene_questions(scene, rng)
    assert questions[0]["type"] == "rec" and len(questions) <= 4
    with pytest.raises(ValueError, match="low <= high"):
        make_scene(rng, objects=(3, 2))


def test_locating_adds_one_conversation_a_scene_that_finds_every_object(tmp_path, dataset):
    trained_dir, _ = dataset
    summary = write_dataset(tmp_path / "both", 20, seed=0, counting=True, locating=True)
    assert _files(tmp_path / "both")["train.jsonl"] == _files(trained_dir)["train.jsonl"]
    assert Path(summary["train_count_locate"]).name == "train-count-locate.jsonl"
    plain = _read_jsonl(trained_dir / "train.jsonl")
    records = _read_jsonl(Path(summary["train_count_locate"]))
    extra = [r for r in records if r not in plain]
    assert len(records) == len(plain) + 40 and len(extra) == 40  # one of each a scene
    located = [r for r in extra if r["kind"] == "rec"]
    assert len(located) == 20 and {r["image"] for r in located} == {r["image"] for r in plain}
    for record in located:
        asked = {}
        for question, answer in zip(record["messages"][::2], record["messages"][1::2], strict=True):
            boxes = parse_boxes(answer["content"])
            asked[question["content"]] = boxes
        want = Counter(o["name"] for o in record["objects"])
        assert len(asked) == len(want)  # every class once
        for question, boxes in asked.items():
            said = [n for n in want if re.search(rf"\b({n}|{plural_of(n)})\b", question)]
            name = max(said, key=len)
            assert len(boxes) == want[name], (question, boxes)
            truth = [o["box"] for o in record["objects"] if o["name"] == name]
            assert all(max(iou(b, t) for t in truth) > 0.95 for b in boxes)
    write_dataset(tmp_path / "both", 20, seed=0, force=True, locating=True)
    assert not (tmp_path / "both" / "train-count-locate.jsonl").exists()
    assert (tmp_path / "both" / "train-locate.jsonl").exists()


def test_recorded_boxes_keep_their_place_on_the_grid():
    from cogvlm_lite.grounding import to_grid
    from cogvlm_lite.scenes import _rounded

    values = [*np.random.default_rng(0).random(100_000), 0.340502, 0.1234501, 0.0005, 0.0014995]
    for v in values:  # 0.340502 was kept as 0.3405, which the grid rounds to 340, not 341
        assert to_grid(_rounded((v, v, v, v))[0]) == to_grid(v), v
