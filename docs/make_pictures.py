"""
The pictures of the guides, made from a real run by one command:

    python -m docs.make_pictures                      # a fresh small run in a temporary folder (~2 min, 2 cores)
    python -m docs.make_pictures --base-dir ~/.cache/nanochat    # draw from a run you already have

Pipeline position: after tokenizer training and pretraining; a reader of checkpoints, like the
learning tools. Without --base-dir it first trains a tokenizer and a tiny base model with the
project's own stages (scripts.tok_train, scripts.base_train) in a temporary base dir, then draws
every picture with the code the tools and the pipeline already have: the dashboard's plot
(tools/lib/metrics.py), the attention visualizer's heatmaps (tools/attention_visualizer.py on
tools/lib/attention_maps.py), the tokenizer playground's token list (tools/lib/token_inspect.py),
the LR schedule of nanochat/training.py, the rotary tables of nanochat/gpt.py and the KV cache of
nanochat/engine.py. Only the residual-stream diagram is drawn directly (its right half is measured).

The PNGs go to docs/images/, with docs/images/MANIFEST.json: for each picture its size in bytes and
sha256, plus the command, the date and the run they were drawn from. tests/test_pictures.py checks
that every picture a guide shows is the one this command wrote last. Pictures of the browser lab
(docs/images/lab/) are made by the lab's own test and are not listed here.
"""

import os
import sys
import argparse
import json
import math
import shutil
import hashlib
import tempfile
import datetime

import torch

from nanochat.common import ArgumentParser, UserError, int_range, run_main, use_base_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(REPO, "docs", "images")
COMMAND = "python -m docs.make_pictures"
SEED = 0

# the small real run drawn from when no --base-dir is given: a 2-layer model on the embedded corpus
VOCAB_SIZE = 2048
TRAIN_ARGS = ["--depth", "2", "--head-dim", "64", "--max-seq-len", "128", "--window-pattern", "L",
              "--device-batch-size", "8", "--total-batch-size", "1024", "--eval-every", "25",
              "--eval-tokens", "8192", "--sample-every", "-1", "--core-metric-every", "-1",
              "--save-every", "50", "--model-tag", "d2", "--run", "pictures", "--logger", "none"]

# texts the pictures look at
TOKEN_TEXTS = ["To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
               "In 1603, 12345 tokens cost $6.78; naïve café-goers say “unbelievable!”"]
SURPRISE_TEXTS = ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
                  "The spreadsheet crashed, so she rebooted her laptop and emailed the server logs."]
ATTENTION_TEXT = "To be, or not to be, that is the question. To be, or not to be"
KV_PROMPT = "To be, or not to be"


def parse_args(argv=None):
    p = ArgumentParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-dir", type=str, default=None,
                   help="draw from the run in this base dir (tokenizer + base_checkpoints); default: make a fresh small run")
    p.add_argument("--steps", type=int_range(10, 100000), default=150,
                   help="training steps of the fresh run (ignored with --base-dir)")
    p.add_argument("--output", type=str, default=IMAGES, help="folder for the PNGs and MANIFEST.json")
    p.add_argument("--keep-run", action="store_true", help="keep the fresh run's temporary base dir (its path is printed)")
    return p.parse_args(argv)


# -----------------------------------------------------------------------------
# the run

def make_run(base_dir, steps):
    """Tokenizer + a short base_train into base_dir, with the project's own stages."""
    from scripts import tok_train, base_train
    os.environ["NANOCHAT_BASE_DIR"] = os.path.abspath(base_dir)
    tok_train.main(["--vocab-size", str(VOCAB_SIZE), "--max-chars", "2000000"])
    base_train.main(TRAIN_ARGS + ["--num-iterations", str(steps)])


