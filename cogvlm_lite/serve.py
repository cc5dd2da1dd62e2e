"""The OpenAI-compatible HTTP API: `cogvlm-lite serve` on http://127.0.0.1:8000/v1.

`POST /v1/chat/completions` takes OpenAI's chat format: text and ``image_url`` content parts, the
image inline as a base64 ``data:`` URL (this server fetches nothing from the network). CogVLM takes
one image per conversation: the first image found is the conversation's image, wherever it is,
and a second one is refused. Boxes and points stay in the answer text as ``[[x0,y0,x1,y1]]``.
`stream: true` answers with server-sent events in OpenAI's chunk format; `zoom: true` (beyond
OpenAI's fields, without `stream`) looks again at an answer's boxes (small ones on a crop, every
look also mirrored) and at a small region asked about.
`GET /v1/models` lists the one model. One model answers one request at a time; a few more wait,
the rest get 429.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    reply = client.chat.completions.create(model="cogvlm-lite", messages=[{"role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
                    {"type": "text", "text": "Where is the dog?"}]}])

Every refused request gets an OpenAI-style error body naming the problem:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from .grounding import check_regions
from .images import MAX_BYTES, ImageError, load_image
from .zoom import looking_again, run_looks

log = logging.getLogger(__name__)

MODEL_NAME = "cogvlm-lite"
MAX_WAITING = 16  # requests waiting for the model before new ones get 429
MAX_BODY = MAX_BYTES * 4 // 3 + 1024 * 1024  # one base64 image at the size limit, plus text
DEFAULT_MAX_TOKENS = 256
DISCONNECT_POLL = 0.25  # seconds between checks that a client waiting for an answer is still there
_B64_LIMIT = math.ceil(MAX_BYTES / 3) * 4  # base64 characters of a MAX_BYTES file


class APIError(Exception):
    """A request that cannot be served; becomes an OpenAI-style error response."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# ------------------------------------------------------------------------------------- requests


@dataclass
class ChatRequest:
    """A validated chat request, ready for `model.stream_chat`."""

    query: str
    history: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None
    image: Image.Image | None = None
    generation: dict = field(default_factory=dict)  # GenerationConfig fields
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    zoom: bool = False  # look again at a finished answer's boxes (`zoom.zoom_in`)


def decode_image_url(url: Any, param: str) -> Image.Image:
    """The image in a base64 ``data:`` URL; `APIError` (400) saying what is wrong otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise _bad(f"{param} must be a data URL string like data:image/png;base64,...", param,
                   "missing_required_parameter")
    url = url.strip()
    scheme = url[:8].lower()
    if scheme.startswith(("http://", "https://")):
        raise _bad(f"{param} is a remote URL ({url[:60]}); this server does not fetch images from the "
                   "network. Send the image inline as a base64 data URL (data:image/png;base64,...).",
                   param, "remote_image_url")
    if not scheme.startswith("data:"):
        raise _bad(f"{param} must be a base64 data URL (data:image/png;base64,...), got {url[:40]!r}",
                   param, "invalid_image_url")
    header, comma, data = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise _bad(f"{param} is not a base64 data URL: it needs the form data:image/png;base64,<data>",
                   param, "invalid_image_url")
    data = "".join(data.split())
    if len(data) > _B64_LIMIT:
        raise _bad(f"{param}: the image is about {len(data) * 3 // 4:,} bytes, more than the limit of "
                   f"{MAX_BYTES:,}; send a smaller or more compressed image", param, "image_too_large")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{param}: the data URL is not valid base64 ({e}); encode the image file with "
                   "standard base64", param, "invalid_base64") from e
    try:
        return load_image(raw)
    except ImageError as e:
        raise _bad(f"{param}: {e}", param, "invalid_image") from e


def _content(content: Any, param: str, role: str) -> tuple[str, list[tuple[Any, str]]]:
    """Text of one message and its image URLs with their parameter paths."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(f"{param} must be a string or a list of content parts", param)
    texts, images = [], []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text must be a string", f"{where}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            if role != "user":
                raise _bad(f"{where}: images belong in user messages, not {role} messages", where)
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            images.append((url, f"{where}.image_url.url"))
        else:
            raise _bad(f"{where} has type {kind!r}; this server takes 'text' and 'image_url' parts",
                       f"{where}.type")
    return "\n".join(texts), images


