"""Tests for the grounding format: writing, tolerant parsing, box maths and drawing."""

import pytest
from PIL import Image, ImageChops

from cogvlm_lite.grounding import (
    Grounding,
    check_regions,
    draw_groundings,
    format_box,
    format_boxes,
    format_point,
    from_pixels,
    iou,
    merge_boxes,
    parse_boxes,
    parse_groundings,
    regions_before_punctuation,
    strip_groundings,
    to_grid,
    to_pixels,
)
from cogvlm_lite.images import ImageError


@pytest.mark.parametrize("question", [
    "What is in [[2000,2000,3000,3000]]?", "What is in [[0,0,0,0]]?", "What is in [[1,2,3]]?",
    "What is [[-5,-5,100,100]]?", "What is [[900,900,100,100]]?", "What is [[1.5,2.5,3,4]]?",
    "What are [[100,100,200,200;5,5;7]]?", "What is [[ , ]]?",
])
def test_a_question_s_groups_must_be_points_or_boxes_of_the_grid(question):
    with pytest.raises(ValueError, match=r"is not a region: give a point \[\[x,y\]\] or a box"):
        check_regions(question)


def test_questions_with_grid_regions_formats_or_none_pass():
    for question in ("What is in [[120,300,480,720]]?", "What is this [[500,500]]?",
                     "And [[000,000,999,999;010,020,030,040]]?", "Describe the image.",
                     "Where is the dog? Answer in [[x0,y0,x1,y1]] format.", "A point [[x,y]]?",
                     "What is [[]]?"):
        check_regions(question)


def test_to_grid_rounds_and_clamps():
    assert to_grid(0.0) == 0
    assert to_grid(0.5) == 500
    assert to_grid(0.0124) == 12
    assert to_grid(1.0) == 999
    assert to_grid(-0.1) == 0
    assert to_grid(3.0) == 999
    with pytest.raises(ValueError, match="finite"):
        to_grid(float("nan"))


def test_format_box_three_digits_and_clamping():
    assert format_box((0.012, 0.34, 0.56, 0.998)) == "[[012,340,560,998]]"
    assert format_box((-0.1, 0.0, 1.0, 1.5)) == "[[000,000,999,999]]"
    assert format_box((0.001, 0.002, 0.003, 0.004)) == "[[001,002,003,004]]"


def test_format_boxes_and_points():
    a, b = (0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)
    assert format_boxes([a]) == format_box(a)
    assert format_boxes([a, b]) == "[[100,200,300,400;500,600,700,800]]"
    assert format_point((0.05, 0.999)) == "[[050,999]]"
    with pytest.raises(ValueError, match="at least one box"):
        format_boxes([])
    with pytest.raises(ValueError, match="4 values"):
        format_boxes([(0.1, 0.2, 0.3)])  # type: ignore[list-item]


def test_round_trip_format_parse():
    boxes = [(0.012, 0.34, 0.56, 0.998), (0.0, 0.0, 0.999, 0.999), (0.25, 0.5, 0.75, 0.625)]
    text = "cats " + format_boxes(boxes)
    for parsed, box in zip(parse_boxes(text), boxes, strict=True):
        assert parsed == pytest.approx(box)
    for box in boxes:
        assert parse_boxes(format_box(box)) == [pytest.approx(box)]
    (g,) = parse_groundings("a dot " + format_point((0.123, 0.456)))
    assert g.points == [pytest.approx((0.123, 0.456))]
    assert g.boxes == []


def test_parse_values_are_int_over_1000_and_normalised():
    (g,) = parse_groundings("x [[560,998,012,340]]")
    assert g.boxes == [(0.012, 0.34, 0.56, 0.998)]
    assert parse_boxes("[[ 12, 340 ,560,998 ]]") == [(0.012, 0.34, 0.56, 0.998)]
    assert parse_boxes("[[1,2,3,4]]") == [(0.001, 0.002, 0.003, 0.004)]
    assert parse_boxes("[[0,0,1000,123456]]") == [(0.0, 0.0, 0.999, 0.999)]


def test_multi_box_and_mixed_groups():
    (g,) = parse_groundings("two cups [[100,100,200,200;300,100,400,200;050,060]]")
    assert g.phrase == "two cups"
    assert g.boxes == [(0.1, 0.1, 0.2, 0.2), (0.3, 0.1, 0.4, 0.2)]
    assert g.points == [(0.05, 0.06)]


