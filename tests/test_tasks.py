"""
Tests for nanochat_tasks/: the Task interface (slicing, mixtures, sequences), the hub tasks loaded from
fixture rows in the hub's own column format (tests/fixtures/tasks/, through the same
load_hub_dataset path real runs use), the offline tasks checked against answers computed here
independently, and for every task: the tokenizer's loss mask covers exactly the assistant's tokens.
"""

import os
import re
import json
import time

import pytest

from nanochat.common import UserError
from nanochat.calculator import use_calculator
from nanochat.tokenizer import RustBPETokenizer
from nanochat_tasks import get_task, TASK_NAMES
from nanochat_tasks.common import Task, TaskMixture, TaskSequence, render_mc, conversation_problem
from nanochat_tasks.hub import TaskUnavailable, load_hub_dataset, hub_unreachable_reason
from nanochat_tasks import hub
from nanochat_tasks.arc import ARC
from nanochat_tasks.mmlu import MMLU
from nanochat_tasks.gsm8k import GSM8K, extract_answer, parse_answer_parts
from nanochat_tasks.smoltalk import SmolTalk
from nanochat_tasks.customjson import CustomJSON
from nanochat_tasks.spellingbee import SpellingBee, SimpleSpelling, load_words
from nanochat_tasks.arithmetic import Arithmetic
from nanochat_tasks.identity import Identity
from nanochat_tasks.refusal import Refusal, request_split
from nanochat_tasks.humaneval import HumanEval, extract_code

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tasks")


@pytest.fixture(autouse=True)
def fixture_tasks_dir(monkeypatch):
    """Every test reads hub datasets from the fixture rows, never from the network."""
    monkeypatch.setenv("NANOCHAT_TASKS_DIR", FIXTURES)


# -----------------------------------------------------------------------------
# the Task interface

class Numbers(Task):
    """A task whose example i is just {"n": i}, to test the slicing machinery."""

    def __init__(self, n, tag="", **slice_kwargs):
        super().__init__(**slice_kwargs)
        self.n, self.tag = n, tag

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return {"n": index, "tag": self.tag}


@pytest.mark.parametrize("start,stop,step", [(0, None, 1), (3, None, 1), (0, 7, 1), (2, 9, 3), (1, None, 4), (5, 5, 1), (0, 100, 2), (12, None, 1)])
def test_slice_view_behaves_like_range(start, stop, step):
    task = Numbers(10, start=start, stop=stop, step=step)
    expected = list(range(10))[start:stop:step]
    assert len(task) == len(expected)
    assert [ex["n"] for ex in task] == expected
    assert [task[i]["n"] for i in range(len(task))] == expected
    if expected:
        assert task[-1]["n"] == expected[-1]


def test_index_outside_the_slice_raises_index_error():
    task = Numbers(10, start=2, stop=6)
    with pytest.raises(IndexError):
        task[4]
    with pytest.raises(IndexError):
        task[-5]
    with pytest.raises(TypeError):
        task["0"]


def test_mixture_interleaves_deterministically_and_oversamples_repeated_tasks():
    a, b = Numbers(20, "a"), Numbers(30, "b")
    mixture = TaskMixture([a, b, a])
    items = [(ex["tag"], ex["n"]) for ex in mixture]
    assert len(mixture) == 70
    assert sorted(items) == sorted([("a", i) for i in range(20)] * 2 + [("b", i) for i in range(30)])
    assert items == [(ex["tag"], ex["n"]) for ex in TaskMixture([a, b, a])]  # same seed, same order
    first_half_tags = {tag for tag, _ in items[:35]}
    assert first_half_tags == {"a", "b"}  # interleaved, not one task after the other
    assert items != [(ex["tag"], ex["n"]) for ex in TaskMixture([a, b, a], seed=1)]


def test_mixture_split_across_ranks_covers_every_example_once():
    tasks = [Numbers(13, "a"), Numbers(8, "b")]
    whole = [(ex["tag"], ex["n"]) for ex in TaskMixture(tasks)]
    world = 3
    shards = [[(ex["tag"], ex["n"]) for ex in TaskMixture(tasks, start=rank, step=world)] for rank in range(world)]
    assert sorted(sum(shards, [])) == sorted(whole)
    assert shards[1] == whole[1::world]


