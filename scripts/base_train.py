"""
Pretraining: train the base model from scratch on the pretraining text.

Pipeline position: after the tokenizer (scripts/tok_train.py); writes base_checkpoints/<tag>/,
which midtraining (scripts/mid_train.py) and the evaluations start from.

One batch, followed with a finger: DataLoader packs documents into (B, T) rows -> the GPT returns
the mean cross-entropy -> backward, accumulated over micro-batches until --total-batch-size tokens
-> MuonAdamW step with the scheduled learning rate -> metrics.jsonl line + progress line ->
every --save-every steps a checkpoint that --resume-from-step continues exactly.

Examples:
    python -m scripts.base_train --depth 4 --max-seq-len 256 --num-iterations 200
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train --depth 20
    python -m scripts.base_train --depth 4 --resume-from-step 100
"""

import argparse

import torch

from nanochat.common import (compute_init, compute_cleanup, print0, get_peak_flops, run_main,
                             UserError, format_duration)
from nanochat.gpt import config_from_depth, build_model
from nanochat.dataloader import DataLoader
from nanochat.loss_eval import evaluate_bpb
from nanochat.engine import complete_prompts
from nanochat import checkpoint_manager as cm
from nanochat import training as tr


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # run
    p.add_argument("--run", type=str, default="dummy", help="run name (recorded in the meta and report)")
    p.add_argument("--device-type", type=str, default="", help="cuda|cpu|mps (empty: autodetect)")
    p.add_argument("--model-tag", type=str, default=None, help="checkpoint folder name (default d<depth>)")
    p.add_argument("--data-dir", type=str, default=None, help="folder of .parquet/.txt/.jsonl (default: downloaded shards, else the embedded corpus)")
    p.add_argument("--seed", type=int, default=42)
    # model
    p.add_argument("--depth", type=int, default=20, help="number of layers; sets the model size")
    p.add_argument("--aspect-ratio", type=int, default=64, help="model dim = depth x aspect ratio")
    p.add_argument("--head-dim", type=int, default=128, help="attention head dimension")
    p.add_argument("--n-kv-head", type=int, default=0, help="KV heads for grouped-query attention (0: same as heads)")
    p.add_argument("--max-seq-len", type=int, default=2048, help="context length")
    p.add_argument("--window-pattern", type=str, default="SSSL", help="per-layer attention windows, S=half L=full")
    # length
    p.add_argument("--num-iterations", type=int, default=-1, help="explicit number of steps (-1: derive)")
    p.add_argument("--target-flops", type=float, default=-1.0, help="train for this many FLOPs")
    p.add_argument("--target-param-data-ratio", type=float, default=20.0, help="tokens = ratio x scaling params (Chinchilla: 20)")
    # batch
    p.add_argument("--device-batch-size", type=int, default=32, help="rows per forward/backward per process")
    p.add_argument("--total-batch-size", type=int, default=524288, help="tokens per optimizer step")
    # optimizer
    p.add_argument("--embedding-lr", type=float, default=0.2)
    p.add_argument("--unembedding-lr", type=float, default=0.004)
    p.add_argument("--matrix-lr", type=float, default=0.02, help="Muon learning rate")
    p.add_argument("--scalar-lr", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay of the Muon matrices")
    p.add_argument("--warmup-ratio", type=float, default=0.0)
    p.add_argument("--warmdown-ratio", type=float, default=0.4)
    p.add_argument("--final-lr-frac", type=float, default=0.0)
    p.add_argument("--compile", type=int, default=-1, help="torch.compile the model (1/0; -1: on CUDA only)")
    # evaluation and saving
    p.add_argument("--eval-every", type=int, default=250, help="val bpb every N steps (-1: never)")
    p.add_argument("--eval-tokens", type=int, default=10 * 524288, help="tokens per val bpb evaluation")
    p.add_argument("--core-metric-every", type=int, default=2000, help="CORE score every N steps (-1: never)")
    p.add_argument("--core-metric-max-per-task", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=2000, help="print samples every N steps (-1: never)")
    p.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (the last step is always saved)")
    p.add_argument("--resume-from-step", type=int, default=-1, help="continue a run from its checkpoint at this step")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    user_config = vars(args).copy()
    rt = compute_init(args.device_type, seed=args.seed)
    from nanochat.tokenizer import get_tokenizer, get_token_bytes
    tokenizer = get_tokenizer()
    token_bytes = get_token_bytes(rt.device)
    vocab_size = tokenizer.get_vocab_size()

    if args.depth < 1 or args.max_seq_len < 2 or args.device_batch_size < 1:
        raise UserError("--depth, --max-seq-len and --device-batch-size must be positive")
    config = config_from_depth(args.depth, vocab_size, args.max_seq_len, args.aspect_ratio, args.head_dim,
                               args.n_kv_head or None, args.window_pattern)
    if config.n_head % config.n_kv_head:
        raise UserError(f"--n-kv-head {config.n_kv_head} must divide the number of heads {config.n_head}")
    model = build_model(config, rt.device)
    num_params = model.num_params()
    num_scaling = model.num_scaling_params()
    flops_per_token = model.estimate_flops()
    grad_accum = tr.grad_accum_steps(args.total_batch_size, args.device_batch_size, args.max_seq_len, rt.world_size)
    num_iterations, length_from = tr.training_length(args.num_iterations, args.target_flops,
                                                     args.target_param_data_ratio, flops_per_token, num_scaling,
                                                     args.total_batch_size)
    model_tag = args.model_tag or f"d{args.depth}"
    ckpt_dir = cm.checkpoint_dir("base", model_tag)
    print0(f"model {model_tag}: {config.n_layer} layers, dim {config.n_embd}, {config.n_head} heads "
           f"({config.n_kv_head} kv), vocab {vocab_size}, context {config.sequence_len}")
    print0(f"parameters: {num_params:,} ({num_scaling:,} counted for scaling) | FLOPs/token {flops_per_token:.3e}")
    print0(f"steps: {num_iterations} (from {length_from}) x {args.total_batch_size:,} tokens "
           f"= {num_iterations * args.total_batch_size:,} tokens | grad accumulation {grad_accum} | "
           f"{rt.world_size} process(es) on {rt.device_type}")

    optimizer = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                       matrix_lr=args.matrix_lr, scalar_lr=args.scalar_lr,
                                       weight_decay=args.weight_decay, distributed=rt.ddp)
    start_step, loader_state, loop_state, val_bpb = tr.start_or_resume(
        ckpt_dir, args.resume_from_step, model, optimizer, rt)

    train_loader = DataLoader(tokenizer, args.device_batch_size, args.max_seq_len, "train", rt.device,
                              args.data_dir, rt.rank, rt.world_size, state=loader_state)
    batches = iter(train_loader)

    def val_batches():
        return iter(DataLoader(tokenizer, args.device_batch_size, args.max_seq_len, "val", rt.device,
                               args.data_dir, rt.rank, rt.world_size, repeat=False))

    eval_steps = max(1, args.eval_tokens // (args.device_batch_size * args.max_seq_len * rt.world_size))
    use_compile = args.compile == 1 or (args.compile == -1 and rt.device_type == "cuda")
    train_model = torch.compile(model, dynamic=False) if use_compile else model
    peak_flops, peak_desc = get_peak_flops(rt.device_type)
    print0(f"peak for MFU: {peak_desc}" + (f" = {peak_flops / 1e9:,.0f} GFLOP/s" if peak_flops else ""))

    def run_val():
        model.eval()
        bpb = evaluate_bpb(model, val_batches(), eval_steps, token_bytes, rt.autocast)
        model.train()
        return bpb

    if args.eval_every > 0 and start_step == 0:
        val_bpb = run_val()
        print0(f"step 00000 | val bpb {val_bpb:.4f} (untrained)")

    def lr_schedule(step):
        return tr.lr_multiplier(step, num_iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)

    def make_meta(done, val_bpb, train_loss, lr_mult, lrs):
        return {
            "step": done, "val_bpb": val_bpb, "model_config": config.to_dict(), "user_config": user_config,
            "device_batch_size": args.device_batch_size, "max_seq_len": args.max_seq_len,
            "total_batch_size": args.total_batch_size, "dataloader_state_dict": train_loader.state_dict(),
            "loop_state": loop_state, "train_loss": train_loss,
            "lr": {"multiplier": lr_mult, **lrs}, "num_iterations": num_iterations,
            "tokens_seen": loop_state["tokens_seen"], "world_size": rt.world_size, "stage": "base",
        }

    def after_step(done, last):
        if args.core_metric_every > 0 and (done % args.core_metric_every == 0 or last):
            from nanochat.core_eval import evaluate_core_for_training
            core = evaluate_core_for_training(model, tokenizer, rt, args.core_metric_max_per_task)
            if core is not None:
                print0(f"step {done:05d} | CORE {core:.4f}")
        if rt.master and args.sample_every > 0 and (done % args.sample_every == 0 or last):
            model.eval()
            for line in complete_prompts(model, tokenizer):
                print0("  sample: " + line.replace("\n", " "))
            model.train()

    loop_state_at_start = loop_state["total_training_time"]
    train_loss, val_bpb = tr.run_training_steps(
        model=model, optimizer=optimizer, rt=rt, batches=batches, loader=train_loader,
        num_iterations=num_iterations, start_step=start_step, grad_accum=grad_accum, ckpt_dir=ckpt_dir,
        loop_state=loop_state, lr_schedule=lr_schedule, run_val=run_val, eval_every=args.eval_every,
        save_every=args.save_every, make_meta=make_meta, flops_per_token=flops_per_token,
        peak_flops=peak_flops, train_model=train_model, val_bpb=val_bpb, after_step=after_step)

    total_time = loop_state["total_training_time"]
    min_val = loop_state["min_val_bpb"]
    trained = loop_state["tokens_seen"] - start_step * args.total_batch_size  # tokens of this session
    session_time = total_time - (loop_state_at_start or 0.0)
    tok_per_sec = trained / session_time if session_time > 0 else 0.0
    mfu = 100 * flops_per_token * tok_per_sec / (peak_flops * rt.world_size) if peak_flops else None
    print0(f"done: {num_iterations} steps, {format_duration(total_time)} of training, {tok_per_sec:,.0f} tok/s"
           + (f", MFU {mfu:.1f}%" if mfu is not None else "")
           + (f" | min val bpb {min_val:.4f}" if min_val != float("inf") else ""))
    if rt.master:
        from nanochat.report import get_report
        get_report().log(section="Base model training", data=[
            user_config,
            {"Number of parameters": num_params, "FLOPs per token": f"{flops_per_token:e}",
             "Steps": num_iterations, "Tokens": loop_state["tokens_seen"],
             "Final train loss": train_loss, "Min val bpb": min_val,
             "Training time": format_duration(total_time), "Tokens per second": round(tok_per_sec),
             "MFU": f"{mfu:.1f}% of {peak_desc}" if mfu is not None else "unknown peak"},
        ])
    compute_cleanup()


if __name__ == "__main__":
    run_main(main)
