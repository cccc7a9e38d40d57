"""Chat evaluation: letter-logit multiple choice, generative checking, ChatCORE centering, the
chat_eval script on offline tasks, and the split of problems across DDP ranks."""

import os
import tempfile

import pytest
import torch

from nanochat.common import UserError, compute_cleanup
from nanochat.task_eval import (TaskResult, chatcore, centered_accuracy, run_categorical_eval,
                                run_generative_eval)
from nanochat_tasks.common import Task, mc_conversation

LETTERS = ["A", "B", "C", "D"]


class MCTask(Task):
    """A tiny offline multiple-choice task; answer i cycles through the letters in a fixed pattern."""

    def __init__(self, answers, **kw):
        super().__init__(**kw)
        self.answers = answers

    @property
    def eval_type(self):
        return "categorical"

    def num_examples(self):
        return len(self.answers)

    def get_example(self, index):
        question = f"Question {index}: which one? " + "really " * (index % 5)  # unequal lengths: padding
        return mc_conversation(question, LETTERS, ["red", "green", "blue", "black"], self.answers[index])

    def evaluate(self, conversation, assistant_response):
        return int(assistant_response == conversation["messages"][-1]["content"])


class ParityTask(Task):
    """Generative task whose verdict ignores the reply: problem i is right when i is even."""

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return 7

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": f"problem {index}"},
                             {"role": "assistant", "content": "ok"}], "id": index}

    def evaluate(self, conversation, assistant_response):
        assert isinstance(assistant_response, str)
        return int(conversation["id"] % 2 == 0)


class LookupModel:
    """Stands in for a GPT: at each position it strongly prefers the letter a lookup table gives for
    the ids up to there (the right answer only when those ids are a whole prompt), else 'D'."""

    def __init__(self, tokenizer, table, vocab_size):
        self.table, self.vocab_size = table, vocab_size
        self.letter_ids = {l: tokenizer.encode(l)[0] for l in LETTERS}

    def get_device(self):
        return torch.device("cpu")

    def __call__(self, ids):
        B, T = ids.shape
        logits = torch.zeros(B, T, self.vocab_size)
        for b in range(B):
            row = ids[b].tolist()
            for t in range(T):
                letter = self.table.get(tuple(row[:t + 1]), "D")
                logits[b, t, self.letter_ids[letter]] = 10.0
        return logits


