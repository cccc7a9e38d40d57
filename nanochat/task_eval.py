"""
Evaluating a chat model on tasks: accuracy per task, and ChatCORE over several.

Pipeline position: scripts/chat_eval.py, the demo and RL (periodic evals) call these loops on a
model that went through midtraining/SFT; the tasks (nanochat_tasks/) supply conversations and the checks.

Two kinds of evaluation, chosen by the task's eval_type:
- categorical (multiple choice, ARC, MMLU): no sampling at all. The prompt ends with
  <|assistant_start|>; we read the model's logits for the next token, keep only the answer
  letters (A, B, C, D, ...) and take the largest. This measures what the model knows even when
  it is too small to write a well-formed reply.
- generative (GSM8K, HumanEval, spelling, arithmetic): the Engine writes a reply (with tool use),
  and the task checks it (task.evaluate; HumanEval runs the code in a sandbox). With several
  samples a problem counts as solved when any sample is right (pass@k).

ChatCORE: the mean over tasks of *centered* accuracy, (acc - baseline) / (1 - baseline), where the
baseline is what guessing scores (0.25 on 4-choice questions, 0 on generative tasks). Centering
puts every task on the same scale: 0 = chance, 1 = perfect.

Under torchrun the problems are split across ranks (rank, rank + world_size, ...) and the counts
(and per-item results) are gathered, so every rank returns the same figures.
"""

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nanochat.common import print0, format_duration

# what guessing scores; ChatCORE centers each task's accuracy on it
CATEGORICAL_BASELINE = 0.25  # 4-choice multiple choice (ARC, MMLU)
GENERATIVE_BASELINE = 0.0


def task_baseline(task):
    return CATEGORICAL_BASELINE if task.eval_type == "categorical" else GENERATIVE_BASELINE


@dataclass
class TaskResult:
    name: str
    eval_type: str
    correct: int
    total: int
    baseline: float
    items: list = field(default_factory=list)  # [{"index", "correct", "response", ...}], sorted by index

    @property
    def accuracy(self):
        return self.correct / self.total if self.total else 0.0

    @property
    def sample_accuracy(self):
        """Share of all sampled replies that were right (generative tasks; = accuracy with one sample).
        With reward 1 for a right answer this is the mean reward of the sampled replies."""
        samples = sum(it.get("samples", 1) for it in self.items)
        right = sum(it.get("samples_correct", it["correct"]) for it in self.items)
        return right / samples if samples else 0.0

    @property
    def centered(self):
        return centered_accuracy(self.accuracy, self.baseline)


def centered_accuracy(accuracy, baseline):
    """0 at chance, 1 at perfect; negative when worse than guessing."""
    return (accuracy - baseline) / (1.0 - baseline)


def chatcore(results):
    """(ChatCORE, names of the tasks it covers): the mean centered accuracy of the tasks that ran."""
    ran = [r for r in results if r.total > 0]
    if not ran:
        return None, []
    return sum(r.centered for r in ran) / len(ran), [r.name for r in ran]


# -----------------------------------------------------------------------------
# distributed helpers

def _dist_on():
    return dist.is_available() and dist.is_initialized()


def _rank_world():
    return (dist.get_rank(), dist.get_world_size()) if _dist_on() else (0, 1)


def _gather(correct, total, items, device):
    if not _dist_on():
        return correct, total, items
    counts = torch.tensor([correct, total], dtype=torch.long, device=device)
    dist.all_reduce(counts)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    merged = sorted((it for part in gathered for it in part), key=lambda it: it["index"])
    return int(counts[0].item()), int(counts[1].item()), merged


def _problem_indices(task, max_problems):
    n = len(task) if max_problems is None or max_problems < 0 else min(len(task), max_problems)
    rank, world = _rank_world()
    return range(rank, n, world)


def _print_progress(name, done, total, correct, started):
    """The line of a long evaluation: problems done on this rank, right so far, time and ETA (from the pace so far)."""
    elapsed = time.time() - started
    eta = elapsed / done * (total - done)
    print0(f"  {name}: {done}/{total} on this rank, {correct} correct | {format_duration(elapsed)} elapsed, "
           f"eta {format_duration(eta)}")


# -----------------------------------------------------------------------------
# categorical

def letter_token_ids(tokenizer, letters):
    """One token id per answer letter; the MC prompts are built so that each letter is one token."""
    ids = []
    for letter in letters:
        encoded = tokenizer.encode(letter)
        assert len(encoded) == 1, f"answer letter {letter!r} is {len(encoded)} tokens in this tokenizer"
        ids.append(encoded[0])
    return ids


