"""
Checking conversations (the CustomJSON format) and whole JSONL files of them, reporting EVERY
defect with its line number, not just the first one.

Pipeline position: before finetuning. The dataset inspector (tools/dataset_inspector.py) and the
conversation template builder (tools/conversation_template_builder.py) call this; the training
loader (nanochat_tasks/customjson.py) applies the same rules and stops at the first bad line.

A valid conversation is a JSON list of messages, or an object {"messages": [...]}:
an optional system message first, then user and assistant strictly taking turns, starting with
user and ending with assistant. Every content is a non-empty string; an assistant's content may
instead be a non-empty list of parts {"type": "text"|"python"|"python_output", "text": str}.

    from nanochat.conversation_check import validate_conversation, validate_jsonl
    problems = validate_conversation([{"role": "user", "content": "Hi"}])
    # -> [Problem(code='no_final_assistant', message='the conversation ends with ...')]
    report = validate_jsonl("data.jsonl")
    for p in report.problems:
        print(p)            # 'line 3: message 1 has role 'user' but 'assistant' was expected ...'
    report.ok, report.valid_count, report.bad_lines, report.to_dict()
"""

import os
import json
from dataclasses import dataclass, field, asdict

from nanochat.common import UserError

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")

# every kind of problem, with what it means (a stable code that tests and reports can rely on)
PROBLEM_CODES = {
    "not_utf8": "the line is not UTF-8 text",
    "bad_json": "the line is not valid JSON",
    "not_a_conversation": "not a list of messages nor an object with a 'messages' list",
    "empty_conversation": "no messages (or only a system message)",
    "not_a_message": "a message is not a JSON object",
    "missing_role": "a message has no 'role'",
    "missing_content": "a message has no 'content'",
    "unknown_role": "a role other than system, user, assistant",
    "misplaced_system": "a system message that is not the first message",
    "alternation": "user and assistant do not take turns (starting with user)",
    "no_final_assistant": "the conversation does not end with an assistant message",
    "empty_content": "a message with empty or whitespace-only content",
    "non_string_content": "content that is not a string (lists of parts are allowed for the assistant only)",
    "bad_part": "an assistant content part that is not {type: text|python|python_output, text: str}",
}


@dataclass
class Problem:
    code: str                        # one of PROBLEM_CODES
    message: str                     # a sentence for the user
    line: int | None = None          # 1-based line in the JSONL file, when known
    message_index: int | None = None  # 0-based index of the message, when it concerns one

    def __str__(self):
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


def conversation_messages(obj):
    """The list of messages of a conversation object (a list, or a dict with 'messages'), or None."""
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
        return obj["messages"]
    return None


def _check_content(i, role, content):
    """Problems of one message's content."""
    if isinstance(content, str):
        if not content.strip():
            return [Problem("empty_content", f"message {i} ({role}) has empty content", message_index=i)]
        return []
    if isinstance(content, list) and role == "assistant":
        if not content:
            return [Problem("empty_content", f"message {i} (assistant) has an empty list of parts", message_index=i)]
        problems = []
        for j, part in enumerate(content):
            if (not isinstance(part, dict) or part.get("type") not in PART_TYPES
                    or not isinstance(part.get("text"), str)):
                problems.append(Problem("bad_part", f"message {i} part {j} must be "
                                        f"{{\"type\": {'|'.join(PART_TYPES)}, \"text\": a string}}", message_index=i))
        return problems
    kind = "null" if content is None else type(content).__name__
    return [Problem("non_string_content", f"message {i} ({role}) has content of type {kind}; it must be a string"
                    + (" or a list of parts" if role == "assistant" else ""), message_index=i)]


