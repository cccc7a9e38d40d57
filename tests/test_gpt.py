"""The model: sizes and FLOPs against formulas worked out by hand, attention variants, optimizer."""

import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.gpt import SoftcapCrossEntropy, GPT, GPTConfig, config_from_depth, build_model, layer_window_sizes, attention
from nanochat.optim import zeropower_via_newtonschulz5
from nanochat.training import lr_multiplier, EMA


def hand_param_count(depth, vocab, seq_len, aspect=64, head_dim=64, n_kv_head=None):
    d = depth * aspect
    d = math.ceil(d / head_dim) * head_dim
    h = d // head_dim
    kvh = n_kv_head or h
    kv = kvh * head_dim
    V = math.ceil(vocab / 64) * 64
    ve_layers = [i for i in range(depth) if i % 2 == (depth - 1) % 2]
    per_layer_attn = d * d + 2 * d * kv + d * d
    per_layer_mlp = 2 * 4 * d * d
    matmul = depth * (per_layer_attn + per_layer_mlp) + len(ve_layers) * 32 * kvh + V * d  # + lm_head
    total = matmul + V * d + len(ve_layers) * V * kv + 2 * depth
    return total, matmul, d, h


@pytest.mark.parametrize("depth,n_kv_head,pattern", [(1, None, "L"), (2, None, "L"), (3, 1, "SL"), (4, 2, "SSSL")])
def test_param_count_and_flops_match_hand_formulas(depth, n_kv_head, pattern):
    vocab, T, head_dim = 1000, 64, 64
    total, matmul, d, h = hand_param_count(depth, vocab, T, head_dim=head_dim, n_kv_head=n_kv_head)
    cfg = config_from_depth(depth, vocab, T, head_dim=head_dim, n_kv_head=n_kv_head, window_pattern=pattern)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == total
    # windows: S is half the context, the last layer always full
    windows = [T if (pattern[i % len(pattern)] == "L" or i == depth - 1) else T // 2 for i in range(depth)]
    attn = sum(12 * h * head_dim * w for w in windows)
    assert model.estimate_flops() == 6 * matmul + attn
    V = math.ceil(vocab / 64) * 64
    ve = sum(1 for i in range(depth) if i % 2 == (depth - 1) % 2) * V * (n_kv_head or h) * head_dim
    assert model.num_scaling_params() == total - V * d - ve


def test_vocab_is_padded_and_logits_are_not():
    cfg = GPTConfig(sequence_len=16, vocab_size=100, n_layer=1, n_head=2, n_kv_head=2, n_embd=64)
    model = build_model(cfg, "cpu")
    assert model.lm_head.weight.shape[0] == 128
    logits = model(torch.randint(0, 100, (1, 8)))
    assert logits.shape == (1, 8, 100)
    assert logits.abs().max() <= 15.0  # soft-capped


@pytest.mark.parametrize("chunk_rows", [3, 256])
def test_chunked_softcap_loss_equals_the_plain_one_with_its_gradients(chunk_rows):
    torch.manual_seed(0)
    N, C, V = 50, 32, 100
    x = (3 * torch.randn(N, C)).requires_grad_()  # large logits, so the softcap bites
    W = torch.randn(V, C).requires_grad_()
    targets = torch.randint(0, V, (N,))
    targets[::7] = -1  # masked positions (SFT's non-assistant tokens) count for nothing
    plain = F.cross_entropy(15.0 * torch.tanh((x @ W.t()) / 15.0), targets, ignore_index=-1)
    gx, gW = torch.autograd.grad(2.0 * plain, (x, W))  # a scale on the loss flows through backward
    fused = SoftcapCrossEntropy.apply(x, W, targets, chunk_rows)
    fx, fW = torch.autograd.grad(2.0 * fused, (x, W))
    assert torch.allclose(fused, plain, rtol=1e-5, atol=1e-6)
    assert torch.allclose(fx, gx, rtol=1e-4, atol=1e-6) and torch.allclose(fW, gW, rtol=1e-4, atol=1e-6)
    assert gx.abs().max() > 1e-3  # the comparison is not between two zero gradients


def test_model_training_loss_equals_its_evaluation_loss():
    # with gradients on, the CPU model takes the chunked loss; under no_grad the plain one
    torch.manual_seed(0)
    model = build_model(GPTConfig(sequence_len=32, vocab_size=200, n_layer=2, n_head=2, n_kv_head=2, n_embd=64), "cpu")
    x, y = torch.randint(0, 200, (3, 32)), torch.randint(0, 200, (3, 32))
    y[:, :5] = -1
    train_loss = model(x, y)
    with torch.no_grad():
        eval_loss = model(x, y)
    assert train_loss.requires_grad and not eval_loss.requires_grad
    assert torch.allclose(train_loss, eval_loss, rtol=1e-5)


def test_untrained_loss_is_near_ln_vocab():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=32, vocab_size=512, n_layer=2, n_head=2, n_kv_head=1, n_embd=64)
    model = build_model(cfg, "cpu")
    x = torch.randint(0, 512, (4, 32))
    assert abs(model(x, x).item() - math.log(512)) < 0.05


