"""The runs/ scripts call the pipeline with flags the pipeline accepts (argument drift fails here,
not an hour into a GPU run)."""

import os
import re
import shlex
import importlib

import pytest

from nanochat.common import repo_root

ASSIGNMENT = re.compile(r'^([A-Z_]+)=(?:\$\{\1:-(.*)\}|"([^"]*)"|(\S*))$')


def _commands(script):
    """(module, argv) of every `python -m scripts.X ...` / `run scripts.X ...` line, with the script's
    own variables (NAME=${NAME:-default}, NAME=value) and loop variables filled in."""
    with open(os.path.join(repo_root(), "runs", script)) as f:
        text = f.read().replace("\\\n", " ")
    variables = {"src": "base", "NPROC": "8"}
    commands = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        m = ASSIGNMENT.match(line)
        if m:
            variables[m.group(1)] = next(g for g in m.groups()[1:] if g is not None)
            continue
        found = re.search(r"(?:python -m |^run )(scripts\.\w+)(.*)$", line)
        if not found or line.startswith("echo "):
            continue
        # "$VAR" stays one word; a bare $VAR is split into words, as bash does
        args = re.sub(r'"\$\{?(\w+)\}?"', lambda v: shlex.quote(variables[v.group(1)]), found.group(2))
        args = re.sub(r'\$\{?(\w+)\}?', lambda v: variables[v.group(1)], args)
        commands.append((found.group(1), shlex.split(args)))
    return commands


@pytest.mark.parametrize("script", ["cpu_demo.sh", "speedrun.sh"])
def test_every_pipeline_command_in_the_runs_scripts_parses(script):
    commands = _commands(script)
    assert len(commands) >= 8, commands
    for module, argv in commands:
        parse_args = importlib.import_module(module).parse_args
        try:
            parse_args(argv)
        except SystemExit as e:  # argparse rejected a flag
            pytest.fail(f"{script}: {module} {' '.join(argv)} -> exit {e.code}")


def test_the_demo_commands_are_read_with_their_values():
    commands = dict((m, a) for m, a in _commands("cpu_demo.sh"))
    assert commands["scripts.base_train"][commands["scripts.base_train"].index("--num-iterations") + 1] == "300"
    assert "--num-steps" in commands["scripts.chat_rl"] and "--offline" in commands["scripts.chat_rl"]
    assert "SpellingBee|SimpleSpelling|Arithmetic|TwoStepArithmetic|Refusal" in commands["scripts.chat_eval"]
