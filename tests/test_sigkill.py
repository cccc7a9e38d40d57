"""SIGKILL anywhere: a tiny base_train killed at 30+ random moments, many of them inside a checkpoint
save, and resumed each time from its last complete checkpoint, ends with the same checkpoints as a
run that was never interrupted, bit for bit.

Each attempt is a child process killed with SIGKILL (no cleanup runs: no `finally`, no atexit),
at one of three kinds of moment: while it starts, at a random time in the training loop, or just
after a temporary file of a save appears (a save writes every file to a temporary name, then
renames them, the meta last). After each kill tools/lib/resume.find_resume_point names the last
complete checkpoint and the next attempt resumes from it with --resume-from-step.

The children are forked from this test process, which has imported torch and the pipeline already,
so an attempt costs a model build rather than an interpreter start; the last attempt, which runs to
the end, is a real `python -m scripts.base_train` command line.
"""

import os
import sys
import time
import glob
import random
import shutil
import signal
import traceback
import subprocess

import pytest
import torch

from nanochat import checkpoint_manager as cm
from nanochat.common import repo_root, run_entry
from tools.lib.resume import find_resume_point

STEPS = 40
MIN_KILLS = 30
ARGS = ["--depth", "2", "--max-seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "256",
        "--num-iterations", str(STEPS), "--eval-every", "-1", "--core-metric-every", "-1", "--sample-every", "-1",
        "--save-every", "1", "--window-pattern", "L", "--head-dim", "64"]


def fork_base_train(argv, base, log):
    """Start base_train in a forked child with its output in `log`; returns the child's pid."""
    from scripts import base_train
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
            os.environ["NANOCHAT_BASE_DIR"] = str(base)
            code = run_entry(base_train.main, argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    return pid


def wait_until(pid, ready, timeout=120.0):
    """Poll until ready() is true (-> True) or the child has exited (-> its wait status)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if ready():
            return True
        time.sleep(0.0005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} made no progress in {timeout:.0f}s")


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def same(a, b, where):
    """Assert two loaded checkpoint objects are equal: tensors bit for bit, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_anywhere_then_resume_matches_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(tiny_run / "tokenizer", base / "tokenizer")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    from scripts import base_train

    # the uninterrupted run: a checkpoint after every step (this also caches the CPU peak the
    # children would otherwise measure each time they start)
    t0 = time.time()
    assert run_entry(base_train.main, ARGS + ["--model-tag", "ref"]) == 0
    step_time = (time.time() - t0) / STEPS
    ref_dir = cm.checkpoint_dir("base", "ref")
    killed_dir = cm.checkpoint_dir("base", "killed")

    rng = random.Random(1234)
    kills, cut_saves, resumed_from, step = 0, 0, [], None
    while kills < MIN_KILLS:
        assert step != STEPS, f"the run finished after only {kills} kills; raise STEPS"
        log = str(tmp_path / f"attempt_{kills:02d}.log")
        argv = ARGS + ["--model-tag", "killed"] + (["--resume-from-step", str(step)] if step else [])
        pid = fork_base_train(argv, base, log)
        moment = rng.choice(["start", "train", "train", "save", "save"])
        if moment == "start":  # building the model, loading the checkpoint, skipping to the data position
            ready = True
            time.sleep(rng.uniform(0.0, 0.5))
        elif moment == "train":  # anywhere in the loop: forward, backward, optimizer, metrics, save
            ready = wait_until(pid, lambda: "step 0" in read(log))
            time.sleep(rng.uniform(0.0, 3 * step_time))
        else:  # inside a save: one of its temporary files is being written or renamed
            ready = wait_until(pid, lambda: glob.glob(os.path.join(killed_dir, "*.tmp*")))
            time.sleep(rng.uniform(0.0, 0.01))
        if ready is not True:  # the child exited on its own before the moment came
            assert os.WIFEXITED(ready) and os.WEXITSTATUS(ready) == 0, read(log)
            step = STEPS
            continue
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):  # it finished just before the signal
            assert os.WEXITSTATUS(status) == 0, read(log)
        else:
            assert os.WTERMSIG(status) == signal.SIGKILL
            kills += 1
        assert "Traceback" not in read(log), read(log)
        if os.path.isdir(killed_dir) and cm.list_complete_steps(killed_dir):
            point = find_resume_point(killed_dir)  # the last complete checkpoint, and what a cut save left
            step = point.step
            cut_saves += bool(point.incomplete or point.debris)
        else:
            step = None  # killed before its first complete checkpoint: start again from scratch
        resumed_from.append(step)

    # the rest of the run, uninterrupted, from the real command line
    if step != STEPS:
        argv = ARGS + ["--model-tag", "killed"] + (["--resume-from-step", str(step)] if step else [])
        r = subprocess.run([sys.executable, "-m", "scripts.base_train"] + argv, cwd=repo_root(), capture_output=True,
                           text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    print(f"{kills} kills, {cut_saves} left a save cut short; resumed from steps {resumed_from}")
    assert kills >= MIN_KILLS
    assert cut_saves >= 3, "too few kills landed inside a save to show anything"
    assert cm.list_complete_steps(killed_dir) == list(range(1, STEPS + 1))
    assert [r["step"] for r in cm.read_metrics(killed_dir)] == list(range(1, STEPS + 1))  # each step logged once
    for s in range(1, STEPS + 1):
        model_a, optim_a, meta_a = cm.load_checkpoint(ref_dir, s, load_optimizer=True)
        model_b, optim_b, meta_b = cm.load_checkpoint(killed_dir, s, load_optimizer=True)
        same(model_a, model_b, f"step {s} model")
        # the torch RNG is the run's own (seeded by --seed); Python's and numpy's, saved too, are whatever
        # the process had (nothing in base training draws from them, nor seeds them)
        for state in (optim_a, optim_b):
            state["rng"] = {k: v for k, v in state["rng"].items() if k not in ("python", "numpy")}
        same(optim_a, optim_b, f"step {s} optimizer, torch RNG and data position")
        timeless = lambda state: {k: v for k, v in state.items() if k != "total_training_time"}
        same(timeless(meta_a["loop_state"]), timeless(meta_b["loop_state"]), f"step {s} loop state")
        assert meta_a["train_loss"] == meta_b["train_loss"]
    assert meta_b["step"] == STEPS  # the final weights too, compared above
