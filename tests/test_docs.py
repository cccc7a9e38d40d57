"""The guides in docs/ are executable: every ```python block runs here, so the text cannot drift
away from the code.

How a guide is run: the ```python blocks of one docs/*.md file are executed in order, in one shared
namespace (a later block sees the names an earlier one defined), with a fixed seed, one torch
thread and the working directory in a scratch folder. A block fenced as ```python no-run is
shown to the reader but not executed (commands that take minutes, GPU-only code). A guide fails
when a block raises, and so when one of its `assert` lines fails (an assert in a guide states a
claim the text makes). Error messages name the guide and the Markdown line of the failing statement.

The guides run on the learner's own run: the one command that guide 01 and the README give,
`bash runs/cpu_demo.sh --quick`. The slow test runs exactly that command into a temp base dir,
then every guide on its output, and checks that the snippets changed nothing: not the run (its
checkpoints and report card), not the repository, not the current folder (a snippet that writes
uses tempfile.mkdtemp()). The snippets look up what they need (the run's tag, steps, flags), so
they also run, fast, on the tiny training run of tests/conftest.py (a 512-token tokenizer and a
2-layer base model); the fast test does that on a private copy. Checks that only pin what a guide
says (a table of commands, the error messages) are tests here, not snippets.

Guides are discovered by file name, so a new docs/NN-*.md is picked up without touching this file.

The guides also name commands and files; two more checks keep those honest: every
`python -m scripts.NAME ...` command in a ```bash block parses with that script's own argument
parser, and every repository path the guides mention exists.
"""

import os
import re
import contextlib
import shlex
import random
import shutil
import hashlib
import subprocess
import traceback
from types import SimpleNamespace

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
    with as_a_reader(base, tmp_path / "work", monkeypatch):
        yield base


@contextlib.contextmanager
def as_a_reader(base, work, monkeypatch):
    """Where a learner runs the snippets: NANOCHAT_BASE_DIR is their run, the current folder a new
    scratch folder `work`; plus fixed seeds and one thread, so that printed figures repeat."""
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
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("guide", markdown_files())
def test_guide_snippets_run_and_their_asserts_hold(guide, docs_env):
    run_markdown(os.path.join(DOCS, guide))


# -----------------------------------------------------------------------------
# the guides on the learner's own run: the quick path that guide 01 and the README tell them to run

QUICK_COMMAND = ["bash", "runs/cpu_demo.sh", "--quick"]
QUICK_TAG = "d4q"