def validate_conversation(obj):
    """Every problem of one conversation, as a list of Problem (empty when it is valid)."""
    messages = conversation_messages(obj)
    if messages is None:
        return [Problem("not_a_conversation", "expected a list of messages or an object with a 'messages' list, "
                        f"got {type(obj).__name__}")]
    problems = []
    roles = []  # known role of each message, or None
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(Problem("not_a_message", f"message {i} is a {type(m).__name__}, not an object "
                                    "with 'role' and 'content'", message_index=i))
            roles.append(None)
            continue
        role = m.get("role")
        if "role" not in m:
            problems.append(Problem("missing_role", f"message {i} has no 'role'", message_index=i))
        elif role not in ROLES:
            problems.append(Problem("unknown_role", f"message {i} has unknown role {role!r} "
                                    f"(use {', '.join(ROLES)})", message_index=i))
        elif role == "system" and i != 0:
            problems.append(Problem("misplaced_system", f"message {i} is a system message; only the first "
                                    "message may be one", message_index=i))
        known = role if role in ROLES else None
        roles.append(known)
        if "content" not in m:
            problems.append(Problem("missing_content", f"message {i} has no 'content'", message_index=i))
        else:
            problems.extend(_check_content(i, known or "unknown role", m["content"]))

    start = 1 if roles and roles[0] == "system" else 0
    body = [(i, r) for i, r in enumerate(roles) if i >= start]
    if not body:
        problems.append(Problem("empty_conversation", "the conversation has no user/assistant messages"))
        return problems
    # turn-taking, judged between neighbours so one slip is reported once, not at every later message
    previous = None
    for i, role in body:
        if role not in ("user", "assistant"):
            previous = None  # unknown / misplaced: already reported; restart the check after it
            continue
        expected = "user" if previous in (None, "assistant") else "assistant"
        if previous is None and i == start and role != "user":
            problems.append(Problem("alternation", f"message {i} has role 'assistant' but the conversation must "
                                    "start with 'user' (after an optional system message)", message_index=i))
        elif previous is not None and role != expected:
            problems.append(Problem("alternation", f"message {i} has role {role!r} but {expected!r} was expected: "
                                    f"two {role} messages in a row", message_index=i))
        previous = role
    if body[-1][1] != "assistant":
        problems.append(Problem("no_final_assistant", "the conversation must end with an assistant message "
                                "(that is what the model learns from)", message_index=body[-1][0]))
    return problems


# -----------------------------------------------------------------------------
# JSONL files

@dataclass
class JSONLReport:
    path: str
    total_lines: int = 0
    blank_lines: int = 0
    conversations: list = field(default_factory=list)  # [(line, messages)] of the valid lines
    problems: list = field(default_factory=list)       # [Problem] with .line set

    @property
    def ok(self):
        return not self.problems and bool(self.conversations)

    @property
    def valid_count(self):
        return len(self.conversations)

    @property
    def bad_lines(self):
        return sorted({p.line for p in self.problems if p.line is not None})

    def counts_by_code(self):
        counts = {}
        for p in self.problems:
            counts[p.code] = counts.get(p.code, 0) + 1
        return counts

    def to_dict(self):
        """Machine-readable summary (for --json / --output report.json)."""
        return {
            "path": self.path, "total_lines": self.total_lines, "blank_lines": self.blank_lines,
            "valid": self.valid_count, "invalid": len(self.bad_lines), "ok": self.ok,
            "problem_counts": self.counts_by_code(),
            "problems": [asdict(p) for p in self.problems],
        }


def read_raw_lines(path):
    """The lines of a file as bytes (without line endings). File-level trouble is a UserError:
    missing file, a folder, unreadable, or binary / not UTF-8 at all."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; give a .jsonl file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}; check the path") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if b"\x00" in data[:8192]:
        raise UserError(f"{path} is a binary file, not UTF-8 text (JSONL: one JSON conversation per line)")
    lines = data.splitlines()
    nonblank = [raw for raw in lines if raw.strip()]
    if nonblank and not any(_decodes(raw) for raw in nonblank):
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8")
    return lines


def _decodes(raw):
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def iter_jsonl(path, lines=None):
    """Yield (line_number, parsed object or None, [Problem]) for every non-blank line of a JSONL file
    (`lines`: the file's raw lines when already read)."""
    for lineno, raw in enumerate(read_raw_lines(path) if lines is None else lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate an editor's BOM
        except UnicodeDecodeError as e:
            yield lineno, None, [Problem("not_utf8", f"not UTF-8 text (byte {e.start + 1} of the line)", lineno)]
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield lineno, None, [Problem("bad_json", f"not valid JSON ({e.msg} at column {e.colno})", lineno)]
            continue
        yield lineno, obj, []


def validate_jsonl(path):
    """Check every line of a conversation JSONL file; returns a JSONLReport listing all problems."""
    report = JSONLReport(path=os.fspath(path))
    lines = read_raw_lines(path)
    report.total_lines = len(lines)
    report.blank_lines = sum(1 for raw in lines if not raw.strip())
    for lineno, obj, problems in iter_jsonl(path, lines):
        if obj is not None:
            problems = validate_conversation(obj)
        for p in problems:
            p.line = lineno
        report.problems.extend(problems)
        if obj is not None and not problems:
            report.conversations.append((lineno, conversation_messages(obj)))
    return report
