"""The lab's JSON endpoints (tools/lab.py): each returns what the backend functions return for the
same input, refuses bad input with a 4xx naming the field (as the chat API does), never reads
outside the base dir, and never answers 500 (hypothesis fuzzing, as in test_web_fuzz.py). Most
tests drive the app in-process; one starts `python -m tools.lab` on 127.0.0.1 and stops it."""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest
import torch

from test_chat_web import REPO, free_port, run_server
from test_web_fuzz import check_answer

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

PROMPT = "a b c d a b c d"


@contextlib.contextmanager
def serve_lab(base_dir, log_path, *extra_args):
    """Run `python -m tools.lab` on 127.0.0.1:<free port>; yields its base URL. Always stopped."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tools.lab", "--base-dir", str(base_dir), "-p", str(free_port()), "--host", "127.0.0.1",
           "--log-level", "warning", *extra_args]
    with run_server(cmd, env, log_path, "/lab/api/info") as (url, _):
        yield url


@pytest.fixture(scope="module")
def base(tiny_run, tmp_path_factory):
    """A copy of the tiny run, plus a run folder that is a symlink to a run outside the base dir."""
    root = tmp_path_factory.mktemp("lab")
    copy = root / "base"
    shutil.copytree(tiny_run, copy)
    outside = root / "outside"
    shutil.copytree(copy / "base_checkpoints" / "d2", outside)
    os.symlink(outside, copy / "base_checkpoints" / "escape")
    return copy


@pytest.fixture(scope="module")
def client(base):
    from fastapi.testclient import TestClient
    from tools.lab import create_lab_app
    with TestClient(create_lab_app(str(base), "cpu")) as c:
        yield c


@pytest.fixture(scope="module")
def model_and_tokenizer(base, client):
    from nanochat import checkpoint_manager as cm
    model, tokenizer, _ = cm.load_model_from_dir(cm.checkpoint_dir("base", "d2", str(base)), 12, "cpu")
    return model, tokenizer


def refused(r, field, status=400):
    assert r.status_code == status, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["param"] == field and field in error["message"], error
    return error["message"]


# -----------------------------------------------------------------------------
# each endpoint returns the backend's figures

def test_pages_are_served_with_the_chat_pages_csp_and_nothing_from_elsewhere(client):
    from nanochat.web import UI_CSP
    for path in ("/lab", "/lab/tokens", "/lab/training", "/lab/forward", "/lab/generation", "/lab/checkpoints"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-security-policy"] == UI_CSP
        assert "/* include" not in r.text and ("const Plot" in r.text or path == "/lab")
        assert "http://" not in r.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in r.text
        if path != "/lab":
            assert "/lab/guide/0" in r.text, f"{path} links no guide"
    assert client.get("/lab/guide/02-tokenization.md").text.startswith("#")


def test_tokens_endpoint_returns_the_tokenizers_ids_and_gpt4s_split(client, model_and_tokenizer):
    from tools.lib import token_inspect as ti
    _, tokenizer = model_and_tokenizer
    text = "Hello world! naïve 🙂"
    d = client.post("/lab/api/tokens", json={"text": text}).json()
    assert d["ids"] == tokenizer.encode(text) == [t["id"] for t in d["tokens"]]
    assert [t["shown"] for t in d["tokens"]] == [i.shown for i in ti.tokenize(tokenizer, text)]
    try:
        name, infos = ti.reference_split(text, "cl100k")
        assert d["reference"]["available"] and d["reference"]["ids"] == [i.id for i in infos]
    except Exception:
        assert not d["reference"]["available"] and "not available offline" in d["reference"]["message"]


def test_tokens_endpoint_says_gpt4_is_not_available_offline_rather_than_failing(client, monkeypatch):
    from nanochat.common import UserError
    from tools.lib import token_inspect as ti

    def unavailable(text, name):
        raise UserError("the cl100k_base encoding is not available offline: no cache")
    monkeypatch.setattr(ti, "reference_split", unavailable)
    r = client.post("/lab/api/tokens", json={"text": "hi"})
    assert r.status_code == 200 and not r.json()["reference"]["available"]
    assert "not available offline" in r.json()["reference"]["message"]


def test_conversation_endpoint_marks_the_supervised_tokens(client, model_and_tokenizer):
    from tools.lib.token_inspect import DEMO_CONVERSATION
    _, tokenizer = model_and_tokenizer
    d = client.post("/lab/api/conversation", json={}).json()
    ids, mask = tokenizer.render_conversation(DEMO_CONVERSATION)
    assert d["ids"] == ids and d["mask"] == list(mask) and [t["supervised"] for t in d["tokens"]] == [bool(m) for m in mask]
    refused(client.post("/lab/api/conversation", json={"conversation": {"messages": [{"role": "robot", "content": "x"}]}}),
            "conversation")


def test_run_endpoint_returns_the_metrics_series_and_diagnosis(client, base):
    from tools.lib import metrics as mx
    assert client.get("/lab/api/runs").json()["runs"] == ["base/d2", "base/escape"]
    d = client.post("/lab/api/run", json={"run": "base/d2"}).json()
    history = mx.load_run(str(base / "base_checkpoints" / "d2"))
    for key in ("train_loss", "val_bpb", "lr", "tokens_per_sec", "mfu"):
        xs, ys = history.series(key)
        assert d["series"][key] == [[x, y] for x, y in zip(xs, ys)], key
    assert len(d["series"]["train_loss"]) == 12
    assert [f["check"] for f in d["diagnosis"]] == [f.check for f in mx.diagnose(history)]


def test_forward_endpoint_equals_attention_maps(client, model_and_tokenizer):
    from tools.lib import attention_maps as am
    model, tokenizer = model_and_tokenizer
    d = client.post("/lab/api/forward", json={"checkpoint": "base/d2:12", "text": PROMPT, "layer": 1, "head": 0}).json()
    ids = tokenizer.encode(PROMPT, prepend=tokenizer.get_bos_token_id())
    probs = am.attention_probs(model, ids)
    assert d["ids"] == ids
    assert torch.allclose(torch.tensor(d["weights"]), probs[1][0], atol=1e-6)
    avg = client.post("/lab/api/forward", json={"checkpoint": "base/d2:12", "text": PROMPT, "layer": 0}).json()
    assert torch.allclose(torch.tensor(avg["weights"]), probs[0].mean(dim=0), atol=1e-6)
    assert [h["pattern"] for h in d["heads"]] == [s.pattern for s in am.summarize_heads(probs, ids)]
    nexts = am.next_token_predictions(model, ids, 3)
    assert [[n["id"] for n in row] for row in d["next_tokens"]] == [[t for t, _ in row] for row in nexts]


def test_generate_endpoint_is_the_trace_and_forcing_branches(client, model_and_tokenizer):
    from tools.lib import generation_trace as gt
    model, tokenizer = model_and_tokenizer
    body = {"checkpoint": "base/d2:12", "prompt": "The", "max_tokens": 6, "seed": 7, "temperature": 0.8, "top_k": 20}
    d = client.post("/lab/api/generate", json=body).json()
    ids = tokenizer.encode("The", prepend=tokenizer.get_bos_token_id())
    steps = gt.trace_generation(model, ids, 6, temperature=0.8, top_k=20, seed=7, top_n=8,
                                stop_ids=gt.stop_ids_for(tokenizer, False))
    assert [s["id"] for s in d["steps"]] == [s.token_id for s in steps]
    other = next(a["id"] for a in d["steps"][1]["alternatives"] if a["id"] != d["steps"][1]["id"])
    b = client.post("/lab/api/generate", json={**body, "force": [{"step": 1, "token": other}]}).json()
    assert b["steps"][0]["id"] == d["steps"][0]["id"] and b["steps"][1]["id"] == other and b["steps"][1]["forced"]


def test_compare_endpoint_is_the_browsers_compare(client, base):
    from nanochat import checkpoint_manager as cm
    from tools.lib import checkpoint_inspect as ci
    d = client.post("/lab/api/compare", json={"a": "d2:4", "b": "base/d2:12", "prompt": "The", "max_tokens": 5}).json()
    a, b = cm.resolve_address("d2:4", "base", base_dir=str(base)), cm.resolve_address("d2:12", "base", base_dir=str(base))
    assert d == json.loads(json.dumps(ci.compare_checkpoints(a, b, True, "The", 5)))
    names = [c["name"] for c in client.get("/lab/api/checkpoints").json()["checkpoints"]]
    assert "base/d2:12" in names


# -----------------------------------------------------------------------------
# bad input: a 4xx naming the field; nothing outside the base dir

@pytest.mark.parametrize("path,body,field", [
    ("/lab/api/tokens", {"text": 3}, "text"),
    ("/lab/api/tokens", {"text": "x" * 5000}, "text"),
    ("/lab/api/forward", {"checkpoint": "d2", "text": ""}, "text"),
    ("/lab/api/forward", {"checkpoint": "d2", "text": "hi", "layer": 9}, "layer"),
    ("/lab/api/forward", {"checkpoint": "d2", "text": "hi", "head": -1}, "head"),
    ("/lab/api/forward", {"checkpoint": "d2", "text": "hi", "layer": True}, "layer"),
    ("/lab/api/forward", {"checkpoint": "d2", "text": "hi " * 200}, "text"),
    ("/lab/api/generate", {"checkpoint": "d2", "prompt": "hi", "temperature": 3}, "temperature"),
    ("/lab/api/generate", {"checkpoint": "d2", "prompt": "hi", "top_p": 0}, "top_p"),
    ("/lab/api/generate", {"checkpoint": "d2", "prompt": "hi", "max_tokens": 65}, "max_tokens"),
    ("/lab/api/generate", {"checkpoint": "d2", "prompt": "hi", "force": [{"step": 0}]}, "force"),
    ("/lab/api/generate", {"checkpoint": "d2", "prompt": "hi", "force": [{"step": 0, "token": 10**6}]}, "force"),
    ("/lab/api/generate", {"checkpoint": "d2", "prompt": "hi", "max_tokens": 2, "force": [{"step": 5, "token": 1}]},
     "force"),
    ("/lab/api/compare", {"a": "d2", "b": 7}, "b"),
    ("/lab/api/run", {"run": None}, "run"),
    ("/lab/api/conversation", {"conversation": []}, "conversation"),
])
def test_bad_fields_are_a_400_naming_the_field(client, path, body, field):
    refused(client.post(path, json=body), field)


@pytest.mark.parametrize("address", ["../d2", "/etc/passwd", "base/../../etc", "d2/..", "..", "base/d2:../x",
                                     "C:\\x", "base/d2/../../../etc/passwd", "~root", "d2:-1", "nope/d2", " d2"])
def test_paths_are_refused_as_checkpoint_addresses(client, address):
    refused(client.post("/lab/api/forward", json={"checkpoint": address, "text": "hi"}), "checkpoint")
    refused(client.post("/lab/api/run", json={"run": address}), "run")


def test_a_run_linked_from_outside_the_base_dir_is_refused(client):
    refused(client.post("/lab/api/forward", json={"checkpoint": "base/escape", "text": "hi"}), "checkpoint", 403)
    refused(client.post("/lab/api/run", json={"run": "base/escape"}), "run", 403)


def test_unknown_checkpoints_are_a_404_listing_what_exists(client):
    message = refused(client.post("/lab/api/forward", json={"checkpoint": "d9", "text": "hi"}), "checkpoint", 404)
    assert "d2" in message
    refused(client.post("/lab/api/forward", json={"checkpoint": "d2:5", "text": "hi"}), "checkpoint", 404)
    refused(client.post("/lab/api/run", json={"run": "sft/d2"}), "run", 404)


def test_guides_are_served_by_name_only(client):
    for path in ("/lab/guide/..%2F..%2Fetc%2Fpasswd", "/lab/guide/README.md", "/lab/guide/%2e%2e",
                 "/lab/guide/../../tools/lab.py", "/lab/guide/.env"):
        r = client.get(path)
        assert r.status_code == 404 and "root:" not in r.text, (path, r.text[:100])


def test_malformed_bodies_are_a_400_like_the_chat_api(client):
    for body in (b"", b"[1]", b"{", b'{"text": ' + b"[" * 100 + b"]" * 100 + b"}", b'{"text": 1e999}'):
        r = client.post("/lab/api/tokens", content=body)
        assert r.status_code == 400, (body[:20], r.text)
    r = client.post("/lab/api/tokens", content=b'{"text": "' + b"x" * 1_100_000 + b'"}')
    assert r.status_code == 413


# -----------------------------------------------------------------------------
# fuzzing: any JSON to any endpoint is answered without a 500

FUZZ_EXAMPLES = 120
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
ADDRESSES = st.sampled_from(["d2", "base/d2:12", "d2:4", "../d2", "sft/d2", "escape", "d2:99"]) | st.text(max_size=12)
FIELDS = {
    "/lab/api/tokens": {"text": st.text(max_size=200)},
    "/lab/api/conversation": {"conversation": json_values},
    "/lab/api/run": {"run": ADDRESSES},
    "/lab/api/forward": {"checkpoint": ADDRESSES, "text": st.text(max_size=40), "layer": st.integers(-2, 4),
                         "head": st.none() | st.integers(-2, 4), "top_k": st.integers(-1, 30)},
    "/lab/api/generate": {"checkpoint": ADDRESSES, "prompt": st.text(max_size=30), "max_tokens": st.integers(-1, 70),
                          "temperature": st.floats(-1, 3), "top_k": st.integers(-1, 300), "top_p": st.floats(-0.5, 1.5),
                          "min_p": st.floats(-0.5, 1.5), "seed": st.integers(-5, 2**64),
                          "force": st.lists(st.fixed_dictionaries({"step": st.integers(-1, 70),
                                                                   "token": st.integers(-1, 600)}), max_size=3)
                          | json_values},
    "/lab/api/compare": {"a": ADDRESSES, "b": ADDRESSES, "prompt": st.text(max_size=20), "max_tokens": st.integers(-1, 70)},
}


def request_bodies(path):
    """Bodies near the valid ones: each field a plausible value, a random JSON value or missing."""
    fields = {name: strategy | json_values for name, strategy in FIELDS[path].items()}
    return st.fixed_dictionaries({}, optional=fields)


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(FIELDS))
def test_fuzzed_requests_never_get_a_500(client, path):
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(body=request_bodies(path))
    def fuzz(body):
        check_answer(client.post(path, json=body), stream=False)
    fuzz()


# -----------------------------------------------------------------------------
# the command

def test_help_has_examples_and_a_bad_flag_is_one_line():
    r = subprocess.run([sys.executable, "-m", "tools.lab", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "python -m tools.lab" in r.stdout and "examples:" in r.stdout
    for argv in (["--port", "99999"], ["--base-dir", "/no/such/folder"], ["--frobnicate"]):
        r = subprocess.run([sys.executable, "tools/lab.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_the_command_serves_the_lab_on_loopback(base, tmp_path):
    with serve_lab(base, tmp_path / "lab.log") as url:
        assert url.startswith("http://127.0.0.1:")
        r = httpx.get(url + "/lab/forward", timeout=60)
        assert r.status_code == 200 and "Inside a forward pass" in r.text
        # the first forward loads the checkpoint: on a busy 2-core machine that took over httpx's 5 s default
        r = httpx.post(url + "/lab/api/forward", json={"checkpoint": "d2", "text": "hi"}, timeout=120)
        assert r.status_code == 200 and r.json()["n_layer"] == 2
    assert "Traceback" not in (tmp_path / "lab.log").read_text()


def test_generate_endpoint_marks_the_calculator_steps(client, model_and_tokenizer):
    """Forcing a calculator call (<|python_start|>2+2<|python_end|>) makes the engine feed its result
    in; those steps come back marked as the tool's, as the page outlines them."""
    _, tokenizer = model_and_tokenizer
    call = [tokenizer.encode_special("<|python_start|>"), *tokenizer.encode("2+2"), tokenizer.encode_special("<|python_end|>")]
    force = [{"step": i, "token": t} for i, t in enumerate(call)]
    d = client.post("/lab/api/generate", json={"checkpoint": "d2", "prompt": "x", "max_tokens": len(call) + 6,
                                               "seed": 1, "force": force}).json()
    tool = [s for s in d["steps"] if s["tool"]]
    assert tool and all(s["index"] >= len(call) for s in tool)
    assert "4" in tokenizer.decode([s["id"] for s in tool])
    assert all(s["forced"] for s in d["steps"][:len(call)])
