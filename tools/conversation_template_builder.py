"""
Conversation template builder: build chat conversations (simple, multi-turn, tool use), check
them, and see exactly which tokens the model will be trained on.

The render is the tokenizer's own render_conversation (what SFT trains on): supervised tokens in
one colour (or [bracketed] when plain), context in another, with supervision statistics. A linter
then looks for the mistakes that silently ruin finetuning: doubled BOS, nothing supervised,
truncation cutting off the assistant at --max-seq-len, a training render that differs from what
the engine feeds at inference (including tool outputs the calculator would not produce).

--validate FILE takes a JSON conversation: a list of messages or {"messages": [...]}; it may also
carry "ids" and "mask" (a render made some other way) to lint that render instead.
Exit codes: 0 clean, 1 the conversation(s) have errors, 2 bad input.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json

from nanochat.common import run_main, UserError, int_range
from tools.lib import termui as ui
from tools.lib import token_inspect as ti
from tools.lib import conversation_lint as cl
from nanochat.conversation_check import validate_conversation, conversation_messages
from nanochat.calculator import use_calculator

EXAMPLES = [
    "python tools/conversation_template_builder.py --interactive",
    'python tools/conversation_template_builder.py --simple "What is 2+2?" "It\'s 4."',
    'python tools/conversation_template_builder.py --multi "Hi" "Hello!" "How are you?" "Fine, thanks."',
    'python tools/conversation_template_builder.py --tool "What is 12*7?" "12*7" "12 times 7 is 84."',
    "python tools/conversation_template_builder.py --validate conversation.json --max-seq-len 512",
    "python tools/conversation_template_builder.py --batch-validate dataset.jsonl --output report.json",
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-i", "--interactive", action="store_true", help="build conversations with commands")
    g.add_argument("--simple", nargs=2, metavar=("USER", "ASSISTANT"), help="one question, one answer")
    g.add_argument("--multi", nargs="+", metavar="TURN", help="alternating user / assistant turns")
    g.add_argument("--tool", nargs=3, metavar=("USER", "EXPRESSION", "ANSWER"),
                   help="a calculator call: the output is what the calculator returns")
    g.add_argument("--validate", metavar="FILE", help="check and lint one JSON conversation")
    g.add_argument("--batch-validate", metavar="FILE", help="check and lint every line of a JSONL file")
    p.add_argument("--system", type=str, default=None, help="a system message to put first")
    p.add_argument("--max-seq-len", type=int_range(1, 2**20), default=2048, help="training sequence length for the truncation check")
    p.add_argument("--save", metavar="PATH", default=None, help="write the built conversation as JSON")
    p.add_argument("--output", metavar="PATH", default=None, help="where --batch-validate writes its JSON report")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    if not any([args.interactive, args.simple, args.multi, args.tool, args.validate, args.batch_validate]):
        raise UserError("nothing to do: use --simple, --multi, --tool, --validate, --batch-validate or --interactive "
                        "(see --help)")
    if args.multi and len(args.multi) % 2:
        raise UserError(f"--multi needs user/assistant pairs, got {len(args.multi)} turns (an even number is needed)")
    return args


# -----------------------------------------------------------------------------
# building

def with_system(messages, system):
    return ([{"role": "system", "content": system}] if system else []) + messages


def simple_conversation(user, assistant, system=None):
    return with_system([{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], system)


def tool_conversation(user, expression, answer, system=None):
    """A calculator call whose output is what the engine will insert at inference."""
    result = use_calculator(expression)
    if result is None:
        raise UserError(f"the calculator cannot evaluate {expression!r}; use arithmetic like 12*7 or "
                        "'strawberry'.count('r')")
    parts = [{"type": "python", "text": expression}, {"type": "python_output", "text": str(result)},
             {"type": "text", "text": answer}]
    return with_system([{"role": "user", "content": user}, {"role": "assistant", "content": parts}], system)


def read_conversation_file(path):
    """(messages, rendered or None) from a JSON file; file trouble is a UserError."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; give a .json file with one conversation")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise UserError(f"no such file: {path}; check the path") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    rendered = None
    if isinstance(obj, dict) and "ids" in obj:
        ids, mask = obj.get("ids"), obj.get("mask")
        if (not isinstance(ids, list) or not isinstance(mask, list) or len(ids) != len(mask)
                or not all(isinstance(x, int) for x in ids + mask)):
            raise UserError(f"{path}: 'ids' and 'mask' must be lists of integers of the same length")
        rendered = (ids, mask)
    return obj, rendered


