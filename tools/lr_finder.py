"""
Learning-rate finder: read what a run's learning rate did, or measure a good one with a
Leslie Smith range test on a fresh small model of this project's architecture and the real data.

DIR is a checkpoint folder or model tag (d4, base/d4). With --range-test, DIR is optional: it only
supplies the model shape and the base LRs; otherwise --depth/--max-seq-len pick a tiny model.

The range test scales every parameter group's LR by one multiplier that grows exponentially
(--start .. --end over --num-steps), smooths the loss, stops once it exceeds 4x its best, and
reads two suggestions off the curve (steepest descent, valley). It repeats over --seeds to show
the spread, and says so when the curve is too noisy to trust. The multiplier is translated into
--matrix-lr / --embedding-lr / --unembedding-lr / --scalar-lr for the training scripts.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json
import time

from nanochat.common import run_main, UserError, resolve_device_type, add_device_arg, int_range, float_range
from nanochat.gpt import CONFIG_LIMITS
from nanochat import checkpoint_manager as cm
from tools.lib import termui as ui
from tools.lib import metrics as mx
from tools.lib import lr_finder as lf

EXAMPLES = [
    "python tools/lr_finder.py ~/.cache/nanochat/base_checkpoints/d4        # analyse a run",
    "python tools/lr_finder.py d4 --plot --output lr_analysis.png",
    "python tools/lr_finder.py d4 --recommend",
    "python tools/lr_finder.py --range-test                                  # tiny model, CPU, ~1 min",
    "python tools/lr_finder.py d4 --range-test --seeds 3 --plot --output range_test.png",
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("dir", metavar="DIR", nargs="?", default=None,
                   help="checkpoint folder or name (d4, sft/d4), or give --model-tag")
    p.add_argument("--plot", action="store_true", help="write a PNG (LR + loss of the run, or loss vs LR of the test)")
    p.add_argument("--output", type=str, default=None, help="PNG path (default lr_analysis.png / lr_range_test.png)")
    p.add_argument("--recommend", action="store_true", help="print only the recommendations")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    cm.add_checkpoint_args(p, "base", short=False)
    g = p.add_argument_group("range test")
    g.add_argument("--range-test", action="store_true", help="run a learning-rate range test on a fresh model")
    g.add_argument("--depth", type=int_range(1, CONFIG_LIMITS["n_layer"]), default=2, help="model depth when no DIR is given")
    g.add_argument("--max-seq-len", type=int_range(2, CONFIG_LIMITS["sequence_len"]), default=64, help="context length when no DIR is given")
    g.add_argument("--head-dim", type=int_range(2, 4096), default=64, help="head dimension when no DIR is given")
    g.add_argument("--device-batch-size", type=int_range(1, 65536), default=8, help="rows per step")
    g.add_argument("--num-steps", type=int_range(10, 10**6), default=100, help="steps of the exponential LR ramp")
    g.add_argument("--start", type=float_range(0, 1e6, low_open=True), default=0.01, help="first LR multiplier (x the base LRs)")
    g.add_argument("--end", type=float_range(0, 1e6, low_open=True), default=100.0, help="last LR multiplier")
    g.add_argument("--seeds", type=int_range(1, 100), default=3, help="repeat with this many seeds to show the spread")
    g.add_argument("--diverge-factor", type=float_range(1, 1e6, low_open=True), default=4.0, help="stop when the smoothed loss exceeds this x its best")
    add_device_arg(g)
    g.add_argument("--data-dir", type=str, default=None, help="pretraining data folder (default: as base_train)")
    for flag, default in lf.LR_FLAGS.items():
        g.add_argument("--" + flag.replace("_", "-"), type=float_range(0, 10), default=None,
                       help=f"base LR the multiplier scales (default: the run's, else {default})")
    args = p.parse_args(argv)
    if args.dir is not None or args.model_tag is not None or args.step is not None or args.source != "base":
        args.dir = cm.run_dir_from_args(args, args.dir)  # one folder from here on
    if not args.range_test and args.dir is None:
        raise UserError("give a run folder to analyse (DIR) or --range-test (see --help)")
    if not args.start < args.end:
        raise UserError(f"--start {args.start} and --end {args.end}: need 0 < start < end")
    return args


# -----------------------------------------------------------------------------
# analysis

def plot_analysis(history, analysis, output):
    from tools.lib import plotting
    fig, axes = plotting.new_figure(1, 2, width=11, height=4.5, title=f"Learning rate of {history.name}")
    steps, lrs = history.series("lr")
    ax = axes[0][0]
    if lrs:
        ax.plot(steps, lrs, color=plotting.color(0))
        plotting.style_axes(ax, title=f"LR multiplier: {analysis['schedule']}", xlabel="step", ylabel="x base LR")
    else:
        plotting.empty_panel(ax, "no LR logged in this run")
    ax = axes[0][1]
    xs, ys = history.series("train_loss")
    if ys:
        ax.plot(xs, ys, color=plotting.color(0), alpha=0.3, label="train loss")
        sx, sy = history.smoothed_loss()
        ax.plot(sx, sy, color=plotting.color(0), label="smoothed")
        best = analysis.get("best")
        if best:
            ax.axvline(best["step"], color=plotting.color(1), linestyle="--", label=f"best ({best['metric']})")
        plotting.style_axes(ax, title="Loss", xlabel="step", ylabel="loss", legend=True)
    else:
        plotting.empty_panel(ax, "no per-step train loss logged")
    return plotting.save_figure(fig, output)


def analyse(args):
    history = mx.load_run(args.dir)
    a = lf.analyze_run(history)
    if args.json:
        print(json.dumps(a, indent=2, default=str))
    elif args.recommend:
        print_recommendations(a, args)
    else:
        print(ui.heading(f"Learning rate of {history.name}"))
        rows = [("records", f"{a['steps']:,} ({history.origin})"),
                ("schedule", ui.style(a["schedule"] or "unknown (no LR logged)", "bold"))]
        if a.get("lr_multiplier_range"):
            lo, hi = a["lr_multiplier_range"]
            rows.append(("LR multiplier", f"{lo:.4g} .. {hi:.4g}"))
        if a.get("warmup_steps"):
            rows.append(("warmup", f"{a['warmup_steps']} steps"))
        if a.get("decay_from_step") is not None:
            rows.append(("decay from", f"step {a['decay_from_step']}"))
        if a.get("best"):
            b = a["best"]
            rows.append(("best", f"step {b['step']} ({b['metric']} {b['value']:.4f})"))
        print(ui.key_values(rows))
        if a["group_lr_range"]:
            print()
            rows = []
            for name, (lo, hi) in a["group_lr_range"].items():
                key = lf.GROUP_FLAGS.get(name)  # smear/backout run at a fixed LR, set by no flag
                flag = "--" + key.replace("_", "-") if key else "-"
                rows.append([name, flag, lo, hi, a["flags"][flag] if key else ""])
            print(ui.table(rows, headers=["group", "flag", "min lr", "max lr", "flag value"]))
            print(ui.muted("  the AdamW groups (lm_head, embedding) run at flag x (768 / model dim)^0.5, see "
                           "GPT.setup_optimizers"))
        print()
        print(ui.heading("Recommendations"))
        print_recommendations(a, args)
    if args.plot:
        path = plot_analysis(history, a, args.output or "lr_analysis.png")
        print(f"plot written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def print_recommendations(a, args):
    """The recommendations, then the run's LR flags as a line to paste, what to change, and how to measure."""
    for r in a["recommendations"]:
        print(f"- {r}")
    line = lambda flags: " ".join(f"{flag} {value:.4g}" for flag, value in flags.items())
    print(f"learning-rate flags of this run ({a['flags_from']}): {line(a['flags'])}")
    if a["suggested_flags"]:
        print(f"for the next run try: {line(a['suggested_flags'])}")
    print(f"to measure a good LR for this model instead of guessing: python tools/lr_finder.py {args.dir} --range-test")