def load_base(base_dir):
    """(model, tokenizer, run history, checkpoint dir) of the base run in base_dir."""
    from nanochat import checkpoint_manager as cm
    from tools.lib import metrics as mx
    cdir, tag, step = cm.resolve_checkpoint("base", base_dir=base_dir)
    model, tokenizer, _ = cm.load_model_from_dir(cdir, step, "cpu")
    history = mx.load_run(cdir, base_dir=base_dir)
    return model, tokenizer, history, cdir


# -----------------------------------------------------------------------------
# the pictures: each function draws one PNG into out_dir and returns its path

def draw_training_dashboard(history, out_dir):
    """The training dashboard's own figure: loss, val bpb, LR multiplier, tokens/s."""
    from tools.lib import metrics as mx
    return mx.plot_runs([history], os.path.join(out_dir, "training_dashboard.png"))


def draw_loss_curve(history, vocab_size, out_dir):
    """Train loss (raw and smoothed) against the loss of a uniform guess, ln(vocab size)."""
    from tools.lib import metrics as mx, plotting
    fig, axes = plotting.new_figure(1, 1, width=8, height=4.2, squeeze=True)
    ax = axes
    xs, ys = history.series("train_loss")
    sx, sy = history.smoothed_loss()  # from loop_state when an upstream run logged no per-step loss
    uniform = math.log(vocab_size)
    ax.axhline(uniform, color="#666666", linestyle="--", linewidth=1)
    ax.text((xs or sx or [1])[-1], uniform, f"uniform guess: ln({vocab_size}) = {uniform:.2f}", ha="right", va="bottom",
            fontsize=8, color="#444444")
    if ys:
        ax.plot(xs, ys, color=plotting.color(0), alpha=0.3, linewidth=1, label="train loss, each step")
    ax.plot(sx, sy, color=plotting.color(0), linewidth=2, label=f"smoothed (debiased EMA {mx.SMOOTH_BETA})")
    ax.set_ylim(0, uniform * 1.08)  # room for the label above the dashed line
    plotting.style_axes(ax, title=f"Cross-entropy loss of a {history.model_config['n_layer']}-layer model "
                        f"({history.name})", xlabel="optimizer step", ylabel="loss (nats per token)",
                        legend=True)
    return plotting.save_figure(fig, os.path.join(out_dir, "loss_curve.png"))


