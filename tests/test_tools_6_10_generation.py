"""Generation trace: the probabilities shown per step are softmax of a direct forward pass after the
filters, the tokens are the engine's for the same seed, and forced branching changes only the branch."""

import math

import pytest
import torch

from nanochat.checkpoint_manager import load_model
from nanochat.engine import Engine
from nanochat.generation_trace import (trace_generation, generate_with_settings, parse_force, entropy_bits,
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
