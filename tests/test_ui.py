"""The Gradio chat UI in a real browser: headless Chromium (Debian's) driven by Playwright.

The app runs on loopback with a tiny random model. A wrapper records every question the model
gets and, for questions with a known key, streams a scripted answer word by word, so that boxes
appear deterministically; other questions go through the tiny model's own generation.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from tiny import tiny_config

from cogvlm_lite import build_model
from cogvlm_lite.generation import GenerationConfig
from cogvlm_lite.grounding import format_box, parse_boxes, parse_groundings
from cogvlm_lite.ui import DESCRIBE_PROMPT, build_ui, launch_ui, region_text, render_answer, with_region
from cogvlm_lite.zoom import DESCRIBE, crop_around, from_crop, to_crop

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "docs" / "samples"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
# The exact boxes of the objects in docs/samples/park.png, in the training data's caption style.
PARK_ANSWER = ("A dog [[125,556,354,822]], a butterfly [[312,194,421,297]], a soccer ball "
               "[[417,744,529,894]], a tree [[604,306,904,722]] and a sun [[771,061,938,283]].")
BOT = "#chat [data-testid='bot']"
pytestmark = pytest.mark.filterwarnings(  # raised inside Gradio's queue by pandas 3
    "ignore:'future.no_silent_downcasting' is deprecated", "ignore:The copy keyword is deprecated")
USER = "#chat [data-testid='user']"


@dataclass
class Call:
    image_size: tuple[int, int] | None
    query: str
    history: list
    options: dict
    text: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class ScriptedModel:
    """The tiny model, recording each question; a question containing a script's key gets its answer."""

    def __init__(self, model):
        self.model = model
        self.calls: list[Call] = []
        self.scripts: dict[str, tuple[str, float]] = {}  # key -> (answer, seconds per word)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def stream_chat(self, image, query, history=(), usage=None, **options):
        call = Call(image.size if image is not None else None, query, list(history), options)
        self.calls.append(call)
        try:
            for text in self._texts(image, query, history, {} if usage is None else usage, options):
                call.text = text
                yield text
        finally:
            call.done.set()

    def chat(self, image, query, history=(), **options):
        """The last text `stream_chat` yields: a crop asked about by the UI's zoom is scripted too."""
        texts = list(self.stream_chat(image, query, history, **options))
        return texts[-1] if texts else ""

    def _texts(self, image, query, history, usage, options):
        if "explode" in query:
            raise RuntimeError("the accelerator ran out of memory")
        for key, (answer, delay) in self.scripts.items():
            if key in query:
                # what the model reports of its prompt, before the reply
                room = options.get("max_new_tokens", GenerationConfig.max_new_tokens)
                usage["dropped_turns"] = self.model.encode_prompt(
                    query, history, image=image is not None, max_new_tokens=room).dropped_turns
                words = answer.split(" ")
                for i in range(1, len(words) + 1):
                    time.sleep(delay)
                    yield " ".join(words[:i])
                return
        yield from self.model.stream_chat(image, query, history, usage=usage, **options)

    @contextlib.contextmanager
    def scripted(self, scripts: dict[str, tuple[str, float]]):
        """`scripts` answer for the block; after it, once every question is answered, they go."""
        self.scripts.update(scripts)
        try:
            yield
        finally:
            self.settle()
            for key in scripts:
                del self.scripts[key]

    def settle(self, *, quiet: float = 1.0, timeout: float = 120) -> None:
        """Wait until every question is answered and none has come for `quiet` seconds.

        A reply with a small box is looked at again on a crop after it has streamed (zoom): the
        UI is done only then, and a test must not end while that question is still running.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = len(self.calls)
            for c in self.calls[:seen]:
                assert c.done.wait(max(0.0, deadline - time.monotonic())), f"{c.query!r} not answered"
            time.sleep(quiet)
            if len(self.calls) == seen:
                return
            assert time.monotonic() < deadline, "the model kept getting questions"

    def call(self, key: str, *, after: int = 0, timeout: float = 60) -> Call:
        """The first call from index `after` on whose question contains `key`, once answered."""
        deadline = time.monotonic() + timeout
        while True:
            found = [c for c in self.calls[after:] if key in c.query]
            if found:
                assert found[0].done.wait(max(0.0, deadline - time.monotonic())), f"{key!r} not answered"
                return found[0]
            assert time.monotonic() < deadline, f"the model never got a question with {key!r}"
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scripted(tiny_lm_dir, tiny_encoder_file):
    return ScriptedModel(build_model(tiny_config(tiny_lm_dir, tiny_encoder_file), device="cpu"))


@pytest.fixture(scope="module")
def app_url(scripted):
    demo = build_ui(scripted, "tiny test model")
    url = launch_ui(demo, port=free_port(), block=False, quiet=True)
    yield url
    scripted.settle()  # no answer may still run on the model when the process ends
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


def open_app(context, url):
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#chat")
    return page


def open_sample(context, url, name: str = "park.png"):
    """The app with one of its bundled samples picked, once the app shows it beside the chat."""
    page = open_app(context, url)
    page.click(f"#samples button.gallery-item:has(img[src$='{name}'])")
    page.wait_for_selector("#annotated img")
    return page


def upload(page, file) -> None:
    """Upload an image and wait until the app has taken it (it then shows it beside the chat)."""
    page.set_input_files("#image-input input[type=file]", file)
    page.wait_for_selector("#annotated img")


def ask(page, question: str) -> None:
    page.fill("#question textarea", question)
    page.press("#question textarea", "Enter")


def click_image(page, x: int, y: int) -> None:
    """Click the uploaded image at pixel (x, y) of the original image."""
    left, top, width, height, nw, nh = page.evaluate(
        "() => { const img = document.querySelector('#image-input img');"
        " const r = img.getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height, img.naturalWidth, img.naturalHeight]; }")
    scale = min(width / nw, height / nh, 1)
    page.mouse.click(left + (width - nw * scale) / 2 + x * scale, top + (height - nh * scale) / 2 + y * scale)


def test_regions_and_answers_as_text():
    assert region_text([], (200, 100)) is None
    assert region_text([(50, 25)], (200, 100)) == "[[250,250]]"
    assert region_text([(150, 80), (50, 20)], (200, 100)) == "[[250,200,750,800]]"  # any two corners
    assert with_region("What is this?", "[[250,250]]") == "What is this [[250,250]]?"
    assert with_region("Describe", "[[250,250]]") == "Describe [[250,250]]"
    assert with_region("What is in [[100,100,200,200]]?", "[[250,250]]") == "What is in [[100,100,200,200]]?"
    shown = render_answer("A dog [[125,556,354,822]] and a cat [[1,2,3,4]].")
    assert shown.startswith("A dog and a cat.\n") and "<details" in shown and "[[125,556,354,822]]" in shown
    assert render_answer("A dog [[125,55", streaming=True) == "A dog "  # half a box is not shown
    assert render_answer("No boxes here.") == "No boxes here."
    assert render_answer("[[150,618,370,828]]").startswith("*1 box, drawn on the image*")
    assert "empty" in render_answer("  \n")


def test_real_model_answer_streams_into_the_chat(context, app_url, scripted):
    page = open_app(context, app_url)
    upload(page, SAMPLES / "street.png")
    page.click("text=Generation settings")
    for slider, value in (("#temperature", "1"), ("#max-new-tokens", "32")):
        number, bar = f"{slider} input[type=number]", page.locator(f"{slider} input[type=range]")
        expect(bar).to_be_visible()
        for _ in range(5):  # a value typed while the opening panel still renders can be dropped
            page.fill(number, value)
            page.press(number, "Enter")
            if bar.input_value() == value:
                break
            page.wait_for_timeout(200)
        # the range input follows the slider's value once the app has taken it in
        expect(bar).to_have_value(value)
    ask(page, "How many cats are there?")
    call = scripted.call("How many cats")
    assert call.image_size == (440, 300)
    assert call.options["temperature"] == 1.0 and call.options["max_new_tokens"] == 32
    assert call.text.strip(), "the tiny model generated nothing"
    bot = page.locator(BOT).last
    expect(bot).not_to_have_text("")
    for word in re.findall(r"[A-Za-z]{3,}", call.text)[:3]:
        expect(bot).to_contain_text(word)
    expect(page.locator(USER).last).to_have_text("How many cats are there?")


def test_grounded_answer_streams_and_boxes_are_drawn(context, app_url, scripted):
    scripted.scripts[DESCRIBE_PROMPT] = (PARK_ANSWER, 0.1)
    # zoom checks each box on its crop: the butterfly is not there, the rest give no new box
    looks = {"Is there a butterfly": ("No.", 0.01), "Is there a": ("Yes.", 0.01), **{
        f"Where is the {thing}?": ("Not here.", 0.01)
        for thing in ("dog", "soccer ball", "tree", "sun")}}
    scripted.scripts.update(looks)
    page = open_sample(context, app_url)  # a bundled sample
    before = page.get_attribute("#annotated img", "src")
    start = len(scripted.calls)
    page.click("text=Describe with boxes")
    seen = set()
    deadline = time.monotonic() + 60
    while not (len(scripted.calls) > start and scripted.calls[-1].done.is_set()):
        assert time.monotonic() < deadline
        if page.locator(BOT).count():
            seen.add(page.locator(BOT).last.inner_text())
        time.sleep(0.05)
    call = scripted.call("Describe the image", after=start)
    assert call.query == DESCRIBE_PROMPT and call.image_size == (480, 360)
    assert len([t for t in seen if t.strip()]) >= 3, f"the answer did not stream: {seen}"

    bot = page.locator(BOT).last
    expect(bot).to_contain_text("A dog, a butterfly, a soccer ball, a tree and a sun.")
    assert "[[" not in bot.inner_text()  # coordinates folded away...
    expect(page.locator("#annotated img")).not_to_have_attribute("src", before)
    page.wait_for_function("() => { const img = document.querySelector('#annotated img');"
                           " return img.complete && img.naturalWidth > 0; }")
    bot.locator("summary").click()  # ...but one click shows them
    expect(bot).to_contain_text("[[125,556,354,822]]")

    # The dog's box is drawn in the first colour, on the image as it was uploaded.
    src = page.get_attribute("#annotated img", "src")
    drawn = Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")
    assert drawn.size == (480, 360)
    assert drawn.getpixel((110, 200)) == (230, 25, 75)
    assert drawn.getpixel((110, 250)) != (230, 25, 75)

    scripted.settle()
    for key in looks:
        del scripted.scripts[key]
    left, top, right, bottom = crop_around(parse_boxes("[[312,194,421,297]]")[0], 480, 360)
    checked = scripted.call("Is there a butterfly in the image?", after=start)
    assert checked.image_size == (right - left, bottom - top)
    expect(bot).to_contain_text("a butterfly, a soccer ball [[417,744,529,894]]")
    expect(page.locator("#zoom-status")).to_have_text("")  # the note goes once zoom is done


@pytest.mark.parametrize("button, name, said", [
    ("Find it", "giraffe", "There is no giraffe in the image."),
    ("Count", "giraffes", "There are no giraffes in the image."),  # its box found, then checked
])
def test_finding_or_counting_what_the_picture_does_not_show_says_so(context, app_url, scripted,
                                                                   button, name, said):
    looks = {"Where is the giraffe": ("The giraffe [[125,556,354,822]].", 0.02),
             "How many giraffes": ("There are 2 giraffes.", 0.02),
             "Is there a giraffe": ("No.", 0.01)}
    with scripted.scripted(looks):
        page = open_sample(context, app_url)
        before = page.get_attribute("#annotated img", "src")
        start = len(scripted.calls)
        page.fill("#object-name textarea", name)
        page.click(f"button:text-is('{button}')")
        expect(page.locator(BOT).last).to_have_text(said)
        checks = [c for c in scripted.calls[start:] if c.query.startswith("Is there a giraffe")]
        assert [c.image_size for c in checks] == [(480, 360), (330, 330)]  # the image, the crop
        expect(page.locator("#annotated img")).to_have_attribute("src", before)  # no box drawn
        expect(page.locator("#zoom-status")).to_have_text("")


def test_where_one_object_is_against_another_is_answered_from_their_boxes(context, app_url,
                                                                          scripted):
    looks = {"Where is the cat": ("The cat [[100,100,900,300]].", 0.01),  # high up
             "Where is the dog": ("The dog [[100,600,900,900]].", 0.01),  # low down
             "Is there a": ("Yes.", 0.01), "below the dog": ("Yes.", 0.02)}
    with scripted.scripted(looks):
        page = open_sample(context, app_url)
        before = page.get_attribute("#annotated img", "src")
        start = len(scripted.calls)
        ask(page, "Is the cat below the dog?")
        expect(page.locator(BOT).last).to_contain_text("No. The cat is higher up, the dog lower down.")
        expect(page.locator("#annotated img")).not_to_have_attribute("src", before)  # both boxed
        finds = [c.query for c in scripted.calls[start:] if c.query.startswith("Where is")]
        assert finds == 2 * ["Where is the cat?"] + 2 * ["Where is the dog?"]  # each, mirrored too
        expect(page.locator("#zoom-status")).to_have_text("")


def test_which_object_is_the_smallest_is_answered_from_a_description(context, app_url, scripted):
    looks = {DESCRIBE: ("A dog [[100,100,600,600]] and an ant [[700,700,760,760]].", 0.01),
             "Is there a": ("Yes.", 0.01), "Where is the": ("No box.", 0.01),
             "the smallest": ("The dog.", 0.02)}
    with scripted.scripted(looks):
        page = open_sample(context, app_url)
        before = page.get_attribute("#annotated img", "src")
        start = len(scripted.calls)
        ask(page, "Which object is the smallest?")
        expect(page.locator(BOT).last).to_contain_text("The ant.")
        expect(page.locator("#annotated img")).not_to_have_attribute("src", before)  # its box
        assert scripted.call("Give a grounded", after=start).options["max_new_tokens"] >= 256
        expect(page.locator("#zoom-status")).to_have_text("")


def test_a_small_box_is_found_again_on_a_crop_unless_zoom_is_off(context, app_url, scripted):
    small = (0.4, 0.4, 0.45, 0.45)
    scripted.scripts["Where is the frog"] = (f"The frog {format_box(small)}.", 0.02)
    page = open_sample(context, app_url)
    start = len(scripted.calls)
    ask(page, "Where is the frog?")
    first = scripted.call("Where is the frog", after=start)
    crop = scripted.call("Where is the frog", after=scripted.calls.index(first) + 1)
    left, top, right, bottom = crop_around(small, 480, 360)
    assert first.image_size == (480, 360) and crop.image_size == (right - left, bottom - top)
    assert crop.history == [] and crop.options == first.options
    mirror = scripted.call("Where is the frog", after=scripted.calls.index(crop) + 1)
    assert mirror.image_size == crop.image_size
    # the crop's answer (the same box, now relative to the crop) and the mirrored crop's (x
    # 0.55..0.6, mirrored back), each mapped back to the image, averaged
    x0, y0, x1, y1 = parse_boxes(format_box(small))[0]
    looks = [from_crop(box, (left, top, right, bottom), 480, 360)
             for box in ((x0, y0, x1, y1), (1 - x1, y0, 1 - x0, y1))]
    found = format_box(tuple((a + b) / 2 for a, b in zip(*looks, strict=True)))
    assert found != format_box(small)
    bot = page.locator(BOT).last
    expect(bot).to_contain_text(found)
    expect(bot).not_to_contain_text(format_box(small))

    page.click("text=Generation settings")
    page.click("#zoom input[type=checkbox]")
    start = len(scripted.calls)
    ask(page, "Where is the frog now?")
    scripted.call("Where is the frog now", after=start)
    expect(page.locator(BOT).last).to_contain_text(format_box(small))
    page.wait_for_timeout(500)
    assert len(scripted.calls) == start + 1  # no crop asked about


def test_a_small_region_asked_about_is_asked_again_on_a_crop(context, app_url, scripted):
    scripted.scripts["What is this little one"] = ("A soccer ball.", 0.02)
    page = open_app(context, app_url)
    upload(page, SAMPLES / "park.png")
    click_image(page, 200, 150)
    expect(page.locator("#region")).to_contain_text("point")
    click_image(page, 240, 180)  # a box of 40x30 px in the 480x360 picture
    expect(page.locator("#region")).to_contain_text("box")
    start = len(scripted.calls)
    ask(page, "What is this little one?")
    first = scripted.call("What is this little one", after=start)
    crop = scripted.call("What is this little one", after=scripted.calls.index(first) + 1)
    region, = parse_boxes(first.query)
    left, top, right, bottom = crop_around(region, 480, 360)
    assert crop.image_size == (right - left, bottom - top) and crop.history == []
    inside, = parse_boxes(crop.query)  # the same region, in the crop's coordinates
    assert inside == pytest.approx(to_crop(region, (left, top, right, bottom), 480, 360), abs=0.002)
    expect(page.locator(BOT).last).to_contain_text("A soccer ball.")


def test_click_a_region_and_ask_about_it(context, app_url, scripted):
    scripted.scripts["What is"] = ("A dog [[125,556,354,822]].", 0.02)
    page = open_app(context, app_url)
    upload(page, SAMPLES / "park.png")
    click_image(page, 60, 200)  # around the dog
    expect(page.locator("#region")).to_contain_text("point")
    click_image(page, 170, 296)
    expect(page.locator("#region")).to_contain_text("box")
    start = len(scripted.calls)
    ask(page, "What is this?")
    call = scripted.call("What is this", after=start)
    match = re.fullmatch(r"What is this \[\[(\d{3}),(\d{3}),(\d{3}),(\d{3})\]\]\?", call.query)
    assert match, call.query
    assert all(abs(int(v) - e) <= 5 for v, e in zip(match.groups(), (125, 556, 354, 822), strict=True))
    expect(page.locator(USER).last).to_contain_text("What is this [[")
    expect(page.locator(BOT).last).to_contain_text("A dog.")
    expect(page.locator("#region")).to_have_text("")  # the region went with the question

    click_image(page, 240, 180)  # one click: a point
    expect(page.locator("#region")).to_contain_text("point")
    click_image(page, 240, 180)  # a second on the same spot would be a box of no size: still a point
    page.wait_for_timeout(300)
    expect(page.locator("#region")).to_contain_text("point")
    start = len(scripted.calls)
    ask(page, "What is here")
    call = scripted.call("What is here", after=start)
    match = re.fullmatch(r"What is here \[\[(\d{3}),(\d{3})\]\]", call.query)
    assert match and all(abs(int(v) - 500) <= 5 for v in match.groups()), call.query
    (question, answer), = call.history
    assert question.startswith("What is this [[") and answer == "A dog [[125,556,354,822]]."

    scripted.scripts["Where is the"] = ("The dog [[125,556,354,822]].", 0.02)
    scripted.scripts["How many dogs"] = ("There is 1 dog.", 0.02)
    page.fill("#object-name textarea", "dog")
    start = len(scripted.calls)
    page.click("button:text-is('Find it')")
    find = scripted.call("Where is the dog", after=start)
    assert find.query == "Where is the dog? Answer in [[x0,y0,x1,y1]] format."
    page.fill("#object-name textarea", "dogs")
    page.click("button:text-is('Count')")
    assert scripted.call("How many dogs", after=start).query == "How many dogs are there?"


@pytest.mark.weights
def test_default_checkpoint_in_the_browser(browser, default_model, tmp_path):
    """The embedded model, unscripted, on a bundled sample; its screenshot is the README's.

    The screenshot goes to a temporary folder (the page's rendering varies by a few pixels from
    run to run); set UPDATE_SCREENSHOT=1 to write it to docs/ui.png.
    """
    watched = ScriptedModel(default_model)
    demo = build_ui(watched, "default")
    url = launch_ui(demo, port=free_port(), block=False, quiet=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        page = open_sample(context, url)
        click_image(page, 227, 295)  # one click: a point on the soccer ball
        expect(page.locator("#region")).to_contain_text("point")
        ask(page, "What is this?")
        watched.call("What is this", timeout=120)
        expect(page.locator(BOT).last).to_have_text("A soccer ball.")
        start = len(watched.calls)
        page.fill("#object-name textarea", "dog")
        page.click("button:text-is('Find it')")
        watched.call("Where is the dog", after=start, timeout=120)
        expect(page.locator(BOT).last).to_contain_text("]]")  # a whole box has streamed in
        watched.settle()  # a small box is asked for again on a crop (zoom) after it streamed
        dog, ball, sun = (parse_groundings(PARK_ANSWER)[i].boxes[0] for i in (0, 2, 4))
        found = parse_boxes(page.locator(BOT).last.text_content())  # in the answer's folded part
        assert len(found) == 1 and centred_on(found[0], dog), found
        start = len(watched.calls)
        ask(page, "Is the soccer ball below the sun?")  # answered from both objects' boxes
        watched.call("Is the soccer ball below the sun", after=start, timeout=120)
        expect(page.locator(BOT).last).to_contain_text(
            "Yes. The soccer ball is lower down, the sun higher up.", timeout=120_000)
        expect(page.locator("#zoom-status")).to_have_text("")
        found = parse_boxes(page.locator(BOT).last.text_content())
        assert len(found) == 2 and centred_on(found[0], ball) and centred_on(found[1], sun), found
        page.wait_for_function("() => { const img = document.querySelector('#annotated img');"
                               " return img.complete && img.naturalWidth > 0; }")
        page.mouse.move(0, 0)
        page.evaluate("document.activeElement.blur()")
        about = page.locator("#about").bounding_box()
        shot = ROOT / "docs" / "ui.png" if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "ui.png"
        page.screenshot(path=str(shot),
                        clip={"x": 0, "y": 0, "width": 1280, "height": about["y"] + about["height"] + 8})
        assert Image.open(shot).size[0] == 1280
    finally:
        context.close()
        demo.close()


def centred_on(box, reference) -> bool:
    """Whether `box`'s centre lies inside `reference`."""
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return reference[0] <= x <= reference[2] and reference[1] <= y <= reference[3]


def truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()[:120]


@pytest.mark.parametrize("name, data, words", [
    ("broken.png", b"this is not an image at all", "not an image"),
    ("truncated.png", truncated_png(), "corrupt"),
])
def test_bad_upload_shows_a_message_and_the_app_keeps_working(context, app_url, scripted, name, data, words):
    scripted.scripts["Still there"] = ("Yes, still here.", 0.02)
    page = open_app(context, app_url)
    page.set_input_files("#image-input input[type=file]",
                         files=[{"name": name, "mimeType": "image/png", "buffer": data}])
    chat = page.locator("#chat")
    expect(chat).to_contain_text("Could not use this image")
    expect(chat).to_contain_text(name)
    expect(chat).to_contain_text(words)
    expect(page.locator("[data-testid='toast-body']").first).to_contain_text("Could not use this image")
    assert "/tmp" not in chat.inner_text() and "Traceback" not in page.content()
    # The file is cleared from the input, so that the app does not look as if it had an image,
    # and the message stays.
    expect(page.locator("#image-input button[aria-label='Remove Image']")).to_have_count(0)
    page.wait_for_timeout(500)
    expect(chat).to_contain_text("Could not use this image")

    upload(page, SAMPLES / "breakfast.png")
    ask(page, "Still there?")
    assert scripted.call("Still there").image_size == (420, 320)
    expect(page.locator(BOT).last).to_have_text("Yes, still here.")


