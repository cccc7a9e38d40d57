"""The inference engine: KV cache correctness, seeded sampling, batch rows, tool use, filters."""

import torch
import pytest

from nanochat.checkpoint_manager import load_model
from nanochat.engine import Engine, KVCache, draw, filter_logits, FILTER_ORDER
from bench.bench_peer import StandInTokenizer


@pytest.fixture
def model_and_tokenizer(tiny_base_dir):
    model, tokenizer, _ = load_model("base", "cpu", verbose=False)
    return model, tokenizer


def test_kv_cache_greedy_equals_no_cache_generation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer.encode("To be, or not to be", prepend=tokenizer.get_bos_token_id())
    reference = list(model.generate(prompt, 40, temperature=0.0))
    engine = Engine(model, tokenizer)
    got = [col[0] for col, _ in engine.generate(prompt, num_samples=1, max_tokens=40, temperature=0.0)]
    assert got == reference[:len(got)]
    assert len(got) == 40 or got[-1] in (engine.assistant_end, engine.bos)


def test_kv_cache_logits_match_full_forward(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor([tokenizer.encode("Hello there, my lord", prepend=tokenizer.get_bos_token_id())])
    full = model(ids)
    cache = KVCache.for_model(model, 1, 4)  # deliberately too small: it must grow
    first = model(ids[:, :3], kv_cache=cache)
    steps = [model(ids[:, t:t + 1], kv_cache=cache) for t in range(3, ids.size(1))]
    stitched = torch.cat([first] + steps, dim=1)
    assert torch.allclose(stitched, full, atol=1e-4)


def test_same_seed_same_samples_and_rows_differ(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer)
    prompt = tokenizer.encode("Once upon a time", prepend=tokenizer.get_bos_token_id())
    a, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, seed=7)
    b, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, seed=7)
    c, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, seed=8)
    assert a == b
    assert a != c
    assert len({tuple(r) for r in a}) > 1  # rows are sampled independently


class ScriptedModel:
    """Stands in for a GPT: emits a fixed script of tokens, then whatever it is told to repeat."""

    def __init__(self, script, vocab_size, config):
        self.script = script
        self.vocab_size = vocab_size
        self.config = config
        self.seen = []

    def get_device(self):
        return torch.device("cpu")

    def forward(self, ids, kv_cache=None):
        B, T = ids.shape
        self.seen.append(ids[0].tolist())
        step = kv_cache.get_pos() + T  # tokens consumed so far
        kv_cache.advance(T)
        logits = torch.full((B, T, self.vocab_size), -10.0)
        n_generated = step - self.prompt_len
        nxt = self.script[min(n_generated, len(self.script) - 1)]
        logits[:, -1, nxt] = 10.0
        return logits


