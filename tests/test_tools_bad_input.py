"""Bad input to every tool gives one line on stderr, no traceback, exit code 2.

To add a tool, append rows to CASES: (tool module name in tools/, case name, base dir, argv).
  base dir: which NANOCHAT_BASE_DIR the tool sees: "good" (a copy of the tiny run), "empty" (an
            empty folder), "corrupt" (the tiny run with meta_000012.json corrupted)
  argv:     the arguments; "{missing}", "{empty}", "{good_run}", "{corrupt_run}", "{non_utf8}",
            "{non_utf8_txt}" and "{good}" are replaced by the paths of the bad inputs made below.
The bad inputs: a path that does not exist, an empty folder, a corrupt meta JSON, an unknown
model tag, a nonexistent step, and a file that is not UTF-8.
"""

import os
import sys
import shutil
import importlib
import subprocess

import pytest

from nanochat.common import repo_root
from nanochat.common import run_entry as run_tool

CASES = [
    # tool                  case                  base       argv
    ("tokenizer_playground", "missing path",      "good",    ["--file", "{missing}"]),
    ("tokenizer_playground", "empty folder",      "empty",   ["hello"]),                       # no tokenizer
    ("tokenizer_playground", "non-UTF-8 file",    "good",    ["--file", "{non_utf8_txt}"]),
    ("tokenizer_playground", "folder not file",   "good",    ["--file", "{empty}"]),
    ("training_dashboard",   "missing path",      "good",    ["{missing}"]),
    ("training_dashboard",   "empty folder",      "good",    ["{empty}"]),
    ("training_dashboard",   "corrupt meta JSON", "corrupt", ["{corrupt_run}"]),
    ("training_dashboard",   "unknown model tag", "good",    ["d99"]),
    ("training_dashboard",   "non-UTF-8 file",    "good",    ["{non_utf8}"]),                  # a file, not a folder
    ("training_dashboard",   "bad flag value",    "good",    ["{good_run}", "--x", "epochs"]),
    ("checkpoint_browser",   "missing path",      "good",    ["--base-dir", "{missing}", "--list"]),
    ("checkpoint_browser",   "empty folder",      "empty",   ["--inspect", "d2"]),
    ("checkpoint_browser",   "corrupt meta JSON", "corrupt", ["--inspect", "d2", "--step", "12"]),
    ("checkpoint_browser",   "unknown model tag", "good",    ["--compare", "d2", "d99"]),
    ("checkpoint_browser",   "nonexistent step",  "good",    ["--inspect", "d2", "--step", "7"]),
    ("checkpoint_browser",   "nonexistent step",  "good",    ["--delete", "d2:7", "--yes"]),
    ("dataset_inspector",    "missing path",      "good",    ["{missing}"]),
    ("dataset_inspector",    "empty folder",      "good",    ["{empty}"]),
    ("dataset_inspector",    "non-UTF-8 file",    "good",    ["{non_utf8}"]),
    ("dataset_inspector",    "non-UTF-8 file",    "good",    ["{non_utf8_txt}"]),
    ("model_calculator",     "unknown model tag", "good",    ["--preset", "d99"]),
    ("model_calculator",     "nonexistent GPU",   "good",    ["--preset", "d20", "--gpu", "Z9000"]),
    ("model_calculator",     "impossible shape",  "good",    ["--depth", "4", "--hidden-dim", "300"]),
    ("model_calculator",     "nothing to do",     "good",    []),
    ("generation_explorer",  "empty folder",      "empty",   ["--prompt", "hi"]),
    ("generation_explorer",  "corrupt meta JSON", "corrupt", ["--prompt", "hi", "--step", "12"]),
    ("generation_explorer",  "unknown model tag", "good",    ["--prompt", "hi", "--model-tag", "d99"]),
    ("generation_explorer",  "nonexistent step",  "good",    ["--prompt", "hi", "--step", "7"]),
    ("generation_explorer",  "bad flag value",    "good",    ["--prompt", "hi", "--top-p", "2"]),
    ("training_resume_helper", "missing path",    "good",    ["{missing}"]),
    ("training_resume_helper", "empty folder",    "good",    ["{empty}"]),
    ("training_resume_helper", "corrupt meta JSON", "corrupt", ["{corrupt_run}", "--step", "12"]),
    ("training_resume_helper", "unknown model tag", "good",  ["d99"]),
    ("training_resume_helper", "nonexistent step", "good",   ["{good_run}", "--step", "7"]),
    ("training_resume_helper", "non-UTF-8 file",  "good",    ["{non_utf8}"]),
    ("attention_visualizer", "empty folder",      "empty",   ["--text", "hi"]),
    ("attention_visualizer", "corrupt meta JSON", "corrupt", ["--text", "hi", "--step", "12"]),
    ("attention_visualizer", "unknown model tag", "good",    ["--text", "hi", "--model-tag", "d99"]),
    ("attention_visualizer", "nonexistent step",  "good",    ["--text", "hi", "--step", "7"]),
    ("attention_visualizer", "bad flag value",    "good",    ["--text", "hi", "--layer", "9"]),
    ("lr_finder",            "missing path",      "good",    ["{missing}"]),
    ("lr_finder",            "empty folder",      "good",    ["{empty}"]),
    ("lr_finder",            "corrupt meta JSON", "corrupt", ["{corrupt_run}"]),
    ("lr_finder",            "unknown model tag", "good",    ["d99"]),
    ("lr_finder",            "non-UTF-8 file",    "good",    ["{non_utf8}"]),
    ("lr_finder",            "nothing to do",     "good",    []),
    ("conversation_template_builder", "missing path",   "good",  ["--validate", "{missing}"]),
    ("conversation_template_builder", "folder not file", "good", ["--validate", "{empty}"]),
    ("conversation_template_builder", "non-UTF-8 file", "good",  ["--validate", "{non_utf8}"]),
    ("conversation_template_builder", "non-UTF-8 file", "good",  ["--batch-validate", "{non_utf8}"]),
    ("conversation_template_builder", "empty folder",   "empty", ["--simple", "Hi", "Hello"]),  # no tokenizer
    ("conversation_template_builder", "nothing to do",  "good",  []),
]