def test_what_cannot_be_answered_says_what_to_do_in_the_chat(context, app_url, scripted):
    page = open_app(context, app_url)
    start = len(scripted.calls)
    last = page.locator(BOT).last
    page.click("button:text-is('Regenerate')")
    expect(last).to_have_text("⚠️ Nothing to regenerate yet: ask a question first.")
    ask(page, "   ")
    expect(last).to_have_text("⚠️ Type a question first.")
    page.click("button:text-is('Describe with boxes')")
    expect(last).to_have_text("⚠️ Upload an image first, or pick a sample.")
    page.click("button:text-is('Find it')")
    expect(last).to_have_text("⚠️ Type the name of an object first (for example: dog).")
    page.fill("#object-name textarea", "dog")
    page.click("button:text-is('Count')")
    expect(last).to_have_text("⚠️ Upload an image first, or pick a sample.")
    expect(page.locator(USER)).to_have_count(0)
    assert len(scripted.calls) == start


def test_an_answer_stopped_inside_a_box_keeps_only_what_came_before_it(context, app_url, scripted):
    scripted.scripts["kite, slowly"] = ("A dog [[140,590, 320,700]] near the tree.", 0.8)
    page = open_sample(context, app_url)
    start = len(scripted.calls)
    ask(page, "Show me the kite, slowly.")
    expect(page.locator(BOT).last).to_have_text("A dog")
    page.click("button:text-is('Stop')")  # before "[[140,590," arrives, where the answer then stops
    call = scripted.call("kite, slowly", after=start)
    assert call.text == "A dog [[140,590,"
    expect(page.locator(BOT).last).to_have_text("A dog")
    page.wait_for_timeout(1000)
    assert "[[" not in page.locator("#chat").inner_text()
    scripted.scripts["quick"] = ("Quick answer.", 0.02)
    ask(page, "quick?")
    assert scripted.call("quick", after=start).history == [("Show me the kite, slowly.", "A dog ")]


