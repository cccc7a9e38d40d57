"""
The chat server's logic: request checking, the worker pool, UTF-8-safe streaming and the HTTP app.

Pipeline position: the last stage. scripts/chat_web.py parses flags, loads one model copy per
device with load_workers() and runs create_app() under uvicorn; nanochat/ui.html is the page it
serves. Everything the server does lives here so that the tests can drive it piece by piece.

How a request flows:
  JSON body -> parse_chat_request (every field checked; 4xx naming the field)
            -> fit_prompt (tokenizer.render_for_completion, oldest turns dropped if too long)
            -> WorkerPool.admit (503 + Retry-After when every worker is busy and the queue is full)
            -> reply_events: waits for a free worker, runs Engine.generate in that worker's own
               thread, and passes the text to the event loop through an asyncio queue
            -> OpenAI chunks (SSE, ending with [DONE]) / one JSON reply / nanochat's own SSE events.

Generation is CPU-bound Python, so it must not run on the event loop: each worker owns one thread
(a one-thread executor) and one model copy (one per GPU; one on CPU). The loop stays free to answer
/health and to notice a client that went away; then a flag tells the thread to stop after the
current token, and the worker goes back to the pool as soon as the thread returns.

Prompt trimming and UTF-8-safe streaming are shared with the terminal chat (nanochat/chat.py).
"""

import asyncio
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from contextlib import aclosing, nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from nanochat.common import UserError
from nanochat import chat

log = logging.getLogger("uvicorn.error")  # shows up in the server's own log output

# -----------------------------------------------------------------------------
# request limits (the README and the UI quote these)

MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_TOTAL_CHARS = 32_000
MAX_BODY_BYTES = 1_000_000      # far above what the limits above allow, far below trouble
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_K_RANGE = (0, 200)          # 0 = no top-k filter
MAX_TOKENS_RANGE = (1, 4096)
MAX_STOP_STRINGS, MAX_STOP_CHARS = 4, 100   # OpenAI's "stop": up to 4 strings
ROLES = ("system", "user", "assistant")

