"""
Pretraining: train the base model from scratch on the pretraining text.

Pipeline position: after the tokenizer (scripts/tok_train.py); writes base_checkpoints/<tag>/,
which midtraining (scripts/mid_train.py) and the evaluations start from.

One batch, followed with a finger, in the loop at the bottom of main(): DataLoader packs
documents into (B, T) rows -> the GPT returns the mean cross-entropy -> loss.backward(),
accumulated over micro-batches until --total-batch-size tokens -> the scheduled learning rate
(training.lr_multiplier) -> optimizer.step() of MuonAdamW -> metrics.jsonl line + progress line ->
every --save-every steps a checkpoint that --resume-from-step continues exactly. The small pieces
it calls (schedule, save/resume, records) are in nanochat/training.py.

Examples:
    python -m scripts.base_train --depth 4 --max-seq-len 256 --num-iterations 200
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train --depth 20
    python -m scripts.base_train --depth 4 --resume-from-step 100
    python -m scripts.base_train --depth 4 --max-seq-len 256 --num-iterations 200 --upstream-arch --model-tag d4_up
"""

import time
import math
import argparse

import torch

from nanochat.common import (compute_init, compute_cleanup, print0, get_peak_flops, mfu_percent, run_main, add_device_arg,
                             UserError, format_duration, ArgumentParser, int_range, float_range, nonneg_int,
                             random_seed, fraction)
