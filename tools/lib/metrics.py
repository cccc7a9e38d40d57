"""
A training run's history, read back for the tools: per-step records, checkpoints, a summary and
a diagnosis in plain words.

Pipeline position: after (or during) training. scripts/base_train.py and the other stages write
`metrics.jsonl` and `meta_*.json` through checkpoint_manager; the training dashboard, the LR finder
and the resume helper read them back through `load_run` here, so nothing is parsed twice.

Two kinds of folders are understood:
- this project's: `metrics.jsonl` has one record per optimizer step (train loss, LR, tokens/s,
  val bpb when measured), and each meta has `train_loss`, `lr`, `tokens_seen`;
- upstream nanochat's: only the meta files, without train_loss / lr. The history is then one point
  per checkpoint, and `RunHistory.missing` says what could not be shown and why.

Smoothing is the debiased exponential moving average of training.EMA: it is causal, so a new
point never changes the smoothed values already drawn ("does not rewrite the past"), and the
bias correction keeps the first points from being dragged towards zero.
"""

import os
import math
from dataclasses import dataclass, field

from nanochat.common import UserError
from nanochat import checkpoint_manager as cm
from nanochat.training import EMA

SMOOTH_BETA = 0.9  # the same beta the training loop uses for its smoothed loss

# x-axis choices for series and plots: the record key and a label
X_AXES = {"step": ("step", "step"), "tokens": ("tokens", "tokens seen"), "time": ("time", "training time (s)")}


def finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def smooth(values, beta=SMOOTH_BETA):
    """Debiased EMA of a sequence. NaN/inf points give NaN at their index and leave the average
    untouched, so one bad step does not poison every later value. smooth(v)[:k] == smooth(v[:k])."""
    ema = EMA(beta)
    out = []
    for v in values:
        if finite(v):
            out.append(ema.update(v))
        else:
            out.append(float("nan"))
    return out


# -----------------------------------------------------------------------------
# the history of one run

@dataclass
class RunHistory:
    path: str
    name: str
    origin: str                                       # 'metrics.jsonl' or 'meta files'
    records: list = field(default_factory=list)      # per step, sorted: step, tokens, time, train_loss, lr, ...
    metas: dict = field(default_factory=dict)        # step -> meta dict of each checkpoint
    missing: list = field(default_factory=list)      # sentences: what is not available and why
    smooth_from_log: bool = False                    # smoothed loss taken from loop_state (no per-step losses)

    @property
    def checkpoint_steps(self):
        return sorted(self.metas)

    @property
    def latest_meta(self):
        return self.metas[max(self.metas)] if self.metas else None

    @property
    def model_config(self):
        meta = self.latest_meta
        return meta.get("model_config") if meta else None

    @property
    def stage(self):
        """base, mid, sft or rl: the meta's "stage", else the stage folder the run sits in (a run
        that has saved no checkpoint yet), else rl when the records log rewards, else base."""
        meta = self.latest_meta or {}
        if meta.get("stage") in cm.STAGE_DIRS:
            return meta["stage"]
        parent = os.path.basename(os.path.dirname(os.path.normpath(self.path)))
        for stage, folder in cm.STAGE_DIRS.items():
            if folder == parent:
                return stage
        return "rl" if self.has("reward_mean") else "base"

    @property
    def num_iterations(self):
        meta = self.latest_meta or {}
        n = meta.get("num_iterations") or (meta.get("user_config") or {}).get("num_iterations")
        return n if isinstance(n, int) and n > 0 else None

    def has(self, key):
        return any(finite(r.get(key)) for r in self.records)

    def series(self, key, x="step"):
        """(xs, ys) of the records that have a value for `key` (NaN/inf kept: they are findings)."""
        xkey = X_AXES[x][0]
        xs, ys = [], []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and r.get(xkey) is not None:
                xs.append(r[xkey])
                ys.append(v)
        return xs, ys

    def smoothed_loss(self, x="step"):
        """(xs, smoothed train loss): recomputed from the raw losses, or loop_state's when only metas exist."""
        if self.smooth_from_log:
            return self.series("smooth_train_loss", x)
        xs, ys = self.series("train_loss", x)
        return xs, smooth(ys)