def test_calculator_result_is_forced_into_the_stream(tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    from nanochat.gpt import GPTConfig
    tok = get_tokenizer()
    sp = tok.encode_special
    expr = tok.encode("2+3*4")
    script = [sp("<|python_start|>"), *expr, sp("<|python_end|>"), sp("<|assistant_end|>")]
    config = GPTConfig(sequence_len=64, vocab_size=tok.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1, n_embd=8)
    model = ScriptedModel(script, tok.get_vocab_size(), config)
    prompt = [tok.get_bos_token_id(), sp("<|assistant_start|>")]
    model.prompt_len = len(prompt)
    engine = Engine(model, tok)
    tokens, masks = [], []
    for col, m in engine.generate(prompt, max_tokens=30, temperature=0.0):
        tokens.append(col[0])
        masks.append(m[0])
        if col[0] == sp("<|assistant_end|>"):
            break
    i = tokens.index(sp("<|python_end|>"))
    forced = [sp("<|output_start|>"), *tok.encode("14"), sp("<|output_end|>")]
    assert tokens[i + 1:i + 1 + len(forced)] == forced
    assert masks[i + 1:i + 1 + len(forced)] == [0] * len(forced)
    assert all(m == 1 for m in masks[:i + 1])


def test_filters_apply_in_the_documented_order():
    assert FILTER_ORDER == ("temperature", "top_k", "top_p", "min_p")
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = lambda out: torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert kept(filter_logits(logits, 1.0, top_k=3)) == [0, 1, 2]
    p = logits.softmax(-1)[0]
    # top_p keeps the smallest prefix whose mass reaches p
    assert kept(filter_logits(logits, 1.0, top_p=float(p[0]) + 1e-4)) == [0, 1]
    assert kept(filter_logits(logits, 1.0, top_p=float(p[0]) - 1e-4)) == [0]
    # min_p relative to the top token
    ratio = float(p[2] / p[0])
    assert kept(filter_logits(logits, 1.0, min_p=ratio - 1e-4)) == [0, 1, 2]
    # temperature first: a high temperature flattens the distribution before min_p looks at it
    assert len(kept(filter_logits(logits, 5.0, min_p=ratio))) > 3


def test_generation_trace_follows_tool_calls_like_the_engine(tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    from nanochat.gpt import GPTConfig
    from tools.lib.generation_trace import trace_generation
    tok = get_tokenizer()
    sp = tok.encode_special
    script = [sp("<|python_start|>"), *tok.encode("6*7"), sp("<|python_end|>"), sp("<|assistant_end|>")]
    config = GPTConfig(sequence_len=64, vocab_size=tok.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1, n_embd=8)
    prompt = [tok.get_bos_token_id(), sp("<|assistant_start|>")]
    engine_model, trace_model = (ScriptedModel(script, tok.get_vocab_size(), config) for _ in range(2))
    engine_model.prompt_len = trace_model.prompt_len = len(prompt)
    engine = Engine(engine_model, tok)
    from_engine = [col[0] for col, _ in engine.generate(prompt, max_tokens=12, temperature=0.0)]
    steps = trace_generation(trace_model, prompt, max_tokens=12, temperature=0.0, engine=Engine(trace_model, tok),
                             stop_ids={sp("<|assistant_end|>")})
    assert [s.token_id for s in steps] == from_engine[:len(steps)]
    tool_tokens = [s.token_id for s in steps if s.tool]
    assert tool_tokens == [sp("<|output_start|>"), *tok.encode("42"), sp("<|output_end|>")]


# -----------------------------------------------------------------------------
# several prompts in one batch (left padding masked out of attention)

def _random_model(window_pattern, seed=0):
    from nanochat.gpt import GPTConfig, build_model
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=16, vocab_size=300, n_layer=3, n_head=4, n_kv_head=2, n_embd=64,
                       window_pattern=window_pattern)
    model = build_model(config, "cpu")
    with torch.no_grad():
        for p in model.parameters():  # some weights start at zero; make every path matter
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("window_pattern", ["L", "SL"])
def test_padded_rows_compute_what_each_prompt_computes_alone(window_pattern):
    model = _random_model(window_pattern)
    prompts = [[5, 17, 200, 3, 9, 44, 61, 2, 8, 90, 11, 7, 250], [5, 31, 4], [5, 6, 7, 8, 9, 10, 12]]
    width = max(map(len, prompts))
    pad = torch.tensor([width - len(p) for p in prompts])
    cache = KVCache.for_model(model, len(prompts), width, pad=pad)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    logits = [model(ids, kv_cache=cache)[:, -1]]
    step_ids = torch.tensor([[21], [22], [23]])
    for _ in range(6):  # decode steps reach past the short window (8) for every row
        logits.append(model(step_ids, kv_cache=cache)[:, -1])
    for row, p in enumerate(prompts):
        alone = model(torch.tensor([p + [21 + row] * 6]))  # the same tokens with no padding, no cache
        expected = alone[0, len(p) - 1:]
        got = torch.stack([lg[row] for lg in logits])
        assert torch.allclose(got, expected, atol=1e-4), (window_pattern, row, (got - expected).abs().max())


def test_several_prompts_decode_together_as_they_would_alone(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer)
    bos = tokenizer.get_bos_token_id()
    prompts = [tokenizer.encode(t, prepend=bos) for t in
               ["To be, or not to be, that is the question", "My lord", "Once upon a time there was"]]
    alone = [engine.generate_batch(p, num_samples=1, max_tokens=20, temperature=0.0)[0][0] for p in prompts]
    together, masks = engine.generate_batch(prompts, num_samples=2, max_tokens=20, temperature=0.0)
    assert together == [row for row in alone for _ in range(2)]  # prompt by prompt, num_samples rows each
    assert [len(m) for m in masks] == [len(r) for r in together]


# -----------------------------------------------------------------------------
# decoding one token at a time: no mask, and a sliding window by slicing the cache

@pytest.mark.parametrize("options,total", [(dict(window_pattern="SL"), 16),
                                           (dict(window_pattern="SSL", window_rule="upstream", sequence_len=512), 160)])
def test_one_token_decode_through_a_sliding_window_matches_the_full_forward(options, total):
    from nanochat.gpt import GPTConfig, build_model
    torch.manual_seed(0)
    config = GPTConfig(**{**dict(sequence_len=16, vocab_size=300, n_layer=3, n_head=4, n_kv_head=2, n_embd=64),
                          **options})
    model = build_model(config, "cpu").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    assert min(model.window_sizes) < total  # the decode reaches past some layer's window
    ids = torch.randint(0, 300, (2, total))
    cache = KVCache.for_model(model, 2, 4)  # too small: it grows on the way
    with torch.inference_mode():
        full = model(ids)
        stitched = torch.cat([model(ids[:, :3], kv_cache=cache)] +
                             [model(ids[:, t:t + 1], kv_cache=cache) for t in range(3, total)], dim=1)
    assert torch.allclose(stitched, full, atol=1e-4), (stitched - full).abs().max()


def test_decoding_builds_no_attention_mask(monkeypatch):
    import nanochat.gpt as gpt
    model = _random_model("SL")
    engine = Engine(model, StandInTokenizer(model.config.vocab_size))  # no row ends early
    calls = []
    real_mask = gpt.attention_mask
    monkeypatch.setattr(gpt, "attention_mask", lambda *a: calls.append(a) or real_mask(*a))
    for _ in engine.generate([5, 17, 200, 3], num_samples=3, max_tokens=8, temperature=1.0):
        pass
    assert calls == []  # the prefill is plainly causal and each decode step is one query per row



def test_draw_picks_each_token_as_often_as_its_probability():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    n = 100_000
    ids = draw(probs.expand(n, -1), torch.Generator().manual_seed(0))  # n independent rows
    freq = torch.bincount(ids, minlength=probs.numel()) / n
    assert (freq[probs == 0] == 0).all()  # a filtered-out token is never drawn
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 5 * sigma).all(), freq
    assert draw(torch.tensor([[0.0, 0.0, 1.0]]), torch.Generator()).tolist() == [2]