class RequestError(Exception):
    """A request the server refuses: HTTP status, a sentence for the client, the field at fault."""

    def __init__(self, message, param=None, status=400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


class ServerBusy(Exception):
    """Every worker is busy and the wait queue is full (HTTP 503 with Retry-After)."""

    def __init__(self, retry_after):
        super().__init__(f"all workers are busy and the wait queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


# -----------------------------------------------------------------------------
# request checking

@dataclass
class SamplingDefaults:
    """The server's defaults (the -t, -k, -m flags), used when a request leaves a field out."""
    temperature: float = 0.6
    top_k: int = 50
    max_tokens: int = 512

    def check(self):
        """Raise UserError if a default is outside the range a request may ask for."""
        for name, value, (lo, hi) in (("temperature (-t)", self.temperature, TEMPERATURE_RANGE),
                                      ("top-k (-k)", self.top_k, TOP_K_RANGE),
                                      ("max tokens (-m)", self.max_tokens, MAX_TOKENS_RANGE)):
            if not lo <= value <= hi:
                raise UserError(f"{name} is {value}; it must be between {lo} and {hi}")


@dataclass
class ChatRequest:
    """A checked request. messages: [{"role", "content": str}]; top_k 0 and top_p 1 mean off."""
    messages: list
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int
    seed: int
    stream: bool
    include_usage: bool = False
    stop: tuple = ()                    # the reply ends before the first of these strings


def parse_json_body(raw):
    """bytes of a request body -> dict, or RequestError (400 malformed, 413 too large)."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"the request body is {len(raw):,} bytes; the limit is {MAX_BODY_BYTES:,}",
                           status=413)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})")
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _number(body, name, lo, hi, default, integer=False):
    value = body.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    # bool is a subclass of int in Python, but `"temperature": true` is a client bug
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise RequestError(f"{name} must be {kind}, not {json.dumps(value)}", param=name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(f"{name} is {value}; it must be between {lo:g} and {hi:g}", param=name)
    return int(value) if integer else float(value)


def _message_text(content, where):
    """A message's content as one string: a string, or OpenAI's list of {"type": "text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}[{j}] must be a text part {{\"type\": \"text\", \"text\": ...}}; "
                                   "this model reads text only", param=f"{where}[{j}]")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"{where} must be a string, not {json.dumps(content)[:40]}", param=where)


def parse_messages(messages):
    """Check the message list: count, roles, order, sizes. Returns [{"role", "content": str}]."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(f"messages holds {len(messages)} messages; the limit is {MAX_MESSAGES}", param="messages")
    out, total = [], 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with role and content", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role is {json.dumps(role)}; it must be one of {', '.join(ROLES)}",
                               param=f"{where}.role")
        text = _message_text(m.get("content"), f"{where}.content")
        if len(text) > MAX_MESSAGE_CHARS:
            raise RequestError(f"{where}.content is {len(text):,} characters; the limit is "
                               f"{MAX_MESSAGE_CHARS:,} per message", param=f"{where}.content")
        total += len(text)
        out.append({"role": role, "content": text})
    if total > MAX_TOTAL_CHARS:
        raise RequestError(f"messages hold {total:,} characters in all; the limit is {MAX_TOTAL_CHARS:,}",
                           param="messages")
    # the chat format: one optional system message, then user, assistant, user, ..., ending with user
    first = 1 if out[0]["role"] == "system" else 0
    for i in range(first, len(out)):
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if out[i]["role"] != expected:
            raise RequestError(f"messages[{i}].role is {json.dumps(out[i]['role'])} but {json.dumps(expected)} "
                               "was expected: after an optional first system message, roles alternate "
                               "user, assistant, user, ...", param=f"messages[{i}].role")
    if out[-1]["role"] != "user":
        raise RequestError("the last message must be from the user (the model writes the next assistant reply)",
                           param=f"messages[{len(out) - 1}].role")
    return out


def parse_chat_request(body, defaults):
    """Check a request body (dict) of either chat endpoint -> ChatRequest, or raise RequestError.

    OpenAI fields: messages, temperature, top_p, max_tokens (or max_completion_tokens), seed,
    stream, stream_options.include_usage, stop, n (only 1); plus top_k. Other fields are ignored, as
    OpenAI clients send some (model, user, ...) that do not change what this server does."""
    messages = parse_messages(body.get("messages"))
    temperature = _number(body, "temperature", *TEMPERATURE_RANGE, defaults.temperature)
    top_k = _number(body, "top_k", *TOP_K_RANGE, defaults.top_k, integer=True)
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0.0:
        raise RequestError("top_p is 0; it must be above 0 and at most 1 (1 = off)", param="top_p")
    # newer OpenAI clients may send max_completion_tokens instead of max_tokens
    max_name = "max_tokens" if body.get("max_tokens") is not None or "max_completion_tokens" not in body \
        else "max_completion_tokens"
    max_tokens = _number(body, max_name, *MAX_TOKENS_RANGE, defaults.max_tokens, integer=True)
    seed = _number(body, "seed", 0, 2**63 - 1, None, integer=True)
    if seed is None:
        seed = int.from_bytes(os.urandom(7), "little")  # a fresh reply each time, like OpenAI
    if body.get("n") not in (None, 1):
        raise RequestError(f"n is {json.dumps(body['n'])}; this server writes one reply per request (n=1)", param="n")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, not {json.dumps(stream)}", param="stream")
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    return ChatRequest(messages, temperature, top_k, top_p, max_tokens, seed, stream, include_usage,
                       parse_stop(body.get("stop")))


def parse_stop(stop):
    """OpenAI's stop: null, a string, or a list of up to 4 strings -> a tuple of non-empty strings."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(x, str) and x for x in stops):
        raise RequestError(f"stop must be a non-empty string or a list of them, not {json.dumps(stop)[:40]}",
                           param="stop")
    if len(stops) > MAX_STOP_STRINGS or any(len(x) > MAX_STOP_CHARS for x in stops):
        raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} "
                           "characters each", param="stop")
    return tuple(stops)


def fit_prompt(tokenizer, messages, context_len):
    """chat.fit_prompt (the one trimming rule), with a message that cannot fit as a 400 naming it."""
    try:
        return chat.fit_prompt(tokenizer, messages, context_len)
    except chat.PromptTooLong as e:
        raise RequestError(str(e), param=f"messages[{len(messages) - 1}].content")


class StopFilter:
    """Cuts a streamed reply before the first stop string, even one split across pieces.

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is; everything else passes through at once."""

    def __init__(self, stops):
        self.stops = stops
        self.held = ""

    def feed(self, text):
        """(text that is safe to send now, whether a stop string was reached)."""
        self.held += text
        found = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.held = self.held[:min(found)], ""
            return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.held.endswith(s[:k])), default=0)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        return out, False

    def flush(self):
        """The text held back at the end of the reply: no stop string followed it."""
        out, self.held = self.held, ""
        return out


# -----------------------------------------------------------------------------
# workers and the pool