def git_status():
    """Changed, new and ignored files of the repo (report.md, say, is ignored), less the virtual
    environment and the caches of Python and of the test tools."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if not line.startswith(("!! .venv/", "!! .hypothesis/"))
            and "__pycache__/" not in line and not line.endswith(".pyc")]


def new_in_repo(before):
    """Lines of git_status() that were not there before: files written or changed since (a file
    that someone commits meanwhile drops out of the status, and is not counted)."""
    return [line for line in git_status() if line not in before]


def tree_hashes(root):
    """{relative path: sha256} of every file under root."""
    hashes = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Runs exactly QUICK_COMMAND, as a learner would (the demo picks its own thread count), with
    NANOCHAT_BASE_DIR in a temp dir; the repo's git status is taken before it."""
    base = tmp_path_factory.mktemp("quick_base")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(NANOCHAT_BASE_DIR=str(base), NO_COLOR="1")
    # an earlier quick run that never saved a checkpoint: the demo must move it aside, not mix with it
    earlier = base / "base_checkpoints" / QUICK_TAG
    earlier.mkdir(parents=True)
    (earlier / "metrics.jsonl").write_text('{"step": 1, "train_loss": 9.0}\n')
    repo_before = git_status()
    done = subprocess.run(QUICK_COMMAND, cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
    return SimpleNamespace(base=base, returncode=done.returncode, stdout=done.stdout, stderr=done.stderr,
                           repo_before=repo_before)


@pytest.mark.slow
def test_the_quick_path_reaches_a_chat_answer_and_writes_its_checkpoints(quick_run):
    from nanochat import checkpoint_manager as cm
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    out = quick_run.stdout
    assert "=== talk to your model" in out and "=== quick demo done in" in out
    answer = out.split("=== talk to your model", 1)[1].split("=== quick demo done in", 1)[0]
    assert answer.strip() != "", "chat_cli printed no answer"
    assert f"python -m scripts.chat_cli -i sft -g {QUICK_TAG}" in out and "bash runs/cpu_demo.sh" in out
    for stage in ("base", "mid", "sft"):
        folder = cm.checkpoint_dir(stage, QUICK_TAG, base_dir=str(quick_run.base))
        steps = cm.list_complete_steps(folder)
        assert steps and steps[-1] == cm.read_meta(folder, steps[-1])["num_iterations"], (stage, steps)
        assert os.path.exists(os.path.join(folder, "metrics.jsonl"))
    assert sorted(os.listdir(os.path.join(quick_run.base, "tokenizer"))) == [
        "token_bytes.pt", "tokenizer.json", "tokenizer.tiktoken"]
    # the demo wrote no file into the repo (new files only: the run takes minutes, and on a shared
    # checkout someone may edit a tracked file meanwhile; the guides' test below checks edits too)
    assert [line for line in new_in_repo(quick_run.repo_before) if line.startswith(("??", "!!"))] == []
    aside = [d for d in os.listdir(os.path.join(quick_run.base, "base_checkpoints")) if d != QUICK_TAG]
    assert len(aside) == 1 and aside[0].startswith(f"{QUICK_TAG}.previous-"), aside
    assert "moved the previous demo's base_checkpoints/d4q aside" in out
    with open(os.path.join(quick_run.base, "base_checkpoints", aside[0], "metrics.jsonl")) as f:
        assert f.read() == '{"step": 1, "train_loss": 9.0}\n'


@pytest.mark.slow
def test_every_guide_runs_in_order_on_the_quick_run_and_changes_nothing(quick_run, tmp_path, monkeypatch):
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    run_before = tree_hashes(quick_run.base)        # the checkpoints and the report card
    assert any(path.startswith("report" + os.sep) for path in run_before)
    repo_before = git_status()
    work = tmp_path / "work"
    with as_a_reader(quick_run.base, work, monkeypatch):
        for guide in guide_files():
            run_markdown(os.path.join(DOCS, guide))
    after = tree_hashes(quick_run.base)
    changed = sorted(p for p in set(run_before) | set(after) if run_before.get(p) != after.get(p))
    assert not changed, f"a snippet changed the learner's run: {changed[:10]}"
    assert os.listdir(work) == [], "a snippet left files in the current folder: use tempfile.mkdtemp()"
    assert new_in_repo(repo_before) == [], "a snippet changed the repository"


def test_guide_01_and_the_readme_give_the_quick_command():
    command = " ".join(QUICK_COMMAND)
    for path in (os.path.join(DOCS, "01-introduction.md"), os.path.join(REPO, "README.md")):
        with open(path, encoding="utf-8") as f:
            assert command in f.read(), f"{os.path.basename(path)} does not give `{command}`"


def test_the_demo_script_prints_usage_and_refuses_unknown_arguments():
    help_ = subprocess.run(["bash", "runs/cpu_demo.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    assert help_.returncode == 0 and help_.stdout.startswith("usage: bash runs/cpu_demo.sh [--quick]")
    assert "--quick" in help_.stdout and QUICK_TAG in help_.stdout
    bad = subprocess.run(["bash", "runs/cpu_demo.sh", "--quik"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: unknown argument '--quik'")


# -----------------------------------------------------------------------------
# what guide 08 says about the demo, the speedrun and the error messages (pinned here, not in the guide)

def read_doc(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return f.read()


def read_run(name):
    with open(os.path.join(REPO, "runs", name), encoding="utf-8") as f:
        return f.read()


def test_guide_08_table_lists_the_full_demos_commands_in_order():
    full_path = read_run("cpu_demo.sh").split('if [ "$QUICK" = 1 ]; then', 1)[1]
    in_script = [line.split()[2] for line in full_path.splitlines() if line.lstrip().startswith("python -m ")]
    in_script = [m for i, m in enumerate(in_script) if i == 0 or m != in_script[i - 1]]  # the chat_eval loop once
    section = read_doc("08-quick-start.md").split("## 2. What the CPU demo does")[1].split("\n## ")[0]
    in_table = re.findall(r"^\| [^|]+ \| `python -m ([^`\s]+)", section, re.M)
    assert in_table == in_script[:-1]  # the last, nanochat_tasks.examples, only prints the prompts
    assert "BASE_STEPS=${BASE_STEPS:-300}" in read_run("cpu_demo.sh") and "(default 300)" in section


def test_guide_08_speedrun_variables_are_the_scripts():
    speedrun = read_run("speedrun.sh")
    assert "NPROC=${NPROC:-8}" in speedrun and "DEPTH=${DEPTH:-20}" in speedrun
    assert 'run scripts.base_train --depth "$DEPTH" --target-param-data-ratio 20' in speedrun
    assert "NPROC=4 DEPTH=12 bash runs/speedrun.sh" in read_doc("08-quick-start.md")


def message_pattern(message, base):
    """A message of the code as the guide's table writes it: ~/.cache/nanochat for the base dir,
    any d<N> tag, any step list."""
    text = re.escape(message.replace(str(base), "~/.cache/nanochat"))
    text = re.sub(r"d\d+", r"d\\d+", text)
    return re.sub(r"(?:\d+,\\ )*\d+", r"[\\d, ]+", text)


def test_guide_08_error_table_holds_the_codes_messages(tiny_run, tmp_path, monkeypatch):
    from nanochat.common import UserError
    from nanochat.tokenizer import get_tokenizer
    from nanochat.checkpoint_manager import load_model

    def message(call, *args, **kwargs):
        with pytest.raises(UserError) as info:
            call(*args, **kwargs)
        return str(info.value)

    section = read_doc("08-quick-start.md").split("## 8. When something goes wrong")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `error: (.+?)` \|", section, re.M)
    assert len(rows) >= 5
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    found = [(message(get_tokenizer), tmp_path), (message(load_model, "sft", "cpu"), tmp_path)]
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tiny_run))
    found += [(message(load_model, "base", "cpu", model_tag="d9"), tiny_run),
              (message(load_model, "base", "cpu", step=5), tiny_run)]
    if not torch.cuda.is_available():
        from nanochat.common import compute_init
        found.append((message(compute_init, "cuda"), tiny_run))
    for text, base in found:
        assert any(re.fullmatch(message_pattern(text, base), row) for row in rows), f"not in guide 08's table: {text}"


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
