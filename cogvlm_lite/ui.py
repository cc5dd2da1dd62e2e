"""The browser chat UI: `python app.py` serves it on http://127.0.0.1:7860.

Upload an image (drag and drop, paste or pick a file) and chat about it; answers stream in, and
every box or point an answer gives (``[[x0,y0,x1,y1]]``, ``[[x,y]]``) is drawn and labelled on the
image beside the chat. Click the image once for a point or twice for a box, and the next
question carries that region. One model serves every browser tab through Gradio's queue, one
answer at a time; each tab keeps its own image and conversation.
"""

from __future__ import annotations

import argparse
import html
import itertools
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from .conversation import dropped_note
from .grounding import (
    check_regions,
    draw_groundings,
    format_box,
    format_point,
    parse_boxes,
    parse_groundings,
    regions_before_punctuation,
    strip_groundings,
)
from .images import MAX_BYTES, ImageError, load_image
from .zoom import looking_again

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parent.parent / "docs" / "samples"
QUEUE_SIZE = 16  # requests waiting for the model, across all users, before new ones are refused
VIEW_SIDE = 768  # longest side of the annotated image shown beside the chat, in pixels

DESCRIBE_PROMPT = "Describe the image and give the coordinates [[x0,y0,x1,y1]] of each object you mention."
FIND_PROMPT = "Where is the {}? Answer in [[x0,y0,x1,y1]] format."
COUNT_PROMPT = "How many {} are there?"
REGION_PROMPT = "What is in {}?"

_OPEN_GROUP = re.compile(r"\[\[[^\[\]]*$")  # a "[[..." still being generated
_GROUP = re.compile(r"\[\[[^\[\]]*\]\]")

CSS = """
.raw-answer { font-size: 0.8em; opacity: 0.75; }
#about { font-size: 0.85em; opacity: 0.8; }
"""


@dataclass
class Session:
    """One browser tab's conversation: its image, the turns so far, and a region being picked."""

    image: Image.Image | None = None  # as the model sees it (EXIF applied, RGB)
    view: Image.Image | None = None  # a smaller copy to draw on
    history: list[tuple[str, str]] = field(default_factory=list)  # (question sent, raw answer)
    clicks: list[tuple[int, int]] = field(default_factory=list)  # pixel clicks on the image
    pending: str | None = None  # the question waiting to be answered
    asked: int = 0  # questions put to the model so far
    stopped: int = 0  # the answers to questions up to this one are stopped
    closed: bool = False  # left for a new conversation: an answer under way shows nothing more
    rejected: bool = False  # its upload could not be used, and was cleared from the input

    def put(self, question: str) -> None:
        """Make `question` the one to answer next."""
        self.pending = question
        self.asked += 1

    def stop(self) -> None:
        """Stop the answer under way, or waiting, at its next token or look."""
        self.stopped = self.asked

    def close(self) -> None:
        """Stop the answer under way and show nothing more of this conversation."""
        self.stop()
        self.closed = True


class ImageInput(gr.Image):
    """`gr.Image` that hands files Pillow cannot open to our code, so `load_image` can explain why.

    Gradio opens an uploaded file before the event handler runs and would fail there with a
    generic error; here the file's path is passed on instead.
    """

    is_template = True  # the browser side is the ordinary Image component

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            return str(payload.path) if payload is not None and payload.path else None


# ------------------------------------------------------------------------------------- text


def region_text(clicks: list[tuple[int, int]], size: tuple[int, int]) -> str | None:
    """The clicked region in the grounding format: one click a point, two a box."""
    if not clicks:
        return None
    width, height = size
    rel = [(x / width, y / height) for x, y in clicks]
    if len(rel) == 1:
        return format_point(rel[0])
    (ax, ay), (bx, by) = rel[:2]
    return format_box((min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))


def with_region(question: str, region: str | None) -> str:
    """Put `region` into `question`: before its final punctuation, or at the end."""
    if not region or "[[" in question:
        return question
    return regions_before_punctuation(f"{question.strip()} {region}")


