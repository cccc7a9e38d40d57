"""Tests for the chat server (nanochat/web.py, scripts/chat_web.py).

Unit tests drive the pieces directly (UTF-8 decoder, prompt fitting, the pool). Server tests start
`python -m scripts.chat_web` as a subprocess on a free loopback port with the tiny base model of
conftest's tiny_run, talk to it over HTTP (httpx and the official openai package) and stop it.
The tiny model rarely emits <|assistant_end|>, so a reply runs to max_tokens or the context end
(64 positions)."""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from nanochat.common import UserError
from nanochat.chat import StreamDecoder
from nanochat.web import (MAX_MESSAGES, RequestError, SamplingDefaults, ServerBusy,
                          Worker, WorkerPool, fit_prompt, parse_chat_request)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# a server in a subprocess (the browser test imports this too)

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_server(cmd, env, log_path, ready_path):
    """Run a server command (it listens on the port in `cmd`) until GET ready_path answers 200;
    yields (base URL, Popen). Always stopped. The chat server and the lab start through this."""
    port = cmd[cmd.index("-p") + 1]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}:\n{open(log_path).read()}")
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{cmd[2]} did not come up in 90 s:\n{open(log_path).read()}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve(base_dir, log_path, *extra_args):
    """Run scripts.chat_web on 127.0.0.1:<free port>; yields (base URL, Popen). Always stopped."""
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "scripts.chat_web", "-i", "base", "-p", str(free_port()), "--host", "127.0.0.1",
           "--log-level", "warning", *extra_args]
    with run_server(cmd, env, log_path, "/health") as (url, proc):
        yield url, proc


def read_sse(lines):
    """data: payloads of an SSE line iterator, as parsed JSON (or the string '[DONE]')."""
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            yield payload if payload == "[DONE]" else json.loads(payload)


def wait_idle(url, timeout=3.0):
    """/stats once no worker is busy and nobody waits; fails the test if that takes too long."""
    deadline = time.time() + timeout
    while True:
        stats = httpx.get(url + "/stats", timeout=2).json()
        if stats["busy"] == 0 and stats["queued"] == 0:
            return stats
        assert time.time() < deadline, f"server still busy after {timeout} s: {stats}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("chat_web") / "server.log"
    with serve(tiny_run, log, "--max-queue", "2", "-m", "64") as (url, proc):
        yield url
    assert "Traceback" not in log.read_text(), log.read_text()


USER = [{"role": "user", "content": "Hello, who are you?"}]


# -----------------------------------------------------------------------------
# unit tests: UTF-8 streaming

HARD_TEXT = "héllo wörld — 世界 🙂👍🏽 한국어 ok"


