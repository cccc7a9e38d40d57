"""
Benchmark the tokenizer: training time on the embedded corpus, and encoding speed next to a
published encoding, all measured in one run (these machines are noisy, so compare ratios).

- train: seconds for RustBPETokenizer.train_from_iterator to learn --vocab-size tokens from the
  train split of the embedded corpus.
- encode: MB/s of UTF-8 text turned into ids, one thread, best of --repeats, for ours (tiktoken with
  our vocabulary) and each reference encoding available offline (GPT-2 needs a tiktoken cache;
  cl100k comes with bpe-openai, which runs its own Rust encoder, not tiktoken's). To compare
  engines as well as vocabularies, cl100k is also timed in tiktoken, built from bpe-openai's ranks.

Examples:
    python -m bench.bench_tokenizer
    python -m bench.bench_tokenizer --vocab-size 32768 --references gpt2,cl100k,o200k
"""

import argparse
import time

from nanochat.common import UserError, run_main
from nanochat.tokenizer import RustBPETokenizer, get_reference_encoding


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary to train (the CPU demo's size)")
    p.add_argument("--references", type=str, default="gpt2,cl100k", help="comma-separated reference encodings")
    p.add_argument("--repeats", type=int, default=3, help="encode timings are the best of this many")
    return p.parse_args(argv)


def best_seconds(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    args = parse_args(argv)
    from nanochat.dataset import EMBEDDED_DIR, parquets_iter_batched
    train_docs = [doc for batch in parquets_iter_batched("train", data_dir=EMBEDDED_DIR) for doc in batch]
    val_text = "\n".join(doc for batch in parquets_iter_batched("val", data_dir=EMBEDDED_DIR) for doc in batch)
    train_chars = sum(len(d) for d in train_docs)

    t0 = time.perf_counter()
    tokenizer = RustBPETokenizer.train_from_iterator(iter(train_docs), args.vocab_size)
    train_s = time.perf_counter() - t0
    print(f"train: {tokenizer.get_vocab_size():,} tokens from {train_chars:,} characters of the embedded corpus in {train_s:.2f}s")

    n_bytes = len(val_text.encode("utf-8"))
    print(f"encode: {n_bytes / 1e6:.2f} MB of the embedded corpus's val split, 1 thread, best of {args.repeats}")
    ours_s = best_seconds(lambda: tokenizer.encode(val_text), args.repeats)
    ours_mbs = n_bytes / ours_s / 1e6
    print(f"  {'ours (tiktoken)':<28} {ours_mbs:7.2f} MB/s")
    for name in [n.strip() for n in args.references.split(",") if n.strip()]:
        try:
            ref = get_reference_encoding(name)
        except UserError as e:
            print(f"  {name:<28} left out: {e}")
            continue
        ref.encode("warm up")
        ref_s = best_seconds(lambda: ref.encode(val_text), args.repeats)
        ref_mbs = n_bytes / ref_s / 1e6
        label = f"{ref.name} ({ref.source})"
        print(f"  {label:<28} {ref_mbs:7.2f} MB/s   ours / {ref.name} = {ours_mbs / ref_mbs:.2f}x")

    same_engine = cl100k_in_tiktoken()
    if same_engine is not None:
        same_engine.encode_ordinary("warm up")
        ref_s = best_seconds(lambda: same_engine.encode_ordinary(val_text), args.repeats)
        ref_mbs = n_bytes / ref_s / 1e6
        print(f"  {'cl100k_base (tiktoken)':<28} {ref_mbs:7.2f} MB/s   ours / cl100k_base = {ours_mbs / ref_mbs:.2f}x  (same engine)")


def cl100k_in_tiktoken():
    """A tiktoken.Encoding of cl100k built from the ranks bpe-openai ships, or None without it."""
    import warnings
    import tiktoken
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from bpe_openai import registry
        except ImportError:
            return None
        spec = registry.cl100k_base()
    return tiktoken.Encoding(spec["name"], pat_str=spec["pat_str"], mergeable_ranks=spec["mergeable_ranks"],
                             special_tokens=spec["special_tokens"])


if __name__ == "__main__":
    run_main(main)
