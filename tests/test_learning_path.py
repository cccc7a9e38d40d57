"""The learning path as a beginner walks it (issue 15): the model's abilities are listed where a
learner looks (chat CLI, chat page, demo script, README), the diagnoses fit the stage they judge,
the tools' figures match the real thing, and the report card and guide 02 tell the truth."""

import io
import json
import math
import os
import re
import shutil

import httpx
import pytest

from nanochat.common import run_entry, repo_root, UserError
from nanochat import checkpoint_manager as cm
from conftest import base_dir_env

ROOT = repo_root()


# -----------------------------------------------------------------------------
# what the model can do: one list, drawn from the tasks, shown everywhere

def test_example_prompts_are_real_training_prompts_of_every_offline_task():
    from tasks import get_task
    from tasks.examples import example_prompts
    from tasks.mixtures import OFFLINE_TASKS
    examples = example_prompts()
    assert [e["task"] for e in examples] == [name for name, _ in OFFLINE_TASKS]
    for e in examples:
        first = get_task(e["task"], "train", size=1)[0]
        assert e["prompt"] in [m["content"] for m in first["messages"] if m["role"] == "user"]
        assert e["family"] and e["family"] != e["task"]  # every offline task has a learner's description
    assert examples[0]["prompt"] not in ("Hi!", "hello", "Hey there", "Good morning!")  # not a greeting


def test_chat_cli_lists_the_examples_in_help_but_not_with_p_or_piped_input(tiny_base_dir, capsys, monkeypatch):
    from scripts import chat_cli
    from tasks.examples import example_prompts
    assert run_entry(chat_cli.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "trained on" in out and all(e["prompt"] in out for e in example_prompts())
    # -p prints the answer only, and piped input (not a terminal) gets no banner either
    assert run_entry(chat_cli.main, ["-i", "base", "-p", "Hello", "-m", "4", "-t", "0"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and "trained on" not in out
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
    assert run_entry(chat_cli.main, ["-i", "base", "-m", "4", "-t", "0"]) == 0
    out = capsys.readouterr().out
    assert "User: Hello" in out and "trained on" not in out


def test_stats_hands_the_examples_to_the_chat_page(tiny_run, tmp_path):
    from test_chat_web import serve
    from tasks.examples import example_prompts
    with serve(tiny_run, tmp_path / "server.log") as (url, _):
        stats = httpx.get(url + "/stats").json()
        page = httpx.get(url + "/").text
    assert stats["examples"] == [{"prompt": e["prompt"], "family": e["family"]} for e in example_prompts()]
    assert "serverExamples" in page and ".innerHTML" not in page  # shown as text, like everything else


def test_readme_and_the_demo_show_the_same_examples():
    from tasks.examples import example_prompts
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## What your model can do")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)[1:]  # past the header row
    assert rows == [(e["family"], e["prompt"]) for e in example_prompts()]
    with open(os.path.join(ROOT, "runs", "cpu_demo.sh"), encoding="utf-8") as f:
        tail = f.read().rstrip().splitlines()[-4:]
    assert "python -m scripts.chat_cli -i sft -g $TAG" in tail[0] and tail[-1] == "python -m tasks.examples"
