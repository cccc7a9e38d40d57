"""The web server as real clients use it: the openai package against Chat Completions and
Completions (roles as front ends send them, continuing a reply, log-probabilities checked against
a forward pass of the model), fields the model cannot honour, errors in OpenAI's shape, the API
key and CORS. Servers run on 127.0.0.1 with conftest's tiny base model (context 64 tokens)."""

import subprocess
import sys

import httpx
import pytest
import torch

from test_chat_web import REPO, serve

openai = pytest.importorskip("openai")

KEY = "test-key-123"
ALLOWED_ORIGIN = "http://allowed.example"


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("web_api") / "server.log"
    with serve(tiny_run, log, "-m", "16") as (url, _):
        yield url
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def keyed_server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("web_api_key") / "server.log"
    with serve(tiny_run, log, "--api-key", KEY, "--cors-origin", ALLOWED_ORIGIN) as (url, _):
        yield url


@pytest.fixture(scope="module")
def model(tiny_run):
    """(model, tokenizer) of the served checkpoint, loaded here to check the server against."""
    from conftest import base_dir_env
    from nanochat.checkpoint_manager import load_model
    with base_dir_env(tiny_run):
        m, tok, _ = load_model("base", "cpu", verbose=False)
    return m, tok


def client(url, key="none"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def greedy(model, ids, n):
    """The greedy continuation of ids (n tokens or up to the end token), as the Engine writes it."""
    from nanochat.engine import Engine
    m, tok = model
    (row,), _ = Engine(m, tok).generate_batch(ids, max_tokens=min(n, m.config.sequence_len - len(ids)),
                                              temperature=0.0)
    return row[len(ids):]


@torch.no_grad()
def forward_logprobs(model, ids):
    """log-softmax of the model's logits at every position of ids: (T, V)."""
    m, _ = model
    return torch.log_softmax(m(torch.tensor([ids]))[0].float(), dim=-1)


USER = [{"role": "user", "content": "Hello, who are you?"}]


def reply(c, messages, **kw):
    kw = {"model": "nanochat", "max_tokens": 12, "temperature": 0.9, "seed": 7, **kw}
    return c.chat.completions.create(messages=messages, **kw)


# -----------------------------------------------------------------------------
# messages as front ends send them

def test_developer_role_is_read_as_system(server):
    c = client(server)
    as_system = reply(c, [{"role": "system", "content": "Be brief."}, *USER])
    as_developer = reply(c, [{"role": "developer", "content": "Be brief."}, *USER])
    assert as_developer.choices[0].message.content == as_system.choices[0].message.content
    assert as_developer.usage.prompt_tokens == as_system.usage.prompt_tokens
    assert as_system.usage.prompt_tokens > reply(c, USER).usage.prompt_tokens  # it was not dropped


def test_runs_of_one_role_are_merged_into_one_message(server):
    c = client(server)
    merged = reply(c, [{"role": "system", "content": "A"}, {"role": "developer", "content": "B"},
                       {"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
    by_hand = reply(c, [{"role": "system", "content": "A\n\nB"}, {"role": "user", "content": "one\n\ntwo"}])
    assert merged.choices[0].message.content == by_hand.choices[0].message.content
    assert merged.usage.prompt_tokens == by_hand.usage.prompt_tokens


def test_a_final_assistant_message_is_continued(server, model):
    _, tok = model
    messages = [*USER, {"role": "assistant", "content": "I am"}]
    got = reply(c := client(server), messages, temperature=0, max_tokens=10)
    # the prompt is the conversation with the assistant's message left open (no <|assistant_end|>)
    ids = tok.render_conversation({"messages": messages}, max_tokens=None)[0][:-1]
    assert got.usage.prompt_tokens == len(ids)
    assert got.choices[0].message.content == tok.decode(greedy(model, ids, 10))
    # without the partial reply, the model starts a new one
    fresh = reply(c, USER, temperature=0, max_tokens=10)
    assert fresh.usage.prompt_tokens == len(tok.render_for_completion({"messages": USER}))


def test_a_long_conversation_is_trimmed_from_the_oldest_turns(server):
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"question {i} about something"},
                    {"role": "assistant", "content": f"answer {i} to it"}]
    got = reply(client(server), [{"role": "system", "content": "S"}, *history, *USER])
    assert 0 < got.usage.prompt_tokens < 64 and got.choices[0].finish_reason in ("length", "stop")


# -----------------------------------------------------------------------------
# log-probabilities: the model's own, as a forward pass computes them

def test_chat_logprobs_equal_a_forward_pass(server, model):
    _, tok = model
    got = reply(client(server), USER, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    prompt = tok.render_for_completion({"messages": USER})
    new = greedy(model, prompt, 8)
    lp = forward_logprobs(model, prompt + new)
    entries = got.choices[0].logprobs.content
    assert [e.bytes for e in entries] == [list(tok.token_to_bytes(t)) for t in new]
    for i, (entry, token) in enumerate(zip(entries, new)):
        row = lp[len(prompt) - 1 + i]
        assert abs(entry.logprob - row[token].item()) < 1e-4
        values, ids = torch.topk(row, 3)
        assert [t.bytes for t in entry.top_logprobs] == [list(tok.token_to_bytes(j)) for j in ids.tolist()]
        assert all(abs(t.logprob - v) < 1e-4 for t, v in zip(entry.top_logprobs, values.tolist()))
    assert entries[0].top_logprobs[0].logprob >= entries[0].logprob  # greedy: the top one was taken
    # streamed, the same entries arrive with the text they belong to
    streamed = []
    for chunk in reply(client(server), USER, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3,
                       stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in entries]


def test_completion_echo_scores_the_prompt_like_a_forward_pass(server, model):
    _, tok = model
    ids = tok.encode("To be, or not to be, that is the question", prepend=tok.get_bos_token_id())
    got = client(server).completions.create(model="x", prompt=ids, max_tokens=0, echo=True, logprobs=2)
    choice = got.choices[0]
    assert choice.text == tok.decode(ids) and choice.finish_reason == "length"
    lp = forward_logprobs(model, ids)
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    for t in range(1, len(ids)):
        assert abs(choice.logprobs.token_logprobs[t] - lp[t - 1, ids[t]].item()) < 1e-4
        assert max(choice.logprobs.top_logprobs[t].values()) == pytest.approx(lp[t - 1].max().item(), abs=1e-4)
    assert choice.logprobs.tokens == [tok.decode([t]) for t in ids]
    assert choice.logprobs.text_offset == [len(tok.decode(ids[:t])) for t in range(len(ids))]
    # text is read the way a base model reads documents: <|bos|> first, scored from the first word
    text = client(server).completions.create(model="x", prompt="To be, or not to be, that is the question",
                                             max_tokens=0, echo=True, logprobs=0).choices[0]
    assert text.logprobs.token_logprobs == pytest.approx(choice.logprobs.token_logprobs[1:], abs=1e-5)
    assert text.text == "To be, or not to be, that is the question"


def test_completions_of_several_prompts_streamed_or_not_match_the_engine(server, model):
    _, tok = model
    prompts = ["Once upon a time", "My lord, I"]
    got = client(server).completions.create(model="x", prompt=prompts, max_tokens=6, temperature=0)
    assert [c.index for c in got.choices] == [0, 1]
    for prompt, choice in zip(prompts, got.choices):
        ids = tok.encode(prompt, prepend=tok.get_bos_token_id())
        assert choice.text == tok.decode(greedy(model, ids, 6))
    pieces = {0: "", 1: ""}
    for chunk in client(server).completions.create(model="x", prompt=prompts, max_tokens=6, temperature=0,
                                                   stream=True):
        for c in chunk.choices:
            pieces[c.index] += c.text
    assert [pieces[0], pieces[1]] == [c.text for c in got.choices]
    # echo, then the completion, with stop
    echoed = client(server).completions.create(model="x", prompt=prompts[0], max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == prompts[0] + got.choices[0].text


# -----------------------------------------------------------------------------
# what the model cannot do is refused by name; harmless defaults pass

@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "auto"),
    ("response_format", {"type": "json_object"}),
    ("logit_bias", {"5": 10}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 1),
    ("n", 2),
])
def test_fields_the_model_cannot_honour_get_a_400_naming_them(server, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        reply(client(server), USER, extra_body={field: value})
    assert e.value.body["param"] == field and field in e.value.body["message"]


def test_harmless_defaults_of_those_fields_are_accepted(server):
    got = reply(client(server), USER, tool_choice="none", response_format={"type": "text"}, presence_penalty=0,
                frequency_penalty=0, logit_bias={}, n=1, extra_body={"tools": [], "modalities": ["text"]})
    assert got.choices[0].message.content is not None


def test_completion_fields_the_model_cannot_honour(server):
    for field, value in (("suffix", "end"), ("best_of", 3), ("n", 2)):
        with pytest.raises(openai.BadRequestError, match=field):
            client(server).completions.create(model="x", prompt="a", max_tokens=2, extra_body={field: value})
    with pytest.raises(openai.BadRequestError, match="max_tokens"):  # 0 tokens only makes sense with echo
        client(server).completions.create(model="x", prompt="a", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client(server).completions.create(model="x", prompt=[99999], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="reads at most"):
        client(server).completions.create(model="x", prompt="word " * 100, max_tokens=2)


# -----------------------------------------------------------------------------
# no look-alike endpoints: OpenAI's error shape everywhere, a hint where /v1 is missing

def test_a_client_without_v1_in_its_base_url_gets_a_404_with_a_hint(server):
    bare = openai.OpenAI(base_url=server, api_key="none", max_retries=0, timeout=10)
    with pytest.raises(openai.NotFoundError, match="/v1"):
        bare.chat.completions.create(model="x", messages=USER)
    with pytest.raises(openai.NotFoundError, match="/v1"):
        bare.completions.create(model="x", prompt="a")
    with pytest.raises(openai.NotFoundError, match="/v1"):
        bare.models.list()


def test_404_and_405_have_openai_error_shape(server):
    for method, path, status in (("GET", "/v1/chat/completions", 405), ("GET", "/nothing/here", 404),
                                 ("POST", "/v1/embeddings", 404), ("DELETE", "/v1/models", 405)):
        r = httpx.request(method, server + path, timeout=10)
        assert r.status_code == status, (method, path, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_models_by_id(server):
    c = client(server)
    model_id = c.models.list().data[0].id
    assert c.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError, match="no model"):
        c.models.retrieve("gpt-4")


def test_tokenizer_endpoints_read_special_tokens_in_text(server, model):
    _, tok = model
    r = httpx.post(server + "/tokenize", json={"prompt": "<|bos|>hi<|user_start|>", "add_special_tokens": False}, timeout=30)
    assert r.json()["tokens"] == [tok.get_bos_token_id(), *tok.encode("hi"), tok.encode_special("<|user_start|>")]
    r = httpx.post(server + "/tokenize", json={"prompt": "hi"}, timeout=30)
    assert r.json()["tokens"] == [tok.get_bos_token_id(), *tok.encode("hi")]
    assert httpx.post(server + "/detokenize", json={"tokens": tok.encode("hi there")}, timeout=30).json()["prompt"] == "hi there"
    assert httpx.get(server + "/tokenizer_info", timeout=30).json()["bos_token"] == "<|bos|>"


# -----------------------------------------------------------------------------
# opt-in exposure: API key and CORS

def test_api_key_is_required_when_set(keyed_server):
    with pytest.raises(openai.AuthenticationError) as e:
        reply(client(keyed_server, key="wrong"), USER)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    r = httpx.post(keyed_server + "/v1/completions", json={"prompt": "a", "max_tokens": 1}, timeout=30)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    assert httpx.get(keyed_server + "/stats", timeout=30).status_code == 401
    assert reply(client(keyed_server, key=KEY), USER).choices[0].message.content is not None
    # the page and the health check stay open (the page asks for the key itself)
    assert httpx.get(keyed_server + "/", timeout=30).status_code == 200
    assert httpx.get(keyed_server + "/health", timeout=30).status_code == 200


def test_cors_headers_only_for_the_allowed_origin_and_only_when_enabled(keyed_server, server):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    r = httpx.options(keyed_server + "/v1/chat/completions", headers={"Origin": ALLOWED_ORIGIN, **preflight}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = httpx.post(keyed_server + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2},
                   headers={"Origin": ALLOWED_ORIGIN, "Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    r = httpx.post(keyed_server + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2},
                   headers={"Origin": ALLOWED_ORIGIN}, timeout=30)
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN  # readable 401
    r = httpx.options(keyed_server + "/v1/chat/completions", headers={"Origin": "http://evil.example", **preflight}, timeout=30)
    assert "access-control-allow-origin" not in r.headers
    # by default: no CORS at all
    r = httpx.options(server + "/v1/chat/completions", headers={"Origin": ALLOWED_ORIGIN, **preflight}, timeout=30)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.post(server + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2},
                   headers={"Origin": ALLOWED_ORIGIN}, timeout=30)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_listening_beyond_this_machine_without_a_key_warns_in_one_line(tiny_run, monkeypatch, capsys):
    import uvicorn
    from scripts import chat_web
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_run))
    monkeypatch.setattr(chat_web, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)  # nothing listens: the flags are what is tested
    chat_web.main(["-i", "base", "--host", "192.0.2.1"])
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "--api-key" in warning[0]
    for args in (["--host", "192.0.2.1", "--api-key", "k"], ["--host", "127.0.0.1"], ["--host", "::1"]):
        chat_web.main(["-i", "base", *args])
        assert "warning" not in capsys.readouterr().err
    assert chat_web.is_loopback("localhost") and not chat_web.is_loopback("0.0.0.0")


def test_help_lists_the_exposure_flags():
    r = subprocess.run([sys.executable, "-m", "scripts.chat_web", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--api-key" in r.stdout and "--cors-origin" in r.stdout


# -----------------------------------------------------------------------------
# a reply with a calculator call, as the worker splits it into parts

class ScriptedEngine:
    """An Engine stand-in that 'generates' a fixed token sequence (what a chat model writes)."""

    def __init__(self, tokenizer, tokens):
        self.tokenizer, self.tokens = tokenizer, tokens
        self.assistant_end = tokenizer.encode_special("<|assistant_end|>")
        self.bos = tokenizer.get_bos_token_id()

    def generate(self, ids, **kwargs):
        for t in self.tokens:
            yield [t], [1]


def test_a_calculator_call_streams_as_its_own_parts_with_markers(tiny_base_dir):
    import threading
    from nanochat.tokenizer import get_tokenizer
    from nanochat.web import ChatRequest, Piece, ReplyEnd, Worker
    tok = get_tokenizer()
    sp = tok.encode_special
    tokens = (tok.encode("It is ") + [sp("<|python_start|>")] + tok.encode("12*(3+4)") + [sp("<|python_end|>"),
              sp("<|output_start|>")] + tok.encode("84") + [sp("<|output_end|>")] + tok.encode(" so 84.")
              + [sp("<|assistant_end|>")])
    worker = Worker(0, "cpu", ScriptedEngine(tok, tokens), context_len=256)

    def run(**kw):
        request = ChatRequest(messages=USER, temperature=0, top_k=0, top_p=1, max_tokens=100, seed=0, **kw)
        out = []
        worker.generate([tok.get_bos_token_id()], request, threading.Event(), out.append)
        return out

    events = run()
    assert isinstance(events[-1], ReplyEnd) and events[-1].finish_reason == "stop"
    pieces = [e for e in events if isinstance(e, Piece)]
    parts = {}
    for p in pieces:
        if not p.marker:
            parts[p.part] = parts.get(p.part, "") + p.text
    assert parts == {"text": "It is  so 84.", "python": "12*(3+4)", "python_output": "84"}
    assert [p.marker for p in pieces if p.marker] == ["<|python_start|>", "<|python_end|>", "<|output_start|>",
                                                      "<|output_end|>"]
    # as plain text (the OpenAI API), the call reads as the terminal chat shows it
    assert "".join(p.text for p in pieces) == "It is [python: 12*(3+4)] = 84 so 84."
    # stop strings are looked for in the reply's text, not inside the call
    cut = run(stop=("84",))
    assert "".join(p.text for p in cut if isinstance(p, Piece)) == "It is [python: 12*(3+4)] = 84 so "
