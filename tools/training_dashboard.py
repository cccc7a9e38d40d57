"""
Training progress dashboard: what a run has done so far, in numbers, a table, a plot and a
diagnosis in plain words.

DIR is a checkpoint folder (e.g. ~/.cache/nanochat/base_checkpoints/d4) or a model tag (d4,
sft/d4). It reads metrics.jsonl when present, else the meta_*.json files (upstream nanochat
folders), and says what it could not show.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import csv
import json
import time
import argparse

from nanochat.common import run_main, float_range, nonneg_int
from nanochat import checkpoint_manager as cm
from tools.lib import termui as ui
from tools.lib import metrics as mx

EXAMPLES = [
    "python tools/training_dashboard.py ~/.cache/nanochat/base_checkpoints/d4          # summary + diagnosis",
    "python tools/training_dashboard.py d4 --progress                                   # every logged step",
    "python tools/training_dashboard.py d4 --plot --output d4.png --x tokens",
    "python tools/training_dashboard.py d4 --export-csv --output d4.csv",
    "python tools/training_dashboard.py d4 --watch --interval 5                        # live while training",
    "python tools/training_dashboard.py base/d4 --compare base/d8 --plot               # overlay runs",
]

LEVEL_STYLE = {"ok": ("ok", "green"), "info": ("info", "cyan"), "warn": ("warn", "yellow"),
               "bad": ("BAD", "red"), "unknown": ("n/a", "gray")}


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("dir", metavar="DIR", nargs="?", default=None,
                   help="checkpoint folder or name (d4, sft/d4; default: the address flags)")
    p.add_argument("--progress", action="store_true", help="table of every logged step / checkpoint")
    p.add_argument("--plot", action="store_true", help="write a PNG: loss, val bpb, LR, tokens/s")
    p.add_argument("--export-csv", action="store_true", help="write the history as CSV")
    p.add_argument("--output", type=str, default=None, help="path of the PNG / CSV (default: <run>.png / <run>.csv)")
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR2", help="more runs to overlay and compare")
    p.add_argument("--x", choices=list(mx.X_AXES), default="step", help="x-axis of the plot and table")
    p.add_argument("--watch", action="store_true", help="refresh the summary until Ctrl-C (while a run trains)")
    p.add_argument("--interval", type=float_range(0, 86400, low_open=True), default=5.0, help="seconds between --watch refreshes")
    p.add_argument("--max-refreshes", type=nonneg_int, default=0, help=argparse.SUPPRESS)  # for tests
    cm.add_checkpoint_args(p, "base", short=False)
    p.add_argument("--json", action="store_true", help="print the summary and diagnosis as JSON")
    return p.parse_args(argv)


def print_summary(history):
    s = mx.summarize(history)
    cfg = s["model_config"] or {}
    print(ui.heading(f"Run {history.name}"))
    pct = f" ({100 * s['progress']:.0f}% of {s['num_iterations']:,})" if s["progress"] is not None else ""
    best = (f"{s['best_val_bpb']:.4f} at step {s['best_val_step']}" if s["best_val_bpb"] is not None else "-")
    lr = s["latest_lr_multiplier"]
    lrs = s["latest_lrs"] or {}
    rows = [
        ("folder", history.path),
        ("read from", s["origin"]),
        ("steps logged", f"{s['num_records']:,} (step {s['first_step']} .. {s['last_step']}){pct}"),
        ("checkpoints", f"{s['num_checkpoints']}: " + ", ".join(map(str, s["checkpoint_steps"])) if s["checkpoint_steps"] else "none"),
        ("stage", s["stage"]),
    ]
    if s["stage"] == "rl":  # RL logs rewards, not a train loss or val bpb
        rows += [("latest mean reward", ui.fmt_num(s["latest_reward_mean"])),
                 ("held-out mean reward", ui.fmt_num(s["latest_heldout_reward"]))]
    else:
        rows += [("latest train loss", ui.fmt_num(s["latest_train_loss"])),
                 ("smoothed train loss", ui.fmt_num(s["latest_smooth_train_loss"])),
                 ("latest val bpb", ui.fmt_num(s["latest_val_bpb"])),
                 ("best val checkpoint", ui.good(best) if s["best_val_bpb"] is not None else best)]
    rows += [
        ("LR multiplier", ui.fmt_num(lr) + (("  (" + ", ".join(f"{k} {v:.3g}" for k, v in lrs.items()) + ")") if lrs else "")),
        ("tokens seen", ui.fmt_si(s["tokens_seen"]) if s["tokens_seen"] is not None else "-"),
        ("training time", ui.fmt_num(s["training_time"]) + " s" if s["training_time"] is not None else "-"),
        ("model", (f"{cfg.get('n_layer')} layers, dim {cfg.get('n_embd')}, {cfg.get('n_head')} heads "
                   f"({cfg.get('n_kv_head')} kv), vocab {cfg.get('vocab_size')}, context {cfg.get('sequence_len')}, "
                   f"window {cfg.get('window_pattern', 'L')}") if cfg else "-"),
    ]
    print(ui.key_values(rows))
    for line in s["missing"]:
        print("  " + ui.warn("missing: ") + line)


def print_diagnosis(history):
    print()
    print(ui.heading("Diagnosis"))
    for f in mx.diagnose(history):
        tag, colour = LEVEL_STYLE[f.level]
        print(f"  {ui.style(ui.pad(tag, 4), colour, 'bold')}  {ui.pad(f.check, 14)} {f.text}")


def print_rl_progress(history):
    rows = [[r["step"], r.get("reward_mean"), r.get("loss"), r.get("heldout_reward", "-"), r.get("lr"),
             "ckpt" if r["step"] in history.metas else ""] for r in history.records]
    print()
    print(ui.heading(f"Progress ({history.origin})"))
    print(ui.table(rows, headers=["step", "mean reward", "loss", "held-out reward", "lr x", ""], align=">>>>><"))


def print_progress(history, x):
    if history.stage == "rl":
        return print_rl_progress(history)
    xs, sm = history.smoothed_loss()
    smooth_by_step = dict(zip(xs, sm))
    best = mx.best_val_checkpoint(history)
    rows = []
    for r in history.records:
        step = r["step"]
        mark = "ckpt" if step in history.metas else ""
        val = ui.fmt_num(r.get("val_bpb"))
        if best and step == best[0]:
            val, mark = ui.good(val), "ckpt best"
        row = [step]
        if x == "tokens":
            row.append(r.get("tokens"))
        if x == "time":
            row.append(r.get("time"))
        row += [r.get("train_loss"), smooth_by_step.get(step), val, r.get("lr"),
                ui.fmt_si(r["tokens_per_sec"]) if r.get("tokens_per_sec") is not None else "-", mark]
        rows.append(row)
    headers = ["step"] + ([x] if x != "step" else []) + ["train loss", "smoothed", "val bpb", "lr x", "tok/s", ""]
    print()
    print(ui.heading(f"Progress ({history.origin})"))
    print(ui.table(rows, headers=headers, align=">" * (len(headers) - 1) + "<"))


def compare_table(histories):
    rows = []
    for h in histories:
        s = mx.summarize(h)
        cfg = s["model_config"] or {}
        rows.append([h.name, s["last_step"], s["tokens_seen"], s["latest_smooth_train_loss"], s["best_val_bpb"],
                     s["best_val_step"], cfg.get("n_layer"), cfg.get("n_embd"), s["origin"]])
    best = min((r[4] for r in rows if r[4] is not None), default=None)
    for r in rows:
        if r[4] is not None and r[4] == best:
            r[4] = ui.good(ui.fmt_num(r[4]))
    print()
    print(ui.heading("Comparison"))
    print(ui.table(rows, headers=["run", "last step", "tokens", "smoothed loss", "best val bpb", "at step",
                                  "layers", "dim", "from"], align="<>>>>>>><"))


def export_csv(history, path):
    keys = ["step", "tokens", "time", "train_loss", "val_bpb", "lr", "dt", "tokens_per_sec", "mfu"]
    xs, sm = history.smoothed_loss()
    smooth_by_step = dict(zip(xs, sm))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(keys + ["smoothed_train_loss"])
        for r in history.records:
            w.writerow([r.get(k, "") if r.get(k) is not None else "" for k in keys] + [smooth_by_step.get(r["step"], "")])
    return path


def show(args):
    run_dirs = [cm.run_dir_from_args(args, args.dir)] + [cm.find_run_dir(d, args.source) for d in args.compare]
    histories = [mx.load_run(d) for d in run_dirs]
    if args.json:
        out = [dict(mx.summarize(h), diagnosis=[f.__dict__ for f in mx.diagnose(h)]) for h in histories]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2, default=str))
        return histories
    for i, h in enumerate(histories):
        if i:
            print()
        print_summary(h)
        print_diagnosis(h)
        if args.progress:
            print_progress(h, args.x)
    if len(histories) > 1:
        compare_table(histories)
    return histories


def main(argv=None):
    args = parse_args(argv)
    if args.watch:
        refreshes = 0
        while True:
            if ui.use_color():
                print("\x1b[2J\x1b[H", end="")  # clear the screen, cursor home
            show(args)
            refreshes += 1
            print(ui.muted(f"\nrefreshed {time.strftime('%H:%M:%S')}; every {args.interval:g}s, Ctrl-C to stop"), flush=True)
            if args.max_refreshes and refreshes >= args.max_refreshes:
                return 0
            time.sleep(args.interval)
    histories = show(args)
    if args.plot:
        path = mx.plot_runs(histories, args.output or f"{histories[0].name}.png", x=args.x)
        print(f"\nplot written to {path}")
    if args.export_csv:
        out = args.output if args.output and not args.plot else f"{histories[0].name}.csv"
        print(f"CSV written to {export_csv(histories[0], out)} ({len(histories[0].records)} rows)")
    return 0


if __name__ == "__main__":
    run_main(main)