def test_mixed_text_phrases_and_spans():
    text = (
        "There is a red apple [[012,340,560,998]] and a green pear[[100,100,200,200]]. "
        "The dog is at [[500,500,600,600]]\nClick here [[250,750]]"
    )
    groundings = parse_groundings(text)
    assert [g.phrase for g in groundings] == ["red apple", "green pear", "dog", "Click here"]
    for g in groundings:
        assert text[g.start : g.end].startswith("[[")
        assert text[g.start : g.end].endswith("]]")
    assert groundings[0].start == text.index("[[")
    assert groundings[-1].points == [(0.25, 0.75)]
    assert isinstance(groundings[0], Grounding)
    assert len(parse_boxes(text)) == 3


def test_phrase_edge_cases():
    assert parse_groundings("[[1,2,3,4]]")[0].phrase == ""
    assert parse_groundings("Here it is: [[1,2,3,4]]")[0].phrase == ""
    # A lone filler word is kept rather than leaving nothing.
    assert parse_groundings("the [[1,2,3,4]]")[0].phrase == "the"
    assert parse_groundings("A cat, [[1,2,3,4]]")[0].phrase == "cat"
    # In a list, a box is the last item's.
    assert parse_groundings("A cat, a dog [[1,2,3,4]]")[0].phrase == "dog"
    assert parse_groundings("A bow and arrow [[1,2,3,4]]")[0].phrase == "bow and arrow"
    assert parse_groundings("猫 [[1,2,3,4]]")[0].phrase == "猫"
    # An unreadable group still ends the previous phrase.
    assert parse_groundings("dog [[x]] cat [[1,2,3,4]]")[0].phrase == "cat"


NASTY = [
    "[[1,2,3]]",
    "[[a,b,c,d]]",
    "[[",
    "[[1,2,3,4",
    "[[]]",
    "[[;]]",
    "[[ , , , ]]",
    "[[1,2,3,4,5]]",
    "[[-1,2,3,4]]",
    "[[1.5,2,3,4]]",
    "[[1,2,3,4]",
    "[1,2,3,4]]",
    "]][[",
    "[[１,２,３,４]]",  # full-width digits
    "[[١,٢,٣,٤]]",  # Arabic-Indic digits
    "🍎 [[🍎,🍎,🍎,🍎]]",
    "[[" * 1000 + "]]" * 1000,
    "",
]


@pytest.mark.parametrize("text", NASTY)
def test_malformed_groups_are_skipped(text):
    assert parse_groundings(text) == []
    assert parse_boxes(text) == []
    draw_groundings(Image.new("RGB", (8, 8)), text)  # must not raise either


def test_partially_bad_groups_keep_good_members():
    assert parse_boxes("[[1,2,3,4;x]]") == [(0.001, 0.002, 0.003, 0.004)]
    assert parse_boxes("[[x;1,2,3,4;1,2,3;]]") == [(0.001, 0.002, 0.003, 0.004)]
    # Nested brackets: the innermost well-formed group is read.
    assert parse_boxes("[[[1,2,3,4]]]") == [(0.001, 0.002, 0.003, 0.004)]
    assert parse_boxes("[[1,2,[[5,6,7,8]]") == [(0.005, 0.006, 0.007, 0.008)]
    assert parse_boxes("[[99999999999999999999999,0,0,0]]") == [(0.0, 0.0, 0.999, 0.0)]


@pytest.mark.parametrize("question, expected", [
    ("What is this? [[100,200,300,400]]", "What is this [[100,200,300,400]]?"),
    ("What is this?[[100,200]]", "What is this [[100,200]]?"),
    ("Name it. [[1,2,3,4]] [[5,6]] ", "Name it [[1,2,3,4]] [[5,6]]."),
    ("What is in [[100,200,300,400]]?", "What is in [[100,200,300,400]]?"),
    ("What is this [[100,200]]", "What is this [[100,200]]"),
    ("Where is the dog?", "Where is the dog?"),
    ("? [[100,200]]", "? [[100,200]]"),
])
def test_regions_after_the_final_punctuation_move_before_it(question, expected):
    assert regions_before_punctuation(question) == expected


def test_iou():
    a = (0.0, 0.0, 0.5, 0.5)
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, (0.6, 0.6, 0.9, 0.9)) == 0.0
    assert iou(a, (0.5, 0.0, 1.0, 0.5)) == 0.0  # touching edges
    # Overlap 0.25 x 0.5 = 0.125; union 0.25 + 0.25 - 0.125 = 0.375.
    assert iou(a, (0.25, 0.0, 0.75, 0.5)) == pytest.approx(1 / 3)
    assert iou((0.2, 0.2, 0.2, 0.8), (0.0, 0.0, 1.0, 1.0)) == 0.0  # degenerate
    assert iou((0.0, 0.0, 1.0, 1.0), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.25)


