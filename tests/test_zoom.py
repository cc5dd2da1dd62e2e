"""Zooming in on a small box (the crop, the mapping back), the mirror for a larger one, and
which replies are left alone."""

import pytest
from PIL import Image

from cogvlm_lite.grounding import format_box, parse_boxes, parse_groundings
from cogvlm_lite.zoom import (
    DESCRIBE,
    DESCRIBE_TOKENS,
    Relation,
    asked_relation,
    asked_size,
    asked_thing,
    crop_around,
    from_crop,
    looking_again,
    mirrored,
    run_looks,
    thing,
    whole_view,
    zoom_in,
)


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


@pytest.mark.parametrize("size, question, reply", [
    ((1, 1), "Where is the frog?", "The frog [[500,500,600,600]]."),
    ((2000, 1), "What is in [[500,400,510,600]]?", "A frog."),
    ((3, 900), "Where is the frog?", "The frog [[100,100,200,110]]."),
])
def test_zoom_in_looks_at_a_crop_of_a_pixel_or_more_on_the_thinnest_images(size, question, reply):
    model = CropModel("[[250,250,750,750]]")
    zoom_in(model, Image.new("RGB", size), question, reply)
    assert model.asked and all(w >= 1 and h >= 1 for (w, h), *_ in model.asked)


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
    # crop (160, 105, 280, 225): its middle half is x 190..250, y 135..195 of 400x300, and so
    # is the mirrored crop's (the box is its own mirror image)
    assert reply == "The frog " + format_box((190 / 400, 135 / 300, 250 / 400, 195 / 300)) + "."
    settings = {"history": [], "max_new_tokens": 32, "temperature": 0.0}
    assert model.asked == [((400, 300), "Is there a frog in the image?", settings),  # it is
                           *2 * [((120, 120), "Where is the frog?", settings)]]


class CheckingModel(CropModel):
    """Answers "Is there ...?" with `there` (by the thing asked about), all else with `answer`."""

    def __init__(self, answer: str, there: dict[str, str] | None = None):
        super().__init__(answer)
        self.there = there or {}

    def chat(self, image, query, history=(), **generation):
        answer = super().chat(image, query, history, **generation)
        if query.startswith("Is there"):
            return next((a for thing, a in self.there.items() if thing in query), "Yes.")
        return answer


DESCRIPTION = ("A frog [[500,500,600,600]], a tree [[100,100,900,900]], two cats "
               "[[000,000,050,050;100,100,150,150]] and an apple [[000,000,050,050]].")


def test_zoom_in_looks_again_at_every_box_of_a_description_by_its_thing():
    image = Image.new("RGB", (400, 300))
    model = CheckingModel("[[250,250,750,750]]")
    reply = zoom_in(model, image, "Describe the image with boxes.", DESCRIPTION)
    # the frog's crop is (160, 105, 280, 225) as above; the apple's and both cats' (0, 0, 120,
    # 120); the tree is too large for a crop: the mean of its box and the mirrored image's
    frog = format_box((190 / 400, 135 / 300, 250 / 400, 195 / 300))
    corner = format_box((30 / 400, 30 / 300, 90 / 400, 90 / 300))
    # both cats' looks give the same box: it is given once
    assert reply == f"A frog {frog}, a tree [[175,175,825,825]], two cats {corner} and an apple {corner}."
    asked = [(size, query) for size, query, _ in model.asked]
    assert asked == [
        ((120, 120), "Is there a frog in the image?"), *2 * [((120, 120), "Where is the frog?")],
        ((300, 300), "Is there a tree in the image?"), ((400, 300), "Where is the tree?"),
        *2 * [((120, 120), "Is there a cat in the image?"), *2 * [((120, 120), "Where is the cat?")]],
        ((120, 120), "Is there an apple in the image?"), *2 * [((120, 120), "Where is the apple?")]]


