"""A server that never answers 500: property-based fuzzing of the HTTP API with hypothesis, and
hand-made hostile requests (deep nesting, huge numbers, a 256 MB chunked body, degenerate
sampling values). Everything goes to a server on 127.0.0.1 with conftest's tiny model; the
fuzzing is bounded in count (derandomized, so CI sees the same requests every run) and in time."""

import json
import select
import socket
import time

import httpx
import pytest

from test_chat_web import serve, wait_idle

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FUZZ_REQUESTS = 2200
FUZZ_SECONDS = 240
USER = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("web_fuzz") / "server.log"
    with serve(tiny_run, log, "-m", "3") as (url, _):
        yield url
    text = log.read_text()
    assert "Traceback" not in text and "unexpected error" not in text, text[-3000:]


def check_answer(r, stream):
    """The server's side of the contract for any request: no 5xx; a 4xx in OpenAI's error shape;
    a 200 stream without error events that ends properly."""
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"]
        return
    if not stream:
        r.json()
        return
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    payloads = [json.loads(e) for e in events if e != "[DONE]"]
    assert not [p for p in payloads if "error" in p], payloads[-2:]
    assert events and (events[-1] == "[DONE]" or payloads[-1].get("done")), events[-3:]


# -----------------------------------------------------------------------------
# hand-made hostile requests

def test_deep_nesting_is_a_400(server):
    for depth in (40, 5_000, 200_000):
        body = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
        r = httpx.post(server + "/v1/chat/completions", content=body, timeout=30)
        assert r.status_code == 400 and "nested" in r.json()["error"]["message"], (depth, r.text[:200])
    r = httpx.post(server + "/v1/chat/completions", content=b"[" * 400_000, timeout=30)  # unclosed, too
    assert r.status_code == 400


def test_huge_numbers_are_a_400_naming_their_size(server):
    for field in ("max_tokens", "seed", "temperature"):
        body = '{"messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (field, "9" * 5000)
        r = httpx.post(server + "/v1/chat/completions", content=body, timeout=30)
        assert r.status_code == 400 and "5,000 digits" in r.json()["error"]["message"], r.text[:200]
    for literal in ("1" + "0" * 400 + ".5", "1e999", "NaN", "-Infinity", "0." + "1" * 3000):
        body = '{"messages": [{"role": "user", "content": "hi"}], "temperature": %s}' % literal
        r = httpx.post(server + "/v1/chat/completions", content=body, timeout=30)
        assert r.status_code == 400, (literal[:20], r.text[:200])


def test_degenerate_sampling_values_work_or_are_refused_by_name(server):
    for field, value in (("temperature", 1e-320), ("temperature", 5e-324), ("temperature", 1e-38),
                         ("top_p", 5e-324), ("top_p", 1e-300), ("min_p", 1.0), ("top_k", 1), ("seed", 2**63 - 1)):
        for path, extra in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "a"})):
            for stream in (False, True):
                r = httpx.post(server + path, json={**extra, field: value, "stream": stream, "max_tokens": 4,
                                                    "logprobs": 2 if path == "/v1/completions" else True},
                               timeout=30)
                check_answer(r, stream)
                assert r.status_code == 200, (field, value, r.text[:200])