def test_a_note_says_when_the_oldest_exchanges_no_longer_fit_the_context(context, app_url, scripted):
    chatty = "The dog is at the left of the red apple. " * 6  # some 70 of the tiny model's tokens
    with scripted.scripted({"chatty": (chatty.strip(), 0.0)}):
        page = open_sample(context, app_url)
        notes = []
        for turn in range(1, 6):
            start = len(scripted.calls)
            ask(page, f"chatty {turn}?")
            call = scripted.call(f"chatty {turn}?", after=start)
            expect(page.locator(USER)).to_have_count(turn)
            expect(page.locator(BOT)).to_have_count(turn)
            dropped = scripted.model.encode_prompt(call.query, call.history, image=True,
                                                   max_new_tokens=256).dropped_turns
            status = page.locator("#zoom-status")
            if dropped == 1:
                expect(status).to_have_text("The oldest exchange no longer fits the context and was "
                                            "left out (512 tokens); Clear starts over.")
            elif dropped:
                expect(status).to_contain_text(f"The oldest {dropped} exchanges no longer fit")
            else:
                expect(status).to_have_text("")
            notes.append(dropped)
        assert notes[0] == 0 and notes[-1] >= 1, notes  # the whole story: from no note to a note
        page.click("button:text-is('Clear')")
        expect(page.locator("#zoom-status")).to_have_text("")


