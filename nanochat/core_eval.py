"""
The CORE metric (from the DCLM paper): how well a base model does on 22 in-context tasks, as one
number. Used by scripts/base_eval.py and, every --core-metric-every steps, by base_train.

The tasks come from the eval bundle (eval_bundle.zip, downloaded once into
$NANOCHAT_BASE_DIR/eval_bundle/):

    core.yaml            icl_tasks: label, dataset_uri, num_fewshot, icl_task_type, continuation_delimiter
    eval_data/<uri>      one JSON item per line
    eval_meta_data.csv   "Eval Task" -> "Random baseline" (percent accuracy of guessing)

Three kinds of task, all scored without sampling, by reading the model's losses:
- multiple_choice  {"query", "choices", "gold"}: the prompt is the query + delimiter + each
  choice; the model picks the choice whose tokens have the lowest *mean* loss.
- schema           {"context_options", "continuation", "gold"}: each context option + delimiter
  + the shared continuation; the model picks the option under which the continuation has the
  lowest mean loss.
- language_modeling {"context", "continuation"}: right when every continuation token is the
  model's argmax prediction (greedy decoding would produce it exactly).

Few-shot examples are other items of the same task, drawn with a seed that depends only on the
item's index, written in full (with their right answer) before the item, separated by blank lines.

Accuracy is centered against guessing, (acc - baseline) / (1 - baseline), so 0 means chance and
1 means perfect on every task; CORE is the mean of the centered accuracies.
"""

import os
import csv
import json
import time
import random
import shutil
import zipfile

import torch
import torch.nn.functional as F

from nanochat.common import UserError, get_base_dir, print0, format_duration

DEFAULT_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
BUNDLE_URL_ENV = "NANOCHAT_EVAL_BUNDLE_URL"
BUNDLE_DIR_NAME = "eval_bundle"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
FEWSHOT_SEED = 1234   # few-shot examples of item i come from random.Random(FEWSHOT_SEED + i)
SUBSET_SEED = 1337    # --max-per-task takes the first N items after a shuffle with this seed
DEFAULT_EXAMPLE_DELIMITER = "\n\n"


# -----------------------------------------------------------------------------
# the bundle: find, download, read

def default_bundle_dir(base_dir=None):
    return os.path.join(base_dir or get_base_dir(), BUNDLE_DIR_NAME)


def is_bundle(path):
    return os.path.isfile(os.path.join(path, "core.yaml"))


def resolve_bundle_url(url=None):
    return url or os.environ.get(BUNDLE_URL_ENV) or DEFAULT_BUNDLE_URL


def _check_zip(path):
    if not zipfile.is_zipfile(path):
        raise ValueError("not a zip archive")
    with zipfile.ZipFile(path) as z:
        if not any(name.endswith("core.yaml") for name in z.namelist()):
            raise ValueError("the archive has no core.yaml")


def download_bundle(url=None, base_dir=None, max_attempts=3, timeout=30, progress=True):
    """Download eval_bundle.zip and unpack it to <base dir>/eval_bundle (atomically: the folder
    appears whole or not at all). Returns the folder; raises UserError when it cannot."""
    from nanochat.dataset import download_file
    url = resolve_bundle_url(url)
    target = default_bundle_dir(base_dir)
    zip_path = target + ".zip"
    print0(f"downloading the CORE eval bundle from {url}")
    path, reason = download_file(url, zip_path, max_attempts=max_attempts, timeout=timeout,
                                 progress=progress, verify=_check_zip)
    if path is None:
        raise UserError(f"could not download the CORE eval bundle from {url} ({reason}); check the internet "
                        f"connection, set {BUNDLE_URL_ENV} to a mirror, or pass --bundle-dir with an unpacked bundle")
    staging = target + ".unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(staging)
    # the archive holds one top folder (eval_bundle/) around core.yaml; find wherever core.yaml is
    root = next((dirpath for dirpath, _, files in os.walk(staging) if "core.yaml" in files), None)
    if root is None:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"{zip_path} has no core.yaml: it is not the CORE eval bundle; delete it and retry")
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(root, target)
    shutil.rmtree(staging, ignore_errors=True)
    os.remove(zip_path)
    return target


def get_bundle(bundle_dir=None, url=None, download=True, base_dir=None):
    """The bundle folder: `bundle_dir` when given (it must hold core.yaml), else the cached
    <base dir>/eval_bundle, downloading it first when `download` (else None when absent)."""
    if bundle_dir:
        if not is_bundle(bundle_dir):
            raise UserError(f"--bundle-dir {bundle_dir} has no core.yaml: point it at an unpacked eval bundle "
                            f"(the folder with core.yaml, eval_data/ and eval_meta_data.csv)")
        return bundle_dir
    cached = default_bundle_dir(base_dir)
    if is_bundle(cached):
        return cached
    return download_bundle(url, base_dir) if download else None


