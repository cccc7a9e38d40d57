"""
Base model evaluation: the CORE score (22 in-context tasks, nanochat/core_eval.py), bits per byte
on train/val, and greedy samples.

Pipeline position: after pretraining; logs the "Base model evaluation" section of the report
(the CORE cell of the summary table) and writes a per-task CSV to $NANOCHAT_BASE_DIR/base_eval/.
The eval bundle is downloaded once into $NANOCHAT_BASE_DIR/eval_bundle/ (or use --bundle-dir).

Examples:
    python -m scripts.base_eval                                  # core, bpb and samples
    python -m scripts.base_eval --eval core --max-per-task 100   # a quicker CORE estimate
    python -m scripts.base_eval --eval core --bundle-dir ./eval_bundle -g d4 -s 2000
    NANOCHAT_EVAL_BUNDLE_URL=http://mirror.local/eval_bundle.zip python -m scripts.base_eval --eval core
    torchrun --standalone --nproc_per_node=8 -m scripts.base_eval
"""

import os
import csv
import time
import argparse

from nanochat.common import (compute_init, compute_cleanup, print0, run_main, UserError, get_base_dir, add_device_arg,
                             ArgumentParser, int_range)
from nanochat.checkpoint_manager import add_checkpoint_args, load_model_from_args
from nanochat.core_eval import get_bundle, evaluate_core
from nanochat.loss_eval import evaluate_split_bpb
from nanochat.tokenizer import get_token_bytes
from nanochat.engine import complete_prompts

EVALS = ("core", "bpb", "sample")


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.base_eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", default="core,bpb,sample", help="comma-separated: core, bpb, sample")
    add_checkpoint_args(p, "base")
    add_device_arg(p)
    p.add_argument("--max-per-task", type=int_range(1, special=(-1,)), default=-1, help="items per CORE task (-1: all)")
    p.add_argument("--tasks", default="", help="comma-separated CORE task labels (default: all 22)")
    p.add_argument("--bundle-dir", default=None, help="an unpacked eval bundle folder (default: download and cache)")
    p.add_argument("--bundle-url", default=None, help="where to download eval_bundle.zip from "
                                                      "(default $NANOCHAT_EVAL_BUNDLE_URL or the public copy)")
    p.add_argument("--device-batch-size", type=int_range(1, 65536), default=32, help="rows per forward pass for bpb")
    p.add_argument("--split-tokens", type=int_range(1, 10**12), default=20 * 524288, help="tokens per split for bpb")
    p.add_argument("--data-dir", default=None, help="folder of .parquet/.txt/.jsonl for bpb (default: as training)")
    return p.parse_args(argv)


def write_csv(path, results, core):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Task", "Accuracy", "Centered", "Evaluated", "Skipped"])
        for r in results:
            w.writerow([r["label"], f"{r['accuracy']:.6f}", f"{r['centered']:.6f}", r["evaluated"], r["skipped"]])
        w.writerow(["CORE", "", f"{core:.6f}", "", ""])


def main(argv=None):
    args = parse_args(argv)
    evals = [e.strip() for e in args.eval.split(",") if e.strip()]
    bad = [e for e in evals if e not in EVALS]
    if bad or not evals:
        raise UserError(f"--eval {args.eval!r}: choose from {', '.join(EVALS)} (comma-separated)")
    # find (or download) the bundle before loading a model, so a missing bundle fails fast
    bundle_dir = get_bundle(args.bundle_dir, args.bundle_url) if "core" in evals else None
    rt = compute_init(args.device_type)
    model, tokenizer, meta, (_, model_tag, step) = load_model_from_args(args, rt.device)
    model_name = f"{args.source} {model_tag} step {step}"
    figures = {"Model": model_name}
    lines = []

    if "core" in evals:
        t0 = time.time()

        def show(r):
            print0(f"{r['label']:<35} accuracy {r['accuracy']:.4f} | centered {r['centered']:+.4f} | "
                   f"{r['evaluated']} items" + (f" ({r['skipped']} malformed skipped)" if r["skipped"] else ""))

        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
        with rt.autocast():
            result = evaluate_core(model, tokenizer, bundle_dir, args.max_per_task, rt.rank, rt.world_size,
                                   tasks=tasks, on_task=show)
        core = result["core"]
        print0(f"CORE: {core:.4f} ({len(result['tasks'])} tasks in {time.time() - t0:.1f}s)")
        figures["CORE"] = core
        figures.update({r["label"]: r["centered"] for r in result["tasks"]})
        if rt.master:
            csv_path = os.path.join(get_base_dir(), "base_eval", f"{args.source}_{model_tag}_{step:06d}.csv")
            write_csv(csv_path, result["tasks"], core)
            print0(f"wrote {csv_path}")

    if "bpb" in evals:
        token_bytes = get_token_bytes(rt.device)
        for split in ("train", "val"):
            bpb = evaluate_split_bpb(model, tokenizer, split, args.device_batch_size, model.config.sequence_len,
                                     args.split_tokens, token_bytes, rt.rank, rt.world_size, args.data_dir,
                                     rt.autocast)
            figures[f"{split} bpb"] = bpb
            print0(f"{split} bpb: {bpb:.4f}")

    if "sample" in evals and rt.master:
        for line in complete_prompts(model, tokenizer):
            print0("sample: " + line.replace("\n", " "))
            lines.append(f"sample: {line!r}")

    if rt.master:
        from nanochat.report import get_report, BASE_EVAL_SECTION
        get_report().log(section=BASE_EVAL_SECTION, data=[figures, *lines])
    compute_cleanup()
    return figures


if __name__ == "__main__":
    run_main(main)