# -----------------------------------------------------------------------------
# showing

def show_render(tokenizer, ids, mask):
    print(ui.heading("Rendered for training"))
    text, legend = ti.supervision_lines(tokenizer, ids, mask, ui.use_color())
    print(text)
    print(ui.muted(legend))


def show_report(tokenizer, report, show_tokens=True):
    if report.ids is not None and show_tokens:
        show_render(tokenizer, report.ids, report.mask)
        print()
        share = report.supervised / report.num_tokens if report.num_tokens else 0.0
        rows = [("tokens", report.num_tokens), ("supervised", f"{report.supervised:,} ({100 * share:.1f}%)"),
                ("not supervised", report.num_tokens - report.supervised)]
        if report.max_seq_len is not None:
            rows.append(("kept at --max-seq-len", f"{report.supervised_kept:,} supervised of {report.supervised:,} "
                         f"(length {report.max_seq_len:,})"))
        print(ui.key_values(rows))
        print()
    print(ui.heading("Lint"))
    if not report.issues:
        print(ui.good("  no problems found"))
    for issue in report.issues:
        paint = ui.bad if issue.severity == "error" else ui.warn
        print(f"  {paint(issue.severity)} [{issue.code}] {issue.message}")


def lint_and_show(tokenizer, conversation, args, rendered=None):
    report = cl.lint_conversation(tokenizer, conversation, args.max_seq_len, rendered)
    if args.json:
        out = report.to_dict()
        out["conversation"] = conversation
        out["ids"], out["mask"] = report.ids, report.mask
        print(json.dumps(out))
    else:
        show_report(tokenizer, report)
    return report


