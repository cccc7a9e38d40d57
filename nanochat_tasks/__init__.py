"""
Chat tasks (training mixtures and evaluations) behind one Task interface; see nanochat_tasks/common.py.

get_task(name, split) builds a task from the name used on command lines, e.g.
`get_task("ARC-Easy", "test")` or `get_task("SpellingBee", "train", size=5000)`.
"""

from nanochat.common import UserError

TASK_NAMES = ("SmolTalk", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval",
              "SpellingBee", "SimpleSpelling", "Arithmetic", "TwoStepArithmetic", "Identity", "Refusal")


def get_task(name, split="train", **kwargs):
    """The task called `name` (one of TASK_NAMES) on `split`; extra keyword arguments go to its
    class (size= for the synthetic tasks; start=, stop=, step= for all). Imports are local so that
    asking for an offline task never imports the hub machinery."""
    if name == "SmolTalk":
        from nanochat_tasks.smoltalk import SmolTalk
        return SmolTalk(split, **kwargs)
    if name in ("ARC-Easy", "ARC-Challenge"):
        from nanochat_tasks.arc import ARC
        return ARC(name, split, **kwargs)
    if name == "MMLU":
        from nanochat_tasks.mmlu import MMLU
        # MMLU has no real train split; training uses its ~100K auxiliary_train questions
        return MMLU("auxiliary_train", "train", **kwargs) if split == "train" else MMLU("all", split, **kwargs)
    if name == "GSM8K":
        from nanochat_tasks.gsm8k import GSM8K
        return GSM8K("main", split, **kwargs)
    if name == "HumanEval":
        if split != "test":
            raise UserError(f"HumanEval has only a test split (164 problems), not {split!r}")
        from nanochat_tasks.humaneval import HumanEval
        return HumanEval(**kwargs)
    if name == "SpellingBee":
        from nanochat_tasks.spellingbee import SpellingBee
        return SpellingBee(split=split, **kwargs)
    if name == "SimpleSpelling":
        from nanochat_tasks.spellingbee import SimpleSpelling
        return SimpleSpelling(split=split, **kwargs)
    if name in ("Arithmetic", "TwoStepArithmetic"):
        from nanochat_tasks.arithmetic import Arithmetic
        return Arithmetic(split=split, level=1 if name == "Arithmetic" else 2, **kwargs)
    if name == "Identity":
        from nanochat_tasks.identity import Identity
        return Identity(split=split, **kwargs)
    if name == "Refusal":
        from nanochat_tasks.refusal import Refusal
        return Refusal(split=split, **kwargs)
    raise UserError(f"unknown task {name!r}: choose one of {', '.join(TASK_NAMES)}")
