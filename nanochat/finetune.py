"""
The driver of the two finetuning stages: midtraining (base -> mid) and SFT (mid -> sft).

Pipeline position: scripts/mid_train.py and scripts/chat_sft.py parse their flags and call
run_finetune(args, stage). Both stages do the same thing with different data and defaults:
load the previous stage's checkpoint, train it on a task mixture with the loss on assistant tokens
only (nanochat/chat_data.py), measure val bits per byte on held-out conversations, and save
checkpoints + metrics.jsonl exactly like base_train (same keys, same exact resume), so every tool
that reads a pretraining run reads these too.

The difference between the stages is the batch: midtraining packs conversations into full rows
(PackedChatLoader, many conversations per row, --total-batch-size tokens per step); SFT gives each
conversation a row of its own (PaddedChatLoader, --target-examples-per-step conversations per
step), which is closer to how the model is used when it chats.
"""

import torch

from nanochat.common import compute_init, compute_cleanup, print0, get_peak_flops, UserError, format_duration
from nanochat.chat_data import PackedChatLoader, PaddedChatLoader, build_mixture, count_batches, OFFLINE_TASKS
from nanochat.loss_eval import evaluate_bpb
from nanochat import checkpoint_manager as cm
from nanochat import training as tr

PREVIOUS_STAGE = {"mid": "base", "sft": "mid"}
REPORT_SECTION = {"mid": "Midtraining", "sft": "Chat SFT"}


def add_finetune_args(p, stage):
    """The flags both stages share; defaults follow upstream nanochat where it has them."""
    p.add_argument("--run", type=str, default="dummy", help="run name (recorded in the meta and report)")
    p.add_argument("--device-type", type=str, default="", help="cuda|cpu|mps (empty: autodetect)")
    p.add_argument("--seed", type=int, default=42)
    # what to start from and where to write
    p.add_argument("--source", type=str, default=PREVIOUS_STAGE[stage],
                   help=f"stage to start from: base|mid|sft|rl (default {PREVIOUS_STAGE[stage]})")
    p.add_argument("--model-tag", type=str, default=None, help="model tag to load (default: the largest)")
    p.add_argument("--model-step", type=int, default=None, help="step to load (default: the last)")
    p.add_argument("--output-tag", type=str, default=None, help="checkpoint folder name (default: the loaded tag)")
    # data
    p.add_argument("--offline", action="store_true", help="never contact the hub: train on the offline tasks only")
    p.add_argument("--custom-json", type=str, default=None, help="add your own conversations (JSONL) to the mixture")
    p.add_argument("--synthetic-size", type=int, default=1000,
                   help="examples per synthetic task (Identity, SpellingBee, SimpleSpelling, Arithmetic)")
    p.add_argument("--max-seq-len", type=int, default=-1, help="row length in tokens (-1: the model's context)")
    p.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: one epoch of the mixture)")
    # optimizer
    p.add_argument("--embedding-lr", type=float, default=0.2)
    p.add_argument("--unembedding-lr", type=float, default=0.004)
    p.add_argument("--matrix-lr", type=float, default=0.02, help="Muon learning rate")
    p.add_argument("--scalar-lr", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--init-lr-frac", type=float, default=1.0 if stage == "mid" else 0.02,
                   help="start at this fraction of the learning rates above")
    p.add_argument("--warmdown-ratio", type=float, default=0.2 if stage == "mid" else 1.0,
                   help="fraction of the steps over which the LR decays linearly")
    p.add_argument("--final-lr-frac", type=float, default=0.0)
    # evaluation and saving
    p.add_argument("--eval-every", type=int, default=150 if stage == "mid" else 100,
                   help="val bpb every N steps and at the end (-1: never)")
    p.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (the last step is always saved)")
    p.add_argument("--resume-from-step", type=int, default=-1, help="continue this stage's run from its checkpoint at this step")


