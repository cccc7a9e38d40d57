"""
Base model loss: bits per byte on the train and val splits, and a few greedy samples.

Pipeline position: after pretraining (scripts/base_train.py); logs the "Base model loss" section
of the report. Bits per byte (nanochat/loss_eval.py) does not depend on the tokenizer, so models
with different vocabularies can be compared; a val figure far above train means overfitting.

Examples:
    python -m scripts.base_loss
    python -m scripts.base_loss --split-tokens 65536 --device-batch-size 8 -g d4
    torchrun --standalone --nproc_per_node=8 -m scripts.base_loss
"""

import argparse

from nanochat.common import compute_init, compute_cleanup, print0, run_main, add_device_arg, ArgumentParser, int_range
from nanochat.checkpoint_manager import add_checkpoint_args, load_model_from_args
from nanochat.loss_eval import evaluate_split_bpb
from nanochat.tokenizer import get_token_bytes
from nanochat.engine import complete_prompts

def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.base_loss", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p, "base")
    add_device_arg(p)
    p.add_argument("--device-batch-size", type=int_range(1, 65536), default=32, help="rows per forward pass")
    p.add_argument("--split-tokens", type=int_range(1, 10**12), default=20 * 524288, help="tokens to evaluate per split")
    p.add_argument("--data-dir", default=None, help="folder of .parquet/.txt/.jsonl (default: as training)")
    p.add_argument("--max-tokens", type=int_range(0, 2**20), default=24, help="tokens per sample (0: no samples)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rt = compute_init(args.device_type)
    model, tokenizer, meta, _ = load_model_from_args(args, rt.device)
    seq_len = model.config.sequence_len
    token_bytes = get_token_bytes(rt.device)
    figures = {}
    for split in ("train", "val"):
        bpb = evaluate_split_bpb(model, tokenizer, split, args.device_batch_size, seq_len, args.split_tokens,
                                 token_bytes, rt.rank, rt.world_size, args.data_dir, rt.autocast)
        figures[f"{split} bpb"] = bpb
        print0(f"{split} bpb: {bpb:.4f}")
    samples = []
    if rt.master and args.max_tokens > 0:
        samples = complete_prompts(model, tokenizer, max_tokens=args.max_tokens)
        for line in samples:
            print0("sample: " + line.replace("\n", " "))
    if rt.master:
        from nanochat.report import get_report
        get_report().log(section="Base model loss", data=[
            {"Model": f"{args.source} step {meta.get('step')}", "Tokens per split": args.split_tokens, **figures},
            *[f"sample: {line!r}" for line in samples]])
    compute_cleanup()
    return figures


if __name__ == "__main__":
    run_main(main)