def _read_metas(ckpt_dir):
    """{step: meta} of every checkpoint in the folder; a corrupt meta is a UserError naming it."""
    metas = {}
    for step in cm.list_steps(ckpt_dir):
        metas[step] = cm.read_meta(ckpt_dir, step)
    # metas without a model file (the model was deleted) are ignored, like checkpoint_manager does
    return metas


def _record_from_meta(step, meta):
    """One history point from a checkpoint's meta, for folders without metrics.jsonl."""
    loop = meta.get("loop_state") or {}
    user = meta.get("user_config") or {}
    total_batch = meta.get("total_batch_size") or user.get("total_batch_size")
    tokens = meta.get("tokens_seen", loop.get("tokens_seen"))
    if tokens is None and isinstance(total_batch, int) and total_batch > 0:
        tokens = step * total_batch
    record = {"step": step, "tokens": tokens, "time": loop.get("total_training_time"),
              "val_bpb": meta.get("val_bpb"), "train_loss": meta.get("train_loss")}
    lr = meta.get("lr")
    if isinstance(lr, dict):
        record["lr"] = lr.get("multiplier")
    elif finite(lr):
        record["lr"] = lr
    if finite(loop.get("smooth_train_loss")):
        # the loop stores the raw EMA; undo its bias with the number of updates (upstream: ~ the step)
        count = loop.get("smooth_count") or step
        record["smooth_train_loss"] = loop["smooth_train_loss"] / (1 - SMOOTH_BETA ** max(count, 1))
    return record


def load_run(path, base_dir=None):
    """The RunHistory of a checkpoint folder (or a name [STAGE/]TAG, stage base by default).
    Empty or unreadable folders are a UserError."""
    ckpt_dir = cm.find_run_dir(path, "base", base_dir)
    name = os.path.basename(os.path.normpath(ckpt_dir))
    metas = _read_metas(ckpt_dir)
    metrics_file = os.path.join(ckpt_dir, cm.METRICS_FILE)
    records = cm.read_metrics(ckpt_dir)
    if os.path.exists(metrics_file) and not records and os.path.getsize(metrics_file) > 0:
        raise UserError(f"{metrics_file} has no readable records (not JSON lines in UTF-8?); "
                        "move it away to fall back to the meta files")
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), int)]
    history = RunHistory(path=ckpt_dir, name=name, origin=cm.METRICS_FILE if records else "meta files", metas=metas)
    if records:
        # a resumed run may have logged a step twice before truncation existed: keep the last one
        by_step = {}
        for r in records:
            by_step[r["step"]] = r
        history.records = [by_step[s] for s in sorted(by_step)]
        # val bpb measured at a checkpoint but missing from the log (older logs): take it from the meta
        for r in history.records:
            if r.get("val_bpb") is None and r["step"] in metas and finite(metas[r["step"]].get("val_bpb")):
                r["val_bpb"] = metas[r["step"]]["val_bpb"]
    elif metas:
        history.records = [_record_from_meta(s, metas[s]) for s in sorted(metas)]
        history.missing.append(f"no {cm.METRICS_FILE} (an upstream nanochat folder or an older run): "
                               f"one point per checkpoint ({len(metas)}) from the meta files")
        if not history.has("train_loss"):
            history.missing.append("no per-step train loss (the metas have no train_loss)")
            if history.has("smooth_train_loss"):
                history.smooth_from_log = True
                history.missing[-1] += "; using the smoothed loss saved in loop_state"
        if not history.has("lr"):
            history.missing.append("no learning rate (the metas have no lr)")
        if not history.has("tokens"):
            history.missing.append("no token counts (the metas have no tokens_seen or total_batch_size)")
    else:
        raise UserError(f"{ckpt_dir} has neither {cm.METRICS_FILE} nor checkpoints (model_*.pt + meta_*.json); "
                        "point at a folder such as ~/.cache/nanochat/base_checkpoints/d4")
    supervised = history.stage != "rl"  # RL logs rewards and no throughput or val bpb, by design
    if history.records and supervised and not history.has("tokens_per_sec"):
        history.missing.append("no throughput (tokens/s is only logged in metrics.jsonl)")
    if history.records and supervised and not history.has("val_bpb"):
        history.missing.append("no validation bpb measured yet")
    return history