def render_question(question: str) -> str:
    """A question for the chat: coordinates as inline code."""
    return _GROUP.sub(lambda m: f"`{m.group(0)}`", question)


def render_answer(text: str, *, streaming: bool = False) -> str:
    """An answer for the chat: coordinates removed from the text, the raw answer folded below."""
    if streaming:
        text = _OPEN_GROUP.sub("", text)
    elif not text.strip():
        return "*(the answer is empty)*"
    if not parse_groundings(text):
        return text
    raw = html.escape(text)
    shown = strip_groundings(text)
    if not shown.strip():  # an answer of boxes alone
        n = len(parse_boxes(text))
        shown = f"*{n} box{'es' if n > 1 else ''}, drawn on the image*"
    return (f"{shown}\n\n<details class=\"raw-answer\"><summary>raw answer with "
            f"coordinates</summary><code>{raw}</code></details>")


def chat_messages(history: list[tuple[str, str]], pending: str | None = None) -> list[dict]:
    """The chat as Gradio's message dicts."""
    messages = []
    for question, answer in history:
        messages.append({"role": "user", "content": render_question(question)})
        messages.append({"role": "assistant", "content": render_answer(answer)})
    if pending is not None:
        messages.append({"role": "user", "content": render_question(pending)})
    return messages


def notice(text: str) -> dict:
    """An error line in the chat."""
    return {"role": "assistant", "content": f"⚠️ {text}"}


def looking_note(looks: int) -> str:
    """The line under the chat while zoom looks again at an answer's boxes or a region."""
    done = f"{looks} look{'' if looks == 1 else 's'} so far" if looks else "starting"
    return f"*Looking again on crops ({done}); Stop keeps the answer as it is.*"


def context_note(model, dropped: int) -> str:
    """The line under the chat when the oldest `dropped` exchanges no longer fit the context."""
    if not dropped:
        return ""
    note = dropped_note(dropped)
    return f"*{note[0].upper()}{note[1:]} ({model.config.max_length} tokens); Clear starts over.*"


def about_text(model, checkpoint: str) -> str:
    """One line on what is running: base models, checkpoint, parameter counts."""
    config = model.config
    lm = ("SmolLM2-135M-Instruct (packaged)" if config.language_model == "default"
          else Path(config.language_model).name)
    counts = model.parameter_counts()

    def millions(n: int) -> str:
        return f"{n / 1e6:.1f}M"

    return (f"**Model** base LM {lm} · image encoder {config.vision.model_name} · checkpoint "
            f"{checkpoint} · parameters: LM {millions(counts['language_model'])}, encoder "
            f"{millions(counts['encoder'])}, trainable {millions(counts['trainable'])} · "
            f"decoding {model.decode}. "
            "The default checkpoint is trained on synthetic scenes of emoji objects, so it knows "
            "those best. Sample images: OpenMoji (CC BY-SA 4.0).")


# ------------------------------------------------------------------------------------- the app


