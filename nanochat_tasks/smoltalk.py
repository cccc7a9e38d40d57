"""
SmolTalk: general chat conversations for midtraining and SFT (HuggingFaceTB/smol-smoltalk,
about 460K train and 24K test conversations, some starting with a system message).

A training task only: there is no right answer to check.
"""

from nanochat_tasks.common import Task, check_split, conversation_problem
from nanochat_tasks.hub import load_hub_dataset


class SmolTalk(Task):

    def __init__(self, split="train", **slice_kwargs):
        super().__init__(**slice_kwargs)
        check_split("SmolTalk", split, ("train", "test"))
        self.ds = load_hub_dataset("HuggingFaceTB/smol-smoltalk", None, split).shuffle(seed=42)

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        messages = self.ds[index]["messages"]
        problem = conversation_problem(messages)
        assert problem is None, f"SmolTalk row {index}: {problem}"
        # keep only role and content: the tokenizer needs nothing else
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