def test_utf8_decoder_never_splits_a_character(tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    tok = get_tokenizer()
    ids = tok.encode(HARD_TEXT)
    # precondition: some tokens hold only part of a character (else this test proves nothing)
    partial = [i for i in ids if "\ufffd" in tok.token_to_bytes(i).decode("utf-8", errors="replace")]
    assert partial, "the tiny tokenizer should split multi-byte characters across tokens"
    decoder = StreamDecoder(tok)
    pieces = [decoder.add(i) for i in ids] + [decoder.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == HARD_TEXT
    # every piece is whole characters: each one encodes to UTF-8 on its own
    assert sum(len(p.encode("utf-8")) for p in pieces) == len(HARD_TEXT.encode("utf-8"))


def test_utf8_decoder_marks_broken_bytes_like_decode(tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    tok = get_tokenizer()
    emoji = tok.encode("🙂")
    assert len(emoji) >= 2
    # a character cut short, then text: the broken start becomes U+FFFD, the rest is intact
    ids = emoji[:-1] + tok.encode(" fine") + [emoji[-1]]
    decoder = StreamDecoder(tok)
    text = "".join(decoder.add(i) for i in ids) + decoder.flush()
    assert text == tok.decode(ids)
    assert text.startswith("\ufffd") and " fine" in text


def test_utf8_decoder_shows_tool_calls_and_drops_other_specials(tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    tok = get_tokenizer()
    sp = tok.encode_special
    ids = ([sp("<|python_start|>")] + tok.encode("2+2") + [sp("<|python_end|>"), sp("<|output_start|>")]
           + tok.encode("4") + [sp("<|output_end|>"), sp("<|user_start|>")] + tok.encode(" done"))
    decoder = StreamDecoder(tok)
    assert "".join(decoder.add(i) for i in ids) + decoder.flush() == "[python: 2+2] = 4 done"


# -----------------------------------------------------------------------------
# unit tests: request checking and prompt fitting

def test_parse_chat_request_uses_server_defaults_and_reads_text_parts():
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
            "seed": 7, "stream": True, "stream_options": {"include_usage": True}, "model": "anything"}
    req = parse_chat_request(body, SamplingDefaults(temperature=0.3, top_k=11, max_tokens=99))
    assert (req.temperature, req.top_k, req.max_tokens, req.top_p, req.seed) == (0.3, 11, 99, 1.0, 7)
    assert req.stream and req.include_usage
    assert req.messages[1] == {"role": "user", "content": "Hi there"}
    # no seed: a fresh one per request, so "regenerate" gives a new reply
    seeds = {parse_chat_request({"messages": USER}, SamplingDefaults()).seed for _ in range(5)}
    assert len(seeds) == 5


def test_sampling_defaults_outside_the_ranges_are_user_errors():
    with pytest.raises(UserError, match="top-k"):
        SamplingDefaults(top_k=500).check()
    with pytest.raises(UserError, match="temperature"):
        SamplingDefaults(temperature=-1).check()


def test_fit_prompt_drops_the_oldest_exchanges_and_keeps_the_system_message(tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    tok = get_tokenizer()
    long = "word " * 60
    msgs = [{"role": "system", "content": "SYS"}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"q{i} {long}"}, {"role": "assistant", "content": f"a{i} {long}"}]
    msgs.append({"role": "user", "content": "last question"})
    full = tok.render_for_completion({"messages": msgs})
    limit = len(full) // 2
    ids, dropped = fit_prompt(tok, msgs, limit)
    assert len(ids) < limit and dropped > 0 and dropped % 2 == 0
    kept = [msgs[0]] + msgs[1 + dropped:]
    assert ids == tok.render_for_completion({"messages": kept})
    # one message more would not have fitted
    assert len(tok.render_for_completion({"messages": [msgs[0]] + msgs[dropped - 1:]})) >= limit
    with pytest.raises(RequestError, match="shorten it"):
        fit_prompt(tok, [{"role": "user", "content": long * 5}], 50)


# -----------------------------------------------------------------------------
# unit tests: the pool

def _fake_workers(n):
    return [Worker(i, "cpu", engine=None, context_len=64) for i in range(n)]


def test_pool_serves_first_come_first_served_and_bounds_the_queue():
    async def scenario():
        pool = WorkerPool(_fake_workers(1), max_queue=2)
        a, b, c = pool.admit(), pool.admit(), pool.admit()
        with pytest.raises(ServerBusy) as busy:
            pool.admit()
        assert busy.value.retry_after >= 1 and pool.rejected == 1
        worker = await a.acquire()
        order = []

        async def wait(adm, name):
            w = await adm.acquire()
            order.append(name)
            return w

        tb, tc = asyncio.ensure_future(wait(b, "b")), asyncio.ensure_future(wait(c, "c"))
        await asyncio.sleep(0)
        assert pool.queued == 2 and pool.busy == 1
        pool._release(worker, 0.1)
        wb = await tb
        assert order == ["b"] and wb is worker and pool.queued == 1
        # a freed place in line can be taken again
        d = pool.admit()
        pool._release(wb, 0.1)
        pool._release(await tc, 0.1)
        pool._release(await d.acquire(), 0.1)
        assert order == ["b", "c"] and pool.busy == 0 and pool.queued == 0 and pool.available == 1

    asyncio.run(scenario())


def test_pool_waiter_that_gives_up_leaves_the_line():
    async def scenario():
        pool = WorkerPool(_fake_workers(1), max_queue=1)
        worker = await pool.admit().acquire()
        waiting = pool.admit()
        task = asyncio.ensure_future(waiting.acquire())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.queued == 0
        pool.admit().close()           # its place is free again
        pool._release(worker, 0.1)
        assert pool.available == 1 and pool.queued == 0

    asyncio.run(scenario())


# -----------------------------------------------------------------------------
# the server, with the official openai client

def _expected_reply(tiny_run, messages, max_tokens, temperature, top_k, seed):
    """The reply computed here, without the server: Engine.generate, then tokenizer.decode of each
    run of ordinary tokens (the documented text for tool tokens in between; the reply ends at a
    stop token). Returns (text, completion tokens, prompt tokens)."""
    from conftest import base_dir_env
    from nanochat.checkpoint_manager import load_model
    from nanochat.engine import Engine
    from nanochat.chat import TOOL_TOKEN_TEXT
    with base_dir_env(tiny_run):
        model, tok, _ = load_model("base", "cpu", verbose=False)
    engine = Engine(model, tok)
    ids = tok.render_for_completion({"messages": messages})
    max_tokens = min(max_tokens, model.config.sequence_len - len(ids))  # the server stops at the context end too
    (out,), _ = engine.generate_batch(ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed)
    new = out[len(ids):]
    specials = {tok.encode_special(name): text for name, text in TOOL_TOKEN_TEXT.items()}
    text, run = "", []
    for t in new + [None]:
        if t is None or tok.is_special(t):
            text += tok.decode(run) + specials.get(t, "")
            run = []
        else:
            run.append(t)
    return text, len(new), len(ids), new


def test_openai_client_streaming_and_non_streaming_match_the_engine(server, tiny_run):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=30)
    model_id = client.models.list().data[0].id
    assert model_id.startswith("nanochat-base-d2-step")
    messages = [{"role": "system", "content": "You are terse."}, *USER]
    kw = dict(model=model_id, messages=messages, max_tokens=40, temperature=0.9, seed=123, extra_body={"top_k": 40})
    full = client.chat.completions.create(**kw)
    text = full.choices[0].message.content
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 40 and full.model == model_id
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == text and finish == "length" and usage.completion_tokens == 40
    expected, n, prompt_len, _ = _expected_reply(tiny_run, messages, 40, 0.9, 40, 123)
    assert text == expected and n == 40
    assert full.usage.prompt_tokens == prompt_len  # the system message was folded in, not dropped


def test_streamed_text_of_random_bytes_equals_decoding_the_whole_reply(server, tiny_run):
    # temperature 2 without top-k samples byte tokens freely, so some replies hold a multi-byte
    # character spread over several tokens: cut per token, it would turn into U+FFFD pieces
    from conftest import base_dir_env
    from nanochat.tokenizer import get_tokenizer
    with base_dir_env(tiny_run):
        tok = get_tokenizer()
    split_seen = False
    for seed in range(12):
        body = {"messages": USER, "max_tokens": 4096, "temperature": 2.0, "top_k": 0, "seed": seed, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=30) as r:
            events = list(read_sse(r.iter_lines()))
        streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
        expected, n, _, new = _expected_reply(tiny_run, USER, 4096, 2.0, None, seed)
        assert events[-2]["usage"]["completion_tokens"] == n
        assert streamed == expected, seed
        per_token = "".join(tok.decode([t]) for t in new if not tok.is_special(t))
        if per_token != tok.decode([t for t in new if not tok.is_special(t)]):
            split_seen = True  # this reply really had a character spread over tokens
            break
    assert split_seen, "no reply had a multi-byte character spread over tokens; the check proved nothing"


def test_stop_strings_end_the_reply_before_them_streamed_or_not(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=30)
    kw = dict(model="nanochat", messages=USER, max_tokens=40, temperature=0.0)
    text = client.chat.completions.create(**kw).choices[0].message.content
    assert len(text) > 12
    stop = text[8:11]  # a piece from the middle of the greedy reply (3 characters)
    expected = text[:text.find(stop)]
    cut = client.chat.completions.create(**kw, stop=[stop, "\u2603never"])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    pieces, finish = [], None
    for chunk in client.chat.completions.create(**kw, stop=stop, stream=True):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == expected and finish == "stop"
    # a stop string that never occurs changes nothing
    same = client.chat.completions.create(**kw, stop="\u2603never")
    assert same.choices[0].message.content == text


def test_stop_filter_holds_back_only_what_could_start_a_stop_string():
    from nanochat.web import StopFilter
    f = StopFilter(("END", "xyz"))
    assert f.feed("hello E") == ("hello ", False)        # "E" might begin "END"
    assert f.feed("N") == ("", False)                     # "EN" still might
    assert f.feed("Dless") == ("", True)                  # "END" arrived across three pieces
    f = StopFilter(("END",))
    assert f.feed("hello E") == ("hello ", False)
    assert f.feed("ve") == ("Eve", False)                 # it was not a stop string after all
    assert f.feed("E") == ("", False) and f.flush() == "E"
    assert StopFilter(()).feed("anything") == ("anything", False)


def test_readme_examples_work_against_the_server(server, capsys):
    """The curl and openai examples of the README's browser-chat section, run for real."""
    import re
    import shutil
    text = open(os.path.join(REPO, "README.md")).read()
    python_code = re.search(r"```python[^\n]*\n(.*?)```", text, re.S).group(1)
    curl = re.search(r"```bash\n(curl .*?)```", text, re.S).group(1)
    assert "http://127.0.0.1:8000" in python_code and "http://127.0.0.1:8000" in curl
    python_code = python_code.replace("max_tokens=200", "max_tokens=20").replace("stream=True)", "stream=True, max_tokens=20)")
    exec(compile(python_code.replace("http://127.0.0.1:8000", server), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert len(out.strip()) > 10
    if shutil.which("curl"):
        r = subprocess.run(["bash", "-c", curl.replace("http://127.0.0.1:8000", server)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.rstrip().endswith("data: [DONE]"), r.stdout[-300:] + r.stderr


def test_openai_client_sees_validation_errors_as_bad_request(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="x", messages=USER, temperature=2.5)


def test_page_stream_sends_tokens_then_done(server):
    with httpx.stream("POST", server + "/api/chat", json={"messages": USER, "max_tokens": 12, "seed": 1},
                      timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(read_sse(r.iter_lines()))
    tokens = [e["token"] for e in events[:-1]]
    assert tokens and all(isinstance(t, str) for t in tokens)
    assert events[-1]["done"] is True and events[-1]["finish_reason"] == "length"
    assert events[-1]["completion_tokens"] == 12
    same = httpx.post(server + "/v1/chat/completions", json={"messages": USER, "max_tokens": 12, "seed": 1}, timeout=30)
    assert "".join(tokens) == same.json()["choices"][0]["message"]["content"]


def test_health_stats_models_and_the_page(server):
    health = httpx.get(server + "/health", timeout=30).json()
    assert health["ready"] is True and health["workers"] == 1 and health["available"] == 1
    stats = wait_idle(server)
    assert stats["workers"][0]["device"] == "cpu" and stats["max_queue"] == 2
    before = stats["requests_served"]
    httpx.post(server + "/v1/chat/completions", json={"messages": USER, "max_tokens": 3}, timeout=30)
    after = wait_idle(server)
    assert after["requests_served"] == before + 1
    assert after["workers"][0]["tokens_generated"] >= stats["workers"][0]["tokens_generated"] + 3
    page = httpx.get(server + "/", timeout=30)
    assert page.status_code == 200 and "<textarea" in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(server + "/v1/models", timeout=30).json()["data"][0]["id"] == health["model"]


# -----------------------------------------------------------------------------
# validation: every bad request gets a 4xx that names the problem

BAD_REQUESTS = [
    ("no messages", {"messages": []}, "messages"),
    ("messages missing", {"temperature": 1}, "messages"),
    ("too many messages", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
                           * (MAX_MESSAGES // 2) + [{"role": "user", "content": "c"}]}, f"limit is {MAX_MESSAGES}"),
    ("message cannot fit", {"messages": [{"role": "user", "content": "x " * 200}]}, "shorten it"),
    ("bad role", {"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ("tool role", {"messages": [{"role": "tool", "content": "hi"}]}, "function calling"),
    ("assistant first", {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
     "must begin with the user"),
    ("system later", {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     "messages[1] is a system message"),
    ("only system", {"messages": [{"role": "system", "content": "a"}]}, "no user message"),
    ("content not text", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("temperature too high", {"messages": USER, "temperature": 2.5}, "temperature"),
    ("temperature negative", {"messages": USER, "temperature": -0.1}, "temperature"),
    ("temperature not a number", {"messages": USER, "temperature": "hot"}, "temperature"),
    ("top_k too high", {"messages": USER, "top_k": 201}, "top_k"),
    ("top_k negative", {"messages": USER, "top_k": -1}, "top_k"),
    ("top_k fractional", {"messages": USER, "top_k": 2.5}, "top_k"),
    ("max_tokens zero", {"messages": USER, "max_tokens": 0}, "max_tokens"),
    ("max_tokens too high", {"messages": USER, "max_tokens": 4097}, "max_tokens"),
    ("top_p zero", {"messages": USER, "top_p": 0}, "top_p"),
    ("n above one", {"messages": USER, "n": 2}, "n is 2"),
    ("stream not bool", {"messages": USER, "stream": "yes"}, "stream"),
    ("stop not text", {"messages": USER, "stop": 5}, "stop must be"),
    ("stop empty", {"messages": USER, "stop": ""}, "stop must be"),
    ("too many stops", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
]


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/api/chat"])
def test_invalid_requests_get_4xx_naming_the_field(server, endpoint):
    for name, body, needle in BAD_REQUESTS:
        r = httpx.post(server + endpoint, json=body, timeout=10)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        error = r.json()["error"]
        assert needle in error["message"], (name, error)
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(server + endpoint, content=raw, headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"], r.text
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * 1_100_000 + b'"}]}'
    r = httpx.post(server + endpoint, content=huge, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert httpx.get(server + "/stats", timeout=30).json()["queued"] == 0  # refused requests hold no place in line


def test_invalid_flags_are_user_errors(tiny_base_dir):
    from scripts import chat_web
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken:
        for args, needle in ((["-k", "300"], "top-k"), (["-n", "2", "--device-type", "cpu"], "one worker"),
                             (["-g", "d99"], "unknown model tag"), (["-p", str(taken.getsockname()[1])], "cannot listen")):
            with pytest.raises(UserError, match=needle):
                chat_web.main(["-i", "base", *args])


def test_a_bad_flag_is_one_line_on_stderr_with_exit_code_2(tiny_run):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(tiny_run))
    r = subprocess.run([sys.executable, "-m", "scripts.chat_web", "-i", "base", "-t", "9"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "temperature" in r.stderr and "Traceback" not in r.stderr


# -----------------------------------------------------------------------------
# the pool over HTTP: a full queue answers 503, a client that leaves frees its worker

def test_full_queue_answers_503_with_retry_after(server):
    wait_idle(server)
    body = {"messages": USER, "max_tokens": 4096, "stream": True}
    with httpx.Client(timeout=30) as client:
        opened = []
        try:
            for _ in range(3):  # one runs, two wait (--max-queue 2)
                req = client.build_request("POST", server + "/v1/chat/completions", json=body)
                opened.append(client.send(req, stream=True))
            assert all(r.status_code == 200 for r in opened)
            r = client.post(server + "/v1/chat/completions", json=body)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["error"]["message"]
            r = client.post(server + "/api/chat", json=body)
            assert r.status_code == 503
        finally:
            for r in opened:
                r.close()
    stats = wait_idle(server)
    assert stats["rejected"] >= 2
    r = httpx.post(server + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200


def test_disconnect_mid_stream_frees_the_worker_at_once(server):
    before = wait_idle(server)["workers"][0]
    body = {"messages": USER, "max_tokens": 4096, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=30) as r:
        for event in read_sse(r.iter_lines()):
            if event != "[DONE]" and event["choices"][0]["delta"].get("content"):
                break  # one piece of text, then hang up
    t0 = time.time()
    after = wait_idle(server, timeout=2.0)["workers"][0]
    freed_in = time.time() - t0
    assert after["cancelled"] == before["cancelled"] + 1
    # it stopped early: far fewer tokens than the ~620 the reply had room for
    assert after["tokens_generated"] - before["tokens_generated"] < 400
    assert freed_in < 1.0


def test_disconnect_while_waiting_for_a_non_streaming_reply_frees_the_worker(server):
    before = wait_idle(server)["workers"][0]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server + "/v1/chat/completions", json={"messages": USER, "max_tokens": 4096},
                   timeout=httpx.Timeout(30, read=0.05))
    after = wait_idle(server, timeout=2.0)["workers"][0]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < 400


# -----------------------------------------------------------------------------
# load: 32 streaming clients for 20 s on CPU

async def _load(url, clients, seconds, proc_pid):
    import psutil
    proc = psutil.Process(proc_pid)
    results = {"status": {}, "streams_ok": 0, "streams_bad": [], "aborted": 0, "health_max": 0.0,
               "health_fail": 0, "rss": []}
    stop_at = time.monotonic() + seconds

    async def client(i, http):
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            abort = (i + n) % 7 == 0   # some clients hang up mid-stream on purpose
            body = {"messages": [{"role": "user", "content": f"client {i} request {n} 🙂"}],
                    "max_tokens": 8 + (i * 7 + n) % 40, "seed": i * 1000 + n, "stream": True}
            async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                results["status"][r.status_code] = results["status"].get(r.status_code, 0) + 1
                if r.status_code == 503:
                    await asyncio.sleep(min(float(r.headers["retry-after"]), 2.0))
                    continue
                if r.status_code != 200:
                    results["streams_bad"].append((r.status_code, (await r.aread())[:200]))
                    continue
                events, finish = [], None
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[6:])
                    if line[6:] != "[DONE]":
                        choice = json.loads(line[6:])["choices"][0]
                        finish = choice["finish_reason"] or finish
                    if abort and len(events) >= 2:
                        break
                if abort and events[-1:] != ["[DONE]"]:
                    results["aborted"] += 1
                elif events and events[-1] == "[DONE]" and finish in ("length", "stop"):
                    # a proper end: max_tokens reached, or the model ended its turn (<|bos|> / <|assistant_end|>)
                    results["streams_ok"] += 1
                else:
                    results["streams_bad"].append(("unfinished", events[-3:]))

    async def health(http):
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                r = await http.get(url + "/health", timeout=5)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            results["health_fail"] += not ok
            results["health_max"] = max(results["health_max"], time.perf_counter() - t0)
            results["rss"].append(proc.memory_info().rss)
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        async with httpx.AsyncClient(timeout=5) as health_http:
            await asyncio.gather(health(health_http), *(client(i, http) for i in range(clients)))
    return results


@pytest.mark.slow
def test_32_streaming_clients_for_20_seconds(tiny_run, tmp_path):
    log = tmp_path / "server.log"
    with serve(tiny_run, log, "--max-queue", "8") as (url, proc):
        httpx.post(url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 8}, timeout=30)  # warm up
        res = asyncio.run(_load(url, clients=32, seconds=20, proc_pid=proc.pid))
        final = wait_idle(url, timeout=5)
    print(f"\nload: {res['status']} ok={res['streams_ok']} aborted={res['aborted']} "
          f"health max {res['health_max'] * 1000:.0f} ms; served {final['requests_served']}, rejected {final['rejected']}")
    assert set(res["status"]) <= {200, 503}, res["status"]          # no 5xx but the queue's 503
    assert res["status"].get(200, 0) > 50 and res["status"].get(503, 0) > 0
    assert not res["streams_bad"], res["streams_bad"][:5]            # every stream ended with [DONE]
    assert res["aborted"] > 0
    assert res["health_fail"] == 0 and res["health_max"] < 1.0
    # memory: flat after warm-up (the first few seconds allocate the caches and buffers)
    rss = res["rss"]
    early = max(rss[len(rss) // 4: len(rss) // 3])
    late = max(rss[-len(rss) // 4:])
    print(f"server RSS {early / 2**20:.0f} MB after warm-up, {late / 2**20:.0f} MB at the end")
    assert late - early < 40 * 2**20, f"RSS grew {(late - early) / 2**20:.1f} MB"
    assert final["available"] == 1 and final["queued"] == 0
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