@dataclass
class Worker:
    """One model copy on one device, with its own generation thread and counters."""
    index: int
    device: torch.device
    engine: object                      # nanochat.engine.Engine
    context_len: int                    # prompt + reply must fit in this many positions
    busy: bool = False
    requests_served: int = 0
    tokens_generated: int = 0
    cancelled: int = 0
    executor: ThreadPoolExecutor = field(default=None, repr=False)

    def __post_init__(self):
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker{self.index}")

    def generate(self, ids, request, stop, emit):
        """Runs in this worker's thread: generate a reply, emit(text) as it grows.

        Checks `stop` (a threading.Event) before each token, so a client that goes away costs
        at most one more forward pass. Returns (finish_reason, completion tokens)."""
        engine, tokenizer = self.engine, self.engine.tokenizer
        decoder = chat.StreamDecoder(tokenizer)
        stopper = StopFilter(request.stop)
        max_new = min(request.max_tokens, self.context_len - len(ids))
        finish, n, hit = "length", 0, False
        autocast = (torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    else nullcontext())
        with autocast:  # autocast is per thread, so it is entered here, not in the server
            for column, _ in engine.generate(ids, max_tokens=max_new, temperature=request.temperature,
                                             top_k=request.top_k or None, top_p=request.top_p,
                                             seed=request.seed):
                if stop.is_set():
                    finish = "cancelled"
                    break
                token = column[0]
                if token in (engine.assistant_end, engine.bos):
                    finish = "stop"
                    break
                n += 1
                text, hit = stopper.feed(decoder.add(token))
                if text:
                    emit(text)
                if hit:
                    finish = "stop"
                    break
        if not hit:
            text, hit = stopper.feed(decoder.flush())
            text += "" if hit else stopper.flush()
            finish = "stop" if hit else finish
            if text:
                emit(text)
        return finish, n


class WorkerPool:
    """Hands workers to requests, first come first served, with a bounded wait queue.

    At most len(workers) requests run and at most max_queue wait; admit() refuses the next one
    with ServerBusy. Only the event loop thread touches the pool (threads report back through
    call_soon_threadsafe), so no locks are needed."""

    def __init__(self, workers, max_queue):
        assert workers, "a pool needs at least one worker"
        self.workers = list(workers)
        self.max_queue = max_queue
        self._free = deque(self.workers)
        self._waiters = deque()         # futures of requests waiting for a worker
        self._admitted = 0              # running + waiting
        self.rejected = 0
        self.started = time.time()
        self._recent_seconds = deque(maxlen=32)  # how long recent requests held a worker

    @property
    def busy(self):
        return sum(w.busy for w in self.workers)

    @property
    def available(self):
        return len(self._free)

    @property
    def queued(self):
        return self._admitted - self.busy

    def retry_after(self):
        """Seconds a refused client should wait: about one request's time, 1 to 60."""
        if not self._recent_seconds:
            return 1
        mean = sum(self._recent_seconds) / len(self._recent_seconds)
        return max(1, min(60, math.ceil(mean)))

    def admit(self):
        """A place in line for one request, or ServerBusy when the line is full."""
        if self._admitted >= len(self.workers) + self.max_queue:
            self.rejected += 1
            raise ServerBusy(self.retry_after())
        self._admitted += 1
        return Admission(self)

    async def _acquire(self):
        if self._free:
            worker = self._free.popleft()
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                worker = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._hand_over(waiter.result())  # got one just as we left: pass it on
                else:
                    self._waiters.remove(waiter)
                raise
        worker.busy = True
        return worker

    def _hand_over(self, worker):
        worker.busy = False
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._free.append(worker)

    def _release(self, worker, seconds):
        self._recent_seconds.append(seconds)
        self._admitted -= 1
        self._hand_over(worker)

    def stats(self):
        return {
            "num_workers": len(self.workers),
            "busy": self.busy,
            "available": self.available,
            "queued": self.queued,
            "max_queue": self.max_queue,
            "rejected": self.rejected,
            "requests_served": sum(w.requests_served for w in self.workers),
            "uptime_s": round(time.time() - self.started, 1),
            "workers": [{"id": w.index, "device": str(w.device), "busy": w.busy,
                         "requests_served": w.requests_served, "tokens_generated": w.tokens_generated,
                         "cancelled": w.cancelled} for w in self.workers],
        }


