"""The guides in docs/ are executable: every ```python block runs here, so the text cannot drift
away from the code.

How a guide is run: the ```python blocks of one docs/*.md file are executed in order, in one shared
namespace (a later block sees the names an earlier one defined), with a fixed seed, one torch
thread, the working directory in a scratch folder, and NANOCHAT_BASE_DIR pointing at a private
copy of the tiny training run of tests/conftest.py (a tokenizer with 512 tokens and a 2-layer
base model, checkpoints at steps 4, 8 and 12), so a snippet can call get_tokenizer() or
load_model("base", "cpu") and may even write checkpoints. A block fenced as ```python no-run is
shown to the reader but not executed (commands that take minutes, GPU-only code). A guide fails
when a block raises, and so when one of its `assert` lines fails: the guides pin their claims
with asserts. Error messages name the guide and the Markdown line of the failing statement.

Guides are discovered by file name, so a new docs/NN-*.md is picked up without touching this file.

The guides also name commands and files; two more checks keep those honest: every
`python -m scripts.NAME ...` command in a ```bash block parses with that script's own argument
parser, and every repository path the guides mention exists.
"""

import os
import re
import shlex
import random
import shutil
import traceback

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
GUIDE_RE = re.compile(r"^\d\d-[a-z0-9-]+\.md$")
NINE_GUIDES = ["01-introduction.md", "02-tokenization.md", "03-architecture.md", "04-training-pipeline.md",
               "05-inference.md", "06-tools-and-capabilities.md", "07-evaluation.md", "08-quick-start.md",
               "09-feature-implementation.md"]
TEN_TOOLS = ["tokenizer_playground", "training_dashboard", "checkpoint_browser", "dataset_inspector",
             "model_calculator", "generation_explorer", "training_resume_helper", "attention_visualizer",
             "lr_finder", "conversation_template_builder"]
SEED = 0


# -----------------------------------------------------------------------------
# reading fenced blocks out of Markdown

OPEN_FENCE_RE = re.compile(r"^(`{3,})([^`]*)$")  # CommonMark: a backtick fence's info has no backticks


def fenced_blocks(markdown):
    """[(info string, first code line number (1-based), code)] for every ``` fence at column 0."""
    blocks, lines = [], markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = OPEN_FENCE_RE.match(lines[i])
        if not opening:
            i += 1
            continue
        ticks, info = opening.group(1), opening.group(2).strip()
        start = j = i + 1
        while j < len(lines) and not (lines[j].startswith(ticks) and lines[j].strip("`").strip() == ""):
            j += 1
        if j == len(lines):
            raise ValueError(f"line {i + 1}: a {ticks} fence is never closed")
        blocks.append((info, start + 1, "\n".join(lines[start:j]) + "\n"))
        i = j + 1
    return blocks


def runnable_blocks(markdown):
    """(line, code) of the ```python blocks; ```python no-run (and every other language) is skipped."""
    return [(line, code) for info, line, code in fenced_blocks(markdown) if info == "python"]


class DocSnippetError(AssertionError):
    pass


def run_markdown(path, markdown=None):
    """Execute the python blocks of one Markdown file in order in one namespace; returns the namespace.

    Raises DocSnippetError naming the file and line when a block raises (an assert included)."""
    if markdown is None:
        with open(path, encoding="utf-8") as f:
            markdown = f.read()
    namespace = {"__name__": "__doc_snippets__"}
    for line, code in runnable_blocks(markdown):
        # pad with blank lines so that tracebacks give the line number inside the .md file
        compiled = compile("\n" * (line - 1) + code, path, "exec")
        try:
            exec(compiled, namespace)
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)
            where = [f for f in tb if f.filename == path]
            at = where[-1].lineno if where else line
            detail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-3:]).strip()
            raise DocSnippetError(f"{os.path.basename(path)}, block at line {line}, failed at line {at}: "
                                  f"{type(e).__name__}: {e}\n{detail}") from e
    return namespace


def guide_files():
    if not os.path.isdir(DOCS):
        return []
    return sorted(name for name in os.listdir(DOCS) if GUIDE_RE.match(name))


def markdown_files():
    return sorted(name for name in os.listdir(DOCS) if name.endswith(".md")) if os.path.isdir(DOCS) else []


# -----------------------------------------------------------------------------
# the harness itself must be able to fail

def test_harness_extracts_python_blocks_and_skips_no_run():
    md = ("text\n```python\nx = 1\n```\n\n```python no-run\nraise SystemExit\n```\n"
          "```bash\nexit 1\n```\n```python\ny = x + 1\n```\n")
    blocks = runnable_blocks(md)
    assert [line for line, _ in blocks] == [3, 13]
    ns = run_markdown("inline.md", md)
    assert ns["y"] == 2  # the second block saw the first block's name


def test_harness_fails_on_a_false_assert_and_names_the_line(tmp_path):
    md = "# t\n\n```python\nvalue = 41\n\nassert value == 42, 'off by one'\n```\n"
    path = str(tmp_path / "bad.md")
    with pytest.raises(DocSnippetError) as info:
        run_markdown(path, md)
    message = str(info.value)
    assert "bad.md" in message and "failed at line 6" in message and "off by one" in message


