"""
The parts of a training loop that every training stage shares: the learning-rate schedule,
Muon's momentum warmup, exact save/resume of the whole training state, the per-step metrics
record and the live progress line.

Pipeline position: scripts/base_train.py, mid_train.py, chat_sft.py and chat_rl.py call these;
the tools (resume helper, LR finder, dashboard) read what they write.
"""

import os
import time
import random

import numpy as np
import torch

from nanochat.common import print0, format_duration, UserError
from nanochat.gpt import OPTIMIZER_DEFAULTS
from nanochat import checkpoint_manager as cm


# -----------------------------------------------------------------------------
# the optimizer

def add_optimizer_args(parser):
    """The optimizer flags of every training stage, with the defaults of GPT.setup_optimizers."""
    d = OPTIMIZER_DEFAULTS
    parser.add_argument("--embedding-lr", type=float, default=d["embedding_lr"], help="AdamW, token embeddings")
    parser.add_argument("--unembedding-lr", type=float, default=d["unembedding_lr"], help="AdamW, the LM head")
    parser.add_argument("--matrix-lr", type=float, default=d["matrix_lr"], help="Muon learning rate")
    parser.add_argument("--scalar-lr", type=float, default=d["scalar_lr"], help="AdamW, the per-layer scalars")
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                        help="decoupled weight decay of the Muon matrices")


def build_optimizer(model, config, distributed=False):
    """The MuonAdamW of a run from its flags as a dict (vars(args), or a meta's user_config):
    the learning rates and weight decay of add_optimizer_args (missing ones take the defaults),
    all scaled by its init_lr_frac where the stage has one (the finetuning stages and RL)."""
    optimizer = model.setup_optimizers(distributed=distributed,
                                       **{k: config[k] for k in OPTIMIZER_DEFAULTS if k in config})
    init_lr_frac = config.get("init_lr_frac", 1.0)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = group["initial_lr"] * init_lr_frac
    return optimizer


# -----------------------------------------------------------------------------
# schedules

def lr_multiplier(step, num_iterations, warmup_ratio=0.0, warmdown_ratio=0.4, final_lr_frac=0.0):
    """Warmup (linear from 0), then constant 1.0, then linear warmdown to final_lr_frac.

    `step` counts optimizer steps already taken (0 for the first update)."""
    warmup = round(warmup_ratio * num_iterations)
    warmdown = round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown  # 1 -> 0 over the warmdown
    return progress * 1.0 + (1 - progress) * final_lr_frac


def muon_momentum(step, start=0.85, end=0.95, ramp_steps=300):
    """Muon momentum ramps from 0.85 to 0.95 over the first 300 steps (less noisy early updates)."""
    frac = min(step / ramp_steps, 1.0)
    return (1 - frac) * start + frac * end


def apply_lr(optimizer, multiplier, step):
    """Set each group's lr to initial_lr * multiplier (and Muon's momentum). Returns {name: lr}."""
    lrs = {}
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
        if group["kind"] == "muon":
            group["momentum"] = muon_momentum(step)
        lrs[group.get("name", str(len(lrs)))] = group["lr"]
    return lrs


