"""Batch grounded VQA and its scoring: `run_vqa` answers a questions file, `score` grades the answers.

Questions are JSONL, one ``{"id", "image", "question", "answer", "type"}`` object a line, image
paths relative to the file (what ``cogvlm-lite scenes`` writes as ``questions.jsonl``).
Predictions are JSONL too, one ``{"id", "prediction"}`` a line. `run_vqa` appends each answer
as soon as it has it, so a stopped run keeps what it answered and a re-run only answers the rest.

Scoring follows CogVLM's protocol for grounding and simple normalised matching for short answers.
Text is normalised by removing ``[[...]]`` groups, lowercasing, turning punctuation into spaces
and dropping the articles a/an/the. Box matches need IoU > 0.5 (strictly), everywhere.

- ``rec`` (referring expression -> box): the answer's boxes are merged into their enclosing box,
  and so are the reference's; correct when their IoU > 0.5 (Acc@0.5). For references with several
  boxes ("all the dogs") the unmerged boxes are also matched one to one (greedy by IoU) and
  pooled into ``multi_precision`` and ``multi_recall``. Acc@0.5 is also split by the size of the
  (merged) reference box's longer side in the 0-999 grid: ``small`` under 200 (a fifth of the
  image), ``medium`` under 300, ``large`` from 300 on; ``n_small``, ``n_medium``, ``n_large``
  count them. Two more figures tell a misplaced box from a mis-sized one, overall and by size:
  ``centred`` is the share of answers whose (merged) box has its centre inside the reference
  box, and ``scale`` the median, over those, of the square root of the answer box's area over the
  reference's: above 1 the boxes are too large, below 1 too small.
- ``reg`` (region -> name), ``spatial``, ``caption`` and any other type: normalised exact match;
  a ``spatial`` reference that is just "Yes." or "No." is scored like ``exist``.
- ``count``: the first number in the answer (digits, or a word from zero to twenty) equals the
  reference's; accuracy is also split by that number: ``acc_one`` where it is 1, ``acc_several``
  where it is more (``n_one``, ``n_several`` count them); "how many dogs?" with one dog in the
  picture asks less than with three.
- ``exist``: the first "yes" or "no" of the answer equals the reference's.
- ``gcap`` (grounded description): every box of every group is matched one to one with the
  reference's (greedy by IoU), pooled over all answers into ``box_precision``/``box_recall``;
  ``named_precision``/``named_recall`` also require the phrase before the box to name the same
  thing ("two apples" and "2 apples" both name "apples"). An answer is correct when all its
  boxes and names match the reference's, with nothing extra and nothing missed.

`score` returns a dict with stable keys::

    {
      "<type>": {"n", "correct", "missing", "accuracy"},   # one entry per type present
      "rec":  {... also "acc@0.5" (= accuracy), "n_multi", "multi_precision", "multi_recall",
               "n_small", "acc_small", "n_medium", "acc_medium", "n_large", "acc_large",
               "centred", "scale", and "centred_<size>", "scale_<size>" for each size},
      "count": {... also "n_one", "acc_one", "n_several", "acc_several"},
      "gcap": {... also "box_precision", "box_recall", "named_precision", "named_recall"},
      "overall": {"n", "correct", "accuracy"},             # over all questions
      "missing": int,       # questions with no prediction (scored as wrong)
      "unknown_ids": int,   # predictions whose id is not a question (ignored)
    }

Types come in the order rec, reg, count, exist, spatial, gcap, caption, then others by name;
a question without a type is scored as ``other``. A rate whose items are all absent
(``multi_*`` with no multi-box reference, ``acc_small`` with no small box, ``scale`` with no
centred box) is ``null``;
precision over no predicted box is 0.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .grounding import (
    Box,
    box_area,
    box_centre,
    box_side,
    check_regions,
    iou,
    merge_boxes,
    parse_boxes,
    parse_groundings,
)

log = logging.getLogger(__name__)

TASK_TYPES = ("rec", "reg", "count", "exist", "spatial", "gcap", "caption")  # scenes' questions
IOU_THRESHOLD = 0.5  # a box matches when IoU > this
SIZES = (("small", 200), ("medium", 300), ("large", None))  # rec: reference box's longer side
COUNT_GROUPS = ("one", "several")  # count: reference number 1, or more

_GROUP = re.compile(r"\[\[[^\[\]]*\]\]")
_NOT_WORD = re.compile(r"[^\w\s]|_")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    word: i
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


# ---------------------------------------------------------------------------------------------
# Reading JSONL


def read_jsonl(
    path: str | os.PathLike,
    *,
    skip_bad: bool = False,
    required: Sequence[str] = (),
    unique: str | None = None,
) -> list[dict]:
    """The JSON objects of a JSONL file, one a line; blank lines are ignored.

    A line that is not a JSON object, or lacks one of the `required` fields (strings; an integer
    is also accepted for ``id``), raises ValueError naming the file and line. With `skip_bad`,
    such lines are skipped and their count logged as a warning instead. With `unique`, that field
    must not repeat (checked as text, so ``1`` and ``"1"`` are the same id).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; check the path") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; give the JSONL file in it") from None
    data = data.removeprefix(codecs.BOM_UTF8)  # as some editors save UTF-8
    records: list[dict] = []
    bad: list[int] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        record, problem = _parse_line(raw, required)
        if record is None:
            if not skip_bad:
                raise ValueError(
                    f"{path}, line {lineno}: {problem}; fix or delete that line "
                    "(each line must be one JSON object)"
                )
            bad.append(lineno)
            continue
        if unique is not None and unique in record:
            key = str(record[unique])
            if key in seen:
                raise ValueError(
                    f"{path}, line {lineno}: {unique} {key!r} repeats line {seen[key]}; "
                    f"every {unique} must be unique, so rename or delete one of them"
                )
            seen[key] = lineno
        records.append(record)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        log.warning("%s: skipped %d malformed line(s): %s", path, len(bad), shown)
    return records


