"""
The training loop of the two finetuning stages: midtraining (base -> mid) and SFT (mid -> sft).

Pipeline position: scripts/mid_train.py and scripts/chat_sft.py are the commands; each adds its
own flags to add_finetune_args and calls finetune(args, stage). Both stages do the same thing with
different data and defaults: load the previous stage's checkpoint, train it on a task mixture
(nanochat_tasks/mixtures.py) with the loss on assistant tokens only (nanochat/chat_data.py), measure val
bits per byte on held-out conversations, and save checkpoints + metrics.jsonl exactly like
base_train (same keys, same exact resume), so every tool that reads a pretraining run reads these too.

The difference between the stages is the batch: midtraining packs conversations into full rows
(PackedChatLoader, many conversations per row, --total-batch-size tokens per step); SFT gives each
conversation a row of its own (PaddedChatLoader, --target-examples-per-step conversations per
step), which is closer to how the model is used when it chats.

One batch, followed with a finger, in the loop of finetune(): a (B, T) batch of rendered
conversations, targets -1 except on what the assistant writes -> the GPT's mean cross-entropy ->
loss.backward(), accumulated over the micro-batches of one step -> no warmup, then a linear
warmdown of the learning rate -> optimizer.step() -> metrics.jsonl line + progress line ->
checkpoints. The small pieces it calls are in nanochat/training.py.
"""

import time
import math

import torch

from nanochat.common import compute_init, compute_cleanup, print0, get_peak_flops, mfu_percent, add_device_arg, format_duration, \
    int_range, float_range, random_seed, fraction
from nanochat.chat_data import make_chat_loader, count_batches
from nanochat.gpt import CONFIG_LIMITS
from nanochat.loss_eval import evaluate_bpb
from nanochat import checkpoint_manager as cm
from nanochat import training as tr
from nanochat.tracking import add_logger_arg, make_logger
from nanochat_tasks.mixtures import build_mixture, is_offline_mixture

PREVIOUS_STAGE = {"mid": "base", "sft": "mid"}
REPORT_SECTION = {"mid": "Midtraining", "sft": "Chat SFT"}


def add_finetune_args(p, stage):
    """The flags both stages share; defaults follow upstream nanochat where it has them."""
    p.add_argument("--run", type=str, default="dummy", help="run name (recorded in the meta and report)")
    add_logger_arg(p)
    add_device_arg(p)
    p.add_argument("--seed", type=random_seed, default=42, help="random seed of the run (data order and everything else drawn at random)")
    tr.add_compile_arg(p)
    # what to start from and where to write
    cm.add_checkpoint_args(p, PREVIOUS_STAGE[stage])
    p.add_argument("--output-tag", type=str, default=None, help="checkpoint folder name (default: the loaded tag)")
    # data
    p.add_argument("--offline", action="store_true", help="never contact the hub: train on the offline tasks only")
    p.add_argument("--custom-json", type=str, default=None, help="add your own conversations (JSONL) to the mixture")
    p.add_argument("--synthetic-size", type=int_range(1, 10**7), default=1000,
                   help="examples per synthetic task (Identity, SpellingBee, SimpleSpelling, Arithmetic; SFT adds Refusal)")
    p.add_argument("--max-seq-len", type=int_range(2, CONFIG_LIMITS["sequence_len"], special=(-1,)), default=-1, help="row length in tokens (-1: the model's context)")
    p.add_argument("--num-iterations", type=int_range(1, 10**9, special=(-1,)), default=-1, help="optimizer steps (-1: one epoch of the mixture)")
    # optimizer
    tr.add_optimizer_args(p)
    p.add_argument("--init-lr-frac", type=float_range(0, 1, low_open=True),
                   default=1.0 if stage == "mid" else 0.02,
                   help="start at this fraction of the learning rates above")
    p.add_argument("--warmdown-ratio", type=fraction, default=0.2 if stage == "mid" else 1.0,
                   help="fraction of the steps over which the LR decays linearly")
    p.add_argument("--final-lr-frac", type=fraction, default=0.0, help="the LR at the end of the warmdown, as a fraction of the starting LR")
    # evaluation and saving
    p.add_argument("--eval-every", type=int_range(1, special=(-1,)), default=150 if stage == "mid" else 100,
                   help="val bpb every N steps and at the end (-1: never)")
    p.add_argument("--save-every", type=int_range(1, special=(-1,)), default=-1, help="checkpoint every N steps (the last step is always saved)")
    p.add_argument("--resume-from-step", type=int_range(1, special=(-1,)), default=-1, help="continue this stage's run from its checkpoint at this step")


