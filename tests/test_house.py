"""The layout rules of the house (SPEC section 2): a small library that is the pipeline, imports
that point one way, tools runnable two ways, every training loop in its stage script, and one
checkpoint address that every script and tool reads the same way."""

import ast
import os
import sys
import importlib
import subprocess

import pytest

from nanochat.common import repo_root
from nanochat import checkpoint_manager as cm

ROOT = repo_root()
TOOLS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py") and f != "__init__.py")


def python_files(folder):
    out = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(out)


def imported_modules(path):
    """Every module name a file imports (absolute imports; `from a import b` gives a and a.b)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def library_modules():
    return sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "nanochat")) if f.endswith(".py"))


def test_the_library_is_small_enough_to_list():
    assert len(library_modules()) <= 22, library_modules()


def test_the_library_never_imports_tasks_scripts_or_tools():
    for path in python_files("nanochat"):
        bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in ("nanochat_tasks", "scripts", "tools"))
        assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}"


def test_every_library_module_serves_the_pipeline_not_only_the_tools():
    users = {}
    for folder in ("nanochat", "scripts", "nanochat_tasks"):
        for path in python_files(folder):
            me = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            for m in imported_modules(path):
                if m.startswith("nanochat.") and m != me:
                    users.setdefault(m, set()).add(me)
    unused = [m for m in library_modules()
              if m != "__init__" and not users.get(f"nanochat.{m}")]
    assert not unused, f"library modules no script, task or library module uses: {unused}"


@pytest.mark.parametrize("stage_script", ["scripts/base_train.py", "scripts/chat_finetune.py", "scripts/chat_rl.py"])
def test_each_training_stage_holds_its_own_loop(stage_script):
    with open(os.path.join(ROOT, stage_script), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For)]
    assert any(c.endswith(".backward") for c in calls), f"no backward() in {stage_script}"
    assert "optimizer.step" in calls, f"no optimizer.step() in {stage_script}"
    assert loops


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_runs_as_a_module_and_as_a_file(tool):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for argv in ([sys.executable, "-m", f"tools.{tool}", "--help"], [sys.executable, f"tools/{tool}.py", "--help"]):
        r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (argv, r.stderr[-2000:])
    # run from another folder too: the file form must find the repo on its own
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{tool}.py"), "--help"], cwd="/",
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# -----------------------------------------------------------------------------
# one checkpoint address

class Resolved(Exception):
    """Raised by the recording resolver so that a command stops right after choosing its checkpoint."""


# (module, the arguments it needs besides the address); every command that reads a checkpoint
CHECKPOINT_COMMANDS = [
    ("scripts.base_loss", []),
    ("scripts.base_eval", ["--eval", "bpb"]),
    ("scripts.chat_eval", ["-a", "Arithmetic"]),
    ("scripts.chat_cli", ["-p", "hi"]),
    ("scripts.chat_web", ["-p", "0"]),
    ("scripts.mid_train", ["--offline"]),
    ("scripts.chat_sft", ["--offline"]),
    ("scripts.chat_rl", ["--offline"]),
    ("tools.generation_explorer", ["--prompt", "hi"]),
    ("tools.attention_visualizer", ["--text", "hi"]),
    ("tools.checkpoint_browser", ["--inspect"]),
    ("tools.training_dashboard", []),
    ("tools.training_resume_helper", []),
    ("tools.lr_finder", []),
]
SCRIPTS = [c for c in CHECKPOINT_COMMANDS if c[0].startswith("scripts.")]


@pytest.fixture
def recorded(tiny_base_dir, monkeypatch):
    """Replace the one resolver with one that records what it resolved, then stops the command."""
    seen = []
    real = cm.resolve_checkpoint

    def record(source, model_tag=None, step=None, base_dir=None):
        found = real(source, model_tag, step, base_dir)
        seen.append((source, found[1], found[2]))
        raise Resolved()
    monkeypatch.setattr(cm, "resolve_checkpoint", record)
    return seen


def run_until_resolved(module, argv, seen):
    main = importlib.import_module(module).main
    with pytest.raises(Resolved):
        main(argv)
    return seen[-1]


@pytest.mark.parametrize("module, extra", CHECKPOINT_COMMANDS, ids=[c[0] for c in CHECKPOINT_COMMANDS])
def test_every_command_resolves_the_same_checkpoint_from_the_same_flags(module, extra, recorded, tiny_base_dir):
    address = ["--source", "base", "--model-tag", "d2", "--step", "8", "--base-dir", str(tiny_base_dir)]
    assert run_until_resolved(module, extra + address, recorded) == ("base", "d2", 8)
    # the defaults: the largest model of the stage and its last complete checkpoint (the LR finder
    # needs some address, or it would not know whether to analyse a run or run a range test)
    defaults = ["--source", "base"] + (["--step", "12"] if module == "tools.lr_finder" else [])
    assert run_until_resolved(module, extra + defaults, recorded) == ("base", "d2", 12)


@pytest.mark.parametrize("module, extra", SCRIPTS, ids=[c[0] for c in SCRIPTS])
def test_pipeline_short_forms_mean_the_same(module, extra, recorded):
    assert run_until_resolved(module, extra + ["-i", "base", "-g", "d2", "-s", "4"], recorded) == ("base", "d2", 4)


@pytest.mark.parametrize("module, argv", [
    ("tools.checkpoint_browser", ["--inspect", "base/d2:8"]),
    ("tools.checkpoint_browser", ["--inspect", "d2:8"]),          # no stage: the command's default (base)
    ("tools.checkpoint_browser", ["--inspect", "d2", "--step", "8"]),
    ("tools.training_resume_helper", ["d2", "--step", "8"]),
])
def test_one_word_names_follow_the_same_rule(module, argv, recorded):
    assert run_until_resolved(module, argv, recorded) == ("base", "d2", 8)


def test_a_tag_in_another_stage_is_named_in_the_error(tiny_base_dir):
    from nanochat.common import UserError
    with pytest.raises(UserError, match="unknown model tag 'd2' in stage sft"):
        cm.resolve_checkpoint("sft", "d2")
    with pytest.raises(UserError, match="no step 7"):
        cm.resolve_address("d2:7", "base")
    with pytest.raises(UserError, match="plain folder name"):
        cm.checkpoint_dir("base", "../../x")
