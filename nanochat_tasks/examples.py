"""
What a chat model of the CPU demo can answer: one real prompt of every offline task it trained on.

A small model answers the kinds of prompt it was trained on and little else (anything else gets
one of its identity answers). So the examples shown to a learner are not written by hand: each is
the first user message of the task's own training split, drawn by the task class itself, so the
list cannot drift from the training data. The chat CLI prints them at start and in --help, the
chat page offers them as clickable examples (chat_web passes them to GET /stats), and the CPU demo
prints them at the end:

    python -m nanochat_tasks.examples
"""

from functools import lru_cache

from nanochat_tasks import get_task
from nanochat_tasks.mixtures import OFFLINE_TASKS_BY_STAGE

# what each task family teaches, in a learner's words (a new task without an entry shows its name)
FAMILY = {
    "Identity": "who it is",
    "SpellingBee": "count a letter in a word",
    "SimpleSpelling": "spell a word",
    "Arithmetic": "word problem, solved with the calculator",
    "TwoStepArithmetic": "two-step word problem",
    "Refusal": "decline what it cannot do, learned in SFT only",
}
GREETINGS = {"hi!", "hello", "hey there", "good morning!"}  # Identity sometimes opens with one: skip it


@lru_cache(maxsize=1)
def example_prompts():
    """[{"task": name, "family": what it teaches, "prompt": text}], one per offline task family of
    SFT (nanochat_tasks.mixtures.OFFLINE_TASKS_BY_STAGE["sft"]: midtraining's families plus the one
    only SFT trains), in that order."""
    examples = []
    for name, _ in OFFLINE_TASKS_BY_STAGE["sft"]:
        conversation = get_task(name, "train", size=1)[0]
        users = [m["content"] for m in conversation["messages"] if m["role"] == "user"]
        prompt = next((u for u in users if u.strip().lower() not in GREETINGS), users[0])
        examples.append({"task": name, "family": FAMILY.get(name, name), "prompt": prompt})
    return examples


def examples_text(indent="  "):
    """The examples as text for a terminal: one line that says what they are, then each prompt
    followed by what kind it is."""
    lines = ["The chat model (mid, sft, rl) answers the kinds of prompt it was trained on, and anything",
             "else with something about itself. One real prompt of each kind:"]
    lines += [f"{indent}{e['prompt']}    ({e['family']})" for e in example_prompts()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(examples_text())