def test_looking_again_pauses_before_each_answer_and_asks_no_more_once_closed():
    image = Image.new("RGB", (400, 300))
    whole = zoom_in(CheckingModel("[[250,250,750,750]]"), image, "Describe.", DESCRIPTION)
    model = CheckingModel("[[250,250,750,750]]")
    looks = looking_again(model, image, "Describe.", DESCRIPTION)
    for asked in range(14):  # 14 answers: the tree's 2, the frog's, each cat's and the apple's 3
        next(looks)
        assert len(model.asked) == asked
    with pytest.raises(StopIteration) as end:
        next(looks)
    assert len(model.asked) == 14 and end.value.value == whole
    looks = looking_again(model, image, "Describe.", DESCRIPTION)
    next(looks), next(looks)
    looks.close()  # as the UI's Stop does between two looks
    assert len(model.asked) == 14 + 1
    looks = looking_again(model, image, "Describe.", DESCRIPTION)
    assert run_looks(looks, stop=lambda: len(model.asked) == 15 + 3) is None  # as the API's does
    assert len(model.asked) == 15 + 3


@pytest.mark.parametrize("question, reply", [
    ("Describe.", "It is [[100,100,900,900]] and there [[000,000,050,050]]."),  # nothing named
    ("What is in [[000,000,800,800]]?", "A tree."),  # a region too large to crop
    ("Describe.", "A tree and a frog."),  # no boxes
])
def test_looking_again_does_not_pause_where_there_is_nothing_to_look_at(question, reply):
    model = CheckingModel("[[250,250,750,750]]")
    looks = looking_again(model, Image.new("RGB", (400, 300)), question, reply)
    with pytest.raises(StopIteration) as end:
        next(looks)
    assert end.value.value == reply and model.asked == []


def test_zoom_in_drops_a_description_box_whose_crop_shows_no_such_thing():
    model = CheckingModel("No box here.", {"frog": "No.", "cat": "No, there is not."})
    reply = zoom_in(model, Image.new("RGB", (400, 300)), "Describe the image.", DESCRIPTION)
    assert reply == ("A frog, a tree [[100,100,900,900]], two cats and an apple "
                     "[[000,000,050,050]].")


@pytest.mark.parametrize("reply, kept", [
    ("Two cats [[500,500,600,600;520,500,620,600]].", 1),  # one cat twice: IoU 0.67
    ("Two cats [[500,500,600,600;580,500,680,600]].", 2),  # two cats, overlapping: IoU 0.11
    ("Two cats [[500,500,600,600]] and a cat [[510,500,610,600]].", 1),  # the cat again
    ("A cat [[500,500,600,600]] and a dog [[510,500,610,600]].", 2),  # a dog on the cat
])
def test_zoom_in_boxes_one_thing_once_in_a_description(reply, kept):
    # no look gives a single box, so the boxes stay as they are
    looked = zoom_in(CheckingModel("No box."), Image.new("RGB", (400, 300)), "Describe.", reply)
    assert len(parse_boxes(looked)) == kept


def test_zoom_in_keeps_a_description_box_whose_crop_gives_no_single_box():
    model = CheckingModel("No frog here.")
    reply = "A frog [[500,500,600,600]] and a ball [[000,000,050,050]]."
    assert zoom_in(model, Image.new("RGB", (400, 300)), "Describe the image.", reply) == reply
    assert len(model.asked) == 6  # each crop: is it there, then as it is and mirrored


def test_zoom_in_looks_again_at_a_reply_of_one_group_of_boxes_as_at_a_description():
    model = CheckingModel("[[250,250,750,750]]", {"cat": "No."})
    reply = "Two cats [[000,000,050,050;500,500,600,600]]."
    assert zoom_in(model, Image.new("RGB", (400, 300)), "Describe it.", reply) == "Two cats."
    assert [query for _, query, _ in model.asked] == 2 * ["Is there a cat in the image?"]


