"""Batch VQA and its scoring: exact metrics on hand-made answers, resumable runs, the CLI."""

import codecs
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cogvlm_lite.evaluate import (
    answered_right,
    baseline_predictions,
    read_jsonl,
    read_predictions,
    read_questions,
    run_vqa,
    score,
    score_files,
)

BOX = "[[100,100,300,300]]"
MULTI = "[[100,100,200,200;500,500,600,600;700,100,800,200]]"
GCAP = ("A dog [[100,100,200,200]], two apples [[300,300,400,400;500,500,600,600]] "
        "and a car [[700,700,800,800]].")


def q(qid, kind, answer):
    return {"id": qid, "image": "images/0.png", "question": "?", "answer": answer, "type": kind}


QUESTIONS = [
    q("rec-near", "rec", BOX),
    q("rec-shifted", "rec", BOX),
    q("rec-merged", "rec", BOX),
    q("rec-multi", "rec", MULTI),
    q("rec-missing", "rec", BOX),
    q("count-word", "count", "There are 3 dogs."),
    q("count-wrong", "count", "There is 1 cat."),
    q("count-bare", "count", "There are 2 apples."),
    q("exist-yes", "exist", "Yes."),
    q("exist-no", "exist", "No."),
    q("reg-ok", "reg", "A dog."),
    q("reg-wrong", "reg", "A red apple."),
    q("spatial-name", "spatial", "The dog."),
    q("spatial-yes", "spatial", "Yes."),
    q("spatial-no", "spatial", "No."),
    q("gcap-partial", "gcap", GCAP),
    q("gcap-exact", "gcap", "A cup [[100,100,300,300]]."),
    q("caption", "caption", "A dog and a cat."),
    q("ocr", "ocr", "Hello!"),
]

PREDICTIONS = {
    "rec-near": "[[102,98,303,301]]",  # off by a few units: correct
    "rec-shifted": "[[186,100,386,300]]",  # IoU = 0.114 / 0.286 ~ 0.40: wrong
    "rec-merged": "[[100,100,200,300;200,100,300,300]]",  # encloses the reference: correct
    # two of three boxes found, one wrong extra; the enclosing boxes overlap with IoU 0.72
    "rec-multi": "[[101,101,201,201;505,500,605,600;300,300,400,400]]",
    "count-word": "There are three dogs.",
    "count-wrong": "There are 2 cats.",
    "count-bare": "2",
    "exist-yes": "yes, there is a dog",
    "exist-no": "Yes.",
    "reg-ok": "the dog",
    "reg-wrong": "An apple.",
    "spatial-name": "dog",
    "spatial-yes": "Yes, it is.",
    "spatial-no": "yes",
    # one apple missed, a cat too many, the car called a truck
    "gcap-partial": "A dog [[101,100,200,200]], two apples [[300,300,400,400]], a truck "
                    "[[700,700,800,800]] and a cat [[000,000,050,050]].",
    "gcap-exact": "A cup [[100,100,300,300]].",
    "caption": "a dog and a cat",
    "ocr": "hello",
    "not-a-question": "whatever",
}