def test_two_users_at_once_keep_their_own_image_and_conversation(browser, app_url, scripted):
    scripted.scripts["alpha"] = ("Alpha sees the park.", 0.1)
    scripted.scripts["beta"] = ("Beta sees the street.", 0.1)
    contexts = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(2)]
    try:
        a, b = (open_app(c, app_url) for c in contexts)
        upload(a, SAMPLES / "park.png")
        upload(b, SAMPLES / "street.png")
        start = len(scripted.calls)
        ask(a, "alpha: what do you see?")
        ask(b, "beta: what do you see?")
        call_a = scripted.call("alpha", after=start)
        call_b = scripted.call("beta", after=start)
        assert (call_a.image_size, call_a.history) == ((480, 360), [])
        assert (call_b.image_size, call_b.history) == ((440, 300), [])
        expect(a.locator(BOT).last).to_have_text("Alpha sees the park.")
        expect(b.locator(BOT).last).to_have_text("Beta sees the street.")
        assert "Beta" not in a.locator("#chat").inner_text()
        assert "Alpha" not in b.locator("#chat").inner_text()

        start = len(scripted.calls)
        ask(a, "alpha again?")
        call = scripted.call("alpha again", after=start)
        assert call.history == [("alpha: what do you see?", "Alpha sees the park.")]
        assert call.image_size == (480, 360)
    finally:
        for c in contexts:
            c.close()