@pytest.fixture
def tokenizer(tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    return get_tokenizer()


def test_chatcore_is_mean_centered_accuracy_by_hand():
    results = [TaskResult("ARC-Easy", "categorical", 50, 100, 0.25),   # (0.5 - 0.25) / 0.75 = 1/3
               TaskResult("GSM8K", "generative", 1, 5, 0.0),           # 0.2
               TaskResult("MMLU", "categorical", 10, 100, 0.25),       # (0.1 - 0.25) / 0.75 = -0.2
               TaskResult("HumanEval", "generative", 0, 0, 0.0)]       # did not run: not covered
    score, covered = chatcore(results)
    assert covered == ["ARC-Easy", "GSM8K", "MMLU"]
    assert score == pytest.approx((1 / 3 + 0.2 - 0.2) / 3)
    assert centered_accuracy(0.25, 0.25) == 0.0 and centered_accuracy(1.0, 0.25) == 1.0
    assert chatcore([]) == (None, [])


def test_categorical_eval_reads_the_letter_logits_at_the_end_of_each_prompt(tokenizer):
    answers = ["A", "C", "B", "D", "C", "A", "B", "B", "D", "A", "C"]
    task = MCTask(answers)
    table = {tuple(tokenizer.render_for_completion(task[i])): a for i, a in enumerate(answers)}
    model = LookupModel(tokenizer, table, tokenizer.get_vocab_size())
    result = run_categorical_eval(task, tokenizer, model, batch_size=4)
    assert (result.correct, result.total) == (len(answers), len(answers))
    assert [it["response"] for it in result.items] == answers
    # with the table emptied the model always says 'D': accuracy is the share of D answers
    result = run_categorical_eval(task, tokenizer, LookupModel(tokenizer, {}, tokenizer.get_vocab_size()),
                                  batch_size=3, max_problems=9)
    assert result.total == 9 and result.correct == answers[:9].count("D") == 2
    assert result.centered == pytest.approx((2 / 9 - 0.25) / 0.75)


def test_generative_eval_counts_the_task_verdicts(tiny_base_dir):
    from nanochat.checkpoint_manager import load_model
    model, tokenizer, _ = load_model("base", "cpu", verbose=False)
    result = run_generative_eval(ParityTask(), tokenizer, model, max_new_tokens=3, max_problems=5)
    assert result.total == 5
    assert result.correct == 3  # problems 0, 2, 4
    assert [it["correct"] for it in result.items] == [1, 0, 1, 0, 1]
    assert result.accuracy == pytest.approx(0.6) and result.baseline == 0.0


def test_chat_eval_on_offline_tasks_matches_a_recount(tiny_base_dir_copy, capsys):
    from scripts import chat_eval
    from nanochat_tasks import get_task
    results, score = chat_eval.main(["-i", "base", "-a", "SimpleSpelling|Arithmetic|SpellingBee", "-x", "3",
                                     "-m", "6", "--device-type", "cpu"])
    assert [r.name for r in results] == ["SimpleSpelling", "Arithmetic", "SpellingBee"]
    for r in results:
        task = get_task(r.name, "test")
        assert r.total == 3 and [it["index"] for it in r.items] == [0, 1, 2]
        recount = sum(int(task.evaluate(task[it["index"]], it["response"])) for it in r.items)
        assert r.correct == recount and r.accuracy == recount / 3
    assert score == pytest.approx(sum(r.accuracy for r in results) / 3)
    out = capsys.readouterr().out
    assert "ChatCORE (base)" in out and "SimpleSpelling, Arithmetic, SpellingBee" in out


def test_chat_eval_rejects_an_unknown_task(tiny_base_dir):
    from scripts import chat_eval
    with pytest.raises(UserError, match="unknown task 'Spelling'"):
        chat_eval.main(["-i", "base", "-a", "Spelling"])


def _ddp_worker(rank, world_size, init_file, base_dir, out_dir):
    import torch.distributed as dist
    os.environ["NANOCHAT_BASE_DIR"] = base_dir
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    from nanochat.checkpoint_manager import load_model
    model, tokenizer, _ = load_model("base", "cpu", verbose=False)
    result = run_generative_eval(ParityTask(), tokenizer, model, max_new_tokens=2)
    torch.save({"correct": result.correct, "total": result.total,
                "indices": [it["index"] for it in result.items]}, os.path.join(out_dir, f"rank{rank}.pt"))
    compute_cleanup()


@pytest.mark.slow
def test_problems_are_split_across_ranks_and_counts_all_reduced(tiny_run, tmp_path):
    import torch.multiprocessing as mp
    init_file = os.path.join(tempfile.mkdtemp(dir=tmp_path), "init")
    mp.spawn(_ddp_worker, args=(2, init_file, str(tiny_run), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["total"] == 7 and got["correct"] == 4  # 0, 2, 4, 6 are even
        assert got["indices"] == list(range(7))           # every rank sees every item after the gather


def test_long_evaluations_print_progress_with_an_eta(tokenizer, capsys):
    answers = ["A", "B", "C", "D", "A", "B", "C"]
    model = LookupModel(tokenizer, {}, tokenizer.get_vocab_size())
    run_categorical_eval(MCTask(answers), tokenizer, model, batch_size=2, progress_every=3)
    lines = capsys.readouterr().out.splitlines()
    # batches end at 2, 4, 6, 7: a line where a batch passes a multiple of 3, and at the end
    assert [line.split(":")[1].split()[0] for line in lines] == ["4/7", "6/7", "7/7"]
    assert all(" correct | " in line and " elapsed, eta " in line for line in lines)
    assert lines[-1].endswith("eta 0s")