EXPECTED = {
    "rec": {"n": 5, "correct": 3, "missing": 1, "accuracy": 3 / 5, "acc@0.5": 3 / 5, "n_multi": 1,
            "multi_precision": 2 / 3, "multi_recall": 2 / 3,
            # BOX's longer side is 0.2 of the image (medium); MULTI's merged box 0.7 (large)
            "n_small": 0, "acc_small": None, "n_medium": 4, "acc_medium": 2 / 4,
            "n_large": 1, "acc_large": 1.0,
            # every answered box is centred on its reference; "rec-near"'s is 1% larger a side,
            # "rec-multi"'s merged box sqrt(504 * 499 / (700 * 500)) = 0.848 as large a side
            "centred": 4 / 5, "scale": pytest.approx(1.0),
            "centred_small": None, "scale_small": None,
            "centred_medium": 3 / 4, "scale_medium": pytest.approx(1.0),
            "centred_large": 1.0, "scale_large": pytest.approx(0.8477, abs=1e-4)},
    "reg": {"n": 2, "correct": 1, "missing": 0, "accuracy": 1 / 2},
    "count": {"n": 3, "correct": 2, "missing": 0, "accuracy": 2 / 3,
              "n_one": 1, "acc_one": 0.0, "n_several": 2, "acc_several": 1.0},
    "exist": {"n": 2, "correct": 1, "missing": 0, "accuracy": 1 / 2},
    "spatial": {"n": 3, "correct": 2, "missing": 0, "accuracy": 2 / 3},
    "gcap": {"n": 2, "correct": 1, "missing": 0, "accuracy": 1 / 2, "box_precision": 4 / 5,
             "box_recall": 4 / 5, "named_precision": 3 / 5, "named_recall": 3 / 5},
    "caption": {"n": 1, "correct": 1, "missing": 0, "accuracy": 1.0},
    "ocr": {"n": 1, "correct": 1, "missing": 0, "accuracy": 1.0},
    "overall": {"n": 19, "correct": 12, "accuracy": 12 / 19},
    "missing": 1,
    "unknown_ids": 1,
}


def predictions():
    return [{"id": k, "prediction": v} for k, v in PREDICTIONS.items()]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- scoring


def test_perfect_predictions_score_one_everywhere():
    result = score(QUESTIONS, [{"id": x["id"], "prediction": x["answer"]} for x in QUESTIONS])
    assert result["missing"] == 0 and result["unknown_ids"] == 0
    for kind, entry in result.items():
        if isinstance(entry, dict):
            rates = {k: v for k, v in entry.items()
                     if not (k.startswith("n_") or k in ("n", "correct", "missing"))}
            assert rates and all(v in (1.0, None) for v in rates.values()), (kind, entry)
            empty = {k for k, v in rates.items() if v is None}
            assert empty <= {"acc_small", "centred_small", "scale_small"}, (kind, empty)


@pytest.mark.parametrize("kind, answer, prediction, right", [
    ("spatial", "No.", "No. The cat [[100,100,300,300]] is higher up, the dog [[100,600,300,900]] "
     "lower down.", True),
    ("spatial", "Yes.", "No. The cat [[100,100,300,300]] is higher up.", False),
    ("spatial", "The cat.", "The cat [[100,100,300,300]].", True),
    ("spatial", "The cat.", "The dog [[100,100,300,300]].", False),
    ("rec", BOX, "It is here: [[110,100,300,310]].", True),
    ("count", "There are 3 cats.", "Three.", True),
])
def test_answered_right_is_what_score_counts(kind, answer, prediction, right):
    question = q("a", kind, answer)
    assert answered_right(question, prediction) is right
    assert score([question], [{"id": "a", "prediction": prediction}])["overall"]["correct"] == right


def test_mixed_predictions_give_exact_numbers():
    result = score(QUESTIONS, predictions())
    assert result == EXPECTED
    assert list(result)[:6] == ["rec", "reg", "count", "exist", "spatial", "gcap"]


def test_rates_without_items_are_null_and_empty_answers_are_wrong():
    result = score([q("a", "rec", BOX), q("b", "gcap", GCAP)], [])
    assert result["rec"]["multi_precision"] is None and result["rec"]["multi_recall"] is None
    assert result["gcap"]["box_precision"] == 0.0 and result["gcap"]["box_recall"] == 0.0
    assert result["overall"] == {"n": 2, "correct": 0, "accuracy": 0.0}
    assert result["missing"] == 2


