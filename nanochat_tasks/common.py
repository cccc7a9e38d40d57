"""
The one interface every chat task shares: a Task is a list of conversations you can slice, mix and
(for evaluation tasks) check answers against.

Midtraining and SFT draw conversations from a TaskMixture of several tasks; chat_eval walks one task
and asks it whether the model's reply was right; RL asks it for a reward. A conversation is the
plain dict the tokenizer renders:

    {"messages": [{"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..." or [{"type": "text"|"python"|"python_output", "text": "..."}, ...]}]}

Multiple-choice conversations also carry "letters": the answer letters, so an evaluator can compare
the model's logits on just those letters ("categorical" evaluation) instead of sampling text.
"""

import random

from nanochat.common import UserError


class Task:
    """Base class: a view `[start:stop:step]` over a task's examples.

    Subclasses implement num_examples(), get_example(index) and, if they can be checked,
    eval_type and evaluate(). The slice lets DDP ranks take every N-th example
    (start=rank, step=world_size) or an eval use only the first few hundred (stop=500)."""

    def __init__(self, start=0, stop=None, step=1):
        assert start >= 0, f"start must be >= 0, got {start}"
        assert stop is None or stop >= start, f"stop ({stop}) must be >= start ({start})"
        assert step >= 1, f"step must be >= 1, got {step}"
        self.start, self.stop, self.step = start, stop, step

    # --- what a subclass provides ---

    @property
    def eval_type(self):
        """'categorical' (pick one of conversation['letters']) or 'generative' (sample a reply)."""
        raise NotImplementedError(f"{type(self).__name__} is a training task and has no evaluation")

    def num_examples(self):
        """How many examples the whole task has, before slicing."""
        raise NotImplementedError

    def get_example(self, index):
        """The conversation at `index` of the whole task (0 <= index < num_examples())."""
        raise NotImplementedError

    def evaluate(self, conversation, assistant_response):
        """Was `assistant_response` (a string) the right reply to this conversation? Returns 0/1 or a bool."""
        raise NotImplementedError(f"{type(self).__name__} has no automatic check of answers")

    def reward(self, conversation, assistant_response):
        """RL reward for one sampled reply; by default 1.0 when correct, else 0.0."""
        return float(self.evaluate(conversation, assistant_response))

    # --- the slice view ---

    def __len__(self):
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        span = stop - self.start
        return max(0, (span + self.step - 1) // self.step)  # ceil division: range() semantics

    def __getitem__(self, index):
        if not isinstance(index, int):
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(index).__name__}")
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index out of range for {type(self).__name__} of length {n}")
        return self.get_example(self.start + index * self.step)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class TaskMixture(Task):
    """Several tasks as one, their examples interleaved by a shuffle with a fixed seed.

    The shuffle matters: training on all of task A and then all of task B would make the model
    forget A. Listing a task twice gives it twice the weight (its examples appear twice)."""

    def __init__(self, tasks, seed=42, **slice_kwargs):
        super().__init__(**slice_kwargs)
        self.tasks = list(tasks)
        # (task number, index inside that task) for every example of every task
        self.index_map = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self.index_map)

    def num_examples(self):
        return len(self.index_map)

    def get_example(self, index):
        t, i = self.index_map[index]
        return self.tasks[t][i]


class TaskSequence(Task):
    """Several tasks one after another, in order (a curriculum, or an eval over several sets)."""

    def __init__(self, tasks, **slice_kwargs):
        super().__init__(**slice_kwargs)
        self.tasks = list(tasks)
        self.lengths = [len(task) for task in self.tasks]

    def num_examples(self):
        return sum(self.lengths)

    def get_example(self, index):
        for task, length in zip(self.tasks, self.lengths):
            if index < length:
                return task[index]
            index -= length
        raise IndexError(index)


def check_split(task_name, split, allowed):
    """A split name comes from the command line, so a wrong one is the user's mistake, told as such."""
    if split not in allowed:
        raise UserError(f"{task_name} has no split {split!r}: use one of {', '.join(allowed)}")


# -----------------------------------------------------------------------------
# multiple choice

def render_mc(question, letters, choices):
    """The user prompt of a multiple-choice question.

    Each choice sits on its own line after its letter, so the letter is tokenized on its own
    ('A', not ' A'): the same token the assistant must answer with, which is what lets a
    categorical eval read the answer straight off the logits of those few letter tokens."""
    assert len(letters) == len(choices), f"{len(letters)} letters for {len(choices)} choices"
    lines = [question.strip(), ""]
    lines += [f"{letter}. {choice}" for letter, choice in zip(letters, choices)]
    lines += ["", "Answer with the letter of the correct choice only."]
    return "\n".join(lines)


def mc_conversation(question, letters, choices, answer_letter):
    """A multiple-choice conversation: the prompt from render_mc, the answer letter as the reply."""
    assert answer_letter in letters, f"answer {answer_letter!r} is not one of {letters}"
    return {
        "messages": [
            {"role": "user", "content": render_mc(question, letters, choices)},
            {"role": "assistant", "content": answer_letter},
        ],
        "letters": list(letters),
    }


def evaluate_mc(conversation, assistant_response):
    """1 when the reply is the right letter (surrounding whitespace ignored), else 0."""
    correct = conversation["messages"][-1]["content"]
    return int(assistant_response.strip() == correct)


# -----------------------------------------------------------------------------
# conversation checking, shared by the hub tasks and by CustomJSON (users' own files)

PART_TYPES = ("text", "python", "python_output")


def conversation_problem(messages):
    """What is wrong with a list of messages, as a sentence (the first problem); None when valid.

    Valid: an optional system message first, then user/assistant strictly alternating, starting
    with user and ending with assistant; non-empty contents; an assistant's content may also be a
    list of parts {"type": text|python|python_output, "text": str}. The rules live in one place,
    nanochat/conversation_check.py, which the dataset inspector uses to report every problem."""
    from nanochat.conversation_check import validate_conversation
    problems = validate_conversation(messages)
    return problems[0].message if problems else None


def last_assistant_text(conversation):
    """The text of the last assistant message, with parts joined (python parts included)."""
    content = conversation["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)