# -----------------------------------------------------------------------------
# range test

def model_setup(args):
    """(GPTConfig, base LRs, description) from DIR's meta or the tiny-model flags."""
    from nanochat.gpt import GPTConfig, config_from_depth
    from nanochat.tokenizer import get_tokenizer
    tokenizer = get_tokenizer()
    base = dict(lf.LR_FLAGS)
    if args.dir is not None:
        history = mx.load_run(args.dir)
        meta = history.latest_meta
        if not meta:
            raise UserError(f"{history.path} has no checkpoint meta to take the model shape from")
        config = GPTConfig.from_dict(meta["model_config"])
        user = meta.get("user_config") or {}
        base.update({k: user[k] for k in lf.LR_FLAGS if mx.finite(user.get(k))})
        what = f"the shape of {history.name}"
    else:
        if args.depth < 1 or args.max_seq_len < 2:
            raise UserError("--depth and --max-seq-len must be positive")
        config = config_from_depth(args.depth, tokenizer.get_vocab_size(), args.max_seq_len, head_dim=args.head_dim,
                                   window_pattern="L")
        what = f"a fresh depth-{args.depth} model"
    if config.vocab_size != tokenizer.get_vocab_size():
        raise UserError(f"the model has vocab {config.vocab_size} but the tokenizer {tokenizer.get_vocab_size()}")
    for k in lf.LR_FLAGS:
        if getattr(args, k) is not None:
            base[k] = getattr(args, k)
    return config, tokenizer, base, what