def draw_lr_schedule(history, out_dir):
    """lr_multiplier for the run's length and two variants, with the multipliers the run logged."""
    from nanochat.training import lr_multiplier
    from tools.lib import plotting
    n = history.num_iterations or (history.checkpoint_steps or [0])[-1]
    if not n:
        raise UserError(f"{history.path} records no number of steps: cannot draw its LR schedule")
    fig, axes = plotting.new_figure(1, 1, width=8, height=4.2, squeeze=True)
    ax = axes
    variants = [("default: no warmup, warmdown 0.4 of the steps to 0", dict(warmup_ratio=0.0, warmdown_ratio=0.4)),
                ("--warmup-ratio 0.1", dict(warmup_ratio=0.1, warmdown_ratio=0.4)),
                ("--final-lr-frac 0.2", dict(warmup_ratio=0.0, warmdown_ratio=0.4, final_lr_frac=0.2))]
    steps = list(range(n))
    for i, (label, kw) in enumerate(variants):
        ax.plot([s + 1 for s in steps], [lr_multiplier(s, n, **kw) for s in steps], color=plotting.color(i),
                linewidth=2 if i == 0 else 1.2, linestyle="-" if i == 0 else "--", label=label)
    lx, ly = history.series("lr")
    if ly:
        every = max(1, len(lx) // 30)
        ax.plot(lx[::every], ly[::every], "o", color="#000000", markersize=3, label="logged by this run (metrics.jsonl)")
    plotting.style_axes(ax, title=f"Learning-rate multiplier over {n} steps (training.lr_multiplier)",
                        xlabel="optimizer step", ylabel="LR x the peak rate", legend=True)
    return plotting.save_figure(fig, os.path.join(out_dir, "lr_schedule.png"))


TOKEN_COLS, ROW_H = 92, 2.4  # token pictures: a line holds 92 cells of the monospace font


def wrap_tokens(infos, cols=TOKEN_COLS):
    """Lay tokens out in lines of at most `cols` character cells: [[(col, index), ...], ...]."""
    lines, col, line = [], 0, []
    for i, info in enumerate(infos):
        width = len(info.shown)
        if col + width > cols and line:
            lines.append(line)
            line, col = [], 0
        line.append((col, i))
        col += width + 1  # one cell of space between boxes
    lines.append(line)
    return lines


def token_figure(blocks, title, alpha=0.3):
    """A figure of token boxes. blocks: [(caption, infos, faces, sublabels)], one per text; each token
    is drawn in a box of its face colour with its sublabel underneath. Returns (fig, ax)."""
    from tools.lib import plotting
    laid = [(caption, infos, faces, subs, wrap_tokens(infos)) for caption, infos, faces, subs in blocks]
    n_lines = sum(len(lines) + 1 for *_, lines in laid)
    fig, ax = plotting.new_figure(1, 1, width=10, height=0.5 + 0.55 * n_lines, squeeze=True)
    ax.set_xlim(-0.5, TOKEN_COLS)
    ax.set_ylim(-n_lines * ROW_H, 0.5)
    ax.axis("off")
    y = 0.0
    for caption, infos, faces, subs, lines in laid:
        ax.text(0, y, caption, fontsize=9, color="#444444", va="top")
        y -= ROW_H * 0.75
        for line in lines:
            for col, i in line:
                ax.text(col, y, infos[i].shown, family="DejaVu Sans Mono", fontsize=12, va="top",
                        bbox=dict(boxstyle="square,pad=0.15", facecolor=faces[i], alpha=alpha, edgecolor=faces[i]))
                ax.text(col, y - 1.0, subs[i], family="DejaVu Sans Mono", fontsize=6, va="top", color="#555555")
            y -= ROW_H
        y -= ROW_H * 0.25
    ax.set_title(title, fontsize=10, fontweight="bold", loc="left")
    return fig, ax


def draw_tokens(tokenizer, out_dir):
    """Texts cut into tokens: one coloured box per token, its id underneath (token_inspect.tokenize)."""
    from tools.lib import plotting, token_inspect
    blocks = []
    for text in TOKEN_TEXTS:
        infos = token_inspect.tokenize(tokenizer, text)
        stats = token_inspect.text_stats(tokenizer, text)
        caption = (f"{stats['chars']} characters, {stats['bytes']} bytes -> {stats['tokens']} tokens "
                   f"({stats['bytes_per_token']:.2f} bytes per token)")
        blocks.append((caption, infos, [plotting.PALETTE[i % 6] for i in range(len(infos))], [str(t.id) for t in infos]))
    fig, _ = token_figure(blocks, f"Text as the tokenizer cuts it ({tokenizer.get_vocab_size()} tokens; · is a space, "
                          "↵ a newline, <xx> one byte of a character)")
    return plotting.save_figure(fig, os.path.join(out_dir, "tokens.png"))


@torch.no_grad()
def token_bits(model, tokenizer, text):
    """(TokenInfo of each predicted token, its loss in bits, bits per byte of the text). The text is
    read after <|bos|>; each token's loss is the model's own cross-entropy (loss_reduction="none"),
    and bits per byte is summed bits over summed bytes, as nanochat/loss_eval.py's evaluate_bpb."""
    from tools.lib import token_inspect
    ids = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    bits = (model(x, y, loss_reduction="none").view(-1) / math.log(2)).tolist()
    infos = token_inspect.token_infos(tokenizer, ids[1:])
    nbytes = sum(i.nbytes for i in infos)
    return infos, bits, sum(b for b, i in zip(bits, infos) if i.nbytes) / nbytes


def draw_token_surprise(model, tokenizer, out_dir):
    """Each token coloured by how many bits the model's prediction of it cost: bits per byte, token by token."""
    import matplotlib
    from tools.lib import plotting
    cmap = matplotlib.colormaps["YlOrRd"]
    top = 16.0  # bits: colour scale from 0 (sure) to 16 (a 1-in-65536 guess)
    blocks = []
    for text in SURPRISE_TEXTS:
        infos, bits, bpb = token_bits(model, tokenizer, text)
        caption = (f"{sum(bits):.0f} bits for {sum(i.nbytes for i in infos)} bytes = {bpb:.2f} bits per byte "
                   f"({sum(bits) / len(bits):.1f} bits per token)")
        blocks.append((caption, infos, [cmap(min(b, top) / top) for b in bits], [f"{b:.0f}" for b in bits]))
    fig, ax = token_figure(blocks, "Bits the model spent on each token (-log2 of the probability it gave it); "
                           "darker is more surprising", alpha=0.75)
    sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, top))
    fig.colorbar(sm, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02, aspect=50, label="bits")
    return plotting.save_figure(fig, os.path.join(out_dir, "token_bits.png"))