def _parse_line(raw: bytes, required: Sequence[str]) -> tuple[dict | None, str]:
    """The line's object and "", or None and what is wrong with the line."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    for name in required:
        value = record.get(name)
        if value is None:
            return None, f"missing the {name!r} field"
        ok = isinstance(value, str) or (name == "id" and isinstance(value, int)
                                        and not isinstance(value, bool))
        if not ok:
            return None, f"field {name!r} should be a string, got {type(value).__name__}"
    return record, ""


def read_questions(path: str | os.PathLike, *, skip_bad: bool = False) -> list[dict]:
    """VQA questions: each needs ``id``, ``image`` and ``question``, ids unique, at least one."""
    questions = read_jsonl(path, skip_bad=skip_bad, required=("id", "image", "question"), unique="id")
    if not questions:
        raise ValueError(f"{path} holds no questions; write one JSON object a line "
                         '({"id", "image", "question", ...})')
    return questions


def read_predictions(path: str | os.PathLike, *, skip_bad: bool = False) -> list[dict]:
    """VQA predictions: each needs ``id`` and ``prediction``, ids unique."""
    return read_jsonl(path, skip_bad=skip_bad, required=("id", "prediction"), unique="id")


# ---------------------------------------------------------------------------------------------
# Answering


def run_vqa(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    decode: str = "exact",
    max_new_tokens: int = 128,
    limit: int | None = None,
    zoom: bool = False,
    model: Any = None,
) -> dict:
    """Answer the questions in `data` (greedy) and append ``{"id", "prediction"}`` lines to `out`.

    Ids already in `out` are skipped, so a stopped run resumes where it left off; a half-written
    last line (from a run that was killed) is removed first. `limit` restricts the run to the
    first `limit` questions of `data`; `zoom` looks again at boxes (small ones on a crop,
    every look also mirrored) and at a small region asked about (`zoom.zoom_in`). Questions
    are answered grouped by image, so the model reuses its encoding of an image. The model is
    `model` if given, else loaded from `checkpoint` (default: the embedded model) onto
    `device`, and only when there is work to do.
    Every image is read and every region a question names checked before the model loads, and
    every question checked to fit the context before the first is answered; a missing or
    unreadable image, a malformed region or an overlong question raises ValueError naming the
    question. One run writes `out` at a time: another run on it raises ValueError at once.
    Returns ``{"questions", "answered", "skipped", "seconds", "out"}``.
    """
    from tqdm import tqdm

    from .images import load_image
    from .model import exclusive

    data, out = Path(data), Path(out)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 question, got {limit}")
    if out.exists() and out.resolve() == data.resolve():
        raise ValueError(f"--out {out} is the questions file; write predictions to another file")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name a file, such as {out / 'predictions.jsonl'}")
    questions = read_questions(data)
    if limit is not None:
        questions = questions[:limit]
    busy = f"another vqa run is writing {out}; wait for it to finish, or name another --out"
    start = time.perf_counter()
    answered = 0
    with contextlib.ExitStack() as held:
        locked = out.exists()
        if locked:  # before its last line may be cut: a run writing it may be midway
            held.enter_context(exclusive(out, busy))
        done = _done_ids(out)
        todo = [q for q in questions if str(q["id"]) not in done]
        # Grouped by image in order of first appearance, so consecutive questions share an image.
        by_image: dict[Path, list[dict]] = {}
        for q in todo:
            _check_question(q)
            image = data.parent / q["image"]
            if image not in by_image:
                _check_image(image, q["id"], data)
            by_image.setdefault(image, []).append(q)
        if todo:
            cannot_write = (f"cannot write predictions to {out} ({{}}); "
                            "name a file in a folder you can write to")
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(cannot_write.format(e.strerror)) from None
            if not os.access(out if out.exists() else out.parent, os.W_OK):
                raise ValueError(cannot_write.format("permission denied"))
            if model is None:
                from .model import load_model

                model = load_model(checkpoint, device=device, decode=decode)
            for q in todo:  # every question fits the context, before the first is answered
                _check_question(q, model, max_new_tokens)
            try:
                f = held.enter_context(open(out, "ab"))
            except OSError as e:
                raise ValueError(cannot_write.format(e.strerror)) from None
            if not locked:
                held.enter_context(exclusive(out, busy))
                done = _done_ids(out)  # a run that started beside this one may have finished
            bar = tqdm(total=len(todo), desc="vqa", unit="q", dynamic_ncols=True)
            for path, group in by_image.items():
                image = load_image(path)
                for q in group:
                    if str(q["id"]) in done:
                        continue
                    try:
                        reply = model.chat(image, q["question"], history=[],
                                           max_new_tokens=max_new_tokens, temperature=0.0, zoom=zoom)
                    except ValueError as e:
                        raise ValueError(f"question {q['id']!r}: {e}") from e
                    line = json.dumps({"id": q["id"], "prediction": reply}, ensure_ascii=False) + "\n"
                    f.write(line.encode("utf-8"))  # one write of a whole line, then flush
                    f.flush()
                    answered += 1
                    bar.update(1)
            bar.close()
    return {
        "questions": len(questions),
        "answered": answered,
        "skipped": len(questions) - answered,
        "seconds": round(time.perf_counter() - start, 3),
        "out": str(out),
    }


def _check_question(q: dict, model: Any = None, max_new_tokens: int = 0) -> None:
    """Raise ValueError naming the question if it names a region that is not one or, with
    `model`, if it does not fit the model's context with room for `max_new_tokens`."""
    try:
        if model is None:
            check_regions(q["question"])
        else:
            model.encode_prompt(q["question"], image=True, max_new_tokens=max_new_tokens)
    except ValueError as e:
        raise ValueError(f"question {q['id']!r}: {e}") from None


