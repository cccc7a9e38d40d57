"""
Our training step and decode against upstream nanochat's (the "peer"), side by side, same settings.

    python -m bench.bench_peer --peer /tmp/peer                  # 3 rounds: eager step, decode, compiled step
    python -m bench.bench_peer --peer /tmp/peer --no-compile     # eager step and decode only (~5 minutes)
    python -m bench.bench_peer --peer /tmp/peer --upstream-arch  # our model with the peer's architecture

A peer checkout, for example: git clone https://github.com/karpathy/nanochat /tmp/peer
(or from a bare mirror: mkdir -p /tmp/peer && git --git-dir=MIRROR archive HEAD | tar -x -C /tmp/peer).
The peer is only run, never copied: nothing of it enters this repository.

Both packages are called `nanochat`, so each side runs in a process of its own: this file starts
itself as a worker (`--worker`, internal) with our checkout or the peer's first on sys.path, and
the worker prints its figures as one JSON line. Each round runs ours and the peer in turn (ours
first in odd rounds, the peer first in even ones), so both see the same minutes of a shared
machine: the ratio ours/peer of one round is the figure; tokens/s alone move with the machine.

Same settings for both (--depth ... flags): the CPU demo's model (runs/cpu_demo.sh: depth 4, dim
256, 4 heads of 64, vocab 4096, context 256, window pattern "L": every layer sees the full
context), 16 rows x 256 tokens per step, fp32, CPU, --threads threads and OMP_WAIT_POLICY=PASSIVE
unless it is set (as the demo). A step is what each project's base_train does: forward with the
loss, backward, the optimizer's step, gradients zeroed; each side's optimizer is built as its own
base_train builds it (ours: training.build_optimizer with the default learning rates; the peer:
model.setup_optimizer() with its default arguments, or setup_optimizers() where that exists).

- eager step: tokens/s of the median of --steps steps after --warmup steps (the median: a step
  slowed by another process on a shared machine does not move it).
- compiled step: the same after torch.compile(model, dynamic=False), as both base_trains do. The
  compile time is what the warm-up steps took beyond as many compiled steps (wall time). Every
  compiling worker starts from an empty inductor cache of its own, so each round pays the whole
  compile, as a learner's first run does (minutes per side and round: --no-compile skips it).
  The eager workers of one side share a cache, so an optimizer that compiles (the peer's does)
  compiles in the first round's eager warm-up only.
- decode: batch 1, each project's own KV-cache Engine, greedy (temperature 0), a prompt of
  --prompt-len random tokens; tokens/s from the first new token to the last (the prefill is not
  timed), best of --decode-repeats. The Engines get a stand-in tokenizer whose special tokens lie
  outside the vocabulary, so no row stops early and no tool call starts.

--clock cpu times each process's CPU time instead of wall time (as bench_engine's --clock): on a
machine others are using it leaves out the time they took.

--quality STEPS compares what the training buys instead of its speed: both sides train STEPS steps
from their own initialisation on the same batches of real text, then measure bits per byte on the
same held-out tokens. The text is the demo's (the data folder's train and val splits, the embedded
corpus on a fresh machine), tokenized by a --vocab-size BPE tokenizer trained here on the train
split; rows are documents packed end to end, each after a BOS. Both sides follow one learning-rate
schedule (training.lr_multiplier with its defaults: constant, then a linear warmdown to 0 over the
last 40% of steps) on each optimizer's own default rates; momentum and weight decay stay at each
optimizer's defaults. The training time (its first step, where the peer's optimizer compiles,
apart) says what each bits-per-byte figure cost. It takes about STEPS x 4.5 s here, plus the
peer's compile:

    python -m bench.bench_peer --peer /tmp/peer --quality 45

The header of the output says where the two sides differ beyond the settings (architecture
pieces, optimizer): read the ratios with it.
"""

import os
import sys
import json
import time
import argparse
import tempfile
import statistics
import subprocess
from pathlib import Path

