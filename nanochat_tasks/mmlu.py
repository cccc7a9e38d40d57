"""
MMLU: four-choice questions on 57 subjects from high-school to professional level (cais/mmlu).

Config "all" has the splits test (14K, the eval), validation, dev (5 per subject) and
auxiliary_train; config "auxiliary_train" (split "train", ~100K questions from other multiple-choice
sets) is used in midtraining to teach the format. Its rows come wrapped in one extra column,
{"train": {question, subject, choices, answer}}, which we unwrap.
"""

from nanochat_tasks.common import Task, check_split, mc_conversation, evaluate_mc
from nanochat_tasks.hub import load_hub_dataset

LETTERS = ("A", "B", "C", "D")


class MMLU(Task):

    def __init__(self, subset, split, **slice_kwargs):
        super().__init__(**slice_kwargs)
        assert subset in ("all", "auxiliary_train"), f"MMLU subset must be all or auxiliary_train, got {subset!r}"
        check_split(f"MMLU {subset}", split, ("train",) if subset == "auxiliary_train" else ("validation", "dev", "test"))
        self.subset = subset
        self.ds = load_hub_dataset("cais/mmlu", subset, split).shuffle(seed=42)

    @property
    def eval_type(self):
        return "categorical"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        if "train" in row and "question" not in row:
            row = row["train"]
        choices = row["choices"]
        assert len(choices) == len(LETTERS), f"MMLU row {index} has {len(choices)} choices, expected 4"
        conversation = mc_conversation(row["question"], LETTERS, choices, LETTERS[row["answer"]])
        conversation["subject"] = row["subject"]  # lets chat_eval report accuracy per subject
        return conversation

    def evaluate(self, conversation, assistant_response):
        return evaluate_mc(conversation, assistant_response)
