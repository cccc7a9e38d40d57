"""
Checkpoint browser & comparator: list every checkpoint under the base dir, inspect one, compare
two (configs and metrics, per-layer weight change, greedy samples side by side), delete safely.

Names: TAG (d4), STAGE/TAG (sft/d4), and TAG:STEP (d4:200) for one step; without a step the last
complete checkpoint is used.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json

from nanochat.common import (run_main, UserError, get_base_dir, use_base_dir, add_device_arg, resolve_device_type,
                             int_range)
from nanochat import checkpoint_manager as cm
from tools.lib import termui as ui
from tools.lib import checkpoint_inspect as ci

EXAMPLES = [
    "python tools/checkpoint_browser.py --list",
    "python tools/checkpoint_browser.py --list --sort val_bpb",
    "python tools/checkpoint_browser.py --inspect d20 --step 5000",
    "python tools/checkpoint_browser.py --compare d20 d26",
    "python tools/checkpoint_browser.py --compare d4:100 d4:200 --weights",
    'python tools/checkpoint_browser.py --compare base/d4 sft/d4 --prompt "The capital of France is"',
    "python tools/checkpoint_browser.py --delete d4:100            # asks for confirmation",
    "python tools/checkpoint_browser.py --delete old_run --yes",
    "python tools/checkpoint_browser.py --base-dir /data/nanochat --list",
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--list", action="store_true", help="every checkpoint under the base dir (the default)")
    g.add_argument("--inspect", metavar="NAME", nargs="?", const="",
                   help="meta, parameters, files and integrity of one checkpoint (NAME, or the address flags)")
    g.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two checkpoints side by side")
    g.add_argument("--delete", metavar="NAME", help="delete a tag folder, or one step with TAG:STEP")
    p.add_argument("--sort", choices=ci.SORT_KEYS, default="step", help="order of --list")
    p.add_argument("--weights", action="store_true", help="with --compare: per-layer relative weight change")
    p.add_argument("--prompt", type=str, help="with --compare: greedy-decode this prompt from both")
    p.add_argument("--max-tokens", type=int_range(1, 2**20), default=32, help="tokens to generate for --prompt")
    add_device_arg(p)
    p.add_argument("--yes", action="store_true", help="delete without asking")
    cm.add_checkpoint_args(p, "base", short=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if (args.weights or args.prompt) and not args.compare:
        raise UserError("--weights and --prompt go with --compare A B")
    if args.base_dir:
        use_base_dir(args.base_dir)  # tokenizer and model loading look there too
    return args


def do_list(args):
    base = get_base_dir()
    infos = ci.sort_infos(ci.scan(base), args.sort)
    if args.json:
        print(json.dumps([ci.info_record(i) for i in infos], indent=2))
        return
    print(ui.heading(f"Checkpoints under {base}"))
    if not infos:
        print("  none yet: train one with python -m scripts.base_train")
        return
    best = min((i.val_bpb for i in infos if i.val_bpb is not None), default=None)
    rows = []
    for i in infos:
        val = ui.fmt_num(i.val_bpb) if i.meta_error is None else ui.bad("corrupt meta")
        if best is not None and i.val_bpb == best:
            val = ui.good(val)
        rows.append([i.tag, i.source, i.step, val, i.config.get("n_layer"), i.config.get("n_embd"),
                     ui.fmt_si(i.num_params) if i.num_params else "-", f"{i.size_mb:.1f}",
                     "yes" if i.has_optimizer else ui.muted("no"), ci.format_time(i.modified)])
    print(ui.table(rows, headers=["tag", "stage", "step", "val bpb", "layers", "dim", "params", "size MB", "optim", "modified"],
                   align="<<>>>>>><<"))
    total = sum(i.size_bytes for i in infos)
    print(f"\n  {len(infos)} checkpoints, {ui.fmt_bytes(total)} on disk")
    for i in infos:
        if i.meta_error:
            print("  " + ui.warn("warning: ") + i.meta_error)


def do_inspect(args):
    if args.inspect:
        source, cdir, tag, step = cm.resolve_address(args.inspect, args.source, step=args.step)
    else:
        source, cdir, tag, step = cm.checkpoint_from_args(args)
    r = ci.inspect(cdir, step)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
        return
    meta = r["meta"]
    print(ui.heading(f"{source}/{tag} step {step}"))
    print(ui.key_values([("folder", cdir), ("val bpb", ui.fmt_num(meta.get("val_bpb"))),
                         ("train loss", ui.fmt_num(meta.get("train_loss")) if "train_loss" in meta else ui.muted("not in meta (upstream format)")),
                         ("tokens seen", ui.fmt_si(meta["tokens_seen"]) if "tokens_seen" in meta else "-"),
                         ("stage", meta.get("stage", "-"))]))
    recorded = meta.get("model_config") or {}
    config = r.get("config") or recorded
    read_off = [k for k in config if k not in recorded]
    print("\n  model config:" + (ui.muted(f" ({', '.join(read_off)}: not in the meta, known from the weights)")
                                  if read_off else ""))
    print(ui.key_values(list(config.items()), indent=4))
    if r.get("param_groups"):
        n = r["num_params"]
        print(f"\n  parameters: {n:,} ({ui.fmt_si(n)})")
        print(ui.table([[k.replace("_", " "), v, f"{100 * v / n:.1f}%"] for k, v in r["param_groups"].items()],
                       align="<>>", indent=4))
    print("\n  files:")
    print(ui.table([[name, ui.fmt_bytes(size)] for name, size in r["files"].items()], align="<>", indent=4))
    print("\n  integrity:")
    for c in r["checks"]:
        mark = ui.good("ok  ") if c["ok"] else (ui.muted("--  ") if c["ok"] is None else ui.bad("FAIL"))
        print(f"    {mark} {ui.pad(c['check'], 20)} {c['detail']}")
    user = meta.get("user_config") or {}
    if user:
        print("\n  training arguments (user_config):")
        print(ui.key_values(list(user.items()), indent=4))


def fmt_value(v):
    if isinstance(v, float):
        return ui.fmt_num(v)
    return "-" if v is None else str(v)


def do_compare(args):
    a = cm.resolve_address(args.compare[0], args.source)  # (source, folder, tag, step)
    b = cm.resolve_address(args.compare[1], args.source)
    out = ci.compare_checkpoints(a, b, args.weights, args.prompt, args.max_tokens,
                                 resolve_device_type(args.device_type))
    rows = [(r["key"], r["a"], r["b"], r["differs"]) for r in out["rows"]]
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    print(ui.heading(f"{out['a']}  vs  {out['b']}"))
    table = []
    for k, va, vb, d in rows:
        if k.startswith("arg.") and not d:
            continue  # identical CLI arguments are noise; differences are the point
        sa, sb = fmt_value(va), fmt_value(vb)
        table.append([ui.style(k, "bold") if d else k, ui.warn(sa) if d else sa, ui.warn(sb) if d else sb, "*" if d else ""])
    print(ui.table(table, headers=["", "A", "B", "differs"], align="<>><"))
    same_args = sum(1 for k, _, _, d in rows if k.startswith("arg.") and not d)
    print(ui.muted(f"  ({same_args} identical training arguments not shown)"))
    if args.weights:
        print()
        print(ui.heading("Relative weight change ||B - A|| / ||A||"))
        top = max((w["relative_change"] for w in out["weights"]), default=0) or 1
        if out["weights"]:
            print(ui.table([[w["group"], f"{w['relative_change']:.4f}", ui.bar(w["relative_change"] / top, 30),
                             w["numel"]] for w in out["weights"]], headers=["part", "change", "", "params"], align="<><>"))
        else:
            print("  no tensor has the same name and shape in both: nothing to compare")
        if out["shape_differences"]:
            shown = lambda s: "-" if s is None else "x".join(map(str, s))
            print(ui.warn(f"\n  {len(out['shape_differences'])} tensors differ in shape or are in one checkpoint only "
                          f"(left out above):"))
            print(ui.table([[d["tensor"], shown(d["a"]), shown(d["b"])] for d in out["shape_differences"]],
                           headers=["tensor", "A", "B"], align="<>>", indent=4))
    if args.prompt is not None:
        print()
        print(ui.heading(f"Greedy continuation of {args.prompt!r}"))
        print(f"  A: {args.prompt}{ui.style(out['samples']['a'], 'cyan')}")
        print(f"  B: {args.prompt}{ui.style(out['samples']['b'], 'magenta')}")


def do_delete(args):
    paths, size = ci.deletion_plan(args.delete, default_source=args.source)
    print(f"will delete {len(paths)} path(s), {ui.fmt_bytes(size)}:")
    for p in paths:
        print(f"  {p}")
    if not args.yes:
        if not sys.stdin or not sys.stdin.isatty():
            raise UserError("refusing to delete without confirmation: stdin is not a terminal; add --yes to delete")
        answer = input("type 'yes' to delete: ").strip().lower()
        if answer != "yes":
            print("nothing deleted")
            return 1
    ci.delete_paths(paths)
    print(ui.good(f"deleted {len(paths)} path(s), freed {ui.fmt_bytes(size)}"))


def main(argv=None):
    args = parse_args(argv)
    if args.inspect is not None:
        return do_inspect(args)
    if args.compare:
        return do_compare(args)
    if args.delete:
        return do_delete(args)
    return do_list(args)


if __name__ == "__main__":
    run_main(main)