def _check_image(path: Path, qid, data: Path) -> None:
    """Raise ValueError naming the question if `path` is not an image that can be answered."""
    from .images import load_image

    if not path.exists() or path.is_dir():
        what = "is a folder, not an image file" if path.is_dir() else "not found"
        raise ValueError(f"question {qid!r}: image file {str(path)!r} {what} "
                         f"(image paths are relative to {data}); add the file or fix the path")
    try:
        load_image(path)
    except ValueError as e:
        raise ValueError(f"question {qid!r}: {e}") from e


def _done_ids(out: Path) -> set[str]:
    """Ids already answered in `out`, after cutting off a half-written last line.

    `out` must be a predictions file: a file with any other complete line (a questions file
    named by mistake, say) is refused untouched.
    """
    if not out.exists():
        return set()
    data = out.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # as some editors save
    lines = data[bom:].split(b"\n")
    last = len(lines) - 1
    while last >= 0 and not lines[last].strip():
        last -= 1
    for lineno, raw in enumerate(lines[: last + 1], start=1):
        if not raw.strip():
            continue
        record, problem = _parse_line(raw, ("id", "prediction"))
        if record is not None:
            continue
        if lineno == last + 1 and problem.startswith(("not valid JSON", "not UTF-8")):
            keep = bom + sum(len(line) + 1 for line in lines[:last])
            log.warning("%s: removing an incomplete last line (%d bytes) left by an interrupted "
                        "run", out, len(data) - keep)
            with open(out, "r+b") as f:
                f.truncate(keep)
            break
        raise ValueError(f"--out {out} is not a predictions file (line {lineno}: {problem}); "
                         "name a new file, or one an earlier run of vqa wrote")
    else:
        if data and not data.endswith(b"\n"):
            with open(out, "ab") as f:  # a whole last line whose newline was not written
                f.write(b"\n")
    return {str(p["id"]) for p in read_predictions(out)}