def test_rec_accuracy_is_split_by_reference_box_size():
    questions = [q("tiny", "rec", "[[100,100,150,199]]"), q("small", "rec", "[[100,100,299,250]]"),
                 q("mid", "rec", "[[100,100,399,150]]"), q("big", "rec", "[[000,000,300,100]]"),
                 q("apart", "rec", "[[000,000,050,050;900,900,950,950]]")]
    answers = {"tiny": "[[100,100,150,199]]", "small": "[[500,500,600,600]]",
               "mid": "[[100,100,399,150]]", "big": "[[000,000,300,100]]",
               "apart": "[[000,000,050,050]]"}
    rec = score(questions, [{"id": k, "prediction": v} for k, v in answers.items()])["rec"]
    assert (rec["n_small"], rec["acc_small"]) == (2, 1 / 2)
    assert (rec["n_medium"], rec["acc_medium"]) == (1, 1.0)
    assert (rec["n_large"], rec["acc_large"]) == (2, 1 / 2)  # "apart" merges to a large box


def test_rec_tells_misplaced_boxes_from_missized_ones():
    questions = [q("big", "rec", "[[100,100,200,200]]"), q("small", "rec", "[[400,400,800,800]]"),
                 q("away", "rec", "[[100,100,200,200]]"), q("none", "rec", "[[100,100,200,200]]")]
    answers = {"big": "[[050,050,250,250]]",  # centred, twice as wide and high
               "small": "[[550,550,650,650]]",  # centred, a quarter as wide and high
               "away": "[[700,700,800,800]]", "none": "I cannot see it."}
    rec = score(questions, [{"id": k, "prediction": v} for k, v in answers.items()])["rec"]
    assert rec["centred"] == 2 / 4
    assert rec["scale"] == pytest.approx((2.0 + 0.25) / 2)
    assert (rec["centred_small"], rec["scale_small"]) == (1 / 3, pytest.approx(2.0))
    assert (rec["centred_large"], rec["scale_large"]) == (1.0, pytest.approx(0.25))
    assert (rec["centred_medium"], rec["scale_medium"]) == (None, None)


def test_count_accuracy_is_split_by_one_and_several():
    questions = [q("one", "count", "There is 1 dog."), q("two", "count", "There are 2 cats."),
                 q("five", "count", "There are five objects."), q("none", "count", "None.")]
    answers = {"one": "There is 1 dog.", "two": "There is 1 cat.", "five": "There are 5 objects.",
               "none": "None."}
    count = score(questions, [{"id": k, "prediction": v} for k, v in answers.items()])["count"]
    assert count["correct"] == 3  # "none" is matched as text, in neither group
    assert (count["n_one"], count["acc_one"]) == (1, 1.0)
    assert (count["n_several"], count["acc_several"]) == (2, 1 / 2)
    empty = score([q("one", "count", "There is 1 dog.")], [])["count"]
    assert (empty["n_several"], empty["acc_several"]) == (0, None)


@pytest.mark.parametrize("question, message", [
    ({"id": "x", "image": "a.png", "question": "?"}, "'x' has no reference 'answer'"),
    ({"id": "x", "image": "a.png", "question": "?", "answer": "No.", "type": 5}, "'type' should be a string"),
    ({"id": "x", "image": "a.png", "question": "?", "answer": "No.", "type": ["rec"]}, "got list"),
])
def test_the_baseline_needs_reference_answers_too(question, message):
    with pytest.raises(ValueError, match=message):
        baseline_predictions([q("y", "exist", "Yes."), question])
    with pytest.raises(ValueError, match=message):
        score([q("y", "exist", "Yes."), question], [])


def test_scoring_needs_reference_answers():
    with pytest.raises(ValueError, match="'x' has no reference 'answer'"):
        score([{"id": "x", "image": "a.png", "question": "?"}], [])
    with pytest.raises(ValueError, match="no .*box in its reference"):
        score([q("y", "rec", "The dog.")], [])


# ---------------------------------------------------------------- reading


