"""The OpenAI-compatible API, through the official `openai` client against a real server on loopback."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from PIL import Image
from tiny import tiny_config

from cogvlm_lite import build_model, serve
from cogvlm_lite.grounding import format_box
from cogvlm_lite.serve import create_app, cut_at_stop
from cogvlm_lite.zoom import crop_around, from_crop, to_crop

KEY = "test-key"


def png_bytes(size=(64, 48), colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user(text: str, *images: str) -> dict:
    return {"role": "user", "content": [*(image_part(u) for u in images), {"type": "text", "text": text}]}


class Recording:
    """The tiny model, remembering what each `stream_chat` call was given."""

    def __init__(self, model):
        self.model = model
        self.calls: list[dict] = []
        self.delay = 0.0  # seconds each answer takes first

    def __getattr__(self, name):
        return getattr(self.model, name)

    def stream_chat(self, image, query, history=(), usage=None, **options):
        self.calls.append(dict(image=image, query=query, history=list(history), **options))
        time.sleep(self.delay)
        if "explode" in query:
            return self._explode()
        if "tiny frog" in query:  # on any image, the crop a zoom asks about too
            return self._say(f"There {format_box(SMALL_BOX)}.", usage)
        if "little thing" in query:  # named right only on a crop, where it looks bigger
            return self._say("A frog." if image.size != (400, 300) else "A leaf.", usage)
        if "the pond" in query:  # four small things, each checked and looked at twice by zoom
            return self._say(POND, usage)
        return self.model.stream_chat(image, query, history, usage=usage, **options)

    def chat(self, image, query, history=(), **options):
        texts = list(self.stream_chat(image, query, history, **options))
        return texts[-1] if texts else ""

    def _say(self, text, usage=None):
        """`text` as one piece, counted as `stream_chat` counts a reply that ended by itself."""
        if usage is not None:
            usage.update(completion_tokens=len(self.model.tokenizer(text)["input_ids"]),
                         finish_reason="stop")
        yield text

    @staticmethod
    def _explode():
        yield "It went"
        raise RuntimeError("the accelerator ran out of memory")


@pytest.fixture(scope="module")
def model(tiny_lm_dir, tiny_encoder_file):
    return Recording(build_model(tiny_config(tiny_lm_dir, tiny_encoder_file), device="cpu"))


@pytest.fixture(scope="module")
def base_url(model):
    """A real uvicorn server in a thread, on a free loopback port, requiring `KEY`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model, api_key=KEY), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture
def http(base_url):
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


SMALL_BOX = (0.5, 0.5, 0.55, 0.55)
POND = ("A frog [[100,100,150,150]], a toad [[300,300,350,350]], a newt [[500,500,550,550]] and "
        "a snail [[700,700,750,750]].")
SAMPLING = dict(temperature=1.0, seed=0, max_tokens=8)  # random tiny weights: greedy is all newlines


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["cogvlm-lite"]
    assert client.models.retrieve("cogvlm-lite").owned_by == "cogvlm-lite"


def test_chat_with_image_maps_system_history_and_image(client, model):
    image = png_bytes()
    messages = [
        {"role": "system", "content": "Answer briefly."},
        user("Where is the dog?", data_url(image)),
        {"role": "assistant", "content": "The dog [[100,200,300,400]]."},
        {"role": "user", "content": "And the cat?"},
    ]
    reply = client.chat.completions.create(model="cogvlm-lite", messages=messages, top_p=0.9, **SAMPLING)
    call = model.calls[-1]
    assert call["query"] == "And the cat?"
    assert call["history"] == [("Where is the dog?", "The dog [[100,200,300,400]].")]
    assert call["system"] == "Answer briefly."
    assert call["image"].size == (64, 48) and call["image"].getpixel((5, 5)) == (200, 40, 40)
    assert (call["temperature"], call["top_p"], call["seed"], call["max_new_tokens"]) == (1.0, 0.9, 0, 8)

    choice = reply.choices[0]
    expected = model.chat(image, "And the cat?", [("Where is the dog?", "The dog [[100,200,300,400]].")],
                          system="Answer briefly.", temperature=1.0, top_p=0.9, seed=0, max_new_tokens=8)
    assert choice.message.role == "assistant"
    assert choice.message.content == expected and expected.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.object == "chat.completion" and reply.model == "cogvlm-lite"
    usage = reply.usage
    assert usage.prompt_tokens > model.adapter.num_tokens  # the image's tokens are counted
    assert 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_top_p_zero_means_the_most_likely_token(client, model):
    client.chat.completions.create(model="cogvlm-lite", messages=[user("Hi")], top_p=0, temperature=1,
                                   max_tokens=4)
    call = model.calls[-1]
    assert (call["temperature"], call["top_p"]) == (0.0, 1.0)  # greedy, as OpenAI reads top_p 0