class ViewModel(CropModel):
    """Answers "Is there ...?" with `whole` about the whole 400x300 image and with `crops` (in
    turn) about crops; all else with `answer`."""

    def __init__(self, answer: str, whole: str, crops: list[str]):
        super().__init__(answer)
        self.whole, self.crops = whole, list(crops)

    def chat(self, image, query, history=(), **generation):
        answer = super().chat(image, query, history, **generation)
        if not query.startswith("Is there"):
            return answer
        return self.whole if image.size == (400, 300) else self.crops.pop(0)


@pytest.mark.parametrize("question, reply", [
    ("Where is the frog?", "[[500,500,600,600]]"),
    ("Find all the frogs.", "[[000,000,050,050;500,500,600,600]]"),
    ("Where is the frog?", "The frog [[100,100,400,500]]."),
])
def test_zoom_in_says_there_is_none_where_the_image_and_every_box_crop_show_none(question, reply):
    model = ViewModel("[[250,250,750,750]]", whole="No.", crops=["No."] * 2)
    got = zoom_in(model, Image.new("RGB", (400, 300)), question, reply)
    assert got == "There is no frog in the image."
    boxes = parse_boxes(reply)
    assert [(size, query) for size, query, _ in model.asked] == [
        ((400, 300), "Is there a frog in the image?"),
        *[(side(crop_around(b, 400, 300)), "Is there a frog in the image?") for b in boxes]]


def side(crop: tuple[int, int, int, int]) -> tuple[int, int]:
    return crop[2] - crop[0], crop[3] - crop[1]


def test_zoom_in_keeps_the_boxes_whose_crop_shows_the_thing_asked_about():
    model = ViewModel("[[250,250,750,750]]", whole="No.", crops=["No.", "Yes, there is.", "Yes."])
    reply = zoom_in(model, Image.new("RGB", (400, 300)), "Locate every frog.",
                    "Here: [[000,000,050,050;500,500,600,600;800,800,850,850]].")
    assert reply == "Here: [[500,500,600,600;800,800,850,850]]."  # two boxes: no more looks
    assert len(model.asked) == 4
    model = ViewModel("[[250,250,750,750]]", whole="No.", crops=["Yes."])
    reply = zoom_in(model, Image.new("RGB", (400, 300)), "Where is the frog?", "[[500,500,600,600]]")
    assert reply == format_box((190 / 400, 135 / 300, 250 / 400, 195 / 300))  # looked at again
    assert [query for _, query, _ in model.asked] == [
        *2 * ["Is there a frog in the image?"], "Where is the frog?", "Where is the frog?"]


@pytest.mark.parametrize("reply", ["There are 3 frogs.", "There is one frog."])
def test_zoom_in_says_there_are_none_where_a_count_is_of_a_thing_nowhere_shown(reply):
    model = ViewModel("[[500,500,600,600]]", whole="No.", crops=["No."])
    got = zoom_in(model, Image.new("RGB", (400, 300)), "How many frogs are there?", reply)
    assert got == "There are no frogs in the image."
    box = parse_boxes("[[500,500,600,600]]")[0]
    assert [(size, query) for size, query, _ in model.asked] == [
        ((400, 300), "Is there a frog in the image?"), ((400, 300), "Where is the frog?"),
        (side(crop_around(box, 400, 300)), "Is there a frog in the image?")]


@pytest.mark.parametrize("whole, crops, asked", [
    ("Yes.", [], 1),  # the whole image shows one: the count stands, nothing more asked
    ("No.", ["Yes."], 3),  # the box the model finds for it shows one on its crop
])
def test_zoom_in_keeps_a_count_of_a_thing_shown(whole, crops, asked):
    model = ViewModel("[[500,500,600,600]]", whole=whole, crops=crops)
    got = zoom_in(model, Image.new("RGB", (400, 300)), "Count the mice.", "There are 2 mice.")
    assert got == "There are 2 mice." and len(model.asked) == asked


