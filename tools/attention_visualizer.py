"""
Attention visualizer: which earlier tokens each token looks at, in the real trained model.

The weights are the model's own attention probabilities (after rotary and QK-norm, causal, with
the layer's sliding window), per head or averaged over heads. The text view lists, for every
position, the tokens it attends to most as bars; --heatmap writes a PNG with token labels. A
summary names the heads that follow a recognisable pattern: previous-token, first-token (attention
sink), induction (needs repeated text: "a b c d a b c d"), self.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json

import torch

from nanochat.common import run_main, UserError, resolve_device_type, add_device_arg, nonneg_int, int_range
from tools.lib import termui as ui
from nanochat import checkpoint_manager as cm
from tools.lib import attention_maps as am

EXAMPLES = [
    'python tools/attention_visualizer.py --text "Hello world" --layer 0',
    'python tools/attention_visualizer.py --text "The capital of France is" --layer 5 --head 3',
    'python tools/attention_visualizer.py --text "Once upon a time" --layer 10 --heatmap --output attention.png',
    'python tools/attention_visualizer.py --source base --model-tag d20 --text "Hello" --layer 0 --top-k 10',
    'python tools/attention_visualizer.py --text "a b c d a b c d" --all-layers --heatmap',
    'python tools/attention_visualizer.py --text "To be or not to be" --layer 1 --head 0 --across-checkpoints',
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("--text", type=str, required=True, help="the text to look at (BOS is put in front)")
    p.add_argument("--layer", type=nonneg_int, default=0, help="layer to show (0 = first)")
    p.add_argument("--head", type=nonneg_int, default=None, help="head to show (default: the average over heads)")
    p.add_argument("--top-k", type=int_range(1, 1000), default=3, help="attended tokens listed per position")
    p.add_argument("--heatmap", action="store_true", help="write a heatmap PNG with token labels")
    p.add_argument("--output", type=str, default=None, help="PNG path (default attention.png)")
    p.add_argument("--all-layers", action="store_true", help="every layer: a grid of small heatmaps and all head summaries")
    p.add_argument("--across-checkpoints", action="store_true", help="the same layer/head at several training steps")
    p.add_argument("--steps", type=nonneg_int, nargs="+", default=None, help="steps for --across-checkpoints (default: up to 6)")
    p.add_argument("--json", action="store_true", help="print weights and head summaries as JSON")
    cm.add_checkpoint_args(p, "base", short=False)
    add_device_arg(p)
    args = p.parse_args(argv)
    if not args.text.strip():
        raise UserError("--text is empty; give some text to look at")
    return args


def show_text_view(tokenizer, ids, weights, top_k, title):
    labels = am.token_labels(tokenizer, ids, width=12)
    print(ui.heading(title))
    width = max(ui.display_width(f"{label}@{p}") for p, label in enumerate(labels))
    rows = []
    for t in range(len(ids)):
        attended = am.top_attended(weights[t], top_k)
        cells = [ui.pad(f"{labels[p]}{ui.muted('@' + str(p))}", width) + f" {ui.bar(w, 10, 'cyan')} {w:.2f}"
                 for p, w in attended]
        rows.append([t, labels[t], " │ ".join(cells)])
    print(ui.table(rows, headers=["pos", "token", f"attends to (top {top_k})"], align="><<"))


def show_head_summary(summaries, T, has_repeats):
    print()
    print(ui.heading("Head patterns"))
    rows = []
    for s in summaries:
        sc = s.scores
        ind = "-" if sc["induction"] is None else f"{sc['induction']:.2f}"
        name = ui.good(am.PATTERN_LABELS[s.pattern]) if s.pattern else ui.muted("no clear pattern")
        rows.append([s.layer, s.head, f"{sc['previous_token']:.2f}", f"{sc['first_token']:.2f}", f"{sc['self']:.2f}",
                     ind, name])
    print(ui.table(rows, headers=["layer", "head", "prev", "first", "self", "induction", "pattern"], align=">>>>>><"))
    print(ui.muted(f"  scores: mean weight on that position over the {T - 1} queries after the first; "
                   f"a head is named when a score passes 0.4"))
    if not has_repeats:
        print(ui.muted("  induction needs repeated tokens: try --text \"a b c d a b c d\""))


def plot_heatmaps(panels, labels, output, title):
    """panels: [(title, (T, T) weights)] in one row or a grid."""
    from tools.lib import plotting
    n = len(panels)
    ncols = min(n, 4)
    nrows = (n + ncols - 1) // ncols
    size = 6 if n == 1 else 3.6
    fig, axes = plotting.new_figure(nrows, ncols, width=size * ncols + 1, height=size * nrows + 0.6, title=title)
    show_labels = len(labels) <= 40
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        name, w = panels[i]
        w = w.clone()
        w[torch.triu(torch.ones_like(w, dtype=torch.bool), diagonal=1)] = float("nan")  # the future: left blank
        plotting.heatmap(ax, w.numpy(), xlabels=labels if show_labels else None,
                         ylabels=labels if show_labels else None, title=name, vmin=0.0, vmax=1.0,
                         colorbar=(n == 1))
        ax.set_xlabel("attended (key)", fontsize=8)
        ax.set_ylabel("attending (query)", fontsize=8)
    return plotting.save_figure(fig, output)


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device_type(args.device_type)
    model, tokenizer, meta, _ = cm.load_model_from_args(args, device, verbose=not args.json)
    n_layer, n_head = model.config.n_layer, model.config.n_head
    if not 0 <= args.layer < n_layer:
        raise UserError(f"--layer {args.layer} is out of range: this model has layers 0..{n_layer - 1}")
    if args.head is not None and not 0 <= args.head < n_head:
        raise UserError(f"--head {args.head} is out of range: this model has heads 0..{n_head - 1}")
    ids = tokenizer.encode(args.text, prepend=tokenizer.get_bos_token_id())
    if len(ids) > model.config.sequence_len:
        raise UserError(f"the text is {len(ids)} tokens but the model's context is {model.config.sequence_len}; "
                        "shorten --text")
    labels = am.token_labels(tokenizer, ids)
    head_name = "average of heads" if args.head is None else f"head {args.head}"
    layers = list(range(n_layer)) if args.all_layers else [args.layer]
    probs = am.attention_probs(model, ids, layers)
    summaries = am.summarize_heads(probs, ids)
    has_repeats = len(set(ids)) < len(ids)

    across = None
    if args.across_checkpoints:
        cdir, tag, _ = cm.resolve_checkpoint(args.source, args.model_tag)
        available = cm.list_complete_steps(cdir)
        k = min(6, len(available))
        steps = args.steps or [available[round(i * (len(available) - 1) / max(k - 1, 1))] for i in range(k)]
        steps = sorted(set(steps))
        missing = [s for s in steps if s not in available]
        if missing:
            raise UserError(f"no checkpoint at step {missing[0]} of {tag} (steps: {', '.join(map(str, available))})")
        with ui.progress(steps, desc="loading checkpoints") as it:
            across = am.attention_across_steps(cdir, list(it), ids, args.layer, args.head, device)

    if args.json:
        out = {"tokens": [tokenizer.id_to_token(t) for t in ids], "ids": ids,
               "layers": {str(layer): p.tolist() for layer, p in probs.items()},
               "heads": [{"layer": s.layer, "head": s.head, "scores": s.scores, "pattern": s.pattern} for s in summaries],
               "next_tokens": am.next_token_predictions(model, ids)}
        if across:
            out["across_checkpoints"] = {str(s): w.tolist() for s, w in across.items()}
        print(json.dumps(out))
    else:
        for layer in layers:
            show_text_view(tokenizer, ids, am.select_head(probs[layer], args.head), args.top_k,
                           f"Layer {layer}, {head_name} (window {model.window_sizes[layer]})")
            print()
        show_head_summary(summaries, len(ids), has_repeats)
        if across:
            print()
            print(ui.heading(f"Layer {args.layer}, {head_name} across checkpoints"))
            rows = []
            for step, w in across.items():
                sc = am.pattern_scores(w.unsqueeze(0), ids)[0]
                name = am.name_pattern(sc, len(ids))
                rows.append([step, f"{sc['previous_token']:.2f}", f"{sc['first_token']:.2f}", f"{sc['self']:.2f}",
                             "-" if sc["induction"] is None else f"{sc['induction']:.2f}",
                             am.PATTERN_LABELS[name] if name else "-"])
            print(ui.table(rows, headers=["step", "prev", "first", "self", "induction", "pattern"], align=">>>>><"))
    if args.heatmap:
        if across:
            panels = [(f"step {s}", w) for s, w in across.items()]
            title = f"Layer {args.layer}, {head_name}: attention across training"
        else:
            panels = [(f"layer {layer}", am.select_head(probs[layer], args.head)) for layer in layers]
            title = f"Attention ({head_name}): {args.text[:50]}"
        path = plot_heatmaps(panels, labels, args.output or "attention.png", title)
        print(f"heatmap written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    run_main(main)