def test_sequence_keeps_tasks_in_order():
    sequence = TaskSequence([Numbers(3, "a"), Numbers(2, "b", start=1)])
    assert [(ex["tag"], ex["n"]) for ex in sequence] == [("a", 0), ("a", 1), ("a", 2), ("b", 1)]
    with pytest.raises(IndexError):
        sequence[4]


def test_render_mc_puts_each_letter_at_the_start_of_its_line():
    prompt = render_mc("Which is a fruit?", ["A", "B"], ["apple", "stone"])
    assert "Which is a fruit?" in prompt
    assert "\nA. apple\n" in prompt and "\nB. stone\n" in prompt


# -----------------------------------------------------------------------------
# hub tasks from fixture rows

def read_fixture(*path):
    with open(os.path.join(FIXTURES, *path), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_arc_uses_the_dataset_labels_as_letters():
    rows = {row["id"]: row for row in read_fixture("allenai", "ai2_arc", "ARC-Easy", "test.jsonl")}
    task = ARC("ARC-Easy", "test")
    assert task.eval_type == "categorical"
    assert len(task) == len(rows)
    seen = set()
    for conversation in task:
        user = conversation["messages"][0]["content"]
        row = next(r for r in rows.values() if user.startswith(r["question"]))
        seen.add(row["id"])
        assert conversation["letters"] == row["choices"]["label"]
        assert conversation["messages"][1]["content"] == row["answerKey"]
        for label, text in zip(row["choices"]["label"], row["choices"]["text"]):
            assert f"\n{label}. {text}\n" in user
        assert task.evaluate(conversation, row["answerKey"]) == 1
        assert task.evaluate(conversation, f" {row['answerKey']}\n") == 1
        wrong = next(label for label in row["choices"]["label"] if label != row["answerKey"])
        assert task.evaluate(conversation, wrong) == 0
    assert seen == set(rows)
    assert len(ARC("ARC-Challenge", "test")) == 2


def test_mmlu_answer_index_becomes_its_letter():
    rows = read_fixture("cais", "mmlu", "all", "test.jsonl")
    task = MMLU("all", "test")
    assert len(task) == len(rows)
    for conversation in task:
        row = next(r for r in rows if conversation["messages"][0]["content"].startswith(r["question"]))
        assert conversation["letters"] == ["A", "B", "C", "D"]
        assert conversation["messages"][1]["content"] == "ABCD"[row["answer"]]
        assert conversation["subject"] == row["subject"]
        assert task.evaluate(conversation, "ABCD"[row["answer"]]) == 1


def test_mmlu_auxiliary_train_rows_are_unwrapped():
    rows = [r["train"] for r in read_fixture("cais", "mmlu", "auxiliary_train", "train.jsonl")]
    task = MMLU("auxiliary_train", "train")
    questions = {c["messages"][0]["content"].split("\n\n")[0]: c["messages"][1]["content"] for c in task}
    assert questions == {r["question"]: "ABCD"[r["answer"]] for r in rows}


def test_smoltalk_keeps_system_messages_and_turns():
    rows = read_fixture("HuggingFaceTB", "smol-smoltalk", "default", "train.jsonl")
    task = SmolTalk("train")
    assert sorted(json.dumps(c["messages"], sort_keys=True) for c in task) == \
        sorted(json.dumps([{"role": m["role"], "content": m["content"]} for m in r["messages"]], sort_keys=True) for r in rows)
    assert len(SmolTalk("test")) == 1


def test_gsm8k_calculations_become_python_parts():
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"
    assert parse_answer_parts(answer) == [
        {"type": "text", "text": "Natalia sold 48/2 = "},
        {"type": "python", "text": "48/2"},
        {"type": "python_output", "text": "24"},
        {"type": "text", "text": "24 clips in May.\nNatalia sold 48+24 = "},
        {"type": "python", "text": "48+24"},
        {"type": "python_output", "text": "72"},
        {"type": "text", "text": "72 clips altogether.\n#### 72"},
    ]
    # a broken annotation stays text; nothing of the answer is lost
    assert parse_answer_parts("so <<oops>> then #### 1") == [{"type": "text", "text": "so oops then #### 1"}]


@pytest.mark.parametrize("subset,split", [("main", "train"), ("main", "test"), ("socratic", "train")])
def test_gsm8k_rows_round_trip_through_parts(subset, split):
    rows = read_fixture("openai", "gsm8k", subset, f"{split}.jsonl")
    task = GSM8K(subset, split)
    assert task.eval_type == "generative"
    rebuilt = set()
    for conversation in task:
        text = ""
        for part in conversation["messages"][1]["content"]:
            # put the <<expr=result>> annotations back to get the original answer text
            text += {"text": "{}", "python": "<<{}=", "python_output": "{}>>"}[part["type"]].format(part["text"])
        rebuilt.add((conversation["messages"][0]["content"], text))
    assert rebuilt == {(r["question"], r["answer"]) for r in rows}


@pytest.mark.parametrize("text,expected", [
    ("#### 72", "72"),
    ("so the answer is\n#### 1,234", "1234"),
    ("#### 2,050 pens", "2050"),
    ("She lost money.\n#### -5 dollars and more text 7", "-5"),
    ("#### 3.50", "3.5"),
    ("#### 18.00", "18"),
    ("####$1,000.", "1000"),
    ("#### .5", "0.5"),
    ("#### -0", "0"),
    ("#### 5 and later #### 6", "5"),
    ("The answer is 42.", None),   # no #### at all
    ("####", None),
    ("#### many", None),
    ("", None),
])
def test_extract_answer_on_malformed_outputs(text, expected):
    assert extract_answer(text) == expected


def test_gsm8k_evaluate_and_reward_compare_numbers():
    task = GSM8K("main", "test")
    conversation = next(c for c in task if "ducks" in c["messages"][0]["content"])
    assert task.evaluate(conversation, "She makes 9 * 2 = 18 dollars.\n#### 18") == 1
    assert task.evaluate(conversation, "#### 18.0") == 1
    assert task.evaluate(conversation, "#### $18 per day") == 1
    assert task.evaluate(conversation, "#### 17") == 0
    assert task.evaluate(conversation, "The answer is 18") == 0
    assert task.reward(conversation, "#### 18") == 1.0
    assert task.reward(conversation, "#### 81") == 0.0


def test_parquet_copy_loads_the_same_rows(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = read_fixture("allenai", "ai2_arc", "ARC-Easy", "test.jsonl")
    target = tmp_path / "allenai" / "ai2_arc" / "ARC-Easy"
    target.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), target / "test.parquet")
    expected = [ARC("ARC-Easy", "test")[i] for i in range(3)]
    monkeypatch.setenv("NANOCHAT_TASKS_DIR", str(tmp_path))
    assert [ARC("ARC-Easy", "test")[i] for i in range(3)] == expected


