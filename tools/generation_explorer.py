"""
Generation parameter explorer: watch the model pick each token, and see what temperature, top-k,
top-p and min-p change.

--show-probs prints, for every generated token, its probability, the entropy of the distribution
and the top alternatives as bars. The probabilities are softmax of the model's logits after the
engine's own filters, applied in the engine's order (printed at the top). --compare-temp and
--compare-topk make one generation per setting with the same seed, so the differences come from
the setting alone. --force TEXT branches the generation: TEXT replaces the sampled tokens at step
--force-at, and both continuations are shown. Chat models (mid/sft/rl) get the prompt rendered
with the chat template, as the chat front ends do.
"""

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere: make the repo importable

import json
import argparse

from nanochat.common import (run_main, UserError, resolve_device_type, add_device_arg, int_range, nonneg_int,
                             random_seed, fraction, sampling_temperature)
from nanochat.chat import context_length
from tools.lib import termui as ui
from nanochat import checkpoint_manager as cm
from tools.lib import generation_trace as gt
from nanochat.engine import Engine, FILTER_ORDER

EXAMPLES = [
    "python tools/generation_explorer.py --source base --interactive",
    'python tools/generation_explorer.py --source base --prompt "The capital of France is" --show-probs',
    'python tools/generation_explorer.py --source base --prompt "Once upon a time" --compare-temp',
    'python tools/generation_explorer.py --source base --prompt "In the beginning" --compare-topk 1 10 50',
    'python tools/generation_explorer.py --source sft --model-tag d20 --device cuda --prompt "What is 2+2?" --show-probs',
    'python tools/generation_explorer.py --prompt "To be" --show-probs --top-p 0.9 --min-p 0.05',
    'python tools/generation_explorer.py --prompt "The king" --force " queen" --force-at 0',
]


