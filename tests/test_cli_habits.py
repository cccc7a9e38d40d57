"""Command-line habits every stage and tool keeps: scripts name themselves as they are run
(`usage: python -m scripts.NAME`), and every flag of every script and tool says what it does."""

import os
import argparse
import importlib

import pytest

from nanochat.common import repo_root

ROOT = repo_root()


def modules(folder):
    return [f"{folder}.{f[:-3]}" for f in sorted(os.listdir(os.path.join(ROOT, folder)))
            if f.endswith(".py") and f != "__init__.py"]


class Parsed(Exception):
    """Raised instead of parsing, carrying the parser a module's parse_args built."""

    def __init__(self, parser):
        self.parser = parser


def parser_of(module_name, monkeypatch):
    module = importlib.import_module(module_name)
    if not hasattr(module, "parse_args"):
        pytest.skip(f"{module_name} has no command line of its own")

    def grab(self, *args, **kwargs):
        raise Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    with pytest.raises(Parsed) as parsed:
        module.parse_args([])
    return parsed.value.parser


@pytest.mark.parametrize("name", modules("scripts"))
def test_scripts_show_how_they_are_run_in_their_usage_line(name, monkeypatch):
    parser = parser_of(name, monkeypatch)
    assert parser.prog == f"python -m {name}"
    assert parser.format_usage().startswith(f"usage: python -m {name} ")


@pytest.mark.parametrize("name", modules("scripts") + modules("tools"))
def test_every_flag_has_help_text(name, monkeypatch):
    parser = parser_of(name, monkeypatch)
    silent = [action.option_strings or [action.dest] for action in parser._actions if not action.help]
    assert not silent, f"{name}: flags without help text: {silent}"