# This file is also the peer's worker, whose process must import the peer's `nanochat` and never
# ours: only the standard library is imported up here; torch and our package inside functions.

OUR_ROOT = Path(__file__).resolve().parent.parent
# what the peer imports on the way to its model and engine that has nothing to do with either (its
# tokenizer, checkpoint locks, FlashAttention kernels on CUDA): replaced by a stub when not installed
IRRELEVANT_TO_THE_MODEL = ("rustbpe", "tiktoken", "filelock", "kernels")


def parse_args(argv=None):
    from nanochat.common import ArgumentParser, int_range
    p = ArgumentParser(prog="python -m bench.bench_peer", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", type=str, default=None, help="folder of an upstream nanochat checkout (required)")
    p.add_argument("--rounds", type=int_range(1, 100), default=3, help="ours and the peer in turn, this many times")
    p.add_argument("--threads", type=int_range(1, 1024), default=2, help="torch CPU threads of each side")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled step (its compile takes minutes)")
    p.add_argument("--upstream-arch", action="store_true",
                   help="our model with upstream's architecture options (as base_train --upstream-arch)")
    p.add_argument("--depth", type=int_range(1, 64), default=4)
    p.add_argument("--dim", type=int_range(1, 8192), default=256, help="model dim")
    p.add_argument("--head-dim", type=int_range(1, 1024), default=64)
    p.add_argument("--vocab-size", type=int_range(2, 1 << 20), default=4096)
    p.add_argument("--seq-len", type=int_range(2, 1 << 16), default=256, help="context length = tokens per row")
    p.add_argument("--rows", type=int_range(1, 4096), default=16, help="rows per training step")
    p.add_argument("--warmup", type=int_range(1, 100), default=2, help="untimed steps first (a compile happens here)")
    p.add_argument("--steps", type=int_range(1, 1000), default=5, help="timed training steps")
    p.add_argument("--prompt-len", type=int_range(1, 1 << 16), default=128, help="decode: prompt tokens")
    p.add_argument("--new-tokens", type=int_range(2, 1 << 16), default=64, help="decode: tokens generated")
    p.add_argument("--decode-repeats", type=int_range(1, 100), default=3, help="decode: best of this many")
    p.add_argument("--quality", type=int_range(1, 100_000), default=None, metavar="STEPS",
                   help="instead of timing: train both STEPS steps on the demo's text, then compare val bits per byte")
    p.add_argument("--val-rows", type=int_range(1, 100_000), default=64,
                   help="--quality: held-out rows of --seq-len tokens that bits per byte is measured on")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or each process's CPU time (on a machine others are using, it leaves out the "
                        "time they took; the compile time is wall time either way)")
    return p.parse_args(argv)


# -----------------------------------------------------------------------------
# the worker: one side, one task, in a process of its own