def training_length(num_iterations, target_flops, target_param_data_ratio, flops_per_token,
                    num_scaling_params, total_batch_size):
    """Number of optimizer steps from whichever of the three ways was given (first one wins)."""
    if num_iterations > 0:
        return num_iterations, "--num-iterations"
    if target_flops > 0:
        return max(1, round(target_flops / (flops_per_token * total_batch_size))), "--target-flops"
    if target_param_data_ratio > 0:
        tokens = target_param_data_ratio * num_scaling_params
        return max(1, int(tokens // total_batch_size)), "--target-param-data-ratio"
    raise UserError("no training length: give --num-iterations, --target-flops or --target-param-data-ratio")


def grad_accum_steps(total_batch_size, device_batch_size, seq_len, world_size):
    per_step = device_batch_size * seq_len * world_size
    if total_batch_size % per_step != 0:
        raise UserError(f"--total-batch-size {total_batch_size} is not a multiple of device batch x sequence x "
                        f"processes = {device_batch_size} x {seq_len} x {world_size} = {per_step}; "
                        f"use a multiple of {per_step}")
    return total_batch_size // per_step


# -----------------------------------------------------------------------------
# random state

def get_rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -----------------------------------------------------------------------------
# save / resume the whole training state

def save_training_checkpoint(ckpt_dir, step, model, optimizer, loader_state, meta, rt):
    """Model + meta on rank 0; every rank saves optimizer shard + its loader position + RNG."""
    optim_state = {"optimizer": optimizer.state_dict(), "dataloader": loader_state, "rng": get_rng_state()}
    meta = dict(meta)
    meta.setdefault("rng_state", os.path.basename(cm.optim_path(ckpt_dir, step, 0)).replace("rank0", "rank<r>"))
    cm.save_checkpoint(ckpt_dir, step, model.state_dict(), optim_state, meta, rank=rt.rank)
    if rt.ddp:
        torch.distributed.barrier()


def load_training_checkpoint(ckpt_dir, step, model, optimizer, rt):
    """Restore model, optimizer and RNG for --resume-from-step. Returns (meta, loader_state)."""
    model_state, optim_state, meta = cm.load_checkpoint(ckpt_dir, step, rt.device, load_optimizer=True,
                                                        rank=rt.rank)
    model.load_state_dict(cm.clean_state_dict(model_state), strict=True)
    loader_state = meta.get("dataloader_state_dict")
    if "optimizer" in optim_state and "rng" in optim_state:
        optimizer.load_state_dict(optim_state["optimizer"])
        set_rng_state(optim_state["rng"])
        loader_state = optim_state.get("dataloader") or loader_state
    else:  # an upstream optimizer file: the optimizer state only
        optimizer.load_state_dict(optim_state)
    if meta.get("world_size", rt.world_size) != rt.world_size:
        print0(f"note: the checkpoint was trained with {meta.get('world_size')} processes, now {rt.world_size}; "
               f"data order will differ from an uninterrupted run")
    return meta, loader_state


def start_or_resume(ckpt_dir, resume_from_step, model, optimizer, rt):
    """The state a training stage starts from: (start_step, loader_state, loop_state, val_bpb).

    resume_from_step < 0: a fresh run (step 0, a fresh metrics.jsonl). Otherwise model, optimizer
    and RNG come back from that checkpoint and metrics.jsonl is cut back to it, so that every step
    appears in the log exactly once."""
    loop_state = {"min_val_bpb": float("inf"), "smooth_train_loss": 0.0, "smooth_count": 0,
                  "total_training_time": 0.0, "tokens_seen": 0}
    if resume_from_step < 0:
        metrics = os.path.join(ckpt_dir, cm.METRICS_FILE)
        if rt.master and os.path.exists(metrics):
            os.remove(metrics)  # a fresh run starts a fresh log
        return 0, None, loop_state, None
    meta, loader_state = load_training_checkpoint(ckpt_dir, resume_from_step, model, optimizer, rt)
    loop_state.update(meta.get("loop_state", {}))
    if rt.master:
        cm.truncate_metrics(ckpt_dir, resume_from_step)
    print0(f"resumed from {ckpt_dir} step {resume_from_step}")
    return resume_from_step, loader_state, loop_state, meta.get("val_bpb")


# -----------------------------------------------------------------------------
# progress

class EMA:
    """Exponential moving average with bias correction: the first values are not pulled to 0,
    and adding a point never changes the smoothed values of earlier points."""

    def __init__(self, beta=0.9, value=0.0, count=0):
        self.beta, self.value, self.count = beta, value, count

    def update(self, x):
        self.count += 1
        self.value = self.beta * self.value + (1 - self.beta) * x
        return self.debiased()

    def debiased(self):
        return self.value / (1 - self.beta ** self.count) if self.count else float("nan")


class Progress:
    """The live line: step, loss, LR, tokens/s, MFU and ETA, on rank 0."""

    def __init__(self, num_iterations, start_step=0):
        self.num_iterations = num_iterations
        self.start_step = start_step
        self.t0 = time.time()

    def line(self, step, loss, lr_mult, dt, tok_per_sec, mfu, extra=""):
        done = step + 1
        elapsed = time.time() - self.t0
        rate = (done - self.start_step) / max(elapsed, 1e-9)
        eta = (self.num_iterations - done) / rate if rate > 0 else 0
        pct = 100 * done / self.num_iterations
        mfu_s = f" | mfu {mfu:5.1f}%" if mfu is not None else ""
        return (f"step {done:05d}/{self.num_iterations:05d} ({pct:5.1f}%) | loss {loss:.4f} | lr x{lr_mult:.3f} "
                f"| dt {dt * 1000:6.0f}ms | tok/s {tok_per_sec:,.0f}{mfu_s} | eta {format_duration(eta)}{extra}")

    def print(self, *args, **kwargs):
        print0(self.line(*args, **kwargs))


# -----------------------------------------------------------------------------
# the optimizer-step loop shared by the finetuning stages (mid_train, chat_sft)

def train_step(train_model, optimizer, batches, grad_accum, rt, lr_mult, step):
    """One optimizer step: gradients of `grad_accum` micro-batches summed (each loss divided by
    grad_accum, so the sum is the gradient of the mean), then the scheduled LR, then the update.

    Returns (mean loss as a 0-d tensor, tokens in the micro-batches, {group name: lr}).
    base_train, mid_train, chat_sft and the resume helper's replay all step through here."""
    loss_sum = torch.zeros((), device=rt.device)
    tokens = 0
    for _ in range(grad_accum):
        x, y = next(batches)
        with rt.autocast():
            loss = train_model(x, y)
        loss_sum += loss.detach()
        tokens += x.numel()
        (loss / grad_accum).backward()
    lrs = apply_lr(optimizer, lr_mult, step)
    optimizer.step()
    train_model.zero_grad(set_to_none=True)
    return loss_sum / grad_accum, tokens, lrs


def run_training_steps(*, model, optimizer, rt, batches, loader, num_iterations, start_step, grad_accum,
                       ckpt_dir, loop_state, lr_schedule, run_val, eval_every, save_every, make_meta,
                       flops_per_token, peak_flops, train_model=None, val_bpb=None, after_step=None):
    """Train from `start_step` to `num_iterations`, with the progress line, metrics.jsonl and checkpoints.

    batches: iterator of (inputs, targets); each optimizer step takes `grad_accum` of them.
    lr_schedule(step) -> multiplier. run_val() -> val bpb (every `eval_every` steps and at the end).
    make_meta(done, val_bpb, train_loss, lr_mult, lrs) -> the meta dict of a checkpoint.
    after_step(done, last) runs after each step's bookkeeping (samples, CORE, ...), before saving.
    loop_state is updated in place (tokens_seen, total_training_time, smooth loss, min_val_bpb).
    Tokens per step are counted from the batches themselves (summed over ranks), so stages with
    padded rows of varying length report real throughput. Returns (train_loss, val_bpb)."""
    train_model = train_model or model
    smooth = EMA(0.9, loop_state.get("smooth_train_loss", 0.0), loop_state.get("smooth_count", 0))
    progress = Progress(num_iterations, start_step)
    train_loss = None
    for step in range(start_step, num_iterations):
        done = step + 1
        rt.synchronize()
        t0 = time.time()
        lr_mult = lr_schedule(step)
        train_loss_t, n_tokens, lrs = train_step(train_model, optimizer, batches, grad_accum, rt, lr_mult, step)
        tokens = torch.tensor(n_tokens, device=rt.device, dtype=torch.long)
        if rt.ddp:
            torch.distributed.all_reduce(train_loss_t, op=torch.distributed.ReduceOp.AVG)
            torch.distributed.all_reduce(tokens)
        train_loss = train_loss_t.item()
        step_tokens = int(tokens.item())
        rt.synchronize()
        dt = time.time() - t0
        if not np.isfinite(train_loss):
            print0(f"step {done}: the loss is {train_loss}; training diverged (try a lower learning rate)")
        loop_state["total_training_time"] = loop_state.get("total_training_time", 0.0) + dt
        loop_state["tokens_seen"] = loop_state.get("tokens_seen", 0) + step_tokens
        smooth.update(train_loss)
        loop_state["smooth_train_loss"], loop_state["smooth_count"] = smooth.value, smooth.count
        tok_per_sec = step_tokens / dt
        mfu = 100 * flops_per_token * tok_per_sec / (peak_flops * rt.world_size) if peak_flops else None
        last = done == num_iterations
        measured_val = None
        if eval_every > 0 and (done % eval_every == 0 or last):
            val_bpb = measured_val = run_val()
            loop_state["min_val_bpb"] = min(loop_state.get("min_val_bpb", float("inf")), val_bpb)
        progress.print(step, smooth.debiased(), lr_mult, dt, tok_per_sec, mfu,
                       extra=f" | val bpb {measured_val:.4f}" if measured_val is not None else "")
        if rt.master:
            record = {"step": done, "tokens": loop_state["tokens_seen"], "train_loss": train_loss,
                      "smooth_train_loss": smooth.debiased(), "lr": lr_mult, "lrs": lrs, "dt": dt,
                      "tokens_per_sec": tok_per_sec, "mfu": mfu, "time": loop_state["total_training_time"],
                      "wall": time.time()}
            if measured_val is not None:
                record["val_bpb"] = measured_val
            cm.append_metrics(ckpt_dir, record)
        if after_step is not None:
            after_step(done, last)
        if last or (save_every > 0 and done % save_every == 0):
            meta = make_meta(done, val_bpb, train_loss, lr_mult, lrs)
            save_training_checkpoint(ckpt_dir, done, model, optimizer, loader.state_dict(), meta, rt)
            print0(f"saved checkpoint {cm.model_path(ckpt_dir, done)}")
    return train_loss, val_bpb
