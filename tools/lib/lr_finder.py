"""
Learning rates: what a finished run's schedule was and how it went, and a Leslie Smith range test
that measures which learning rate suits this architecture on the real data.

Pipeline position: before (range test) and after (analysis) a training run; tools/lr_finder.py
prints and plots what these functions compute. Runs are read through tools.lib.metrics.load_run.

The range test (L. Smith, "Cyclical Learning Rates for Training Neural Networks", 2017): train a
fresh model for N steps while the learning rate grows exponentially from tiny to huge. The loss
first barely moves (LR too small), then falls fast, then blows up (LR too large). The run stops
once the smoothed loss exceeds 4x its best. Two readings of the curve are given:
- steepest: where the smoothed loss falls fastest per decade of LR;
- valley: the stretch where the loss is coming down (from the point where a tenth of the total
  drop is done to the minimum), taken halfway along in log-LR: high enough to learn fast, well
  below the minimum, where training is already close to unstable (a ramp reaches its minimum
  at LRs that would diverge if held for long).

This project trains with one optimizer and several parameter groups (Muon for matrices, AdamW for
embeddings, LM head and scalars), each with its own LR. The test keeps their ratios and scales all
of them by one multiplier (training.apply_lr, exactly as the schedule does), so the answer is one
number that translates into every flag: --matrix-lr, --embedding-lr, --unembedding-lr, --scalar-lr.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from nanochat.common import UserError
from nanochat.gpt import OPTIMIZER_DEFAULTS
from nanochat.training import EMA, apply_lr, build_optimizer
from tools.lib.metrics import finite, find_spikes, smooth

# the learning-rate flags of the training scripts, with the defaults they all share
LR_FLAGS = {k: OPTIMIZER_DEFAULTS[k] for k in ("matrix_lr", "embedding_lr", "unembedding_lr", "scalar_lr")}
# the parameter groups of GPT.setup_optimizers (the names metrics.jsonl logs under "lrs") and the
# flag that sets each one's LR: the LM head's is --unembedding-lr, not a "lm_head_lr"
GROUP_FLAGS = {"matrix": "matrix_lr", "embedding": "embedding_lr", "lm_head": "unembedding_lr", "scalar": "scalar_lr"}
SCHEDULES = ("constant", "decay", "warmup", "warmup_decay", "custom")


# -----------------------------------------------------------------------------
# analysis of a run

def classify_schedule(lrs, tol=0.01):
    """The shape of an LR schedule: {kind, peak, warmup_end, decay_start} with kind one of SCHEDULES.

    constant: flat; warmup: rises to the peak and stays; decay: starts at the peak and falls;
    warmup_decay: rises, (plateaus), falls; custom: anything else (cycles, steps back up, ...).
    warmup_end / decay_start are indices into `lrs`."""
    values = [float(v) for v in lrs if finite(v)]
    if not values:
        return {"kind": None, "peak": None, "warmup_end": None, "decay_start": None}
    peak = max(values)
    if peak <= 0:
        return {"kind": "constant", "peak": peak, "warmup_end": 0, "decay_start": None}
    r = [v / peak for v in values]
    at_peak = [i for i, v in enumerate(r) if v >= 1 - tol]
    first, last = at_peak[0], at_peak[-1]
    rises = all(r[i + 1] >= r[i] - tol for i in range(first))            # monotone up to the peak
    falls = all(r[i + 1] <= r[i] + tol for i in range(last, len(r) - 1))  # monotone after it
    flat_top = all(v >= 1 - tol for v in r[first:last + 1])
    warmup = first > 0
    decay = last < len(r) - 1
    out = {"peak": peak, "warmup_end": first, "decay_start": last + 1 if decay else None}
    if not (rises and falls and flat_top):
        kind = "custom"
    elif warmup and decay:
        kind = "warmup_decay"
    elif warmup:
        kind = "warmup"
    elif decay:
        kind = "decay"
    else:
        kind = "constant"
    out["kind"] = kind
    return out


def analyze_run(history):
    """Figures and plain-words recommendations for a run (a metrics.RunHistory)."""
    steps, lrs = history.series("lr")
    _, losses = history.series("train_loss")
    meta = history.latest_meta or {}
    user = meta.get("user_config") or {}
    out = {"path": history.path, "steps": len(history.records), "lr_logged": bool(lrs)}
    sched = classify_schedule(lrs)
    out["schedule"] = sched["kind"]
    if lrs:
        out["lr_multiplier_range"] = (min(lrs), max(lrs))
        if sched["warmup_end"]:
            out["warmup_steps"] = steps[sched["warmup_end"]] - steps[0]
        if sched["decay_start"] is not None:
            out["decay_from_step"] = steps[sched["decay_start"]]
    groups = {}
    for r in history.records:
        for name, v in (r.get("lrs") or {}).items():
            if finite(v):
                lo, hi = groups.get(name, (v, v))
                groups[name] = (min(lo, v), max(hi, v))
    out["group_lr_range"] = groups
    out["base_lrs"] = {k: user[k] for k in LR_FLAGS if finite(user.get(k))}
    # every LR flag as the run set it (a flag its meta does not record had its default)
    out["flags"] = flags_for(1.0, {k: out["base_lrs"].get(k, default) for k, default in LR_FLAGS.items()})
    out["flags_from"] = "the run's settings" if len(out["base_lrs"]) == len(LR_FLAGS) else \
        "the run's settings and the defaults" if out["base_lrs"] else "the defaults (the run's meta records no LRs)"
    out["suggested_flags"] = None
    # the best point: lowest val bpb if measured, else lowest smoothed train loss
    vsteps, vbpb = history.series("val_bpb")
    vgood = [(b, s) for s, b in zip(vsteps, vbpb) if finite(b)]
    if vgood:
        b, s = min(vgood)
        out["best"] = {"step": s, "metric": "val_bpb", "value": b}
    else:
        xs, sm = history.smoothed_loss()
        good = [(v, s) for s, v in zip(xs, sm) if finite(v)]
        if good:
            v, s = min(good)
            out["best"] = {"step": s, "metric": "smoothed train loss", "value": v}
    out["recommendations"] = _recommendations(history, steps, lrs, losses, sched, out)
    return out


def _recommendations(history, steps, lrs, losses, sched, out):
    recs = []
    if not lrs:
        recs.append("no learning rate was logged (an upstream or older run): run the range test "
                    "(--range-test) to measure a good LR for this model")
    bad = [s for s, v in zip(*history.series("train_loss")) if not finite(v)]
    if bad:
        recs.append(f"the loss became NaN/inf at step {bad[0]}: the LR is too high for this model; "
                    "try half the LRs and a warmup (--warmup-ratio 0.05)")
        out["suggested_flags"] = {**{f: v / 2 for f, v in out["flags"].items()}, "--warmup-ratio": 0.05}
    xs, ls = history.series("train_loss")
    pairs = [(x, v) for x, v in zip(xs, ls) if finite(v)]
    if pairs:
        spikes = find_spikes([x for x, _ in pairs], [v for _, v in pairs])
        if spikes and sched["kind"] in ("constant", "decay"):
            recs.append(f"{len(spikes)} loss spike(s) (first at step {spikes[0]}) "
                        "without a warmup: a short warmup (--warmup-ratio 0.02-0.05) usually removes them")
    sm = smooth([v for _, v in pairs]) if pairs else []
    if len(sm) >= 10:
        first, last = sm[min(4, len(sm) - 1)], sm[-1]
        if finite(first) and finite(last) and first > 0 and (first - last) / first < 0.03:
            recs.append("the smoothed loss fell by less than 3% over the run: the LR may be too low (or the run "
                        "too short); measure it with --range-test")
        tail = sm[-max(3, len(sm) // 5):]
        if finite(tail[0]) and finite(tail[-1]) and tail[0] > 0 and (tail[0] - tail[-1]) / tail[0] > 0.02:
            recs.append("the loss was still falling clearly at the end: a longer run would likely help")
    if sched["kind"] in ("constant", "warmup"):
        recs.append("the LR never decays: a warmdown at the end (--warmdown-ratio 0.2-0.4) usually gives a lower "
                    "final loss for free")
    best = out.get("best")
    if best and best["metric"] == "val_bpb" and history.records and best["step"] < history.records[-1]["step"]:
        recs.append(f"val bpb was best at step {best['step']}, not at the end: later steps overfit or the LR was "
                    "too high late in the run; use that checkpoint")
    if not recs:
        recs.append("nothing stands out: the schedule and the loss curve look healthy")
    return recs


# -----------------------------------------------------------------------------
# the range test

@dataclass
class RangeCurve:
    multipliers: list
    losses: list
    smoothed: list
    stop_reason: str            # "diverged (4x best)", "non-finite loss" or "reached the end"
    seed: int = 0
    steepest: float = None      # suggested multipliers
    valley: float = None
    best_multiplier: float = None
    noise: float = None          # std of raw - smoothed loss before the minimum
    drop: float = None           # how far the smoothed loss fell from its start to its minimum
    extra: dict = field(default_factory=dict)

    @property
    def stopped_early(self):
        return self.stop_reason != "reached the end"


def exponential_multipliers(start, end, num_steps):
    """num_steps values growing by a constant factor from start to end."""
    if not (0 < start < end) or num_steps < 2:
        raise UserError("the range test needs 0 < --start < --end and at least 2 steps")
    ratio = (end / start) ** (1 / (num_steps - 1))
    return [start * ratio ** i for i in range(num_steps)]


def range_test(step_fn, start=1e-2, end=1e2, num_steps=100, beta=0.9, diverge_factor=4.0, seed=0, on_step=None):
    """Run a range test: step_fn(multiplier) takes one training step and returns its loss.

    Loss is smoothed with the debiased EMA (training.EMA); the test stops early when the smoothed
    loss exceeds diverge_factor x its best, or the loss is NaN/inf. Returns a RangeCurve with
    both suggestions filled in."""
    mults, losses, smoothed = [], [], []
    ema = EMA(beta)
    best = math.inf
    reason = "reached the end"
    for i, mult in enumerate(exponential_multipliers(start, end, num_steps)):
        loss = float(step_fn(mult))
        if on_step:
            on_step(i)
        if not math.isfinite(loss):
            reason = "non-finite loss"
            break
        s = ema.update(loss)
        mults.append(mult)
        losses.append(loss)
        smoothed.append(s)
        best = min(best, s)
        if s > diverge_factor * best:
            reason = f"diverged ({diverge_factor:g}x best)"
            break
    curve = RangeCurve(mults, losses, smoothed, reason, seed)
    fill_suggestions(curve)
    return curve


def fill_suggestions(curve):
    sm = np.array(curve.smoothed)
    if len(sm) < 5:
        return curve
    lm = np.log(np.array(curve.multipliers))
    imin = int(np.argmin(sm))
    curve.best_multiplier = curve.multipliers[imin]
    # the starting level and the noise: over the first tenth of the steps the LR is too small to
    # change anything, so those losses differ only by batch-to-batch noise
    head = np.array(curve.losses[:max(3, len(sm) // 10)])
    start_level = float(head.mean())
    curve.noise = float(head.std())
    curve.drop = start_level - float(sm[imin])
    if curve.drop <= 0 or imin == 0:
        return curve
    # the descent: the last stretch before the minimum where the loss stays below its start by at
    # least a tenth of the total drop (earlier dips are noise)
    threshold = start_level - 0.1 * curve.drop
    above = [i for i in range(imin) if sm[i] > threshold]
    a = above[-1] + 1 if above else 0
    # steepest: the most negative slope d(loss)/d(log lr) in the descent, measured over a few points
    h = max(1, len(sm) // 40)
    best_slope = 0.0
    for i in range(a, imin + 1):
        lo, hi = max(0, i - h), min(len(sm) - 1, i + h)
        slope = (sm[hi] - sm[lo]) / (lm[hi] - lm[lo])
        if slope < best_slope:
            best_slope, curve.steepest = slope, curve.multipliers[i]
    # valley: halfway along the descent in log-LR (the geometric mean of its two ends)
    curve.valley = float(math.exp((lm[a] + lm[imin]) / 2))
    return curve


def model_step_fn(model, optimizer, batches, autocast=None):
    """A step_fn for range_test: one optimizer step of the real model with every group's LR set to
    initial_lr x multiplier (training.apply_lr)."""
    step = [0]

    def step_fn(mult):
        x, y = next(batches)
        if autocast is not None:
            with autocast():
                loss = model(x, y)
        else:
            loss = model(x, y)
        loss.backward()
        apply_lr(optimizer, mult, step[0])
        optimizer.step()
        model.zero_grad(set_to_none=True)
        step[0] += 1
        return loss.item()
    return step_fn


def range_test_model(config, tokenizer, base_lrs, batch_size, seed=0, device="cpu", data_dir=None, **kwargs):
    """A range test on a fresh model of `config` (initialised with `seed`), on the real pretraining data."""
    from nanochat.gpt import build_model
    from nanochat.dataloader import DataLoader
    torch.manual_seed(seed)
    model = build_model(config, device)
    model.train()
    optimizer = build_optimizer(model, base_lrs)
    batches = iter(DataLoader(tokenizer, batch_size, config.sequence_len, "train", device, data_dir))
    for _ in range(seed * kwargs.get("num_steps", 100)):
        next(batches)  # each seed also sees different data, so the spread covers both sources of noise
    return range_test(model_step_fn(model, optimizer, batches), seed=seed, **kwargs)


def spread_summary(curves, method="valley"):
    """{values, geomean, low, high, ratio} of one method's suggestions over the seeds."""
    vals = [getattr(c, method) for c in curves if getattr(c, method)]
    if not vals:
        return {"values": [], "geomean": None, "low": None, "high": None, "ratio": None}
    g = math.exp(sum(math.log(v) for v in vals) / len(vals))
    return {"values": vals, "geomean": g, "low": min(vals), "high": max(vals), "ratio": max(vals) / min(vals)}


def noise_verdict(curves, max_ratio=4.0):
    """(trustworthy, [reasons]) in plain words: is the curve clean enough to pick an LR from?"""
    reasons = []
    for c in curves:
        if c.valley is None and c.steepest is None:
            reasons.append(f"seed {c.seed}: the loss never fell clearly (too few steps, or --start already too high)")
        elif c.noise is not None and c.drop is not None and c.drop < 2 * c.noise:
            reasons.append(f"seed {c.seed}: the loss fell by {c.drop:.3f}, less than twice its step-to-step noise "
                           f"({c.noise:.3f}); use a larger batch or more steps")
        if c.multipliers and c.best_multiplier == c.multipliers[-1] and not c.stopped_early:
            reasons.append(f"seed {c.seed}: the loss was still falling at --end; raise --end")
    s = spread_summary(curves)
    if s["ratio"] is not None and s["ratio"] > max_ratio:
        reasons.append(f"the seeds disagree by a factor of {s['ratio']:.1f} (more than {max_ratio:g}x)")
    return not reasons, reasons


def flags_for(multiplier, base_lrs):
    """The training flags for a multiplier: {'--matrix-lr': value, ...}."""
    return {"--" + k.replace("_", "-"): v * multiplier for k, v in base_lrs.items()}