def draw_attention(model, tokenizer, out_dir):
    """Every head of every layer on a text that repeats, with the attention visualizer's heatmaps."""
    from tools.attention_visualizer import plot_heatmaps
    from tools.lib import attention_maps as am
    ids = tokenizer.encode(ATTENTION_TEXT, prepend=tokenizer.get_bos_token_id())
    probs = am.attention_probs(model, ids)
    summaries = {(s.layer, s.head): s.pattern for s in am.summarize_heads(probs, ids)}
    panels = []
    for layer, p in sorted(probs.items()):
        for h in range(p.size(0)):
            name = summaries[(layer, h)]
            label = f" ({am.PATTERN_LABELS[name]})" if name else ""
            panels.append((f"layer {layer}, head {h}{label}", p[h]))
    labels = am.token_labels(tokenizer, ids)
    return plot_heatmaps(panels, labels, os.path.join(out_dir, "attention_heads.png"),
                         "Attention weights: each row is a token, each column a token it reads")


def draw_rotary(model, out_dir):
    """Rotary embeddings with the model's own tables: a pair of numbers turning with position, fast and
    slow pairs, and the score of a rotated query and key as a function of their distance."""
    from nanochat.gpt import apply_rotary_emb
    from tools.lib import plotting
    D = model.cos.size(-1) * 2  # the tables hold one angle per pair: D/2 columns
    d = D // 2

    def rotate(vec, pos):  # vec: (D,) -> rotated (D,) at position pos
        return apply_rotary_emb(vec.view(1, 1, 1, D), model.cos[:, pos:pos + 1], model.sin[:, pos:pos + 1]).view(D)

    fig, axes = plotting.new_figure(1, 2, width=11, height=4.6)
    ax, ax2 = axes[0][0], axes[0][1]
    positions = list(range(8))
    for i, pair in enumerate([0, d // 4]):
        unit = torch.zeros(D)
        unit[pair] = 1.0  # the pair is (x[pair], x[pair + D/2])
        radius = 1.0 - 0.35 * i
        pts = [rotate(unit * radius, p) for p in positions]
        for p, v in zip(positions, pts):
            x_, y_ = v[pair].item(), v[pair + d].item()
            ax.annotate("", xy=(x_, y_), xytext=(0, 0),
                        arrowprops=dict(arrowstyle="->", color=plotting.color(i), alpha=0.35 + 0.65 * p / 7))
            ax.text(x_ * 1.08, y_ * 1.08, str(p), fontsize=7, color=plotting.color(i), ha="center", va="center")
        angle = math.atan2(-pts[1][pair + d].item(), pts[1][pair].item())
        ax.plot([], [], color=plotting.color(i), label=f"pair {pair}: {abs(angle):.3f} rad per position")
    ax.set_aspect("equal")
    ax.set_xlim(-1.25, 1.25)
    ax.set_ylim(-1.25, 1.65)  # room for the legend above the arrows
    plotting.style_axes(ax, title="One pair of q's numbers at positions 0..7", xlabel="first number of the pair",
                        ylabel="second number", legend=True)
    gen = torch.Generator().manual_seed(SEED)
    q, k = torch.randn(2, D, generator=gen).unbind(0)
    distances = list(range(0, 41))
    for i, q_pos in enumerate([40, 80, 120]):
        scores = [(rotate(q, q_pos) * rotate(k, q_pos - dist)).sum().item() for dist in distances]
        ax2.plot(distances, scores, color=plotting.color(i), linewidth=3.5 - 1.2 * i, alpha=0.8,
                 label=f"query at position {q_pos}")
    plotting.style_axes(ax2, title="Score q·k depends only on the distance", xlabel="distance (query position - key position)",
                        ylabel="dot product of rotated q and k", legend=True)
    fig.suptitle(f"Rotary position embeddings (head size {D}, apply_rotary_emb with model.cos / model.sin)",
                 fontsize=12, fontweight="bold")
    return plotting.save_figure(fig, os.path.join(out_dir, "rotary.png"))


@torch.no_grad()
def residual_writes(model, ids):
    """RMS (over positions and channels) of the residual stream before each block and of what each
    attention and MLP adds to it: [(name, rms)], measured with forward hooks on the real model."""
    rms = lambda t: t.float().pow(2).mean().sqrt().item()
    out, hooks = [], []
    for i, block in enumerate(model.transformer.h):
        hooks.append(block.register_forward_pre_hook(lambda m, args, i=i: out.append((f"stream into block {i}", rms(args[0])))))
        hooks.append(block.attn.register_forward_hook(lambda m, args, y, i=i: out.append((f"attention {i} adds", rms(y)))))
        hooks.append(block.mlp.register_forward_hook(lambda m, args, y, i=i: out.append((f"MLP {i} adds", rms(y)))))
    last = len(model.transformer.h) - 1
    hooks.append(model.transformer.h[last].register_forward_hook(
        lambda m, args, y: out.append(("stream out (to norm, lm_head)", rms(y)))))
    try:
        model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return out


def draw_residual_stream(model, tokenizer, out_dir):
    """Left: the residual stream as a diagram (drawn here). Right: how much each part writes into it,
    measured on the trained model."""
    from matplotlib.patches import FancyBboxPatch
    from tools.lib import plotting
    fig, axes = plotting.new_figure(1, 2, width=11, height=6, gridspec_kw={"width_ratios": [1.05, 1]})
    ax, ax2 = axes[0][0], axes[0][1]
    ax.axis("off")
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 12)
    stream_x = 3.0
    ax.annotate("", xy=(stream_x, 11.3), xytext=(stream_x, 0.9),
                arrowprops=dict(arrowstyle="-|>", color="#555555", linewidth=3))

    def box(x, y, w, h, text, color):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", facecolor=color, alpha=0.25,
                                    edgecolor=color))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)

    box(1.6, 0.1, 2.8, 0.7, "tokens -> wte -> norm = x0", plotting.color(5))
    box(1.6, 11.35, 2.8, 0.6, "norm -> lm_head -> logits", plotting.color(5))
    layers = [(1.5, "block 0"), (6.0, "block 1")]
    for y0, name in layers:
        ax.text(0.1, y0 + 1.9, name, fontsize=9, fontweight="bold", rotation=90, va="center")
        ax.text(stream_x - 0.15, y0 + 0.25, "x = resid_lambda·x + x0_lambda·x0", fontsize=7, ha="right", color="#444444")
        for j, (part, color) in enumerate([("attention\n(reads other positions)", plotting.color(0)),
                                           ("MLP\n(this position only)", plotting.color(1))]):
            y = y0 + 0.9 + j * 1.9
            box(5.2, y, 3.3, 1.0, part, color)
            ax.annotate("", xy=(5.2, y + 0.35), xytext=(stream_x, y + 0.35),
                        arrowprops=dict(arrowstyle="->", color=color))
            ax.text(4.1, y + 0.45, "norm", fontsize=7, ha="center", color=color)
            ax.annotate("", xy=(stream_x + 0.12, y + 0.85), xytext=(5.2, y + 0.75),
                        arrowprops=dict(arrowstyle="->", color=color))
            ax.text(stream_x - 0.05, y + 0.85, "+", fontsize=14, fontweight="bold", ha="right", va="center", color=color)
    ax.text(stream_x + 0.15, 10.6, "residual\nstream x", fontsize=9, color="#333333")
    ax.set_title("Every block reads the stream and adds to it", fontsize=11, fontweight="bold")

    ids = tokenizer.encode(ATTENTION_TEXT, prepend=tokenizer.get_bos_token_id())
    writes = residual_writes(model, ids)
    names = [n for n, _ in writes]
    values = [v for _, v in writes]
    colors = ["#777777" if n.startswith("stream") else plotting.color(0 if n.startswith("attention") else 1) for n in names]
    ax2.barh(range(len(values)), values, color=colors)
    ax2.set_yticks(range(len(values)))
    ax2.set_yticklabels(names, fontsize=8)
    ax2.invert_yaxis()
    plotting.style_axes(ax2, title="Measured: size of the stream and of each write", xlabel="RMS over positions and channels")
    fig.suptitle(f"The residual stream of the {model.config.n_layer}-layer model", fontsize=12, fontweight="bold")
    return plotting.save_figure(fig, os.path.join(out_dir, "residual_stream.png"))