class FindingModel:
    """Boxes a cat high up and a dog low down, wide enough that no crop holds one with its
    context (so the looks are the box and the mirrored image's, at the same height)."""

    def __init__(self, dog_there: str = "Yes."):
        self.dog_there = dog_there
        self.asked: list[str] = []

    def chat(self, image, query, history=(), **generation):
        self.asked.append(query)
        if query.startswith("Is there"):
            return self.dog_there if "dog" in query else "Yes."
        return {"Where is the cat?": "[[100,100,900,300]]",
                "Where is the dog?": "[[100,600,900,900]]"}.get(query, "Hmm.")


CAT, DOG = "[[100,100,900,300]]", "[[100,600,900,900]]"  # as FindingModel boxes them


@pytest.mark.parametrize("question, reply, grounded", [
    ("Is the cat below the dog?", "Yes.", f"No. The cat {CAT} is higher up, the dog {DOG} lower down."),
    ("Is the dog lower than the cat?", "No.", f"Yes. The dog {DOG} is lower down, the cat {CAT} higher up."),
    ("Which one is on top: the dog or the cat?", "The dog.", f"The cat {CAT}."),
    ("Between the cat and the dog, which sits lower down?", "The cat.", f"The dog {DOG}."),
])
def test_zoom_in_answers_where_one_object_is_against_another_from_their_boxes(question, reply,
                                                                            grounded):
    model = FindingModel()
    assert zoom_in(model, Image.new("RGB", (400, 300)), question, reply) == grounded
    assert {g.phrase for g in parse_groundings(grounded)} <= {"cat", "dog"}  # each box's label
    assert [q for q in model.asked if q.startswith("Where")] == [
        "Where is the cat?", "Where is the cat?", "Where is the dog?", "Where is the dog?"
    ] if question.index("cat") < question.index("dog") else [
        "Where is the dog?", "Where is the dog?", "Where is the cat?", "Where is the cat?"]


def test_zoom_in_keeps_a_relation_answer_where_an_object_is_not_found():
    model = FindingModel(dog_there="No.")  # no dog in the image, nor in its box's crop
    reply = zoom_in(model, Image.new("RGB", (400, 300)), "Is the cat below the dog?", "Yes.")
    assert reply == "Yes."


@pytest.mark.parametrize("question, relation", [
    ("Is the cat to the left of the dog?", Relation(True, "cat", "dog", "left")),
    ("Does the pool ball sit higher up than the frog?", Relation(True, "pool ball", "frog", "above")),
    ("Is the frog placed under the cat", Relation(True, "frog", "cat", "below")),
    ("Which is further right, the mice or the cat?", Relation(False, "mouse", "cat", "right")),
    ("Of the cat and the dog, which is nearer the top edge?", Relation(False, "cat", "dog", "above")),
    ("Is the top hat left of the dog?", Relation(True, "top hat", "dog", "left")),
    ("Is the cat left of the dog on the right?", None),  # two directions
    ("How many cats are left of the dog?", None),  # neither yes or no nor which
    ("Is the cat on the left?", None),  # one object
    ("Is the cat left of the cat?", None),
])
def test_asked_relation_is_where_a_question_asks_one_object_is_against_another(question, relation):
    assert asked_relation(question) == relation


def test_asked_relation_reads_every_wording_the_scenes_ask_it_in():
    from cogvlm_lite.questions import _RELATION, _WHICH_OF_TWO, UNSEEN_WORDINGS, VARIED_WORDINGS

    for yes_no, table in ((True, _RELATION), (False, _WHICH_OF_TWO)):
        for direction, trained in table.items():
            for wording in (*trained, *VARIED_WORDINGS[trained], *UNSEEN_WORDINGS[trained]):
                question = wording.format(a="cat", b="pool ball")
                assert asked_relation(question) == Relation(yes_no, "cat", "pool ball", direction)


class DescribingModel(CheckingModel):
    """Describes the image as `description`; says every thing asked about is there, and gives
    no single box for it (so each box stays as described)."""

    def __init__(self, description: str):
        super().__init__("No box.")
        self.description = description

    def chat(self, image, query, history=(), **generation):
        answer = super().chat(image, query, history, **generation)
        return self.description if query == DESCRIBE else answer


