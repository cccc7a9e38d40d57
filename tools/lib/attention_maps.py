"""
Attention maps: the real attention probabilities of a trained model, and the patterns they show.

Pipeline position: a read-only view of a checkpoint, used by tools/attention_visualizer.py.

How the probabilities are obtained: the model's forward pass is run unchanged, with a hook on
every attention module that keeps its input (the normed residual stream, the value embedding and
the rotary tables). From that input the layer's own `qkv()` gives q and k *after* rotary and
QK-norm, exactly as the layer used them; then

    P = softmax(q k^T / sqrt(head_dim) + mask)      mask: causal and within the layer's window

for every head (a grouped-query head reads the K/V head it shares, as SDPA's enable_gqa does).
P @ v is what the layer multiplied by its output projection, so these are the weights the model
really used, not an approximation.

Patterns named per head (scores in [0, 1], averaged over query positions 1..T-1):
- previous-token: the weight on the token just before (how bigrams get copied forward)
- first-token (attention sink): the weight on position 0 (often the BOS token), where heads park
  attention they do not need
- induction: at a token seen before, the weight on the token that *followed* its earlier occurrence
  ("... A B ... A -> look at B"), the mechanism behind in-context copying; it needs repeated text
- self: the weight on the query's own position
"""

import math
from dataclasses import dataclass

import torch

from nanochat.gpt import attention_mask
from tools.lib.token_inspect import visible

PATTERNS = ("previous_token", "first_token", "induction", "self")
PATTERN_LABELS = {"previous_token": "previous-token", "first_token": "first-token sink",
                  "induction": "induction", "self": "self (current token)"}


@torch.no_grad()
def attention_probs(model, ids, layers=None):
    """Attention probabilities of one sequence: {layer: tensor (H, T, T)}, rows sum to 1.

    ids: a list of token ids (one sequence). layers: the layers to keep (None: all)."""
    n_layer = model.config.n_layer
    layers = list(range(n_layer)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer < n_layer:
            raise ValueError(f"layer {layer} out of range: the model has layers 0..{n_layer - 1}")
    device = model.get_device()
    idx = torch.tensor([list(ids)], dtype=torch.long, device=device)
    captured = {}
    hooks = []
    for layer in layers:
        attn = model.transformer.h[layer].attn

        def keep_inputs(module, args, layer=layer):
            x, ve, cos, sin, window = args[:5]
            captured[layer] = (x, ve, cos, sin, window)
        hooks.append(attn.register_forward_pre_hook(keep_inputs))
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for layer in layers:
        x, ve, cos, sin, window = captured[layer]
        attn = model.transformer.h[layer].attn
        q, k, _ = attn.qkv(x, ve, cos, sin)  # (1, T, H, D), (1, T, Hkv, D)
        q, k = q[0].float(), k[0].float()
        group = attn.n_head // attn.n_kv_head
        k = k.repeat_interleave(group, dim=1)  # query head h reads K/V head h // group
        T, D = q.size(0), q.size(-1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)  # (H, T, T)
        allowed = attention_mask(torch.arange(T, device=device), T, window, device)  # (T, T)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[layer] = scores.softmax(dim=-1).cpu()
    return out


@torch.no_grad()
def next_token_predictions(model, ids, top_n=5):
    """What the model predicts after each position of one sequence: [[(token id, probability)]],
    the top_n of softmax(logits) at every position (the last row is its guess for what comes next)."""
    idx = torch.tensor([list(ids)], dtype=torch.long, device=model.get_device())
    probs = model(idx)[0].float().softmax(dim=-1)  # (T, V)
    p, t = torch.topk(probs, min(top_n, probs.size(-1)), dim=-1)
    return [[(int(a), float(b)) for a, b in zip(tr, pr)] for tr, pr in zip(t.tolist(), p.tolist())]


def pattern_scores(probs, ids):
    """Scores of the named patterns for each head. probs: (H, T, T); returns [{pattern: score}]."""
    H, T, _ = probs.shape
    ids = list(ids)
    result = []
    # induction targets: for query t, positions j+1 where ids[j] == ids[t], j < t, j+1 < t
    induction_targets = []
    for t in range(T):
        targets = [j + 1 for j in range(t - 1) if ids[j] == ids[t]]
        induction_targets.append(targets)
    for h in range(H):
        p = probs[h]
        scores = {}
        if T > 1:
            rows = torch.arange(1, T)
            scores["previous_token"] = p[rows, rows - 1].mean().item()
            scores["first_token"] = p[rows, 0].mean().item()
            scores["self"] = p[rows, rows].mean().item()
        else:
            scores.update(previous_token=0.0, first_token=0.0, self=1.0)
        ind = [p[t, targets].sum().item() for t, targets in enumerate(induction_targets) if targets]
        scores["induction"] = sum(ind) / len(ind) if ind else None  # None: no repeated token to test on
        result.append(scores)
    return result


def name_pattern(scores, T, threshold=0.4):
    """The name of the head's dominant pattern, or None when no pattern stands out.

    A pattern counts when its score passes `threshold` and is clearly above what a head spreading
    its attention evenly would give (about 2/T on one chosen position)."""
    uniform = 2.0 / max(T, 1)
    best, best_score = None, 0.0
    for name in PATTERNS:
        s = scores.get(name)
        if s is None or s < max(threshold, 2 * uniform):
            continue
        if s > best_score:
            best, best_score = name, s
    return best


@dataclass
class HeadSummary:
    layer: int
    head: int
    scores: dict
    pattern: str  # a key of PATTERN_LABELS, or None


def summarize_heads(probs_by_layer, ids, threshold=0.4):
    """[HeadSummary] for every head of every layer given."""
    T = len(ids)
    out = []
    for layer, probs in sorted(probs_by_layer.items()):
        for h, scores in enumerate(pattern_scores(probs, ids)):
            out.append(HeadSummary(layer, h, scores, name_pattern(scores, T, threshold)))
    return out


def top_attended(probs_row, k):
    """[(position, weight)] of the k largest weights of one query row, largest first."""
    k = min(k, probs_row.numel())
    w, pos = torch.topk(probs_row, k)
    return [(int(p), float(x)) for p, x in zip(pos, w) if x > 0]


def select_head(probs, head=None):
    """(T, T) weights of one head, or the average over heads when head is None."""
    if head is None:
        return probs.mean(dim=0)
    if not 0 <= head < probs.size(0):
        raise ValueError(f"head {head} out of range: the layer has heads 0..{probs.size(0) - 1}")
    return probs[head]


def attention_across_steps(ckpt_dir, steps, ids, layer, head, device="cpu"):
    """{step: (T, T) weights of one head (or the head average)} for several checkpoints of a run."""
    from nanochat.checkpoint_manager import load_model_from_dir
    out = {}
    for step in steps:
        model, _, _ = load_model_from_dir(ckpt_dir, step, device)
        out[step] = select_head(attention_probs(model, ids, [layer])[layer], head)
    return out


def token_labels(tokenizer, ids, width=10):
    """Short printable labels of tokens for axes and tables (whitespace made visible)."""
    labels = []
    for t in ids:
        s = visible(tokenizer.id_to_token(t))
        labels.append(s if len(s) <= width else s[:width - 1] + "…")
    return labels