@torch.no_grad()
def kv_cache_growth(model, tokenizer, new_tokens):
    """Generate greedily with and without the KV cache, counting the positions the model processes.

    Returns dict of lists per generated token: work without cache, work with cache, cache positions
    filled and cache capacity in bytes (the cache starts sized for the prompt and grows as needed)."""
    from nanochat.engine import KVCache
    prompt = tokenizer.encode(KV_PROMPT, prepend=tokenizer.get_bos_token_id())
    P = len(prompt)
    processed = []
    original = model.forward

    def counting_forward(idx, *args, **kwargs):
        processed.append(idx.numel())
        return original(idx, *args, **kwargs)

    model.forward = counting_forward
    try:
        no_cache = list(model.generate(prompt, max_tokens=new_tokens, temperature=0.0))
        work_without = list(processed)
        processed.clear()
        cache = KVCache.for_model(model, batch_size=1, seq_len=P)
        tokens = list(prompt)
        logits = model.forward(torch.tensor([tokens]), kv_cache=cache)
        filled, capacity, with_cache = [], [], []
        per_position = lambda c: 2 * c.k[:, :, :, :1].numel() * c.k.element_size()  # keys + values of one position
        for _ in range(new_tokens):
            nxt = int(logits[0, -1].argmax())
            tokens.append(nxt)
            with_cache.append(sum(processed))
            filled.append(cache.get_pos() * per_position(cache))
            capacity.append(2 * cache.k.numel() * cache.k.element_size())
            logits = model.forward(torch.tensor([[nxt]]), kv_cache=cache)
    finally:
        model.forward = original
    assert tokens[P:] == no_cache, "the cached and uncached greedy generations differ"
    return {"prompt_len": P, "without": [sum(work_without[:i + 1]) for i in range(new_tokens)],
            "with": with_cache, "filled": filled, "capacity": capacity}