def save_conversation(conversation, path):
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"messages": conversation_messages(conversation)}, f, indent=2, ensure_ascii=False)
            f.write("\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def batch_validate(tokenizer, args):
    check, linted = cl.lint_jsonl(tokenizer, args.batch_validate, args.max_seq_len)
    if check.total_lines == 0:
        raise UserError(f"{args.batch_validate} is empty: there are no conversations to validate")
    counts = {}
    lines = []
    for line, report in linted:
        for issue in report.issues:
            counts[issue.code] = counts.get(issue.code, 0) + 1
        if report.issues:
            lines.append({"line": line, "issues": [i.__dict__ for i in report.issues]})
    total_sup = sum(r.supervised for _, r in linted)
    total_tok = sum(r.num_tokens for _, r in linted)
    report = {"structure": check.to_dict(), "lint": {"conversations": len(linted), "issue_counts": counts,
              "lines": lines, "tokens": total_tok, "supervised": total_sup,
              "max_seq_len": args.max_seq_len}}
    failed = bool(check.problems) or any(not r.ok for _, r in linted) or not linted
    report["ok"] = not failed
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        except OSError as e:
            raise UserError(f"cannot write {args.output}: {e.strerror}") from None
    if args.json:
        print(json.dumps(report))
        return 1 if failed else 0
    print(ui.heading(f"Batch validation of {args.batch_validate}"))
    print(ui.key_values([("lines", check.total_lines), ("valid conversations", check.valid_count),
                         ("invalid lines", len(check.bad_lines)),
                         ("supervised tokens", f"{total_sup:,} of {total_tok:,}")]))
    for p in check.problems[:20]:
        print(f"  {ui.bad('invalid')} {p}")
    if len(check.problems) > 20:
        print(f"  ... {len(check.problems) - 20} more structural problems (see the report)")
    shown = 0
    for entry in lines:
        for issue in entry["issues"]:
            if shown < 20:
                paint = ui.bad if issue["severity"] == "error" else ui.warn
                print(f"  line {entry['line']}: {paint(issue['severity'])} [{issue['code']}] {issue['message']}")
            shown += 1
    if shown > 20:
        print(f"  ... {shown - 20} more lint findings (see the report)")
    if counts:
        print()
        print(ui.table(sorted(counts.items()), headers=["lint finding", "lines"]))
    if args.output:
        print(f"report written to {args.output}")
    print(ui.good("  all conversations are clean") if not failed else ui.bad("  problems found"))
    return 1 if failed else 0


# -----------------------------------------------------------------------------
# interactive

INTERACTIVE_HELP = """commands:
  simple            one user question and one answer
  multi             several turns (an empty user line ends)
  tool              a calculator call: question, expression, final answer
  system TEXT       set (or with no text, clear) the system message
  load PATH         read a JSON conversation      save PATH   write the current one
  validate          structure check + lint        show        the messages
  tokenize          the training render with supervised tokens marked
  help              this list                     quit        leave"""


def ask(prompt):
    value = input(prompt)
    return value.strip("\n")


def interactive(tokenizer, args):
    current = None
    system = args.system
    print(INTERACTIVE_HELP)
    while True:
        try:
            line = input("builder> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        try:
            if command in ("quit", "exit", "q"):
                return 0
            elif command == "help":
                print(INTERACTIVE_HELP)
            elif command == "simple":
                current = simple_conversation(ask("user> "), ask("assistant> "), system)
                print(ui.good(f"  built a conversation with {len(current)} messages"))
            elif command == "multi":
                messages = []
                while True:
                    user = ask("user> ")
                    if not user.strip():
                        break
                    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": ask("assistant> ")}]
                if not messages:
                    print("  no turns entered; nothing built")
                    continue
                current = with_system(messages, system)
                print(ui.good(f"  built a conversation with {len(current)} messages"))
            elif command == "tool":
                current = tool_conversation(ask("user> "), ask("expression> "), ask("final answer> "), system)
                print(ui.good(f"  built a tool-use conversation; the calculator returned "
                              f"{current[-1]['content'][1]['text']!r}"))
            elif command == "system":
                system = rest or None
                if current is not None:
                    body = [m for m in conversation_messages(current) if m.get("role") != "system"]
                    current = with_system(body, system)
                print(f"  system message {'set' if system else 'cleared'}")
            elif command == "load":
                if not rest:
                    print("  usage: load PATH")
                    continue
                current, _ = read_conversation_file(rest)
                print(ui.good(f"  loaded {rest}"))
            elif command in ("save", "validate", "show", "tokenize"):
                if current is None:
                    print("  no conversation yet: build one with simple, multi or tool, or load one")
                    continue
                if command == "save":
                    if not rest:
                        print("  usage: save PATH")
                        continue
                    save_conversation(current, rest)
                    print(ui.good(f"  saved to {rest}"))
                elif command == "show":
                    print(json.dumps(conversation_messages(current), indent=2, ensure_ascii=False))
                elif command == "validate":
                    problems = validate_conversation(current)
                    for p in problems:
                        print(f"  {ui.bad('invalid')} {p}")
                    show_report(tokenizer, cl.lint_conversation(tokenizer, current, args.max_seq_len), show_tokens=False)
                else:
                    report = cl.lint_conversation(tokenizer, current, args.max_seq_len)
                    if report.ids is None:
                        show_report(tokenizer, report, show_tokens=False)
                    else:
                        show_render(tokenizer, report.ids, report.mask)
                        print(f"  {report.supervised} of {report.num_tokens} tokens supervised")
            else:
                print(f"  unknown command {command!r}\n{INTERACTIVE_HELP}")
        except EOFError:
            print()
            return 0
        except UserError as e:  # a bad path or expression: say so and keep the session
            print(f"  error: {e}")


def main(argv=None):
    args = parse_args(argv)
    from nanochat.tokenizer import get_tokenizer
    tokenizer = get_tokenizer()
    if args.interactive:
        return interactive(tokenizer, args)
    if args.batch_validate:
        return batch_validate(tokenizer, args)
    rendered = None
    if args.validate:
        conversation, rendered = read_conversation_file(args.validate)
    elif args.simple:
        conversation = simple_conversation(*args.simple, system=args.system)
    elif args.multi:
        conversation = with_system(ti.conversation_from_turns(args.multi)["messages"], args.system)
    else:
        conversation = tool_conversation(*args.tool, system=args.system)
    report = lint_and_show(tokenizer, conversation, args, rendered)
    if args.save:
        save_conversation(conversation, args.save)
        if not args.json:
            print(f"saved to {args.save}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    run_main(main)
