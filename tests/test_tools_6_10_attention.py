"""Attention maps: the probabilities equal an independent recomputation from the layer's q and k
(rotary, QK-norm, causal mask, window, grouped-query heads), and the pattern names are right."""

import math

import torch

from nanochat.gpt import GPTConfig, build_model
from tools.lib.attention_maps import attention_probs, pattern_scores, name_pattern, summarize_heads


def random_model(window_pattern="SL"):
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=8, vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                       window_pattern=window_pattern)
    model = build_model(config, "cpu")
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised projections would hide mistakes
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def rotate(x, positions, base=10000.0):
    """Rotary embedding written out from its definition: pairs (i, i + D/2) rotated by pos * freq_i."""
    T, H, D = x.shape
    half = D // 2
    freqs = torch.tensor([base ** (-2 * i / D) for i in range(half)])
    angles = positions[:, None].float() * freqs[None, :]  # (T, D/2)
    c, s = angles.cos()[:, None, :], angles.sin()[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * c + b * s, -a * s + b * c], dim=-1)


def rms(x):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def reference_probs(model, ids, layer):
    """Run the blocks below `layer` as the model does, then rebuild q, k of `layer` by hand."""
    idx = torch.tensor([ids])
    T = len(ids)
    with torch.no_grad():
        x = rms(model.transformer.wte.weight[idx])
        x0 = x
        cos, sin = model.cos[:, :T], model.sin[:, :T]
        for i in range(layer):
            x = model.resid_lambdas[i] * x + model.x0_lambdas[i] * x0
            ve = model.value_embeds[str(i)](idx) if str(i) in model.value_embeds else None
            x = model.transformer.h[i](x, ve, cos, sin, model.window_sizes[i])
        x = model.resid_lambdas[layer] * x + model.x0_lambdas[layer] * x0
        attn = model.transformer.h[layer].attn
        xn = rms(x)[0]
        H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
        q = (xn @ attn.c_q.weight.T).view(T, H, D)
        k = (xn @ attn.c_k.weight.T).view(T, Hkv, D)
        pos = torch.arange(T)
        q, k = rms(rotate(q, pos)), rms(rotate(k, pos))
        window = model.window_sizes[layer]
        P = torch.zeros(H, T, T)
        for h in range(H):
            kh = h // (H // Hkv)
            for t in range(T):
                allowed = [s for s in range(T) if s <= t and t - s < window]
                logits = torch.tensor([float(q[t, h] @ k[s, kh]) / math.sqrt(D) for s in allowed])
                P[h, t, allowed] = torch.softmax(logits, 0)
    return P


def test_attention_probs_equal_independent_recomputation_with_window_and_gqa():
    model = random_model("SL")
    assert model.window_sizes == [4, 8]
    ids = [5, 9, 17, 5, 9, 33, 2, 5]
    probs = attention_probs(model, ids)
    for layer in (0, 1):
        ref = reference_probs(model, ids, layer)
        assert probs[layer].shape == (4, 8, 8)
        assert torch.allclose(probs[layer], ref, atol=1e-5), (layer, (probs[layer] - ref).abs().max())
        assert torch.allclose(probs[layer].sum(-1), torch.ones(4, 8), atol=1e-6)
        future = torch.triu(torch.ones(8, 8, dtype=torch.bool), diagonal=1)
        assert (probs[layer][:, future] == 0).all()
    # layer 0 has a window of 4: position 7 gives exactly zero weight to positions 0..3
    assert (probs[0][:, 7, :4] == 0).all() and (probs[0][:, 7, 4:] > 0).all()
    assert (probs[1][:, 7, :] > 0).all()


def test_attention_probs_reproduce_the_layer_output():
    """P @ v through the output projection is what the layer really computed."""
    model = random_model("L")
    ids = [1, 2, 3, 4, 5, 6]
    got = {}
    h = model.transformer.h[1].attn.register_forward_hook(lambda m, a, out: got.update(out=out, args=a))
    model(torch.tensor([ids]))
    h.remove()
    x, ve, cos, sin, window = got["args"][:5]
    attn = model.transformer.h[1].attn
    with torch.no_grad():
        _, _, v = attn.qkv(x, ve, cos, sin)
        v = v[0].repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)  # (T, H, D)
        P = attention_probs(model, ids, [1])[1]  # (H, T, T)
        y = torch.einsum("hqk,khd->qhd", P, v).reshape(1, len(ids), -1)
        out = attn.c_proj(y)
    assert torch.allclose(out, got["out"], atol=1e-5)


