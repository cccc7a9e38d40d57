"""
The report card: every stage writes its key figures here, and `generate` turns them into report.md.

Pipeline position: every script ends with `get_report().log(section=..., data=[...])`; the last
step of a run is `python -m nanochat.report generate`. Files live in $NANOCHAT_BASE_DIR/report/:

    header.md / header.json      environment and start time, written by `reset` (start of a run)
    <section-slug>.md            one stage's section, human-readable
    <section-slug>.json          the same data, machine-readable (the summary table reads these)
    report.md                    the assembled report card (also copied to the current folder)

The summary table (rows: CORE and the chat tasks; columns BASE / MID / SFT / RL) is filled from
sections with fixed names, so any script can feed it:
- "Base model evaluation" (scripts/base_eval.py): a dict with the key "CORE".
- chat_eval_section(source) = "Chat evaluation <source>" for source base/mid/sft/rl
  (scripts/chat_eval.py): a dict {task name: accuracy, ..., "ChatCORE": value}.
"""

import os
import re
import json
import time
import shutil
import socket
import argparse
import datetime
import platform
import subprocess

from nanochat.common import get_base_dir, repo_root, run_main, UserError, format_duration, ArgumentParser, cpu_name, \
    write_text_atomically

REPORT_DIR_NAME = "report"
BASE_EVAL_SECTION = "Base model evaluation"

# pipeline order of the sections the scripts write, each stage's evaluations right after it (the
# base model's chat evaluation too, though the demo runs it after SFT); sections not listed
# follow, oldest first
SECTION_ORDER = [
    "Tokenizer training", "Tokenizer evaluation",
    "Base model training", "Base model loss", "Base model evaluation", "Chat evaluation base",
    "Midtraining", "Chat evaluation mid",
    "Chat SFT", "Chat evaluation sft",
    "Chat RL", "Chat evaluation rl",
]
SUMMARY_ROWS = ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee",
                "SimpleSpelling", "Arithmetic", "TwoStepArithmetic", "ChatCORE"]
SUMMARY_COLUMNS = [("BASE", "base"), ("MID", "mid"), ("SFT", "sft"), ("RL", "rl")]


def chat_eval_section(source):
    """The section name chat_eval logs to for a model from `source` (base, mid, sft or rl)."""
    return f"Chat evaluation {source}"


def slugify(section):
    return re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-") or "section"


# -----------------------------------------------------------------------------
# rendering values

def format_value(value):
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:,.4f}"
    return str(value)


def render_data(data):
    """Markdown for a section's data: strings as paragraphs, dicts as bullet lists, and a run of
    dicts that all have the same keys (rows of a table) as one table."""
    if isinstance(data, (dict, str)):
        data = [data]
    out = []
    i = 0
    while i < len(data):
        item = data[i]
        if isinstance(item, dict):
            j = i
            while j < len(data) and isinstance(data[j], dict) and list(data[j]) == list(item):
                j += 1
            if j - i >= 2:
                keys = list(item)
                out.append("| " + " | ".join(keys) + " |")
                out.append("|" + "---|" * len(keys))
                for row in data[i:j]:
                    out.append("| " + " | ".join(format_value(row[k]) for k in keys) + " |")
                out.append("")
                i = j
                continue
            out.extend(f"- {k}: {format_value(v)}" for k, v in item.items())
            out.append("")
        else:
            out.extend([str(item), ""])
        i += 1
    return "\n".join(out)


# -----------------------------------------------------------------------------
# environment and code size

def _git(*args):
    try:
        out = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info():
    commit = _git("rev-parse", "--short", "HEAD")
    if commit is None:
        return {"Git": "not a git checkout"}
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"Git commit": commit + (" (dirty: uncommitted changes)" if dirty else " (clean)"),
            "Git branch": _git("rev-parse", "--abbrev-ref", "HEAD") or "detached"}


