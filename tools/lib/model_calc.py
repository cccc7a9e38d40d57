"""
Model size and cost arithmetic for this project's GPT: parameters by component, memory for
training and inference, FLOPs per token, training time and dollar cost, and a measurement of
the real thing on this machine to compare with.

Pipeline position: before training (how big, how long, how much?). tools/model_calculator.py
prints what this computes.

The counts here are our own arithmetic over the architecture in nanochat/gpt.py (they do not
build a model), so that `check_against_model` - which does build the real model on the meta
device - is a meaningful test: the two must agree exactly. FLOPs per token use the same formula
as GPT.estimate_flops: 6 x (matmul weights) + the attention term.

Memory figures for activations and logits are estimates (what autograd keeps per token, see
`activation_bytes_per_token`); `measure_training` runs real steps so you can see how close they are.
"""

import math
import time
import threading
from dataclasses import dataclass

from nanochat.common import UserError, GPU_PEAK_FLOPS
from nanochat.gpt import (GPTConfig, config_from_depth, padded_vocab_size, has_value_embedding, layer_window_sizes,
                         SMEAR_GATE_CHANNELS)
from nanochat.gpt import CONFIG_LIMITS

# Presets: the shapes people ask about. dNN are base_train's defaults for that --depth;
# nanochat-tiny is the model runs/cpu_demo.sh trains (a test builds both and compares them).
PRESETS = {
    "nanochat-tiny": dict(depth=4, vocab_size=4096, sequence_len=256, head_dim=64, window_pattern="L",
                          device_batch_size=16, total_batch_size=4096,
                          note="the CPU demo's model and batch (runs/cpu_demo.sh): 4 layers, dim 256, 4 heads of 64, "
                               "vocab 4,096, context 256, device batch 16, 4,096 tokens per step"),
    "gpt2-small": dict(depth=12, n_embd=768, vocab_size=50257, sequence_len=1024, head_dim=64, window_pattern="L",
                       note="GPT-2 small's shape (12 layers, dim 768, 12 heads, GPT-2 vocab) in this architecture"),
    "d12": dict(depth=12, vocab_size=32768, sequence_len=2048, head_dim=128, window_pattern="SSSL", note="base_train --depth 12"),
    "d20": dict(depth=20, vocab_size=32768, sequence_len=2048, head_dim=128, window_pattern="SSSL", note="base_train --depth 20 (the $100 speedrun size)"),
    "d26": dict(depth=26, vocab_size=32768, sequence_len=2048, head_dim=128, window_pattern="SSSL", note="base_train --depth 26 (GPT-2-grade)"),
    "d32": dict(depth=32, vocab_size=32768, sequence_len=2048, head_dim=128, window_pattern="SSSL", note="base_train --depth 32"),
}

# Assumptions for cost: on-demand cloud prices per GPU-hour (USD, late-2024 list prices, rounded);
# pass --price-per-hour for your own. Memory in GB per GPU.
GPU_PRICE_PER_HOUR = {"H200": 3.50, "H100": 3.00, "A100": 1.80, "L40S": 1.10, "A6000": 0.80, "RTX 4090": 0.50,
                      "RTX 3090": 0.30, "A10": 0.75, "L4": 0.55, "T4": 0.35, "V100": 0.60}
GPU_MEMORY_GB = {"H200": 141, "H100": 80, "A100": 80, "L40S": 48, "A6000": 48, "RTX 4090": 24, "RTX 3090": 24,
                 "A10": 24, "L4": 24, "T4": 16, "V100": 32}
DEFAULT_MFU = {"gpu": 0.40, "cpu": 0.30}  # typical model-FLOPs utilisation; an assumption, see --measure


