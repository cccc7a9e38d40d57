"""
ARC (AI2 Reasoning Challenge): grade-school science questions with 3-5 choices
(allenai/ai2_arc, configs ARC-Easy and ARC-Challenge; splits train, validation, test).

A categorical eval in chat_eval; its train split also goes into the midtraining mixture so the
model learns the multiple-choice format.
"""

from nanochat_tasks.common import Task, check_split, mc_conversation, evaluate_mc
from nanochat_tasks.hub import load_hub_dataset


class ARC(Task):

    def __init__(self, subset, split, **slice_kwargs):
        super().__init__(**slice_kwargs)
        assert subset in ("ARC-Easy", "ARC-Challenge"), f"ARC subset must be ARC-Easy or ARC-Challenge, got {subset!r}"
        check_split("ARC", split, ("train", "validation", "test"))
        self.ds = load_hub_dataset("allenai/ai2_arc", subset, split).shuffle(seed=42)

    @property
    def eval_type(self):
        return "categorical"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        # the letters are the dataset's own labels: usually A-D, sometimes A-E or 1-4
        letters = row["choices"]["label"]
        return mc_conversation(row["question"], letters, row["choices"]["text"], row["answerKey"])

    def evaluate(self, conversation, assistant_response):
        return evaluate_mc(conversation, assistant_response)