from nanochat.gpt import config_from_depth, build_model, UPSTREAM_ARCH, CONFIG_LIMITS
from nanochat.dataloader import DataLoader
from nanochat.loss_eval import evaluate_bpb, check_val_fills_batch
from nanochat.engine import complete_prompts
from nanochat import checkpoint_manager as cm
from nanochat import training as tr
from nanochat.tracking import add_logger_arg, make_logger


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.base_train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # run
    p.add_argument("--run", type=str, default="dummy", help="run name (recorded in the meta and report)")
    add_logger_arg(p)
    add_device_arg(p)
    p.add_argument("--model-tag", type=str, default=None, help="checkpoint folder name (default d<depth>)")
    p.add_argument("--data-dir", type=str, default=None, help="folder of .parquet/.txt/.jsonl (default: downloaded shards, else the embedded corpus)")
    p.add_argument("--seed", type=random_seed, default=42,
                   help="random seed of the run (initial weights and everything else drawn at random)")
    # model
    p.add_argument("--depth", type=int_range(1, CONFIG_LIMITS["n_layer"]), default=20,
                   help="number of layers; sets the model size")
    p.add_argument("--aspect-ratio", type=int_range(1, 4096), default=64, help="model dim = depth x aspect ratio")
    p.add_argument("--head-dim", type=int_range(2, 4096), default=128, help="attention head dimension")
    p.add_argument("--n-kv-head", type=nonneg_int, default=0, help="KV heads for grouped-query attention (0: same as heads)")
    p.add_argument("--max-seq-len", type=int_range(2, CONFIG_LIMITS["sequence_len"]), default=2048, help="context length")
    p.add_argument("--window-pattern", type=str, default="SSSL", help="per-layer attention windows, S=half L=full")
    # upstream nanochat's later architecture pieces (nanochat/gpt.py), to compare with ours
    p.add_argument("--upstream-arch", action="store_true",
                   help="upstream nanochat's architecture (karpathy/nanochat 92d63d4, gpt.UPSTREAM_ARCH): smear, "
                        "backout, value gate on 12 channels with range 3, q/k x1.2 after QK-norm, rotary base 100000, "
                        "S = a quarter of the context rounded up to 128; our init and optimizer otherwise")
    p.add_argument("--smear", action="store_true", help="only upstream's smear: each position adds a gated share "
                                                         "of the previous token's embedding")
    p.add_argument("--backout", action="store_true", help="only upstream's backout: subtract a learned share of "
                                                           "the middle layer's output before the LM head")
    # length
    p.add_argument("--num-iterations", type=int_range(1, 10**9, special=(-1,)), default=-1,
                   help="explicit number of steps (-1: derive)")
    p.add_argument("--target-flops", type=float_range(0, 1e30, low_open=True, special=(-1,)), default=-1.0,
                   help="train for this many FLOPs")
    p.add_argument("--target-param-data-ratio", type=float_range(0, 1e6, low_open=True), default=20.0,
                   help="tokens = ratio x scaling params (Chinchilla: 20)")
    # batch
    p.add_argument("--device-batch-size", type=int_range(1, 65536), default=32, help="rows per forward/backward per process")
    p.add_argument("--total-batch-size", type=int_range(1, 2**40), default=524288, help="tokens per optimizer step")
    # optimizer
    tr.add_optimizer_args(p)
    p.add_argument("--warmup-ratio", type=fraction, default=0.0, help="fraction of the steps over which the LR rises linearly from 0")
    p.add_argument("--warmdown-ratio", type=fraction, default=0.4, help="fraction of the steps at the end over which the LR decays linearly")
    p.add_argument("--final-lr-frac", type=fraction, default=0.0, help="the LR at the end of the warmdown, as a fraction of the peak")
    tr.add_compile_arg(p)
    # evaluation and saving
    p.add_argument("--eval-every", type=int_range(1, special=(-1,)), default=250, help="val bpb every N steps (-1: never)")
    p.add_argument("--eval-tokens", type=int_range(1, 10**12), default=10 * 524288, help="tokens per val bpb evaluation")
    p.add_argument("--core-metric-every", type=int_range(1, special=(-1,)), default=2000,
                   help="CORE score every N steps (-1: never)")
    p.add_argument("--core-metric-max-per-task", type=int_range(1, special=(-1,)), default=500,
                   help="items per task in the periodic CORE score (-1: all)")
    p.add_argument("--sample-every", type=int_range(1, special=(-1,)), default=2000,
                   help="print samples every N steps (-1: never)")
    p.add_argument("--save-every", type=int_range(1, special=(-1,)), default=-1,
                   help="checkpoint every N steps (the last step is always saved)")
    p.add_argument("--resume-from-step", type=int_range(1, special=(-1,)), default=-1,
                   help="continue a run from its checkpoint at this step")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    user_config = vars(args).copy()
    rt = compute_init(args.device_type, seed=args.seed)
    from nanochat.tokenizer import get_tokenizer, get_token_bytes
    tokenizer = get_tokenizer()
    token_bytes = get_token_bytes(rt.device)
    vocab_size = tokenizer.get_vocab_size()
    if args.eval_every > 0:  # refuse now a val split too small to measure, not with an inf val bpb later
        check_val_fills_batch(tokenizer, args.device_batch_size, args.max_seq_len, args.data_dir, rt.rank, rt.world_size)

    # -------------------------------------------------------------------------
    # the model, the length of the run and the optimizer
    options = dict(UPSTREAM_ARCH) if args.upstream_arch else {}
    options.update({name: True for name in ("smear", "backout") if getattr(args, name)})
    config = config_from_depth(args.depth, vocab_size, args.max_seq_len, args.aspect_ratio, args.head_dim,
                               args.n_kv_head or None, args.window_pattern, **options)
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
    optimizer = tr.build_optimizer(model, user_config, distributed=rt.ddp)

    # -------------------------------------------------------------------------
    # start or resume, then the data
    start_step, loader_state, loop_state, val_bpb = tr.start_or_resume(
        ckpt_dir, args.resume_from_step, model, optimizer, rt)
    train_loader = DataLoader(tokenizer, args.device_batch_size, args.max_seq_len, "train", rt.device,
                              args.data_dir, rt.rank, rt.world_size, state=loader_state)
    batches = iter(train_loader)

    eval_steps = max(1, args.eval_tokens // (args.device_batch_size * args.max_seq_len * rt.world_size))
    logger = make_logger(args, "base", user_config, ckpt_dir)  # --logger: wandb, trackio, tensorboard or none

    def run_val():
        """Bits per byte on the val split, from its start each time (the same tokens at every eval)."""
        val_batches = iter(DataLoader(tokenizer, args.device_batch_size, args.max_seq_len, "val", rt.device,
                                      args.data_dir, rt.rank, rt.world_size, repeat=False))
        model.eval()
        bpb = evaluate_bpb(model, val_batches, eval_steps, token_bytes, rt.autocast)
        model.train()
        return bpb

    train_model = tr.compile_for_training(model, args.compile, rt.device_type)
    peak_flops, peak_desc = get_peak_flops(rt.device_type)
    print0(f"peak for MFU: {peak_desc}" + (f" = {peak_flops / 1e9:,.0f} GFLOP/s" if peak_flops else ""))

    if args.eval_every > 0 and start_step == 0:
        val_bpb = run_val()
        print0(f"step 00000 | val bpb {val_bpb:.4f} (untrained)")
        logger.log({"val_bpb": val_bpb}, 0)  # the tracker only: metrics.jsonl counts steps done, from 1

    # -------------------------------------------------------------------------
    # the training loop
    smooth = tr.EMA(0.9, loop_state["smooth_train_loss"], loop_state["smooth_count"])
    progress = tr.Progress(num_iterations, start_step)
    session_start_time = loop_state["total_training_time"]
    train_loss = None
    for step in range(start_step, num_iterations):
        done = step + 1  # steps finished after this one: what the logs and checkpoints count
        last = done == num_iterations
        rt.synchronize()
        t0 = time.time()

        # forward and backward over grad_accum micro-batches; the gradients add up in .grad
        loss_sum = torch.zeros((), device=rt.device)
        step_tokens = 0
        for _ in range(grad_accum):
            x, y = next(batches)  # (B, T) inputs, (B, T) targets
            with rt.autocast():
                loss = train_model(x, y)  # mean cross-entropy of the micro-batch
            loss_sum += loss.detach()
            step_tokens += x.numel()
            loss = loss / grad_accum  # so the summed gradients are those of the mean over the whole step
            loss.backward()
        # the update, at this step's learning rate
        lr_mult = tr.lr_multiplier(step, num_iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
        lrs = tr.apply_lr(optimizer, lr_mult, step)
        optimizer.step()
        train_model.zero_grad(set_to_none=True)

        # what the step did: loss and tokens over all processes, time, throughput
        train_loss, step_tokens = tr.reduce_step(loss_sum, step_tokens, grad_accum, rt)
        rt.synchronize()
        dt = time.time() - t0
        if not math.isfinite(train_loss):
            print0(f"step {done}: the loss is {train_loss}; training diverged (try a lower learning rate)")
        loop_state["total_training_time"] += dt
        loop_state["tokens_seen"] += step_tokens
        smooth.update(train_loss)
        loop_state["smooth_train_loss"], loop_state["smooth_count"] = smooth.value, smooth.count
        tok_per_sec = step_tokens / dt
        mfu = mfu_percent(flops_per_token, tok_per_sec, peak_flops, rt.world_size)

        # evaluation, the progress line and the metrics record
        measured_val = None
        if args.eval_every > 0 and (done % args.eval_every == 0 or last):
            val_bpb = measured_val = run_val()
            loop_state["min_val_bpb"] = min(loop_state["min_val_bpb"], val_bpb)
        progress.print(step, smooth.debiased(), lr_mult, dt, tok_per_sec, mfu,
                       extra=f" | val bpb {measured_val:.4f}" if measured_val is not None else "")
        if rt.master:
            record = tr.metrics_record(done, loop_state, train_loss, smooth.debiased(), lr_mult, lrs, dt, tok_per_sec,
                                       mfu, measured_val)
            cm.append_metrics(ckpt_dir, record)
            logger.log(record, done)
        if args.core_metric_every > 0 and (done % args.core_metric_every == 0 or last):
            from nanochat.core_eval import evaluate_core_for_training
            core = evaluate_core_for_training(model, tokenizer, rt, args.core_metric_max_per_task)
            if core is not None:
                print0(f"step {done:05d} | CORE {core:.4f}")
                logger.log({"core_metric": core}, done)
        if rt.master and args.sample_every > 0 and (done % args.sample_every == 0 or last):
            model.eval()
            samples = complete_prompts(model, tokenizer)
            for line in samples:
                print0("  sample: " + line.replace("\n", " "))
            logger.log_text("samples", "\n".join(samples), done)
            model.train()

        # the checkpoint: weights, optimizer, data position and RNG, so that a resume is exact
        if last or (args.save_every > 0 and done % args.save_every == 0):
            meta = tr.stage_meta("base", done, model, user_config, num_iterations, loop_state, lr_mult, lrs, rt,
                                 val_bpb=val_bpb, train_loss=train_loss, tokens_seen=loop_state["tokens_seen"],
                                 device_batch_size=args.device_batch_size, max_seq_len=args.max_seq_len,
                                 total_batch_size=args.total_batch_size,
                                 dataloader_state_dict=train_loader.state_dict())
            tr.save_training_checkpoint(ckpt_dir, done, model, optimizer, train_loader.state_dict(), meta, rt)
            print0(f"saved checkpoint {cm.model_path(ckpt_dir, done)}")

    # -------------------------------------------------------------------------
    # the summary line and the report
    total_time = loop_state["total_training_time"]
    min_val = loop_state["min_val_bpb"]
    trained = loop_state["tokens_seen"] - start_step * args.total_batch_size  # tokens of this session
    session_time = total_time - session_start_time
    tok_per_sec = trained / session_time if session_time > 0 else 0.0
    mfu = mfu_percent(flops_per_token, tok_per_sec, peak_flops, rt.world_size)
    print0(f"done: {num_iterations} steps, {format_duration(total_time)} of training, {tok_per_sec:,.0f} tok/s"
           + (f", MFU {mfu:.1f}%" if mfu is not None else "")
           + (f" | min val bpb {min_val:.4f}" if min_val != float("inf") else ""))
    tr.log_report("Base model training", user_config, {
        "Number of parameters": num_params, "FLOPs per token": f"{flops_per_token:e}",
        "Steps": num_iterations, "Tokens": loop_state["tokens_seen"],
        "Final train loss": train_loss, "Min val bpb": min_val,
        "Training time": format_duration(total_time), "Tokens per second": round(tok_per_sec),
        "MFU": f"{mfu:.1f}% of {peak_desc}" if mfu is not None else "unknown peak"}, rt)
    logger.finish()
    compute_cleanup()


if __name__ == "__main__":
    run_main(main)