def plot_range_test(curves, chosen, output):
    from tools.lib import plotting
    fig, axes = plotting.new_figure(1, 1, width=9, height=5, title="Learning-rate range test")
    ax = axes[0][0]
    for i, c in enumerate(curves):
        ax.plot(c.multipliers, c.losses, color=plotting.color(i), alpha=0.2)
        ax.plot(c.multipliers, c.smoothed, color=plotting.color(i), label=f"seed {c.seed} (smoothed)")
    for name, value, style in (("steepest", chosen["steepest"], ":"), ("valley (suggested)", chosen["valley"], "--")):
        if value:
            ax.axvline(value, color="black", linestyle=style, label=f"{name}: x{value:.3g}")
    lo = min(min(c.smoothed) for c in curves if c.smoothed)
    hi = max(c.smoothed[0] for c in curves if c.smoothed)
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.6 * (hi - lo))
    plotting.style_axes(ax, xlabel="LR multiplier (x the base LRs)", ylabel="training loss", legend=True, logx=True)
    return plotting.save_figure(fig, output)


def range_test(args):
    device = resolve_device_type(args.device_type)
    config, tokenizer, base, what = model_setup(args)
    batch = args.device_batch_size
    if not args.json:
        print(ui.heading("Learning-rate range test"))
        print(ui.key_values([
            ("model", f"{what}: {config.n_layer} layers, dim {config.n_embd}, context {config.sequence_len}"),
            ("ramp", f"x{args.start:g} .. x{args.end:g} over {args.num_steps} steps, {batch} rows per step, "
                     f"stop at {args.diverge_factor:g}x the best smoothed loss"),
            ("base LRs", ", ".join(f"{k} {v:g}" for k, v in base.items())),
        ]))
    curves = []
    t0 = time.time()
    for seed in range(args.seeds):
        with ui.progress(total=args.num_steps, desc=f"seed {seed}") as bar:
            curves.append(lf.range_test_model(config, tokenizer, base, batch, seed=seed, device=device,
                                              data_dir=args.data_dir, start=args.start, end=args.end,
                                              num_steps=args.num_steps, diverge_factor=args.diverge_factor,
                                              on_step=lambda i: bar.update(1)))
    elapsed = time.time() - t0
    steep, valley = lf.spread_summary(curves, "steepest"), lf.spread_summary(curves, "valley")
    trusted, reasons = lf.noise_verdict(curves)
    chosen = {"steepest": steep["geomean"], "valley": valley["geomean"]}
    suggestion = chosen["valley"] or chosen["steepest"]
    flags = lf.flags_for(suggestion, base) if suggestion else {}
    if args.json:
        print(json.dumps({"curves": [c.__dict__ for c in curves], "steepest": steep, "valley": valley,
                          "suggested_multiplier": suggestion, "flags": flags, "trustworthy": trusted,
                          "reasons": reasons, "seconds": elapsed, "base_lrs": base}, indent=2))
    else:
        rows = [[c.seed, len(c.losses), c.stop_reason, c.best_multiplier, c.steepest, c.valley] for c in curves]
        print()
        print(ui.table(rows, headers=["seed", "steps", "stopped", "min-loss x", "steepest x", "valley x"]))
        print()
        for name, s in (("steepest", steep), ("valley", valley)):
            if s["geomean"]:
                print(f"  {name:9s} x{s['geomean']:.3g}  (seeds: {s['low']:.3g} .. {s['high']:.3g}, spread {s['ratio']:.1f}x)")
        if suggestion:
            print()
            print(ui.heading(f"Suggested: multiplier x{suggestion:.3g} (valley)"))
            print(ui.table([[flag, base[flag[2:].replace('-', '_')], value] for flag, value in flags.items()],
                           headers=["flag", "base", "suggested"]))
            print("  " + " ".join(f"{flag} {value:.4g}" for flag, value in flags.items()))
        if trusted:
            print(ui.good("  the curves are clean and the seeds agree: this suggestion can be trusted"))
        else:
            print(ui.warn("  too noisy to trust:"))
            for r in reasons:
                print(ui.warn(f"  - {r}"))
        print(ui.muted(f"  {args.seeds} seed(s) in {elapsed:.1f}s"))
    if args.plot:
        path = plot_range_test(curves, chosen, args.output or "lr_range_test.png")
        print(f"plot written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def main(argv=None):
    args = parse_args(argv)
    return range_test(args) if args.range_test else analyse(args)


if __name__ == "__main__":
    run_main(main)
