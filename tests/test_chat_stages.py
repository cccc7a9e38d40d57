"""Midtraining and SFT end to end on the tiny base run: checkpoints and metrics like base_train,
exact SFT resume, and the chat CLI answering piped and one-shot prompts from the SFT model."""

import os
import sys
import json
import shutil
import subprocess

import pytest
import torch

from tests.conftest import base_dir_env
from nanochat import checkpoint_manager as cm

MID_ARGS = ["--offline", "--synthetic-size", "24", "--device-batch-size", "4", "--total-batch-size", "512",
            "--num-iterations", "4", "--eval-every", "2", "--eval-tokens", "512"]
SFT_ARGS = ["--offline", "--synthetic-size", "24", "--device-batch-size", "2", "--target-examples-per-step", "4",
            "--max-seq-len", "128", "--num-iterations", "4", "--eval-every", "2", "--eval-steps", "2",
            "--save-every", "2"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_run(tiny_run, tmp_path_factory):
    """A copy of the tiny base run with mid_checkpoints/d2 (4 steps) and chatsft_checkpoints/d2 (4 steps)."""
    base = tmp_path_factory.mktemp("chat_run") / "base"
    shutil.copytree(tiny_run, base)
    from scripts import mid_train, chat_sft
    with base_dir_env(base):
        mid_train.main(MID_ARGS)
        chat_sft.main(SFT_ARGS)
    return base


def run_cli(base, args, stdin=None):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "scripts.chat_cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_mid_and_sft_write_checkpoints_and_base_train_metrics(chat_run, tiny_run):
    base_keys = set(cm.read_metrics(cm.checkpoint_dir("base", "d2", tiny_run))[0]) - {"val_bpb"}
    for stage, steps in (("mid", [4]), ("sft", [2, 4])):
        cdir = cm.checkpoint_dir(stage, "d2", chat_run)
        assert cm.list_complete_steps(cdir) == steps
        records = cm.read_metrics(cdir)
        assert [r["step"] for r in records] == [1, 2, 3, 4]
        for r in records:
            assert set(r) - {"val_bpb"} == base_keys
        assert "val_bpb" in records[1] and "val_bpb" in records[3] and "val_bpb" not in records[0]
        meta = cm.read_meta(cdir, 4)
        assert meta["stage"] == stage and meta["source"]["stage"] == {"mid": "base", "sft": "mid"}[stage]
        assert meta["train_loss"] == pytest.approx(records[-1]["train_loss"])
    # midtraining starts from the base weights: the mid model differs from base, but not wildly
    base_w = torch.load(cm.model_path(cm.checkpoint_dir("base", "d2", tiny_run), 12))
    mid_w = torch.load(cm.model_path(cm.checkpoint_dir("mid", "d2", chat_run), 4))
    assert set(base_w) == set(mid_w)
    assert not torch.equal(base_w["lm_head.weight"], mid_w["lm_head.weight"])


def test_sft_resume_matches_uninterrupted_run(chat_run, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(chat_run, base)
    cdir = cm.checkpoint_dir("sft", "d2", base)
    uninterrupted = [r["train_loss"] for r in cm.read_metrics(cdir)]
    final_weights = torch.load(cm.model_path(cdir, 4))
    from scripts import chat_sft
    with base_dir_env(base):
        chat_sft.main(SFT_ARGS + ["--resume-from-step", "2"])
    resumed = [r["train_loss"] for r in cm.read_metrics(cdir)]
    assert len(resumed) == 4
    assert resumed[:2] == uninterrupted[:2]  # kept from the first run
    assert resumed[2:] == pytest.approx(uninterrupted[2:], abs=1e-6)
    resumed_weights = torch.load(cm.model_path(cdir, 4))
    for name, w in final_weights.items():
        assert torch.allclose(w, resumed_weights[name], atol=1e-6), name


def test_chat_cli_answers_piped_input_and_exits_at_eof(chat_run):
    result = run_cli(chat_run, ["-i", "sft", "-m", "12"], stdin="hello\n")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    answer = [l for l in lines if l.startswith("Assistant: ")]
    assert len(answer) == 1 and len(answer[0]) > len("Assistant: ")


def test_chat_cli_long_conversations_lose_old_turns_not_the_session(chat_run):
    long_turn = "the quick brown fox jumps over the lazy dog " * 2  # the tiny model reads 64 tokens (its training length)
    too_long = "abcdefghij" * 400
    stdin = "\n".join([long_turn] * 8 + [too_long, "hello"]) + "\n"
    result = run_cli(chat_run, ["-i", "sft", "-m", "4", "-t", "0"], stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "oldest exchange(s) dropped" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: that message is") and "shorten it" in errors[0]
    # every message but the one too long got an answer, the last one included
    assert result.stdout.count("Assistant: ") == 9
    assert result.stdout.rstrip().splitlines()[-2] == "User: hello"


def test_chat_cli_one_shot_prompt_prints_an_answer(chat_run):
    result = run_cli(chat_run, ["-i", "sft", "-p", "hello", "-m", "12", "-t", "0"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() != ""
    # greedy decoding is deterministic: the same prompt gives the same answer
    again = run_cli(chat_run, ["-i", "sft", "-p", "hello", "-m", "12", "-t", "0"])
    assert again.stdout == result.stdout


def test_missing_source_checkpoint_is_a_one_line_error(tmp_path):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "scripts.chat_sft", "--offline"], capture_output=True, text=True,
                            env=env, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "mid_checkpoints" in result.stderr


def test_replay_reproduces_logged_sft_steps_exactly(chat_run):
    from tools.lib import resume as rs
    cdir = cm.checkpoint_dir("sft", "d2", chat_run)
    logged = {r["step"]: r["train_loss"] for r in cm.read_metrics(cdir)}
    with base_dir_env(chat_run):
        result = rs.replay_steps(cdir, 2)
    assert result.from_step == 2 and [s for s, _, _ in result.rows] == [3, 4]
    assert all(replayed == logged[s] for s, _, replayed in result.rows)  # bit-exact, not merely close
    assert result.exact and result.weights_step == 4 and result.weights_equal is True


def test_replay_refuses_a_finetuning_run_whose_mixture_cannot_be_rebuilt(chat_run, tmp_path):
    from tools.lib import resume as rs
    from nanochat.common import UserError
    base = tmp_path / "base"
    shutil.copytree(chat_run, base)
    cdir = cm.checkpoint_dir("sft", "d2", base)
    meta_path = os.path.join(cdir, "meta_000002.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["task_mixture"] = ["SmolTalk"] + meta["task_mixture"]  # as if the hub had answered
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with base_dir_env(base), pytest.raises(UserError, match="cannot be reproduced here"):
        rs.replay_steps(cdir, 2)