def _positive(args, *names):
    for name in names:
        if getattr(args, name.replace("-", "_")) < 1:
            raise UserError(f"--{name} must be at least 1")


def make_chat_loader(stage, tokenizer, task, B, T, rt, state=None, repeat=True):
    """The stage's batches: conversations packed into rows (mid) or one per row (sft)."""
    loader_cls = PackedChatLoader if stage == "mid" else PaddedChatLoader
    return loader_cls(tokenizer, task, B, T, rt.device, rt.rank, rt.world_size, state=state, repeat=repeat)


def finetune_grad_accum(stage, config, B, T, world_size):
    """Micro-batches per optimizer step, from the flags (config: the run's flags as a dict)."""
    if stage == "mid":
        return tr.grad_accum_steps(config["total_batch_size"], B, T, world_size)
    per_step = B * world_size
    if config["target_examples_per_step"] % per_step:
        raise UserError(f"--target-examples-per-step {config['target_examples_per_step']} is not a multiple of "
                        f"device batch x processes = {B} x {world_size}; use a multiple of {per_step}")
    return config["target_examples_per_step"] // per_step


def finetune_lr_multiplier(step, num_iterations, config):
    """No warmup, then a linear warmdown over the last --warmdown-ratio of the steps."""
    return tr.lr_multiplier(step, num_iterations, 0.0, config["warmdown_ratio"], config["final_lr_frac"])


