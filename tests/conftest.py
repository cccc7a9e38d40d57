"""Shared fixtures: a tiny but real training run (tokenizer + base checkpoints + metrics.jsonl)
made once per test session in a temporary NANOCHAT_BASE_DIR, on the embedded corpus."""

import os
import contextlib

import pytest
import torch

# the checkpoint folder written by upstream nanochat (shared/fixtures beside the checkout, as in CI)
UPSTREAM_FIXTURE = os.environ.get("NANOCHAT_UPSTREAM_FIXTURE") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "fixtures",
    "upstream-nanochat-d3")
# outside CI a checkout without shared/ skips those tests; in CI a missing fixture is a failure
SKIP_WITHOUT_UPSTREAM = not os.path.isdir(UPSTREAM_FIXTURE) and not os.environ.get("CI")

# two cores are shared by everything on the test machine; one thread keeps results reproducible
torch.set_num_threads(1)

TINY_TRAIN_ARGS = [
    "--depth", "2", "--max-seq-len", "64", "--device-batch-size", "4", "--total-batch-size", "512",
    "--num-iterations", "12", "--eval-every", "4", "--eval-tokens", "4096", "--core-metric-every", "-1",
    "--sample-every", "-1", "--save-every", "4", "--window-pattern", "L", "--head-dim", "64",
]


@contextlib.contextmanager
def base_dir_env(path):
    """Point NANOCHAT_BASE_DIR at `path` for the duration of a block."""
    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("NANOCHAT_BASE_DIR", None)
        else:
            os.environ["NANOCHAT_BASE_DIR"] = old


def train_tiny_tokenizer(vocab_size=512):
    from scripts import tok_train
    tok_train.main(["--vocab-size", str(vocab_size), "--max-chars", "300000"])


def train_tiny_base(extra=()):
    from scripts import base_train
    base_train.main(TINY_TRAIN_ARGS + list(extra))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A base dir with tokenizer/ and base_checkpoints/d2/ (steps 4, 8, 12, metrics.jsonl).

    Tests must treat it as read-only; copy it (shutil.copytree) before changing anything."""
    base = tmp_path_factory.mktemp("nanochat_base")
    with base_dir_env(base):
        train_tiny_tokenizer()
        train_tiny_base()
    return base


@pytest.fixture
def tiny_base_dir(tiny_run, monkeypatch):
    """NANOCHAT_BASE_DIR set to the shared tiny run for one test."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_run))
    return tiny_run
