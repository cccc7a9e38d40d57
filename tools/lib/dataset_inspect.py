"""
Looking at training data before training on it: conversation JSONL (the CustomJSON format) and
pretraining shards (.parquet / .txt / .jsonl with a "text" field).

Pipeline position: before tok_train / base_train (shards) and before chat_sft (conversations).
The dataset inspector (tools/dataset_inspector.py) prints what these functions return.
Validation itself lives in nanochat/conversation_check.py; this module adds statistics, samples,
exact-duplicate detection, an export for human review and a cleaned copy (--fix).
"""

import os
import json
import random
import hashlib
from dataclasses import dataclass, field

from nanochat.common import UserError
from nanochat.conversation_check import validate_jsonl, read_raw_lines

PRETRAIN_EXTS = (".parquet", ".txt")


def percentiles(values, ps=(50, 90, 99)):
    """{p: value} by the nearest-rank method, plus 'min', 'max' and 'mean'."""
    if not values:
        return {}
    s = sorted(values)
    out = {p: s[min(len(s) - 1, max(0, -(-p * len(s) // 100) - 1))] for p in ps}
    out.update(min=s[0], max=s[-1], mean=sum(s) / len(s))
    return out


def detect_kind(path):
    """'conversations' or 'pretraining' for a file or folder."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"no such file or folder: {path}; check the path")
    if os.path.isdir(path):
        return "pretraining"
    ext = os.path.splitext(path)[1].lower()
    if ext in PRETRAIN_EXTS:
        return "pretraining"
    if ext == ".jsonl":
        for raw in read_raw_lines(path):
            try:
                obj = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            is_text = isinstance(obj, dict) and isinstance(obj.get("text"), str) and "messages" not in obj
            return "pretraining" if is_text else "conversations"
        return "conversations"
    raise UserError(f"{path}: cannot inspect {ext or 'extension-less'} files; use .jsonl (conversations or "
                    "{\"text\": ...} documents), .parquet or .txt")


# -----------------------------------------------------------------------------
# conversations

def canonical(obj):
    """A stable string for exact-duplicate detection (key order and spacing do not matter)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def find_duplicates(items):
    """items: [(line, key string)]. Returns [[line, line, ...]] for every key seen more than once."""
    groups = {}
    for line, key in items:
        groups.setdefault(hashlib.sha1(key.encode("utf-8")).hexdigest(), []).append(line)
    return [lines for lines in groups.values() if len(lines) > 1]


def role_stats(conversations):
    """Counts of messages per role, turns per conversation, share with a system message."""
    roles, turns = {}, []
    with_system = 0
    for _, messages in conversations:
        turns.append(len(messages))
        with_system += messages[0]["role"] == "system"
        for m in messages:
            roles[m["role"]] = roles.get(m["role"], 0) + 1
    return {"messages_by_role": roles, "messages_per_conversation": percentiles(turns),
            "with_system_message": with_system}


def content_text(content):
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def length_stats(conversations, tokenizer=None, max_seq_len=2048):
    """Character and (with a tokenizer) token lengths per conversation, as rendered for training,
    and the share that --max-seq-len would truncate."""
    chars = [sum(len(content_text(m["content"])) for m in msgs) for _, msgs in conversations]
    out = {"chars": percentiles(chars), "char_lengths": chars}
    if tokenizer is not None:
        tokens = [len(tokenizer.render_conversation({"messages": msgs}, max_tokens=None)[0]) for _, msgs in conversations]
        truncated = sum(1 for t in tokens if t > max_seq_len)
        out.update(tokens=percentiles(tokens), token_lengths=tokens, max_seq_len=max_seq_len,
                   truncated=truncated, truncated_share=truncated / len(tokens) if tokens else 0.0)
    return out


def sample(conversations, n, seed=0):
    """n conversations picked at random (reproducibly), with their line numbers."""
    rng = random.Random(seed)
    return rng.sample(conversations, min(n, len(conversations)))


def format_conversation(lineno, messages, width=100):
    """A conversation as readable text for the terminal or a review file."""
    lines = [f"--- line {lineno} ({len(messages)} messages) ---"]
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            text = " ".join(f"[{p['type']}] {p['text']}" if p["type"] != "text" else p["text"] for p in content)
        else:
            text = content
        lines.append(f"{m['role'].upper()}: {text}")
    return "\n".join(lines)


def export_review(conversations, out_path, count, seed=0):
    """Write `count` random conversations to a text file for reading; returns how many."""
    picked = sample(conversations, count, seed)
    picked.sort(key=lambda c: c[0])
    try:
        with open(out_path, "w", encoding="utf-8") as f:
            for lineno, messages in picked:
                f.write(format_conversation(lineno, messages) + "\n\n")
    except OSError as e:
        raise UserError(f"cannot write {out_path}: {e.strerror}") from None
    return len(picked)


@dataclass
class FixResult:
    kept: int = 0
    dropped: list = field(default_factory=list)  # [(line, reason)]


def fix_jsonl(path, out_path):
    """Write a cleaned copy of a conversation JSONL: invalid lines and exact duplicates (after the
    first occurrence) are dropped, every dropped line is reported with its reason. Valid lines are
    copied byte for byte."""
    if os.path.abspath(out_path) == os.path.abspath(path):
        raise UserError("--fix must write to a new file, not over the input")
    report = validate_jsonl(path)
    reasons = {}
    for p in report.problems:
        reasons.setdefault(p.line, []).append(p.message)
    raw = read_raw_lines(path)
    result = FixResult()
    seen = {}
    keep_lines = []
    valid = dict(report.conversations)
    for lineno in range(1, len(raw) + 1):
        if not raw[lineno - 1].strip():
            continue
        if lineno in reasons:
            result.dropped.append((lineno, "; ".join(reasons[lineno])))
            continue
        key = canonical(valid[lineno])
        if key in seen:
            result.dropped.append((lineno, f"exact duplicate of line {seen[key]}"))
            continue
        seen[key] = lineno
        keep_lines.append(raw[lineno - 1])
    try:
        with open(out_path, "wb") as f:
            for line in keep_lines:
                f.write(line + b"\n")
    except OSError as e:
        raise UserError(f"cannot write {out_path}: {e.strerror}") from None
    result.kept = len(keep_lines)
    return result


def inspect_conversations(path, tokenizer=None, max_seq_len=2048):
    """Validation report, role and length statistics and duplicates of a conversation JSONL."""
    report = validate_jsonl(path)
    convs = report.conversations
    dups = find_duplicates([(line, canonical(msgs)) for line, msgs in convs])
    return {"report": report, "roles": role_stats(convs) if convs else None,
            "lengths": length_stats(convs, tokenizer, max_seq_len) if convs else None, "duplicates": dups}


# -----------------------------------------------------------------------------
# pretraining shards

def pretraining_files(path):
    """The data files of a pretraining file or folder (folder: what dataset.py would read)."""
    from nanochat.dataset import list_data_files
    if os.path.isdir(path):
        files = list_data_files(path)
        if not files:
            raise UserError(f"{path} holds no .parquet, .txt or .jsonl files")
        return files
    return [path]


def inspect_pretraining(path, tokenizer=None, progress=None):
    """Document count, document lengths (chars, tokens), exact duplicate documents of shards.

    Documents are read exactly as the dataloader reads them (dataset.iter_file_batches)."""
    from nanochat.dataset import iter_file_batches
    files = pretraining_files(path)
    chars, tokens, keys = [], [], []
    index = 0
    for fpath in (progress(files) if progress else files):
        for batch in iter_file_batches(fpath):
            if tokenizer is not None:
                tokens.extend(len(ids) for ids in tokenizer.encode(batch))
            for doc in batch:
                chars.append(len(doc))
                index += 1
                keys.append((index, doc))
    if not chars:
        raise UserError(f"{path} holds no documents")
    dups = find_duplicates(keys)
    out = {"files": files, "documents": len(chars), "total_chars": sum(chars), "chars": percentiles(chars),
           "char_lengths": chars, "duplicates": dups}
    if tokens:
        out.update(total_tokens=sum(tokens), tokens=percentiles(tokens), token_lengths=tokens,
                   chars_per_token=sum(chars) / max(1, sum(tokens)))
    return out
