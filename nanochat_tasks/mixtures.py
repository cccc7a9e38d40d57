"""
What the chat training stages train on: the task mixtures of midtraining and SFT, and the problem
sets of RL, with the offline fallback when the Hugging Face hub cannot be reached.

Pipeline position: scripts/chat_finetune.py (mid, SFT) and scripts/chat_rl.py build their tasks
here and hand them to the library (nanochat/chat_data.py turns conversations into batches,
nanochat/rl.py rolls out and scores); the resume helper rebuilds a run's mixture here to replay it.
"""

from nanochat.common import UserError, print0
from nanochat_tasks import get_task
from nanochat_tasks.common import TaskMixture
from nanochat_tasks.hub import TaskUnavailable

# the hub tasks of each stage; listing a task twice doubles its weight
HUB_MIXTURES = {
    "mid": ["SmolTalk", "MMLU", "GSM8K"],
    "sft": ["ARC-Easy", "ARC-Challenge", "GSM8K", "SmolTalk"],
}
HUB_VAL = {
    "mid": ["SmolTalk", "MMLU", "GSM8K"],
    "sft": ["SmolTalk"],
}
# what every stage also trains on, hub or not: all synthetic, all offline
# the offline tasks and their share of --synthetic-size: just a few two-step word problems, enough
# to show the format but not to master it (that is left for RL to practise)
OFFLINE_TASKS = [("Identity", 1), ("SpellingBee", 1), ("SimpleSpelling", 1), ("Arithmetic", 1),
                 ("TwoStepArithmetic", 1 / 8)]
# what only SFT trains on, so that SFT teaches something midtraining did not and chat_eval can show
# it: politely declining requests the model cannot carry out (chat_eval's Refusal row is near 0
# after mid and rises after SFT)
OFFLINE_TASKS_BY_STAGE = {"mid": OFFLINE_TASKS, "sft": OFFLINE_TASKS + [("Refusal", 1 / 2)]}
HUB_SLICES = {("sft", "SmolTalk", "train"): 10_000, ("mid", "MMLU", "test"): 2_000,
              ("mid", "GSM8K", "test"): 1_000, ("mid", "SmolTalk", "test"): 5_000}


def build_mixture(stage, split, offline=False, synthetic_size=1000, custom_json=None, announce=True):
    """The task mixture of a stage ('mid' or 'sft') for 'train' or 'val'.

    Online: the hub tasks of the stage plus the offline synthetic tasks of the stage
    (OFFLINE_TASKS_BY_STAGE: SFT adds Refusal to midtraining's). When the hub cannot be
    reached (or offline=True) only the offline tasks, plus the user's --custom-json file.
    synthetic_size: examples per synthetic task (a tenth of it for the val split).
    Returns (TaskMixture, list of task names)."""
    assert stage in ("mid", "sft") and split in ("train", "val")
    task_split = "train" if split == "train" else "test"
    tasks, names = [], []
    if not offline:
        try:
            for name in (HUB_MIXTURES if split == "train" else HUB_VAL)[stage]:
                stop = HUB_SLICES.get((stage, name, task_split))
                tasks.append(get_task(name, task_split, **({"stop": stop} if stop else {})))
                names.append(name)
        except TaskUnavailable as e:
            tasks, names = [], []
            if announce:
                print0(f"note: hub tasks unavailable ({str(e).split(';')[0]}); training on the offline tasks only")
    size = synthetic_size if split == "train" else max(1, synthetic_size // 10)
    for name, share in OFFLINE_TASKS_BY_STAGE[stage]:
        tasks.append(get_task(name, task_split, size=max(1, int(size * share))))
        names.append(name)
    if custom_json:
        from nanochat_tasks.customjson import CustomJSON
        custom = CustomJSON(custom_json)
        if split == "val":  # no held-out file: validate on the first 10% (still seen in training)
            custom = CustomJSON(custom_json, stop=max(1, len(custom) // 10))
        tasks.append(custom)
        names.append("CustomJSON")
    return TaskMixture(tasks), names


def is_offline_mixture(names):
    """True when a mixture (its task names, as build_mixture returns them) has no hub task: either
    --offline was given or the hub did not answer."""
    return bool(names) and names[0] in dict(OFFLINE_TASKS)


RL_TASKS = ("GSM8K", "Arithmetic", "TwoStepArithmetic")  # problems with checkable answers


def load_rl_tasks(task_name, offline, train_size, eval_examples):
    """(train task, held-out task, name). GSM8K when asked for and reachable, else offline synthetic
    word problems with the same '#### answer' format and calculator tool: TwoStepArithmetic (two
    chained calculator calls, which SFT leaves only partly solved, so RL has something to learn)
    unless Arithmetic (one call) is asked for."""
    if task_name not in RL_TASKS:
        raise UserError(f"--task {task_name!r}: RL needs problems with checkable answers: {', '.join(RL_TASKS)}")
    if task_name == "GSM8K":
        if not offline:
            try:
                return get_task("GSM8K", "train"), get_task("GSM8K", "test", stop=eval_examples), "GSM8K"
            except TaskUnavailable as e:
                print0(f"note: GSM8K is not available ({e}); using the offline TwoStepArithmetic problems instead")
        task_name = "TwoStepArithmetic"
    return (get_task(task_name, "train", size=train_size),
            get_task(task_name, "test", size=eval_examples), task_name)