# -----------------------------------------------------------------------------
# summary

def best_val_checkpoint(history):
    """(step, val_bpb) of the checkpoint with the lowest val bpb in its meta, or None."""
    scored = [(m["val_bpb"], s) for s, m in history.metas.items() if finite(m.get("val_bpb"))]
    if not scored:
        return None
    bpb, step = min(scored)
    return step, bpb


def last_value(history, key):
    """(step, value) of the last record that has `key`, or None."""
    for r in reversed(history.records):
        if r.get(key) is not None:
            return r["step"], r[key]
    return None


def summarize(history):
    """The figures of the dashboard's summary, as a plain dict (also its --json output)."""
    steps = [r["step"] for r in history.records]
    xs, sm = history.smoothed_loss()
    latest_lrs = None
    for r in reversed(history.records):
        if isinstance(r.get("lrs"), dict):
            latest_lrs = r["lrs"]
            break
    if latest_lrs is None and history.latest_meta and isinstance(history.latest_meta.get("lr"), dict):
        latest_lrs = {k: v for k, v in history.latest_meta["lr"].items() if k != "multiplier"}
    best = best_val_checkpoint(history)
    tokens = last_value(history, "tokens")
    ttime = last_value(history, "time")
    n_iter = history.num_iterations
    return {
        "path": history.path,
        "stage": history.stage,
        "origin": history.origin,
        "num_records": len(history.records),
        "first_step": steps[0] if steps else None,
        "last_step": steps[-1] if steps else None,
        "num_iterations": n_iter,
        "progress": (steps[-1] / n_iter) if steps and n_iter else None,
        "num_checkpoints": len(history.metas),
        "checkpoint_steps": history.checkpoint_steps,
        "latest_train_loss": (last_value(history, "train_loss") or (None, None))[1],
        "latest_smooth_train_loss": sm[-1] if sm else None,
        "latest_val_bpb": (last_value(history, "val_bpb") or (None, None))[1],
        "latest_reward_mean": (last_value(history, "reward_mean") or (None, None))[1],        # RL
        "latest_heldout_reward": (last_value(history, "heldout_reward") or (None, None))[1],  # RL
        "latest_lr_multiplier": (last_value(history, "lr") or (None, None))[1],
        "latest_lrs": latest_lrs,
        "best_val_step": best[0] if best else None,
        "best_val_bpb": best[1] if best else None,
        "tokens_seen": tokens[1] if tokens else None,
        "training_time": ttime[1] if ttime else None,
        "model_config": history.model_config,
        "missing": list(history.missing),
    }


# -----------------------------------------------------------------------------
# diagnosis

@dataclass
class Finding:
    check: str      # short name of the check
    level: str      # 'ok', 'info', 'warn', 'bad' or 'unknown' (the data needed is missing)
    text: str       # one or two sentences in plain words


def _check_first_loss(history):
    xs, ys = history.series("train_loss")
    cfg = history.model_config or {}
    vocab = cfg.get("vocab_size")
    if not ys:
        return Finding("first loss", "unknown", "no train loss logged, so the first loss cannot be checked")
    if not vocab:
        return Finding("first loss", "unknown", "no vocab size in the meta, so the first loss cannot be checked")
    if xs[0] > 1:
        return Finding("first loss", "unknown", f"the first logged loss is at step {xs[0]}; the check needs step 1")
    expected = math.log(vocab)
    first = ys[0]
    ratio = first / expected if finite(first) else float("nan")
    where = f"first loss {first:.3f} vs ln(vocab {vocab}) = {expected:.3f}"
    if not finite(first):
        return Finding("first loss", "bad", f"the very first loss is {first}: something is broken before training starts")
    stage = history.stage
    if stage != "base":  # midtraining and SFT start from a trained model, not from a fresh init
        if ratio < 0.9:
            why = ("conversations are new to it, so a few nats above the base model's own loss is normal"
                   if stage == "mid" else "midtraining already trained it on conversations like these, so it "
                   "starts near midtraining's last loss")
            return Finding("first loss", "ok", f"{where}: well below uniform guessing, as it should be: {stage} "
                           f"starts from a trained model ({why})")
        return Finding("first loss", "warn", f"{where}: as high as an untrained model's, but {stage} starts from a "
                       "trained one: were the weights of the stage before loaded, and is it the same tokenizer?")
    if 0.9 <= ratio <= 1.1:
        return Finding("first loss", "ok", f"{where}: the untrained model guesses uniformly, as a good init should")
    if ratio > 1.1:
        return Finding("first loss", "warn", f"{where}: higher than uniform guessing, so the initial weights are "
                       "too large (confidently wrong predictions)")
    return Finding("first loss", "warn", f"{where}: lower than uniform guessing before any training; "
                   "is this a resumed run, or does the data repeat something trivially predictable?")