def test_streaming_matches_non_streaming(client, http):
    messages = [user("Describe the image.", data_url(png_bytes(colour=(20, 90, 200))))]
    full = client.chat.completions.create(model="cogvlm-lite", messages=messages, **SAMPLING)
    chunks = list(client.chat.completions.create(model="cogvlm-lite", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **SAMPLING))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # token by token

    body = {"model": "cogvlm-lite", "messages": messages, "stream": True, **SAMPLING}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == full.choices[0].finish_reason


def test_zoom_finds_a_small_box_again_on_a_crop(client, model):
    start = len(model.calls)
    messages = [user("Where is the tiny frog?", data_url(png_bytes((400, 300))))]
    plain = client.chat.completions.create(model="cogvlm-lite", messages=messages, max_tokens=16)
    assert plain.choices[0].message.content == f"There {format_box(SMALL_BOX)}."
    zoomed = client.chat.completions.create(model="cogvlm-lite", messages=messages, max_tokens=16,
                                            extra_body={"zoom": True})
    crop = crop_around(SMALL_BOX, 400, 300)
    # the crop's box and the mirrored crop's, mirrored back (x 0.45..0.5), each mapped back to
    # the image, averaged
    looks = [from_crop(box, crop, 400, 300) for box in (SMALL_BOX, (0.45, 0.5, 0.5, 0.55))]
    mean = tuple((a + b) / 2 for a, b in zip(*looks, strict=True))
    assert zoomed.choices[0].message.content == f"There {format_box(mean)}."
    sizes = [call["image"].size for call in model.calls[start:]]
    # the plain answer, the zoomed one, is there a frog (the whole image), then the crop's looks
    assert sizes == [*3 * [(400, 300)], *2 * [(crop[2] - crop[0], crop[3] - crop[1])]]
    assert model.calls[-1]["history"] == [] and model.calls[-1]["max_new_tokens"] == 16


def test_zoom_names_a_small_region_again_on_a_crop(client, model):
    start = len(model.calls)
    question = f"What is the little thing in {format_box(SMALL_BOX)}?"
    messages = [user(question, data_url(png_bytes((400, 300))))]
    plain = client.chat.completions.create(model="cogvlm-lite", messages=messages, max_tokens=16)
    assert plain.choices[0].message.content == "A leaf."
    zoomed = client.chat.completions.create(model="cogvlm-lite", messages=messages, max_tokens=16,
                                            extra_body={"zoom": True})
    assert zoomed.choices[0].message.content == "A frog."
    crop = crop_around(SMALL_BOX, 400, 300)
    inside = format_box(to_crop(SMALL_BOX, crop, 400, 300))
    assert model.calls[-1]["query"] == f"What is the little thing in {inside}?"
    assert model.calls[-1]["image"].size == (crop[2] - crop[0], crop[3] - crop[1])
    assert model.calls[-1]["history"] == [] and len(model.calls) - start == 3


def test_stop_sequences(client):
    messages = [{"role": "user", "content": "How many cats are there?"}]
    text = client.chat.completions.create(model="cogvlm-lite", messages=messages, **SAMPLING)
    text = text.choices[0].message.content
    assert len(text) >= 4, text
    stop = text[2:4]
    expected = text[: text.find(stop)]
    reply = client.chat.completions.create(model="cogvlm-lite", messages=messages, stop=[stop], **SAMPLING)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="cogvlm-lite", messages=messages, stop=stop,
                                              stream=True, **SAMPLING)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected
    assert cut_at_stop("abcENDdef", ["xyz", "END", "d"]) == ("abc", True)
    assert cut_at_stop("abc", ["END"]) == ("abc", False)


def test_finish_reason_and_usage_are_the_models_own_count(client, model, monkeypatch):
    import cogvlm_lite.model as model_module

    half = model.tokenizer("é", add_special_tokens=False)["input_ids"][:1]  # half a character
    monkeypatch.setattr(model_module, "decode_tokens", lambda *a, **k: iter(half))
    for stream in (False, True):
        reply = client.chat.completions.create(model="cogvlm-lite", messages=[user("Hi")], max_tokens=1,
                                               stream=stream, stream_options={"include_usage": True}
                                               if stream else None)
        if stream:
            chunks = list(reply)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            usage = chunks[-1].usage
        else:
            finish, usage = reply.choices[0].finish_reason, reply.usage
        assert finish == "length" and usage.completion_tokens == 1  # cut, though no text came out