# ---------------------------------------------------------------------------------------------
# Scoring


def normalize(text: str) -> str:
    """Text for matching: no ``[[...]]`` groups, lowercase, no punctuation or articles."""
    text = _NOT_WORD.sub(" ", _GROUP.sub(" ", text).lower())
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def first_number(text: str) -> int | None:
    """The first number in `text`, written in digits or as a word from zero to twenty."""
    for word in normalize(text).split():
        if word.isascii() and word.isdigit():
            return int(word)
        if word in _NUMBER_WORDS:
            return _NUMBER_WORDS[word]
    return None


def first_yes_no(text: str) -> str | None:
    """The first "yes" or "no" in `text`, or None."""
    for word in normalize(text).split():
        if word in ("yes", "no"):
            return word
    return None


def match_boxes(predicted: Sequence[Box], reference: Sequence[Box],
                allowed: Iterable[tuple[int, int]] | None = None) -> int:
    """How many boxes match one to one at IoU > 0.5, pairing the highest IoU first.

    `allowed`, when given, limits the candidate (predicted index, reference index) pairs.
    """
    pairs = allowed if allowed is not None else (
        (i, j) for i in range(len(predicted)) for j in range(len(reference)))
    scored = []
    for i, j in pairs:
        overlap = iou(predicted[i], reference[j])
        if overlap > IOU_THRESHOLD:
            scored.append((-overlap, i, j))
    used_p, used_r = set(), set()
    for _, i, j in sorted(scored):
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
    return len(used_p)


def without_count(words: list[str]) -> list[str]:
    """`words` without the numbers they start with ("two", "2"), keeping at least one word."""
    while len(words) > 1 and (words[0].isdigit() or words[0].lower() in _NUMBER_WORDS):
        words = words[1:]
    return words


def _name(phrase: str) -> str:
    """What a grounded phrase names: "two apples" and "2 apples" both give "apples"."""
    return " ".join(without_count(normalize(phrase).split()))


def _named_boxes(text: str) -> list[tuple[str, Box]]:
    return [(_name(g.phrase), box) for g in parse_groundings(text) for box in g.boxes]


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


class _Tally:
    """Counts, and values to take medians of, for one task type."""

    def __init__(self):
        self.n = self.correct = self.missing = 0
        self.counts: dict[str, int] = {}
        self.values: dict[str, list[float]] = {}

    def add(self, **counts: int) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def median(self, key: str) -> float | None:
        values = self.values.get(key)
        return statistics.median(values) if values else None