SIZED = ("A dog [[100,100,600,600]], two ants [[700,700,750,760;800,100,900,200]] and a cat "
         "[[000,700,200,900]].")


@pytest.mark.parametrize("question, reply, answer", [
    ("Which object is the smallest?", "The cat.", "The ant [[700,700,750,760]]."),
    ("Name the object that takes up the most space.", "The ant.", "The dog [[100,100,600,600]]."),
])
def test_zoom_in_answers_which_object_is_the_smallest_or_largest_from_a_description(question,
                                                                                   reply, answer):
    model = DescribingModel(SIZED)
    assert zoom_in(model, Image.new("RGB", (400, 300)), question, reply,
                   max_new_tokens=24) == answer
    described = model.asked[0]
    assert described[1] == DESCRIBE and described[2]["max_new_tokens"] == DESCRIBE_TOKENS


def test_zoom_in_keeps_the_reply_where_the_description_boxes_nothing():
    model = DescribingModel("A dog and a cat.")
    assert zoom_in(model, Image.new("RGB", (400, 300)), "Which object is the biggest?",
                   "The cat.") == "The cat."


@pytest.mark.parametrize("question, size", [
    ("Which object is the smallest?", "smallest"),
    ("What is the tiniest object in the image?", "smallest"),
    ("Name the object that takes up the least space.", "smallest"),
    ("What is the biggest thing in the image?", "largest"),
    ("Is the cat the smallest?", None),  # names an object
    ("Which is the smallest and which the largest?", None),
    ("Which object is furthest to the left?", None),
])
def test_asked_size_is_which_object_is_the_smallest_or_largest(question, size):
    assert asked_size(question) == size


def test_asked_size_reads_every_wording_the_scenes_ask_it_in():
    from cogvlm_lite.questions import _EXTREME, UNSEEN_WORDINGS, VARIED_WORDINGS

    for kind, size in (("smallest", "smallest"), ("biggest", "largest")):
        trained = _EXTREME[kind]
        for question in (*trained, *VARIED_WORDINGS[trained], *UNSEEN_WORDINGS[trained]):
            assert asked_size(question) == size, question


@pytest.mark.parametrize("question, named", [
    ("Where is the frog?", "frog"), ("Find all the mice.", "mouse"),
    ("Give the bounding boxes of all the pool balls.", "pool ball"),
    ("Locate the frog on the left. Answer in [[x0,y0,x1,y1]] format.", "frog"),
    ("Where is the frog left of the cat?", None), ("Where is the unicorn-dragon?", None)])
def test_asked_thing_is_the_one_object_a_question_names(question, named):
    assert asked_thing(question) == named


@pytest.mark.parametrize("phrase, name", [
    ("Four cupcakes", "cupcake"), ("3 trash cans", "trash can"), ("two mice", "mouse"),
    ("frisbee", "frisbee"), ("red apples", "red apple"), ("things", "things")])
def test_thing_is_one_of_what_a_phrase_names(phrase, name):
    assert thing(phrase) == name


def test_zoom_in_asks_about_a_small_region_on_a_crop_in_the_crop_coordinates():
    model = CropModel("A frog.")
    reply = zoom_in(model, Image.new("RGB", (400, 300)), "What is in [[500,500,600,600]]?",
                    "A cat.", max_new_tokens=32)
    # the region is x 200..240, y 150..180 px; in its crop (160, 105, 280, 225): 40..80, 45..75
    assert reply == "A frog."
    assert model.asked == [((120, 120), "What is in [[333,375,667,625]]?",
                            {"history": [], "max_new_tokens": 32})]


def test_zoom_in_keeps_a_region_answer_when_the_crop_answers_with_a_box():
    model = CropModel("A frog [[000,000,999,999]].")  # the crop's coordinates, not the image's
    reply = zoom_in(model, Image.new("RGB", (400, 300)), "What is in [[500,500,600,600]]?", "A cat.")
    assert reply == "A cat." and len(model.asked) == 1