def test_pattern_scores_name_previous_token_sink_and_induction_heads():
    ids = [0, 7, 8, 9, 10, 7, 8, 9, 10, 7]  # a repeated sequence: induction is testable
    T = len(ids)
    prev, sink, induct, uniform = (torch.zeros(T, T) for _ in range(4))
    for t in range(T):
        prev[t, max(t - 1, 0)] = 1.0
        sink[t, 0] = 1.0
        uniform[t, :t + 1] = 1.0 / (t + 1)
        earlier = [j + 1 for j in range(t - 1) if ids[j] == ids[t]]
        if earlier:
            induct[t, earlier[-1]] = 1.0
        else:
            induct[t, t] = 1.0
    probs = torch.stack([prev, sink, induct, uniform])
    scores = pattern_scores(probs, ids)
    assert scores[0]["previous_token"] == 1.0
    assert scores[1]["first_token"] == 1.0
    assert scores[2]["induction"] == 1.0
    names = [name_pattern(s, T) for s in scores]
    assert names == ["previous_token", "first_token", "induction", None]
    summary = summarize_heads({3: probs}, ids)
    assert [(s.layer, s.head, s.pattern) for s in summary][:2] == [(3, 0, "previous_token"), (3, 1, "first_token")]


def test_induction_score_is_none_without_repeated_tokens():
    ids = [1, 2, 3, 4]
    probs = torch.tril(torch.ones(1, 4, 4))
    probs = probs / probs.sum(-1, keepdim=True)
    assert pattern_scores(probs, ids)[0]["induction"] is None


def run_tool(*args):
    import os
    import sys
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, os.path.join(repo, "tools", "attention_visualizer.py"), *map(str, args)],
                          cwd=repo, capture_output=True, text=True, env=dict(os.environ, NO_COLOR="1"), timeout=120)


def test_visualizer_shows_the_trained_models_real_attention_and_writes_a_heatmap(tiny_base_dir, tmp_path):
    import json
    from nanochat.checkpoint_manager import load_model
    from tools.lib.plotting import image_size
    out = tmp_path / "att.png"
    r = run_tool("--text", "To be or not to be", "--all-layers", "--json", "--heatmap", "--output", out)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    model, tokenizer, _ = load_model("base", "cpu", verbose=False)
    ids = tokenizer.encode("To be or not to be", prepend=tokenizer.get_bos_token_id())
    assert data["ids"] == ids
    for layer in range(model.config.n_layer):
        shown = torch.tensor(data["layers"][str(layer)])
        ref = reference_probs(model, ids, layer)
        assert torch.allclose(shown, ref, atol=1e-5)
        assert torch.allclose(shown.sum(-1), torch.ones_like(shown.sum(-1)), atol=1e-5)
        assert (torch.triu(shown, diagonal=1) == 0).all()
    assert len(data["heads"]) == model.config.n_layer * model.config.n_head
    assert image_size(out)[0] > 300


def test_visualizer_text_view_and_across_checkpoints(tiny_base_dir, tmp_path):
    r = run_tool("--text", "a b c a b c", "--layer", 1, "--head", 0, "--top-k", 2, "--across-checkpoints",
                 "--heatmap", "--output", tmp_path / "x.png")
    assert r.returncode == 0, r.stderr
    assert "Layer 1, head 0" in r.stdout and "Head patterns" in r.stdout
    assert [line.split()[0] for line in r.stdout.split("across checkpoints")[1].splitlines()[4:7]] == ["4", "8", "12"]
    assert (tmp_path / "x.png").exists()
    bad = run_tool("--text", "hi", "--layer", 7)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "layers 0..1" in bad.stderr
