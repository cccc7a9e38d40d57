"""RL: advantages are reward minus the per-question mean, the loss is normalised by sampled tokens
with forced tool tokens and the prompt excluded, and a tiny run writes checkpoints, metrics and
resumes; on the shared tiny base run copied in as an SFT checkpoint."""

import re
import shutil

import pytest
import torch

from nanochat import rl
from nanochat.common import UserError
from nanochat import checkpoint_manager as cm
from nanochat.training import EMA


def test_advantages_are_reward_minus_the_question_mean():
    adv = rl.question_advantages([1.0, 0.0, 0.0, 1.0, 1.0])
    assert adv.tolist() == pytest.approx([0.4, -0.6, -0.6, 0.4, 0.4])
    assert rl.question_advantages([1.0, 1.0, 1.0]).abs().sum() == 0  # all agree: no signal


def test_batch_targets_cover_only_sampled_reply_tokens():
    prompt = [100, 101, 102]
    replies = [[5, 6, 7, 8], [9]]
    masks = [[1, 0, 0, 1], [1]]  # 6 and 7 were forced in by the tool
    inputs, targets = rl.build_batch(prompt, replies, masks, pad_id=0)
    assert inputs.tolist() == [[100, 101, 102, 5, 6, 7], [100, 101, 102, 0, 0, 0]]
    assert targets.tolist() == [[-1, -1, 5, -1, -1, 8], [-1, -1, 9, -1, -1, -1]]


def test_loss_is_advantage_weighted_logprob_over_sampled_tokens():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, -9.0]])
    targets = torch.tensor([[7, -1, 7], [7, 7, -1]])
    adv = torch.tensor([0.5, -0.5])
    # sampled tokens: row 0 -> -1, -3 ; row 1 -> -0.5, -4 ; 4 tokens in all
    expected = -((0.5 * (-1 - 3)) + (-0.5 * (-0.5 - 4))) / 4
    assert rl.policy_gradient_loss(logp, targets, adv).item() == pytest.approx(expected)
    # as one micro-batch of a larger group the normaliser is the group's token count
    assert rl.policy_gradient_loss(logp, targets, adv, num_tokens=8).item() == pytest.approx(expected / 2)


def test_group_loss_gradient_matches_the_formula_on_a_real_model(tiny_base_dir):
    model, tokenizer, _ = cm.load_model("base", "cpu", verbose=False)
    prompt = tokenizer.encode("Q", prepend=tokenizer.get_bos_token_id())
    replies, masks = [[40, 41, 42], [43, 44]], [[1, 0, 1], [1, 1]]
    inputs, targets = rl.build_batch(prompt, replies, masks, tokenizer.get_bos_token_id())
    adv = rl.question_advantages([1.0, 0.0])
    loss = rl.group_loss(model, inputs, targets, adv)
    # independent computation: log-softmax of the logits at the positions of the sampled tokens
    with torch.no_grad():
        logprobs = torch.log_softmax(model(inputs), dim=-1)
    terms = []
    for row, reply, mask, a in zip(range(2), replies, masks, adv.tolist()):
        for k, (tok, m) in enumerate(zip(reply, mask)):
            if m:
                terms.append(a * logprobs[row, len(prompt) - 1 + k, tok].item())
    assert loss.item() == pytest.approx(-sum(terms) / len(terms), rel=1e-4, abs=1e-6)


def rl_args(**over):
    args = ["--offline", "--device-type", "cpu", "--num-steps", "2", "--num-samples", "3",
            "--questions-per-step", "2", "--max-new-tokens", "6", "--eval-examples", "2", "--eval-every", "-1",
            "--save-every", "1", "--train-size", "20"]
    for k, v in over.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.fixture
def sft_base_dir(tiny_run, tmp_path, monkeypatch):
    """A copy of the tiny run whose last base checkpoint also serves as the SFT checkpoint."""
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    shutil.copytree(base / "base_checkpoints", base / "chatsft_checkpoints")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    return base


def test_rl_steps_write_checkpoints_metrics_and_resume(sft_base_dir, capsys):
    from scripts import chat_rl
    from nanochat.report import get_report
    result = chat_rl.main(rl_args())
    out = capsys.readouterr().out
    assert "before RL: held-out mean reward" in out and "after RL: held-out mean reward" in out
    assert [line.split(" | eta ")[1].split()[0] for line in out.splitlines() if line.startswith("step ")][-1] == "0s"
    ckpt_dir = sft_base_dir / "chatrl_checkpoints" / "d2"
    # the step line carries the trend: the debiased moving average of the step rewards so far
    shown = [tuple(map(float, re.search(r"reward ([\d.]+) \(smoothed ([\d.]+)\)", line).groups()))
             for line in out.splitlines() if line.startswith("step ")]
    rewards = [r["reward_mean"] for r in cm.read_metrics(str(ckpt_dir))]
    ema = EMA(0.9)
    assert [s for _, s in shown] == pytest.approx([ema.update(r) for r in rewards], abs=1e-4)
    assert cm.list_complete_steps(str(ckpt_dir)) == [1, 2]
    meta = cm.read_meta(str(ckpt_dir), 2)
    assert meta["stage"] == "rl" and meta["source"] == {"stage": "sft", "model_tag": "d2", "step": 12}
    records = cm.read_metrics(str(ckpt_dir))
    assert [r["step"] for r in records] == [1, 2]
    assert all(0.0 <= r["reward_mean"] <= 1.0 and r["samples"] == 6 for r in records)
    assert 0.0 <= result["after"]["reward"] <= 1.0 and result["before"] is not None
    # the model the checkpoint holds is the trained one, and loads like any other stage
    model, _, _ = cm.load_model("rl", "cpu", verbose=False)
    assert model.config.n_layer == 2
    section = {name: data for name, _, data, _ in get_report().sections()}["Chat RL"]
    assert section[1]["Held-out mean reward after RL"] == result["after"]["reward"]
    # resume from step 1 and run to step 3: the log is cut back to step 1, then continues
    capsys.readouterr()
    chat_rl.main(rl_args(num_steps=3, resume_from_step=1))
    assert [r["step"] for r in cm.read_metrics(str(ckpt_dir))] == [1, 2, 3]
    # the trend carries on from the checkpoint: steps 2 and 3 are smoothed together with step 1
    ema = EMA(0.9)
    expected = [ema.update(r["reward_mean"]) for r in cm.read_metrics(str(ckpt_dir))][1:]
    shown = [float(m.group(1)) for m in re.finditer(r"\(smoothed ([\d.]+)\)", capsys.readouterr().out)]
    assert shown == pytest.approx(expected, abs=1e-4)
    assert cm.list_complete_steps(str(ckpt_dir)) == [1, 2, 3]


def test_bad_flags_are_user_errors(sft_base_dir):
    from scripts import chat_rl
    with pytest.raises(UserError, match="GSM8K, Arithmetic, TwoStepArithmetic"):
        chat_rl.main(rl_args(task="SmolTalk"))
    with pytest.raises(UserError, match="--num-samples"):
        chat_rl.main(rl_args(num_samples=0))