def test_read_jsonl_names_the_bad_line_or_skips_and_counts_it(tmp_path, caplog):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "image": "x.png", "question": "?"}\n\n{"id": "b", oops\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"q\.jsonl, line 3: not valid JSON"):
        read_jsonl(path)
    with caplog.at_level(logging.WARNING, logger="cogvlm_lite.evaluate"):
        records = read_jsonl(path, skip_bad=True)
    assert [r["id"] for r in records] == ["a"]
    assert "skipped 2 malformed line(s): 3, 4" in caplog.text


def test_read_jsonl_reads_a_file_saved_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "image": "x.png", "question": "?"}\r\n')
    assert read_questions(path) == [{"id": "a", "image": "x.png", "question": "?"}]


def test_questions_need_their_fields_and_unique_ids(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "image": "x.png"}])
    with pytest.raises(ValueError, match=r"line 1: missing the 'question' field"):
        read_questions(path)
    path = write_jsonl(tmp_path / "q.jsonl", [q("a", "rec", BOX), q("b", "rec", BOX), q("a", "rec", BOX)])
    with pytest.raises(ValueError, match=r"line 3: id 'a' repeats line 1"):
        read_questions(path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no questions"):
        read_questions(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl not found"):
        read_questions(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="is a folder; give the JSONL file in it"):
        read_predictions(tmp_path)


# ---------------------------------------------------------------- answering


@pytest.fixture
def vqa_data(tmp_path):
    (tmp_path / "images").mkdir()
    for name, shade in (("a", 30), ("b", 220)):
        Image.fromarray(np.full((32, 40, 3), shade, np.uint8)).save(tmp_path / "images" / f"{name}.png")
    items = [
        {"id": "q0", "image": "images/a.png", "question": "Where is the dog?", "answer": BOX, "type": "rec"},
        {"id": "q1", "image": "images/b.png", "question": "How many cats are there?",
         "answer": "There are 2 cats.", "type": "count"},
        {"id": "q2", "image": "images/a.png", "question": "Is there a dog?", "answer": "Yes.",
         "type": "exist"},
        {"id": "q3", "image": "images/b.png", "question": "Describe the image.", "answer": "A cat.",
         "type": "caption"},
    ]
    return write_jsonl(tmp_path / "questions.jsonl", items)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("tail", [b'{"id": "q', b'{"id": "q2", "predic\n'], ids=["half", "bad-json"])
def test_run_vqa_answers_resumes_and_repairs_a_cut_line(tiny_model, vqa_data, tmp_path, monkeypatch, tail):
    asked = []
    chat = tiny_model.chat

    def spy(image, question, **kwargs):
        asked.append(question)
        return chat(image, question, **kwargs)

    monkeypatch.setattr(tiny_model, "chat", spy)
    out = tmp_path / "preds" / "p.jsonl"
    summary = run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=4)
    assert summary["answered"] == 4 and summary["skipped"] == 0 and summary["questions"] == 4
    # grouped by image: both questions about a.png first
    assert asked == ["Where is the dog?", "Is there a dog?", "How many cats are there?",
                     "Describe the image."]
    first = lines(out)
    assert sorted(p["id"] for p in first) == ["q0", "q1", "q2", "q3"]
    assert all(isinstance(p["prediction"], str) for p in first)

    # Nothing left to do: the model is not even loaded (this checkpoint does not exist).
    again = run_vqa(vqa_data, out, checkpoint=tmp_path / "no-such-checkpoint")
    assert again["answered"] == 0 and again["skipped"] == 4

    # A run stopped while writing: two answers lost, a cut line at the end.
    kept = out.read_bytes().splitlines(keepends=True)[:2]
    out.write_bytes(b"".join(kept) + tail)
    resumed = run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=4)
    assert resumed["answered"] == 2 and resumed["skipped"] == 2
    assert sorted(p["id"] for p in read_predictions(out)) == ["q0", "q1", "q2", "q3"]
    assert out.read_bytes().endswith(b"\n")


