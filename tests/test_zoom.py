"""Zooming in on a small box: the crop, the mapping back, and which replies are left alone."""

import pytest
from PIL import Image

from cogvlm_lite.grounding import format_box, parse_boxes
from cogvlm_lite.zoom import crop_around, from_crop, zoom_in


class CropModel:
    """Answers every question about a crop with `answer`, and keeps what it was asked."""

    def __init__(self, answer: str):
        self.answer = answer
        self.asked: list[tuple[tuple[int, int], str, dict]] = []

    def chat(self, image, query, history=(), **generation):
        self.asked.append((image.size, query, {"history": history, **generation}))
        return self.answer


def test_crop_is_a_square_around_the_box_inside_the_image():
    # a 40x30 px box (200..240, 150..180) in a 400x300 image: three times its longer side is
    # 120 px, as is 0.4 of the shorter side: a 120 px square centred on the box
    assert crop_around((0.5, 0.5, 0.6, 0.6), 400, 300) == (160, 105, 280, 225)
    # near the corner it is shifted inside the image, not cut
    assert crop_around((0.0, 0.0, 0.05, 0.05), 400, 300) == (0, 0, 120, 120)
    # a large box's crop is the image's shorter side at most
    assert crop_around((0.1, 0.1, 0.9, 0.9), 400, 300) == (50, 0, 350, 300)


def test_from_crop_maps_a_crop_box_back_to_the_image():
    crop = (160, 105, 280, 225)
    assert from_crop((0.0, 0.0, 1.0, 1.0), crop, 400, 300) == pytest.approx((0.4, 0.35, 0.7, 0.75))
    box = from_crop((0.25, 0.5, 0.75, 1.0), crop, 400, 300)
    assert box == pytest.approx((190 / 400, 165 / 300, 250 / 400, 225 / 300))


def test_zoom_in_replaces_the_small_box_with_the_crop_answer_mapped_back():
    image = Image.new("RGB", (400, 300))
    model = CropModel("[[250,250,750,750]]")
    reply = zoom_in(model, image, "Where is the frog?", "The frog [[500,500,600,600]].",
                    max_new_tokens=32, temperature=0.0)
    # crop (160, 105, 280, 225): its middle half is x 190..250, y 135..195 of 400x300
    assert reply == "The frog " + format_box((190 / 400, 135 / 300, 250 / 400, 195 / 300)) + "."
    assert model.asked == [((120, 120), "Where is the frog?",
                            {"history": [], "max_new_tokens": 32, "temperature": 0.0})]


@pytest.mark.parametrize("question, reply", [
    ("Where is the frog?", "No box here."),
    ("Where is the frog?", "[[100,100,300,400]]"),  # not small
    ("Where are the frogs?", "[[100,100,150,150;300,300,350,350]]"),  # two boxes
    ("Where are the frogs?", "A [[100,100,150,150]] and a [[300,300,350,350]]."),
    ("Where is the frog?", "[[100,100;120,120]]"),  # points
    ("What is in [[100,100,150,150]]?", "A frog [[100,100,150,150]]."),  # a region asked about
])
def test_zoom_in_leaves_other_replies_alone(question, reply):
    model = CropModel("[[000,000,999,999]]")
    assert zoom_in(model, Image.new("RGB", (400, 300)), question, reply) == reply
    assert model.asked == []


@pytest.mark.parametrize("crop_answer", ["I see no frog.", "[[0,0,500,500;500,500,999,999]]"])
def test_zoom_in_keeps_the_first_box_when_the_crop_gives_no_single_box(crop_answer):
    model = CropModel(crop_answer)
    reply = "[[400,400,450,450]]"
    assert zoom_in(model, Image.new("RGB", (400, 300)), "Where is the frog?", reply) == reply
    assert len(model.asked) == 1


def test_zoom_in_reads_image_files(tmp_path):
    Image.new("RGB", (400, 300)).save(tmp_path / "scene.png")
    model = CropModel("[[000,000,999,999]]")
    reply = zoom_in(model, tmp_path / "scene.png", "Where is the frog?", "[[400,400,450,450]]")
    assert parse_boxes(reply) and model.asked[0][0] == (120, 120)
