"""
The toolbox of the training loops: small functions that every training stage calls from the loop
it shows in its own script (scripts/base_train.py, scripts/chat_finetune.py for midtraining and
SFT, scripts/chat_rl.py). The loops themselves live in those scripts, not here.

What is here: the optimizer and its flags, the learning-rate schedule and Muon's momentum warmup,
how many steps and micro-batches, exact save/resume of the whole training state, the per-step
loss/throughput figures, metrics record and live progress line, and the meta dict and report
section every stage writes. The tools (resume helper, LR finder, dashboard) read what these write;
the resume helper's replay steps with the same pieces.
"""

import os
import time
import random
import statistics
import collections

import numpy as np
import torch

from nanochat.common import print0, format_duration, UserError, float_range
from nanochat.gpt import OPTIMIZER_DEFAULTS
from nanochat import checkpoint_manager as cm


# -----------------------------------------------------------------------------
# torch.compile

def add_compile_arg(parser):
    parser.add_argument("--compile", type=int, choices=(-1, 0, 1), default=-1,
                        help="torch.compile the training forward/backward (1/0; -1: on CUDA only)")


def compile_for_training(model, flag, device_type, dynamic=False):
    """The model the loop calls for its forward/backward: compiled when --compile asks for it.

    The compiled module shares its weights with `model`, so the optimizer, evaluation, sampling
    and checkpoints keep using `model` itself. dynamic=True where row lengths change from batch to
    batch (SFT, RL), so a new length does not trigger a fresh compile."""
    if flag == 1 or (flag == -1 and device_type == "cuda"):
        return torch.compile(model, dynamic=dynamic)
    return model


# -----------------------------------------------------------------------------
# the optimizer

def add_optimizer_args(parser):
    """The optimizer flags of every training stage, with the defaults of GPT.setup_optimizers."""
    d = OPTIMIZER_DEFAULTS
    rate = float_range(0, 10)  # a finite rate: NaN or 1e300 would train a model of NaNs
    parser.add_argument("--embedding-lr", type=rate, default=d["embedding_lr"], help="AdamW, token embeddings")
    parser.add_argument("--unembedding-lr", type=rate, default=d["unembedding_lr"], help="AdamW, the LM head")
    parser.add_argument("--matrix-lr", type=rate, default=d["matrix_lr"], help="Muon learning rate")
    parser.add_argument("--scalar-lr", type=rate, default=d["scalar_lr"], help="AdamW, the per-layer scalars")
    parser.add_argument("--weight-decay", type=rate, default=d["weight_decay"],
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
    """Micro-batches per optimizer step when a step is --total-batch-size tokens (base, mid)."""
    per_step = device_batch_size * seq_len * world_size
    if total_batch_size % per_step != 0:
        raise UserError(f"--total-batch-size {total_batch_size} is not a multiple of device batch x sequence x "
                        f"processes = {device_batch_size} x {seq_len} x {world_size} = {per_step}; "
                        f"use a multiple of {per_step}")
    return total_batch_size // per_step


def example_grad_accum_steps(examples_per_step, device_batch_size, world_size):
    """Micro-batches per optimizer step when a step is --target-examples-per-step conversations (SFT)."""
    per_step = device_batch_size * world_size
    if examples_per_step % per_step:
        raise UserError(f"--target-examples-per-step {examples_per_step} is not a multiple of "
                        f"device batch x processes = {device_batch_size} x {world_size}; use a multiple of {per_step}")
    return examples_per_step // per_step


# -----------------------------------------------------------------------------
# random state

def get_rng_state():
    # numpy's key is an ndarray; as a list the state loads with torch.load(weights_only=True)
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, key.tolist(), pos, has_gauss, cached_gaussian)}
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
    try:
        model.load_state_dict(cm.clean_state_dict(model_state), strict=True)
    except RuntimeError as e:  # resumed with other model flags (--depth, --head-dim, ...) than the run's
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"the weights of {cm.model_path(ckpt_dir, step)} do not fit the model these flags build "
                        f"({detail}); resume with the run's own flags (python tools/training_resume_helper.py "
                        f"{ckpt_dir} --command prints them)")
    loader_state = meta.get("dataloader_state_dict")
    if "optimizer" in optim_state and "rng" in optim_state:
        optimizer.load_state_dict(optim_state["optimizer"])
        set_rng_state(optim_state["rng"])
        loader_state = optim_state.get("dataloader") or loader_state
    else:  # an upstream nanochat optimizer file: the optimizer state only, no RNG or data position
        if optimizer_state_fits(optimizer, optim_state):
            optimizer.load_state_dict(optim_state)
        else:
            print0("note: the optimizer file is upstream nanochat's (other parameter groups): starting a fresh optimizer")
        print0("note: the checkpoint has no RNG state or data position (upstream nanochat's format): training "
               "continues from its weights on this data, but not bit-exactly as an uninterrupted run would")
        if isinstance(meta.get("loop_state"), dict):  # upstream's EMA of the loss has run for `step` steps
            meta["loop_state"].setdefault("smooth_count", step)
            meta["loop_state"].setdefault("tokens_seen", step * int(meta.get("total_batch_size") or 0))
    if meta.get("world_size", rt.world_size) != rt.world_size:
        print0(f"note: the checkpoint was trained with {meta.get('world_size')} processes, now {rt.world_size}; "
               f"data order will differ from an uninterrupted run")
    return meta, loader_state


