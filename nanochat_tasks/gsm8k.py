"""
GSM8K: 8.5K grade-school math word problems with worked answers (openai/gsm8k, configs "main"
and "socratic", splits train and test). Used for SFT, for RL (the answer is checkable) and as a
generative eval.

The answers mark every calculation as <<expression=result>> and end with "#### <number>":

    Natalia sold 48/2 = <<48/2=24>>24 clips in May. ... #### 72

We turn each <<...>> into a calculator call, so the model learns to use the python tool:
text, {"type": "python", "text": "48/2"}, {"type": "python_output", "text": "24"}, text...
"""

import re
from decimal import Decimal, InvalidOperation

from nanochat_tasks.common import Task, check_split, last_assistant_text
from nanochat_tasks.hub import load_hub_dataset

CALCULATION = re.compile(r"<<([^<>]*)>>")
# a number as people write it: optional minus, digits with thousands commas, optional decimals
NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")


def parse_answer_parts(answer):
    """GSM8K answer text -> assistant content parts (text / python / python_output)."""
    parts = []

    def add_text(text):
        if not text:
            return
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += text
        else:
            parts.append({"type": "text", "text": text})

    pos = 0
    for match in CALCULATION.finditer(answer):
        add_text(answer[pos:match.start()])
        expr, eq, result = match.group(1).rpartition("=")
        if eq and expr.strip():
            parts.append({"type": "python", "text": expr.strip()})
            parts.append({"type": "python_output", "text": result.strip()})
        else:  # a malformed annotation without '=': keep what it says as plain text
            add_text(match.group(1))
        pos = match.end()
    add_text(answer[pos:])
    return parts


def normalize_number(text):
    """'1,000.50' -> '1000.5', '-0' -> '0', '7.0' -> '7'; None when it is not a number."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text):
    """The final answer of a worked solution: the first number after '####', normalised.

    Returns None when there is no '####' or no number after it. We do not fall back to the last
    number in the text: in a worked solution that is often an intermediate result, and writing
    '#### answer' is part of what the model must learn."""
    marker = text.find("####")
    if marker < 0:
        return None
    match = NUMBER.search(text, marker + 4)
    if match is None:
        return None
    return normalize_number(match.group(0))


class GSM8K(Task):

    def __init__(self, subset="main", split="train", **slice_kwargs):
        super().__init__(**slice_kwargs)
        assert subset in ("main", "socratic"), f"GSM8K subset must be main or socratic, got {subset!r}"
        check_split("GSM8K", split, ("train", "test"))
        self.ds = load_hub_dataset("openai/gsm8k", subset, split).shuffle(seed=42)

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return len(self.ds)

    def get_example(self, index):
        row = self.ds[index]
        return {
            "messages": [
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": parse_answer_parts(row["answer"])},
            ]
        }

    def evaluate(self, conversation, assistant_response):
        reference = extract_answer(last_assistant_text(conversation))
        assert reference is not None, "the reference answer has no '#### number'"
        return int(extract_answer(assistant_response) == reference)