def run_finetune(args, stage):
    """Run one finetuning stage ('mid' or 'sft') with the parsed flags of add_finetune_args + the stage's own."""
    assert stage in PREVIOUS_STAGE
    user_config = vars(args).copy()
    _positive(args, "device-batch-size", "synthetic-size")
    rt = compute_init(args.device_type, seed=args.seed)
    from nanochat.tokenizer import get_token_bytes
    model, tokenizer, source_meta = cm.load_model(args.source, rt.device, phase="train",
                                                  model_tag=args.model_tag, step=args.model_step)
    source_dir, source_tag, source_step = cm.resolve_checkpoint(args.source, args.model_tag, args.model_step)
    config = model.config
    T = args.max_seq_len if args.max_seq_len > 0 else config.sequence_len
    output_tag = args.output_tag or source_tag
    ckpt_dir = cm.checkpoint_dir(stage, output_tag)
    token_bytes = get_token_bytes(rt.device)

    train_task, task_names = build_mixture(stage, "train", args.offline, args.synthetic_size, args.custom_json)
    offline = args.offline or task_names[0] in dict(OFFLINE_TASKS)  # the hub answered once or not at all
    val_task, _ = build_mixture(stage, "val", offline, args.synthetic_size, args.custom_json, announce=False)
    print0(f"{stage} mixture: {len(train_task):,} conversations from {', '.join(task_names)} "
           f"| val: {len(val_task):,}")

    B = args.device_batch_size
    grad_accum = finetune_grad_accum(stage, user_config, B, T, rt.world_size)

    def make_loader(task, state=None, repeat=True):
        return make_chat_loader(stage, tokenizer, task, B, T, rt, state, repeat)
    if stage == "mid":
        eval_steps = max(1, args.eval_tokens // (B * T * rt.world_size))
        batch_desc = f"{args.total_batch_size:,} tokens ({B} rows x {T} x {grad_accum} accumulation x {rt.world_size})"
    else:
        eval_steps = args.eval_steps
        batch_desc = f"{args.target_examples_per_step} conversations ({B} rows x {grad_accum} accumulation x {rt.world_size})"

    if args.num_iterations > 0:
        num_iterations, length_from = args.num_iterations, "--num-iterations"
    else:
        if stage == "mid":  # rows depend on how conversations pack: count them with one dry pass
            batches = count_batches(lambda: make_loader(train_task, repeat=False))
        else:
            batches = len(range(rt.rank, len(train_task), rt.world_size)) // B
        steps = torch.tensor(batches // grad_accum, device=rt.device)
        if rt.ddp:
            torch.distributed.all_reduce(steps, op=torch.distributed.ReduceOp.MIN)
        num_iterations, length_from = max(1, int(steps.item())), "one epoch"
    print0(f"steps: {num_iterations} (from {length_from}) x {batch_desc} | rows of {T} tokens "
           f"| {rt.world_size} process(es) on {rt.device_type} | writing {ckpt_dir}")

    optimizer = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                       matrix_lr=args.matrix_lr, scalar_lr=args.scalar_lr,
                                       weight_decay=args.weight_decay, distributed=rt.ddp)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = group["initial_lr"] * args.init_lr_frac

    start_step, loader_state, loop_state, val_bpb = tr.start_or_resume(
        ckpt_dir, args.resume_from_step, model, optimizer, rt)

    train_loader = make_loader(train_task, state=loader_state)
    use_compile = stage == "mid" and (args.compile == 1 or (args.compile == -1 and rt.device_type == "cuda"))
    train_model = torch.compile(model, dynamic=False) if use_compile else model
    flops_per_token = model.estimate_flops()
    peak_flops, _ = get_peak_flops(rt.device_type)

    def run_val():
        model.eval()
        bpb = evaluate_bpb(model, iter(make_loader(val_task, repeat=False)), eval_steps, token_bytes, rt.autocast)
        model.train()
        return bpb

    if args.eval_every > 0 and start_step == 0:
        val_bpb = run_val()
        print0(f"step 00000 | val bpb {val_bpb:.4f} (before {stage})")

    def make_meta(done, val_bpb, train_loss, lr_mult, lrs):
        return {
            "step": done, "val_bpb": val_bpb, "model_config": config.to_dict(), "user_config": user_config,
            "device_batch_size": B, "max_seq_len": T,
            "total_batch_size": args.total_batch_size if stage == "mid" else None,
            "target_examples_per_step": args.target_examples_per_step if stage == "sft" else None,
            "dataloader_state_dict": train_loader.state_dict(), "loop_state": loop_state,
            "train_loss": train_loss, "lr": {"multiplier": lr_mult, **lrs}, "num_iterations": num_iterations,
            "tokens_seen": loop_state["tokens_seen"], "world_size": rt.world_size, "stage": stage,
            "source": {"stage": args.source, "model_tag": source_tag, "step": source_step},
            "task_mixture": task_names,
        }

    def lr_schedule(step):
        return finetune_lr_multiplier(step, num_iterations, user_config)

    train_loss, val_bpb = tr.run_training_steps(
        model=model, optimizer=optimizer, rt=rt, batches=iter(train_loader), loader=train_loader,
        num_iterations=num_iterations, start_step=start_step, grad_accum=grad_accum, ckpt_dir=ckpt_dir,
        loop_state=loop_state, lr_schedule=lr_schedule, run_val=run_val, eval_every=args.eval_every,
        save_every=args.save_every, make_meta=make_meta, flops_per_token=flops_per_token,
        peak_flops=peak_flops, train_model=train_model, val_bpb=val_bpb)

    total_time = loop_state["total_training_time"]
    min_val = loop_state["min_val_bpb"]
    print0(f"done: {num_iterations} {stage} steps in {format_duration(total_time)} of training"
           + (f" | min val bpb {min_val:.4f}" if min_val != float("inf") else ""))
    if rt.master:
        try:
            from nanochat.report import get_report
        except ImportError:
            get_report = None
        if get_report is not None:
            get_report().log(section=REPORT_SECTION[stage], data=[
                user_config,
                {"Source": f"{args.source}/{source_tag} step {source_step}", "Mixture": ", ".join(task_names),
                 "Conversations": len(train_task), "Steps": num_iterations, "Tokens": loop_state["tokens_seen"],
                 "Final train loss": train_loss, "Min val bpb": min_val,
                 "Training time": format_duration(total_time)},
            ])
    compute_cleanup()
    return ckpt_dir