def build_config(preset=None, depth=None, n_embd=None, vocab_size=None, sequence_len=None, head_dim=None,
                 n_kv_head=None, window_pattern=None, aspect_ratio=64):
    """A GPTConfig from a preset and/or explicit sizes (explicit values win over the preset's)."""
    base = {}
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}': use one of {', '.join(PRESETS)}")
        base = {k: v for k, v in PRESETS[preset].items() if k not in ("note", "device_batch_size", "total_batch_size")}
    depth = depth if depth is not None else base.get("depth")
    if depth is None:
        raise UserError("give --preset NAME or --depth N")
    if not 1 <= depth <= CONFIG_LIMITS["n_layer"]:  # checking the formulas builds every layer (on the meta device)
        raise UserError(f"--depth must be between 1 and {CONFIG_LIMITS['n_layer']} (got {depth})")
    vocab_size = vocab_size or base.get("vocab_size", 32768)
    sequence_len = sequence_len or base.get("sequence_len", 2048)
    head_dim = head_dim or base.get("head_dim", 128)
    window_pattern = window_pattern or base.get("window_pattern", "SSSL")
    n_embd = n_embd or base.get("n_embd")
    if n_embd is None:
        config = config_from_depth(depth, vocab_size, sequence_len, aspect_ratio=aspect_ratio, head_dim=head_dim,
                                   n_kv_head=n_kv_head or None, window_pattern=window_pattern)
    else:
        if n_embd % head_dim:
            raise UserError(f"--hidden-dim {n_embd} is not a multiple of the head dim {head_dim}")
        n_head = n_embd // head_dim
        config = GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head,
                           n_kv_head=n_kv_head or n_head, n_embd=n_embd, window_pattern=window_pattern)
    if config.n_head % config.n_kv_head:
        raise UserError(f"--n-kv-head {config.n_kv_head} must divide the number of heads {config.n_head}")
    if any(c not in "SLsl" for c in config.window_pattern):
        raise UserError(f"--window-pattern '{config.window_pattern}' may only contain S and L")
    return config


# -----------------------------------------------------------------------------
# parameters and FLOPs, by formula

def param_counts(config):
    """Parameters by component, same keys as GPT.param_counts(), computed from the config alone."""
    V = padded_vocab_size(config.vocab_size)
    C, L = config.n_embd, config.n_layer
    D = C // config.n_head
    kv = config.n_kv_head * D
    ve_layers = sum(1 for i in range(L) if has_value_embedding(i, L))
    return {
        "token_embedding": V * C,
        "value_embeddings": ve_layers * V * kv,
        "attention": L * (C * C + 2 * C * kv + C * C),             # c_q, c_k, c_v, c_proj
        "value_gates": ve_layers * config.ve_gate_channels * config.n_kv_head,
        "mlp": L * (C * 4 * C + 4 * C * C),                         # c_fc, c_proj
        # resid_lambdas and x0_lambdas; upstream's smear gate + lambda and backout lambda when on
        "scalars": 2 * L + (SMEAR_GATE_CHANNELS + 1 if config.smear else 0) + (1 if config.backout else 0),
        "lm_head": V * C,
    }


def total_params(config):
    return sum(param_counts(config).values())


def scaling_params(config):
    """Parameters that count for scaling laws: all but the embedding tables (as num_scaling_params)."""
    c = param_counts(config)
    return total_params(config) - c["token_embedding"] - c["value_embeddings"]


def flops_per_token(config):
    """Training FLOPs per token, the formula of GPT.estimate_flops: 6 per matmul weight plus attention."""
    c = param_counts(config)
    matmul = total_params(config) - c["token_embedding"] - c["value_embeddings"] - c["scalars"]
    D = config.n_embd // config.n_head
    T = config.sequence_len
    attn = sum(12 * config.n_head * D * min(w, T) for w in layer_window_sizes(config))
    return 6 * matmul + attn


def check_against_model(config):
    """Build the real GPT on the meta device (no memory used) and compare. Returns a dict with
    both counts and FLOPs and whether they agree exactly."""
    import torch
    from nanochat.gpt import GPT
    with torch.device("meta"):
        model = GPT(config)
    real = model.param_counts()
    ours = param_counts(config)
    return {"params_formula": sum(ours.values()), "params_model": model.num_params(),
            "flops_formula": flops_per_token(config), "flops_model": model.estimate_flops(),
            "by_group_equal": real == ours,
            "equal": real == ours and sum(ours.values()) == model.num_params()
            and flops_per_token(config) == model.estimate_flops()}