def draw_kv_cache(model, tokenizer, out_dir, new_tokens=96):
    from tools.lib import plotting
    g = kv_cache_growth(model, tokenizer, new_tokens)
    n = list(range(1, new_tokens + 1))
    fig, axes = plotting.new_figure(1, 2, width=11, height=4.4)
    ax, ax2 = axes[0][0], axes[0][1]
    ax.plot(n, g["without"], color=plotting.color(1), linewidth=2, label="without a cache (GPT.generate)")
    ax.plot(n, g["with"], color=plotting.color(0), linewidth=2, label="with the KV cache (prefill, then 1 per token)")
    plotting.style_axes(ax, title="Work: token positions run through the model", xlabel="tokens generated",
                        ylabel="positions processed so far", legend=True)
    ax2.plot(n, [b / 1024 for b in g["filled"]], color=plotting.color(0), linewidth=2, label="filled: keys + values so far")
    ax2.step(n, [b / 1024 for b in g["capacity"]], where="post", color=plotting.color(2), linestyle="--",
             label="allocated (doubles when full)")
    plotting.style_axes(ax2, title="Memory: the KV cache of one row", xlabel="tokens generated",
                        ylabel="KiB (float32)", legend=True)
    c = model.config
    fig.suptitle(f"Generating {new_tokens} tokens after a {g['prompt_len']}-token prompt "
                 f"({c.n_layer} layers, {c.n_kv_head} KV heads of {c.n_embd // c.n_head})", fontsize=12, fontweight="bold")
    return plotting.save_figure(fig, os.path.join(out_dir, "kv_cache.png"))