def load_random_baselines(bundle_dir):
    """{task label: random baseline in percent} from eval_meta_data.csv."""
    path = os.path.join(bundle_dir, "eval_meta_data.csv")
    if not os.path.isfile(path):
        raise UserError(f"the eval bundle {bundle_dir} has no eval_meta_data.csv (the random baselines)")
    baselines = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            try:
                baselines[row["Eval Task"].strip()] = float(row["Random baseline"])
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # a row without a usable baseline; a task that needs it fails below
    return baselines


def load_core_tasks(bundle_dir):
    """The task list of core.yaml, checked: a list of dicts with label, icl_task_type, dataset_path,
    num_fewshot (int), continuation_delimiter, example_delimiter and random_baseline (0-100)."""
    import yaml
    path = os.path.join(bundle_dir, "core.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path} ({e.__class__.__name__}): is the eval bundle complete?")
    if not isinstance(config, dict) or not isinstance(config.get("icl_tasks"), list):
        raise UserError(f"{path} has no 'icl_tasks' list: it is not the CORE task file")
    baselines = load_random_baselines(bundle_dir)
    tasks = []
    for entry in config["icl_tasks"]:
        label = entry.get("label")
        kind = entry.get("icl_task_type")
        if kind not in TASK_TYPES:
            raise UserError(f"task {label!r} in {path} has icl_task_type {kind!r}; supported: {', '.join(TASK_TYPES)}")
        shots = entry.get("num_fewshot", [0])
        shots = shots[0] if isinstance(shots, list) else shots
        data_path = os.path.join(bundle_dir, "eval_data", entry["dataset_uri"])
        if not os.path.isfile(data_path):
            raise UserError(f"task {label!r}: data file {data_path} is missing; re-download the eval bundle")
        if label not in baselines:
            raise UserError(f"task {label!r} has no 'Random baseline' in {bundle_dir}/eval_meta_data.csv")
        tasks.append({
            "label": label, "icl_task_type": kind, "dataset_path": data_path, "num_fewshot": int(shots),
            "continuation_delimiter": entry.get("continuation_delimiter", " "),
            "example_delimiter": entry.get("example_delimiter", DEFAULT_EXAMPLE_DELIMITER),
            "random_baseline": baselines[label],
        })
    return tasks


def item_problem(item, kind):
    """What is wrong with one data item of a task of this kind, or None when it can be scored."""
    if not isinstance(item, dict):
        return "not a JSON object"

    def is_str_list(x, min_len):
        return isinstance(x, list) and len(x) >= min_len and all(isinstance(s, str) for s in x)

    def good_gold(n):
        gold = item.get("gold")
        return isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < n

    if kind == "multiple_choice":
        if not isinstance(item.get("query"), str) or not is_str_list(item.get("choices"), 2):
            return "needs a string 'query' and a list of at least 2 string 'choices'"
        if not good_gold(len(item["choices"])):
            return "'gold' must be the index of the right choice"
    elif kind == "schema":
        if not is_str_list(item.get("context_options"), 2) or not isinstance(item.get("continuation"), str):
            return "needs a list of at least 2 string 'context_options' and a string 'continuation'"
        if not good_gold(len(item["context_options"])):
            return "'gold' must be the index of the right context option"
    elif kind == "language_modeling":
        if not isinstance(item.get("context"), str) or not isinstance(item.get("continuation"), str):
            return "needs a string 'context' and a string 'continuation'"
        if not item["continuation"].strip():
            return "the continuation is empty"
    return None


def load_task_items(path, kind):
    """(valid items, number of skipped lines) of one task's JSONL file. Malformed lines (bad JSON,
    missing fields, gold out of range) are skipped and counted, not fatal."""
    items, skipped = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if item_problem(item, kind) is None:
                items.append(item)
            else:
                skipped += 1
    return items, skipped