def finetune(args, stage):
    """Run one finetuning stage ('mid' or 'sft') with the parsed flags of add_finetune_args + the stage's own."""
    assert stage in PREVIOUS_STAGE
    user_config = vars(args).copy()
    rt = compute_init(args.device_type, seed=args.seed)

    # -------------------------------------------------------------------------
    # the model of the previous stage, the task mixtures and the length of the run
    model, tokenizer, _, (source, source_tag, source_step) = cm.load_model_from_args(args, rt.device, phase="train")
    config = model.config
    B = args.device_batch_size
    T = args.max_seq_len if args.max_seq_len > 0 else config.sequence_len
    ckpt_dir = cm.checkpoint_dir(stage, args.output_tag or source_tag)
    from nanochat.tokenizer import get_token_bytes
    token_bytes = get_token_bytes(rt.device)

    train_task, task_names = build_mixture(stage, "train", args.offline, args.synthetic_size, args.custom_json)
    offline = args.offline or is_offline_mixture(task_names)  # the hub answered once or not at all
    val_task, _ = build_mixture(stage, "val", offline, args.synthetic_size, args.custom_json, announce=False)
    print0(f"{stage} mixture: {len(train_task):,} conversations from {', '.join(task_names)} "
           f"| val: {len(val_task):,}")

    if stage == "mid":
        grad_accum = tr.grad_accum_steps(args.total_batch_size, B, T, rt.world_size)
        eval_steps = max(1, args.eval_tokens // (B * T * rt.world_size))
        batch_desc = f"{args.total_batch_size:,} tokens ({B} rows x {T} x {grad_accum} accumulation x {rt.world_size})"
    else:
        grad_accum = tr.example_grad_accum_steps(args.target_examples_per_step, B, rt.world_size)
        eval_steps = args.eval_steps
        batch_desc = f"{args.target_examples_per_step} conversations ({B} rows x {grad_accum} accumulation x {rt.world_size})"

    if args.num_iterations > 0:
        num_iterations, length_from = args.num_iterations, "--num-iterations"
    else:
        if stage == "mid":  # rows depend on how conversations pack: count them with one dry pass
            batches = count_batches(lambda: make_chat_loader(stage, tokenizer, train_task, B, T, rt, repeat=False))
        else:
            batches = len(range(rt.rank, len(train_task), rt.world_size)) // B
        steps = torch.tensor(batches // grad_accum, device=rt.device)
        if rt.ddp:
            torch.distributed.all_reduce(steps, op=torch.distributed.ReduceOp.MIN)
        num_iterations, length_from = max(1, int(steps.item())), "one epoch"
    print0(f"steps: {num_iterations} (from {length_from}) x {batch_desc} | rows of {T} tokens "
           f"| {rt.world_size} process(es) on {rt.device_type} | writing {ckpt_dir}")

    # -------------------------------------------------------------------------
    # the optimizer, start or resume, the data
    optimizer = tr.build_optimizer(model, user_config, distributed=rt.ddp)  # scaled by --init-lr-frac
    start_step, loader_state, loop_state, val_bpb = tr.start_or_resume(
        ckpt_dir, args.resume_from_step, model, optimizer, rt)
    train_loader = make_chat_loader(stage, tokenizer, train_task, B, T, rt, state=loader_state)
    batches = iter(train_loader)

    # mid rows are always T long; SFT rows are as long as the batch's longest conversation
    train_model = tr.compile_for_training(model, args.compile, rt.device_type, dynamic=stage == "sft")
    flops_per_token = model.estimate_flops()
    peak_flops, peak_desc = get_peak_flops(rt.device_type)
    print0(f"peak for MFU: {peak_desc}" + (f" = {peak_flops / 1e9:,.0f} GFLOP/s" if peak_flops else ""))

    logger = make_logger(args, stage, user_config, ckpt_dir)  # --logger: wandb, trackio, tensorboard or none

    def run_val():
        """Bits per byte on the held-out conversations, from their start each time."""
        val_batches = iter(make_chat_loader(stage, tokenizer, val_task, B, T, rt, repeat=False))
        model.eval()
        bpb = evaluate_bpb(model, val_batches, eval_steps, token_bytes, rt.autocast)
        model.train()
        return bpb

    if args.eval_every > 0 and start_step == 0:
        val_bpb = run_val()
        print0(f"step 00000 | val bpb {val_bpb:.4f} (before {stage})")
        logger.log({"val_bpb": val_bpb}, 0)  # the tracker only: metrics.jsonl counts steps done, from 1

    # -------------------------------------------------------------------------
    # the training loop
    smooth = tr.EMA(0.9, loop_state["smooth_train_loss"], loop_state["smooth_count"])
    progress = tr.Progress(num_iterations, start_step)
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
            x, y = next(batches)  # (B, T) inputs, (B, T) targets (-1 where the assistant did not write)
            with rt.autocast():
                loss = train_model(x, y)  # mean cross-entropy over the supervised tokens
            loss_sum += loss.detach()
            step_tokens += x.numel()
            loss = loss / grad_accum  # so the summed gradients are those of the mean over the whole step
            loss.backward()
        # the update: no warmup, then a linear warmdown over the last --warmdown-ratio of the steps
        lr_mult = tr.lr_multiplier(step, num_iterations, 0.0, args.warmdown_ratio, args.final_lr_frac)
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

        # the checkpoint: weights, optimizer, data position and RNG, so that a resume is exact
        if last or (args.save_every > 0 and done % args.save_every == 0):
            meta = tr.stage_meta(stage, done, model, user_config, num_iterations, loop_state, lr_mult, lrs, rt,
                                 val_bpb=val_bpb, train_loss=train_loss, tokens_seen=loop_state["tokens_seen"],
                                 device_batch_size=B, max_seq_len=T,
                                 total_batch_size=args.total_batch_size if stage == "mid" else None,
                                 target_examples_per_step=args.target_examples_per_step if stage == "sft" else None,
                                 dataloader_state_dict=train_loader.state_dict(),
                                 source={"stage": source, "model_tag": source_tag, "step": source_step},
                                 task_mixture=task_names)
            tr.save_training_checkpoint(ckpt_dir, done, model, optimizer, train_loader.state_dict(), meta, rt)
            print0(f"saved checkpoint {cm.model_path(ckpt_dir, done)}")

    # -------------------------------------------------------------------------
    # the summary line and the report
    total_time = loop_state["total_training_time"]
    min_val = loop_state["min_val_bpb"]
    print0(f"done: {num_iterations} {stage} steps in {format_duration(total_time)} of training"
           + (f" | min val bpb {min_val:.4f}" if min_val != float("inf") else ""))
    tr.log_report(REPORT_SECTION[stage], user_config, {
        "Source": f"{source}/{source_tag} step {source_step}", "Mixture": ", ".join(task_names),
        "Conversations": len(train_task), "Steps": num_iterations, "Tokens": loop_state["tokens_seen"],
        "Final train loss": train_loss, "Min val bpb": min_val, "Training time": format_duration(total_time)}, rt)
    logger.finish()
    compute_cleanup()
    return ckpt_dir