def build_ui(model, checkpoint: str = "none given", *, queue_size: int = QUEUE_SIZE) -> gr.Blocks:
    """The chat UI around `model` (a `VisionLanguageModel`, or anything with its `stream_chat`,
    `chat`, `config`, `decode` and `parameter_counts`).

    `checkpoint` is how the About line names the loaded checkpoint. Launch it with `launch_ui`.
    """

    def on_image(old: Session, path: str | None):
        if path is None and old.rejected:  # the unusable file, cleared: its message stays
            return old, *(gr.skip(),) * 5
        old.close()
        session = Session()  # a new image starts a new conversation
        if path is None:
            return session, [], None, "", "", gr.skip()
        try:
            image = load_image(path)
        except ImageError as e:
            # Name the file as the user knows it, not by its place in Gradio's upload folder.
            message = f"Could not use this image: {str(e).replace(path, Path(path).name)}"
            gr.Warning(message)
            session.rejected = True  # and the input is cleared, so that it does not look loaded
            return session, [notice(message)], None, "", "", None
        session.image = image
        session.view = image.copy()
        session.view.thumbnail((VIEW_SIDE, VIEW_SIDE))
        return session, [], session.view, "", "", gr.skip()

    def on_click(session: Session, evt: gr.SelectData):
        if session.image is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) != 2:
            return session, gr.skip(), gr.skip()
        width, height = session.image.size
        x = min(max(int(evt.index[0]), 0), width - 1)
        y = min(max(int(evt.index[1]), 0), height - 1)
        session.clicks = [*session.clicks, (x, y)] if len(session.clicks) == 1 else [(x, y)]
        region = region_text(session.clicks, session.image.size)
        try:
            check_regions(region)
        except ValueError:  # a box with no width or height on the grid: the click is a point
            session.clicks = [(x, y)]
            region = region_text(session.clicks, session.image.size)
        kind = "point" if len(session.clicks) == 1 else "box"
        hint = " (click again for a box)" if kind == "point" else ""
        view = draw_groundings(session.view, f"selected {kind} {region}")
        return session, f"Region: {kind} `{region}`{hint}; your next question carries it.", view

    def on_clear_region(session: Session):
        session.clicks = []
        return session, "", session.view

    def ask(session: Session, question: str, about_image: bool = False):
        """Queue `question`, with the clicked region if any, and show it in the chat; a question
        `about_image` (a quick action) needs an image."""
        question = (question or "").strip()
        region = region_text(session.clicks, session.image.size) if session.image else None
        if not question and region:
            question = REGION_PROMPT.format(region)
        if not question:
            return *refuse(session, "Type a question first."), gr.skip(), gr.skip()
        if about_image and session.image is None:
            return *refuse(session, "Upload an image first, or pick a sample."), gr.skip(), gr.skip()
        session.put(with_region(question, region))
        session.clicks = []
        return session, chat_messages(session.history, session.pending), "", ""

    def ask_about_object(session: Session, name: str, template: str):
        name = (name or "").strip().rstrip("?.!")
        if not name:
            message = "Type the name of an object first (for example: dog)."
            return *refuse(session, message), gr.skip(), gr.skip()
        return ask(session, template.format(name), about_image=True)

    def refuse(session: Session, message: str):
        """Nothing to answer: the chat as it was, `message` at its end saying what to do instead."""
        session.pending = None
        return session, [*chat_messages(session.history), notice(message)]

    def regenerate(session: Session):
        if not session.history:
            return refuse(session, "Nothing to regenerate yet: ask a question first.")
        question, _ = session.history.pop()
        session.put(question)
        return session, chat_messages(session.history, session.pending)

    def respond(session: Session, temperature: float, top_p: float, max_new_tokens: float,
                zoom: bool):
        """Stream the answer to the pending question; record it (even a partial one) in the history.

        With `zoom`, the answer's boxes or a small region asked about are then looked at again
        (`zoom.looking_again`), a line under the chat counting the looks. Stop ends the answer at
        its next token, or between two looks with the answer as it streamed.
        """
        question, number = session.pending, session.asked
        if question is None:
            yield gr.skip(), gr.skip(), gr.skip()
            return
        session.pending = None
        messages = chat_messages(session.history, question)
        text = ""
        drawn = -1  # how many groundings the image beside the chat shows; -1: not drawn yet

        def stopped() -> bool:
            return session.stopped >= number

        def view_for(text: str):
            nonlocal drawn
            groups = len(parse_groundings(text))
            if session.view is None or groups == drawn:
                return gr.skip()
            drawn = groups
            return draw_groundings(session.view, text)

        completed = False
        options = dict(temperature=float(temperature), top_p=float(top_p),
                       max_new_tokens=int(max_new_tokens))
        usage: dict = {}
        stream = model.stream_chat(session.image, question, list(session.history), usage=usage,
                                   **options)
        try:
            if not stopped():  # Stop may come before the model is free
                for text in stream:
                    if stopped():
                        break
                    reply = {"role": "assistant", "content": render_answer(text, streaming=True)}
                    yield [*messages, reply], view_for(text), gr.skip()
                else:
                    completed = True
            if completed and zoom and session.image is not None:
                looks = looking_again(model, session.image, question, text, **options)
                zoomed = text
                for n in itertools.count():
                    try:
                        next(looks)  # a pause before the next look
                    except StopIteration as end:
                        zoomed = end.value
                        break
                    if stopped():
                        looks.close()
                        break
                    yield gr.skip(), gr.skip(), looking_note(n)
                if zoomed != text:
                    text, drawn = zoomed, -1  # the box moved: draw it again
        except (ValueError, RuntimeError, ImageError) as e:
            yield from _fail(session, messages, text, f"The model could not answer: {e}")
            return
        except Exception as e:  # the UI must keep serving; the full error goes to the log
            log.exception("generation failed")
            yield from _fail(session, messages, text,
                             f"The model failed ({type(e).__name__}: {e}). Try again, or Clear "
                             "and start over; the server log has the details.")
            return
        finally:
            stream.close()
            if not completed:  # a stopped answer as far as it got, less a box cut off midway
                text = _OPEN_GROUP.sub("", text)
            if not session.closed and (completed or text):
                session.history.append((question, text))
        if session.closed:  # the last output is also the final one: it must not bring the chat back
            yield gr.skip(), gr.skip(), gr.skip()
        else:
            note = context_note(model, usage.get("dropped_turns", 0))
            yield chat_messages(session.history), view_for(text), note

    def _fail(session: Session, messages: list[dict], text: str, message: str):
        gr.Warning(message)
        shown = [*messages, {"role": "assistant", "content": render_answer(text)}] if text else messages
        yield ([*shown, notice(message)], gr.skip(), "") if not session.closed else (gr.skip(),) * 3

    def stop(session: Session):
        session.stop()
        return ""

    def clear(session: Session):
        session.close()
        fresh = Session(image=session.image, view=session.view)
        return fresh, [], fresh.view, "", "", ""

    with gr.Blocks(title="cogvlm-lite", analytics_enabled=False) as demo:
        session = gr.State(Session())
        gr.Markdown("## cogvlm-lite: chat about an image\nUpload an image and ask about it. Boxes in "
                    "an answer are drawn beside the chat. Click the image once for a point or twice "
                    "for a box, then ask *What is this?*")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                image_in = ImageInput(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                      label="Image (click to pick a region)", height=300,
                                      elem_id="image-input")
                with gr.Row():
                    region_md = gr.Markdown("", elem_id="region")
                    clear_region_btn = gr.Button("Clear region", size="sm", scale=0, min_width=110)
                annotated = gr.Image(type="pil", format="png", label="Boxes in the last answer",
                                     interactive=False, height=300, elem_id="annotated")
                if SAMPLES.is_dir():
                    samples = sorted(SAMPLES.glob("*.png"))
                    if samples:
                        gr.Examples([[str(p)] for p in samples], inputs=[image_in], label="Sample images",
                                    elem_id="samples")
            with gr.Column(scale=7):
                chatbot = gr.Chatbot(label="Chat", height=520, elem_id="chat", buttons=["copy"],
                                     feedback_options=None, placeholder="Upload an image, then ask.")
                with gr.Row():
                    question = gr.Textbox(placeholder="Ask about the image…", show_label=False,
                                          scale=6, elem_id="question", autofocus=True)
                    send_btn = gr.Button("Send", variant="primary", scale=1, min_width=80)
                with gr.Row():
                    stop_btn = gr.Button("Stop", variant="stop", size="sm")
                    regen_btn = gr.Button("Regenerate", size="sm")
                    clear_btn = gr.Button("Clear", size="sm")
                zoom_md = gr.Markdown("", elem_id="zoom-status")
                with gr.Row(equal_height=True):
                    describe_btn = gr.Button("Describe with boxes", size="sm", scale=2)
                    object_name = gr.Textbox(placeholder="object, e.g. dog", show_label=False, scale=2,
                                             min_width=120, container=False, elem_id="object-name")
                    find_btn = gr.Button("Find it", size="sm", scale=1)
                    count_btn = gr.Button("Count", size="sm", scale=1)
                with gr.Accordion("Generation settings", open=False):
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature",
                                            info="0 always picks the most likely token",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="top-p")
                    max_new_tokens = gr.Slider(16, 1024, value=256, step=16, label="Max new tokens",
                                               elem_id="max-new-tokens")
                    zoom = gr.Checkbox(value=True, label="Look again at boxes",
                                       info="boxes, and a small region asked about, on a crop; every "
                                            "box also mirrored; a description's boxes checked",
                                       elem_id="zoom")
        gr.Markdown(about_text(model, checkpoint), elem_id="about")

        light = dict(concurrency_limit=4)
        image_in.change(on_image, [session, image_in],
                        [session, chatbot, annotated, region_md, zoom_md, image_in], **light)
        image_in.select(on_click, [session], [session, region_md, annotated], queue=False)
        clear_region_btn.click(on_clear_region, [session], [session, region_md, annotated], queue=False)

        generate = dict(fn=respond, inputs=[session, temperature, top_p, max_new_tokens, zoom],
                        outputs=[chatbot, annotated, zoom_md], concurrency_limit=1,
                        concurrency_id="model", show_progress="minimal")
        asked = [session, chatbot, question, region_md]
        question.submit(ask, [session, question], asked, queue=False).then(**generate)
        send_btn.click(ask, [session, question], asked, queue=False).then(**generate)
        describe_btn.click(lambda s: ask(s, DESCRIBE_PROMPT, about_image=True), [session], asked,
                           queue=False).then(**generate)
        find_btn.click(lambda s, n: ask_about_object(s, n, FIND_PROMPT), [session, object_name],
                       asked, queue=False).then(**generate)
        count_btn.click(lambda s, n: ask_about_object(s, n, COUNT_PROMPT), [session, object_name],
                        asked, queue=False).then(**generate)
        regen_btn.click(regenerate, [session], [session, chatbot], queue=False).then(**generate)
        # Stop and Clear end the answer at its next token or look (Gradio's cancels would mark
        # the chat with an error)
        stop_btn.click(stop, [session], [zoom_md], queue=False)
        clear_btn.click(clear, [session], [session, chatbot, annotated, region_md, question, zoom_md],
                        queue=False)
    demo.queue(max_size=queue_size)
    return demo