def count_task_items(path):
    """The lines of a task's JSONL file, without parsing them: its size for the progress line's ETA."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


# -----------------------------------------------------------------------------
# prompts

def sample_fewshot(items, index, num_fewshot):
    """num_fewshot other items for item `index`, the same every time (seeded by the index)."""
    if num_fewshot <= 0:
        return []
    others = [i for i in range(len(items)) if i != index]
    picks = random.Random(FEWSHOT_SEED + index).sample(others, min(num_fewshot, len(others)))
    return [items[i] for i in picks]


def render_prompts(item, kind, fewshot=(), continuation_delimiter=" ", example_delimiter="\n\n"):
    """The texts the model reads for one item.

    multiple_choice: one prompt per choice; schema: one prompt per context option;
    language_modeling: [prompt without the continuation, prompt with it]."""
    d = continuation_delimiter
    if kind == "multiple_choice":
        shots = "".join(ex["query"] + d + ex["choices"][ex["gold"]] + example_delimiter for ex in fewshot)
        return [shots + item["query"] + d + choice for choice in item["choices"]]
    if kind == "schema":
        shots = "".join(ex["context_options"][ex["gold"]] + d + ex["continuation"] + example_delimiter
                        for ex in fewshot)
        return [shots + context + d + item["continuation"] for context in item["context_options"]]
    if kind == "language_modeling":
        shots = "".join(ex["context"].strip() + d + ex["continuation"] + example_delimiter for ex in fewshot)
        with_continuation = shots + item["context"].strip() + d + item["continuation"]
        # strip the trailing delimiter: the continuation's first token then carries its leading
        # space (" Paris"), as in ordinary text, instead of a lone " " token followed by "Paris"
        without = (shots + item["context"].strip() + d).strip()
        return [without, with_continuation]
    raise ValueError(f"unknown task type {kind!r}")


def _common_prefix_len(seqs):
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


def continuation_spans(token_lists, kind):
    """[(start, end)] per sequence: the token positions whose loss decides the item.

    multiple_choice: after the longest prefix all choices share; schema: the longest suffix all
    options share; language_modeling: what the full prompt adds to the prompt without the answer."""
    if kind == "multiple_choice":
        start = min(_common_prefix_len(token_lists), min(len(t) for t in token_lists) - 1)
        return [(start, len(t)) for t in token_lists]
    if kind == "schema":
        suffix = _common_prefix_len([t[::-1] for t in token_lists])
        suffix = min(suffix, min(len(t) for t in token_lists) - 1)
        return [(len(t) - suffix, len(t)) for t in token_lists]
    if kind == "language_modeling":
        without, full = token_lists
        start = min(_common_prefix_len([without, full]), len(full) - 1)
        return [(start, len(full))]
    raise ValueError(f"unknown task type {kind!r}")


def crop_left(tokens, start, end, max_len):
    """Keep the last max_len tokens of a too-long prompt (the few-shot examples go first)."""
    if len(tokens) <= max_len:
        return tokens, start, end
    cut = len(tokens) - max_len
    return tokens[cut:], max(1, start - cut), end - cut


# -----------------------------------------------------------------------------
# scoring

def _device_of(model):
    if hasattr(model, "get_device"):
        return model.get_device()
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def score_sequences(model, token_lists, spans, pad_id=0):
    """Run a batch of sequences; returns (mean loss over each span, whether every span token was
    the argmax prediction). Position t of the logits predicts token t+1."""
    device = _device_of(model)
    T = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), T), pad_id, dtype=torch.long, device=device)
    for i, t in enumerate(token_lists):
        ids[i, :len(t)] = torch.tensor(t, dtype=torch.long, device=device)
    logits = model(ids).float()  # (B, T, V)
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                             reduction="none").view(len(token_lists), T - 1)  # (B, T-1)
    predictions = logits[:, :-1].argmax(-1)  # (B, T-1)
    mean_losses, exact = [], []
    for i, (start, end) in enumerate(spans):
        mean_losses.append(losses[i, start - 1:end - 1].mean().item())
        exact.append(bool((predictions[i, start - 1:end - 1] == ids[i, start:end]).all().item()))
    return mean_losses, exact


def evaluate_item(model, tokenizer, item, kind, fewshot=(), continuation_delimiter=" ",
                  example_delimiter="\n\n", max_seq_len=None):
    """1 if the model gets this item right, else 0."""
    prompts = render_prompts(item, kind, fewshot, continuation_delimiter, example_delimiter)
    bos = tokenizer.get_bos_token_id()
    token_lists = [tokenizer.encode(p, prepend=bos) for p in prompts]
    spans = continuation_spans(token_lists, kind)
    if kind == "language_modeling":
        token_lists = token_lists[1:]  # only the full prompt is run; its span is what it adds
    if max_seq_len is not None:
        cropped = [crop_left(t, s, e, max_seq_len) for t, (s, e) in zip(token_lists, spans)]
        token_lists = [c[0] for c in cropped]
        spans = [(c[1], c[2]) for c in cropped]
    mean_losses, exact = score_sequences(model, token_lists, spans, pad_id=bos)
    if kind == "language_modeling":
        return int(exact[0])
    best = min(range(len(mean_losses)), key=lambda i: mean_losses[i])
    gold = item["gold"]
    return int(best == gold)


def centered_accuracy(accuracy, random_baseline):
    """random_baseline in percent, as eval_meta_data.csv writes it: 0 = chance level, 1 = perfect."""
    rb = 0.01 * random_baseline
    return (accuracy - rb) / (1.0 - rb)


def evaluate_task(model, tokenizer, task, max_per_task=-1, max_seq_len=None, rank=0, world_size=1, progress=None):
    """Accuracy on one task. Items are shuffled with a fixed seed, cut to max_per_task (-1: all)
    and split across ranks (item i on rank i % world_size); counts are summed over ranks.
    progress: called after each item (evaluate_core's progress line)."""
    items, skipped = load_task_items(task["dataset_path"], task["icl_task_type"])
    order = list(range(len(items)))
    random.Random(SUBSET_SEED).shuffle(order)
    if max_per_task > 0:
        order = order[:max_per_task]
    device = _device_of(model)
    counts = torch.zeros(2, dtype=torch.long, device=device)  # [correct, evaluated]
    for index in order[rank::world_size]:
        fewshot = sample_fewshot(items, index, task["num_fewshot"])
        counts[0] += evaluate_item(model, tokenizer, items[index], task["icl_task_type"], fewshot,
                                   task["continuation_delimiter"], task["example_delimiter"], max_seq_len)
        counts[1] += 1
        if progress is not None:
            progress()
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    correct, total = counts.tolist()
    accuracy = correct / total if total else 0.0
    return {"label": task["label"], "type": task["icl_task_type"], "num_fewshot": task["num_fewshot"],
            "correct": correct, "evaluated": total, "skipped": skipped, "accuracy": accuracy,
            "random_baseline": task["random_baseline"],
            "centered": centered_accuracy(accuracy, task["random_baseline"])}


def evaluate_core(model, tokenizer, bundle_dir, max_per_task=-1, rank=0, world_size=1, tasks=None,
                  on_task=None, progress_seconds=30):
    """Evaluate every task of the bundle. Returns {"core": mean centered accuracy, "tasks": [results]}.

    tasks: labels to run (default all); on_task(result) is called after each task (for printing).
    A long evaluation prints a progress line with an ETA at most every progress_seconds (0: never)."""
    all_tasks = load_core_tasks(bundle_dir)
    if tasks:
        unknown = set(tasks) - {t["label"] for t in all_tasks}
        if unknown:
            raise UserError(f"unknown CORE task(s) {', '.join(sorted(unknown))}; the bundle has "
                            f"{', '.join(t['label'] for t in all_tasks)}")
        all_tasks = [t for t in all_tasks if t["label"] in tasks]
    max_seq_len = getattr(getattr(model, "config", None), "sequence_len", None)
    # the ETA counts items: this rank's share of every task (after max_per_task), the pace so far
    sizes = [count_task_items(t["dataset_path"]) for t in all_tasks]
    total = sum(len(range(rank, n if max_per_task <= 0 else min(n, max_per_task), world_size)) for n in sizes)
    done, started, shown = 0, time.time(), time.time()

    def tick(number, label):
        nonlocal done, shown
        done += 1
        now = time.time()
        if progress_seconds > 0 and now - shown >= progress_seconds:
            shown = now
            eta = (now - started) / done * max(total - done, 0)
            print0(f"  CORE: {done:,}/{total:,} items on this rank (task {number}/{len(all_tasks)}, {label}) | "
                   f"{format_duration(now - started)} elapsed, eta {format_duration(eta)}")

    was_training = model.training
    model.eval()
    results = []
    try:
        for number, task in enumerate(all_tasks, 1):
            result = evaluate_task(model, tokenizer, task, max_per_task, max_seq_len, rank, world_size,
                                   progress=lambda: tick(number, task["label"]))
            results.append(result)
            if on_task is not None:
                on_task(result)
    finally:
        model.train(was_training)
    scored = [r for r in results if r["evaluated"] > 0]
    core = sum(r["centered"] for r in scored) / len(scored) if scored else float("nan")
    return {"core": core, "tasks": results}


_core_note_printed = False


def evaluate_core_for_training(model, tokenizer, rt, max_per_task=500):
    """The CORE score for the training loop, or None (with a one-line note, printed once) when no
    eval bundle is on disk. It never downloads: a training run must not wait on the network."""
    global _core_note_printed
    bundle_dir = get_bundle(download=False)
    if bundle_dir is None:
        if not _core_note_printed:
            print0(f"note: CORE skipped: no eval bundle in {default_bundle_dir()} "
                   f"(run `python -m scripts.base_eval --eval core` once online to download it)")
            _core_note_printed = True
        return None
    with rt.autocast():
        result = evaluate_core(model, tokenizer, bundle_dir, max_per_task, rt.rank, rt.world_size)
    return result["core"]