class Admission:
    """One request's place in the pool: wait for a worker, then give it back exactly once."""

    def __init__(self, pool):
        self.pool = pool
        self._open = True

    def close(self):
        """Give the place up without ever running (an error before generation started)."""
        if self._open:
            self._open = False
            self.pool._admitted -= 1

    async def acquire(self):
        try:
            worker = await self.pool._acquire()
        except BaseException:
            self.close()
            raise
        self._open = False  # from here on the worker's release ends the admission
        return worker


@dataclass
class ReplyEnd:
    """The last event of a reply."""
    finish_reason: str      # "stop" (end token), "length" (max_tokens or context), "cancelled"
    completion_tokens: int


async def reply_events(admission, ids, request):
    """Async iterator over one reply: text pieces (str), then a ReplyEnd.

    Waits for a worker, runs generation in the worker's thread and forwards its text. If the
    consumer stops early (the client disconnected, the task was cancelled), the finally clause
    tells the thread to stop; the worker returns to the pool the moment the thread ends."""
    pool = admission.pool
    worker = await admission.acquire()
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    stop = threading.Event()
    started = time.perf_counter()

    def emit(text):
        loop.call_soon_threadsafe(queue.put_nowait, text)

    def run():
        try:
            return worker.generate(ids, request, stop, emit)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    def finished(fut):
        if not fut.cancelled() and fut.exception() is None:
            finish, n = fut.result()
            worker.tokens_generated += n
            worker.requests_served += 1
            worker.cancelled += finish == "cancelled"
        pool._release(worker, time.perf_counter() - started)

    fut = loop.run_in_executor(worker.executor, run)
    fut.add_done_callback(finished)  # registered first: the worker is free before we read the result
    try:
        ended = False
        while not ended:
            item = await queue.get()
            if item is None:
                break
            # merge what piled up meanwhile: fewer, larger chunks when the loop falls behind
            while not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    ended = True
                    break
                item += more
            yield item
        finish, n = await fut
        yield ReplyEnd(finish, n)
    finally:
        stop.set()


# -----------------------------------------------------------------------------
# loading the models

def load_workers(source, device_type, num_workers=None, model_tag=None, step=None):
    """Load one model copy per worker: one per GPU on CUDA, one on CPU/MPS.

    Returns (workers, model_name, meta). num_workers None means every visible GPU."""
    from nanochat.checkpoint_manager import load_model, resolve_checkpoint
    from nanochat.common import resolve_device_type
    from nanochat.engine import Engine
    device_type = resolve_device_type(device_type)
    if device_type == "cuda":
        available = torch.cuda.device_count()
        num_workers = available if num_workers is None else num_workers
        if not 1 <= num_workers <= available:
            raise UserError(f"-n/--num-gpus is {num_workers} but {available} GPU(s) are visible; use 1 to {available}")
        devices = [torch.device("cuda", i) for i in range(num_workers)]
    else:
        if num_workers not in (None, 1):
            raise UserError(f"-n/--num-gpus is {num_workers}, but on {device_type} the server runs one worker; "
                            "leave -n out (it counts GPUs)")
        devices = [torch.device(device_type)]
    _, tag, step = resolve_checkpoint(source, model_tag, step)
    workers, meta = [], None
    for i, device in enumerate(devices):
        model, tokenizer, meta = load_model(source, device, phase="eval", model_tag=tag, step=step, verbose=(i == 0))
        workers.append(Worker(i, device, Engine(model, tokenizer), context_len=chat.context_length(model)))
    return workers, f"nanochat-{source}-{tag}-step{step}", meta


# -----------------------------------------------------------------------------
# the HTTP app

UI_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui.html")

# the page may talk to this server only: no CDN, no fonts, no analytics
UI_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'")


