"""
Benchmark inference: what the KV cache buys, prefill speed, and batched decoding, in one run.

- decode with vs without the KV cache: ms per generated token after a prompt of 128 / 512 / 1024
  tokens. Without a cache (GPT.generate, the reference) every new token re-reads the whole
  context, so its cost grows with the context; with the cache (Engine) a new token costs one
  position. The ratio is the speed-up.
- decode at batch 1 against the weight-matmul floor: the same steps timed in turn with the
  model's weight matmuls alone (every nn.Linear on a (1, C) input, what one token cannot do
  without). The ratio says how much of a step goes to everything else (attention, norms, rotary,
  the cache, Python).
- prefill: tokens/s of running a prompt through the model once while filling the cache.
- batch decode: tokens/s of Engine rows decoding together (num_samples 1 / 4 / 16), next to the
  weight matmuls of that many rows alone: the most that batching could buy if nothing else cost.
- sampling: one token per row drawn by torch.multinomial and by engine.draw (inverse transform).
- different prompts: --prompts prompts of different lengths (half the first context up to all
  of it) answered one at a time, then all in one left-padded batch, as evaluation does; the
  time includes the prefill.

Decode cost is the time from the first generated token to the N-th, divided by N - 1: the clock
starts after the prompt's prefill, so only decoding is timed. Timings are the best of --repeats. The model is the CPU demo's size
(depth 4, dim 256, head dim 64, vocab 4096), randomly initialised: speed does not depend on the
weights. The Engine gets a stand-in tokenizer whose special tokens lie outside the vocabulary, so
no row ever stops early and every run generates exactly the tokens asked for.

Examples:
    python -m bench.bench_engine
    python -m bench.bench_engine --contexts 128,512,1024,2048 --device-type cuda
"""

import time
import argparse

import torch
import torch.nn.functional as F

from nanochat.common import compute_init, run_main, UserError
from nanochat.gpt import config_from_depth, build_model
from nanochat.engine import Engine, KVCache, draw
from bench.bench_peer import StandInTokenizer  # (that file imports no torch at its top: its workers need that)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--sequence-len", type=int, default=256, help="training context (rotary tables cover 10x)")
    p.add_argument("--contexts", type=str, default="128,512,1024", help="prompt lengths for cache vs no cache")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per timing")
    p.add_argument("--samples", type=str, default="1,4,16", help="num_samples for batch decoding")
    p.add_argument("--prompts", type=int, default=16, help="different prompts decoded one by one, then together")
    p.add_argument("--repeats", type=int, default=3, help="each timing is the best of this many")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--device-type", type=str, default="cpu", help="cpu|cuda|mps (empty: autodetect)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this process's CPU time (with 1 thread on a machine others are using: "
                        "it leaves out the time the others took)")
    return p.parse_args(argv)


clock = time.perf_counter  # main() switches it to time.process_time for --clock cpu


def best_time(fn, repeats, sync):
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = clock()
        fn()
        sync()
        best = min(best, clock() - t0)
    return best


def decode_seconds_per_step(make_iterator, n, repeats, sync):
    """Seconds per decode step: the clock runs from the first yielded token to the n-th."""
    best = float("inf")
    for _ in range(repeats):
        iterator = make_iterator()
        next(iterator)  # prefill + first token, not timed
        sync()
        t0 = clock()
        for _ in range(n - 1):
            next(iterator)
        sync()
        best = min(best, (clock() - t0) / (n - 1))
        iterator.close()
    return best