def _send_chunked(url, total, chunk_size=1 << 16):
    """POST a chunked body of `total` bytes made on the fly (never held in memory); stop as soon as
    the server answers. Returns (bytes sent, the answer's first bytes)."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        s.setblocking(False)
        chunk = b"%x\r\n" % chunk_size + b"x" * chunk_size + b"\r\n"
        sent, view, deadline = 0, b"", time.time() + 60
        while sent < total and time.time() < deadline:
            readable, writable, _ = select.select([s], [s], [], 5)
            if readable:
                break
            if writable:
                view = view or chunk
                try:
                    n = s.send(view)
                except (BlockingIOError, InterruptedError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent, view = sent + n, view[n:]
        s.setblocking(True)
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
        return sent, answer


def test_a_256_mb_chunked_body_is_refused_early(server):
    sent, answer = _send_chunked(server, 256 * 2**20)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 32 * 2**20, f"{sent / 2**20:.0f} MB went in before the 413"
    print(f"\n256 MB chunked upload refused after {sent / 2**20:.1f} MB")
    # a declared size over the limit is refused before any of the body is read
    host, port = server.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    assert httpx.get(server + "/health", timeout=30).status_code == 200
    assert wait_idle(server)["queued"] == 0


# -----------------------------------------------------------------------------
# property-based fuzzing

MISSING = object()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                            inner, max_size=3),
                        max_leaves=6)
numbers = st.one_of(st.floats(min_value=0, max_value=2.2), st.integers(-3, 260),
                    st.sampled_from([0, 1, 1e-320, 5e-324, 1e-38, 1e-7, 0.999999, 2.0, 4096, 1e308, -0.0]), anything)
small_max = st.one_of(st.integers(0, 5), st.integers(0, 5), numbers)
texts = st.text(max_size=40) | st.sampled_from(["🙂 héllo", "<|assistant_end|>", "<|bos|>x", "\ud800", "", " " * 30])
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "User"]) | anything
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "python", "python_output", "image_url"]),
                                        "text": texts}), max_size=3)
message = st.fixed_dictionaries({"role": roles, "content": texts | parts | anything},
                                optional={"name": texts, "tool_calls": anything}) | anything
good_turns = st.lists(st.tuples(texts, texts), min_size=0, max_size=3).map(
    lambda pairs: [m for u, a in pairs for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})])
messages = st.one_of(
    st.tuples(good_turns, texts, st.booleans()).map(
        lambda t: t[0] + [{"role": "user", "content": t[1]}] + ([{"role": "assistant", "content": t[1]}] if t[2] else [])),
    st.lists(message, max_size=5), anything)
stops = st.none() | texts | st.lists(texts, max_size=5) | anything
sampling = {"temperature": numbers, "top_p": numbers, "top_k": numbers, "min_p": numbers, "max_tokens": small_max,
            "max_completion_tokens": small_max, "seed": numbers, "stream": st.booleans() | anything, "stop": stops,
            "n": numbers, "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | anything}
token_ids = st.lists(st.integers(-2, 520), max_size=12)
prompts = st.one_of(texts, st.lists(texts, max_size=3), token_ids, st.lists(token_ids, max_size=3), anything)

# a request is mostly well formed, with a few fields out of line, so that most of them reach
# generation (where a 500 would hurt most) while every field still meets odd values
VALID = {
    "temperature": st.floats(0, 2) | st.sampled_from([0, 1e-320, 5e-324, 1e-38, 1e-5, 2.0]),
    "top_p": st.floats(0, 1, exclude_min=True) | st.sampled_from([5e-324, 1e-300, 1e-7, 1.0]),
    "top_k": st.integers(0, 200),
    "min_p": st.floats(0, 1),
    "max_tokens": st.integers(1, 4),
    "seed": st.integers(0, 2**63 - 1),
    "stream": st.booleans(),
    "stop": st.none() | st.text(min_size=1, max_size=4) | st.lists(st.text(min_size=1, max_size=3), max_size=4),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}
VALID_CHAT = {**VALID, "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20),
              "tool_choice": st.just("none"), "response_format": st.just({"type": "text"})}
VALID_COMPLETION = {**VALID, "logprobs": st.integers(0, 5), "echo": st.booleans(),
                    "prompt": st.one_of(texts, st.lists(texts, min_size=1, max_size=3),
                                        st.lists(st.integers(0, 511), min_size=1, max_size=12),
                                        st.lists(st.lists(st.integers(0, 511), min_size=1, max_size=8), min_size=1,
                                                 max_size=3))}
ODD = {**sampling, "messages": messages, "prompt": prompts, "logprobs": numbers | anything, "top_logprobs": numbers,
       "echo": anything, "tools": anything, "tool_choice": anything, "response_format": anything,
       "presence_penalty": numbers, "suffix": texts | anything, "best_of": numbers}


@st.composite
def mostly_valid(draw, valid, required):
    body = {name: draw(valid[name]) for name in required}
    for name, strategy in valid.items():
        if name not in required and draw(st.booleans()):
            body[name] = draw(strategy)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        name = draw(st.sampled_from(sorted(ODD)))
        body[name] = draw(ODD[name])
    return body


VALID_CHAT["messages"] = st.tuples(good_turns, texts, st.booleans()).map(
    lambda t: t[0] + [{"role": "user", "content": t[1]}] + ([{"role": "assistant", "content": t[1]}] if t[2] else []))
chat_body = mostly_valid(VALID_CHAT, ["messages"])
completion_body = mostly_valid(VALID_COMPLETION, ["prompt"])
requests = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), chat_body),
    st.tuples(st.just("/v1/completions"), completion_body),
    st.tuples(st.just("/api/chat"), chat_body),
    st.tuples(st.sampled_from(["/tokenize", "/detokenize", "/v1/models", "/chat/completions", "/v1/embeddings"]),
              st.fixed_dictionaries({}, optional={"prompt": prompts, "tokens": token_ids | anything,
                                                  "add_special_tokens": anything})),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/api/chat"]), anything),
)


@pytest.mark.slow
@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_fuzzed_requests_never_get_a_5xx_or_an_error_inside_a_stream(server):
    seen = {"requests": 0, "status": {}, "streams": 0}
    started = time.time()
    http = httpx.Client(timeout=30)

    @settings(max_examples=FUZZ_REQUESTS, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests)
    def fuzz(request):
        assert time.time() - started < FUZZ_SECONDS, "the fuzzing ran out of time"
        path, body = request
        raw = json.dumps(body)
        stream = path == "/api/chat" or isinstance(body, dict) and body.get("stream") is True and path != "/tokenize"
        r = http.post(server + path, content=raw,
                      headers={"content-type": "application/json"})
        seen["requests"] += 1
        seen["status"][r.status_code] = seen["status"].get(r.status_code, 0) + 1
        seen["streams"] += stream and r.status_code == 200
        check_answer(r, stream)

    try:
        fuzz()
    finally:
        http.close()
    elapsed = time.time() - started
    print(f"\nfuzz: {seen['requests']} requests in {elapsed:.0f} s, {seen['streams']} streams, "
          f"status {dict(sorted(seen['status'].items()))}")
    assert seen["requests"] >= 2000
    assert seen["status"].get(200, 0) > 200 and seen["streams"] > 50  # the fuzzing reached generation
    assert wait_idle(server)["queued"] == 0


# -----------------------------------------------------------------------------
# a bug inside the server: a 500 in OpenAI's shape and one log line, and the worker serves on

def test_an_unexpected_exception_is_a_json_500_and_the_worker_goes_on(tiny_base_dir, monkeypatch, caplog):
    from fastapi.testclient import TestClient
    from nanochat import web
    workers, name, _ = web.load_workers("base", "cpu")
    pool = web.WorkerPool(workers, max_queue=2)
    real_generate, failures = web.Worker.generate, [RuntimeError("planted bug")] * 2

    def generate(self, *args, **kwargs):
        if failures:
            raise failures.pop()
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(web.Worker, "generate", generate)
    body = {"messages": USER, "max_tokens": 3}
    with TestClient(web.create_app(pool, name)) as http:
        with caplog.at_level("ERROR", logger="uvicorn.error"):
            r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "planted bug" not in r.text  # the details go to the log, not to the client
        assert [rec for rec in caplog.records if "unexpected error in POST /v1/chat/completions" in rec.message]
        # once the answer has begun (a stream), the error can only be an event inside it
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            assert s.status_code == 200 and '"server_error"' in s.read().decode()
        # the worker went back to the pool and serves the next requests
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        assert http.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200
        stats = http.get("/stats").json()
        assert stats["available"] == 1 and stats["queued"] == 0
