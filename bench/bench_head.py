"""
The head's loss on CPU: the plain softcapped cross-entropy against gpt.SoftcapCrossEntropy (the
same loss and gradient, a chunk of rows at a time), as whole training steps of one model,
alternating, in one process, so that both see the same machine.

    python -m bench.bench_head                  # the CPU demo model, 2 threads
    python -m bench.bench_head --threads 1 --steps 4

Times are the CPU time of this process (all its threads), best and median of the timed steps.
"""

import time
import argparse

import torch
import torch.nn.functional as F

import nanochat.gpt as gpt
from nanochat.common import compute_init, run_main, UserError


def plain_softcap_loss(x, W, targets):
    """What GPT.forward computes without the chunked function (its no_grad / GPU path)."""
    logits = gpt.SOFTCAP * torch.tanh((x @ W.t()).float() / gpt.SOFTCAP)
    return F.cross_entropy(logits, targets, ignore_index=-1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: leave as is)")
    p.add_argument("--steps", type=int, default=7, help="timed steps of each kind (after one warm-up step each)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--device-batch-size", type=int, default=16)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rt = compute_init("cpu", seed=0)
    model = gpt.build_model(gpt.config_from_depth(args.depth, args.vocab_size, args.max_seq_len, head_dim=64), rt.device)
    opt = model.setup_optimizers()
    B, T = args.device_batch_size, args.max_seq_len
    x, y = torch.randint(0, args.vocab_size, (B, T)), torch.randint(0, args.vocab_size, (B, T))
    heads = {"plain": plain_softcap_loss, "chunked": gpt.SoftcapCrossEntropy.apply}
    seconds = {name: [] for name in heads}
    try:
        for step in range(args.steps + 1):
            for name, head in heads.items():
                gpt.SoftcapCrossEntropy.apply = head  # what GPT.forward calls when training on CPU
                t0 = time.process_time()
                model(x, y).backward()
                opt.step()
                model.zero_grad(set_to_none=True)
                if step:  # the first step of each warms up
                    seconds[name].append(time.process_time() - t0)
    finally:
        del gpt.SoftcapCrossEntropy.apply  # back to the inherited torch.autograd.Function.apply
    print(f"depth {args.depth}, vocab {args.vocab_size}, {B}x{T} tokens per step, {torch.get_num_threads()} thread(s), "
          f"{args.steps} steps each")
    for name, s in seconds.items():
        print(f"  {name:<8} step: best {min(s):.3f} s, median {sorted(s)[len(s) // 2]:.3f} s (CPU time)")
    print(f"  plain / chunked: {min(seconds['plain']) / min(seconds['chunked']):.2f}x (best), "
          f"{sorted(seconds['plain'])[args.steps // 2] / sorted(seconds['chunked'])[args.steps // 2]:.2f}x (median)")


if __name__ == "__main__":
    run_main(main)
