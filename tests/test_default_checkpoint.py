"""The packaged default checkpoint: present, small, and grounding scenes it has never seen.

The thresholds sit a margin below what the checkpoint scored on these very questions when it was
committed (see the README's figures), so a change that breaks grounding fails here. The tests
that ask many questions decode with `--decode fp32` (the `fp32_model` fixture), as those figures
were measured: the same greedy tokens as the default path, in less time.
"""

import json
import random

import pytest

from cogvlm_lite.evaluate import answered_right, match_boxes, normalize, read_questions, run_vqa, score_files
from cogvlm_lite.grounding import box_side, iou, parse_boxes, parse_groundings
from cogvlm_lite.images import load_image
from cogvlm_lite.model import CONFIG_NAME, DEFAULT_CHECKPOINT, WEIGHTS_NAME
from cogvlm_lite.objects import vocabulary
from cogvlm_lite.prealign import read_objects
from cogvlm_lite.scenes import write_dataset
from cogvlm_lite.zoom import asked_relation, asked_size

SEED = 31337  # never used for training data
# Minimum accuracy per task type (rec: Acc@0.5); at commit it scored reg 0.73, count 0.73,
# exist 0.90 and rec 0.47 here, and the trivial baseline (`eval --baseline`) 0.07, 0.43, 0.73 and
# 0.03. Thirty questions a type move a score by 0.03 each: the floors leave an answer's margin
# or more (on the 600 held-out questions counting scores 0.65, referring expressions 0.49).
GUARDS = {"reg": 0.6, "count": 0.6, "exist": 0.8, "rec": 0.2}
PER_TYPE = 30
# Small objects (reference box's longer side under a fifth of the image) asked about with and
# without `zoom`: their mean IoU was 0.35 without and 0.49 with it on an Intel Xeon (0.51 on an
# AMD EPYC before middling boxes took the whole image's looks too; 0.47 before every look was
# also mirrored). On all 150 held-out scenes of seed 99 zoom takes referring expressions from 74
# right to 106 (docs/default-checkpoint.md); here it must raise the mean IoU.
SMALL_OBJECTS = 12
# Small regions (longer side under a fifth of the image) to name, with and without `zoom`: at
# commit 15 of these 24 were named right without and 21 with it. On the 150 held-out scenes zoom
# took region naming from 52 right to 60 (docs/default-checkpoint.md); here it must name more right.
SMALL_REGIONS = 24
# Where one object is against another ("Is the cat left of the dog?", "Which is higher, the cat
# or the dog?"): `zoom` answers from both objects' boxes, on seed 99 25 of 26 right (17 without).
# Here it asks again those the default answers wrong, and must answer all but one right.
RELATIONS = 4
# Which object is the smallest or the largest: `zoom` answers from the boxes of a description it
# looks at again. Of the 4 such questions here the default answered 3 wrong at commit, and with
# zoom it answered 1 of those right; on seeds 99, 98 and 96 it took 13 of 54 to 27.
SIZES = 3
# Grounded descriptions with and without `zoom`, which checks each box on its crop, looks again
# and gives a box of one thing once: at commit the first 2 here boxed 2 of their 11 objects
# right without and 9 with it, giving 10 boxes both ways. On seed 99's 80 descriptions zoom took
# box precision from 0.30 to 0.60 and recall from 0.26 to 0.47 (docs/default-checkpoint.md).
DESCRIPTIONS = 2
# Scenes asked to find, and to count, an object they do not hold: the default boxes and counts
# one anyway (80 times of 80 on seed 99), and with `zoom` says there is none (72 and 75 of 80).
ABSENT = 8


def test_default_checkpoint_is_committed_and_small():
    assert (DEFAULT_CHECKPOINT / CONFIG_NAME).is_file()
    size = (DEFAULT_CHECKPOINT / WEIGHTS_NAME).stat().st_size
    assert size <= 25e6, size  # it lives in git


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("guard") / "scenes"
    write_dataset(out, 200, seed=SEED)
    return out


@pytest.mark.weights
def test_default_checkpoint_grounds_unseen_scenes(fp32_model, scenes, tmp_path):
    picked, seen = [], {kind: 0 for kind in GUARDS}
    for q in read_questions(scenes / "questions.jsonl"):
        if q["type"] in seen and seen[q["type"]] < PER_TYPE:
            seen[q["type"]] += 1
            picked.append(q)
    data = scenes / "guard.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in picked))
    run_vqa(data, tmp_path / "pred.jsonl", model=fp32_model, max_new_tokens=40)
    result = score_files(data, tmp_path / "pred.jsonl")
    for kind, floor in GUARDS.items():
        assert result[kind]["accuracy"] >= floor, (kind, result[kind])


@pytest.mark.weights
def test_zooming_in_finds_small_objects_better(fp32_model, scenes):
    """Boxes of small objects, answered on the whole image and again with `zoom` (a crop)."""
    small = [q for q in read_questions(scenes / "questions.jsonl")
             if q["type"] == "rec" and len(boxes := parse_boxes(q["answer"])) == 1
             and box_side(boxes[0]) < 0.2][:SMALL_OBJECTS]
    assert len(small) == SMALL_OBJECTS
    ious = {False: [], True: []}
    for q in small:
        image = load_image(scenes / q["image"])
        for zoom in (False, True):
            reply = fp32_model.chat(image, q["question"], max_new_tokens=24, zoom=zoom)
            found = parse_boxes(reply)
            ious[zoom].append(iou(found[0], parse_boxes(q["answer"])[0]) if found else 0.0)
    first, zoomed = (sum(ious[z]) / len(small) for z in (False, True))
    assert zoomed > first, (first, zoomed, ious)