def test_run_vqa_limit_takes_the_first_questions(tiny_model, vqa_data, tmp_path):
    out = tmp_path / "p.jsonl"
    assert run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=2, limit=2)["answered"] == 2
    assert [p["id"] for p in lines(out)] == ["q0", "q1"]
    assert run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=2, limit=2)["answered"] == 0


def test_run_vqa_missing_image_fails_before_loading_a_model(vqa_data, tmp_path):
    (tmp_path / "images" / "b.png").unlink()
    out = tmp_path / "p.jsonl"
    with pytest.raises(ValueError, match=r"question 'q1': image file .*b\.png.* not found"):
        run_vqa(vqa_data, out, checkpoint=tmp_path / "no-such-checkpoint")
    assert not out.exists()


def test_run_vqa_refuses_an_out_file_that_holds_no_predictions(vqa_data, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_bytes(vqa_data.read_bytes())
    before = other.read_bytes()
    with pytest.raises(ValueError, match=r"other\.jsonl is not a predictions file \(line 1: "
                                         r"missing the 'prediction' field\)"):
        run_vqa(vqa_data, other, checkpoint=tmp_path / "no-such-checkpoint")
    assert other.read_bytes() == before
    with pytest.raises(ValueError, match="is a folder; name a file"):
        run_vqa(vqa_data, tmp_path / "images", checkpoint=tmp_path / "no-such-checkpoint")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"cannot write predictions to .*afile/p\.jsonl"):
        run_vqa(vqa_data, tmp_path / "afile" / "p.jsonl", checkpoint=tmp_path / "no-such-checkpoint")


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8], ids=["plain", "with-bom"])
def test_run_vqa_keeps_a_whole_last_line_without_its_newline(tiny_model, vqa_data, tmp_path, bom):
    out = tmp_path / "p.jsonl"
    out.write_bytes(bom + b'{"id": "q0", "prediction": "kept"}')
    assert run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=2)["answered"] == 3
    assert read_predictions(out)[0] == {"id": "q0", "prediction": "kept"}
    out.write_bytes(bom + b'{"id": "q0", "prediction": "kept"}\n{"id": "q1", "pred')  # a cut line
    assert run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=2)["answered"] == 3
    assert out.read_bytes().startswith(bom + b'{"id": "q0", "prediction": "kept"}\n{"id": "q1", "prediction"')


@pytest.mark.parametrize("damage", ["text", "folder"])
def test_run_vqa_reads_every_image_before_loading_a_model(vqa_data, tmp_path, damage):
    image = tmp_path / "images" / "b.png"
    image.unlink()
    if damage == "text":
        image.write_text("not a picture")
    else:
        image.mkdir()
    out = tmp_path / "p.jsonl"
    message = "is a folder, not an image file" if damage == "folder" else "b.png"
    with pytest.raises(ValueError, match=rf"question 'q1': .*{message}"):
        run_vqa(vqa_data, out, checkpoint=tmp_path / "no-such-checkpoint")
    assert not out.exists()


def test_run_vqa_checks_every_question_before_answering_any(tiny_model, vqa_data, tmp_path):
    items = [json.loads(line) for line in vqa_data.read_text().splitlines()]
    items[3]["question"] = "What is at [[200,300,2000,900]]?"
    write_jsonl(vqa_data, items)
    out = tmp_path / "p.jsonl"
    with pytest.raises(ValueError, match=r"question 'q3': \[\[200,300,2000,900\]\] is not a region"):
        run_vqa(vqa_data, out, checkpoint=tmp_path / "no-such-checkpoint")  # before loading a model
    assert not out.exists()
    items[3]["question"] = "Why? " * 600  # longer than the tiny model's 512-token context
    write_jsonl(vqa_data, items)
    with pytest.raises(ValueError, match=r"question 'q3': the conversation is too long"):
        run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=4)
    assert not out.exists()  # nothing answered: not three answers, then a stop