def test_harness_fails_on_an_exception():
    with pytest.raises(DocSnippetError, match="ZeroDivisionError"):
        run_markdown("x.md", "```python\n1 / 0\n```\n")


def test_harness_rejects_an_unclosed_fence():
    with pytest.raises(ValueError, match="never closed"):
        fenced_blocks("```python\nx = 1\n")


# -----------------------------------------------------------------------------
# the guides

@pytest.fixture
def docs_env(tiny_run, tmp_path, monkeypatch):
    """A private copy of the tiny run as NANOCHAT_BASE_DIR, cwd in a scratch folder, fixed seeds."""
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(REPO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    random.seed(SEED)
    try:
        import numpy as np
        np.random.seed(SEED)
    except ImportError:
        pass
    yield base
    torch.set_num_threads(threads)


@pytest.mark.parametrize("guide", markdown_files())
def test_guide_snippets_run_and_their_asserts_hold(guide, docs_env):
    run_markdown(os.path.join(DOCS, guide))


def test_there_are_guides_to_test():
    assert "01-introduction.md" in guide_files()


def test_index_lists_the_nine_guides_and_every_guide_present():
    with open(os.path.join(DOCS, "README.md"), encoding="utf-8") as f:
        index = f.read()
    for name in NINE_GUIDES + guide_files():
        assert f"({name})" in index, f"docs/README.md does not link {name}"


# -----------------------------------------------------------------------------
# commands and paths named in the guides

def bash_commands(markdown):
    """Every command line of the ```bash blocks (backslash continuations joined, comments dropped)."""
    commands = []
    for info, _, code in fenced_blocks(markdown):
        if info not in ("bash", "sh", "shell"):
            continue
        pending = ""
        for line in code.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:
                continue  # a quoted string that goes on over the next line(s)
            pending = ""
            if words:
                commands.append(words)
    return commands


def script_invocations(markdown):
    """(module, argv) for each `python -m scripts.X ...` or `torchrun ... -m scripts.X ...` command."""
    found = []
    for words in bash_commands(markdown):
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # VAR=value prefixes
        if words and words[0] in ("python", "python3", "torchrun") and "-m" in words:
            i = words.index("-m")
            if i + 1 < len(words) and words[i + 1].startswith("scripts."):
                found.append((words[i + 1], words[i + 2:]))
    return found


@pytest.mark.parametrize("guide", markdown_files())
def test_guide_commands_use_real_scripts_and_flags(guide, monkeypatch):
    import importlib
    monkeypatch.syspath_prepend(REPO)
    with open(os.path.join(DOCS, guide), encoding="utf-8") as f:
        markdown = f.read()
    for module, argv in script_invocations(markdown):
        script = importlib.import_module(module)
        if "--help" in argv or "-h" in argv:
            continue
        try:
            script.parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{guide}: `{module} {' '.join(argv)}` does not parse (exit {e.code})")


PATH_RE = re.compile(r"(?<![\w./~-])((?:nanochat|scripts|tasks|tests|tools|data|runs|docs|bench)/[A-Za-z0-9_./-]*[A-Za-z0-9_])")


@pytest.mark.parametrize("guide", markdown_files())
def test_guide_paths_exist(guide):
    with open(os.path.join(DOCS, guide), encoding="utf-8") as f:
        markdown = f.read()
    for path in sorted(set(PATH_RE.findall(markdown))):
        if any(re.fullmatch(r"[A-Z][A-Z_]*(\.\w+)?", part) for part in path.split("/")):
            continue  # a placeholder such as scripts/NAME.py
        if path.startswith("tools/") and not path.startswith(("tools/lib", "tools/lab")):
            # the tools are being written alongside the guides: the name must be one of the ten
            # (their backends in tools/lib/ must exist, like every other path, and so must the
            # lab, tools/lab.py and its pages in tools/lab_pages/: the tools' page, not a tool)
            name = os.path.splitext(os.path.basename(path))[0]
            assert name in TEN_TOOLS, f"{guide} names {path}, which is not one of the ten tools"
        elif path.startswith("docs/") and os.path.basename(path) in NINE_GUIDES:
            continue  # a guide that may not be written yet
        else:
            assert os.path.exists(os.path.join(REPO, path)), f"{guide} names {path}, which does not exist"


def test_script_invocations_are_found():
    md = "```bash\nNANOCHAT_BASE_DIR=/x python -m scripts.base_train --depth 4  # c\n" \
         "torchrun --standalone --nproc_per_node=2 -m scripts.mid_train \\\n  --offline\n```\n"
    assert script_invocations(md) == [("scripts.base_train", ["--depth", "4"]),
                                      ("scripts.mid_train", ["--offline"])]
    multi_line_quote = "```bash\ncurl -d '{\n  \"a\": 1}'\npython -m scripts.chat_cli -p hi\n```\n"
    assert bash_commands(multi_line_quote)[0] == ["curl", "-d", '{\n  "a": 1}']
    assert script_invocations(multi_line_quote) == [("scripts.chat_cli", ["-p", "hi"])]