@pytest.mark.weights
def test_zooming_in_names_small_regions_better(fp32_model, scenes):
    """Small regions named on the whole image and again with `zoom` (asked on a crop)."""
    small = [q for q in read_questions(scenes / "questions.jsonl")
             if q["type"] == "reg" and len(boxes := parse_boxes(q["question"])) == 1
             and not parse_groundings(q["question"])[0].points
             and box_side(boxes[0]) < 0.2][:SMALL_REGIONS]
    assert len(small) == SMALL_REGIONS
    right = {False: 0, True: 0}
    for q in small:
        image = load_image(scenes / q["image"])
        for zoom in (False, True):
            reply = fp32_model.chat(image, q["question"], max_new_tokens=24, zoom=zoom)
            right[zoom] += normalize(reply) == normalize(q["answer"])
    assert right[True] > right[False], right


def zoomed_where_wrong(model, scenes, asks, most: int | None = None):
    """The spatial questions `asks` reads that `model` answers wrong (the first `most`), asked
    again with `zoom`: how many there are, how many the zoomed replies get right, the replies
    and the answers."""
    wrong = []
    for q in read_questions(scenes / "questions.jsonl"):
        if q["type"] == "spatial" and asks(q["question"]):
            image = load_image(scenes / q["image"])
            reply = model.chat(image, q["question"], max_new_tokens=24)
            if not answered_right(q, reply):
                wrong.append((image, q))
            if len(wrong) == most:
                break
    zoomed = [model.chat(image, q["question"], max_new_tokens=24, zoom=True) for image, q in wrong]
    right = sum(answered_right(q, reply) for (_, q), reply in zip(wrong, zoomed, strict=True))
    return len(wrong), right, zoomed, [q["answer"] for _, q in wrong]


@pytest.mark.weights
def test_zooming_in_answers_where_one_object_is_against_another(fp32_model, scenes):
    """The first questions of where one object is against another that the default answers wrong,
    asked again with `zoom`, which answers them from both objects' boxes."""
    wrong, right, zoomed, answers = zoomed_where_wrong(fp32_model, scenes, asked_relation,
                                                       RELATIONS)
    assert wrong == RELATIONS
    assert right >= RELATIONS - 1, (zoomed, answers)


@pytest.mark.weights
def test_zooming_in_answers_which_object_is_the_smallest_or_largest(fp32_model, scenes):
    """The questions of which object is the smallest or largest that the default answers wrong,
    asked again with `zoom`, which answers them from a description's boxes."""
    wrong, right, zoomed, answers = zoomed_where_wrong(fp32_model, scenes, asked_size)
    assert wrong == SIZES
    assert right >= 1, (zoomed, answers)


@pytest.mark.weights
def test_zooming_in_boxes_descriptions_better(fp32_model, scenes):
    """Grounded descriptions, each box checked and looked at again with `zoom`: more of their
    boxes right, and no more boxes given."""
    described = [q for q in read_questions(scenes / "questions.jsonl")
                 if q["type"] == "gcap"][:DESCRIPTIONS]
    given, right = {False: 0, True: 0}, {False: 0, True: 0}
    for q in described:
        image = load_image(scenes / q["image"])
        for zoom in (False, True):
            boxes = parse_boxes(fp32_model.chat(image, q["question"], max_new_tokens=128,
                                                 zoom=zoom))
            given[zoom] += len(boxes)
            right[zoom] += match_boxes(boxes, parse_boxes(q["answer"]))
    assert right[True] > right[False] and given[True] <= given[False], (right, given)


@pytest.mark.weights
def test_zoom_says_an_object_the_scene_does_not_hold_is_not_there(fp32_model, scenes):
    plurals = {c.name: c.plural for c in vocabulary()}
    rng = random.Random(0)
    said = {"find": [], "count": []}
    for path, objects in list(read_objects(scenes / "train.jsonl").items())[:ABSENT]:
        held = {o["name"] for o in objects}
        name = rng.choice([n for n in plurals if not any(n in h or h in n for h in held)])
        image = load_image(path)
        find = fp32_model.chat(image, f"Where is the {name}?", max_new_tokens=24, zoom=True)
        count = fp32_model.chat(image, f"How many {plurals[name]} are there?",
                                max_new_tokens=24, zoom=True)
        said["find"].append(find == f"There is no {name} in the image.")
        said["count"].append(count == f"There are no {plurals[name]} in the image.")
    assert sum(said["find"]) >= ABSENT - 2 and sum(said["count"]) >= ABSENT - 2, said


@pytest.mark.weights
def test_an_answer_does_not_depend_on_the_questions_asked_before(default_model, tmp_path):
    """Held-out scene 2 of seed 99: its counting question was once answered 'There are 2
    butterflies.' after the question before it and 'There is 1 butterfly.' when asked first."""
    write_dataset(tmp_path, 3, seed=99)
    questions = [q for q in read_questions(tmp_path / "questions.jsonl")
                 if q["id"].startswith("000002")]
    image = load_image(tmp_path / questions[0]["image"])
    in_turn = [default_model.chat(image, q["question"], max_new_tokens=40) for q in questions]
    alone = []
    for q in questions:
        default_model.reset()
        alone.append(default_model.chat(image, q["question"], max_new_tokens=40))
    assert in_turn == alone