def test_merge_boxes():
    boxes = [(0.1, 0.2, 0.3, 0.4), (0.05, 0.5, 0.2, 0.9)]
    assert merge_boxes(boxes) == (0.05, 0.2, 0.3, 0.9)
    assert merge_boxes(boxes[:1]) == boxes[0]
    with pytest.raises(ValueError, match="at least one box"):
        merge_boxes([])


def test_pixel_conversion_round_trip():
    assert to_pixels((0.1, 0.2, 0.5, 1.0), 640, 480) == (64, 96, 320, 480)
    assert to_pixels((-0.5, 0.0, 2.0, 1.0), 10, 10) == (0, 0, 10, 10)
    assert from_pixels((64, 96, 320, 480), 640, 480) == pytest.approx((0.1, 0.2, 0.5, 1.0))
    pixels = (13, 7, 301, 199)
    assert to_pixels(from_pixels(pixels, 333, 200), 333, 200) == pixels
    box = (0.123, 0.456, 0.789, 0.999)
    assert from_pixels(to_pixels(box, 1000, 1000), 1000, 1000) == pytest.approx(box)
    with pytest.raises(ValueError, match="positive"):
        to_pixels(box, 0, 10)


def test_strip_groundings():
    text = "There is a red apple [[012,340,560,998]] and pears [[1,2,3,4;5,6,7,8]] ."
    assert strip_groundings(text) == "There is a red apple and pears."
    assert strip_groundings("Click ([[250,750]]) here") == "Click here"
    assert strip_groundings("no groups") == "no groups"
    assert strip_groundings("bad [[x]] group, [[ kept") == "bad group, [[ kept"


def test_draw_marks_box_edges_and_leaves_input_alone():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    before = image.copy()
    out = draw_groundings(image, "a cat [[250,400,750,900]] and a point [[100,100]]")
    assert out.size == image.size and out.mode == "RGB"
    assert ImageChops.difference(image, before).getbbox() is None
    grey = (128, 128, 128)
    assert out.getpixel((50, 70)) != grey  # left edge of the box at x = 0.25 * 200
    assert out.getpixel((100, 89)) != grey  # bottom edge, last row inside y = 0.9 * 100
    assert out.getpixel((100, 65)) == grey  # inside the box, away from the label
    assert out.getpixel((20, 10)) != grey  # the point marker


def test_draw_on_an_image_file_as_the_model_reads_it(tmp_path):
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown turned a quarter, 100 wide and 200 high
    image.save(tmp_path / "side.jpg", exif=exif)
    for source in (tmp_path / "side.jpg", str(tmp_path / "side.jpg"), (tmp_path / "side.jpg").read_bytes()):
        out = draw_groundings(source, "a cat [[250,400,750,900]]")
        assert out.size == (100, 200) and out.mode == "RGB"
    with pytest.raises(ImageError, match="not found"):
        draw_groundings(tmp_path / "nope.png", "a cat [[250,400,750,900]]")


def test_draw_distinct_colours_per_group():
    text = "[[100,500,300,900]] [[600,500,800,900]]"
    out = draw_groundings(Image.new("RGB", (300, 300), "white"), text)
    assert out.getpixel((30, 200)) != out.getpixel((180, 200))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "I;16", "CMYK"])
def test_draw_any_mode(mode):
    image = Image.new(mode, (64, 48))
    out = draw_groundings(image, "thing [[100,100,900,900]]")
    assert out.mode == "RGB" and out.size == (64, 48)
    assert image.mode == mode


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (3, 2)])
def test_draw_tiny_images(size):
    text = "a very long label that cannot fit [[000,000,999,999]] dot [[500,500]]"
    out = draw_groundings(Image.new("RGB", size), text)
    assert out.size == size and out.mode == "RGB"


def test_draw_unicode_label():
    out = draw_groundings(Image.new("RGB", (120, 120)), "猫 🐱 [[100,300,900,900]]")
    assert out.getbbox() is not None


def test_draw_without_groups_returns_equal_copy():
    image = Image.new("RGB", (32, 16), (10, 20, 30))
    out = draw_groundings(image, "just words, [[x]] and a broken [[1,2")
    assert out is not image
    assert out.tobytes() == image.tobytes() and out.size == image.size
    assert draw_groundings(Image.new("L", (4, 4), 200), "").getpixel((0, 0)) == (200, 200, 200)
