"""--compile 1 works in every training stage (base, mid, SFT, RL) on a CPU, and the compiled
forward/backward gives the eager run's losses within float tolerance.

torch.compile fuses operations, so the last bits of a float sum can differ from the eager run, and
one optimizer step (Muon's Newton-Schulz iterations) magnifies them: the first step's loss agrees
to about 1e-7, the second to about 1e-4 relative, so the losses are compared with rel=1e-3."""

import shutil

import pytest

from tests.conftest import base_dir_env, TINY_TRAIN_ARGS
from nanochat import checkpoint_manager as cm

pytestmark = pytest.mark.slow

STEPS = ["--num-iterations", "2"]
MID = ["--offline", "--synthetic-size", "24", "--device-batch-size", "4", "--total-batch-size", "512",
       "--eval-every", "-1"] + STEPS
SFT = ["--offline", "--synthetic-size", "24", "--device-batch-size", "2", "--target-examples-per-step", "4",
       "--max-seq-len", "128", "--eval-every", "-1"] + STEPS
RL = ["--offline", "--device-type", "cpu", "--num-steps", "2", "--num-samples", "3", "--questions-per-step", "2",
      "--max-new-tokens", "6", "--eval-examples", "0", "--train-size", "20"]


def losses(stage, tag, key="train_loss"):
    return [r[key] for r in cm.read_metrics(cm.checkpoint_dir(stage, tag))]


@pytest.fixture(scope="module")
def base(tiny_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("compile") / "base"
    shutil.copytree(tiny_run, path)
    return path


def test_base_train_compiled_matches_eager(base):
    from scripts import base_train
    with base_dir_env(base):
        args = TINY_TRAIN_ARGS + ["--save-every", "-1"]
        args[args.index("--num-iterations") + 1] = "2"
        base_train.main(args + ["--model-tag", "eager", "--compile", "0"])
        base_train.main(args + ["--model-tag", "compiled", "--compile", "1"])
        eager, compiled = losses("base", "eager"), losses("base", "compiled")
    assert len(eager) == 2 and compiled == pytest.approx(eager, rel=1e-3)


@pytest.mark.parametrize("stage, module, args", [("mid", "mid_train", MID), ("sft", "chat_sft", SFT)])
def test_finetune_compiled_matches_eager(base, stage, module, args):
    import importlib
    main = importlib.import_module(f"scripts.{module}").main
    with base_dir_env(base):
        if stage == "sft":  # SFT starts from a mid checkpoint: the base one serves
            shutil.copytree(base / "base_checkpoints", base / "mid_checkpoints", dirs_exist_ok=True)
        main(args + ["--model-tag", "d2", "--output-tag", "eager", "--compile", "0"])
        main(args + ["--model-tag", "d2", "--output-tag", "compiled", "--compile", "1"])
        eager, compiled = losses(stage, "eager"), losses(stage, "compiled")
    assert len(eager) == 2 and compiled == pytest.approx(eager, rel=1e-3)


def test_rl_compiled_matches_eager(base, monkeypatch):
    from scripts import chat_rl
    real = chat_rl.load_rl_tasks

    def tasks_with_a_graded_reward(*a, **k):
        # the tiny model never solves a problem, so every advantage would be 0 and no loss computed:
        # reward short replies instead, so that the policy-gradient forward/backward really runs
        train, heldout, name = real(*a, **k)
        train.reward = lambda conversation, text: float(len(text) < 12)
        return train, heldout, name
    monkeypatch.setattr(chat_rl, "load_rl_tasks", tasks_with_a_graded_reward)
    with base_dir_env(base):
        shutil.copytree(base / "base_checkpoints", base / "chatsft_checkpoints", dirs_exist_ok=True)
        chat_rl.main(RL + ["--model-tag", "d2", "--output-tag", "eager", "--compile", "0"])
        chat_rl.main(RL + ["--model-tag", "d2", "--output-tag", "compiled", "--compile", "1"])
        eager, compiled = losses("rl", "eager", "loss"), losses("rl", "compiled", "loss")
    assert any(v != 0 for v in eager), "the test needs a non-zero policy-gradient loss"
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-6)