def test_requests_at_once_are_answered_one_after_another(client):
    replies = {}

    def ask(i):
        image = data_url(png_bytes(colour=(i * 60, 0, 0)))
        replies[i] = client.chat.completions.create(
            model="cogvlm-lite", messages=[user(f"Question {i}?", image)], **SAMPLING)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(replies) == [0, 1, 2]
    assert all(r.choices[0].message.content for r in replies.values())


def test_a_burst_of_requests_past_the_waiting_limit_gets_429(model):
    slow = Recording(model.model)
    slow.delay = 1.0  # each answer holds the model a second
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(slow, max_waiting=2), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    statuses = []

    def ask(stream):
        body = {"messages": [user("Hi")], "max_tokens": 2, "stream": stream}
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            response.read()
            statuses.append((response.status_code, response.text, response.headers.get("retry-after")))

    try:
        threads = [threading.Thread(target=ask, args=(i % 2 == 0,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    answered = [text for status, text, _ in statuses if status == 200]
    busy = [(text, retry) for status, text, retry in statuses if status == 429]
    assert len(statuses) == 10 and 2 <= len(answered) <= 3, [s for s, *_ in statuses]  # one runs, two wait
    assert all("the server is busy" in text and retry == "1" for text, retry in busy)


def test_a_greeting_before_the_first_question_is_left_out(client, model):
    start = len(model.calls)
    reply = client.chat.completions.create(model="cogvlm-lite", messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "How can I help you?"},  # as chat apps open
        {"role": "user", "content": "Hi"}], **SAMPLING)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert model.calls[start]["history"] == [] and model.calls[start]["query"] == "Hi"


def test_client_that_leaves_mid_stream_frees_the_model(http, client):
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "stream": True,
            "temperature": 1.0, "seed": 1, "max_tokens": 400}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        next(response.iter_lines())
    reply = client.chat.completions.create(model="cogvlm-lite",
                                           messages=[{"role": "user", "content": "Hi"}], **SAMPLING)
    assert reply.choices[0].message.content


def test_client_that_leaves_before_a_zoomed_answer_frees_the_model(http, client, model):
    body = {"messages": [user("Describe the pond.", data_url(png_bytes((400, 300))))],
            "zoom": True, "max_tokens": 8}
    start = len(model.calls)
    model.delay = 0.5  # the answer, then 12 looks: 6.5 s
    try:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=body, timeout=2.0)
        asked, deadline = -1, time.monotonic() + 20
        while len(model.calls) != asked:  # until no question has come for 1.5 s
            assert time.monotonic() < deadline, "the model kept getting questions"
            asked = len(model.calls)
            time.sleep(1.5)
    finally:
        model.delay = 0.0
    assert asked - start <= 7, [call["query"] for call in model.calls[start:]]
    reply = client.chat.completions.create(model="cogvlm-lite",
                                           messages=[{"role": "user", "content": "Hi"}], **SAMPLING)
    assert reply.choices[0].message.content