@torch.no_grad()
def run_categorical_eval(task, tokenizer, model, batch_size=8, max_problems=None, name=None, autocast=None,
                         progress_every=0):
    """Accuracy of picking the right answer letter by the logits of the letter tokens only."""
    import contextlib
    autocast = autocast or contextlib.nullcontext
    device = model.get_device()
    pad = tokenizer.get_bos_token_id()
    indices = list(_problem_indices(task, max_problems))
    correct, items, started = 0, [], time.time()
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        conversations = [task[i] for i in chunk]
        prompts = [tokenizer.render_for_completion(c) for c in conversations]
        width = max(len(p) for p in prompts)
        # right-padding: causal attention means padding after a prompt cannot change its logits
        ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts], dtype=torch.long, device=device)
        with autocast():
            logits = model(ids)  # (B, width, V)
        for row, (index, conv, prompt) in enumerate(zip(chunk, conversations, prompts)):
            letters = conv["letters"]
            letter_ids = letter_token_ids(tokenizer, letters)
            scores = logits[row, len(prompt) - 1, letter_ids]  # (num letters,)
            predicted = letters[int(scores.argmax().item())]
            ok = int(task.evaluate(conv, predicted))
            correct += ok
            items.append({"index": index, "correct": ok, "response": predicted})
        n = start + len(chunk)
        if progress_every and (n // progress_every > start // progress_every or n == len(indices)):
            _print_progress(name or type(task).__name__, n, len(indices), correct, started)
    correct, total, items = _gather(correct, len(indices), items, device)
    return TaskResult(name or type(task).__name__, "categorical", correct, total, task_baseline(task), items)


# -----------------------------------------------------------------------------
# generative

def run_generative_eval(task, tokenizer, model, num_samples=1, max_new_tokens=256, temperature=0.0, top_k=None,
                        max_problems=None, name=None, seed=42, progress_every=0, autocast=None, batch_size=16):
    """Accuracy of sampled replies as judged by task.evaluate; a problem counts when any sample is right.

    batch_size problems decode together (num_samples rows each), which is several times faster
    than one at a time on a CPU. Greedy replies are those of one-at-a-time decoding (up to float
    rounding); sampled ones depend on it, because a batch shares one random stream (seeded from
    seed and the batch's first index)."""
    import contextlib
    from nanochat.engine import Engine
    autocast = autocast or contextlib.nullcontext
    engine = Engine(model, tokenizer)
    device = model.get_device()
    indices = list(_problem_indices(task, max_problems))
    correct, items, started = 0, [], time.time()
    batch_size = max(1, batch_size)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        conversations = [task[i] for i in chunk]
        prompts = [tokenizer.render_for_completion(c) for c in conversations]
        with autocast():
            rows, _ = engine.generate_batch(prompts, num_samples=num_samples, max_tokens=max_new_tokens,
                                            temperature=temperature, top_k=top_k, seed=seed + chunk[0])
        for j, (index, conv, prompt) in enumerate(zip(chunk, conversations, prompts)):
            responses = [tokenizer.decode(row[len(prompt):]) for row in rows[j * num_samples:(j + 1) * num_samples]]
            oks = [int(task.evaluate(conv, r)) for r in responses]
            ok = int(any(oks))
            correct += ok
            items.append({"index": index, "correct": ok, "response": responses[0], "samples": len(oks),
                          "samples_correct": sum(oks)})
            n = start + j + 1
            if progress_every and (n % progress_every == 0 or n == len(indices)):
                _print_progress(name or type(task).__name__, n, len(indices), correct, started)
    correct, total, items = _gather(correct, len(indices), items, device)
    return TaskResult(name or type(task).__name__, "generative", correct, total, task_baseline(task), items)


def run_task_eval(task, tokenizer, model, name=None, batch_size=8, num_samples=1, max_new_tokens=256,
                  temperature=0.0, top_k=None, max_problems=None, autocast=None, progress_every=0):
    """Evaluate one task the way its eval_type says; returns a TaskResult."""
    if task.eval_type == "categorical":
        return run_categorical_eval(task, tokenizer, model, batch_size, max_problems, name, autocast, progress_every)
    return run_generative_eval(task, tokenizer, model, num_samples, max_new_tokens, temperature, top_k,
                               max_problems, name, progress_every=progress_every, autocast=autocast,
                               batch_size=batch_size)


# the tasks chat_eval runs by default, in this order
EVAL_TASKS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "SimpleSpelling",
              "Arithmetic", "TwoStepArithmetic", "Refusal")


def format_results_table(results):
    """A plain text table: task, kind, correct/total, accuracy, centered accuracy."""
    w = max([16] + [len(r.name) for r in results])
    lines = [f"{'task':<{w}} {'kind':<12} {'correct':>12} {'accuracy':>9} {'centered':>9}"]
    for r in results:
        lines.append(f"{r.name:<{w}} {r.eval_type:<12} {f'{r.correct}/{r.total}':>12} "
                     f"{100 * r.accuracy:8.2f}% {r.centered:9.4f}")
    return "\n".join(lines)