def first_nonfinite(history, key):
    """(step, value) of the first record whose `key` is NaN or inf, or None."""
    for r in history.records:
        v = r.get(key)
        if isinstance(v, float) and not math.isfinite(v):
            return r["step"], v
    return None


def _check_nonfinite(history, loss_key="train_loss"):
    train, val = first_nonfinite(history, loss_key), first_nonfinite(history, "val_bpb")
    name = "train loss" if loss_key == "train_loss" else loss_key
    if not history.has(loss_key) and not history.has("val_bpb") and not (train or val):
        return Finding("NaN/inf", "unknown", "no losses logged to check")
    if train:
        return Finding("NaN/inf", "bad", f"{name} = {train[1]} first at step {train[0]}: training diverged. Lower "
                       "the learning rate or resume from an earlier checkpoint")
    if val:
        # a diverged model has a NaN train loss too; an inf val bpb beside finite train losses
        # means the evaluation had no tokens to measure (a validation split smaller than one batch)
        beside = ("while every train loss is finite" if history.has(loss_key) else "(no train loss logged to compare)")
        return Finding("NaN/inf", "warn", f"val_bpb = {val[1]} first at step {val[0]} {beside}: not a divergence, "
                       "the validation split was too small to fill one evaluation batch, so nothing was measured. "
                       "Add validation text (the last file of the data folder) or lower --device-batch-size")
    return Finding("NaN/inf", "ok", "every logged loss is a finite number")


def find_spikes(steps, losses, rel=0.25, warmup=5):
    """Steps whose loss exceeds the smoothed loss before them by more than `rel` (25%)."""
    ema = EMA(SMOOTH_BETA)
    spikes = []
    for s, v in zip(steps, losses):
        if not finite(v):
            continue
        if ema.count >= warmup and v > ema.debiased() * (1 + rel):
            spikes.append(s)
        ema.update(v)
    return spikes


def _check_spikes(history):
    xs, ys = history.series("train_loss")
    if len(ys) < 10:
        return Finding("spikes", "unknown", f"too few per-step losses ({len(ys)}) to look for spikes")
    spikes = find_spikes(xs, ys)
    if not spikes:
        return Finding("spikes", "ok", "no loss spikes (no step more than 25% above the smoothed loss)")
    shown = ", ".join(map(str, spikes[:8])) + (" ..." if len(spikes) > 8 else "")
    return Finding("spikes", "warn", f"{len(spikes)} loss spike(s) at step {shown}: a step more than 25% above the "
                   "smoothed loss. A few are harmless; many mean the learning rate is too high")