def interrupt_a_long_story(context, app_url, scripted, button: str):
    """A page whose 12-second story was interrupted by `button` after its fourth word; the
    number of model calls before it; the story's call, which the interruption closed."""
    scripted.scripts["long story"] = (" ".join(f"word{i}" for i in range(80)), 0.15)
    scripted.scripts["quick"] = ("Quick answer.", 0.02)
    page = open_app(context, app_url)
    start = len(scripted.calls)
    ask(page, "Tell me a long story.")
    expect(page.locator(BOT).last).to_contain_text("word3")
    page.click(f"button:text-is('{button}')")
    story = scripted.call("long story", after=start, timeout=5)
    assert "word79" not in story.text
    return page, start, story


def test_stop_regenerate_and_clear(context, app_url, scripted):
    page, start, story = interrupt_a_long_story(context, app_url, scripted, "Stop")
    expect(page.locator(BOT).last).to_have_text(story.text)  # the answer as far as it got
    page.wait_for_timeout(500)
    assert page.locator(BOT).last.inner_text() == story.text  # nothing more arrives
    assert "Error" not in page.locator("#chat").inner_text()  # a stop is not an error

    start = len(scripted.calls)
    ask(page, "quick?")
    first = scripted.call("quick", after=start)
    assert first.history == [("Tell me a long story.", story.text)]  # the stopped answer as far as it got
    expect(page.locator(BOT).last).to_have_text("Quick answer.")

    start = len(scripted.calls)
    page.click("button:text-is('Regenerate')")
    again = scripted.call("quick", after=start)
    assert again.history == first.history
    expect(page.locator(BOT).last).to_have_text("Quick answer.")
    expect(page.locator(USER)).to_have_count(2)

    page.click("button:text-is('Clear')")
    expect(page.locator(USER)).to_have_count(0)
    ask(page, "explode, please")
    expect(page.locator(BOT).last).to_have_text(
        "⚠️ The model could not answer: the accelerator ran out of memory")
    assert "Traceback" not in page.content()
    page.click("button:text-is('Clear')")
    expect(page.locator(USER)).to_have_count(0)
    start = len(scripted.calls)
    ask(page, "quick again?")
    assert scripted.call("quick again", after=start).history == []