def test_hub_tasks_ask_datasets_for_the_real_dataset_ids(tmp_path, monkeypatch):
    """Without a local copy, each task calls datasets.load_dataset with upstream's ids and configs."""
    import datasets
    monkeypatch.setenv("NANOCHAT_TASKS_DIR", str(tmp_path))  # empty: no local copies
    monkeypatch.setattr(hub, "hub_offline_mode", lambda: False)
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        folder = os.path.join(FIXTURES, *path.split("/"), name or "default")
        filename = split if os.path.exists(os.path.join(folder, f"{split}.jsonl")) else sorted(os.listdir(folder))[0][:-6]
        return hub.load_local_copy(os.path.join(folder, f"{filename}.jsonl"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    SmolTalk("train"), ARC("ARC-Easy", "test"), ARC("ARC-Challenge", "validation")
    MMLU("all", "test"), MMLU("auxiliary_train", "train"), GSM8K("main", "test"), GSM8K("socratic", "train")
    assert calls == [
        ("HuggingFaceTB/smol-smoltalk", None, "train"),
        ("allenai/ai2_arc", "ARC-Easy", "test"),
        ("allenai/ai2_arc", "ARC-Challenge", "validation"),
        ("cais/mmlu", "all", "test"),
        ("cais/mmlu", "auxiliary_train", "train"),
        ("openai/gsm8k", "main", "test"),
        ("openai/gsm8k", "socratic", "train"),
    ]


def test_unreachable_hub_gives_one_line_task_unavailable_quickly(tmp_path, monkeypatch):
    """A real probe of a closed local port: no datasets retries, a clear one-line error."""
    monkeypatch.setenv("NANOCHAT_TASKS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)  # a proxy would answer for the closed port
    monkeypatch.setattr(hub, "hub_offline_mode", lambda: False)
    t0 = time.perf_counter()
    with pytest.raises(TaskUnavailable) as info:
        GSM8K("main", "test")
    assert time.perf_counter() - t0 < hub.PROBE_TIMEOUT_S + 1
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "\n" not in message
    assert "hub is unreachable" in message and "openai/gsm8k" in message and "offline tasks" in message


def test_a_hanging_probe_is_abandoned_after_its_timeout(monkeypatch):
    import urllib.request
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: time.sleep(30))
    t0 = time.perf_counter()
    assert hub_unreachable_reason(timeout=0.3) == "no answer from https://huggingface.co within 0.3s"
    assert time.perf_counter() - t0 < 2


def test_download_failure_after_the_probe_is_task_unavailable(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setenv("NANOCHAT_TASKS_DIR", str(tmp_path))
    monkeypatch.setattr(hub, "hub_offline_mode", lambda: False)
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)

    def failing_load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", failing_load_dataset)
    with pytest.raises(TaskUnavailable, match="cais/mmlu"):
        MMLU("all", "test")
    # offline mode with nothing cached: the same error, naming HF_HUB_OFFLINE as the reason
    monkeypatch.setattr(hub, "hub_offline_mode", lambda: True)
    with pytest.raises(TaskUnavailable, match="HF_HUB_OFFLINE is set"):
        load_hub_dataset("cais/mmlu", "all", "test")


# -----------------------------------------------------------------------------
# offline synthetic tasks, checked against answers computed here

def test_spellingbee_answers_are_correct():
    for split in ("train", "test"):
        task = SpellingBee(size=300, split=split)
        for conversation in task:
            word, letter = conversation["word"], conversation["letter"]
            question = conversation["messages"][0]["content"]
            assert word in question and re.search(rf"\b{letter}\b", question)
            truth = sum(1 for c in word if c == letter)
            parts = conversation["messages"][1]["content"]
            reply = "".join(p["text"] for p in parts)
            assert "-".join(list(word)) in reply
            assert extract_answer(reply) == str(truth)
            python = [p["text"] for p in parts if p["type"] == "python"]
            outputs = [p["text"] for p in parts if p["type"] == "python_output"]
            assert outputs == [str(truth)] and [use_calculator(e) for e in python] == outputs
            assert f"so I count {truth}." in reply
            assert task.evaluate(conversation, reply) == 1
            assert task.evaluate(conversation, f"#### {truth + 1}") == 0


def test_spellingbee_asks_about_absent_letters_too():
    counts = [sum(c == conv["letter"] for c in conv["word"]) for conv in SpellingBee(size=300)]
    assert 0 in counts and max(counts) >= 2


def test_simplespelling_answers_are_correct():
    task = SimpleSpelling(size=200, split="test")
    for conversation in task:
        word = conversation["word"]
        assert word in conversation["messages"][0]["content"]
        reply = conversation["messages"][1]["content"]
        assert reply.endswith("-".join(list(word)))
        assert task.evaluate(conversation, reply) == 1
        assert task.evaluate(conversation, reply + "-s") == 0                    # one letter too many
        assert task.evaluate(conversation, "-".join(list(word[:-1]))) == 0      # one letter short
        assert task.evaluate(conversation, f"x{reply[-1]}") == 0                 # nothing spelled out


def test_spelling_words_are_split_between_train_and_test():
    train_words, test_words = set(load_words("train")), set(load_words("test"))
    assert len(test_words) > 1000 and len(train_words) > 5 * len(test_words)
    assert not train_words & test_words
    for task_class in (SpellingBee, SimpleSpelling):
        seen_train = {c["word"] for c in task_class(size=2000, split="train")}
        seen_test = {c["word"] for c in task_class(size=500, split="test")}
        assert not seen_train & seen_test
        assert seen_test <= test_words


def solve_arithmetic(question):
    """The answer of an Arithmetic question, worked out here from its words."""
    patterns = [
        (r"has (\d+) \w+\. \w+ gets (\d+) more", lambda a, b: a + b),
        (r"had (\d+) \w+ and gave (\d+) of them away", lambda a, b: a - b),
        (r"A box holds (\d+) \w+\. How many \w+ are in (\d+) boxes", lambda a, b: a * b),
        (r"^(\d+) \w+ are shared equally among (\d+) friends", lambda a, b: a // b if a % b == 0 else None),
        (r"buys (\d+) notebooks at (\d+) dollars each and pays with a (\d+)-dollar bill", lambda n, p, paid: paid - n * p),
        (r"What is (\d+) \+ (\d+) \* (\d+)\?", lambda a, b, c: a + b * c),
        (r"What is (\d+) - (\d+) \* (\d+)\?", lambda a, b, c: a - b * c),
        (r"has (\d+) boxes with (\d+) \w+ in each box and gives (\d+) \w+ away", lambda n, e, g: n * e - g),
        (r"has (\d+) \w+ and \w+ has (\d+)\. They put them together and share them equally among (\d+) friends",
         lambda a, b, p: (a + b) // p if (a + b) % p == 0 else None),
    ]
    for pattern, solve in patterns:
        match = re.search(pattern, question)
        if match:
            return solve(*map(int, match.groups()))
    raise AssertionError(f"no solver for {question!r}")


@pytest.mark.parametrize("level", [1, 2])
def test_arithmetic_answers_are_correct_and_use_the_calculator(level):
    for split in ("train", "test"):
        task = Arithmetic(size=300, split=split, level=level)
        for conversation in task:
            question = conversation["messages"][0]["content"]
            truth = solve_arithmetic(question)
            assert truth is not None and truth >= -200 and abs(truth) < 1000
            assert all(int(n) <= 100 for n in re.findall(r"\d+", question))
            parts = conversation["messages"][1]["content"]
            reply = "".join(p["text"] for p in parts)
            assert extract_answer(reply) == str(truth)
            assert parts[-1]["text"].endswith(f"#### {truth}")
            for call, output in zip(parts, parts[1:]):
                if call["type"] == "python":
                    assert output["type"] == "python_output" and use_calculator(call["text"]) == output["text"]
            assert sum(p["type"] == "python" for p in parts) == (1 if level == 1 and "notebooks" not in question else 2)
            assert task.evaluate(conversation, f"... #### {truth}") == 1
            assert task.evaluate(conversation, f"... #### {truth + 1}") == 0
            assert task.reward(conversation, f"#### {truth}") == 1.0


@pytest.mark.parametrize("level", [1, 2])
def test_arithmetic_train_and_test_questions_are_disjoint_and_deterministic(level):
    train = [c["messages"][0]["content"] for c in Arithmetic(size=3000, split="train", level=level)]
    test = [c["messages"][0]["content"] for c in Arithmetic(size=300, split="test", level=level)]
    assert not set(train) & set(test)
    assert len(set(test)) > 250  # varied, not one question repeated
    assert Arithmetic(size=300, split="test", level=level)[123] == Arithmetic(size=300, split="test", level=level)[123]


def test_refusal_test_requests_are_unseen_and_the_check_wants_the_right_capability():
    train, test = Refusal(size=2000, split="train"), Refusal(size=200, split="test")
    train_requests = {c["messages"][0]["content"] for c in train}
    test_requests = [c["messages"][0]["content"] for c in test]
    assert not train_requests & set(test_requests) and all(request_split(r) == "test" for r in test_requests)
    assert len({c["capability"] for c in test}) >= 4  # several kinds of request are held out, not one
    assert Refusal(size=200, split="test")[57] == test[57]
    for conversation in list(test)[:50]:
        reply = conversation["messages"][-1]["content"]
        assert test.evaluate(conversation, reply) == 1 and test.evaluate(conversation, "  " + reply) == 1
        others = [c for c in test if c["capability"] != conversation["capability"]]
        assert test.evaluate(conversation, others[0]["messages"][-1]["content"]) == 0  # sorry, but for the wrong thing
        assert test.evaluate(conversation, "I'm nanochat, a small language model.") == 0


def test_identity_conversations_are_valid_varied_and_deterministic():
    task = Identity(size=300)
    conversations = list(task)
    assert all(conversation_problem(c["messages"]) is None for c in conversations)
    assert conversations == list(Identity(size=300))
    questions = {m["content"] for c in conversations for m in c["messages"] if m["role"] == "user"}
    assert len(questions) > 20
    name_answers = [c["messages"][-1]["content"] for c in conversations if c["messages"][-2]["content"] == "What is your name?"]
    assert name_answers and all("nanochat" in a for a in name_answers)


# -----------------------------------------------------------------------------
# HumanEval

def test_humaneval_has_the_164_bundled_problems():
    task = HumanEval()
    assert len(task) == 164
    assert task[0]["task_id"] == "HumanEval/0" and task[163]["task_id"] == "HumanEval/163"


@pytest.mark.parametrize("completion,expected", [
    ("```python\ndef f():\n    return 1\n```\nThat's it.", "def f():\n    return 1\n"),
    ("Here:\n```\nx = 2\n```", "x = 2\n"),
    ("```py\nx = 3\n", "x = 3\n"),              # the model stopped before closing the fence
    ("    return 4\n", "    return 4\n"),         # no fence: the reply is the code
])
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    task = HumanEval()
    for index in (0, 2, 12):
        conversation = task[index]
        reference = conversation["messages"][1]["content"]
        assert task.evaluate(conversation, reference) == 1
        signature = re.search(r"^def .*:$", conversation["messages"][0]["content"], re.MULTILINE).group(0)
        assert task.evaluate(conversation, f"```python\n{signature}\n    return None\n```") == 0
    # a reply with only the function body, as a plain completion model would write it
    body = task.problems[0]["canonical_solution"]
    assert task.evaluate(task[0], body) == 1


@pytest.mark.slow
def test_humaneval_all_164_canonical_solutions_pass_and_return_none_passes_none():
    task = HumanEval()
    assert len(task) == 164
    failed = [c["task_id"] for c in task if not task.evaluate(c, c["messages"][1]["content"])]
    assert failed == []
    # the body of the entry point, as a completion model writes it after the prompt
    passed = [c["task_id"] for c in task if task.evaluate(c, "    return None\n")]
    assert passed == []


# -----------------------------------------------------------------------------
# CustomJSON

def test_customjson_reads_both_line_formats():
    task = CustomJSON(os.path.join(FIXTURES, "custom", "conversations.jsonl"))
    assert len(task) == 3
    assert task[0]["messages"][0] == {"role": "user", "content": "Hi, who are you?"}
    assert task[1]["messages"][0]["role"] == "system"
    assert task[2]["messages"][1]["content"][1] == {"type": "python", "text": "6*7"}


GOOD_LINE = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])


@pytest.mark.parametrize("bad_line,message", [
    ('[{"role": "user", "content": "hi"', "not valid JSON"),
    (json.dumps([{"role": "assistant", "content": "hello"}]), "must start with 'user'"),
    (json.dumps([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), "'assistant' was expected"),
    (json.dumps([{"role": "user", "content": "hi"}]), "must end with an assistant message"),
    (json.dumps([{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]), "it must be a string"),
    (json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "code", "text": "x"}]}]), "part 0"),
    (json.dumps({"conversation": []}), "expected a list of messages"),
    (json.dumps([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]), "only the first message may be one"),
])
def test_customjson_reports_the_bad_line(tmp_path, bad_line, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(GOOD_LINE + "\n\n" + bad_line + "\n" + GOOD_LINE + "\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        CustomJSON(str(path))
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_customjson_file_problems_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        CustomJSON(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="no conversations"):
        CustomJSON(str(empty))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes((GOOD_LINE + "\n").encode() + '["caf\xe9"]\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.jsonl:2: not UTF-8"):
        CustomJSON(str(latin1))


# -----------------------------------------------------------------------------
# the registry

def test_get_task_builds_every_named_task():
    for name in TASK_NAMES:
        task = get_task(name, "test")
        assert len(task) > 0
        assert conversation_problem(task[0]["messages"]) is None
    assert get_task("SpellingBee", "train", size=7, stop=5).__len__() == 5
    with pytest.raises(UserError, match="unknown task"):
        get_task("Spelling", "train")
    with pytest.raises(UserError, match="only a test split"):
        get_task("HumanEval", "train")
    with pytest.raises(UserError, match="no split 'validation'"):
        get_task("GSM8K", "validation")


# -----------------------------------------------------------------------------
# the loss mask, for every task

@pytest.fixture(scope="module")
def tokenizer():
    """A tiny BPE trained on text like the tasks' own, so rendering exercises real merges."""
    texts = [json.dumps(c) for c in list(Arithmetic(size=50)) + list(Identity(size=50)) + list(SpellingBee(size=50))]
    return RustBPETokenizer.train_from_iterator(iter(texts * 4), 400)


def expected_render(tokenizer, conversation, ids):
    """(id, mask) pairs rebuilt piece by piece: each message and part encoded on its own.

    A leading system message is folded into the first user message by the tokenizer; we do not
    rebuild that text here, we take the rendered user span and check it holds both messages."""
    S, encode = tokenizer.special_tokens, tokenizer.encode
    expected = [(S["<|bos|>"], 0)]
    messages = conversation["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    for i, message in enumerate(messages[1:] if system is not None else messages):
        if message["role"] == "user":
            if system is not None and i == 0:
                end = ids.index(S["<|user_end|>"])
                user_ids = ids[2:end]
                assert system in tokenizer.decode(user_ids) and message["content"] in tokenizer.decode(user_ids)
            else:
                user_ids = encode(message["content"])
            expected += [(t, 0) for t in [S["<|user_start|>"]] + user_ids + [S["<|user_end|>"]]]
            continue
        expected.append((S["<|assistant_start|>"], 0))
        content = message["content"]
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if part["type"] == "text":
                expected += [(t, 1) for t in encode(part["text"])]
            elif part["type"] == "python":
                expected += [(t, 1) for t in [S["<|python_start|>"]] + encode(part["text"]) + [S["<|python_end|>"]]]
            else:
                expected += [(t, 0) for t in [S["<|output_start|>"]] + encode(part["text"]) + [S["<|output_end|>"]]]
        expected.append((S["<|assistant_end|>"], 1))
    return expected


MASK_TASKS = {
    "SmolTalk": lambda: SmolTalk("train"),
    "ARC-Easy": lambda: ARC("ARC-Easy", "test"),
    "ARC-Challenge": lambda: ARC("ARC-Challenge", "test"),
    "MMLU": lambda: MMLU("all", "test"),
    "MMLU-auxiliary": lambda: MMLU("auxiliary_train", "train"),
    "GSM8K": lambda: GSM8K("main", "test"),
    "GSM8K-socratic": lambda: GSM8K("socratic", "train"),
    "HumanEval": lambda: HumanEval(stop=4),
    "SpellingBee": lambda: SpellingBee(size=20),
    "SimpleSpelling": lambda: SimpleSpelling(size=20),
    "Arithmetic": lambda: Arithmetic(size=20),
    "TwoStepArithmetic": lambda: Arithmetic(size=20, level=2),
    "Identity": lambda: Identity(size=20),
    "Refusal": lambda: Refusal(size=20),
    "CustomJSON": lambda: CustomJSON(os.path.join(FIXTURES, "custom", "conversations.jsonl")),
}


@pytest.mark.parametrize("name", MASK_TASKS)
def test_mask_covers_exactly_the_assistant_tokens(tokenizer, name):
    task = MASK_TASKS[name]()
    S = tokenizer.special_tokens
    for conversation in task:
        ids, mask = tokenizer.render_conversation(conversation, max_tokens=None)
        assert list(zip(ids, mask)) == expected_render(tokenizer, conversation, ids)
        # and in words: what is trained on decodes to the assistant's text and tool calls, nothing else
        trained = tokenizer.decode([t for t, m in zip(ids, mask) if m and t not in S.values()])
        assistant = "".join(
            m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"] if p["type"] != "python_output")
            for m in conversation["messages"] if m["role"] == "assistant")
        assert trained == assistant
