"""
Training throughput: tokens/s and MFU of one model's training step, plus where the time goes
(forward, backward, optimizer).

    python -m bench.bench_train                         # the CPU demo model (depth 4, seq 256)
    python -m bench.bench_train --depth 6 --device-batch-size 8 --threads 2
    python -m bench.bench_train --break-even            # eager vs torch.compile: steps until compiling pays
    python -m bench.bench_train --device-type cuda --depth 12 --head-dim 128 --max-seq-len 2048 \\
        --vocab-size 32768 --device-batch-size 32 --compile 1      # a d12 step on a GPU (bench/gpu.sh)

MFU = (FLOPs per token from model.estimate_flops()) x tokens/s / peak FLOP/s (common.mfu_percent,
the one every training stage uses). On a CPU the peak is an fp32 square matmul measured in this
run (best of 5 short windows, same thread count), so that the two figures come from the same
minute of a shared machine; on a GPU it is the bf16 data-sheet value of common.GPU_PEAK_FLOPS.
Read the ratios, not the absolute numbers: these machines are noisy.
"""

import time
import argparse

import torch

from nanochat.common import compute_init, get_peak_flops, measure_cpu_matmul_flops, mfu_percent, run_main
from nanochat.gpt import config_from_depth, build_model
from nanochat.training import compile_for_training


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--device-batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--device-type", type=str, default="cpu", help="cpu|cuda|mps (empty: autodetect)")
    p.add_argument("--compile", type=int, choices=(-1, 0, 1), default=-1,
                   help="torch.compile the forward/backward (1/0; -1: on CUDA only, as base_train)")
    p.add_argument("--no-peak", action="store_true", help="skip the CPU peak measurement (tokens/s only, no MFU)")
    p.add_argument("--break-even", action="store_true",
                   help="time the eager step, then the compiled one with its compile time, in this one process, "
                        "and print after how many steps compiling pays for itself")
    return p.parse_args(argv)


def time_steps(train_model, model, opt, x, y, rt, steps, warmup=2):
    """Run warmup + steps training steps; returns the timed steps' seconds split into forward /
    backward / optimizer, the warm-up steps' seconds (a compiled model compiles in them), the loss."""
    times, warmup_seconds = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}, []
    for step in range(steps + warmup):
        rt.synchronize()
        t0 = time.perf_counter()
        with rt.autocast():
            loss = train_model(x, y)
        rt.synchronize()
        t1 = time.perf_counter()
        loss.backward()
        rt.synchronize()
        t2 = time.perf_counter()
        opt.step()
        model.zero_grad(set_to_none=True)
        rt.synchronize()
        t3 = time.perf_counter()
        if step >= warmup:  # the first steps warm up allocators, caches and the compiler
            times["forward"] += t1 - t0
            times["backward"] += t2 - t1
            times["optimizer"] += t3 - t2
        else:
            warmup_seconds.append(t3 - t0)
    return times, warmup_seconds, loss


def break_even(model, opt, x, y, rt, steps, flops_per_token, peak):
    """Eager, then compiled, in one process: the compiled step's speed-up and what compiling costs."""
    eager, eager_warmup, _ = time_steps(model, model, opt, x, y, rt, steps)
    compiled_model = compile_for_training(model, 1, rt.device_type)
    compiled, compiled_warmup, _ = time_steps(compiled_model, model, opt, x, y, rt, steps)
    t_eager, t_compiled = sum(eager.values()) / steps, sum(compiled.values()) / steps
    # compiling costs what the compiled warm-up steps took beyond the steps they would have taken eager
    cost = sum(compiled_warmup) - len(compiled_warmup) * t_eager
    saved = t_eager - t_compiled
    tokens = x.numel()
    mfu = lambda t: f", MFU {mfu_percent(flops_per_token, tokens / t, peak, 1):.1f}%" if peak else ""
    print(f"eager step {t_eager:.3f} s ({tokens / t_eager:,.0f} tok/s{mfu(t_eager)}) | compiled step {t_compiled:.3f} s "
          f"({tokens / t_compiled:,.0f} tok/s{mfu(t_compiled)}) | eager / compiled {t_eager / t_compiled:.2f}x")
    print(f"compiling cost {cost:.1f} s (the first {len(compiled_warmup)} compiled steps took "
          f"{sum(compiled_warmup):.1f} s; eager warm-up {sum(eager_warmup):.1f} s)")
    if saved > 0:
        print(f"break-even after {cost / saved:.0f} steps: compiling pays for a run longer than that")
    else:
        print("the compiled step is not faster: compiling never pays at this size")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rt = compute_init(args.device_type, seed=0)
    config = config_from_depth(args.depth, args.vocab_size, args.max_seq_len, head_dim=args.head_dim)
    model = build_model(config, rt.device)
    train_model = compile_for_training(model, args.compile, rt.device_type)
    opt = model.setup_optimizers()
    flops_per_token = model.estimate_flops()
    B, T = args.device_batch_size, args.max_seq_len
    x = torch.randint(0, args.vocab_size, (B, T), device=rt.device)
    y = torch.randint(0, args.vocab_size, (B, T), device=rt.device)
    if args.no_peak:
        peak, peak_desc = None, "not measured (--no-peak)"
    elif rt.device_type == "cpu":
        peak = measure_cpu_matmul_flops()
        peak_desc = f"CPU fp32 matmul peak measured now ({torch.get_num_threads()} thread(s), best of 5 windows)"
    else:
        peak, peak_desc = get_peak_flops(rt.device_type)
    if args.break_even:
        return break_even(model, opt, x, y, rt, args.steps, flops_per_token, peak)
    times, _, loss = time_steps(train_model, model, opt, x, y, rt, args.steps)
    if not torch.isfinite(loss):
        raise RuntimeError(f"the training loss is {loss.item()}")
    total = sum(times.values())
    tok_per_sec = B * T * args.steps / total
    mfu = mfu_percent(flops_per_token, tok_per_sec, peak, 1)
    compiled = "compiled" if train_model is not model else "eager"
    print(f"model: depth {args.depth}, dim {config.n_embd}, {model.num_params():,} params, "
          f"{flops_per_token / 1e6:.1f} MFLOP/token, batch {B}x{T}, {rt.device_type} "
          f"({torch.get_num_threads()} threads), {compiled}")
    print(f"peak: {peak_desc}" + (f" = {peak / 1e9:,.1f} GFLOP/s" if peak else ""))
    print(f"training: {tok_per_sec:,.0f} tokens/s -> {flops_per_token * tok_per_sec / 1e9:,.1f} GFLOP/s"
          + (f" -> MFU {mfu:.1f}%" if mfu is not None else " (unknown peak: no MFU)"))
    for k, v in times.items():
        print(f"  {k:<10} {100 * v / total:5.1f}% of step time")


if __name__ == "__main__":
    run_main(main)