def test_clear_while_answering_empties_the_chat_for_good(context, app_url, scripted):
    page, start, _ = interrupt_a_long_story(context, app_url, scripted, "Clear")
    expect(page.locator(USER)).to_have_count(0)
    page.wait_for_timeout(500)
    expect(page.locator(USER)).to_have_count(0)  # the stopped answer does not come back
    assert "Error" not in page.locator("#chat").inner_text()

    ask(page, "quick?")
    assert scripted.call("quick", after=start).history == []
    expect(page.locator(BOT).last).to_have_text("Quick answer.")


def test_stop_ends_looking_again_at_boxes_between_two_looks(context, app_url, scripted):
    # zoom takes 15 looks at the park description's five boxes, a second each
    looks = {DESCRIBE_PROMPT: (PARK_ANSWER, 0.01), "Is there a": ("Yes.", 1.0),
             "Where is the": ("Not here.", 0.5), "quick": ("Quick answer.", 0.02)}
    with scripted.scripted(looks):
        page = open_sample(context, app_url)
        start = len(scripted.calls)
        page.click("text=Describe with boxes")
        scripted.call("Where is the dog?", after=start)  # the dog's box checked and looked at once
        expect(page.locator("#zoom-status")).to_contain_text("Looking again")
        expect(page.locator("#zoom-status")).to_contain_text("so far")
        page.click("button:text-is('Stop')")
        expect(page.locator("#zoom-status")).to_have_text("")
        scripted.settle(quiet=2.0)  # the look under way ends, and no other begins
        asked = len(scripted.calls)
        assert asked - start <= 6, [c.query for c in scripted.calls[start:]]  # of 15
        expect(page.locator(BOT).last).to_contain_text("A dog, a butterfly")
        expect(page.locator("#zoom-status")).to_have_text("")
        assert "Error" not in page.locator("#chat").inner_text()

        ask(page, "quick?")
        quick = scripted.call("quick", after=asked, timeout=10)
        assert quick.history == [(DESCRIBE_PROMPT, PARK_ANSWER)]  # the answer as it streamed
        expect(page.locator(BOT).last).to_have_text("Quick answer.")


def test_app_help():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--host", "--port", "--share", "--checkpoint", "--device"):
        assert flag in out.stdout
    assert "127.0.0.1" in out.stdout


def test_app_serves_a_checkpoint(scripted, tmp_path):
    checkpoint = tmp_path / "tiny-checkpoint"
    scripted.model.save_pretrained(checkpoint)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--checkpoint", str(checkpoint), "--device", "cpu", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    config = response.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "app.py did not start serving"
                time.sleep(0.5)
        assert str(checkpoint) in config  # the About line names the checkpoint
    finally:
        process.terminate()
        process.wait(timeout=30)