def _score_one(kind: str, qid: str, reference: str, prediction: str, tally: _Tally) -> bool:
    """Whether `prediction` answers correctly; adds box counts to `tally`."""
    if kind == "rec":
        ref_boxes = parse_boxes(reference)
        if not ref_boxes:
            raise ValueError(f"rec question {qid!r} has no [[x0,y0,x1,y1]] box in its reference "
                             "answer; fix its answer or give it another type")
        boxes = parse_boxes(prediction)
        if len(ref_boxes) > 1:
            tally.add(n_multi=1, multi_matched=match_boxes(boxes, ref_boxes),
                      multi_predicted=len(boxes), multi_reference=len(ref_boxes))
        reference_box = merge_boxes(ref_boxes)
        box = merge_boxes(boxes) if boxes else None
        right = box is not None and iou(box, reference_box) > IOU_THRESHOLD
        centred = box is not None and _centre_inside(box, reference_box)
        size = size_name(reference_box)
        tally.add(**{f"n_{size}": 1, f"correct_{size}": right, f"centred_{size}": centred})
        if centred and box_area(reference_box) > 0:
            scale = math.sqrt(box_area(box) / box_area(reference_box))
            for key in ("scale", f"scale_{size}"):
                tally.values.setdefault(key, []).append(scale)
        return right
    if kind == "gcap":
        ref = _named_boxes(reference)
        pred = _named_boxes(prediction)
        pred_boxes, ref_boxes = [b for _, b in pred], [b for _, b in ref]
        same_name = [(i, j) for i in range(len(pred)) for j in range(len(ref))
                     if pred[i][0] == ref[j][0]]
        matched = match_boxes(pred_boxes, ref_boxes)
        named = match_boxes(pred_boxes, ref_boxes, same_name)
        tally.add(box_matched=matched, named_matched=named,
                  box_predicted=len(pred), box_reference=len(ref))
        return named == len(pred) == len(ref)
    if kind == "count":
        number = first_number(reference)
        if number is None:
            return normalize(prediction) == normalize(reference)
        right = first_number(prediction) == number
        if number >= 1:
            group = "one" if number == 1 else "several"
            tally.add(**{f"n_{group}": 1, f"correct_{group}": right})
        return right
    if kind == "exist" or (kind == "spatial" and normalize(reference) in ("yes", "no")):
        answer = first_yes_no(reference)
        if answer is None:
            return normalize(prediction) == normalize(reference)
        return first_yes_no(prediction) == answer
    return normalize(prediction) == normalize(reference)


def _centre_inside(box: Box, reference: Box) -> bool:
    x, y = box_centre(box)
    return reference[0] <= x <= reference[2] and reference[1] <= y <= reference[3]


def size_name(box: Box) -> str:
    """"small", "medium" or "large" (`SIZES`) by the box's longer side in the 0-999 grid."""
    side = round(1000 * box_side(box))
    return next(name for name, below in SIZES if below is None or side < below)


def _precision(matched: int, predicted: int, items: int) -> float | None:
    """matched / predicted; 0 when nothing was predicted, None when there were no items."""
    if not items:
        return None
    return matched / predicted if predicted else 0.0


def answered_right(question: dict, prediction: str) -> bool:
    """Whether `prediction` answers `question` (a questions file's record) right, as `score`
    counts it."""
    kind = question.get("type") or "other"
    return bool(_score_one(kind, str(question["id"]), question["answer"], prediction, _Tally()))


