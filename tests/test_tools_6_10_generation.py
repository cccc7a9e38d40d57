"""Generation trace: the probabilities shown per step are softmax of a direct forward pass after the
filters, the tokens are the engine's for the same seed, and forced branching changes only the branch."""

import math

import pytest
import torch

from nanochat.checkpoint_manager import load_model
from nanochat.engine import Engine
from tools.lib.generation_trace import (trace_generation, generate_with_settings, parse_force, entropy_bits,
                                       describe_filters, prompt_ids_for)


@pytest.fixture
def model_and_tokenizer(tiny_base_dir):
    model, tokenizer, _ = load_model("base", "cpu", verbose=False)
    return model, tokenizer


def filtered_by_hand(logits, temperature, top_k, top_p):
    """temperature, then top-k, then top-p (the engine's order), written out on a sorted list."""
    probs = torch.softmax(logits.double() / temperature, -1)
    order = torch.argsort(probs, descending=True).tolist()
    keep = order[:top_k]
    mass, kept = 0.0, []
    renorm = sum(probs[t].item() for t in keep)
    for t in keep:
        if mass >= top_p:
            break
        kept.append(t)
        mass += probs[t].item() / renorm
    out = torch.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


def test_trace_probs_equal_softmax_of_direct_forward_after_filters(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer.encode("The king is", prepend=tokenizer.get_bos_token_id())
    settings = dict(temperature=0.8, top_k=40, top_p=0.9)
    steps = trace_generation(model, prompt, max_tokens=6, seed=3, top_n=5, **settings)
    assert len(steps) == 6
    ids = list(prompt)
    for step in steps:
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1]  # a plain forward pass, no KV cache
        expected = filtered_by_hand(logits, 0.8, 40, 0.9)
        assert step.prob == pytest.approx(expected[step.token_id].item(), abs=1e-5)
        for token, p in step.alternatives:
            assert p == pytest.approx(expected[token].item(), abs=1e-5)
        assert step.kept == int((expected > 0).sum())
        assert step.raw_prob == pytest.approx(torch.softmax(logits.double(), -1)[step.token_id].item(), abs=1e-5)
        assert step.entropy == pytest.approx(float(-(expected[expected > 0] * expected[expected > 0].log2()).sum()), abs=1e-4)
        ids.append(step.token_id)


def test_trace_tokens_equal_engine_tokens_for_the_same_seed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer.encode("Once upon a time", prepend=tokenizer.get_bos_token_id())
    engine = Engine(model, tokenizer)
    for kw in (dict(temperature=1.0), dict(temperature=0.7, top_k=20, min_p=0.05), dict(temperature=0.0)):
        steps = trace_generation(model, prompt, max_tokens=12, seed=11, **kw)
        cols = [c[0] for c, _ in engine.generate(prompt, 1, max_tokens=12, seed=11, **kw)]
        assert [s.token_id for s in steps] == cols