@pytest.mark.parametrize("question, reply", [
    ("Where is the frog?", "No box here."),
    ("Where are they?", "[[100,100,150,150;300,300,350,350]]"),  # two boxes
    ("Where are the frogs?", "A [[100,100,150,150]] and a [[300,300,350,350]]."),
    ("Where is the frog?", "[[100,100;120,120]]"),  # points
    ("What is at [[100,100]]?", "A frog."),  # a point asked about: its object's size is unknown
    ("What is in [[100,100,400,400]]?", "A frog."),  # a region asked about, not small
    ("What is in [[100,100,150,150]] or [[300,300,350,350]]?", "A frog."),  # two regions
    ("How many frogs are there?", "There are no frogs."),  # a count of none
    ("How many things are there?", "There are 3 objects."),  # no one thing named
])
def test_zoom_in_leaves_other_replies_alone(question, reply):
    model = CropModel("[[000,000,999,999]]")
    assert zoom_in(model, Image.new("RGB", (400, 300)), question, reply) == reply
    assert model.asked == []


def test_mirrored_swaps_left_and_right():
    assert mirrored("Where is the leftmost dog?") == "Where is the rightmost dog?"
    assert mirrored("Right of the left-hand cat, furthest to the right") == (
        "Left of the right-hand cat, furthest to the left")
    assert mirrored("Find the bright kite.") == "Find the bright kite."


# Both too large for a crop with all its context: 3 x 120 px and 3 x 104 px exceed 300 px.
@pytest.mark.parametrize("reply", ["[[100,100,400,500]]", "The frog [[100,100,360,300]]."])
def test_zoom_in_averages_a_larger_box_with_the_mirrored_images(reply):
    image = Image.new("RGB", (400, 300))
    image.putpixel((0, 0), (255, 0, 0))
    seen = []

    class MirrorModel(CropModel):
        def chat(self, image, query, history=(), **generation):
            seen.append(image.getpixel((399, 0)))  # the red corner, now on the right
            return super().chat(image, query, history, **generation)

    model = MirrorModel("It is [[600,200,900,400]].")  # mirrored back: 100..400 across
    first = parse_boxes(reply)[0]
    got = zoom_in(model, image, "Where is the frog on the left?", reply, max_new_tokens=32)
    mean = ((first[0] + 0.1) / 2, (first[1] + 0.2) / 2, (first[2] + 0.4) / 2, (first[3] + 0.4) / 2)
    assert got == reply.replace(format_box(first), format_box(mean))
    assert seen == [(0, 0, 0), (255, 0, 0)]  # is there a frog; then the mirror image
    assert model.asked[1:] == [((400, 300), "Where is the frog on the right?",
                                {"history": [], "max_new_tokens": 32})]


def test_whole_view_of_an_image_more_oblong_than_training_is_the_largest_square_around_a_box():
    assert whole_view((0.5, 0.2, 0.6, 0.5), 400, 300) == (0, 0, 400, 300)  # 4:3, as in training
    assert whole_view((0.5, 0.2, 0.6, 0.5), 600, 300) == (180, 0, 480, 300)  # 2:1: centred on it
    assert whole_view((0.9, 0.2, 0.99, 0.5), 600, 300) == (300, 0, 600, 300)  # moved inside
    assert whole_view((0.1, 0.6, 0.4, 0.9), 200, 400) == (0, 200, 200, 400)  # a tall image
    assert whole_view((0.1, 0.1, 0.7, 0.5), 600, 300) == (0, 0, 600, 300)  # 360 px: it would be cut


def test_zoom_in_looks_at_a_larger_box_of_a_wide_image_on_the_largest_square_around_it():
    image = Image.new("RGB", (600, 300))  # squeezed to a square, objects would look half as wide
    model = CropModel("[[250,250,750,750]]")  # its own mirror image
    first = (0.6, 0.2, 0.8, 0.5)  # 120 x 90 px: too large for a crop with all its context
    reply = zoom_in(model, image, "Where is the frog?", format_box(first))
    view = whole_view(first, 600, 300)
    assert view == (270, 0, 570, 300)
    # the square's two looks alone: the reply, from the squeezed image, is not one of them
    assert reply == format_box(from_crop((0.25, 0.25, 0.75, 0.75), view, 600, 300))
    assert [size for size, _, _ in model.asked] == [(600, 300), (300, 300), (300, 300)]