class StandInTokenizer:
    """What both Engines ask of a tokenizer; special ids outside the vocabulary are never sampled."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size
        self.ids = {}

    def encode_special(self, name):
        return self.ids.setdefault(name, self.vocab_size + 1000 + len(self.ids))

    def get_bos_token_id(self):
        return self.encode_special("<|bos|>")


def stub_module(name):
    """A module whose every public attribute is a placeholder that refuses to be used."""
    import types

    class Placeholder:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"bench_peer stubbed '{name}' (not installed): the benchmark should not use it")

    def attribute(attr):
        if attr.startswith("__"):  # __file__, __path__, ...: tools that walk sys.modules ask for these
            raise AttributeError(attr)
        return Placeholder
    module = types.ModuleType(name)
    module.__getattr__ = attribute
    return module


def import_side(side, root):
    """Import the `nanochat` of `root` (ours or the peer's); returns (gpt, engine, stubbed modules)."""
    import importlib
    sys.path[0] = str(root)  # in place of this file's folder: `root` decides which `nanochat` is found
    stubbed = []
    while True:
        try:
            gpt = importlib.import_module("nanochat.gpt")
            engine = importlib.import_module("nanochat.engine")
            break
        except ModuleNotFoundError as e:
            if side == "peer" and e.name in IRRELEVANT_TO_THE_MODEL and e.name not in stubbed:
                sys.modules[e.name] = stub_module(e.name)  # then import the peer again, from the start
                stubbed.append(e.name)
                for half_imported in [m for m in sys.modules if m.split(".")[0] == "nanochat"]:
                    del sys.modules[half_imported]
                continue
            print(f"error: the {side} code at {root} needs the package '{e.name}', which this Python "
                  f"({sys.executable}) lacks: install it (pip install {e.name}) and run again", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # the peer's code does not import with this Python or torch
            print(f"error: importing the {side} code at {root} failed: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(2)
    found = Path(gpt.__file__).resolve()
    if not found.is_relative_to(Path(root).resolve()):
        raise RuntimeError(f"the {side} worker imported {found}, not the nanochat of {root}")
    return gpt, engine, stubbed


def build_side(side, gpt, s):
    """The model and optimizer as each project's base_train builds them, and a line saying how."""
    import torch
    shape = dict(sequence_len=s["seq_len"], vocab_size=s["vocab_size"], n_layer=s["depth"],
                 n_head=s["dim"] // s["head_dim"], n_kv_head=s["dim"] // s["head_dim"], n_embd=s["dim"],
                 window_pattern="L")
    torch.manual_seed(0)
    if side == "ours":
        from nanochat.training import build_optimizer
        options = dict(gpt.UPSTREAM_ARCH) if s["upstream_arch"] else {}
        config = gpt.GPTConfig(**shape, **options)
        model = gpt.build_model(config, torch.device("cpu"))
        optimizer = build_optimizer(model, {})  # base_train: its flags' defaults are the defaults here
        how = "GPT.setup_optimizers() via training.build_optimizer, default learning rates"
    else:
        config = gpt.GPTConfig(**shape)
        with torch.device("meta"):  # as the peer's base_train: shapes first, then storage, then init
            model = gpt.GPT(config)
        model.to_empty(device=torch.device("cpu"))
        model.init_weights()
        setup = getattr(model, "setup_optimizer", None) or getattr(model, "setup_optimizers", None)
        if setup is None:
            print("error: the peer's GPT has neither setup_optimizer() nor setup_optimizers(); this bench "
                  "does not know how it builds its optimizer", file=sys.stderr)
            sys.exit(2)
        optimizer = setup()
        how = f"model.{setup.__name__}() with its default arguments"
    fields = ", ".join(f"{k}={v!r}" for k, v in vars(config).items())
    return model, optimizer, f"GPTConfig({fields})", f"{type(optimizer).__name__}: {how}"


def describe_side(model, optimizer):
    """What the header compares: the model's parameters by owner, and which functions of the
    optimizer's module are torch.compile'd (they compile in an eager step too)."""
    owners = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
    module = sys.modules[type(optimizer).__module__]
    compiled = sorted(name for name, f in vars(module).items()
                      if hasattr(f, "_torchdynamo_orig_callable") and not name.startswith("__"))  # not dynamo's own
    return dict(params=sum(p.numel() for p in model.parameters()), owners=owners, optimizer_compiles=compiled)


def time_training(train_model, model, optimizer, x, y, warmup, steps, clock):
    """(wall seconds, seconds by `clock`) of each warm-up step and of each timed step: forward with
    the loss, backward, the optimizer's step, gradients zeroed."""
    times = []
    for _ in range(warmup + steps):
        t0, c0 = time.perf_counter(), clock()
        loss = train_model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - t0, clock() - c0))
    if not loss.isfinite():
        raise RuntimeError(f"the training loss is {loss.item()}")
    return times[:warmup], times[warmup:], loss.item()


def time_decode(engine, prompt, n, repeats, clock):
    """Seconds per decode step at batch 1: the clock runs from the first new token to the n-th."""
    best = float("inf")
    for run in range(repeats + 1):  # run 0 warms up and is not counted
        tokens = engine.generate(prompt, 1, max_tokens=n, temperature=0.0)
        next(tokens)  # prefill and the first token, not timed
        t0 = clock()
        for _ in range(n - 1):
            next(tokens)
        elapsed = (clock() - t0) / (n - 1)
        tokens.close()
        if run > 0:
            best = min(best, elapsed)
    return best


def train_and_measure(model, optimizer, data, multipliers, clock):
    """--quality: train on data's batches with the learning rates scaled by `multipliers` (one per
    step), then the summed nats of the held-out targets that count. Returns (nats, seconds of each
    step by `clock`, last training loss)."""
    import torch
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    times = []
    for step, multiplier in enumerate(multipliers):
        t0 = clock()
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
        loss = model(data["x"][step], data["y"][step])
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        times.append(clock() - t0)
    if not loss.isfinite():
        raise RuntimeError(f"the training loss is {loss.item()}")
    model.eval()
    nats = 0.0
    with torch.no_grad():
        for x, y, counted in zip(data["val_x"], data["val_y"], data["val_counted"]):
            losses = model(x[None], y[None], loss_reduction="none").view(-1)
            nats += (losses.double() * counted).sum().item()
    return nats, times, loss.item()


def worker_main(spec):
    """One side ("ours" or "peer"), one task ("eager": training step and decode; "compiled"),
    the figures printed as one JSON line."""
    side, s = spec["side"], spec["settings"]
    gpt, engine_module, stubbed = import_side(side, spec["root"])
    import torch
    torch.set_num_threads(s["threads"])
    model, optimizer, config, how = build_side(side, gpt, s)
    clock = time.process_time if s["clock"] == "cpu" else time.perf_counter
    if spec["task"] == "quality":
        data = torch.load(spec["data"])
        nats, times, loss = train_and_measure(model, optimizer, data, spec["multipliers"], clock)
        print("RESULT " + json.dumps(dict(config=config, how=how, **describe_side(model, optimizer), stubbed=stubbed,
                                          threads=torch.get_num_threads(), torch=torch.__version__, nats=nats,
                                          step_times=times, loss=loss)))
        return
    gen = torch.Generator().manual_seed(0)  # the same tokens on both sides
    x = torch.randint(0, s["vocab_size"], (s["rows"], s["seq_len"]), generator=gen)
    y = torch.randint(0, s["vocab_size"], (s["rows"], s["seq_len"]), generator=gen)
    compiled = spec["task"] == "compiled"
    train_model = torch.compile(model, dynamic=False) if compiled else model
    warmup, timed, loss = time_training(train_model, model, optimizer, x, y, s["warmup"], s["steps"], clock)
    step = statistics.median(c for _, c in timed)  # the median: one step disturbed by a neighbour does not count
    wall_step = statistics.median(w for w, _ in timed)
    result = dict(config=config, how=how, **describe_side(model, optimizer), stubbed=stubbed,
                  threads=torch.get_num_threads(), torch=torch.__version__,
                  tok_per_s=x.numel() / step, step_s=step, loss=loss,
                  warmup_extra_s=sum(w for w, _ in warmup) - len(warmup) * wall_step)  # compiling, if compiled
    if not compiled:
        model.eval()
        engine = engine_module.Engine(model, StandInTokenizer(s["vocab_size"]))
        prompt = torch.randint(0, s["vocab_size"], (s["prompt_len"],), generator=gen).tolist()
        result["decode_tok_per_s"] = 1 / time_decode(engine, prompt, s["new_tokens"], s["decode_repeats"], clock)
    print("RESULT " + json.dumps(result))


# -----------------------------------------------------------------------------
# the parent: check the peer, run the workers in turn, print the figures

def check_peer(path):
    from nanochat.common import UserError
    get_it = ("e.g. git clone https://github.com/karpathy/nanochat /tmp/peer, then "
              "python -m bench.bench_peer --peer /tmp/peer")
    if path is None:
        raise UserError(f"--peer is required: the folder of an upstream nanochat checkout to compare with ({get_it})")
    peer = Path(path).expanduser().resolve()
    if not peer.is_dir():
        raise UserError(f"--peer {path}: no such folder ({get_it})")
    missing = [f for f in ("nanochat/gpt.py", "nanochat/engine.py") if not (peer / f).is_file()]
    if missing:
        raise UserError(f"--peer {path} is not a nanochat checkout: it has no {' and no '.join(missing)} ({get_it})")
    if peer == OUR_ROOT:
        raise UserError(f"--peer {path} is this repository; give upstream nanochat's checkout ({get_it})")
    return peer


def commit_of(root):
    """The short commit of a git checkout, or 'no git' for an extracted archive."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "no git"
    return out.stdout.strip() if out.returncode == 0 and (Path(root) / ".git").exists() else "no git"


def run_worker(side, root, task, settings, env, eager_cache, **extra):
    """Run one worker and return its JSON figures; a failed worker becomes one line of error."""
    from nanochat.common import UserError
    spec = dict(side=side, root=str(root), task=task, settings=settings, **extra)
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as fresh:
        # a compiled worker compiles from an empty cache (the whole compile, every round); eager
        # workers share one per side, so the peer's compiled optimizer compiles once in a run
        cache = fresh if task == "compiled" else eager_cache
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                              capture_output=True, text=True, env=dict(env, TORCHINDUCTOR_CACHE_DIR=cache), cwd=fresh)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode == 0 and results:
        return json.loads(results[-1][len("RESULT "):])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    if errors:  # the worker's own one-line error: a missing package, an import that failed
        raise UserError(errors[-1][len("error: "):])
    sys.stderr.write(proc.stderr[-4000:])
    raise UserError(f"the {side} worker ({task} step) failed with exit code {proc.returncode}; its last lines are above")


def print_header(args, peer, settings, env, first):
    s = settings
    print(f"settings of both: depth {s['depth']}, dim {s['dim']}, {s['dim'] // s['head_dim']} heads of "
          f"{s['head_dim']}, vocab {s['vocab_size']}, context {s['seq_len']}, window pattern L (full context), "
          f"{s['rows']} x {s['seq_len']} = {s['rows'] * s['seq_len']:,} tokens per step, fp32, cpu, "
          f"{first['ours']['threads']} threads, OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, torch {first['ours']['torch']}")
    arch = "upstream's (--upstream-arch)" if args.upstream_arch else "this project's default (the demo's)"
    ours, theirs = first["ours"], first["peer"]
    print(f"ours: {OUR_ROOT} ({commit_of(OUR_ROOT)}), architecture {arch}, {ours['params']:,} parameters")
    print(f"  {ours['config']}")
    print(f"  optimizer {ours['how']}")
    stubbed = ", stubbed (not installed, not used): " + ", ".join(theirs["stubbed"]) if theirs["stubbed"] else ""
    print(f"peer: {peer} ({commit_of(peer)}){stubbed}, {theirs['params']:,} parameters")
    print(f"  {theirs['config']}")
    print(f"  optimizer {theirs['how']}")
    print("not equal beyond the settings:")
    for side, other, whose in (("ours", "peer", "our"), ("peer", "ours", "the peer's")):
        only = sorted(set(first[side]["owners"]) - set(first[other]["owners"]))
        if only:
            print(f"  - only {whose} model has the parameters {', '.join(only)}")
        if first[side]["optimizer_compiles"]:
            print(f"  - {whose} optimizer torch.compiles {', '.join(first[side]['optimizer_compiles'])}, in the eager "
                  f"step too: they compile in its eager warm-up")
    print("  - the model code may differ in what the config does not show (e.g. constants, the loss); read both")
    if args.quality:
        return
    print(f"steps: {s['warmup']} warm-up + the median of {s['steps']} timed | decode: batch 1, greedy, prompt "
          f"{s['prompt_len']} random tokens, {s['new_tokens']} new, best of {s['decode_repeats']} | clock: "
          f"{'CPU time of each process' if s['clock'] == 'cpu' else 'wall'} | each round's ratio is ours / peer "
          f"tokens/s, measured in turn")
    print()


def print_row(round_no, what, ours, peer, key, extra=None):
    """One figure of one round, both sides and their ratio. extra: "warm-up" (what the warm-up steps
    took beyond as many steady ones: + or -, a neighbour's load moves it) or "compile"."""
    def note(r):
        if extra is None:
            return ""
        value = r["warmup_extra_s"]
        return f" (warm-up {value:+,.1f} s)" if extra == "warm-up" else f" (compile {value:,.1f} s)"
    print(f"round {round_no} | {what:<13} | ours {ours[key]:,.1f} tok/s{note(ours)} | "
          f"peer {peer[key]:,.1f} tok/s{note(peer)} | ours/peer {ours[key] / peer[key]:.3f}x", flush=True)
    return ours[key] / peer[key]


def quality_data(settings, steps, val_rows, path):
    """--quality: the batches both sides train on and the held-out rows they are measured on, saved
    to `path`. Returns a line saying what they are, and the number of bytes the held-out targets
    that count (no special token) stand for."""
    import torch
    from nanochat.common import UserError
    from nanochat.dataset import parquets_iter_batched, resolve_data_dir
    from nanochat.tokenizer import RustBPETokenizer, compute_token_bytes
    rows, width = settings["rows"], settings["seq_len"] + 1  # a row holds its inputs and, shifted by one, its targets
    tokenizer = RustBPETokenizer.train_from_iterator(
        (doc[:10_000] for batch in parquets_iter_batched("train") for doc in batch), settings["vocab_size"])
    if tokenizer.get_vocab_size() > settings["vocab_size"]:
        raise UserError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, more than --vocab-size")

    def packed_rows(split, count):
        stream = []
        for batch in parquets_iter_batched(split):
            for ids in tokenizer.encode(batch, prepend=tokenizer.get_bos_token_id()):
                stream.extend(ids)
            if len(stream) >= count * width:
                return torch.tensor(stream[:count * width]).view(count, width)
        raise UserError(f"the {split} split of {resolve_data_dir()} holds {len(stream):,} tokens, fewer than the "
                        f"{count * width:,} that --quality {steps} (--val-rows {val_rows}) needs: ask for fewer")
    train, val = packed_rows("train", steps * rows), packed_rows("val", val_rows)
    token_bytes = compute_token_bytes(tokenizer)
    val_bytes = token_bytes[val[:, 1:]]
    batches = dict(x=train[:, :-1].reshape(steps, rows, -1), y=train[:, 1:].reshape(steps, rows, -1),
                   val_x=val[:, :-1], val_y=val[:, 1:], val_counted=val_bytes > 0)
    torch.save({k: v.contiguous() for k, v in batches.items()}, path)  # contiguous: models .view() their targets
    what = (f"text: the train and val splits of {resolve_data_dir()}, a {tokenizer.get_vocab_size():,}-token BPE "
            f"trained here on the train split; {steps} steps x {rows} x {settings['seq_len']} tokens to train on, "
            f"{val_rows} x {settings['seq_len']} held-out tokens ({int(val_bytes.sum()):,} bytes) to measure on")
    return what, int(val_bytes.sum())


def compare_quality(args, peer, settings, env):
    """--quality: train both on the same text and schedule, print bits per byte and what it cost."""
    import math
    from nanochat.training import lr_multiplier
    multipliers = [lr_multiplier(step, args.quality) for step in range(args.quality)]
    roots = {"ours": OUR_ROOT, "peer": peer}
    with tempfile.TemporaryDirectory(prefix="bench_peer_quality_") as folder:
        print("tokenizing the text both sides train on...", flush=True)
        data = os.path.join(folder, "quality.pt")
        what, val_bytes = quality_data(settings, args.quality, args.val_rows, data)
        r = {side: run_worker(side, roots[side], "quality", settings, env, folder, data=data, multipliers=multipliers)
             for side in ("ours", "peer")}
    print_header(args, peer, settings, env, r)
    print(what)
    print(f"schedule of both: training.lr_multiplier over {args.quality} steps (constant, then linear to 0 over the "
          f"last 40%) times each optimizer's own default rates; clock: "
          f"{'CPU time of each process' if settings['clock'] == 'cpu' else 'wall'}")
    print()
    bpb = {}
    for side in ("ours", "peer"):
        times = r[side]["step_times"]
        bpb[side] = r[side]["nats"] / (math.log(2) * val_bytes)
        print(f"{side:<4} | val bits per byte {bpb[side]:.4f} | last training loss {r[side]['loss']:.3f} | "
              f"training {sum(times):,.1f} s (first step {times[0]:,.1f} s, then {sum(times[1:]):,.1f} s)", flush=True)
    steady = {side: sum(r[side]["step_times"][1:]) for side in r}
    print(f"ours/peer: bits per byte {bpb['ours'] / bpb['peer']:.3f}x (lower is better), training time after the "
          f"first step {steady['ours'] / max(steady['peer'], 1e-9):.3f}x")


def main(argv=None):
    args = parse_args(argv)
    peer = check_peer(args.peer)
    from nanochat.common import UserError
    if args.dim % args.head_dim:
        raise UserError(f"--dim {args.dim} is not a multiple of --head-dim {args.head_dim}")
    if not args.quality and args.prompt_len + args.new_tokens > 10 * args.seq_len:
        raise UserError("--prompt-len + --new-tokens is past the rotary tables (10x --seq-len) of both models")
    settings = {k: getattr(args, k) for k in ("depth", "dim", "head_dim", "vocab_size", "seq_len", "rows", "threads",
                                              "warmup", "steps", "prompt_len", "new_tokens", "decode_repeats",
                                              "upstream_arch", "clock")}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), NANOCHAT_DTYPE="float32",
               OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    if args.quality:
        return compare_quality(args, peer, settings, env)
    roots = {"ours": OUR_ROOT, "peer": peer}
    tasks = ["eager"] + ([] if args.no_compile else ["compiled"])
    ratios = {"eager step": [], "decode b1": [], "compiled step": []}
    with tempfile.TemporaryDirectory(prefix="bench_peer_ours_") as c1, \
            tempfile.TemporaryDirectory(prefix="bench_peer_peer_") as c2:
        eager_caches = {"ours": c1, "peer": c2}
        for round_no in range(1, args.rounds + 1):
            order = ("ours", "peer") if round_no % 2 else ("peer", "ours")
            for task in tasks:
                r = {side: run_worker(side, roots[side], task, settings, env, eager_caches[side]) for side in order}
                if round_no == 1 and task == "eager":
                    print_header(args, peer, settings, env, r)
                if task == "eager":
                    ratios["eager step"].append(print_row(round_no, "eager step", r["ours"], r["peer"], "tok_per_s",
                                                          "warm-up"))
                    ratios["decode b1"].append(print_row(round_no, "decode b1", r["ours"], r["peer"],
                                                         "decode_tok_per_s"))
                else:
                    ratios["compiled step"].append(print_row(round_no, "compiled step", r["ours"], r["peer"],
                                                             "tok_per_s", "compile"))
    print()
    for what, values in ratios.items():
        if values:
            print(f"ours/peer, {what:<13}: median {statistics.median(values):.3f}x over {len(values)} round(s) "
                  f"(min {min(values):.3f}x, max {max(values):.3f}x)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker_main(json.loads(sys.argv[2]))
    else:
        from nanochat.common import run_main
        run_main(main)