def test_window_pattern_last_layer_full():
    cfg = GPTConfig(sequence_len=64, n_layer=5, window_pattern="SSSL")
    assert layer_window_sizes(cfg) == [32, 32, 32, 64, 64]
    with pytest.raises(ValueError):
        layer_window_sizes(GPTConfig(window_pattern="SXL"))


def test_attention_matches_explicit_softmax_with_window_and_gqa():
    torch.manual_seed(0)
    B, T, H, Hkv, D, W = 2, 10, 4, 2, 8, 3
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hkv, D), torch.randn(B, T, Hkv, D)
    y = attention(q, k, v, 0, W)
    kk = k.repeat_interleave(H // Hkv, dim=2)
    vv = v.repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(D)
    i = torch.arange(T)
    allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < W)
    scores = scores.masked_fill(~allowed, float("-inf"))
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vv)
    assert torch.allclose(y, ref, atol=1e-5)
    # full window with is_causal takes the fast path and must agree with the explicit mask too
    y_full = attention(q, k, v, 0, T)
    scores_full = torch.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(D)
    scores_full = scores_full.masked_fill(~(i[:, None] >= i[None, :]), float("-inf"))
    assert torch.allclose(y_full, torch.einsum("bhqk,bkhd->bqhd", scores_full.softmax(-1), vv), atol=1e-5)


def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, window_pattern="SL")
    model = build_model(cfg, "cpu")
    with torch.no_grad():
        model.transformer.h[0].attn.c_proj.weight.normal_(0, 0.1)  # make attention matter
        model.transformer.h[1].attn.c_proj.weight.normal_(0, 0.1)
        model.transformer.h[0].mlp.c_proj.weight.normal_(0, 0.1)
    x = torch.randint(0, 64, (1, 12))
    x2 = x.clone()
    x2[0, 8:] = (x2[0, 8:] + 1) % 64
    a, b = model(x), model(x2)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-5)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_newton_schulz_orthogonalises():
    torch.manual_seed(0)
    G = torch.randn(32, 64)
    X = zeropower_via_newtonschulz5(G, steps=5)
    s = torch.linalg.svdvals(X)
    # the quintic iteration is tuned for speed: singular values land in roughly [0.7, 1.2]
    assert s.min() > 0.5 and s.max() < 1.3
    tall = zeropower_via_newtonschulz5(G.T, steps=5)
    assert torch.allclose(tall, X.T, atol=1e-5)


def test_optimizer_trains_a_tiny_model():
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = build_model(cfg, "cpu")
    opt = model.setup_optimizers()
    kinds = {g["name"]: g["kind"] for g in opt.param_groups}
    assert kinds == {"lm_head": "adamw", "embedding": "adamw", "scalar": "adamw", "matrix": "muon"}
    x = torch.randint(0, 64, (4, 16))
    first = model(x, x).item()
    for _ in range(20):
        loss = model(x, x)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
    assert model(x, x).item() < first * 0.5


def test_lr_schedule_shape():
    N = 100
    m = [lr_multiplier(s, N, warmup_ratio=0.1, warmdown_ratio=0.4, final_lr_frac=0.0) for s in range(N)]
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in m[10:61])
    assert all(a > b for a, b in zip(m[61:], m[62:]))  # strictly decreasing in warmdown
    assert m[-1] == pytest.approx(1 / 40)


def test_debiased_ema_starts_at_first_value_and_never_rewrites_history():
    ema = EMA(0.9)
    assert ema.update(5.0) == pytest.approx(5.0)
    history = [ema.update(x) for x in (4.0, 3.0)]
    assert history[0] == pytest.approx((0.9 * 0.1 * 5 + 0.1 * 4) / (1 - 0.81))