def theme() -> gr.themes.Base:
    """A light theme with system fonts, so nothing is fetched from the network."""
    sans = ["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Soft(primary_hue="indigo", font=sans, font_mono=mono)


def launch_ui(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
              block: bool = True, quiet: bool = False) -> str:
    """Serve `demo`; returns the local URL (at once when `block` is False, else after Ctrl-C)."""
    _, url, _ = demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
        max_file_size=MAX_BYTES, theme=theme(), css=CSS, ssr_mode=False, quiet=quiet,
        show_error=False, footer_links=[], pwa=False, mcp_server=False,
    )
    return url


def main(argv: list[str] | None = None) -> int:
    """`python app.py [--host H] [--port P] [--share] [--checkpoint DIR] [--device D] [--decode F]`."""
    from .cli import add_model_arguments, check_port_free, port_number

    parser = argparse.ArgumentParser(
        prog="app.py", description="The cogvlm-lite chat UI in the browser (Gradio).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=port_number, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also make a temporary public link through Gradio's share servers")
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    from .model import CONFIG_NAME, DEFAULT_CHECKPOINT, load_model

    if args.checkpoint:
        label = args.checkpoint
    elif (DEFAULT_CHECKPOINT / CONFIG_NAME).is_file():
        label = "default"
    else:
        label = "none (the visual expert is untrained, so answers about images are poor)"
    try:
        check_port_free(args.host, args.port)
    except ValueError as e:
        print(f"app.py: {e}", file=sys.stderr)
        return 1
    try:
        model = load_model(args.checkpoint, device=args.device, decode=args.decode)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"app.py: cannot load the model: {e}", file=sys.stderr)
        return 1
    demo = build_ui(model, label)
    try:
        launch_ui(demo, host=args.host, port=args.port, share=args.share)
    except OSError as e:
        print(f"app.py: cannot serve on {args.host}:{args.port}: {e}; pick another --port or --host",
              file=sys.stderr)
        return 1
    return 0
