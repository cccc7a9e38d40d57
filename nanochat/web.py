"""
The chat server's logic: request checking, the worker pool, UTF-8-safe streaming and the HTTP app.

Pipeline position: the last stage. scripts/chat_web.py parses flags, loads one model copy per
device with load_workers() and runs create_app() under uvicorn; nanochat/ui.html is the page it
serves. Everything the server does lives here so that the tests can drive it piece by piece.

How a request flows:
  bytes -> RequestGuard (API key, body size counted as it streams in, any crash -> a 500 in
           OpenAI's error shape)
        -> parse_json_body (depth and number size bounded) -> parse_chat_request /
           parse_completion_request (every field checked; 4xx naming the field)
        -> chat_prompt (chat.fit_prompt: oldest turns dropped if too long; a final assistant
           message is continued) / completion prompts (text or token ids, as given)
        -> WorkerPool.admit (503 + Retry-After when every worker is busy and the queue is full)
        -> worker_events: waits for a free worker, runs the job (Engine.generate, or a forward
           pass that scores a prompt) in that worker's own thread, and passes Pieces of text to
           the event loop through an asyncio queue
        -> OpenAI chunks (SSE, ending with [DONE]) / one JSON reply / the page's own SSE events.

Generation is CPU-bound Python, so it must not run on the event loop: each worker owns one thread
(a one-thread executor) and one model copy (one per GPU; one on CPU). The loop stays free to answer
/health and to notice a client that went away; then a flag tells the thread to stop after the
current token, and the worker goes back to the pool as soon as the thread returns.

Log-probabilities are those of the model itself (log-softmax of its logits, before temperature,
top-k or top-p), as OpenAI reports them: LogitsTap keeps the logits of the Engine's last forward
pass, which are the ones the token just yielded was drawn from.

Prompt trimming and UTF-8-safe streaming are shared with the terminal chat (nanochat/chat.py).
"""

import asyncio
import codecs
import hmac
import json
import logging
import math
import os
import re
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

MAX_MESSAGES = 4096             # a long history is trimmed to the context, so this only bounds work
MAX_BODY_BYTES = 1_000_000      # counted while the body streams in
MAX_JSON_DEPTH = 32             # a chat request needs 6 levels; deep nesting only costs
MAX_NUMBER_CHARS = 100          # one JSON number; Python refuses ints of over 4,300 digits anyway
TEMPERATURE_RANGE = (0.0, 2.0)
MIN_TEMPERATURE = 1e-4          # below this, sampling is greedy (the limit as T -> 0; 1/T would overflow)
MIN_TOP_P = 1e-6                # below this, top_p keeps the top token only, as 1e-6 does
TOP_K_RANGE = (0, 200)          # 0 = no top-k filter
MAX_TOKENS_RANGE = (1, 4096)
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 32                # prompts in one /v1/completions request
MAX_STOP_STRINGS, MAX_STOP_CHARS = 4, 100   # OpenAI's "stop": up to 4 strings
ROLES = ("system", "developer", "user", "assistant")   # developer is OpenAI's newer name for system


