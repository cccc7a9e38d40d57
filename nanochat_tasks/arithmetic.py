"""
Arithmetic: synthetic word problems solved with the calculator tool, offline and endless.

A small model is bad at carrying digits, so instead of computing in its head it learns to write
the calculation as a python part, read the tool's output, and finish with "#### <answer>", the
same format as GSM8K (whose extract_answer checks the reply). Numbers stay small (two digits,
results under a few thousand) so a tiny model can follow the words.

Example i of a split is drawn from a generator seeded by (split, i). Which split a problem belongs
to is fixed by a hash of its question, and a draw that lands in the other split is redrawn, so no
test question ever appears in training.
"""

import zlib
import random

from nanochat_tasks.common import Task, check_split, last_assistant_text
from nanochat_tasks.gsm8k import extract_answer

TEST_FRACTION = 10  # one question in 10 belongs to the test split

NAMES = ["Sam", "Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Ines"]
THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "shells", "stamps"]


def question_split(question):
    return "test" if zlib.crc32(question.encode()) % TEST_FRACTION == 0 else "train"


def calc(expr, value, before="", after=""):
    """One step of a solution: text, then the calculator call and its output, then more text."""
    return [("text", before), ("python", expr), ("python_output", str(value)), ("text", after)]


# Each problem maker returns (question, steps, answer). The python expressions use only + - * /,
# and divisions always come out even, so every tool output is a whole number (the calculator
# writes 24/4 as "6", not "6.0").

def add_problem(rng):
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    question = f"{name} has {a} {thing}. {name} gets {b} more. How many {thing} does {name} have now?"
    steps = calc(f"{a}+{b}", a + b, f"{name} starts with {a} {thing} and gets {b} more, so I add: ",
                 f"\n{name} has {a + b} {thing} now.")
    return question, steps, a + b


def subtract_problem(rng):
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a = rng.randint(10, 90)
    b = rng.randint(1, a - 1)
    question = f"{name} had {a} {thing} and gave {b} of them away. How many {thing} are left?"
    steps = calc(f"{a}-{b}", a - b, f"{name} had {a} and gave away {b}, so I subtract: ",
                 f"\n{a - b} {thing} are left.")
    return question, steps, a - b


def multiply_problem(rng):
    thing = rng.choice(THINGS)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    question = f"A box holds {a} {thing}. How many {thing} are in {b} boxes?"
    steps = calc(f"{b}*{a}", a * b, f"{b} boxes of {a} {thing} each is a multiplication: ",
                 f"\nThere are {a * b} {thing} in {b} boxes.")
    return question, steps, a * b


def divide_problem(rng):
    thing = rng.choice(THINGS)
    each, people = rng.randint(2, 12), rng.randint(2, 9)
    total = each * people
    question = f"{total} {thing} are shared equally among {people} friends. How many does each friend get?"
    steps = calc(f"{total}/{people}", each, f"{total} shared among {people} is a division: ",
                 f"\nEach friend gets {each} {thing}.")
    return question, steps, each


def change_problem(rng):
    name = rng.choice(NAMES)
    count, price = rng.randint(2, 9), rng.randint(1, 9)
    cost = count * price
    paid = rng.choice([bill for bill in (10, 20, 50, 100) if bill >= cost])
    question = (f"{name} buys {count} notebooks at {price} dollars each and pays with a {paid}-dollar bill. "
                f"How much change does {name} get, in dollars?")
    steps = (calc(f"{count}*{price}", cost, "First the cost of the notebooks: ",
                  f"\nThe notebooks cost {cost} dollars. Then the change: ")
             + calc(f"{paid}-{cost}", paid - cost, "", f"\n{name} gets {paid - cost} dollars back."))
    return question, steps, paid - cost


def expression_problem(rng):
    a, b, c = rng.randint(2, 30), rng.randint(2, 12), rng.randint(2, 12)
    op = rng.choice(["+", "-"])
    value = a + b * c if op == "+" else a - b * c
    question = f"What is {a} {op} {b} * {c}?"
    steps = calc(f"{a}{op}{b}*{c}", value, "Multiplication comes before addition and subtraction. ",
                 f"\nSo {a} {op} {b} * {c} = {value}.")
    return question, steps, value


def boxes_left_problem(rng):
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    boxes, each = rng.randint(2, 9), rng.randint(2, 12)
    total = boxes * each
    given = rng.randint(1, total - 1)
    question = (f"{name} has {boxes} boxes with {each} {thing} in each box and gives {given} {thing} away. "
                f"How many {thing} does {name} have left?")
    steps = (calc(f"{boxes}*{each}", total, "First the number of " + thing + ": ",
                  f"\n{name} has {total} {thing}. Then {given} are given away: ")
             + calc(f"{total}-{given}", total - given, "", f"\n{name} has {total - given} {thing} left."))
    return question, steps, total - given


def pooled_share_problem(rng):
    a_name, b_name = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    each, people = rng.randint(2, 9), rng.randint(2, 6)
    total = each * people
    a = rng.randint(1, total - 1)
    question = (f"{a_name} has {a} {thing} and {b_name} has {total - a}. They put them together and share them "
                f"equally among {people} friends. How many {thing} does each friend get?")
    steps = (calc(f"{a}+{total - a}", total, "First all the " + thing + " together: ",
                  f"\nTogether they have {total}. Then shared among {people}: ")
             + calc(f"{total}/{people}", each, "", f"\nEach friend gets {each} {thing}."))
    return question, steps, each


PROBLEMS = [add_problem, subtract_problem, multiply_problem, divide_problem, change_problem, expression_problem]
# level 2: two calculator calls chained through words, a step up that RL can practise on
PROBLEMS_LEVEL_2 = [boxes_left_problem, pooled_share_problem]


class Arithmetic(Task):

    def __init__(self, size=1000, split="train", level=1, **slice_kwargs):
        super().__init__(**slice_kwargs)
        check_split("Arithmetic", split, ("train", "test"))
        if level not in (1, 2):
            raise ValueError(f"Arithmetic level must be 1 or 2, not {level!r}")
        self.size, self.split, self.level = size, split, level
        self.problems = PROBLEMS if level == 1 else PROBLEMS_LEVEL_2

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return self.size

    def get_example(self, index):
        seed = f"arithmetic/{self.split}/{index}" + ("" if self.level == 1 else f"/level{self.level}")
        rng = random.Random(seed)
        while True:  # redraw until the question belongs to this split (about 1.1 draws for train, 10 for test)
            question, steps, answer = rng.choice(self.problems)(rng)
            if question_split(question) == self.split:
                break
        content = []
        for kind, text in steps + [("text", f"\n\n#### {answer}")]:
            if kind == "text" and content and content[-1]["type"] == "text":
                content[-1]["text"] += text  # keep one text part between tool calls
            elif text:
                content.append({"type": kind, "text": text})
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": content}]}

    def evaluate(self, conversation, assistant_response):
        reference = extract_answer(last_assistant_text(conversation))
        return int(extract_answer(assistant_response) == reference)