def draw_all(base_dir, out_dir):
    """Every picture from the run in base_dir; returns the PNG paths."""
    torch.manual_seed(SEED)
    model, tokenizer, history, _ = load_base(base_dir)
    os.makedirs(out_dir, exist_ok=True)
    return [draw_tokens(tokenizer, out_dir),
            draw_attention(model, tokenizer, out_dir),
            draw_rotary(model, out_dir),
            draw_residual_stream(model, tokenizer, out_dir),
            draw_token_surprise(model, tokenizer, out_dir),
            draw_loss_curve(history, tokenizer.get_vocab_size(), out_dir),
            draw_lr_schedule(history, out_dir),
            draw_training_dashboard(history, out_dir),
            draw_kv_cache(model, tokenizer, out_dir)]


# -----------------------------------------------------------------------------
# the manifest

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(out_dir, paths, command, run):
    """MANIFEST.json: the command, the date, the run, and per picture its bytes and sha256."""
    images = {os.path.basename(p): {"bytes": os.path.getsize(p), "sha256": sha256_file(p)} for p in sorted(paths)}
    manifest = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "run": run, "images": images}
    path = os.path.join(out_dir, "MANIFEST.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return path


def run_description(history):
    c = history.model_config or {}
    last = history.records[-1] if history.records else {}
    return {"n_layer": c.get("n_layer"), "n_embd": c.get("n_embd"), "vocab_size": c.get("vocab_size"),
            "steps": last.get("step"), "final_train_loss": last.get("train_loss"),
            "val_bpb": history.series("val_bpb")[1][-1] if history.has("val_bpb") else None}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)  # reruns give the same run; two shared cores gain little from more
    torch.manual_seed(SEED)
    tmp = None
    if args.base_dir:
        use_base_dir(os.path.expanduser(args.base_dir))
        base_dir = os.environ["NANOCHAT_BASE_DIR"]
    else:
        tmp = base_dir = tempfile.mkdtemp(prefix="nanochat_pictures_")
        print(f"training a small run for the pictures in {base_dir}")
        make_run(base_dir, args.steps)
    try:
        out_dir = os.path.abspath(args.output)
        paths = draw_all(base_dir, out_dir)
        _, _, history, _ = load_base(base_dir)
        command = " ".join([COMMAND] + (list(sys.argv[1:]) if argv is None else list(argv)))
        manifest = write_manifest(out_dir, paths, command, run_description(history))
    finally:
        if tmp and not args.keep_run:
            shutil.rmtree(tmp, ignore_errors=True)
    for p in paths:
        print(f"{os.path.getsize(p) / 1024:7.1f} KiB  {os.path.relpath(p)}")
    print(f"manifest: {os.path.relpath(manifest)}")
    if tmp and args.keep_run:
        print(f"the run is kept in {tmp}")
    return 0


if __name__ == "__main__":
    run_main(main)
