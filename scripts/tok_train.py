"""
Train the tokenizer: a byte-level BPE vocabulary learned from the pretraining text.

Pipeline position: the first stage. Reads the train split (downloaded shards, or --data-dir, or the
embedded corpus) and writes <base dir>/tokenizer/tokenizer.json, tokenizer.tiktoken and token_bytes.pt,
which every later stage loads (nanochat.tokenizer.get_tokenizer / get_token_bytes).

The default --vocab-size 32768 suits real pretraining data on a GPU. On the small embedded corpus
and a CPU a few thousand tokens are plenty (the CPU demo passes a smaller one): a model's embedding
and output layers grow with the vocabulary, and a tiny model cannot afford 32768 rows.

Examples:
    python -m scripts.tok_train                          # 32768 tokens on the train split
    python -m scripts.tok_train --vocab-size 4096        # the CPU demo's size
    python -m scripts.tok_train --data-dir ~/my_texts --max-chars 1e8
"""

import argparse
import time

from nanochat.common import (UserError, format_duration, print0, run_main, ArgumentParser, int_range, positive_int,
                             positive_float)
from nanochat.tokenizer import SPECIAL_TOKENS, RustBPETokenizer, get_tokenizer_dir, save_token_bytes
from nanochat.gpt import CONFIG_LIMITS

SANITY_TEXT = "Hello world! In 2024, 12345 tokens cost $6.78.\n\tdef f(x): return x  # 안녕 😀"


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.tok_train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int_range(1, CONFIG_LIMITS["vocab_size"]), default=32768, help="tokens in the vocabulary, the 9 special tokens included")
    p.add_argument("--max-chars", type=positive_float, default=2e9, help="stop reading after this many characters (or at the end of the data)")
    p.add_argument("--doc-cap", type=positive_int, default=10_000, help="use at most this many characters of each document")
    p.add_argument("--data-dir", type=str, default=None, help="folder of .parquet/.txt/.jsonl (default: downloaded shards, else the embedded corpus)")
    args = p.parse_args(argv)
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(f"--vocab-size {args.vocab_size} is too small: it needs the 256 byte values and "
                        f"{len(SPECIAL_TOKENS)} special tokens, so at least {256 + len(SPECIAL_TOKENS)}")
    return args


def training_texts(data_dir, max_chars, doc_cap, stats):
    """The documents of the train split, each cut to doc_cap characters, until max_chars in all."""
    # imported here so that this module (and its --help) loads without the data code
    from nanochat.dataset import parquets_iter_batched
    for batch in parquets_iter_batched("train", data_dir=data_dir):
        for doc in batch:
            # one enormous document (a whole book) would otherwise dominate the pair counts
            doc = doc[:doc_cap]
            stats["docs"] += 1
            stats["chars"] += len(doc)
            yield doc
            if stats["chars"] >= max_chars:
                return


def show_token(tokenizer, token_id):
    """A token as readable text; one holding part of a UTF-8 character shows its bytes, e.g. <ec 95>."""
    raw = tokenizer.token_to_bytes(token_id)
    try:
        return repr(raw.decode("utf-8"))[1:-1]
    except UnicodeDecodeError:
        return "<" + raw.hex(" ") + ">"


def main(argv=None):
    args = parse_args(argv)
    from nanochat.dataset import resolve_data_dir
    data_dir = resolve_data_dir(args.data_dir)
    print0(f"training a {args.vocab_size}-token BPE vocabulary on the train split of {data_dir}")

    stats = {"docs": 0, "chars": 0}
    t0 = time.perf_counter()
    texts = training_texts(args.data_dir, int(args.max_chars), args.doc_cap, stats)
    tokenizer = RustBPETokenizer.train_from_iterator(texts, args.vocab_size)
    train_time = time.perf_counter() - t0
    if stats["chars"] == 0:
        raise UserError(f"the train split of {data_dir} holds no text to learn from")
    vocab_size = tokenizer.get_vocab_size()
    print0(f"read {stats['docs']:,} documents, {stats['chars']:,} characters; trained in {format_duration(train_time)} ({train_time:.2f}s)")
    print0(f"vocabulary: {vocab_size:,} tokens (256 bytes + {vocab_size - 256 - len(SPECIAL_TOKENS):,} merges + {len(SPECIAL_TOKENS)} special)")
    if vocab_size < args.vocab_size:
        print0(f"note: the text had only enough distinct pairs for {vocab_size:,} of the {args.vocab_size:,} tokens asked for; "
               "give it more text or ask for fewer tokens")

    tokenizer_dir = get_tokenizer_dir()
    tokenizer.save(tokenizer_dir)
    save_token_bytes(tokenizer, tokenizer_dir)
    print0(f"saved tokenizer.json, tokenizer.tiktoken and token_bytes.pt in {tokenizer_dir}")

    # sanity check: exact round trip, and what the tokens look like
    ids = tokenizer.encode(SANITY_TEXT)
    if tokenizer.decode(ids) != SANITY_TEXT:
        raise RuntimeError("the trained tokenizer does not decode its own encoding back to the input: this is a bug")
    print0(f"round trip ok: {len(SANITY_TEXT.encode('utf-8'))} bytes -> {len(ids)} tokens:")
    print0("  " + " | ".join(show_token(tokenizer, i) for i in ids))

    try:
        from nanochat.report import get_report
    except ImportError:
        return  # the report module is optional
    get_report().log(section="Tokenizer training", data=[
        vars(args),
        {"train_time_s": round(train_time, 2), "documents": stats["docs"], "characters": stats["chars"],
         "vocab_size": vocab_size},
    ])


if __name__ == "__main__":
    run_main(main)
