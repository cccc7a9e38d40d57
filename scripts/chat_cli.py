"""
Chat with a trained model in the terminal: multi-turn, streaming, token by token.

Pipeline position: after SFT (or mid / RL); loads a checkpoint of the stage given by -i and talks
through nanochat/engine.py (KV cache, sampling, calculator tool use).

Type a message and press Enter. Commands: `clear` starts a new conversation, `quit` (or Ctrl-D /
end of input) leaves. In a terminal the line can be edited (arrows, Ctrl-A/E, Ctrl-R) and the up
arrow brings back earlier messages, also those of earlier sessions (kept in chat_cli_history in
the base dir), where Python has readline. Input can also be piped: each line is one user turn, and
the program exits at the end of the input.

Examples:
    python -m scripts.chat_cli -i sft
    python -m scripts.chat_cli -i sft -p "Why is the sky blue?"
    echo "hello" | python -m scripts.chat_cli -i sft
    python -m scripts.chat_cli -i mid -g d4 -s 200 -t 0.8 -k 50
"""

import os
import sys
import atexit
import argparse

from nanochat.common import (compute_init, compute_cleanup, run_main, UserError, add_device_arg, ArgumentParser,
                             int_range, nonneg_int, random_seed, sampling_temperature, get_base_dir)
from nanochat.checkpoint_manager import add_checkpoint_args, load_model_from_args
from nanochat.chat import ChatHistory, StreamDecoder, context_length
from nanochat.engine import Engine
from nanochat_tasks.examples import examples_text


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.chat_cli", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, "sft")
    p.add_argument("-p", "--prompt", type=str, default="", help="ask one question, print the answer and exit")
    p.add_argument("-t", "--temperature", type=sampling_temperature, default=0.6, help="sampling temperature (0: greedy)")
    p.add_argument("-k", "--top-k", type=nonneg_int, default=50, help="sample from the k most likely tokens (0: all)")
    p.add_argument("-m", "--max-tokens", type=int_range(1, 2**20), default=256, help="longest reply, in tokens")
    p.add_argument("--seed", type=random_seed, default=42, help="sampling seed (each turn uses seed + turn number)")
    add_device_arg(p)
    p.epilog = examples_text()
    return p.parse_args(argv)


HISTORY_FILE = "chat_cli_history"  # in the base dir: the messages typed in earlier sessions


def enable_line_editing(path):
    """Line editing and an up-arrow history for input(), where Python has readline (Linux, macOS):
    the history starts with the file at `path` and is written back to it at exit."""
    try:
        import readline  # importing it is what makes input() editable
    except ImportError:
        return
    readline.set_history_length(1000)
    try:
        readline.read_history_file(path)
    except OSError:  # the first session, or an unreadable file: an empty history
        pass

    def save():
        try:
            readline.write_history_file(path)
        except OSError:  # a read-only base dir loses the history, not the chat
            pass
    atexit.register(save)


def stream_reply(engine, history, user_text, args, turn, out=None, label="Assistant: ", echo=False):
    """Generate the assistant's reply to user_text, printing it as it comes; returns the reply text.

    A conversation longer than the model can read loses its oldest exchanges (with a note, printed
    before the turn it makes room for); a message too long on its own raises UserError before
    anything is printed. echo: print 'User: ...' first (piped input, where nobody saw it typed)."""
    out = out or sys.stdout  # looked up at each call, not once at import (tests and callers swap sys.stdout)
    context_len = context_length(engine.model)
    prompt, dropped = history.prompt_for(user_text, context_len=context_len)
    limit = context_len - len(prompt)
    if dropped:
        out.write(f"(the conversation outgrew the model's {context_len:,}-token context: "
                  f"{dropped} oldest exchange(s) dropped)\n")
    if echo:
        out.write(f"User: {user_text}\n")
    out.write(label)
    out.flush()
    decoder = StreamDecoder(engine.tokenizer)
    reply_ids, pieces = [], []
    for column, _ in engine.generate(prompt, num_samples=1, max_tokens=min(args.max_tokens, limit),
                                     temperature=args.temperature, top_k=args.top_k or None,
                                     seed=args.seed + turn):
        token = column[0]
        if token in (engine.assistant_end, engine.bos):
            break
        reply_ids.append(token)
        piece = decoder.add(token)
        pieces.append(piece)
        out.write(piece)
        out.flush()
    piece = decoder.flush()
    pieces.append(piece)
    out.write(piece + "\n")
    out.flush()
    history.add_reply(reply_ids)
    return "".join(pieces)


def main(argv=None):
    args = parse_args(argv)
    rt = compute_init(args.device_type)
    model, tokenizer, _, _ = load_model_from_args(args, rt.device, verbose=not args.prompt)
    engine = Engine(model, tokenizer)
    history = ChatHistory(tokenizer)
    if args.prompt:
        with rt.autocast():
            stream_reply(engine, history, args.prompt, args, turn=0, label="")
        compute_cleanup()
        return
    interactive = sys.stdin.isatty()
    if interactive:
        enable_line_editing(os.path.join(get_base_dir(), HISTORY_FILE))
        print(f"nanochat ({args.source}) | 'clear' starts a new conversation, 'quit' or Ctrl-D leaves")
        print(examples_text())
    turn = 0
    while True:
        try:
            user_text = input("\nUser: " if interactive else "")
        except EOFError:
            if interactive:
                print()
            break
        command = user_text.strip().lower()
        if command in ("quit", "exit"):
            break
        if command == "clear":
            history.clear()
            print("(new conversation)")
            continue
        if not user_text.strip():
            continue
        try:
            with rt.autocast():
                stream_reply(engine, history, user_text, args, turn, echo=not interactive)
        except UserError as e:  # one message too long: say so and keep the conversation
            print(f"error: {e}", file=sys.stderr)
            continue
        turn += 1
    compute_cleanup()


if __name__ == "__main__":
    run_main(main)