def score(questions: Sequence[dict], predictions: Sequence[dict]) -> dict:
    """Metrics per task type, overall, and counts of missing and unknown predictions.

    `questions` need ``id`` and ``answer`` (``type`` defaults to ``other``); `predictions` need
    ``id`` and ``prediction``. See the module docstring for the metrics and the keys.
    """
    check_references(questions)
    answers = {str(p["id"]): p["prediction"] for p in predictions}
    ids = set()
    tallies: dict[str, _Tally] = {}
    for q in questions:
        qid = str(q["id"])
        ids.add(qid)
        kind = q.get("type") or "other"
        tally = tallies.setdefault(kind, _Tally())
        tally.n += 1
        prediction = answers.get(qid)
        if prediction is None:
            tally.missing += 1
            prediction = ""
        if not isinstance(prediction, str):
            raise ValueError(f"the prediction for {qid!r} should be a string, "
                             f"got {type(prediction).__name__}")
        tally.correct += _score_one(kind, qid, q["answer"], prediction, tally)

    result: dict[str, Any] = {}
    order = [t for t in TASK_TYPES if t in tallies] + sorted(set(tallies) - set(TASK_TYPES))
    for kind in order:
        t = tallies[kind]
        c = t.counts
        entry: dict[str, Any] = {"n": t.n, "correct": t.correct, "missing": t.missing,
                                 "accuracy": _ratio(t.correct, t.n)}
        if kind == "rec":
            n_multi = c.get("n_multi", 0)
            entry["acc@0.5"] = entry["accuracy"]
            entry["n_multi"] = n_multi
            entry["multi_precision"] = _precision(c.get("multi_matched", 0),
                                                  c.get("multi_predicted", 0), n_multi)
            entry["multi_recall"] = _ratio(c.get("multi_matched", 0), c.get("multi_reference", 0))
            entry["centred"] = _ratio(sum(c.get(f"centred_{size}", 0) for size, _ in SIZES), t.n)
            entry["scale"] = t.median("scale")
            for size, _ in SIZES:
                n_size = entry[f"n_{size}"] = c.get(f"n_{size}", 0)
                entry[f"acc_{size}"] = _ratio(c.get(f"correct_{size}", 0), n_size)
                entry[f"centred_{size}"] = _ratio(c.get(f"centred_{size}", 0), n_size)
                entry[f"scale_{size}"] = t.median(f"scale_{size}")
        elif kind == "count":
            for group in COUNT_GROUPS:
                n_group = entry[f"n_{group}"] = c.get(f"n_{group}", 0)
                entry[f"acc_{group}"] = _ratio(c.get(f"correct_{group}", 0), n_group)
        elif kind == "gcap":
            predicted, reference = c.get("box_predicted", 0), c.get("box_reference", 0)
            entry["box_precision"] = _precision(c.get("box_matched", 0), predicted, t.n)
            entry["box_recall"] = _ratio(c.get("box_matched", 0), reference)
            entry["named_precision"] = _precision(c.get("named_matched", 0), predicted, t.n)
            entry["named_recall"] = _ratio(c.get("named_matched", 0), reference)
        result[kind] = entry
    n = sum(t.n for t in tallies.values())
    correct = sum(t.correct for t in tallies.values())
    result["overall"] = {"n": n, "correct": correct, "accuracy": _ratio(correct, n)}
    result["missing"] = sum(t.missing for t in tallies.values())
    result["unknown_ids"] = len(set(answers) - ids)
    return result


def check_references(questions: Sequence[dict]) -> None:
    """Raise ValueError unless every question has a reference ``answer`` and a text ``type``."""
    for q in questions:
        if not isinstance(q.get("answer"), str):
            raise ValueError(f"question {str(q['id'])!r} has no reference 'answer' (a string); "
                             "scoring needs the questions file with answers")
        if not isinstance(q.get("type") or "", str):
            raise ValueError(f"question {str(q['id'])!r}: its 'type' should be a string such as "
                             f"\"rec\" or \"count\", got {type(q['type']).__name__}")


def score_files(data: str | os.PathLike, pred: str | os.PathLike) -> dict:
    """`score` the predictions JSONL `pred` against the questions JSONL `data`."""
    return score(read_questions(data), read_predictions(pred))


CENTRE_BOX = "[[250,250,750,750]]"


def baseline_predictions(questions: Sequence[dict]) -> list[dict]:
    """Trivial answers that need no image: the centre box for `rec`, the most common number for
    `count`, else the most common reference answer of the question's type (always "No.", ...)."""
    from collections import Counter

    check_references(questions)
    common: dict[str, str] = {}
    for kind in {q.get("type", "other") for q in questions}:
        answers = [str(q["answer"]) for q in questions if q.get("type", "other") == kind]
        if kind == "count":  # the most common number, whatever the object
            answers = [str(first_number(a)) for a in answers]
        common[kind] = Counter(answers).most_common(1)[0][0]
    return [{"id": q["id"], "prediction": CENTRE_BOX if q.get("type") == "rec"
             else common[q.get("type", "other")]} for q in questions]
