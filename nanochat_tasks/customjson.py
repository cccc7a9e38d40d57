"""
CustomJSON: your own conversations, from a JSONL file, one conversation per line.

Each line is either a JSON list of messages or an object with a "messages" list:

    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}

An optional system message comes first, then user and assistant take turns, ending with the
assistant. Assistant content may also be a list of parts (text / python / python_output), the
same format the other tasks produce. The whole file is checked when it is loaded, and the first
bad line is reported as file:line, so a typo never surfaces halfway through a training run.
"""

import json

from nanochat.common import UserError
from nanochat_tasks.common import Task, conversation_problem


def read_conversations(filepath):
    """All conversations of a JSONL file, checked; UserError naming file:line on the first bad one."""
    try:
        with open(filepath, "rb") as f:
            raw_lines = f.read().splitlines()
    except OSError as e:
        raise UserError(f"cannot read conversations file {filepath}: {e.strerror}") from None
    conversations = []
    for lineno, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8-sig")  # -sig: tolerate the BOM some editors write
        except UnicodeDecodeError:
            raise UserError(f"{filepath}:{lineno}: not UTF-8 text (save the file as UTF-8)") from None
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{filepath}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        messages = item.get("messages") if isinstance(item, dict) else item
        problem = conversation_problem(messages)
        if problem is not None:
            raise UserError(f"{filepath}:{lineno}: {problem}")
        conversations.append({"messages": messages})
    if not conversations:
        raise UserError(f"{filepath} holds no conversations: write one JSON conversation per line")
    return conversations


class CustomJSON(Task):

    def __init__(self, filepath, **slice_kwargs):
        super().__init__(**slice_kwargs)
        self.filepath = filepath
        self.conversations = read_conversations(filepath)

    def num_examples(self):
        return len(self.conversations)

    def get_example(self, index):
        return self.conversations[index]