def test_forced_branch_keeps_the_prefix_and_places_the_token(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer.encode("To be", prepend=tokenizer.get_bos_token_id())
    base = trace_generation(model, prompt, max_tokens=8, seed=5, temperature=1.0)
    forced_token = (base[3].token_id + 1) % 500
    branch = trace_generation(model, prompt, max_tokens=8, seed=5, temperature=1.0, force={3: forced_token})
    assert [s.token_id for s in branch[:3]] == [s.token_id for s in base[:3]]
    assert branch[3].token_id == forced_token and branch[3].forced
    assert not any(s.forced for s in base)


def test_compare_settings_gives_one_generation_per_setting(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer)
    prompt = tokenizer.encode("Hello", prepend=tokenizer.get_bos_token_id())
    settings = [dict(temperature=t) for t in (0.1, 0.7, 1.5)]
    results = generate_with_settings(engine, prompt, settings, max_tokens=10, seed=1)
    assert [s for s, _ in results] == settings
    again = generate_with_settings(engine, prompt, settings[1:2], max_tokens=10, seed=1)
    assert again[0][1] == results[1][1]  # same seed, same setting: same text


def test_parse_force_and_filter_description(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    ids = tokenizer.encode(" lord")
    assert parse_force(tokenizer, " lord", 2) == {2 + i: t for i, t in enumerate(ids)}
    assert parse_force(tokenizer, "#65", 0) == {0: 65}
    with pytest.raises(ValueError):
        parse_force(tokenizer, "#99999", 0)
    lines = describe_filters(0.5, 10, 0.9, None)
    assert [line.split(":")[0] for line in lines] == ["1. temperature", "2. top_k", "3. top_p", "4. min_p"]
    assert entropy_bits(torch.tensor([0.5, 0.5, 0.0])) == pytest.approx(1.0)
    assert entropy_bits(torch.full((8,), 1 / 8)) == pytest.approx(math.log2(8))


def test_chat_prompt_uses_the_chat_template(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    ids = prompt_ids_for(tokenizer, "What is 2+2?", chat=True)
    assert ids == tokenizer.render_for_completion({"messages": [{"role": "user", "content": "What is 2+2?"}]})
    assert ids[-1] == tokenizer.encode_special("<|assistant_start|>")


# ----------------------------------------------------------------------------- the tool

def run_tool(*args, stdin=None, base=None):
    import os
    import sys
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NO_COLOR="1")
    if base is not None:
        env["NANOCHAT_BASE_DIR"] = str(base)
    return subprocess.run([sys.executable, os.path.join(repo, "tools", "generation_explorer.py"), *map(str, args)],
                          cwd=repo, capture_output=True, text=True, env=env, input=stdin, timeout=120)


def test_explorer_probs_match_a_direct_forward_pass_and_filter_order_is_the_engines(model_and_tokenizer):
    import json
    from nanochat.engine import FILTER_ORDER
    model, tokenizer = model_and_tokenizer
    r = run_tool("--prompt", "My lord", "--show-probs", "--max-tokens", 5, "--temperature", 0.9, "--top-k", 30,
                 "--seed", 7, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["filter_order"] == list(FILTER_ORDER)
    ids = list(out["prompt_ids"])
    assert ids == tokenizer.encode("My lord", prepend=tokenizer.get_bos_token_id())
    for step in out["steps"]:
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1].double() / 0.9
        kth = torch.topk(logits, 30).values[-1]
        probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), -1)
        assert step["prob"] == pytest.approx(probs[step["token_id"]].item(), abs=1e-5)
        ids.append(step["token_id"])
    text = run_tool("--prompt", "My lord", "--show-probs", "--max-tokens", 3, "--top-p", 0.8).stdout
    listed = [line.split(".")[1].split(":")[0].strip() for line in text.splitlines() if line.strip()[:2] in ("1.", "2.", "3.", "4.")]
    assert listed == list(FILTER_ORDER)
    assert "keep the smallest set with total probability >= 0.8" in text


def test_explorer_compare_runs_give_one_generation_per_setting(tiny_base_dir):
    import json
    r = run_tool("--prompt", "Once", "--compare-temp", 0.1, 0.7, 1.5, "--max-tokens", 6, "--json")
    assert r.returncode == 0, r.stderr
    comp = json.loads(r.stdout)["comparison"]
    assert [c["temperature"] for c in comp] == [0.1, 0.7, 1.5]
    r = run_tool("--prompt", "Once", "--compare-topk", "--max-tokens", 6)
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("one generation per top_k")[1].splitlines()[4:]
    assert [line.split()[0] for line in table if line.strip()] == ["1", "5", "20", "50", "off"]


def test_explorer_force_branch_and_interactive_mode_through_stdin(tiny_base_dir):
    import json
    r = run_tool("--prompt", "The", "--force", "#65", "--force-at", 2, "--max-tokens", 5, "--json")
    out = json.loads(r.stdout)
    assert [s["token_id"] for s in out["branch"][:2]] == [s["token_id"] for s in out["steps"][:2]]
    assert out["branch"][2]["token_id"] == 65 and out["branch"][2]["forced"]
    r = run_tool("-i", "--max-tokens", 3, stdin=":temp 0\n:topk 5\nHello\n:nonsense\n:quit\n")
    assert r.returncode == 0, r.stderr
    assert "0 = greedy" in r.stdout and "keep the 5 most likely tokens" in r.stdout
    assert "unknown command :nonsense" in r.stdout and "Hello" in r.stdout


def test_explorer_renders_chat_template_for_sft_models(tiny_run, tmp_path):
    import json
    import shutil
    from nanochat.tokenizer import get_tokenizer
    from conftest import base_dir_env
    base = tmp_path / "base"
    shutil.copytree(tiny_run / "tokenizer", base / "tokenizer")
    shutil.copytree(tiny_run / "base_checkpoints" / "d2", base / "chatsft_checkpoints" / "d2")
    r = run_tool("--source", "sft", "--prompt", "What is 2+2?", "--max-tokens", 4, "--json", base=base)
    assert r.returncode == 0, r.stderr
    with base_dir_env(base):
        tokenizer = get_tokenizer()
    out = json.loads(r.stdout)
    assert out["chat"] is True
    assert out["prompt_ids"] == tokenizer.render_for_completion(
        {"messages": [{"role": "user", "content": "What is 2+2?"}]})
