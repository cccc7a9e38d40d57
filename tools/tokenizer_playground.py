"""
Tokenizer playground: see how the trained tokenizer cuts text into tokens, what its vocabulary
holds, how it compresses your data next to GPT-2 / GPT-4 encodings, and which tokens of a chat
the model is trained on.

Uses the tokenizer under $NANOCHAT_BASE_DIR/tokenizer (train one with python -m scripts.tok_train).
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json
from dataclasses import asdict

from nanochat.common import run_main, UserError, int_range, nonneg_int
from tools.lib import termui as ui
from tools.lib import token_inspect as ti

EXAMPLES = [
    'python tools/tokenizer_playground.py "Hello world!"',
    "python tools/tokenizer_playground.py -i                     # type lines, see tokens",
    "python tools/tokenizer_playground.py --special",
    "python tools/tokenizer_playground.py --vocab",
    'python tools/tokenizer_playground.py --compare "Hello" "Hi" "Hey there"',
    'python tools/tokenizer_playground.py "Hello world!" --against gpt2 cl100k',
    "python tools/tokenizer_playground.py --file my_data.txt --against cl100k o200k",
    "python tools/tokenizer_playground.py --chat                 # a demo conversation with a tool call",
    'python tools/tokenizer_playground.py --chat "Hi" "Hello! How can I help?"',
    "python tools/tokenizer_playground.py --chat conversation.json   # a JSON list of messages",
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("text", nargs="*", help="text to tokenize (with --chat: alternating user/assistant turns)")
    p.add_argument("-i", "--interactive", action="store_true", help="read lines and tokenize each (empty line quits)")
    p.add_argument("--special", action="store_true", help="the special tokens, their ids and roles")
    p.add_argument("--vocab", action="store_true", help="vocabulary statistics")
    p.add_argument("--compare", nargs="+", metavar="TEXT", help="compare several texts side by side")
    p.add_argument("--against", nargs="+", metavar="ENC", help="also count tokens with gpt2 / cl100k / o200k")
    p.add_argument("--file", type=str, help="measure compression on this UTF-8 text file")
    p.add_argument("--max-bytes", type=int_range(1, 2**34), default=20_000_000, help="read at most this much of --file")
    p.add_argument("--chat", action="store_true",
                   help="render a conversation with its supervision mask: the TEXT arguments as alternating "
                        "user/assistant turns, one .json file of messages, or (no TEXT) a demo with a tool call")
    p.add_argument("--max-rows", type=nonneg_int, default=200, help="longest token table to print")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if not (args.text or args.interactive or args.special or args.vocab or args.compare or args.file
            or args.chat):
        raise UserError("nothing to do: give a TEXT, or one of -i, --special, --vocab, --compare, --file, --chat (see --help)")
    return args


def coloured_tokens(infos):
    """The text with each token on an alternating background; '|' between tokens when plain."""
    if not ui.use_color():
        return "|".join(i.shown for i in infos)
    bgs = ui.TOKEN_BACKGROUNDS
    return "".join(ui.style(i.shown, bgs[k % len(bgs)], "black", *(("bold",) if i.type == "special" else ()))
                   for k, i in enumerate(infos))


def show_text(tokenizer, text, args, out):
    infos = ti.tokenize(tokenizer, text)
    stats = ti.text_stats(tokenizer, text, [i.id for i in infos])
    record = {"text": text, "tokens": [asdict(i) for i in infos], "stats": stats}
    if args.against:
        record["against"] = ti.compare_with_references(tokenizer, text, args.against)
    if args.json:
        out.append(record)
        return
    print(ui.heading("Tokens"))
    print(coloured_tokens(infos))
    print()
    rows = [[i.index, i.id, i.shown, i.nbytes, i.type] for i in infos[:args.max_rows]]
    print(ui.table(rows, headers=["#", "id", "text", "bytes", "type"], align=">><><"))
    if len(infos) > args.max_rows:
        print(ui.muted(f"  ... {len(infos) - args.max_rows} more tokens (raise --max-rows to see them)"))
    print()
    print_stats(stats)
    if args.against:
        print_against(record["against"])


def print_stats(stats):
    print(ui.heading("Stats"))
    print(ui.key_values([("tokens", stats["tokens"]), ("characters", stats["chars"]), ("UTF-8 bytes", stats["bytes"]),
                         ("bytes / token", f"{stats['bytes_per_token']:.2f}"),
                         ("chars / token", f"{stats['chars_per_token']:.2f}")]))


def print_against(rows):
    print()
    print(ui.heading("Against published encodings"))
    table = []
    for r in rows:
        if r["tokens"] is None:
            continue
        table.append([r["name"], r["tokens"], f"{r['bytes_per_token']:.2f}", f"{r['vs_ours']:.2f}x"])
    print(ui.table(table, headers=["encoding", "tokens", "bytes/token", "tokens vs ours"], align="<>>>"))
    for r in rows:
        if r["tokens"] is None:
            print("  " + ui.warn(f"note: {r['name']} skipped: ") + r["note"])


def show_special(tokenizer, args, out):
    rows = ti.special_tokens(tokenizer)
    if args.json:
        out.append({"special_tokens": [{"name": n, "id": i, "role": r} for n, i, r in rows]})
        return
    print(ui.heading("Special tokens"))
    print(ui.table([[ui.style(n, "bold"), i, r] for n, i, r in rows], headers=["token", "id", "role in a chat"], align="<><"))
    print()
    print("  a chat is rendered as: <|bos|> <|user_start|> ... <|user_end|> <|assistant_start|> ... <|assistant_end|> ...")


def show_vocab(tokenizer, args, out):
    v = ti.vocab_stats(tokenizer)
    if args.json:
        out.append({"vocab": v})
        return
    print(ui.heading("Vocabulary"))
    print(ui.key_values([("size", v["vocab_size"]), ("byte tokens (ids 0-255)", v["byte_tokens"]),
                         ("learned merges", v["merges"]), ("special tokens", v["special"]),
                         ("mean token length", f"{v['mean_token_bytes']:.2f} bytes")]))
    print("\n  token length in bytes:")
    top = max(v["length_histogram"].values())
    print(ui.table([[f"{L} B", ui.bar(c / top, 30), c] for L, c in v["length_histogram"].items()], align="<<>", indent=4))
    print("\n  token types:")
    print(ui.table([[k, c] for k, c in sorted(v["type_counts"].items(), key=lambda kv: -kv[1])], align="<>", indent=4))
    print("\n  longest tokens:")
    print(ui.table([[t, ti.visible(s), n] for t, s, n in v["longest"]], headers=["id", "token", "bytes"], align="><>", indent=4))
    print("\n  merge order (ids after 255 are merges, most frequent pair first):")
    for label, key in (("first", "first_merges"), ("middle", "middle_merges"), ("last", "last_merges")):
        print(f"    {label:<7}" + "  ".join(f"{t}:{ti.visible(s)!s}" for t, s in v[key]))


def show_compare(tokenizer, args, out):
    results = []
    for text in args.compare:
        infos = ti.tokenize(tokenizer, text)
        results.append((text, infos, ti.text_stats(tokenizer, text, [i.id for i in infos])))
    if args.json:
        out.append({"compare": [{"text": t, "ids": [i.id for i in infos], "stats": s} for t, infos, s in results]})
        return
    print(ui.heading("Comparison"))
    rows = [[ti.visible(t)[:40], s["tokens"], s["chars"], s["bytes"], f"{s['bytes_per_token']:.2f}"] for t, _, s in results]
    print(ui.table(rows, headers=["text", "tokens", "chars", "bytes", "bytes/token"], align="<>>>>"))
    print()
    for t, infos, _ in results:
        print(f"  {ui.pad(ti.visible(t)[:24], 26)} {coloured_tokens(infos)}")
        print(f"  {'':26} {' '.join(str(i.id) for i in infos)}")


def show_file(tokenizer, args, out):
    text = ti.read_text_file(args.file, args.max_bytes)
    if not text:
        raise UserError(f"{args.file} is empty: there is no text to measure")
    names = args.against or ["cl100k"]
    rows = ti.compare_with_references(tokenizer, text, names)
    stats = ti.text_stats(tokenizer, text)
    if args.json:
        out.append({"file": args.file, "stats": stats, "against": rows})
        return
    print(ui.heading(f"Compression on {args.file}"))
    print_stats(stats)
    print_against(rows)


def load_chat(args):
    if len(args.text) == 1 and args.text[0].endswith(".json"):
        path = args.text[0]
        try:
            return json.loads(ti.read_text_file(path))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); "
                            "give a list of {role, content} messages") from None
    if args.text:
        return ti.conversation_from_turns(args.text)
    return ti.DEMO_CONVERSATION


def show_chat(tokenizer, args, out):
    ids, mask, stats = ti.chat_supervision(tokenizer, load_chat(args))
    if args.json:
        out.append({"chat": {"ids": ids, "mask": mask, "stats": stats}})
        return
    print(ui.heading("Chat rendered for training"))
    text, legend = ti.supervision_lines(tokenizer, ids, mask, ui.use_color())
    print(text)
    print(ui.muted(legend))
    print()
    print(ui.key_values([("tokens", stats["tokens"]), ("supervised", stats["supervised"]),
                         ("not supervised", stats["not_supervised"]),
                         ("supervised share", f"{100 * stats['supervised_share']:.1f}%")]))


def interactive(tokenizer, args):
    tty = sys.stdin.isatty()
    while True:
        try:
            line = input("text> " if tty else "")
        except EOFError:
            break
        if not line:
            break
        show_text(tokenizer, line, args, [])
        print()


def main(argv=None):
    args = parse_args(argv)
    from nanochat.tokenizer import get_tokenizer
    tokenizer = get_tokenizer()
    out = []
    if args.special:
        show_special(tokenizer, args, out)
    if args.vocab:
        show_vocab(tokenizer, args, out)
    if args.compare:
        show_compare(tokenizer, args, out)
    if args.file:
        show_file(tokenizer, args, out)
    if args.chat:
        show_chat(tokenizer, args, out)
    elif args.text:
        show_text(tokenizer, " ".join(args.text), args, out)
    if args.interactive:
        interactive(tokenizer, args)
    if args.json:
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    run_main(main)
