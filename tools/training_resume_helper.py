"""
Training resume helper: after a run was interrupted, find the last complete checkpoint, check that
it is intact, see how far the run got, and get the exact command that continues it.

DIR is a checkpoint folder (e.g. ~/.cache/nanochat/base_checkpoints/d4) or a model tag (d4, base/d4).
The resumed run is exact: it continues with the same data position, random state and optimizer
moments, so its losses match an uninterrupted run step for step (on CPU, with the same thread
count). `--verify --replay N` proves it on your run by re-running N logged steps (base, mid and
SFT runs).

A checkpoint folder written by upstream nanochat (karpathy/nanochat, checked at commit 92d63d4)
resumes too: its flag names are translated into this project's (the ones it has no use for are
named), --upstream-arch is added when the weights have upstream's architecture, and the run
continues training on your data, but not bit-exactly (upstream saves no RNG state or data position,
and its optimizer's parameter groups are not ours, so a fresh optimizer starts).

Exit codes: 0 fine, 1 a --verify check failed (or the replay differs), 2 bad input.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json

from nanochat.common import run_main, UserError, format_duration, add_device_arg, resolve_device_type, int_range
from tools.lib import termui as ui
from tools.lib import resume as rs
from nanochat import checkpoint_manager as cm

EXAMPLES = [
    "python tools/training_resume_helper.py ~/.cache/nanochat/base_checkpoints/d4",
    "python tools/training_resume_helper.py d4 --target-steps 5400",
    "python tools/training_resume_helper.py d4 --verify",
    "python tools/training_resume_helper.py d4 --verify --replay 3",
    "python tools/training_resume_helper.py d4 --command            # only the command, for $(...)",
    "eval \"$(python tools/training_resume_helper.py d4 --command)\"  # resume right away",
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("dir", metavar="DIR", nargs="?", default=None,
                   help="checkpoint folder or name (d4, base/d4; default: the address flags)")
    p.add_argument("--target-steps", type=int_range(1, 10**9), default=None, help="the total number of steps to reach (default: the run's own)")
    p.add_argument("--verify", action="store_true", help="check files, loadability, shapes vs config, optimizer, meta")
    p.add_argument("--replay", type=int_range(0, 10**6), default=0, metavar="N",
                   help="with --verify: re-run N logged steps from an earlier checkpoint and compare the losses")
    p.add_argument("--command", action="store_true", help="print only the resume command (one line)")
    cm.add_checkpoint_args(p, "base", short=False)  # --step: resume from this step instead of the last complete one
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = p.parse_args(argv)
    if args.replay and not args.verify:
        raise UserError("--replay N works together with --verify (python tools/training_resume_helper.py DIR --verify --replay 3)")
    return args


def print_point(point, prog):
    print(ui.heading(f"Resume point: {point.ckpt_dir}"))
    optimizer = ui.good("present") if point.has_optimizer else ui.bad("missing (cannot resume exactly)")
    if point.has_optimizer and rs.is_upstream_meta(point.meta):
        optimizer = ui.warn("present, upstream nanochat's (no RNG state or data position: resumes, not bit-exactly)")
    rows = [("last complete checkpoint", f"step {point.step:,}"), ("optimizer state", optimizer)]
    if point.last_logged_step is not None:
        lost = point.last_logged_step - point.step
        rows.append(("last logged step", f"{point.last_logged_step:,}" + (f"  ({lost} steps after the checkpoint will be redone)" if lost > 0 else "")))
    if prog.get("target"):
        rows.append(("progress", f"{ui.bar(prog['fraction'], 24)} {100 * prog['fraction']:.1f}% "
                     f"({prog['step']:,} / {prog['target']:,}, {prog['remaining']:,} to go)"))
        wd = prog["warmdown_start"]
        state = ui.warn("in warmdown") if prog["in_warmdown"] else "before warmdown"
        rows.append(("schedule", f"{state}: LR below its peak from step {wd:,}; next step LR x{prog['lr_multiplier']:.3f}"))
        if prog.get("eta_seconds") is not None:
            rows.append(("time left", f"about {format_duration(prog['eta_seconds'])} "
                         f"({prog['seconds_per_step']:.2f}s per step so far)"))
    if prog.get("tokens_seen") is not None:
        rows.append(("tokens seen", f"{prog['tokens_seen']:,}"))
    print(ui.key_values(rows))
    for s, why in point.incomplete:
        print(ui.warn(f"  step {s} is incomplete ({why}): it was being saved when the run stopped; ignored"))
    if point.debris:
        print(ui.warn(f"  leftover temporary files from an interrupted save: {', '.join(point.debris)} (safe to delete)"))


def print_checks(checks):
    print()
    print(ui.heading("Integrity"))
    rows = []
    for c in checks:
        mark = ui.good("ok") if c.ok else (ui.bad("FAIL") if c.severity == "error" else ui.warn("warn"))
        rows.append([mark, c.name, c.detail])
    print(ui.table(rows, headers=["", "check", "detail"], align="<<<"))


def print_replay(result):
    print()
    print(ui.heading(f"Replay from step {result.from_step}"))
    rows = []
    for step, logged, replayed in result.rows:
        same = logged == replayed
        diff = "identical" if same else ("not logged" if logged is None else f"{abs(logged - replayed):.3e}")
        rows.append([step, ui.fmt_num(logged, 6), ui.fmt_num(replayed, 6), ui.good(diff) if same else ui.bad(diff)])
    print(ui.table(rows, headers=["step", "logged loss", "replayed loss", "difference"], align=">>><"))
    if result.weights_step is not None:
        print(f"  weights after the replay vs checkpoint {result.weights_step}: "
              + (ui.good("bit-identical") if result.weights_equal else ui.bad("different")))
    if result.exact:
        print(ui.good("  the replay reproduces the run exactly: resuming continues it step for step"))
    else:
        print(ui.bad(f"  the replay differs (max {result.max_abs_diff:.3e}); ") +
              f"a different thread count ({result.threads} now; set OMP_NUM_THREADS like the original run) "
              "or device changes the float rounding")


def main(argv=None):
    args = parse_args(argv)
    ckpt_dir = cm.run_dir_from_args(args, args.dir)
    point = rs.find_resume_point(ckpt_dir, args.step)
    prog = rs.run_progress(point.meta, args.target_steps)
    if args.command:
        command, notes = rs.resume_command(point, args.target_steps)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(command)
        return 0
    checks = rs.verify_checkpoint(ckpt_dir, point.step) if args.verify else None
    replay = None
    if args.replay:
        with ui.progress(total=args.replay, desc="replaying") as bar:
            replay = rs.replay_steps(ckpt_dir, args.replay, device=resolve_device_type(args.device_type), on_step=lambda s: bar.update(1))
    try:
        command, notes = rs.resume_command(point, args.target_steps)
    except UserError as e:
        command, notes = None, [str(e)]
    failed = (checks is not None and not rs.checks_passed(checks)) or (replay is not None and not replay.exact)
    if args.json:
        out = {"dir": ckpt_dir, "step": point.step, "has_optimizer": point.has_optimizer,
               "incomplete": point.incomplete, "debris": point.debris, "last_logged_step": point.last_logged_step,
               "progress": prog, "command": command, "notes": notes}
        if checks is not None:
            out["checks"] = [c.__dict__ for c in checks]
            out["ok"] = rs.checks_passed(checks)
        if replay is not None:
            out["replay"] = {"from_step": replay.from_step, "rows": replay.rows, "exact": replay.exact,
                             "max_abs_diff": replay.max_abs_diff, "weights_step": replay.weights_step,
                             "weights_equal": replay.weights_equal}
        print(json.dumps(out, indent=2))
        return 1 if failed else 0
    print_point(point, prog)
    if checks is not None:
        print_checks(checks)
        if not rs.checks_passed(checks):
            earlier = [s for s in cm.list_complete_steps(ckpt_dir) if s < point.step]
            hint = f"; try an earlier checkpoint with --step {earlier[-1]}" if earlier else ""
            print(ui.bad(f"  this checkpoint is not safe to resume from{hint}"))
    if replay is not None:
        print_replay(replay)
    print()
    print(ui.heading("Resume command"))
    if command:
        print(command)
    for note in notes:
        print(ui.warn(f"note: {note}"))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
