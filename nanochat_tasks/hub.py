"""
Loading the hub-hosted task datasets (SmolTalk, ARC, MMLU, GSM8K), with an offline way in.

Every hub task calls `load_hub_dataset(path, name, split)` and nothing else, so there is one
place that decides where rows come from:

1. A local copy, when $NANOCHAT_TASKS_DIR is set and holds the file

       $NANOCHAT_TASKS_DIR/<path>/<name or "default">/<split>.parquet   (or .jsonl)

   e.g. $NANOCHAT_TASKS_DIR/openai/gsm8k/main/test.jsonl, with the hub's own columns. The tests
   use this with the fixtures in tests/fixtures/tasks/; you can use it to bring a dataset to a
   machine without internet (save it there with `ds.to_parquet(...)` where you have one).
2. Otherwise Hugging Face `datasets.load_dataset(path, name, split=split)`, which downloads once
   and then reads its cache (~/.cache/huggingface). With HF_HUB_OFFLINE=1 it reads only the cache.

When the hub cannot be reached, `datasets` retries for half a minute and then raises a long
error; instead we probe the hub first (a few seconds at most) and raise TaskUnavailable, one
line that says which dataset is missing and what to use instead.
"""

import os
import json
import threading
import urllib.error
import urllib.request

from nanochat.common import UserError

TASKS_DIR_ENV = "NANOCHAT_TASKS_DIR"
PROBE_TIMEOUT_S = 4.0
OFFLINE_TASKS = "SpellingBee, SimpleSpelling, Arithmetic, TwoStepArithmetic, Identity, Refusal, HumanEval or CustomJSON"


class TaskUnavailable(UserError):
    """A task's dataset cannot be loaded here (no network and no local copy)."""


def local_copy_path(path, name, split, tasks_dir=None):
    """Where a local copy of this dataset would be, or None when there is none."""
    tasks_dir = tasks_dir or os.environ.get(TASKS_DIR_ENV)
    if not tasks_dir:
        return None
    stem = os.path.join(tasks_dir, *path.split("/"), name or "default", split)
    for ext in (".parquet", ".jsonl"):
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


def load_local_copy(filepath):
    """A parquet or JSONL file as an in-memory datasets.Dataset (no cache files are written)."""
    from datasets import Dataset
    if filepath.endswith(".parquet"):
        import pyarrow.parquet as pq
        return Dataset(pq.read_table(filepath))
    with open(filepath, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return Dataset.from_list(rows)


def hub_endpoint():
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline_mode():
    """True when the user told Hugging Face libraries to stay offline (they then read only the cache)."""
    import datasets
    return bool(datasets.config.HF_HUB_OFFLINE)


def hub_unreachable_reason(timeout=PROBE_TIMEOUT_S):
    """None when the hub answers a HEAD request, else why not (one short phrase).

    The request runs in a thread so that even a hanging DNS lookup cannot stall us past
    `timeout`. Any HTTP answer, even an error status, means the network path works."""
    outcome = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(hub_endpoint(), method="HEAD"), timeout=timeout)
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except urllib.error.URLError as e:
            outcome.append(f"{hub_endpoint()}: {e.reason}")
        except Exception as e:
            outcome.append(f"{hub_endpoint()}: {e}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer from {hub_endpoint()} within {timeout:g}s"


def network_errors():
    """What a failed download raises: datasets wraps most failures in ConnectionError, but a
    timeout in the middle of a file can come through as the HTTP library's own error."""
    errors = (ConnectionError, TimeoutError)
    try:
        import httpx
        errors += (httpx.TransportError,)
    except ImportError:
        pass
    return errors


def unavailable(path, name, split, reason, offline_mode=False):
    config = f" ({name}, {split})" if name else f" ({split})"
    local_hint = f"put a copy at ${TASKS_DIR_ENV}/{path}/{name or 'default'}/{split}.parquet"
    return TaskUnavailable(
        f"the Hugging Face hub is unreachable ({reason}), so dataset {path}{config} cannot be loaded; "
        f"use the offline tasks ({OFFLINE_TASKS}) instead, or {local_hint}"
        + ("" if offline_mode else ", or set HF_HUB_OFFLINE=1 if it is in your Hugging Face cache"))


def load_hub_dataset(path, name, split):
    """Rows of a hub dataset as a datasets.Dataset: from $NANOCHAT_TASKS_DIR if it has a copy, else the hub."""
    local = local_copy_path(path, name, split)
    if local is not None:
        return load_local_copy(local)

    import datasets
    if hub_offline_mode():
        try:
            return datasets.load_dataset(path, name, split=split)
        except ConnectionError:
            raise unavailable(path, name, split, "HF_HUB_OFFLINE is set and there is no cached copy", offline_mode=True) from None
    reason = hub_unreachable_reason()
    if reason is not None:
        raise unavailable(path, name, split, reason)
    try:
        return datasets.load_dataset(path, name, split=split)
    except network_errors() as e:  # the probe got through but the download did not
        raise unavailable(path, name, split, f"{type(e).__name__} while downloading") from None
