"""
Training throughput of the CPU demo model: tokens/s and MFU against the matmul peak measured in
the same run, plus where the time goes (forward, backward, optimizer).

    python -m bench.bench_train                         # the demo model (depth 4, seq 256)
    python -m bench.bench_train --depth 6 --device-batch-size 8 --threads 2

MFU = (FLOPs per token from model.estimate_flops()) x tokens/s / peak FLOP/s, where the peak is
an fp32 square-matmul measured right before, with the same thread count. Figures from one run
only (these machines are noisy); read the ratios, not the absolute numbers.
"""

import time
import argparse

import torch

from nanochat.common import measure_cpu_matmul_flops
from nanochat.gpt import config_from_depth, build_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--device-batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = config_from_depth(args.depth, args.vocab_size, args.max_seq_len, head_dim=args.head_dim)
    model = build_model(config, "cpu")
    opt = model.setup_optimizers()
    flops_per_token = model.estimate_flops()
    B, T = args.device_batch_size, args.max_seq_len
    x = torch.randint(0, args.vocab_size, (B, T))
    y = torch.randint(0, args.vocab_size, (B, T))
    peak = measure_cpu_matmul_flops(seconds=1.0)
    times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for step in range(args.steps + 2):
        t0 = time.perf_counter()
        loss = model(x, y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        model.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if step >= 2:  # the first steps warm up allocators and caches
            times["forward"] += t1 - t0
            times["backward"] += t2 - t1
            times["optimizer"] += t3 - t2
    total = sum(times.values())
    tok_per_sec = B * T * args.steps / total
    mfu = flops_per_token * tok_per_sec / peak
    print(f"model: depth {args.depth}, dim {config.n_embd}, {model.num_params():,} params, "
          f"{flops_per_token / 1e6:.1f} MFLOP/token, batch {B}x{T}, {torch.get_num_threads()} threads")
    print(f"matmul peak measured now: {peak / 1e9:.1f} GFLOP/s (fp32, 2048x2048)")
    print(f"training: {tok_per_sec:,.0f} tokens/s -> {flops_per_token * tok_per_sec / 1e9:.1f} GFLOP/s "
          f"-> MFU {100 * mfu:.1f}% of the measured peak")
    for k, v in times.items():
        print(f"  {k:<10} {100 * v / total:5.1f}% of step time")


if __name__ == "__main__":
    main()