def test_run_vqa_refuses_an_out_file_another_run_is_writing(tiny_model, vqa_data, tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text('{"id": "q0", "prediction": "kept"}\n{"id": "q1", "predic')
    before = out.read_bytes()
    holder = "from cogvlm_lite.model import exclusive; import sys\nwith exclusive(sys.argv[1], 'held'):\n" \
             "    print('held', flush=True); sys.stdin.read()"  # as a run answering into it holds it
    other = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        with pytest.raises(ValueError, match=r"another vqa run is writing .*p\.jsonl; wait for it"):
            run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=2)
    finally:
        other.communicate("", timeout=30)
    assert out.read_bytes() == before  # its half-written last line is the other run's to finish
    assert run_vqa(vqa_data, out, model=tiny_model, max_new_tokens=2)["answered"] == 3


# ---------------------------------------------------------------- command line


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cogvlm_lite", *args], capture_output=True, text=True,
                          timeout=120)


def test_eval_cli_prints_the_metrics(tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    pred = write_jsonl(tmp_path / "p.jsonl", predictions())
    out = cli("eval", "--data", str(data), "--pred", str(pred))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == EXPECTED
    assert score_files(data, pred) == EXPECTED

    with open(pred, "a") as f:
        f.write('{"id": "cut", "predic')
    out = cli("eval", "--data", str(data), "--pred", str(pred))
    assert out.returncode == 1
    assert f"{pred}, line {len(PREDICTIONS) + 1}: not valid JSON" in out.stderr
    assert "Traceback" not in out.stderr

    (tmp_path / "other.jsonl").write_text('{"id": "elsewhere", "prediction": "No."}\n')
    out = cli("eval", "--data", str(data), "--pred", str(tmp_path / "other.jsonl"))
    assert out.returncode == 0 and json.loads(out.stdout)["unknown_ids"] == 1
    assert f"none of the {len(QUESTIONS)} questions has a prediction" in out.stderr


def test_eval_cli_limit_scores_the_first_questions(tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", QUESTIONS)
    first = QUESTIONS[:2]
    pred = write_jsonl(tmp_path / "p.jsonl", [p for p in predictions()
                                              if p["id"] in {q["id"] for q in first}])
    out = cli("eval", "--data", str(data), "--pred", str(pred), "--limit", "2")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == score(first, read_predictions(pred))
    assert json.loads(out.stdout)["overall"]["n"] == 2
    out = cli("eval", "--data", str(data), "--baseline", "--limit", "2")
    assert json.loads(out.stdout) == score(first, baseline_predictions(first))


def test_vqa_cli_writes_predictions(tiny_model, vqa_data, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    pred = tmp_path / "p.jsonl"
    out = cli("vqa", "--data", str(vqa_data), "--out", str(pred), "--checkpoint", str(tmp_path / "ckpt"),
              "--device", "cpu", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert sorted(p["id"] for p in lines(pred)) == ["q0", "q1", "q2", "q3"]


def test_trivial_baseline_answers():
    from cogvlm_lite.evaluate import CENTRE_BOX, baseline_predictions

    questions = [
        {"id": "a", "image": "x.png", "question": "Where is the dog?", "answer": "[[000,000,100,100]]",
         "type": "rec"},
        {"id": "b", "image": "x.png", "question": "Is there a cat?", "answer": "No.", "type": "exist"},
        {"id": "c", "image": "x.png", "question": "Is there a dog?", "answer": "No.", "type": "exist"},
        {"id": "d", "image": "x.png", "question": "Is there a cow?", "answer": "Yes.", "type": "exist"},
    ]
    predictions = {p["id"]: p["prediction"] for p in baseline_predictions(questions)}
    assert predictions == {"a": CENTRE_BOX, "b": "No.", "c": "No.", "d": "No."}
    scores = score(questions, baseline_predictions(questions))
    assert scores["exist"]["accuracy"] == pytest.approx(2 / 3) and scores["rec"]["accuracy"] == 0.0