def _check_plateau(history, window_frac=0.2, min_points=10, threshold=0.01):
    xs, sm = history.smoothed_loss()
    pts = [(x, v) for x, v in zip(xs, sm) if finite(v)]
    if len(pts) < min_points:
        return Finding("plateau", "unknown", f"too few loss points ({len(pts)}) to judge a plateau")
    k = max(min_points // 2, int(len(pts) * window_frac))
    (x0, a), (x1, b) = pts[-k], pts[-1]
    change = (a - b) / abs(a) if a else 0.0
    if change < threshold and history.stage == "sft":
        return Finding("plateau", "info", f"the smoothed loss moved by {100 * change:.2f}% over the last {x1 - x0} steps "
                       f"({a:.3f} -> {b:.3f}). Normal for SFT: midtraining already trained on these kinds of "
                       "conversation, and SFT runs at a small learning rate (--init-lr-frac); judge it by chat_eval "
                       "(its Refusal row is the family only SFT trains)")
    if change < threshold:
        return Finding("plateau", "warn", f"the smoothed loss moved by {100 * change:.2f}% over the last {x1 - x0} "
                       f"steps ({a:.3f} -> {b:.3f}): a plateau. If the LR is still high, warmdown may help; "
                       "if it is already low, the model may be at its capacity for this data")
    return Finding("plateau", "ok", f"still improving: the smoothed loss fell {100 * change:.1f}% over the last "
                   f"{x1 - x0} steps ({a:.3f} -> {b:.3f})")


def _check_gap(history):
    """Val bpb and train loss are in different units (bits per byte vs nats per token), but their
    ratio only changes when the gap between val and train changes: bpb = nats / ln 2 / bytes-per-token,
    and bytes per token is a constant of the tokenizer and data. A ratio that keeps rising means val
    improves more slowly than train: overfitting (or a train/val mismatch)."""
    pairs = []
    sm_by_step = dict(zip(*history.smoothed_loss()))
    for r in history.records:
        v, t = r.get("val_bpb"), sm_by_step.get(r["step"])
        if finite(v) and finite(t) and t > 0:
            pairs.append((r["step"], v / t))
    if len(pairs) < 3:
        return Finding("train/val gap", "unknown", f"needs 3+ val measurements with a train loss beside them "
                       f"(have {len(pairs)})")
    first, last = pairs[0][1], pairs[-1][1]
    rising = all(b[1] >= a[1] for a, b in zip(pairs[-3:], pairs[-2:]))
    if last > first * 1.05 and rising:
        return Finding("train/val gap", "warn", f"val bpb is falling more slowly than the train loss (val/train "
                       f"ratio {first:.3f} at step {pairs[0][0]} -> {last:.3f} at step {pairs[-1][0]}): the model "
                       "starts to memorise its training data. More data, or stop at the best val checkpoint")
    return Finding("train/val gap", "ok", f"val and train improve together (val/train ratio {first:.3f} -> {last:.3f})")


def _warmdown_start(history):
    """First step of the warmdown from the run's own settings, or None when they are unknown."""
    meta = history.latest_meta or {}
    user = meta.get("user_config") or {}
    n = history.num_iterations
    ratio = user.get("warmdown_ratio")
    if n and finite(ratio) and ratio > 0:
        # lr_multiplier(i) (i = 0-based step) is 1 while i <= n - warmdown; records count steps done = i + 1
        return n - round(ratio * n) + 2
    return None


def _check_warmdown(history):
    xs, lrs = history.series("lr")
    start = _warmdown_start(history)
    last_step = history.records[-1]["step"] if history.records else 0
    if lrs:
        peak = max(v for v in lrs if finite(v)) if any(finite(v) for v in lrs) else None
        peak_i = lrs.index(peak) if peak is not None else 0
        below = [(x, v) for x, v in zip(xs[peak_i:], lrs[peak_i:]) if finite(v) and v < peak * 0.999]
        if below:
            x, _ = below[0]
            if start is not None and start <= 2 and x <= 2:  # --warmdown-ratio 1 (SFT's default)
                return Finding("warmdown", "info", f"the whole run is a warmdown: the LR falls linearly from the first "
                               f"step (--warmdown-ratio 1), now x{lrs[-1]:.3f} of its start")
            return Finding("warmdown", "info", f"warmdown reached at step {x}: the LR is now x{lrs[-1]:.3f} of its "
                           "peak, and the loss usually drops faster here")
        if start:
            return Finding("warmdown", "info", f"not in warmdown yet: the LR stays at its peak until step {start - 1} "
                           f"(now at step {last_step})")
        return Finding("warmdown", "info", "the LR has not decreased yet")
    if start:
        reached = last_step >= start
        return Finding("warmdown", "info", (f"warmdown reached (it starts at step {start} by the run's settings; "
                       f"now at step {last_step}); no LR was logged" if reached else
                       f"not in warmdown yet: by the run's settings it starts at step {start} (now {last_step})"))
    return Finding("warmdown", "unknown", "no LR logged and no warmdown settings in the meta")


DIAGNOSIS_CHECKS = (_check_first_loss, _check_nonfinite, _check_spikes, _check_plateau, _check_gap, _check_warmdown)


# RL logs no train loss or val bpb: one record per step with reward_mean (the mean reward of the
# step's sampled replies), the policy-gradient loss, the LR, and heldout_* when it evaluated

def _mean(values):
    return sum(values) / len(values)


def _check_rl_reward(history):
    _, ys = history.series("reward_mean")
    ys = [v for v in ys if finite(v)]
    if len(ys) < 8:
        return Finding("reward trend", "unknown", f"too few steps with a reward ({len(ys)}) to see a trend (needs 8)")
    q = len(ys) // 4
    first, last = ys[:q], ys[-q:]
    a, b = _mean(first), _mean(last)
    if max(ys) == 0:
        return Finding("reward trend", "bad", "every sampled reply scored 0: no reply is better than its siblings, so "
                       "there is no advantage and nothing to learn. Start from a model that solves some problems "
                       "(more SFT) or give it easier ones (--task Arithmetic)")
    if min(a, b) >= 0.98:
        return Finding("reward trend", "info", f"the mean reward is already {b:.3f}: the model solves nearly every "
                       "problem, so RL has little left to learn; try harder problems")
    # the noise of a quarter's mean: the spread of the step rewards over the square root of their number
    var = lambda v, m: sum((x - m) ** 2 for x in v) / max(1, len(v) - 1)
    noise = math.sqrt(var(first, a) / q + var(last, b) / q)
    where = f"mean reward {a:.3f} over the first quarter of the steps -> {b:.3f} over the last"
    if b - a > 2 * noise:
        return Finding("reward trend", "ok", f"{where}: the policy is learning")
    if a - b > 2 * noise:
        return Finding("reward trend", "warn", f"{where}: falling. The learning rate may be too high (--init-lr-frac) "
                       "or the replies are drifting; compare the held-out reward")
    return Finding("reward trend", "warn", f"{where}: no clear change (within the step-to-step noise {2 * noise:.3f}). "
                   "More steps, more samples per question or a higher learning rate may help")


def _check_rl_heldout(history):
    """Held-out reward before RL (the meta's loop_state) and after (the last evaluation)."""
    meta = history.latest_meta or {}
    before = ((meta.get("loop_state") or {}).get("heldout_before") or {}).get("reward")
    xs, ys = history.series("heldout_reward")
    pairs = [(x, v) for x, v in zip(xs, ys) if finite(v)]
    after = pairs[-1][1] if pairs else (meta.get("heldout") or {}).get("reward")
    if not finite(before) and len(pairs) >= 2:
        before = pairs[0][1]
    if not finite(after):
        return Finding("held-out", "unknown", "no held-out evaluation logged yet (it runs every --eval-every steps "
                       "and at the end)")
    if not finite(before):
        return Finding("held-out", "info", f"held-out mean reward {after:.3f}; no earlier measurement to compare with")
    if after > before:
        return Finding("held-out", "ok", f"held-out mean reward {before:.3f} before RL -> {after:.3f}: it improves "
                       "on problems it never trained on")
    return Finding("held-out", "warn", f"held-out mean reward {before:.3f} before RL -> {after:.3f}: no gain on "
                   "problems it never trained on. A longer run, or the training reward rose by memorising")


RL_CHECKS = (_check_rl_reward, lambda h: _check_nonfinite(h, "loss"), _check_rl_heldout)


def diagnose(history):
    """A list of Findings, one per check, in the order a learner should read them: the loss checks
    for base, mid and SFT runs (the first-loss check judged by the stage), the reward checks for RL."""
    checks = RL_CHECKS if history.stage == "rl" else DIAGNOSIS_CHECKS
    return [check(history) for check in checks]


# -----------------------------------------------------------------------------
# plot

# the panels of the dashboard figure: (title, y label, what to say when no run has the data, lines)
# with lines (key, how): "raw" (thin), "smoothed" (debiased EMA), "line", "points" (sparse
# measurements), "points-best-low" (the same, with the lowest value marked)
SUPERVISED_PANELS = [
    ("Train loss", "loss (nats/token)", "no train loss logged (upstream metas have none)",
     [("train_loss", "raw"), ("train_loss", "smoothed")]),
    ("Validation bits per byte", "val bpb", "no val bpb measured", [("val_bpb", "points-best-low")]),
    ("Learning-rate multiplier", "LR x peak", "no LR logged (upstream metas have none)", [("lr", "line")]),
    ("Throughput", "tokens / s", "no throughput logged (needs metrics.jsonl)",
     [("tokens_per_sec", "raw"), ("tokens_per_sec", "smoothed")]),
]
# RL logs rewards, not a train loss, val bpb or throughput (scripts/chat_rl.py)
RL_PANELS = [
    ("Mean reward", "reward", "no reward logged",
     [("reward_mean", "raw"), ("reward_mean", "smoothed"), ("heldout_reward", "points")]),
    ("Policy-gradient loss", "loss", "no loss logged", [("loss", "raw"), ("loss", "smoothed")]),
    ("Learning-rate multiplier", "LR x peak", "no LR logged", [("lr", "line")]),
    ("Reply length", "tokens per reply", "no reply length logged",
     [("reply_tokens", "raw"), ("reply_tokens", "smoothed")]),
]
LINE_NAMES = {"train_loss": "loss", "reward_mean": "train reward", "heldout_reward": "held-out reward"}


def plot_panels(histories):
    """The panels for these runs: the reward panels when every run is an RL run, else the loss panels."""
    return RL_PANELS if all(h.stage == "rl" for h in histories) else SUPERVISED_PANELS


def _plot_line(ax, h, key, how, x, c, label):
    if key == "train_loss" and how == "smoothed":
        xs, ys = h.smoothed_loss(x)  # recomputed, or loop_state's when only metas exist
    else:
        xs, ys = h.series(key, x)
        if how == "smoothed":
            ys = smooth(ys)
    if not ys:
        return
    name = LINE_NAMES.get(key, "")
    if how == "raw":
        ax.plot(xs, ys, color=c, alpha=0.3, linewidth=1, label=f"{label}raw {name}".rstrip())
    elif how == "smoothed":
        ax.plot(xs, ys, color=c, linewidth=2, label=f"{label}smoothed {name} (debiased EMA {SMOOTH_BETA})".replace("  ", " "))
    elif how == "line":
        ax.plot(xs, ys, color=c, linewidth=2, label=h.name)
    else:
        ax.plot(xs, ys, color=c, marker="o", markersize=4, label=f"{label}{name}" if name else h.name)
        good = [(v, xv) for xv, v in zip(xs, ys) if finite(v)]
        if how == "points-best-low" and good:
            best = min(good)
            ax.annotate(f"best {best[0]:.4f}", (best[1], best[0]), textcoords="offset points",
                        xytext=(-4, 8), ha="right", fontsize=8, color=c)


def plot_runs(histories, output, x="step"):
    """The dashboard figure for one or more runs (overlaid), four panels (plot_panels): for base, mid
    and SFT runs loss raw + smoothed, val bpb, LR schedule, tokens/s; for RL runs the mean reward
    (with the held-out reward), the policy-gradient loss, the LR and the reply length. Panels
    without data say what is missing. Returns the PNG path."""
    from tools.lib import plotting
    xlabel = X_AXES[x][1]
    title = histories[0].name if len(histories) == 1 else " vs ".join(h.name for h in histories)
    fig, axes = plotting.new_figure(2, 2, width=12, height=8, title=f"Training run: {title}")
    single = len(histories) == 1
    for ax, (ptitle, ylabel, why, lines) in zip([axes[0][0], axes[0][1], axes[1][0], axes[1][1]], plot_panels(histories)):
        for i, h in enumerate(histories):
            for key, how in lines:
                _plot_line(ax, h, key, how, x, plotting.color(i), "" if single else f"{h.name}: ")
        drawn = bool(ax.get_lines())
        if not drawn and any(h.has(key) for h in histories for key, _ in lines):  # logged, but not against this x
            why = f"logged, but without '{X_AXES[x][0]}' per step: try --x step"
        if drawn:
            plotting.style_axes(ax, title=ptitle, xlabel=xlabel, ylabel=ylabel, legend=True)
        else:
            ax.set_title(ptitle, fontsize=11, fontweight="bold")
            plotting.empty_panel(ax, why)
    return plotting.save_figure(fig, output)