# -----------------------------------------------------------------------------
# memory

def optimizer_state_bytes(config):
    """MuonAdamW state: AdamW keeps 2 fp32 moments per parameter (embeddings, LM head, scalars);
    Muon keeps 1 fp32 momentum buffer per matrix parameter inside the blocks."""
    c = param_counts(config)
    adamw = c["token_embedding"] + c["value_embeddings"] + c["lm_head"] + c["scalars"]
    muon = c["attention"] + c["value_gates"] + c["mlp"]
    return 8 * adamw + 4 * muon


def activation_bytes_per_token(config, act_bytes):
    """What autograd keeps per token for the backward pass, summed over layers (an estimate).

    Per layer: the residual stream and x0 (2C, fp32), two RMSNorm inputs (2C, fp32), the inputs of
    the q/k/v and c_fc matmuls (2C), q, k, v and the attention output (C + 2kv + C), the c_proj
    input (C), the MLP hidden before and after ReLU^2 (8C) and the c_proj input (4C) - about
    22C values at the activation width, plus value embeddings (kv) where a layer has them."""
    C, L = config.n_embd, config.n_layer
    kv = config.n_kv_head * (C // config.n_head)
    per_layer = 4 * 4 * C + act_bytes * (2 * C + 2 * C + 2 * kv + C + 12 * C)
    ve = sum(act_bytes * kv for i in range(L) if has_value_embedding(i, L))
    return L * per_layer + ve + 4 * C * 2  # + the embedding output and final norm


def logits_bytes_per_token(config):
    """The LM head output, its fp32 copy, the soft-capped logits and the softmax for the loss."""
    return 4 * 4 * config.vocab_size


def memory_estimate(config, batch_size, cuda=True):
    """Bytes for weights (fp32 / bf16), training (weights, grads, optimizer, activations, logits)
    at `batch_size` rows of sequence_len tokens, and inference (bf16 weights + KV cache per token)."""
    n = total_params(config)
    tokens = batch_size * config.sequence_len
    act_bytes = 2 if cuda else 4  # bf16 autocast on CUDA, fp32 on CPU
    D = config.n_embd // config.n_head
    kv_per_token = 2 * config.n_layer * config.n_kv_head * D * 2  # K and V, every layer, bf16
    train = {
        "weights (fp32 master)": 4 * n,
        "gradients (fp32)": 4 * n,
        "optimizer states": optimizer_state_bytes(config),
        "activations": tokens * activation_bytes_per_token(config, act_bytes),
        "logits": tokens * logits_bytes_per_token(config),
    }
    return {
        "weights_fp32": 4 * n,
        "weights_bf16": 2 * n,
        "training": train,
        "training_total": sum(train.values()),
        "kv_cache_per_token": kv_per_token,
        "inference_full_context": 2 * n + kv_per_token * config.sequence_len,
    }


def suggest_batch_size(config, memory_bytes, cuda=True, headroom=0.9, max_batch=1024):
    """Largest power-of-two device batch whose training memory fits in `headroom` of the memory."""
    best = None
    b = 1
    while b <= max_batch:
        if memory_estimate(config, b, cuda)["training_total"] <= headroom * memory_bytes:
            best = b
        b *= 2
    return best


# -----------------------------------------------------------------------------
# training length, time and cost

def find_gpu(name):
    """The canonical key of GPU_PEAK_FLOPS for a name like 'h100' or 'RTX4090'."""
    norm = lambda s: s.lower().replace(" ", "").replace("-", "")
    for key in GPU_PEAK_FLOPS:
        if norm(key) == norm(name):
            return key
    raise UserError(f"unknown GPU '{name}': use one of {', '.join(GPU_PEAK_FLOPS)}")


@dataclass
class TrainingPlan:
    total_tokens: float
    tokens_per_step: int
    steps: int
    total_flops: float
    peak_flops: float | None
    mfu: float
    num_gpus: int
    seconds: float | None
    price_per_hour: float | None
    cost: float | None
    where: str


def training_plan(config, total_tokens=None, param_data_ratio=20.0, tokens_per_step=524288, gpu=None,
                  num_gpus=1, mfu=None, price_per_hour=None, peak_flops=None):
    """Steps, total FLOPs, time and cost. Tokens default to `param_data_ratio` x scaling params
    (Chinchilla: 20). Peak FLOP/s from the GPU table, or `peak_flops` (e.g. this machine's)."""
    if total_tokens is None:
        total_tokens = param_data_ratio * scaling_params(config)
    if total_tokens <= 0 or tokens_per_step <= 0:
        raise UserError("the number of tokens and the batch size must be positive")
    steps = max(1, math.ceil(total_tokens / tokens_per_step))
    total_flops = flops_per_token(config) * steps * tokens_per_step
    where = "unknown hardware"
    if gpu:
        key = find_gpu(gpu)
        peak_flops = GPU_PEAK_FLOPS[key]
        price_per_hour = price_per_hour if price_per_hour is not None else GPU_PRICE_PER_HOUR.get(key)
        mfu = mfu if mfu is not None else DEFAULT_MFU["gpu"]
        where = f"{num_gpus} x {key}"
    elif peak_flops:
        mfu = mfu if mfu is not None else DEFAULT_MFU["cpu"]
        where = "this machine"
    mfu = mfu if mfu is not None else DEFAULT_MFU["gpu"]
    seconds = total_flops / (peak_flops * num_gpus * mfu) if peak_flops else None
    cost = seconds / 3600 * price_per_hour * num_gpus if (seconds is not None and price_per_hour is not None) else None
    return TrainingPlan(total_tokens, tokens_per_step, steps, total_flops, peak_flops, mfu, num_gpus, seconds,
                        price_per_hour, cost, where)


# -----------------------------------------------------------------------------
# measure the real thing

class _PeakRSS:
    """Samples this process's resident memory in a thread; .peak is the highest value seen."""

    def __init__(self, interval=0.002):
        import psutil
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def measure_training(config, batch_size, device_type="cpu", steps=3, seed=0):
    """Run `steps` real training steps (forward, backward, MuonAdamW) on random tokens and measure
    throughput and peak memory. Returns a dict with measured and predicted figures."""
    import gc
    import torch
    from nanochat.gpt import build_model
    from nanochat.common import resolve_device_type, get_peak_flops
    device_type = resolve_device_type(device_type)
    cuda = device_type == "cuda"
    device = torch.device(device_type)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config.vocab_size, (batch_size, config.sequence_len), generator=gen).to(device)
    y = torch.randint(0, config.vocab_size, (batch_size, config.sequence_len), generator=gen).to(device)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss = _PeakRSS() if not cuda else None
    base_rss = rss.peak if rss else None
    autocast = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else None
    times = []
    with (rss or _Null()):
        model = build_model(config, device)
        optimizer = model.setup_optimizers()
        for i in range(steps + 1):  # the first step warms up (allocations, kernels) and is not timed
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if autocast:
                with autocast:
                    loss = model(x, y)
            else:
                loss = model(x, y)
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    measured_mem = (torch.cuda.max_memory_allocated() - base) if cuda else (rss.peak - base_rss)
    dt = sum(times) / len(times)
    tokens = batch_size * config.sequence_len
    peak, peak_desc = get_peak_flops(device_type)
    mfu = DEFAULT_MFU["gpu" if cuda else "cpu"]
    fpt = flops_per_token(config)
    predicted_tps = peak * mfu / fpt if peak else None
    del model, optimizer
    return {
        "device": device_type, "peak_flops": peak, "peak_desc": peak_desc, "assumed_mfu": mfu,
        "batch_size": batch_size, "steps": steps, "step_time": dt,
        "measured_tokens_per_sec": tokens / dt,
        "predicted_tokens_per_sec": predicted_tps,
        "measured_mfu": fpt * tokens / dt / peak if peak else None,
        "measured_memory": measured_mem,
        "predicted_memory": memory_estimate(config, batch_size, cuda)["training_total"],
        "memory_note": ("peak allocated by torch" if cuda else
                        "peak resident memory of this process minus before (includes allocator overhead)"),
    }


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass
