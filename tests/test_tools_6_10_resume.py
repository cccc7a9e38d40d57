"""Resume helper: a run killed with SIGKILL is found, verified and resumed by the printed command
to the same losses as an uninterrupted run; truncated files and mismatched metas are caught;
--verify --replay N reproduces logged steps exactly."""

import os
import sys
import json
import time
import shutil
import signal
import subprocess

import pytest
import torch

from conftest import TINY_TRAIN_ARGS
from nanochat import checkpoint_manager as cm
from tools.lib import resume as rs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "training_resume_helper.py")


def with_args(base_args, **changes):
    args = list(base_args)
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        args[args.index(flag) + 1] = str(value)
    return args


KILL_ARGS = with_args(TINY_TRAIN_ARGS, num_iterations=40, save_every=3, eval_every=-1)


def env_for(base):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1", NO_COLOR="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def fresh_base(path, tiny_run):
    shutil.copytree(tiny_run / "tokenizer", path / "tokenizer")
    return path


def train(base, args):
    subprocess.run([sys.executable, "-m", "scripts.base_train", *args], cwd=REPO, env=env_for(base), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return base / "base_checkpoints" / "d2"


def tool(*args, base):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO, env=env_for(base),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, tiny_run):
    """A base_train run killed with SIGKILL after its second checkpoint (step 6) appeared."""
    base = fresh_base(tmp_path_factory.mktemp("killed"), tiny_run)
    ckpt = base / "base_checkpoints" / "d2"
    proc = subprocess.Popen([sys.executable, "-m", "scripts.base_train", *KILL_ARGS], cwd=REPO, env=env_for(base),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (ckpt / "meta_000006.json").exists():
        assert proc.poll() is None, "the training run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (ckpt / "model_000040.pt").exists(), "the run finished before the kill; make it longer"
    return base, ckpt


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_run):
    base = fresh_base(tmp_path_factory.mktemp("full"), tiny_run)
    return train(base, KILL_ARGS)


@pytest.mark.slow
def test_killed_run_resumed_by_the_printed_command_matches_uninterrupted_run(killed_run, full_run, tmp_path):
    base, ckpt = killed_run
    base = shutil.copytree(base, tmp_path / "base")  # the module fixture stays as killed for other tests
    ckpt = base / "base_checkpoints" / "d2"
    last = cm.find_last_step(str(ckpt))
    assert last >= 6 and last % 3 == 0
    r = tool(ckpt, base=base)
    assert r.returncode == 0, r.stderr
    assert f"step {last}" in r.stdout
    v = tool(ckpt, "--verify", base=base)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "FAIL" not in v.stdout
    c = tool(ckpt, "--command", base=base)
    assert c.returncode == 0, c.stderr
    command = c.stdout.strip()
    assert len(command.splitlines()) == 1
    assert f"--resume-from-step {last}" in command and "scripts.base_train" in command
    subprocess.run(["bash", "-c", command], cwd=REPO, env=env_for(base), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    resumed = cm.read_metrics(str(ckpt))
    reference = cm.read_metrics(str(full_run))
    assert [r["step"] for r in resumed] == list(range(1, 41))
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in reference]  # bit-exact
    wa = torch.load(ckpt / "model_000040.pt", weights_only=True)
    wb = torch.load(full_run / "model_000040.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_verify_replay_reproduces_logged_steps(killed_run):
    base, ckpt = killed_run
    r = tool(ckpt, "--verify", "--replay", 3, "--json", base=base)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    last = cm.find_last_step(str(ckpt))
    assert out["replay"]["from_step"] == last - 3  # the checkpoint before the last one
    rows = out["replay"]["rows"]
    logged = {x["step"]: x["train_loss"] for x in cm.read_metrics(str(ckpt))}
    assert [s for s, _, _ in rows] == [last - 2, last - 1, last]
    assert all(replayed == logged[s] for s, _, replayed in rows)
    assert out["replay"]["weights_step"] == last and out["replay"]["weights_equal"] is True
    assert out["replay"]["exact"]


def test_replay_notices_a_logged_loss_that_was_not_produced_by_the_run(tiny_run, tmp_path, monkeypatch):
    base = shutil.copytree(tiny_run, tmp_path / "base")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    ckpt = str(base / "base_checkpoints" / "d2")
    records = cm.read_metrics(ckpt)
    records[9]["train_loss"] += 1e-3  # step 10: not what the run computed
    (base / "base_checkpoints" / "d2" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = rs.replay_steps(ckpt, 4)
    assert result.from_step == 8 and [s for s, _, _ in result.rows] == [9, 10, 11, 12]
    assert not result.exact and result.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert [a == b for _, a, b in result.rows] == [True, False, True, True]
    assert result.weights_equal is True


def test_verify_detects_truncated_model_and_meta_that_does_not_match_weights(tiny_run, tmp_path):
    base = shutil.copytree(tiny_run, tmp_path / "base")
    ckpt = base / "base_checkpoints" / "d2"
    assert rs.checks_passed(rs.verify_checkpoint(str(ckpt), 12))
    model_file = ckpt / "model_000012.pt"
    data = model_file.read_bytes()
    model_file.write_bytes(data[:len(data) // 2])
    checks = {c.name: c for c in rs.verify_checkpoint(str(ckpt), 12)}
    assert not checks["model file"].ok and "truncated" in checks["model file"].detail
    r = tool(ckpt, "--verify", base=base)
    assert r.returncode == 1 and "FAIL" in r.stdout and "--step 8" in r.stdout
    # a meta whose config says a wider model than the weights hold
    meta_file = ckpt / "meta_000008.json"
    meta = json.loads(meta_file.read_text())
    meta["model_config"]["n_embd"] *= 2
    meta["model_config"]["n_head"] *= 2
    meta_file.write_text(json.dumps(meta))
    checks = {c.name: c for c in rs.verify_checkpoint(str(ckpt), 8)}
    assert checks["model file"].ok
    assert not checks["weights match meta"].ok
    assert "does not match the weights" in checks["weights match meta"].detail
    assert not rs.checks_passed(checks.values())


def test_progress_warmdown_and_command_flags(tiny_run):
    ckpt = str(tiny_run / "base_checkpoints" / "d2")
    point = rs.find_resume_point(ckpt, 8)
    prog = rs.run_progress(point.meta)
    # 12 steps, warmdown 0.4 -> round(4.8) = 5 steps: lr_multiplier(i) < 1 for i >= 8, logged step 9 on
    assert (prog["target"], prog["remaining"], prog["warmdown_start"]) == (12, 4, 9)
    assert prog["in_warmdown"] and prog["lr_multiplier"] < 1
    assert not rs.run_progress(rs.find_resume_point(ckpt, 4).meta)["in_warmdown"]
    command, notes = rs.resume_command(point, target_steps=20)
    assert "--resume-from-step 8" in command and "--num-iterations 20" in command and "--model-tag d2" in command
    assert f"NANOCHAT_BASE_DIR={tiny_run}" in command and notes
    assert rs.config_to_flags({"a_b": 1, "c": None, "d": True, "e": False}) == ["--a-b", "1", "--d"]


def test_incomplete_newer_checkpoint_and_debris_are_reported(tiny_run, tmp_path):
    base = shutil.copytree(tiny_run, tmp_path / "base")
    ckpt = base / "base_checkpoints" / "d2"
    os.remove(ckpt / "meta_000012.json")           # killed between writing the model and the meta
    (ckpt / "optim_000016_rank0.pt.tmp").write_bytes(b"half")
    point = rs.find_resume_point(str(ckpt))
    assert point.step == 8 and point.incomplete == [(12, "meta file missing")]
    assert point.debris == ["optim_000016_rank0.pt.tmp"]