def _number(body: dict, name: str, default, low: float, high: float, *, integer: bool = False,
            low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _bad(f"{name} must be {kind}, got {value!r}", name, "invalid_type")
    if (isinstance(value, float) and not math.isfinite(value)) or value < low or value > high \
            or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise _bad(f"{name} must be in {bracket}{low}, {high}], got {value!r}", name)
    return value


def parse_request(body: Any, max_context: int) -> ChatRequest:
    """Check a chat completion request body; `APIError` naming the first problem found."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object with 'messages'", None, "invalid_json")
    if "model" in body and not isinstance(body["model"], str):
        raise _bad("model must be a string", "model", "invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise _bad("'messages' is required: a list of {role, content} messages", "messages",
                   "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {role, content} messages", "messages")
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if body.get(name):
            raise _bad(f"{name} is not supported: this model does not call tools", name, "unsupported")
    if body.get("logprobs"):
        raise _bad("logprobs are not supported", "logprobs", "unsupported")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise _bad("only response_format {'type': 'text'} is supported", "response_format", "unsupported")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name):
            raise _bad(f"{name} is not supported; use repetition_penalty (1.0 = off) instead", name,
                       "unsupported")
    if body.get("n") not in (None, 1):
        raise _bad("n must be 1: this server returns one choice", "n")

    systems: list[str] = []
    turns: list[list[str]] = []  # [role, text], consecutive same-role messages merged
    image_refs: list[tuple[Any, str]] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{param} must be an object with 'role' and 'content'", param)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _bad(f"{param}.role is {role!r}; use 'system', 'user' or 'assistant'", f"{param}.role")
        if "content" not in message or message["content"] is None:
            raise _bad(f"{param}.content is required", f"{param}.content", "missing_required_parameter")
        text, images = _content(message["content"], f"{param}.content", role)
        image_refs += images
        if role in ("system", "developer"):
            systems.append(text)
        elif turns and turns[-1][0] == role:
            turns[-1][1] += "\n" + text
        else:
            turns.append([role, text])
    if turns and turns[0][0] == "assistant":
        del turns[0]  # a greeting before the first question, as chat apps open with: left out
    if not turns:
        raise _bad("the conversation has no user message: send the question as one", "messages")
    if turns[-1][0] != "user":
        raise _bad("the last message must be a user message: it is the one answered", "messages")
    if len(image_refs) > 1:
        raise _bad(f"CogVLM takes one image per conversation, placed before the text; this request has "
                   f"{len(image_refs)} (the second at {image_refs[1][1]}). Send one image, and start a "
                   "new conversation to ask about another.", image_refs[1][1], "too_many_images")
    image = decode_image_url(*image_refs[0]) if image_refs else None

    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise _bad("stop must be a non-empty string or a list of up to 4 of them", "stop")
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"stream must be true or false, got {stream!r}", "stream", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options", "invalid_type")
    zoom = body.get("zoom", False)
    if not isinstance(zoom, bool):
        raise _bad(f"zoom must be true or false, got {zoom!r}", "zoom", "invalid_type")
    if zoom and stream:
        raise _bad("zoom changes a finished answer, which a stream has already sent; ask with "
                   "stream: false", "zoom", "unsupported_parameter")

    max_tokens = body.get("max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        name = "max_tokens"
    max_tokens = _number(body, name, DEFAULT_MAX_TOKENS, 1, max_context, integer=True)
    generation = {
        "temperature": float(_number(body, "temperature", 0.0, 0.0, 2.0)),
        "top_p": float(_number(body, "top_p", 1.0, 0.0, 1.0)),
        "top_k": _number(body, "top_k", 0, 0, 1_000_000, integer=True),
        "repetition_penalty": float(_number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True)),
        "max_new_tokens": max_tokens,
        "seed": _number(body, "seed", None, 0, 2**63 - 1, integer=True),
    }
    if generation["top_p"] == 0:  # as OpenAI reads it: only the most likely token, greedy
        generation.update(temperature=0.0, top_p=1.0)
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    return ChatRequest(query=turns[-1][1], history=history, system="\n\n".join(systems) or None,
                       image=image, generation=generation, stop=stop, stream=stream,
                       include_usage=bool(options.get("include_usage")), zoom=zoom)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop sequence, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ------------------------------------------------------------------------------------- the app


def create_app(model, api_key: str | None = None, model_name: str = MODEL_NAME, *,
               max_waiting: int = MAX_WAITING) -> FastAPI:
    """The API around `model`; with `api_key`, every /v1 request needs ``Authorization: Bearer KEY``."""
    app = FastAPI(title="cogvlm-lite API", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    lock = asyncio.Lock()  # one generation at a time, in arrival order
    waiting = 0

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "incorrect API key: check the key given to the server with --api-key",
                           code="invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        headers = {401: {"WWW-Authenticate": "Bearer"},
                   429: {"Retry-After": "1"}}.get(e.status)  # when OpenAI's clients retry
        return e.response(headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}; this server has "
                        "POST /v1/chat/completions and GET /v1/models",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code,
                                                                                     str(e.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return APIError(e.status_code, message, code=code).response()

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "cogvlm-lite"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict:
        check_key(request)
        if name != model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        nonlocal waiting
        check_key(request)
        body = await _read_json(request)
        req = parse_request(body, model.config.max_length)
        prompt_tokens = _prompt_tokens(model, req)
        if waiting >= max_waiting:
            raise APIError(429, f"the server is busy: {waiting} requests are waiting for the model; "
                                "retry in a little while", code="server_busy", kind="server_error")
        waiting += 1  # from here on, with no pause between: a burst cannot pass the check at once
        admitted = True

        def leave() -> None:
            """This request waits no more: it holds the model, or it is gone."""
            nonlocal waiting, admitted
            if admitted:
                admitted, waiting = False, waiting - 1

        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        stamp = int(time.time())

        generated: dict = {}  # the model's own count: "completion_tokens", "finish_reason"
        cut: dict = {}  # "completion_tokens" up to a stop sequence that ended the answer

        async def answers() -> AsyncIterator[tuple[str, str | None]]:
            """(text so far, finish reason or None), holding the model for the whole answer."""
            try:
                await lock.acquire()
            finally:
                leave()
            try:
                text = ""
                async with aclosing(_generate(model, req, generated)) as texts:
                    async for text in texts:
                        text, stopped = cut_at_stop(text, req.stop)
                        if stopped:
                            cut["completion_tokens"] = _count(model, text)
                            yield text, "stop"
                            return
                        yield text, None
                yield text, generated["finish_reason"]
            finally:
                lock.release()

        def usage() -> dict:
            completion = (cut or generated).get("completion_tokens", 0)  # 0: failed before a token
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion}

        if not req.stream:
            text, finish = "", "stop"

            async def whole_answer() -> None:
                nonlocal text, finish
                async with aclosing(answers()) as stream:
                    async for answer in stream:
                        text, finish = answer[0], answer[1] or finish

            try:
                await _unless_disconnected(request, whole_answer())
            except ValueError as e:
                raise _bad(f"the model could not answer: {e}") from e
            except Exception as e:  # the server keeps serving; the details go to the log
                log.exception("generation failed")
                raise APIError(500, f"generation failed ({type(e).__name__}: {e}); the server log has "
                                    "the details", code="generation_failed", kind="server_error") from e
            finally:
                leave()  # also when the client left before the answer began
            return {"id": completion_id, "object": "chat.completion", "created": stamp,
                    "model": model_name, "system_fingerprint": None,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None, "finish_reason": finish}],
                    "usage": usage()}

        hold = max((len(s) for s in req.stop), default=1) - 1  # may be the start of a stop sequence

        def chunk(delta: dict, finish: str | None = None) -> str:
            data = {"id": completion_id, "object": "chat.completion.chunk", "created": stamp,
                    "model": model_name, "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if req.include_usage:
                data["usage"] = None
            return _sse(data)

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            sent = ""
            try:
                async with aclosing(answers()) as stream:
                    async for text, finish in stream:
                        ready = text if finish else text[: max(len(sent), len(text) - hold)]
                        if ready.startswith(sent) and len(ready) > len(sent):
                            yield chunk({"content": ready[len(sent):]})
                            sent = ready
                        if finish:
                            yield chunk({}, finish)
            except Exception as e:  # the headers are sent: report the error as an event
                log.exception("generation failed")
                error = APIError(500, f"generation failed ({type(e).__name__}: {e})",
                                 code="generation_failed", kind="server_error")
                yield _sse(error.body())
            if req.include_usage:
                yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": stamp,
                            "model": model_name, "system_fingerprint": None, "choices": [],
                            "usage": usage()})
            yield "data: [DONE]\n\n"

        stream = events()
        weakref.finalize(stream, leave)  # a stream the client left before it began is never run
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def _read_json(request: Request) -> Any:
    """The request body as JSON, refusing bodies over `MAX_BODY` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise APIError(413, f"the request body is {int(length):,} bytes, more than the limit of "
                            f"{MAX_BODY:,}; send a smaller image", code="request_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY:
            raise APIError(413, f"the request body is more than the limit of {MAX_BODY:,} bytes; "
                                "send a smaller image", code="request_too_large")
        chunks.append(part)
    data = b"".join(chunks)
    if not data.strip():
        raise _bad("the request body is empty; send a JSON object with 'messages'", None, "invalid_json")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"the request body is not valid JSON ({e}); send a JSON object with 'messages'",
                   None, "invalid_json") from e
    except RecursionError:
        raise _bad("the request body is JSON nested too deeply; send a JSON object with 'messages'",
                   None, "invalid_json") from None


def _prompt_tokens(model, req: ChatRequest) -> int:
    """Prompt length in positions, the image's tokens included; `APIError` when it cannot fit
    or, about an image, names a region that is not one."""
    image = req.image is not None
    if image:
        try:
            check_regions(req.query)
        except ValueError as e:
            raise _bad(str(e), "messages", "invalid_region") from e
    try:
        encoded = model.encode_prompt(req.query, req.history, image=image, system=req.system,
                                      max_new_tokens=req.generation["max_new_tokens"])
    except ValueError as e:
        raise _bad(str(e), "messages", "context_length_exceeded") from e
    return len(encoded.input_ids) + (model.adapter.num_tokens - 1 if image else 0)


def _count(model, text: str) -> int:
    """Tokens in a text, as the tokenizer encodes it."""
    return len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


async def _unless_disconnected(request: Request, work) -> None:
    """Await `work`, cancelling it if the client goes away first (so the model is freed)."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait([task], timeout=DISCONNECT_POLL)
            if not task.done() and await request.is_disconnected():
                raise APIError(499, "the client closed the connection before the answer was ready",
                               code="client_closed")
        task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _generate(model, req: ChatRequest, usage: dict) -> AsyncIterator[str]:
    """The growing answer, generated in a worker thread so the event loop stays free; `usage`
    gets the model's count of the answer's tokens and its finish reason (`stream_chat`).

    Leaving the loop early (a stop sequence, a client that went away) stops the generation at
    the next token, or zoom at the next look.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            cancel.set()

    def work() -> None:
        stream = model.stream_chat(req.image, req.query, req.history, system=req.system,
                                   usage=usage, **req.generation)
        try:
            text = ""
            for text in stream:
                if cancel.is_set():
                    break
                put(("text", text))
            if req.zoom and req.image is not None and not cancel.is_set():
                looks = looking_again(model, req.image, req.query, text, system=req.system,
                                      **req.generation)
                zoomed = run_looks(looks, stop=cancel.is_set)  # None: stopped between two looks
                if zoomed is not None:
                    put(("text", zoomed))
        except Exception as e:  # handed over to the event loop, which reports it
            put(("error", e))
        finally:
            stream.close()
            put(("done", None))

    threading.Thread(target=work, name="cogvlm-generate", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancel.set()


def run_server(host: str = "127.0.0.1", port: int = 8000, checkpoint: str | None = None,
               device: str = "auto", api_key: str | None = None, model_name: str = MODEL_NAME,
               decode: str = "exact") -> None:
    """Load the model and serve the API until interrupted (blocking)."""
    import uvicorn

    from .model import load_model

    if api_key is None and not _is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach this address can use "
                    "the model; pass --api-key to require one", host)
    model = load_model(checkpoint, device=device, decode=decode)
    app = create_app(model, api_key=api_key, model_name=model_name)
    print(f"cogvlm-lite API on http://{host}:{port}/v1 (model {model_name!r})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