def huge_png() -> bytes:
    """A small file of too many pixels (a decompression bomb, in the small)."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_REQUESTS = {
    # name: (request body or raw bytes, expected status, param, words in the message)
    "malformed JSON": (b'{"messages": [', 400, None, "not valid JSON"),
    "JSON nested too deeply": (b"[" * 100_000, 400, None, "nested too deeply"),
    "body not an object": ([1, 2], 400, None, "JSON object"),
    "missing messages": ({"model": "cogvlm-lite"}, 400, "messages", "'messages' is required"),
    "empty messages": ({"messages": []}, 400, "messages", "non-empty"),
    "message without content": ({"messages": [{"role": "user"}]}, 400, "messages[0].content", "required"),
    "unknown role": ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "'tool'"),
    "last message not the user's": (
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        400, "messages", "last message"),
    "bad base64": ({"messages": [user("What?", "data:image/png;base64,@@not*base64@@")]}, 400,
                   "messages[0].content[0].image_url.url", "not valid base64"),
    "not an image": ({"messages": [user("What?", data_url(b"hello, this is text", "image/png"))]}, 400,
                     "messages[0].content[0].image_url.url", "not an image"),
    "too many pixels": ({"messages": [user("What?", data_url(huge_png()))]}, 400,
                        "messages[0].content[0].image_url.url", "pixels"),
    "remote URL": ({"messages": [user("What?", "https://example.com/cat.png")]}, 400,
                   "messages[0].content[0].image_url.url", "does not fetch"),
    "not a data URL": ({"messages": [user("What?", "file:///etc/passwd")]}, 400,
                       "messages[0].content[0].image_url.url", "data URL"),
    "second image": ({"messages": [user("A?", data_url(png_bytes())), {"role": "assistant", "content": "B"},
                                   user("C?", data_url(png_bytes(colour=(0, 0, 0))))]},
                     400, "messages[2].content[0].image_url.url", "one image per conversation"),
    "unknown part type": ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400,
                          "messages[0].content[0].type", "'input_audio'"),
    "temperature out of range": ({"messages": [user("Hi")], "temperature": -1}, 400, "temperature",
                                 "temperature must be in"),
    "max_tokens not an integer": ({"messages": [user("Hi")], "max_tokens": "ten"}, 400, "max_tokens",
                                  "integer"),
    "stream not a boolean": ({"messages": [user("Hi")], "stream": "yes"}, 400, "stream", "true or false"),
    "zoom not a boolean": ({"messages": [user("Hi")], "zoom": 1}, 400, "zoom", "true or false"),
    "zoom while streaming": ({"messages": [user("Hi")], "zoom": True, "stream": True}, 400, "zoom",
                             "stream: false"),
    "several choices": ({"messages": [user("Hi")], "n": 2}, 400, "n", "n must be 1"),
    "tools": ({"messages": [user("Hi")], "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    "region off the grid": ({"messages": [user("What is [[200,300,2000,900]]?", data_url(png_bytes()))]},
                            400, "messages", "is not a region"),
    "region off the grid, streamed": (
        {"messages": [user("What is [[600,300,200,900]]?", data_url(png_bytes()))], "stream": True},
        400, "messages", "x0 < x1"),
    "message longer than the context": ({"messages": [user("Why? " * 600)]}, 400, "messages",
                                        "conversation is too long"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_an_openai_style_error(http, case):
    body, status, param, words = BAD_REQUESTS[case]
    if isinstance(body, bytes):
        response = http.post("/v1/chat/completions", content=body,
                             headers={"Content-Type": "application/json"})
    else:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words.lower() in error["message"].lower(), error["message"]
    assert error["code"]


def test_size_limits(http, monkeypatch):
    url = data_url(png_bytes())
    monkeypatch.setattr(serve, "_B64_LIMIT", 40)
    response = http.post("/v1/chat/completions", json={"messages": [user("What?", url)]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "image_too_large"
    assert "more than the limit" in response.json()["error"]["message"]
    monkeypatch.setattr(serve, "MAX_BODY", 100)
    response = http.post("/v1/chat/completions", json={"messages": [user("What?", url)]})
    assert response.status_code == 413
    assert "request body" in response.json()["error"]["message"]


def test_openai_client_sees_the_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="cogvlm-lite", messages=[user("What?", "http://example.com/a.png")])
    assert e.value.status_code == 400 and "does not fetch" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="cogvlm-lite", messages=[
            user("Compare these.", data_url(png_bytes()), data_url(png_bytes(colour=(1, 2, 3))))])
    assert "one image per conversation" in e.value.message


def test_api_key(base_url, http):
    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.status_code == 401 and "incorrect API key" in e.value.message
    for headers in ({}, {"Authorization": "Basic abc"}):
        response = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": [user("Hi")]},
                              headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert "missing API key" in response.json()["error"]["message"]
    response = http.get("/v1/nowhere")
    assert response.status_code == 404 and "no such endpoint" in response.json()["error"]["message"]


def test_without_a_key_anyone_on_loopback_may_call(model):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model, model_name="tiny")) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "tiny"


def test_model_failure_is_reported(client):
    messages = [{"role": "user", "content": "explode"}]
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="cogvlm-lite", messages=messages)
    assert e.value.status_code == 500 and "ran out of memory" in e.value.message
    with pytest.raises(openai.APIError) as e:
        list(client.chat.completions.create(model="cogvlm-lite", messages=messages, stream=True))
    assert "ran out of memory" in e.value.message


def test_still_serves_after_bad_requests(client, http):
    reply = client.chat.completions.create(
        model="cogvlm-lite", messages=[user("What colour is it?", data_url(png_bytes()))], **SAMPLING)
    assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
    # Clients that send every field, unset ones as null.
    body = {"model": "cogvlm-lite", "messages": [user("Hi")], "n": None, "stream": None, "stop": None,
            "temperature": None, "top_p": None, "max_tokens": 4, "seed": None}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 4


def test_serve_command_serves_a_checkpoint(model, tmp_path):
    checkpoint = tmp_path / "tiny-checkpoint"
    model.save_pretrained(checkpoint)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "cogvlm_lite", "serve", "--checkpoint", str(checkpoint), "--device", "cpu",
         "--port", str(port), "--api-key", "k"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/models",
                                     headers={"Authorization": "Bearer k"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "cogvlm-lite serve did not start"
                time.sleep(0.5)
        assert response.status_code == 200 and response.json()["data"][0]["id"] == "cogvlm-lite"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_help():
    out = subprocess.run([sys.executable, "-m", "cogvlm_lite", "serve", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--host", "--port", "--api-key", "--checkpoint", "--device"):
        assert flag in out.stdout