def _error_body(message, param=None, kind="invalid_request_error"):
    # OpenAI's error shape, so the openai package raises BadRequestError etc. with our message
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _sse(obj):
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _wait_for_disconnect(request):
    """Returns when the client goes away (the body has been read, so only disconnect can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(pool, model_name, defaults=None, ui_path=UI_PATH):
    """The FastAPI app: UI, health, stats, OpenAI-compatible and nanochat chat endpoints."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.background import BackgroundTask

    defaults = defaults or SamplingDefaults()
    defaults.check()
    tokenizer = pool.workers[0].engine.tokenizer
    context_len = min(w.context_len for w in pool.workers)
    with open(ui_path, encoding="utf-8") as f:
        ui_html = f.read()
    app = FastAPI(title="nanochat", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(RequestError)
    async def request_error(request, e):
        return JSONResponse(_error_body(e.message, e.param), status_code=e.status)

    @app.exception_handler(ServerBusy)
    async def server_busy(request, e):
        return JSONResponse(_error_body(str(e), kind="server_busy"), status_code=503,
                            headers={"Retry-After": str(e.retry_after)})

    @app.get("/")
    async def ui():
        return HTMLResponse(ui_html, headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "ready": True, "model": model_name, "workers": len(pool.workers),
                "available": pool.available, "queued": pool.queued}

    @app.get("/stats")
    async def stats():
        return {"model": model_name, "context_len": context_len,
                "defaults": {"temperature": defaults.temperature, "top_k": defaults.top_k,
                             "max_tokens": defaults.max_tokens},
                **pool.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "nanochat"}]}

    async def start(request):
        """Read, check and admit a request: (ChatRequest, prompt ids, Admission)."""
        declared = request.headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:  # refuse before reading it all
            raise RequestError(f"the request body is {int(declared):,} bytes; the limit is {MAX_BODY_BYTES:,}",
                               status=413)
        chat = parse_chat_request(parse_json_body(await request.body()), defaults)
        ids, _ = fit_prompt(tokenizer, chat.messages, context_len)
        return chat, ids, pool.admit()

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request):
        chat, ids, admission = await start(request)
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        stamp = int(time.time())
        if chat.stream:
            return StreamingResponse(_openai_stream(admission, ids, chat, reply_id, stamp),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                     background=BackgroundTask(admission.close))
        try:
            text, end = await _collect_or_disconnect(request, admission, ids, chat)
        except Exception as e:
            log.exception("generation failed")
            return JSONResponse(_error_body(f"generation failed: {type(e).__name__}: {e}", kind="server_error"),
                                status_code=500)
        if end is None:  # the client left; nobody reads this
            return JSONResponse(_error_body("client disconnected"), status_code=499)
        return {"id": reply_id, "object": "chat.completion", "created": stamp, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": end.finish_reason}],
                "usage": _usage(ids, end)}

    def _usage(ids, end):
        return {"prompt_tokens": len(ids), "completion_tokens": end.completion_tokens,
                "total_tokens": len(ids) + end.completion_tokens}

    async def _openai_stream(admission, ids, chat, reply_id, stamp):
        def chunk(delta, finish=None):
            return _sse({"id": reply_id, "object": "chat.completion.chunk", "created": stamp, "model": model_name,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})
        try:
            yield chunk({"role": "assistant", "content": ""})
            async with aclosing(reply_events(admission, ids, chat)) as events:
                async for event in events:
                    if isinstance(event, ReplyEnd):
                        yield chunk({}, event.finish_reason)
                        if chat.include_usage:
                            yield _sse({"id": reply_id, "object": "chat.completion.chunk", "created": stamp,
                                        "model": model_name, "choices": [], "usage": _usage(ids, event)})
                    else:
                        yield chunk({"content": event})
        except Exception as e:  # headers are gone already: report inside the stream
            log.exception("generation failed")
            yield _sse(_error_body(f"generation failed: {type(e).__name__}: {e}", kind="server_error"))
        finally:
            admission.close()
        yield "data: [DONE]\n\n"

    @app.post("/chat/completions")
    async def nanochat_chat(request: Request):
        """nanochat's own stream for the UI: {"token": text} events, then {"done": true, ...}."""
        chat, ids, admission = await start(request)
        # the background task frees the place in line even if the stream never started
        return StreamingResponse(_nanochat_stream(admission, ids, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"}, background=BackgroundTask(admission.close))

    async def _nanochat_stream(admission, ids, chat):
        t0 = time.perf_counter()
        try:
            async with aclosing(reply_events(admission, ids, chat)) as events:
                async for event in events:
                    if isinstance(event, ReplyEnd):
                        yield _sse({"done": True, "finish_reason": event.finish_reason,
                                    "prompt_tokens": len(ids), "completion_tokens": event.completion_tokens,
                                    "seconds": round(time.perf_counter() - t0, 3)})
                    else:
                        yield _sse({"token": event})
        except Exception as e:
            log.exception("generation failed")
            yield _sse({"error": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            admission.close()

    return app


async def _collect_or_disconnect(request, admission, ids, chat):
    """Non-streaming: the whole reply, or (None, None) if the client leaves first (worker freed)."""
    async def collect():
        pieces, end = [], None
        try:
            async with aclosing(reply_events(admission, ids, chat)) as events:
                async for event in events:
                    if isinstance(event, ReplyEnd):
                        end = event
                    else:
                        pieces.append(event)
        finally:
            admission.close()
        return "".join(pieces), end

    work = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not work.done():
        work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            pass
        return None, None
    gone.cancel()
    return work.result()