def weight_matmul_floor(model, rows=1):
    """A function that runs every weight matmul of one decode step of `rows` rows, and nothing else."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(rows, w.size(1), dtype=w.dtype, device=w.device) for w in weights]

    @torch.inference_mode()
    def step():
        for x, w in zip(inputs, weights):
            F.linear(x, w)
    return step


def main(argv=None):
    args = parse_args(argv)
    try:
        contexts = [int(c) for c in args.contexts.split(",")]
        samples = [int(s) for s in args.samples.split(",")]
    except ValueError:
        raise UserError("--contexts and --samples take comma-separated whole numbers, e.g. 128,512,1024") from None
    if args.new_tokens < 2 or args.repeats < 1 or args.prompts < 1:
        raise UserError("--new-tokens must be at least 2, --repeats and --prompts at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rt = compute_init(args.device_type)
    config = config_from_depth(args.depth, args.vocab_size, args.sequence_len, head_dim=args.head_dim,
                               window_pattern="L")
    model = build_model(config, rt.device)
    model.eval()
    longest = max(contexts) + args.new_tokens
    if longest > model.rotary_seq_len:
        raise UserError(f"context {max(contexts)} + {args.new_tokens} new tokens is past the model's rotary table "
                        f"({model.rotary_seq_len}); raise --sequence-len")
    engine = Engine(model, StandInTokenizer(args.vocab_size))
    gen = torch.Generator().manual_seed(0)
    sync = rt.synchronize
    n = args.new_tokens
    print(f"model: depth {config.n_layer}, dim {config.n_embd}, {config.n_head} heads, vocab {config.vocab_size} "
          f"| {rt.device_type}, {torch.get_num_threads()} thread(s) | {n} new tokens, best of {args.repeats}")

    print("\ndecode, ms per token   context    no cache    KV cache    speed-up")
    for ctx in contexts:
        prompt = torch.randint(0, args.vocab_size, (ctx,), generator=gen).tolist()
        no_cache = decode_seconds_per_step(lambda: model.generate(prompt, n, temperature=0.0), n, args.repeats, sync)
        cached = decode_seconds_per_step(lambda: engine.generate(prompt, 1, max_tokens=n, temperature=0.0), n,
                                         args.repeats, sync)
        print(f"{'':22} {ctx:7d} {1000 * no_cache:11.2f} {1000 * cached:11.2f} {no_cache / cached:10.1f}x")

    ctx = contexts[0]
    prompt = torch.randint(0, args.vocab_size, (ctx,), generator=gen).tolist()
    floor_step = weight_matmul_floor(model)

    def floor_run():
        for _ in range(n - 1):
            floor_step()
    decode, floor = float("inf"), float("inf")
    for _ in range(args.repeats):  # in turn, so that both see the same machine
        decode = min(decode, decode_seconds_per_step(lambda: engine.generate(prompt, 1, max_tokens=n, temperature=0.0),
                                                     n, 1, sync))
        floor = min(floor, best_time(floor_run, 1, sync) / (n - 1))
    print(f"\nbatch-1 decode vs the weight-matmul floor (context {ctx})")
    print(f"{'':22} decode {1000 * decode:7.2f} ms/token ({1 / decode:,.0f} tok/s) | weight matmuls alone "
          f"{1000 * floor:7.2f} ms ({1 / floor:,.0f} tok/s) | decode / floor {decode / floor:.2f}x")

    print("\nprefill                context    tokens/s")
    for ctx in contexts:
        ids = torch.randint(0, args.vocab_size, (1, ctx), generator=gen).to(rt.device)

        def prefill():
            with torch.inference_mode():
                model(ids, kv_cache=KVCache.for_model(model, 1, ctx))
        print(f"{'':22} {ctx:7d} {ctx / best_time(prefill, args.repeats, sync):11,.0f}")

    ctx = contexts[0]
    prompt = torch.randint(0, args.vocab_size, (ctx,), generator=gen).tolist()
    # the weight matmuls of several rows cost more than those of one (more arithmetic, and on a CPU
    # a matrix of a few rows takes a slower path than a vector): their ratio bounds what batching buys
    print(f"\nbatch decode (context {ctx}, temperature 1)")
    print(f"{'':22} rows    tokens/s    vs 1 row | weight matmuls alone: tokens/s    vs 1 row")
    single = single_floor = None
    for rows in samples:
        per_step = decode_seconds_per_step(
            lambda: engine.generate(prompt, rows, max_tokens=n, temperature=1.0, seed=1), n, args.repeats, sync)
        floor_step = weight_matmul_floor(model, rows)
        floor_tps = rows * (n - 1) / best_time(lambda: [floor_step() for _ in range(n - 1)], args.repeats, sync)
        tps = rows / per_step
        single, single_floor = single or tps, single_floor or floor_tps
        print(f"{'':22} {rows:4d} {tps:11,.0f} {tps / single:10.1f}x | {'':21}{floor_tps:11,.0f} "
              f"{floor_tps / single_floor:7.1f}x")

    # engine.draw throws one random number per row; torch.multinomial one per vocabulary entry
    print(f"\nsampling one token per row (vocab {config.vocab_size})  rows  multinomial      draw  speed-up")
    for rows in samples:
        probs = torch.randn(rows, config.vocab_size, generator=gen).softmax(-1).to(rt.device)
        rng = torch.Generator(device=rt.device).manual_seed(0)
        times = [best_time(lambda: [sample(probs, rng) for _ in range(20)], args.repeats, sync) / 20
                 for sample in (lambda p, g: torch.multinomial(p, 1, generator=g), draw)]
        print(f"{'':40} {rows:4d} {1e6 * times[0]:9.0f} us {1e6 * times[1]:6.0f} us {times[0] / times[1]:8.1f}x")

    lengths = torch.randint(max(1, ctx // 2), ctx + 1, (args.prompts,), generator=gen).tolist()
    prompts = [torch.randint(0, args.vocab_size, (length,), generator=gen).tolist() for length in lengths]

    def run(batches):
        for batch in batches:
            for _ in engine.generate(batch, 1, max_tokens=n, temperature=0.0):
                pass
    alone = best_time(lambda: run(prompts), args.repeats, sync)
    together = best_time(lambda: run([prompts]), args.repeats, sync)
    print(f"\n{args.prompts} different prompts ({min(lengths)}-{max(lengths)} tokens), {n} new tokens each, prefill included")
    print(f"{'':22} one at a time {1000 * alone:9.1f} ms | in one batch {1000 * together:9.1f} ms | "
          f"speed-up {alone / together:.1f}x")


if __name__ == "__main__":
    run_main(main)