def parse_args(argv):
    p = ui.make_parser(__doc__, EXAMPLES)
    p.add_argument("--prompt", type=str, default=None, help="the text to continue")
    p.add_argument("-i", "--interactive", action="store_true", help="type prompts and :settings at a prompt")
    p.add_argument("--show-probs", action="store_true", help="step by step: probability, entropy, alternatives")
    p.add_argument("--compare-temp", type=sampling_temperature, nargs="*", default=None, metavar="T",
                   help=f"one generation per temperature (default {' '.join(map(str, gt.DEFAULT_TEMPERATURES))})")
    p.add_argument("--compare-topk", type=nonneg_int, nargs="*", default=None, metavar="K",
                   help=f"one generation per top-k (default {' '.join(map(str, gt.DEFAULT_TOP_KS))}; 0 = off)")
    p.add_argument("--temperature", type=sampling_temperature, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=nonneg_int, default=None, help="keep the k most likely tokens")
    p.add_argument("--top-p", type=fraction, default=None, help="keep the smallest set with this total probability")
    p.add_argument("--min-p", type=fraction, default=None, help="drop tokens below min-p x the top probability")
    p.add_argument("--max-tokens", type=int_range(1, 2**20), default=30, help="tokens to generate")
    p.add_argument("--seed", type=random_seed, default=42, help="random seed (same seed, same samples)")
    p.add_argument("--top-n", type=int_range(1, 1000), default=5, help="alternatives shown per step")
    p.add_argument("--force", type=str, default=None, help="branch: force this text ('#ID' for one token id)")
    p.add_argument("--force-at", type=nonneg_int, default=0, help="the step at which --force applies (0 = first token)")
    p.add_argument("--chat", choices=["auto", "yes", "no"], default="auto",
                   help="render the prompt with the chat template (auto: for mid/sft/rl)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    cm.add_checkpoint_args(p, "base", short=False)
    add_device_arg(p)
    args = p.parse_args(argv)
    if args.prompt is None and not args.interactive:
        raise UserError("give --prompt TEXT or --interactive (see --help)")
    if args.force_at >= args.max_tokens:
        raise UserError(f"--force-at must be between 0 and --max-tokens - 1 ({args.max_tokens - 1})")
    return args


def check_settings(temperature, top_k, top_p, min_p):
    """The flags' own range checks, for settings typed at the interactive prompt."""
    for name, value, kind in (("temperature", temperature, sampling_temperature), ("top-k", top_k, nonneg_int),
                              ("top-p", top_p, fraction), ("min-p", min_p, fraction)):
        if value is not None:
            try:
                kind(repr(value))
            except argparse.ArgumentTypeError as e:
                raise UserError(f"{name}: {e}")


def settings_of(args):
    return dict(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, min_p=args.min_p)


def show_filters(settings):
    print(ui.heading("Sampling filters, in the order the engine applies them"))
    for line in gt.describe_filters(**settings):
        print("  " + line)


def tok(tokenizer, token_id):
    return repr(tokenizer.decode([token_id]))


def show_steps(tokenizer, steps, top_n):
    rows = []
    for s in steps:
        alts = "  ".join(f"{tok(tokenizer, t)} {p:.2f}" for t, p in s.alternatives[:top_n] if t != s.token_id)
        mark = ui.warn(" forced") if s.forced else (ui.muted(" tool") if s.tool else "")
        rows.append([s.index, tok(tokenizer, s.token_id) + mark, f"{ui.bar(s.prob, 12, 'green')} {s.prob:.3f}",
                     f"{s.entropy:.2f}", f"{s.raw_entropy:.2f}", s.kept, alts])
    print(ui.table(rows, headers=["step", "token", "probability", "H bits", "H raw", "kept", "alternatives"],
                   align="><<>>><"))
    print(ui.muted("  H bits: entropy of the distribution sampled from (after the filters); H raw: of the model's own "
                   "distribution; kept: tokens left after the filters; tool: fed in by the calculator, not sampled"))


def trace_json(tokenizer, steps):
    return [{"step": s.index, "token_id": s.token_id, "token": tokenizer.decode([s.token_id]), "prob": s.prob,
             "raw_prob": s.raw_prob, "entropy_bits": s.entropy, "raw_entropy_bits": s.raw_entropy, "kept": s.kept,
             "forced": s.forced, "tool": s.tool, "alternatives": [[t, p] for t, p in s.alternatives]} for s in steps]


def explore(model, tokenizer, prompt, args, settings, chat):
    """One prompt: a trace (and a forced branch), or the comparison runs."""
    ids = gt.prompt_ids_for(tokenizer, prompt, chat)
    if len(ids) + args.max_tokens > context_length(model):
        room = context_length(model) - len(ids)
        raise UserError(f"the prompt ({len(ids)} tokens) and --max-tokens {args.max_tokens} do not fit in the model's "
                        f"{context_length(model)}-token context; " + (f"use --max-tokens {room} or less" if room > 0
                                                                      else "use a shorter prompt"))
    stops = gt.stop_ids_for(tokenizer, chat)
    out = {"prompt": prompt, "prompt_ids": ids, "chat": chat, "filter_order": list(FILTER_ORDER), "settings": settings}
    if args.compare_temp is not None or args.compare_topk is not None:
        engine = Engine(model, tokenizer)
        if args.compare_temp is not None:
            values = args.compare_temp or list(gt.DEFAULT_TEMPERATURES)
            for t in values:
                check_settings(t, None, None, None)
            runs = [dict(settings, temperature=t) for t in values]
            label = "temperature"
        else:
            values = args.compare_topk or list(gt.DEFAULT_TOP_KS)
            for k in values:
                check_settings(0, k, None, None)
            runs = [dict(settings, top_k=k or None) for k in values]
            label = "top_k"
        results = gt.generate_with_settings(engine, ids, runs, args.max_tokens, args.seed)
        out["comparison"] = [{label: v, "settings": s, "text": tokenizer.decode(g), "ids": g}
                             for v, (s, g) in zip(values, results)]
        if not args.json:
            show_filters(settings)
            print()
            print(ui.heading(f"Same prompt, same seed ({args.seed}), one generation per {label}"))
            rows = [[("off" if v == 0 and label == "top_k" else str(v)), ui.style(prompt, "bold") +
                     tokenizer.decode(g).replace("\n", "↵")] for v, (_, g) in zip(values, results)]
            print(ui.table(rows, headers=[label, "generation"], align="><"))
        return out
    engine = Engine(model, tokenizer)  # the trace follows calculator calls as the engine does
    steps = gt.trace_generation(model, ids, args.max_tokens, seed=args.seed, top_n=args.top_n, stop_ids=stops,
                                engine=engine, **settings)
    out["steps"] = trace_json(tokenizer, steps)
    out["text"] = tokenizer.decode([s.token_id for s in steps])
    branch = None
    if args.force:
        try:
            force = gt.parse_force(tokenizer, args.force, args.force_at)
        except ValueError as e:
            raise UserError(f"--force: {e}")
        branch = gt.trace_generation(model, ids, args.max_tokens, seed=args.seed, top_n=args.top_n,
                                     stop_ids=stops, force=force, engine=engine, **settings)
        out["branch"] = trace_json(tokenizer, branch)
        out["branch_text"] = tokenizer.decode([s.token_id for s in branch])
    if args.json:
        return out
    show_filters(settings)
    print()
    print(ui.heading("Generation"))
    print(ui.style(prompt, "bold") + out["text"])
    print(ui.muted(f"  perplexity of the chosen tokens under the model: {gt.perplexity(steps):.2f}"))
    if args.show_probs:
        print()
        show_steps(tokenizer, steps, args.top_n)
    if branch is not None:
        print()
        print(ui.heading(f"Branch: {args.force!r} forced at step {args.force_at}"))
        before = tokenizer.decode([s.token_id for s in branch[:args.force_at]])
        forced = tokenizer.decode([s.token_id for s in branch if s.forced])
        after = tokenizer.decode([s.token_id for s in branch[args.force_at:] if not s.forced])
        print(ui.style(prompt, "bold") + before + ui.style(forced, "yellow", "bold") + after)
        if args.show_probs:
            print()
            show_steps(tokenizer, branch, args.top_n)
    return out


INTERACTIVE_HELP = """type a prompt to generate, or a setting:
  :temp 0.7   :topk 40   :topp 0.9   :minp 0.05   (0 or 'off' turns a filter off)
  :seed 1     :max 40    :probs on|off            :quit"""


def interactive(model, tokenizer, args, chat):
    settings = settings_of(args)
    args.show_probs = True if args.show_probs is False else args.show_probs
    print(INTERACTIVE_HELP)
    while True:
        try:
            line = input("prompt> ")
        except EOFError:
            print()
            return 0
        line = line.strip()
        if not line:
            continue
        if line in (":quit", ":q", "quit", "exit"):
            return 0
        if line.startswith(":"):
            name, _, value = line[1:].partition(" ")
            value = value.strip()
            try:
                if name in ("temp", "topk", "topp", "minp"):
                    key = {"temp": "temperature", "topk": "top_k", "topp": "top_p", "minp": "min_p"}[name]
                    v = None if value in ("off", "") else (int(value) if name == "topk" else float(value))
                    if name == "temp" and v is None:
                        v = 1.0
                    trial = dict(settings, **{key: v})
                    check_settings(trial["temperature"], trial["top_k"], trial["top_p"], trial["min_p"])
                    settings = trial
                elif name == "seed":
                    args.seed = random_seed(value)
                elif name == "max":
                    args.max_tokens = int_range(1, 2**20)(value)
                elif name == "probs":
                    args.show_probs = value != "off"
                else:
                    print(f"unknown command :{name}\n{INTERACTIVE_HELP}")
                    continue
            except (ValueError, UserError, argparse.ArgumentTypeError) as e:
                print(f"bad value for :{name}: {e}")
                continue
            print(ui.muted(f"  settings: {settings}, seed {args.seed}, max {args.max_tokens}"))
            continue
        try:
            explore(model, tokenizer, line, args, settings, chat)
        except UserError as e:  # a prompt too long for the context: say so and keep the session
            print(f"error: {e}")
        print()


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device_type(args.device_type)
    model, tokenizer, meta, _ = cm.load_model_from_args(args, device, verbose=not args.json)
    chat = args.chat == "yes" or (args.chat == "auto" and args.source != "base")
    if args.interactive:
        return interactive(model, tokenizer, args, chat)
    out = explore(model, tokenizer, args.prompt, args, settings_of(args), chat)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    run_main(main)