@pytest.fixture(scope="module")
def bad_inputs(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    good = root / "good"
    shutil.copytree(tiny_run, good)
    corrupt = root / "corrupt"
    shutil.copytree(tiny_run, corrupt)
    corrupt_run = corrupt / "base_checkpoints" / "d2"
    (corrupt_run / "meta_000012.json").write_text('{"step": 12, "model_config": {', encoding="utf-8")
    empty = root / "empty"
    empty.mkdir()
    non_utf8 = root / "latin1.jsonl"
    non_utf8.write_bytes('[{"role": "user", "content": "caf\xe9"}]\n'.encode("latin-1") * 3)
    non_utf8_txt = root / "latin1.txt"
    non_utf8_txt.write_bytes("na\xefve caf\xe9\n".encode("latin-1"))
    paths = {"missing": root / "does" / "not" / "exist", "empty": empty, "good": good, "corrupt": corrupt,
             "good_run": good / "base_checkpoints" / "d2", "corrupt_run": corrupt_run,
             "non_utf8": non_utf8, "non_utf8_txt": non_utf8_txt}
    return {k: str(v) for k, v in paths.items()}


def expand(argv, paths):
    return [a.format(**paths) for a in argv]


@pytest.mark.parametrize("name, case, base, argv", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_gives_one_line_and_exit_2(name, case, base, argv, bad_inputs, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", bad_inputs[base])
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    module = importlib.import_module(f"tools.{name}")
    code = run_tool(module.main, expand(argv, bad_inputs))
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + out


@pytest.mark.slow
@pytest.mark.parametrize("name, argv", [("training_dashboard", ["{corrupt_run}"]),
                                        ("dataset_inspector", ["{non_utf8}"]),
                                        ("checkpoint_browser", ["--inspect", "d2", "--step", "7"])])
def test_bad_input_exit_code_from_the_real_command_line(name, argv, bad_inputs):
    env = dict(os.environ, NANOCHAT_BASE_DIR=bad_inputs["good"])
    r = subprocess.run([sys.executable, f"tools/{name}.py"] + expand(argv, bad_inputs), cwd=repo_root(), env=env,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