class RequestError(Exception):
    """A request the server refuses: HTTP status, a sentence for the client, the field at fault."""

    def __init__(self, message, param=None, status=400, code=None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


class ServerBusy(Exception):
    """Every worker is busy and the wait queue is full (HTTP 503 with Retry-After)."""

    def __init__(self, retry_after):
        super().__init__(f"all workers are busy and the wait queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


# -----------------------------------------------------------------------------
# the request body: JSON, bounded

def _json_int(text):
    if len(text) > MAX_NUMBER_CHARS:
        raise RequestError(f"the request holds a number of {len(text):,} digits; numbers may have at most "
                           f"{MAX_NUMBER_CHARS}")
    return int(text)


def _json_float(text):
    if len(text) > MAX_NUMBER_CHARS:
        raise RequestError(f"the request holds a number of {len(text):,} characters; numbers may have at most "
                           f"{MAX_NUMBER_CHARS}")
    return float(text)


def _json_constant(name):
    raise RequestError(f"the request body is not valid JSON ({name} is not a JSON number)")


def _json_depth_ok(value, limit):
    """True when no list or object in value is nested more than limit deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, dict)):
            if depth > limit:
                return False
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def parse_json_body(raw):
    """bytes of a request body -> dict, or RequestError (400 malformed or too deep, 413 too large)."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"the request body is {len(raw):,} bytes; the limit is {MAX_BODY_BYTES:,}",
                           status=413)
    try:
        body = json.loads(raw, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except RecursionError:
        body = None  # nested beyond Python's own limit: refused below like any deep body
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})")
    if body is None or not _json_depth_ok(body, MAX_JSON_DEPTH):
        raise RequestError(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def clean_text(text):
    """A str as UTF-8 can carry it: JSON's \\ud800-style escapes may leave lone surrogates, which
    become U+FFFD (a pair becomes the character it stands for), as the tokenizer reads them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


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


@dataclass(kw_only=True)
class Sampling:
    """How to write a reply; top_k 0, top_p 1 and min_p 0 mean off."""
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int
    seed: int
    min_p: float = 0.0
    stop: tuple = ()                    # the reply ends before the first of these strings
    logprobs: int = None                # None: no log-probabilities; n: each token's and the n likeliest
    stream: bool = False
    include_usage: bool = False


@dataclass(kw_only=True)
class ChatRequest(Sampling):
    """A checked chat request. messages: [{"role", "content"}], roles merged and in the chat format."""
    messages: list


@dataclass(kw_only=True)
class CompletionRequest(Sampling):
    """A checked completion request: each prompt as token ids, with where its echo starts."""
    prompts: list                       # [(ids, echo_from)]; echo_from 1 skips a <|bos|> we added
    echo: bool = False


def number_field(body, name, lo, hi, default, integer=False):
    """body[name] as a number in [lo, hi] (default when absent or null); anything else is a 400 naming it."""
    value = body.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    # bool is a subclass of int in Python, but `"temperature": true` is a client bug
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise RequestError(f"{name} must be {kind}, not {json.dumps(value)[:40]}", param=name)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(f"{name} is {value}; it must be between {lo:g} and {hi:g}", param=name)
    return int(value) if integer else float(value)


def _flag(body, name):
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, not {json.dumps(value)[:40]}", param=name)
    return value


# Fields of OpenAI's API that this model cannot honour: a request that uses them gets a 400 naming
# the field rather than a reply that silently ignored it. Each maps to the values that ask for
# nothing (what clients send by default) and the reason.
NO_TOOLS = "this model has no function calling (its calculator runs inside the reply); leave it out"
UNSUPPORTED = {
    "tools": ((None, []), NO_TOOLS),
    "functions": ((None, []), NO_TOOLS),
    "tool_choice": ((None, "none"), NO_TOOLS),
    "function_call": ((None, "none"), NO_TOOLS),
    "response_format": ((None, {"type": "text"}), "this model cannot be held to a JSON format; only "
                                                  "{\"type\": \"text\"} is accepted"),
    "logit_bias": ((None, {}), "this server does not bias logits"),
    "presence_penalty": ((None, 0), "this server applies no penalties; leave it out or send 0"),
    "frequency_penalty": ((None, 0), "this server applies no penalties; leave it out or send 0"),
    "repetition_penalty": ((None, 1), "this server applies no penalties; leave it out or send 1"),
    "audio": ((None,), "this model reads and writes text only"),
    "modalities": ((None, ["text"]), "this model reads and writes text only"),
    "prediction": ((None,), "this server has no predicted outputs"),
    "web_search_options": ((None,), "this model cannot search the web"),
    "reasoning_effort": ((None,), "this model has no reasoning settings"),
    "suffix": ((None, ""), "this model writes left to right only (no insertion)"),
    "best_of": ((None, 1), "this server writes one completion per prompt"),
    "n": ((None, 1), "this server writes one reply per request (n=1)"),
}


def check_unsupported(body, names):
    """400 for the first of these UNSUPPORTED fields that asks for something."""
    for name in names:
        harmless, why = UNSUPPORTED[name]
        value = body.get(name)
        # == alone would take true for 1 and false for 0
        if not any(value == h and isinstance(value, bool) == isinstance(h, bool) for h in harmless):
            raise RequestError(f"{name} is {json.dumps(value)[:60]}: {why}", param=name)


def parse_sampling(body, defaults, max_tokens_lo=1):
    """The sampling fields both endpoints share -> keyword arguments of Sampling."""
    temperature = number_field(body, "temperature", *TEMPERATURE_RANGE, defaults.temperature)
    if temperature < MIN_TEMPERATURE:
        temperature = 0.0
    top_k = number_field(body, "top_k", *TOP_K_RANGE, defaults.top_k, integer=True)
    top_p = number_field(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0.0:
        raise RequestError("top_p is 0; it must be above 0 and at most 1 (1 = off)", param="top_p")
    min_p = number_field(body, "min_p", 0.0, 1.0, 0.0)
    # newer OpenAI clients may send max_completion_tokens instead of max_tokens
    max_name = "max_tokens" if body.get("max_tokens") is not None or "max_completion_tokens" not in body \
        else "max_completion_tokens"
    max_tokens = number_field(body, max_name, max_tokens_lo, MAX_TOKENS_RANGE[1], defaults.max_tokens, integer=True)
    seed = number_field(body, "seed", 0, 2**63 - 1, None, integer=True)
    if seed is None:
        seed = int.from_bytes(os.urandom(7), "little")  # a fresh reply each time, like OpenAI
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    return dict(temperature=temperature, top_k=top_k, top_p=max(top_p, MIN_TOP_P), min_p=min_p,
                max_tokens=max_tokens, seed=seed, stream=stream, include_usage=include_usage,
                stop=parse_stop(body.get("stop")))


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
    return tuple(clean_text(x) for x in stops)


TOOL_PART_TYPES = ("python", "python_output")   # the page sends back the calculator calls of a reply


def _message_content(content, where, tool_parts=False):
    """A message's content: a string, or OpenAI's list of {"type": "text"} parts (joined); with
    tool_parts (the page's assistant messages) a list that holds calculator parts stays a list."""
    if isinstance(content, str):
        return clean_text(content)
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            allowed = ("text",) + (TOOL_PART_TYPES if tool_parts else ())
            if not isinstance(part, dict) or part.get("type") not in allowed or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}[{j}] must be a text part {{\"type\": \"text\", \"text\": ...}}; "
                                   "this model reads text only", param=f"{where}[{j}]")
            parts.append({"type": part["type"], "text": clean_text(part["text"])})
        if all(p["type"] == "text" for p in parts):
            return "".join(p["text"] for p in parts)
        return parts
    raise RequestError(f"{where} must be a string, not {json.dumps(content)[:40]}", param=where)


def _joined(a, b):
    """Two contents of one role, as one: front ends send runs of messages of one role."""
    if isinstance(a, str) and isinstance(b, str):
        return a + "\n\n" + b
    as_parts = lambda c: [{"type": "text", "text": c}] if isinstance(c, str) else c  # noqa: E731
    return as_parts(a) + [{"type": "text", "text": "\n\n"}] + as_parts(b)


def parse_messages(messages, tool_parts=False):
    """Check the message list and bring it into the chat format: developer read as system, runs
    of one role merged into one message, one optional system message first, then user and
    assistant taking turns. Returns [{"role", "content"}]; a final assistant message is one to
    continue."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(f"messages holds {len(messages)} messages; the limit is {MAX_MESSAGES}", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with role and content", param=where)
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise RequestError(f"{where} is a tool message or call: {NO_TOOLS}", param=where)
        if not isinstance(role, str) or role not in ROLES:
            raise RequestError(f"{where}.role is {json.dumps(role)[:40]}; it must be one of {', '.join(ROLES)}",
                               param=f"{where}.role")
        role = "system" if role == "developer" else role
        content = _message_content(m.get("content"), f"{where}.content", tool_parts and role == "assistant")
        if out and out[-1]["role"] == role:
            out[-1]["content"] = _joined(out[-1]["content"], content)
            continue
        if role == "system" and out:
            raise RequestError(f"{where} is a system message after the conversation began; system (or developer) "
                               "messages must come first", param=f"{where}.role")
        if role == "assistant" and (not out or out[-1]["role"] == "system"):
            raise RequestError(f"{where} is from the assistant, but the conversation must begin with the user "
                               "(after any system message)", param=f"{where}.role")
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "system":
        raise RequestError("the conversation has a system message but no user message", param="messages")
    return out


def parse_chat_request(body, defaults, tool_parts=False):
    """Check a Chat Completions body (dict) -> ChatRequest, or raise RequestError.

    OpenAI fields: messages, temperature, top_p, max_tokens (or max_completion_tokens), seed,
    stream, stream_options.include_usage, stop, logprobs, top_logprobs; plus top_k and min_p.
    Fields this model cannot honour (UNSUPPORTED) are refused unless they ask for nothing;
    others that change nothing here (model, user, store, metadata, ...) are ignored."""
    check_unsupported(body, ("n", "tools", "functions", "tool_choice", "function_call", "response_format",
                             "logit_bias", "presence_penalty", "frequency_penalty", "repetition_penalty",
                             "audio", "modalities", "prediction", "web_search_options", "reasoning_effort"))
    messages = parse_messages(body.get("messages"), tool_parts)
    sampling = parse_sampling(body, defaults)
    top = number_field(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, None, integer=True)
    logprobs = None
    if _flag(body, "logprobs"):
        logprobs = top or 0
    elif top:
        raise RequestError("top_logprobs needs \"logprobs\": true", param="top_logprobs")
    return ChatRequest(messages=messages, logprobs=logprobs, **sampling)


def parse_completion_request(body, defaults, tokenizer, context_len):
    """Check a (legacy) Completions body -> CompletionRequest, or raise RequestError.

    prompt: a string, a list of strings, a list of token ids or a list of lists of them. Text is
    read as a base model reads documents: <|bos|> first (added unless the text begins with it),
    and special-token strings are the special tokens (the client writes the whole prompt here;
    chat messages never get this). Token ids are taken as they are."""
    check_unsupported(body, ("n", "best_of", "suffix", "logit_bias", "presence_penalty", "frequency_penalty",
                             "repetition_penalty"))
    echo = _flag(body, "echo")
    sampling = parse_sampling(body, defaults, max_tokens_lo=0 if echo else 1)
    logprobs = number_field(body, "logprobs", 0, MAX_TOP_LOGPROBS, None, integer=True)
    prompt = body.get("prompt")
    vocab = tokenizer.get_vocab_size()
    is_ids = lambda p: isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)  # noqa: E731
    if isinstance(prompt, str) or is_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) or is_ids(p) for p in prompt):
        raise RequestError("prompt must be a string, a list of strings, a non-empty list of token ids, or a list "
                           "of such lists", param="prompt")
    if len(prompt) > MAX_PROMPTS:
        raise RequestError(f"prompt holds {len(prompt)} prompts; the limit is {MAX_PROMPTS}", param="prompt")
    bos = tokenizer.get_bos_token_id()
    prompts = []
    for p in prompt:
        if isinstance(p, str):
            ids = encode_with_specials(tokenizer, clean_text(p))
            echo_from = 0 if ids[:1] == [bos] else 1
            ids = ids if echo_from == 0 else [bos] + ids
        else:
            bad = next((t for t in p if not 0 <= t < vocab), None)
            if bad is not None:
                raise RequestError(f"prompt holds token id {bad}; this tokenizer's ids are 0 to {vocab - 1}",
                                   param="prompt")
            ids, echo_from = list(p), 0
        room = context_len if sampling["max_tokens"] == 0 else context_len - 1
        if len(ids) > room:
            raise RequestError(f"a prompt is {len(ids):,} tokens; this model reads at most {context_len:,} "
                               "(prompt and reply together), so shorten it", param="prompt")
        prompts.append((ids, echo_from))
    return CompletionRequest(prompts=prompts, echo=echo, logprobs=logprobs, **sampling)


def encode_with_specials(tokenizer, text):
    """Text -> ids, with special-token strings (like <|bos|>) read as the special tokens."""
    names = tokenizer.get_special_tokens()
    pattern = "(" + "|".join(re.escape(name) for name in names) + ")"
    ids = []
    for piece in re.split(pattern, text):
        if piece in names:
            ids.append(tokenizer.encode_special(piece))
        elif piece:
            ids.extend(tokenizer.encode(piece))
    return ids


def fit_prompt(tokenizer, messages, context_len):
    """chat.fit_prompt (the one trimming rule), with a message that cannot fit as a 400 naming it."""
    try:
        return chat.fit_prompt(tokenizer, messages, context_len)
    except chat.PromptTooLong as e:
        raise RequestError(str(e), param=f"messages[{len(messages) - 1}].content")


def chat_prompt(tokenizer, messages, context_len):
    """Prompt ids for the assistant's reply, within the context (the oldest turns dropped as needed).

    A conversation that ends with an assistant message continues it ("Continue response" in
    front ends): the prompt ends with that message's tokens instead of closing it, and the reply
    is the rest of it."""
    if messages[-1]["role"] != "assistant":
        return fit_prompt(tokenizer, messages, context_len)[0]
    # the assistant message's own tokens: render it after an empty user turn, then cut
    # <|bos|> <|user_start|> <|user_end|> <|assistant_start|> before and <|assistant_end|> after
    whole, _ = tokenizer.render_conversation({"messages": [{"role": "user", "content": ""}, messages[-1]]},
                                             max_tokens=None)
    partial = whole[4:-1]
    if len(partial) >= context_len - 8:
        raise RequestError(f"the assistant message to continue is {len(partial):,} tokens; this model reads at "
                           f"most {context_len:,}", param=f"messages[{len(messages) - 1}].content")
    return fit_prompt(tokenizer, messages[:-1], context_len - len(partial))[0] + partial


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
# what a worker sends back while it writes

@dataclass
class TokenLogprob:
    """One token of a reply or prompt: its log-probability under the model (None for a prompt's
    first token, which nothing predicts), the likeliest alternatives, and where its text starts."""
    token: int
    logprob: float
    top: list                           # [(token id, logprob)], likeliest first
    offset: int                         # characters of the reply's text before this token's


@dataclass
class Piece:
    """A bit of a reply: text of one part (reply text, a calculator call, its result), and the
    tokens behind it when log-probabilities were asked for. marker: the tool token whose text
    (chat.TOOL_TOKEN_TEXT) this is, shown where plain text stands for a calculator call."""
    text: str
    part: str = "text"                  # "text", "python" or "python_output"
    marker: str = None
    tokens: list = field(default_factory=list)
    index: int = 0                      # which prompt (a completion request may have several)

    def joins(self, other):
        return (self.index, self.part, self.marker, other.marker) == (other.index, other.part, None, None)


@dataclass
class ReplyEnd:
    """The last event of one reply."""
    finish_reason: str      # "stop" (end token or stop string), "length" (max_tokens or context), "cancelled"
    completion_tokens: int
    index: int = 0


class LogitsTap:
    """The model as the Engine sees it, keeping the logits of the last position of each forward
    pass: when Engine.generate yields a token, these are the logits it was drawn from."""

    def __init__(self, model):
        self.model = model
        self.last = None

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forward(self, *args, **kwargs):
        logits = self.model.forward(*args, **kwargs)
        self.last = logits[:, -1, :]  # (B, V)
        return logits


def _top(logp, n):
    if not n:
        return []
    values, ids = torch.topk(logp, n)
    return list(zip(ids.tolist(), values.tolist()))


TOOL_PART = {"<|python_start|>": "python", "<|python_end|>": "python",            # the part each
             "<|output_start|>": "python_output", "<|output_end|>": "python_output"}  # marker belongs to


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

    def _autocast(self):
        # autocast is per thread, so it is entered in the worker's thread, not in the server
        if torch.device(self.device).type == "cuda":
            return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def generate(self, ids, request, stop, emit, index=0, offset=0):
        """Runs in this worker's thread: write a reply to prompt ids, emit(Piece) as it grows,
        then emit(ReplyEnd) and return it.

        Checks `stop` (a threading.Event) before each token, so a client that goes away costs
        at most one more forward pass. Stop strings are looked for in the reply's text, not
        inside calculator calls. offset: characters already in the reply's text (an echo)."""
        engine, tokenizer = self.engine, self.engine.tokenizer
        tap = None
        if request.logprobs is not None:
            tap = LogitsTap(engine.model)
            engine = type(engine)(tap, tokenizer)
        tools = {tokenizer.encode_special(name): name for name in TOOL_PART}
        decoder = chat.StreamDecoder(tokenizer)
        stopper = StopFilter(request.stop)
        max_new = min(request.max_tokens, self.context_len - len(ids))
        vocab = tokenizer.get_vocab_size()
        finish, n, part, pending, chars, hit = "length", 0, "text", [], offset, False

        def send(text, close=False):
            """Emit text of the current part; True when it reached a stop string."""
            nonlocal pending
            hit = False
            if part == "text":
                text, hit = stopper.feed(text)
                if close and not hit:
                    text += stopper.flush()
            if text or pending:
                emit(Piece(text, part, tokens=pending, index=index))
                pending = []
            return hit

        with self._autocast():
            for column, _ in engine.generate(ids, max_tokens=max_new, temperature=request.temperature,
                                             top_k=request.top_k or None, top_p=request.top_p,
                                             min_p=request.min_p or None, seed=request.seed):
                if stop.is_set():
                    finish = "cancelled"
                    break
                token = column[0]
                if token in (engine.assistant_end, engine.bos):
                    finish = "stop"
                    break
                n += 1
                if tap is not None:
                    logp = torch.log_softmax(tap.last[0].float(), dim=-1)  # (V,)
                    top = _top(logp[:vocab], request.logprobs)
                    pending.append(TokenLogprob(token, logp[token].item(), top, chars))
                name = tools.get(token)
                if name is None:
                    # any other special token is dropped (it interrupts a half-done character)
                    text = decoder.flush() if tokenizer.is_special(token) else decoder.add(token)
                    chars += len(text)
                    hit = send(text)
                else:
                    # a calculator call starts or ends: what came before goes out first (a stop
                    # string cannot reach across a call), then the marker, in the call's part
                    info = [pending.pop()] if tap is not None else []
                    hit = send(decoder.flush(), close=True)
                    if not hit:
                        part = TOOL_PART[name]
                        emit(Piece(chat.TOOL_TOKEN_TEXT[name], part, marker=name, tokens=info, index=index))
                        chars += len(chat.TOOL_TOKEN_TEXT[name])
                        part = "text" if name.endswith("_end|>") else part
                if hit:
                    finish = "stop"
                    break
            if not hit:
                send(decoder.flush(), close=True)
        end = ReplyEnd(finish, n, index)
        emit(end)
        return end

    @torch.no_grad()
    def score_prompt(self, ids, top_n, echo_from=0):
        """Runs in this worker's thread: each prompt token's log-probability given the ones before
        it (one forward pass), from ids[echo_from] on; the first token of all has None."""
        tokenizer, model = self.engine.tokenizer, self.engine.model
        vocab = tokenizer.get_vocab_size()
        with self._autocast():
            logits = model(torch.tensor([ids], dtype=torch.long, device=model.get_device()))[0]  # (T, V)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out, chars = [], 0
        for t in range(len(ids)):
            if t >= echo_from:
                if t == 0:
                    out.append(TokenLogprob(ids[0], None, [], chars))
                else:
                    logp = torch.log_softmax(logits[t - 1].float(), dim=-1)  # row t-1 predicts token t
                    out.append(TokenLogprob(ids[t], logp[ids[t]].item(), _top(logp[:vocab], top_n), chars))
                chars += len(token_text(tokenizer, ids[t], decoder))
        return out


def token_text(tokenizer, token, decoder=None):
    """The text a token adds (a special token: its name). With an incremental UTF-8 decoder,
    only the characters it completes; without, a part of a character shows as U+FFFD."""
    if tokenizer.is_special(token):
        return (decoder.decode(b"", final=True) if decoder else "") + tokenizer.decode([token])
    if decoder is None:
        return tokenizer.id_to_token(token)
    return decoder.decode(tokenizer.token_to_bytes(token))


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


async def worker_events(admission, job):
    """Async iterator over what job(worker, stop, emit) emits from a worker's thread (Pieces and
    ReplyEnds); job returns the ReplyEnds of its replies.

    Waits for a worker, runs the job in the worker's thread and forwards what it emits. If the
    consumer stops early (the client disconnected, the task was cancelled), the finally clause
    tells the thread to stop; the worker returns to the pool the moment the thread ends."""
    pool = admission.pool
    worker = await admission.acquire()
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    stop = threading.Event()
    started = time.perf_counter()

    def emit(item):
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def run():
        try:
            return job(worker, stop, emit)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    def finished(fut):
        if not fut.cancelled() and fut.exception() is None:
            ends = fut.result()
            worker.tokens_generated += sum(e.completion_tokens for e in ends)
            worker.requests_served += 1
            worker.cancelled += any(e.finish_reason == "cancelled" for e in ends)
        pool._release(worker, time.perf_counter() - started)

    fut = loop.run_in_executor(worker.executor, run)
    fut.add_done_callback(finished)  # registered first: the worker is free before we read the result
    try:
        held = None  # pieces that piled up meanwhile go out merged: fewer, larger chunks
        while True:
            item = await queue.get()
            items = [item]
            while item is not None and not queue.empty():
                item = queue.get_nowait()
                items.append(item)
            for item in items:
                if isinstance(item, Piece) and held is not None and held.joins(item):
                    held.text += item.text
                    held.tokens += item.tokens
                    continue
                if held is not None:
                    yield held
                held = item if isinstance(item, Piece) else None
                if isinstance(item, ReplyEnd):
                    yield item
            if items[-1] is None:
                break
            if held is not None:
                yield held
                held = None
        await fut  # raises what the job raised
    finally:
        stop.set()


def reply_events(admission, ids, request):
    """One chat reply: Pieces, then a ReplyEnd."""
    return worker_events(admission, lambda worker, stop, emit: [worker.generate(ids, request, stop, emit)])


def completion_job(request, tokenizer):
    """The job of a completion request: for each prompt, its echo (text, and its tokens'
    log-probabilities when asked), then the completion."""
    def job(worker, stop, emit):
        ends = []
        for index, (ids, echo_from) in enumerate(request.prompts):
            offset = 0
            if request.echo:
                text = tokenizer.decode(ids[echo_from:])
                tokens = [] if request.logprobs is None else worker.score_prompt(ids, request.logprobs, echo_from)
                emit(Piece(text, tokens=tokens, index=index))
                offset = len(text)
            if request.max_tokens > 0 and not stop.is_set():
                ends.append(worker.generate(ids, request, stop, emit, index=index, offset=offset))
            else:
                ends.append(ReplyEnd("cancelled" if stop.is_set() else "length", 0, index))
                emit(ends[-1])
        return ends
    return job


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

# the headers of every page this project serves (the chat page here, the lab's pages in tools/lab.py)
PAGE_HEADERS = {"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

PUBLIC_PATHS = ("/", "/health")   # answered without the API key (the page asks for the key itself)
# OpenAI paths that a client whose base URL lacks /v1 asks for
OPENAI_PATHS = ("/chat/completions", "/completions", "/models", "/embeddings", "/responses")


def check_port_free(host, port):
    """A UserError when host:port cannot be bound (checked before a slow model load, not after)."""
    import socket
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another port with -p "
                            "or stop whatever uses it")


def error_body(message, param=None, kind="invalid_request_error", code=None):
    # OpenAI's error shape, so the openai package raises BadRequestError etc. with our message
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def _send_json(send, status, body, headers=()):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


def _replay(body, receive):
    """An ASGI receive that hands the app the body read already, then passes on (a disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replayed


class RequestGuard:
    """ASGI middleware, the first and last word on every HTTP request.

    - the API key (when set): any path but the page and /health needs "Authorization: Bearer KEY";
    - the body size: counted while it streams in, so a huge (or endless, chunked) upload is
      refused with 413 once it passes MAX_BODY_BYTES, not after it has all arrived;
    - any unexpected exception: one log line with its traceback, and a 500 in OpenAI's error
      shape if the answer has not begun. The worker and the server go on serving."""

    def __init__(self, app, api_key=None, max_body=MAX_BODY_BYTES):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body

    def _authorized(self, scope):
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, key = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), self.api_key)

    async def _read_body(self, scope, receive, send):
        """The whole body, or None when it was refused (413, answered here) or the client left."""
        too_big = error_body(f"the request body is larger than the limit of {self.max_body:,} bytes",
                             code="request_too_large")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:  # refuse before reading any of it
            await _send_json(send, 413, too_big, [(b"connection", b"close")])
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await _send_json(send, 413, too_big, [(b"connection", b"close")])
                return None
            if not message.get("more_body"):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if self.api_key and scope["path"] not in PUBLIC_PATHS and not self._authorized(scope):
                await _send_json(send, 401, error_body(
                    "this server needs an API key: send the header \"Authorization: Bearer KEY\" (the openai "
                    "package sends its api_key that way)", code="invalid_api_key"),
                    [(b"www-authenticate", b"Bearer")])
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(scope, receive, send)
                if body is None:
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, tracked_send)
        except Exception:
            log.exception(f"unexpected error in {scope['method']} {scope['path']}")
            if not started:
                await _send_json(send, 500, error_body("the server failed on this request (its log says why); "
                                                       "it goes on serving", kind="server_error"))


def _sse(obj):
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _chat_logprob(tokenizer, t):
    """A TokenLogprob in Chat Completions' shape."""
    def one(token, logprob):
        return {"token": token_text(tokenizer, token), "logprob": logprob,
                "bytes": list(tokenizer.token_to_bytes(token))}
    return {**one(t.token, t.logprob), "top_logprobs": [one(i, lp) for i, lp in t.top]}


def _completion_logprobs(tokenizer, tokens):
    """TokenLogprobs in (legacy) Completions' shape: parallel lists."""
    return {"tokens": [token_text(tokenizer, t.token) for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [None if t.logprob is None else {token_text(tokenizer, i): lp for i, lp in t.top}
                             for t in tokens],
            "text_offset": [t.offset for t in tokens]}


async def _wait_for_disconnect(request):
    """Returns when the client goes away (the body has been read, so only disconnect can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect_or_disconnect(request, admission, events):
    """Non-streaming: (pieces, ends) of the whole answer, or (None, None) if the client leaves
    first (the worker is freed at once)."""
    async def collect():
        pieces, ends = [], []
        try:
            async with aclosing(events) as stream:
                async for event in stream:
                    (ends if isinstance(event, ReplyEnd) else pieces).append(event)
        finally:
            admission.close()
        return pieces, ends

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


def create_app(pool, model_name, defaults=None, ui_path=UI_PATH, api_key=None, cors_origins=(), examples=()):
    """The FastAPI app: the page, health and stats, the OpenAI API under /v1, the page's own
    stream, and a tokenizer (vLLM's /tokenize, /detokenize, /tokenizer_info, which evaluation
    harnesses use). api_key: required of every request but the page and /health; cors_origins:
    the web origins allowed to call the API from a browser (none by default); examples: prompts
    the model was trained on ({"prompt", "family"} dicts, from nanochat_tasks/examples.py), which /stats
    hands to the page's empty state."""
    from fastapi import FastAPI, Request
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException

    defaults = defaults or SamplingDefaults()
    defaults.check()
    tokenizer = pool.workers[0].engine.tokenizer
    context_len = min(w.context_len for w in pool.workers)
    with open(ui_path, encoding="utf-8") as f:
        ui_html = f.read()
    app = FastAPI(title="nanochat", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    app.add_middleware(RequestGuard, api_key=api_key)
    if cors_origins:  # added last, so it runs first: preflights and 401s get the CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)

    @app.exception_handler(RequestError)
    async def request_error(request, e):
        return JSONResponse(error_body(e.message, e.param, code=e.code), status_code=e.status)

    @app.exception_handler(ServerBusy)
    async def server_busy(request, e):
        return JSONResponse(error_body(str(e), kind="server_busy"), status_code=503,
                            headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        """404 and 405 in OpenAI's shape, with a hint for a client whose base URL lacks /v1."""
        method, path = request.method, request.url.path
        if e.status_code == 404:
            message = f"there is no {method} {path} on this server"
            bare = path.rstrip("/")
            if bare in OPENAI_PATHS or bare.startswith("/models/"):
                base = str(request.base_url).rstrip("/")
                message += f"; its OpenAI API is under /v1: set the client's base URL to {base}/v1"
            else:
                message += ("; it serves POST /v1/chat/completions, POST /v1/completions, GET /v1/models "
                            "and the chat page at /")
            code = "unknown_url"
        elif e.status_code == 405:
            allowed = (e.headers or {}).get("Allow", "another method")
            message, code = f"{method} is not allowed on {path}; use {allowed}", "method_not_allowed"
        else:
            message, code = str(e.detail), None
        return JSONResponse(error_body(message, code=code), status_code=e.status_code, headers=e.headers)

    @app.get("/")
    async def ui():
        return HTMLResponse(ui_html, headers=PAGE_HEADERS)

    @app.get("/health")
    async def health():
        return {"status": "ok", "ready": True, "model": model_name, "workers": len(pool.workers),
                "available": pool.available, "queued": pool.queued}

    @app.get("/stats")
    async def stats():
        return {"model": model_name, "context_len": context_len,
                "defaults": {"temperature": defaults.temperature, "top_k": defaults.top_k,
                             "max_tokens": defaults.max_tokens},
                "examples": [{"prompt": e["prompt"], "family": e["family"]} for e in examples],
                **pool.stats()}

    model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "nanochat"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id != model_name:
            raise RequestError(f"there is no model {model_id!r} here; this server serves {model_name}",
                               param="model", status=404, code="model_not_found")
        return model_card

    def usage(prompt_tokens, ends):
        completion = sum(e.completion_tokens for e in ends)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    # --- Chat Completions

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request):
        chat = parse_chat_request(parse_json_body(await request.body()), defaults)
        ids = chat_prompt(tokenizer, chat.messages, context_len)
        admission = pool.admit()
        reply_id, stamp = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if chat.stream:
            # the background task frees the place in line even if the stream never started
            return StreamingResponse(_chat_stream(admission, ids, chat, reply_id, stamp),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                     background=BackgroundTask(admission.close))
        pieces, ends = await _collect_or_disconnect(request, admission, reply_events(admission, ids, chat))
        if ends is None:  # the client left; nobody reads this
            return JSONResponse(error_body("client disconnected"), status_code=499)
        logprobs = None
        if chat.logprobs is not None:
            logprobs = {"content": [_chat_logprob(tokenizer, t) for p in pieces for t in p.tokens], "refusal": None}
        return {"id": reply_id, "object": "chat.completion", "created": stamp, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(p.text for p in pieces)},
                             "logprobs": logprobs, "finish_reason": ends[0].finish_reason}],
                "usage": usage(len(ids), ends)}

    async def _chat_stream(admission, ids, chat, reply_id, stamp):
        def chunk(delta, finish=None, logprobs=None):
            return _sse({"id": reply_id, "object": "chat.completion.chunk", "created": stamp, "model": model_name,
                         "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})
        try:
            yield chunk({"role": "assistant", "content": ""})
            async with aclosing(reply_events(admission, ids, chat)) as events:
                async for event in events:
                    if isinstance(event, ReplyEnd):
                        yield chunk({}, event.finish_reason)
                        if chat.include_usage:
                            yield _sse({"id": reply_id, "object": "chat.completion.chunk", "created": stamp,
                                        "model": model_name, "choices": [], "usage": usage(len(ids), [event])})
                    else:
                        logprobs = None if chat.logprobs is None else \
                            {"content": [_chat_logprob(tokenizer, t) for t in event.tokens]}
                        yield chunk({"content": event.text}, logprobs=logprobs)
        except Exception:  # the headers are gone already: report inside the stream
            log.exception("generation failed")
            yield _sse(error_body("generation failed (the server's log says why)", kind="server_error"))
        finally:
            admission.close()
        yield "data: [DONE]\n\n"

    # --- Completions (base models, evaluation harnesses)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_completion_request(parse_json_body(await request.body()), defaults, tokenizer, context_len)
        admission = pool.admit()
        reply_id, stamp = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        prompt_tokens = sum(len(ids) for ids, _ in req.prompts)
        events = worker_events(admission, completion_job(req, tokenizer))
        if req.stream:
            return StreamingResponse(_completion_stream(admission, events, req, reply_id, stamp, prompt_tokens),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                     background=BackgroundTask(admission.close))
        pieces, ends = await _collect_or_disconnect(request, admission, events)
        if ends is None:
            return JSONResponse(error_body("client disconnected"), status_code=499)
        choices = []
        for end in sorted(ends, key=lambda e: e.index):
            mine = [p for p in pieces if p.index == end.index]
            logprobs = None
            if req.logprobs is not None:
                logprobs = _completion_logprobs(tokenizer, [t for p in mine for t in p.tokens])
            choices.append({"text": "".join(p.text for p in mine), "index": end.index, "logprobs": logprobs,
                            "finish_reason": end.finish_reason})
        return {"id": reply_id, "object": "text_completion", "created": stamp, "model": model_name,
                "choices": choices, "usage": usage(prompt_tokens, ends)}

    async def _completion_stream(admission, events, req, reply_id, stamp, prompt_tokens):
        def chunk(choices, **extra):
            return _sse({"id": reply_id, "object": "text_completion", "created": stamp, "model": model_name,
                         "choices": choices, **extra})
        ends = []
        try:
            async with aclosing(events) as stream:
                async for event in stream:
                    if isinstance(event, ReplyEnd):
                        ends.append(event)
                        yield chunk([{"text": "", "index": event.index, "logprobs": None,
                                      "finish_reason": event.finish_reason}])
                    else:
                        logprobs = None if req.logprobs is None else _completion_logprobs(tokenizer, event.tokens)
                        yield chunk([{"text": event.text, "index": event.index, "logprobs": logprobs,
                                      "finish_reason": None}])
            if req.include_usage:
                yield chunk([], usage=usage(prompt_tokens, ends))
        except Exception:
            log.exception("generation failed")
            yield _sse(error_body("generation failed (the server's log says why)", kind="server_error"))
        finally:
            admission.close()
        yield "data: [DONE]\n\n"

    # --- the page's own stream: text by part (reply, calculator call, result), then figures

    @app.post("/api/chat")
    async def page_chat(request: Request):
        """The chat page's stream: {"token": text, "part": "text"|"python"|"python_output"} and
        {"mark": "python_start"|...} events, then {"done": true, ...} (or {"error": ...})."""
        chat = parse_chat_request(parse_json_body(await request.body()), defaults, tool_parts=True)
        ids = chat_prompt(tokenizer, chat.messages, context_len)
        admission = pool.admit()
        return StreamingResponse(_page_stream(admission, ids, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"}, background=BackgroundTask(admission.close))

    async def _page_stream(admission, ids, chat):
        t0, first = time.perf_counter(), None
        try:
            async with aclosing(reply_events(admission, ids, chat)) as events:
                async for event in events:
                    if isinstance(event, ReplyEnd):
                        now = time.perf_counter()
                        speed = event.completion_tokens / (now - first) if first and now > first else None
                        yield _sse({"done": True, "finish_reason": event.finish_reason, "prompt_tokens": len(ids),
                                    "completion_tokens": event.completion_tokens, "seconds": round(now - t0, 3),
                                    "tokens_per_s": round(speed, 1) if speed else None})
                    elif event.marker:
                        first = first or time.perf_counter()
                        yield _sse({"mark": event.marker.strip("<|>")})
                    elif event.text:
                        first = first or time.perf_counter()
                        yield _sse({"token": event.text, "part": event.part})
        except Exception:
            log.exception("generation failed")
            yield _sse({"error": "generation failed (the server's log says why)"})
        finally:
            admission.close()

    # --- the tokenizer, as vLLM serves it (lm-evaluation-harness's "remote" tokenizer reads these)

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {"tokenizer_class": "nanochat", "bos_token": "<|bos|>", "eos_token": "<|assistant_end|>",
                "model_max_length": context_len, "vocab_size": tokenizer.get_vocab_size(),
                "special_tokens": tokenizer.get_special_tokens()}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        """{"prompt": text, "add_special_tokens": true} -> {"tokens": ids}: text as /v1/completions
        reads it (special-token strings are the special tokens; <|bos|> first unless
        add_special_tokens is false)."""
        body = parse_json_body(await request.body())
        if not isinstance(body.get("prompt"), str):
            raise RequestError("prompt must be a string", param="prompt")
        ids = encode_with_specials(tokenizer, clean_text(body["prompt"]))
        bos = tokenizer.get_bos_token_id()
        if body.get("add_special_tokens", True) is not False and ids[:1] != [bos]:
            ids = [bos] + ids
        return {"tokens": ids, "count": len(ids), "max_model_len": context_len}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        """{"tokens": ids} -> {"prompt": text}."""
        tokens = parse_json_body(await request.body()).get("tokens")
        vocab = tokenizer.get_vocab_size()
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                                   for t in tokens):
            raise RequestError(f"tokens must be a list of token ids (0 to {vocab - 1})", param="tokens")
        return {"prompt": tokenizer.decode(tokens)}

    return app