def optimizer_state_fits(optimizer, state):
    """Whether an optimizer state dict from elsewhere (upstream nanochat's) has this optimizer's
    parameter groups: as many, of the same kind and size, each parameter's moments of its shape."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        return False
    for mine, theirs in zip(optimizer.param_groups, groups):
        if mine["kind"] != theirs.get("kind") or len(mine["params"]) != len(theirs.get("params", [])):
            return False
        for p, i in zip(mine["params"], theirs["params"]):
            moments = (state.get("state") or {}).get(i, {})
            if any(torch.is_tensor(v) and v.ndim > 0 and v.shape != p.shape for v in moments.values()):
                return False
    return True


def start_or_resume(ckpt_dir, resume_from_step, model, optimizer, rt, loop_state=None):
    """The state a training stage starts from: (start_step, loader_state, loop_state, val_bpb).

    loop_state: the running figures the stage keeps in its meta, as they are at step 0 (default:
    those of the supervised stages, base, mid and sft). resume_from_step < 0: a fresh run (step 0,
    a fresh metrics.jsonl). Otherwise model, optimizer and RNG come back from that checkpoint,
    loop_state from its meta, and metrics.jsonl is cut back to it, so that every step appears in
    the log exactly once."""
    if loop_state is None:
        loop_state = {"min_val_bpb": float("inf"), "smooth_train_loss": 0.0, "smooth_count": 0,
                      "total_training_time": 0.0, "tokens_seen": 0}
    if resume_from_step < 0:
        cm.check_fresh_run_dir(ckpt_dir)  # never mix two runs' checkpoints in one folder
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


class Eta:
    """Time left, from the median duration of the last few steps.

    The first step of a session is left out: it pays for warm-up (allocations, caches, compilation)
    and can take many times a normal step, and an average over elapsed time would carry that, and
    any moment the machine was busy, for the rest of the run. The median of the last `window`
    steps follows the machine as it is now and ignores a single slow step. Until `settled` steps
    are measured the estimate is shown as rough."""

    def __init__(self, num_steps, window=10, settled=3):
        self.num_steps, self.settled = num_steps, settled
        self.dts = collections.deque(maxlen=window)
        self.steps_seen = 0

    def update(self, done, dt):
        """Record the duration `dt` (s) of the step that brought the count to `done`; returns the
        text for the progress line: 'eta 4m12s', 'eta ~4m12s (rough)' or 'eta after step N'."""
        self.steps_seen += 1
        if self.steps_seen > 1:  # the first step of the session is warm-up
            self.dts.append(dt)
        left = self.num_steps - done
        if left <= 0:
            return "eta 0s"
        if not self.dts:
            return f"eta after step {done + 1}"
        seconds = left * statistics.median(self.dts)
        if len(self.dts) < self.settled:
            return f"eta ~{format_duration(seconds)} (rough)"
        return f"eta {format_duration(seconds)}"


class Progress:
    """The live line: step, loss, LR, tokens/s, MFU and ETA (class Eta), on rank 0."""

    def __init__(self, num_iterations, start_step=0):
        self.num_iterations = num_iterations
        self.eta = Eta(num_iterations)

    def line(self, step, loss, lr_mult, dt, tok_per_sec, mfu, extra=""):
        """The line of the step just done; call it once per step (it feeds the ETA its dt)."""
        done = step + 1
        pct = 100 * done / self.num_iterations
        mfu_s = f" | mfu {mfu:5.1f}%" if mfu is not None else ""
        return (f"step {done:05d}/{self.num_iterations:05d} ({pct:5.1f}%) | loss {loss:.4f} | lr x{lr_mult:.3f} "
                f"| dt {dt * 1000:6.0f}ms | tok/s {tok_per_sec:,.0f}{mfu_s} | {self.eta.update(done, dt)}{extra}")

    def print(self, *args, **kwargs):
        print0(self.line(*args, **kwargs))


# -----------------------------------------------------------------------------
# what a stage writes: the per-step figures, the metrics record, the meta, the report section

def reduce_step(loss_sum, tokens, grad_accum, rt):
    """(mean loss of the step, tokens in it) over every process, as a float and an int.

    loss_sum: the micro-batches' losses added up (a 0-d tensor). Tokens are counted from the
    batches themselves, so stages with padded rows of varying length report real throughput."""
    loss = loss_sum / grad_accum
    tokens = torch.tensor(tokens, device=rt.device, dtype=torch.long)
    if rt.ddp:
        torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.AVG)
        torch.distributed.all_reduce(tokens)
    return loss.item(), int(tokens.item())


def metrics_record(step, loop_state, train_loss, smooth_loss, lr_mult, lrs, dt, tokens_per_sec, mfu, val_bpb=None):
    """One line of metrics.jsonl for a supervised stage (base, mid, sft); step counts steps done."""
    record = {"step": step, "tokens": loop_state["tokens_seen"], "train_loss": train_loss,
              "smooth_train_loss": smooth_loss, "lr": lr_mult, "lrs": lrs, "dt": dt,
              "tokens_per_sec": tokens_per_sec, "mfu": mfu, "time": loop_state["total_training_time"],
              "wall": time.time()}
    if val_bpb is not None:
        record["val_bpb"] = val_bpb
    return record


def stage_meta(stage, step, model, user_config, num_iterations, loop_state, lr_mult, lrs, rt, **stage_keys):
    """The meta dict of a checkpoint: the keys every stage writes, then the stage's own (stage_keys)."""
    return {"step": step, "stage": stage, "model_config": model.config.to_dict(), "user_config": user_config,
            "num_iterations": num_iterations, "loop_state": loop_state, "lr": {"multiplier": lr_mult, **lrs},
            "world_size": rt.world_size, **stage_keys}


def log_report(section, user_config, summary, rt):
    """The stage's section of the report card (rank 0): its flags, then its figures."""
    if rt.master:
        from nanochat.report import get_report
        get_report().log(section=section, data=[user_config, summary])
