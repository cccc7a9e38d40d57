"""
Dataset inspector: look at training data before you train on it.

Conversation JSONL (the CustomJSON format: one conversation per line, a list of {role, content}
messages, optional system message first): samples, validation of every line with line numbers,
role statistics, length distributions and the share cut off at --max-seq-len, exact duplicates,
an export for review and a cleaned copy with --fix.

Pretraining shards (.parquet, .txt, or .jsonl of {"text": ...}; a file or a folder): document
count, document length in characters and tokens, exact duplicate documents.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json

from nanochat.common import run_main, UserError, int_range, random_seed
from tools.lib import termui as ui
from tools.lib import dataset_inspect as di

EXAMPLES = [
    "python tools/dataset_inspector.py data.jsonl --samples 10",
    "python tools/dataset_inspector.py data.jsonl --validate",
    "python tools/dataset_inspector.py data.jsonl --analyze-lengths --max-seq-len 1024",
    "python tools/dataset_inspector.py data.jsonl --export review.txt --export-count 100",
    "python tools/dataset_inspector.py data.jsonl --fix clean.jsonl",
    "python tools/dataset_inspector.py ~/.cache/nanochat/base_data/shard_00000.parquet",
    "python tools/dataset_inspector.py data/embedded               # a folder of shards",
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("path", metavar="FILE", help="a .jsonl of conversations, or pretraining .parquet/.txt/.jsonl (file or folder)")
    p.add_argument("--samples", type=int_range(0, 10**6), default=3, help="random conversations to show")
    p.add_argument("--seed", type=random_seed, default=0, help="seed for --samples and --export")
    p.add_argument("--validate", action="store_true", help="check every line; exit code 1 when any is invalid")
    p.add_argument("--analyze-lengths", action="store_true", help="length histograms and percentiles")
    p.add_argument("--max-seq-len", type=int_range(1, 2**20), default=2048, help="context length for the truncation share")
    p.add_argument("--export", metavar="OUT", help="write --export-count random conversations to a text file")
    p.add_argument("--export-count", type=int_range(1, 10**9), default=100, help="how many conversations --export writes")
    p.add_argument("--fix", metavar="OUT", help="write a cleaned copy: invalid lines and duplicates dropped")
    p.add_argument("--max-problems", type=int_range(0, 10**9), default=50, help="most problems to print")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p.parse_args(argv)


def maybe_tokenizer():
    """The trained tokenizer, or None (token lengths are then skipped, with a note)."""
    from nanochat.tokenizer import get_tokenizer
    try:
        return get_tokenizer()
    except UserError:
        return None


def print_problems(report, limit):
    counts = report.counts_by_code()
    if not report.problems:
        print("  " + ui.good(f"all {report.valid_count} conversations are valid"))
        return
    print("  " + ui.bad(f"{len(report.bad_lines)} invalid line(s)") + f", {report.valid_count} valid; problems by kind: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for p in report.problems[:limit]:
        print(f"  {ui.style(f'line {p.line}', 'bold')}: {ui.pad(p.code, 18)} {p.message}")
    if len(report.problems) > limit:
        print(ui.muted(f"  ... {len(report.problems) - limit} more (raise --max-problems)"))


def print_lengths(name, stats, lengths, unit):
    print(f"\n  {name} per {unit}: " + ", ".join(f"{k if isinstance(k, str) else f'p{k}'} {v:,.0f}"
                                              for k, v in stats.items()))
    print(ui.histogram(lengths, bins=10, width=30))


def show_conversations(args):
    tok = maybe_tokenizer()
    r = di.inspect_conversations(args.path, tok, args.max_seq_len)
    report = r["report"]
    out = {"kind": "conversations", "validation": report.to_dict(), "roles": r["roles"],
           "duplicates": r["duplicates"]}
    if r["lengths"]:
        out["lengths"] = {k: v for k, v in r["lengths"].items() if not k.endswith("_lengths")}
    fix = None
    if args.fix:
        fix = di.fix_jsonl(args.path, args.fix)
        out["fix"] = {"output": args.fix, "kept": fix.kept, "dropped": fix.dropped}
    exported = di.export_review(report.conversations, args.export, args.export_count, args.seed) if args.export and report.conversations else 0
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False, default=str))
        return 1 if (args.validate and report.problems) else 0

    print(ui.heading(f"Conversations in {args.path}"))
    print(ui.key_values([("lines", report.total_lines), ("blank", report.blank_lines),
                         ("valid conversations", report.valid_count), ("invalid lines", len(report.bad_lines))]))
    print()
    print(ui.heading("Validation"))
    print_problems(report, args.max_problems if args.validate else min(args.max_problems, 10))
    if r["duplicates"]:
        print("  " + ui.warn(f"{len(r['duplicates'])} group(s) of exact duplicates: ")
              + "; ".join("lines " + ", ".join(map(str, g)) for g in r["duplicates"][:10]))
    else:
        print("  no exact duplicates")
    if r["roles"]:
        print()
        print(ui.heading("Roles"))
        roles = r["roles"]
        total = sum(roles["messages_by_role"].values())
        print(ui.table([[role, n, f"{100 * n / total:.1f}%"] for role, n in sorted(roles["messages_by_role"].items())],
                       headers=["role", "messages", "share"], align="<>>", indent=2))
        mpc = roles["messages_per_conversation"]
        print(f"  messages per conversation: median {mpc[50]}, max {mpc['max']}; "
              f"{roles['with_system_message']} conversation(s) start with a system message")
    lengths = r["lengths"]
    if lengths and (args.analyze_lengths or not args.validate):
        print()
        print(ui.heading("Lengths"))
        if args.analyze_lengths:
            print_lengths("characters", lengths["chars"], lengths["char_lengths"], "conversation")
        if "tokens" in lengths:
            if args.analyze_lengths:
                print_lengths("tokens (rendered for training)", lengths["tokens"], lengths["token_lengths"], "conversation")
            share = lengths["truncated_share"]
            colour = ui.good if share == 0 else ui.warn
            print("  " + colour(f"{lengths['truncated']} of {len(lengths['token_lengths'])} conversations "
                                f"({100 * share:.1f}%) are longer than --max-seq-len {lengths['max_seq_len']} and would be truncated"))
        else:
            print("  " + ui.warn("no tokenizer trained: token lengths skipped (python -m scripts.tok_train)"))
    if args.samples and report.conversations and not args.validate:
        print()
        print(ui.heading(f"{min(args.samples, report.valid_count)} random conversations"))
        for lineno, msgs in di.sample(report.conversations, args.samples, args.seed):
            print(di.format_conversation(lineno, msgs))
            print()
    if args.export:
        print(f"exported {exported} conversation(s) for review to {args.export}")
    if fix:
        print()
        print(ui.heading(f"Cleaned copy: {args.fix}"))
        print(f"  kept {fix.kept} line(s), dropped {len(fix.dropped)}:")
        for lineno, reason in fix.dropped:
            print(f"  line {lineno}: {reason}")
    return 1 if (args.validate and report.problems) else 0


def show_pretraining(args):
    if args.fix or args.export:
        raise UserError("--fix and --export are for conversation JSONL files, not pretraining shards")
    tok = maybe_tokenizer()
    r = di.inspect_pretraining(args.path, tok, progress=lambda files: ui.progress(files, desc="reading shards"))
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if not k.endswith("_lengths")}, indent=2, default=str))
        return 0
    print(ui.heading(f"Pretraining text in {args.path}"))
    rows = [("files", len(r["files"])), ("documents", r["documents"]), ("characters", r["total_chars"])]
    if "total_tokens" in r:
        rows += [("tokens", r["total_tokens"]), ("chars / token", f"{r['chars_per_token']:.2f}")]
    print(ui.key_values(rows))
    print_lengths("characters", r["chars"], r["char_lengths"], "document")
    if "tokens" in r:
        print_lengths("tokens", r["tokens"], r["token_lengths"], "document")
    else:
        print("  " + ui.warn("no tokenizer trained: token counts skipped"))
    if r["duplicates"]:
        extra = sum(len(g) - 1 for g in r["duplicates"])
        print("  " + ui.warn(f"{len(r['duplicates'])} document(s) appear more than once ({extra} extra copies); "
                             "documents #") + "; ".join(", ".join(map(str, g)) for g in r["duplicates"][:10]))
    else:
        print("  no exact duplicate documents")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if di.detect_kind(args.path) == "pretraining":
        return show_pretraining(args)
    return show_conversations(args)


if __name__ == "__main__":
    run_main(main)
