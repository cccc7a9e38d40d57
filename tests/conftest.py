"""Shared fixtures: a tiny but real training run (tokenizer + base checkpoints + metrics.jsonl)
made once per test run in a temporary NANOCHAT_BASE_DIR, on the embedded corpus.

runs/test.sh runs the suite in parallel with pytest-xdist (several worker processes); a fixture
that takes long to make is made once for all of them with built_once() below."""

import os
import fcntl
import shutil
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


def built_once(tmp_path_factory, name, build):
    """The folder `name`, filled by build(folder) once per test run, however many pytest-xdist
    workers ask for it: the first one builds while the others wait on a file lock, then all share
    it. It lies in the temp dir that the workers of one run have in common (the parent of each
    worker's own); without xdist, in the session's temp dir."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a build that failed half-way left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def build_tiny_run(base):
    with base_dir_env(base):
        train_tiny_tokenizer()
        train_tiny_base()


def changed_since(folder, marker):
    """Paths under folder (itself included) modified after the file `marker` was."""
    since = os.path.getmtime(marker)
    paths = [str(folder)] + [os.path.join(d, n) for d, dirs, files in os.walk(folder) for n in dirs + files]
    return [path for path in paths if os.path.getmtime(path) > since]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A base dir with tokenizer/ and base_checkpoints/d2/ (steps 4, 8, 12, metrics.jsonl).

    Tests must treat it as read-only (parallel workers read it at the same time, and what one test
    wrote would change what a later one sees); copy it (shutil.copytree, or use
    tiny_base_dir_copy) before changing anything. Checked at the end of the session."""
    base = built_once(tmp_path_factory, "nanochat_base", build_tiny_run)
    yield base
    changed = changed_since(base, f"{base}.done")
    assert not changed, f"a test wrote into the shared tiny run (use tiny_base_dir_copy): {changed[:5]}"


@pytest.fixture
def tiny_base_dir(tiny_run, monkeypatch):
    """NANOCHAT_BASE_DIR set to the shared tiny run for one test."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_run))
    return tiny_run


@pytest.fixture
def tiny_base_dir_copy(tiny_run, tmp_path, monkeypatch):
    """NANOCHAT_BASE_DIR set to a private copy of the tiny run, for a test that writes into its base
    dir (chat_eval adds a section to the report card, a training run a checkpoint)."""
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    return base