@pytest.mark.parametrize("answer", ["Nothing to see.", "[[0,0,500,500;500,500,999,999]]"])
@pytest.mark.parametrize("reply, looks", [
    ("[[100,100,400,500]]", 1),  # a larger box: the mirrored image
    ("[[100,100,300,400]]", 3),  # a middling one: the mirrored image and its crop, both ways
    ("[[400,400,450,450]]", 2),  # a small one: its crop, as it is and mirrored
])
def test_zoom_in_keeps_the_first_box_when_no_look_gives_a_single_box(answer, reply, looks):
    model = CropModel(answer)
    assert zoom_in(model, Image.new("RGB", (400, 300)), "Where is the frog?", reply) == reply
    assert len(model.asked) == 1 + looks  # is there a frog, then the looks


def test_zoom_in_averages_a_middling_box_over_the_whole_image_and_its_crop():
    image = Image.new("RGB", (400, 300))
    model = CropModel("[[250,250,750,750]]")  # its own mirror image, on the whole and the crop
    first = (0.5, 0.5, 0.6, 0.75)  # 40 x 75 px: a quarter of the image's height, thrice within it
    reply = zoom_in(model, image, "Where is the frog?", format_box(first))
    crop = crop_around(first, 400, 300)
    assert crop == (108, 75, 333, 300)
    middle = (0.25, 0.25, 0.75, 0.75)
    looks = [first, middle] + 2 * [from_crop(middle, crop, 400, 300)]
    assert reply == format_box(tuple(sum(v) / 4 for v in zip(*looks, strict=True)))
    assert [size for size, _, _ in model.asked] == [(400, 300), (400, 300), (225, 225), (225, 225)]


def test_zoom_in_averages_a_crop_box_with_its_mirror_images():
    image = Image.new("RGB", (400, 300))
    model = CropModel("[[000,250,500,750]]")  # the left half; mirrored back, the right half
    reply = zoom_in(model, image, "Where is the frog on the left?", "[[500,500,600,600]]")
    # both looks averaged: x 0.25..0.75 of the crop (160, 105, 280, 225), y 0.25..0.75
    assert reply == format_box((190 / 400, 135 / 300, 250 / 400, 195 / 300))
    assert [query for _, query, _ in model.asked] == [
        "Is there a frog in the image?", "Where is the frog on the left?",
        "Where is the frog on the right?"]


def test_zoom_in_reads_image_files(tmp_path):
    Image.new("RGB", (400, 300)).save(tmp_path / "scene.png")
    model = CropModel("[[000,000,999,999]]")
    reply = zoom_in(model, tmp_path / "scene.png", "Where is the frog?", "[[400,400,450,450]]")
    assert parse_boxes(reply) and [size for size, _, _ in model.asked] == [(400, 300), *2 * [(120, 120)]]


@pytest.mark.parametrize("crop_answer, asked", [
    ("A frog.", [(120, 120)]),  # the crop's answer is the reply: the whole image is not asked
    ("A frog [[000,000,999,999]].", [(120, 120), (400, 300)]),  # a box in it: not that one
])
def test_chat_with_zoom_asks_about_a_small_region_on_its_crop_first(tiny_model, monkeypatch,
                                                                    crop_answer, asked):
    sizes = []

    def stream_chat(image, query, history=(), **generation):
        sizes.append(image.size)
        yield crop_answer if image.size == (120, 120) else "A cat."

    monkeypatch.setattr(tiny_model, "stream_chat", stream_chat)
    reply = tiny_model.chat(Image.new("RGB", (400, 300)), "What is in [[500,500,600,600]]?",
                            zoom=True)
    assert reply == ("A frog." if len(asked) == 1 else "A cat.")
    assert sizes == asked