def environment_info():
    """Hardware and software facts for the report header, as an ordered dict."""
    import torch
    info = {"Host": socket.gethostname(), "Platform": f"{platform.system()} {platform.release()}",
            "CPU": f"{cpu_name()}, {os.cpu_count()} logical cores"}
    try:
        import psutil
        info["RAM"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        info["GPU"] = f"{n} x {props.name} ({props.total_memory / 2**30:.0f} GiB each)"
        info["CUDA"] = str(torch.version.cuda)
    else:
        info["GPU"] = "none (runs on the CPU)"
    info["Python"] = platform.python_version()
    info["PyTorch"] = torch.__version__
    info.update(git_info())
    return info


def code_size(root=None):
    """Lines, files and characters of the repository's Python, and a token estimate (chars / 4)."""
    root = root or repo_root()
    files = lines = chars = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("__pycache__", "node_modules")]
        for name in filenames:
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                files += 1
                lines += text.count("\n")
                chars += len(text)
    return {"Python files": files, "Lines": lines, "Characters": chars, "Tokens (about chars / 4)": chars // 4}


# -----------------------------------------------------------------------------
# the report

class Report:
    """Sections in a folder; see the module docstring."""

    def __init__(self, report_dir):
        self.report_dir = report_dir

    def _path(self, name):
        os.makedirs(self.report_dir, exist_ok=True)
        return os.path.join(self.report_dir, name)

    def log(self, section, data):
        """Write one stage's section (replacing an earlier one of the same name). Returns its .md path."""
        now = time.time()
        stamp = datetime.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S")
        slug = slugify(section)
        md = f"## {section}\n\nlogged {stamp}\n\n{render_data(data)}"
        write_text_atomically(self._path(slug + ".json"), json.dumps({"section": section, "time": now, "data": data},
                                                              indent=1, default=str))
        path = self._path(slug + ".md")
        write_text_atomically(path, md.rstrip() + "\n")
        return path

    def reset(self):
        """Start a new report: drop every section and write the header with the start time."""
        if os.path.isdir(self.report_dir):
            for name in os.listdir(self.report_dir):
                if name.endswith((".md", ".json")) and name != "report.md":
                    os.remove(os.path.join(self.report_dir, name))
        now = time.time()
        write_text_atomically(self._path("header.json"), json.dumps({"start_time": now}))
        write_text_atomically(self._path("header.md"), self._header_md(now))
        return self.report_dir

    def _header_md(self, start_time=None):
        lines = ["# nanochat report card", ""]
        if start_time is not None:
            lines += [f"Run started: {datetime.datetime.fromtimestamp(start_time):%Y-%m-%d %H:%M:%S}", ""]
        lines += ["## Environment", ""]
        lines += [f"- {k}: {v}" for k, v in environment_info().items()]
        return "\n".join(lines) + "\n"

    def sections(self):
        """[(section name, logged time, data, markdown)] in pipeline order."""
        found = []
        if not os.path.isdir(self.report_dir):
            return found
        for name in os.listdir(self.report_dir):
            if not name.endswith(".json") or name == "header.json":
                continue
            try:
                with open(os.path.join(self.report_dir, name), encoding="utf-8") as f:
                    record = json.load(f)
                with open(os.path.join(self.report_dir, name[:-5] + ".md"), encoding="utf-8") as f:
                    md = f.read()
            except (OSError, json.JSONDecodeError):
                continue
            found.append((record["section"], record.get("time", 0.0), record.get("data", []), md))
        rank = {s: i for i, s in enumerate(SECTION_ORDER)}
        return sorted(found, key=lambda s: (rank.get(s[0], len(rank)), s[1]))

    def summary(self):
        """{row: {column: value}} of the summary table, from the base eval and chat eval sections."""
        by_name = {name: data for name, _, data, _ in self.sections()}
        table = {row: {} for row in SUMMARY_ROWS}

        def take(section, column):
            data = by_name.get(section, [])
            for item in data if isinstance(data, list) else [data]:
                if isinstance(item, dict):
                    for row in SUMMARY_ROWS:
                        if isinstance(item.get(row), (int, float)) and not isinstance(item.get(row), bool):
                            table[row][column] = float(item[row])

        for column, source in SUMMARY_COLUMNS:
            take(chat_eval_section(source), column)
        take(BASE_EVAL_SECTION, "BASE")
        return table

    def summary_markdown(self):
        table = self.summary()
        columns = [c for c, _ in SUMMARY_COLUMNS]
        lines = ["| Metric | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for row in SUMMARY_ROWS:
            cells = [f"{table[row][c]:.4f}" if c in table[row] else "-" for c in columns]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def generate(self, copy_to_cwd=True):
        """Assemble report.md (in the report folder, and copied to the current folder). Returns its path."""
        header_path = os.path.join(self.report_dir, "header.md")
        start_time = None
        if os.path.exists(header_path):
            with open(header_path, encoding="utf-8") as f:
                header = f.read()
            try:
                with open(os.path.join(self.report_dir, "header.json"), encoding="utf-8") as f:
                    start_time = json.load(f).get("start_time")
            except (OSError, json.JSONDecodeError):
                pass
        else:
            header = self._header_md()
        parts = [header.rstrip(), "", "## Code size", ""]
        parts += [f"- {k}: {format_value(v)}" for k, v in code_size().items()]
        parts.append("")
        sections = self.sections()
        for _, _, _, md in sections:
            parts += [md.rstrip(), ""]
        parts += ["## Summary", "", self.summary_markdown()]
        if start_time is not None:
            parts.append(f"Total wall clock time: {format_duration(time.time() - start_time)}")
        else:
            parts.append(f"Sections: {len(sections)} (the start time is unknown: "
                         f"`python -m nanochat.report reset` at the start of a run records it)")
        parts.append(f"\nGenerated {datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
        path = self._path("report.md")
        write_text_atomically(path, "\n".join(parts) + "\n")
        if copy_to_cwd:
            dest = os.path.join(os.getcwd(), "report.md")
            if os.path.abspath(dest) != os.path.abspath(path):
                shutil.copyfile(path, dest)
        return path


class DummyReport:
    """What ranks other than 0 get under torchrun: logging is done once, by rank 0."""

    def log(self, *args, **kwargs):
        return None

    def reset(self, *args, **kwargs):
        return None

    def generate(self, *args, **kwargs):
        return None


def get_report(base_dir=None):
    if int(os.environ.get("RANK", 0)) != 0:
        return DummyReport()
    return Report(os.path.join(base_dir or get_base_dir(), REPORT_DIR_NAME))


EXAMPLES = """examples:
  python -m nanochat.report reset       # at the start of a run: clear old sections, record the start time
  python -m nanochat.report generate    # at the end: write report.md here and in $NANOCHAT_BASE_DIR/report/"""


def main(argv=None):
    parser = ArgumentParser(prog="python -m nanochat.report", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Build the report card from the sections every stage logged.")
    parser.add_argument("command", choices=["generate", "reset"], help="generate report.md, or reset for a new run")
    args = parser.parse_args(argv)
    report = get_report()
    if args.command == "reset":
        print(f"new report started in {report.reset()}")
        return
    if not report.sections():
        raise UserError(f"no report sections in {report.report_dir}: run some pipeline stages first")
    path = report.generate()
    print(f"wrote {path} (and a copy at ./report.md)")


if __name__ == "__main__":
    run_main(main)
