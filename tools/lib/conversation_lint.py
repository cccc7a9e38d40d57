"""
A linter for conversations as the model will be trained on them: the mistakes that pass every
structural check and still silently ruin finetuning.

Pipeline position: between a dataset of conversations and SFT. tools/conversation_template_builder.py
shows its findings; nanochat/conversation_check.py (structure: roles, turn-taking, content types)
runs first, and only a structurally valid conversation is rendered and linted.

What it flags, on the training render (token ids + loss mask, by default the tokenizer's own
render_conversation, or a render the user made some other way):
- doubled_bos: more than one <|bos|> (a pipeline that prepends BOS to an already rendered
  conversation); missing_bos: the render does not start with <|bos|>
- nothing_supervised: no token has mask 1, so the conversation teaches the model nothing
- truncated_all / truncated_some: cut at the chosen sequence length, every (or some) supervised
  assistant token is lost
- train_inference_mismatch: what the model sees in training before an assistant turn differs from
  the prompt the engine builds at inference (tokenizer.render_for_completion), or a tool result in
  the data differs from what the calculator will really insert at inference
- special_token_text: a special-token string typed inside a message; it is encoded as plain text,
  so the model learns to write it, never to use the real token
"""

from dataclasses import dataclass, asdict

from nanochat.conversation_check import validate_conversation, conversation_messages
from nanochat.tokenizer import SPECIAL_TOKENS
from nanochat.calculator import use_calculator

LINT_CODES = {
    "invalid": "the conversation's structure is wrong (see conversation_check)",
    "doubled_bos": "more than one <|bos|> token in one conversation",
    "missing_bos": "the render does not start with <|bos|>",
    "nothing_supervised": "no token is trained on (the loss mask is all zeros)",
    "truncated_all": "at the chosen length, truncation cuts off every supervised token",
    "truncated_some": "at the chosen length, truncation cuts off part of the assistant's tokens",
    "train_inference_mismatch": "the training render differs from what the engine feeds at inference",
    "special_token_text": "a special-token string inside a message is encoded as plain text",
}


@dataclass
class LintIssue:
    code: str
    severity: str   # "error" (the conversation is useless or harmful as is) or "warning"
    message: str

    def __str__(self):
        return f"{self.severity}: {self.message}"


@dataclass
class LintReport:
    issues: list
    ids: list = None
    mask: list = None
    num_tokens: int = 0
    supervised: int = 0
    supervised_kept: int = 0   # supervised tokens left after truncation at max_seq_len
    max_seq_len: int = None

    @property
    def ok(self):
        return not any(i.severity == "error" for i in self.issues)

    def codes(self):
        return [i.code for i in self.issues]

    def to_dict(self):
        return {"ok": self.ok, "num_tokens": self.num_tokens, "supervised": self.supervised,
                "supervised_kept": self.supervised_kept, "max_seq_len": self.max_seq_len,
                "issues": [asdict(i) for i in self.issues]}


def lint_conversation(tokenizer, conversation, max_seq_len=None, rendered=None):
    """Lint one conversation. Returns a LintReport.

    conversation: a list of messages or {"messages": [...]}. rendered: (ids, mask) of the training
    render to check, when it was made some other way than tokenizer.render_conversation."""
    problems = validate_conversation(conversation)
    if problems:
        return LintReport([LintIssue("invalid", "error", str(p)) for p in problems], max_seq_len=max_seq_len)
    messages = conversation_messages(conversation)
    issues = []
    if rendered is None:
        ids, mask = tokenizer.render_conversation({"messages": messages}, max_tokens=None)
    else:
        ids, mask = list(rendered[0]), list(rendered[1])
        if len(ids) != len(mask):
            raise ValueError(f"the render has {len(ids)} ids but {len(mask)} mask values")
    bos = tokenizer.get_bos_token_id()

    n_bos = ids.count(bos)
    if n_bos > 1:
        where = [i for i, t in enumerate(ids) if t == bos]
        issues.append(LintIssue("doubled_bos", "error", f"{n_bos} <|bos|> tokens (at positions "
                                f"{', '.join(map(str, where[:5]))}); a conversation starts with exactly one, "
                                "so BOS was probably added twice (e.g. prepended to an already rendered conversation)"))
    elif not ids or ids[0] != bos:
        issues.append(LintIssue("missing_bos", "error", "the render does not start with <|bos|>; "
                                "the model was pretrained with every document starting with it"))

    supervised = sum(1 for m in mask if m)
    if supervised == 0:
        issues.append(LintIssue("nothing_supervised", "error", "no token is supervised (the loss mask is all "
                                "zeros): training on this conversation changes nothing"))
    kept = supervised
    if max_seq_len is not None and len(ids) > max_seq_len:
        kept = sum(1 for m in mask[:max_seq_len] if m)
        lost = supervised - kept
        if supervised and kept == 0:
            issues.append(LintIssue("truncated_all", "error", f"the conversation is {len(ids)} tokens; cut at "
                                    f"{max_seq_len}, all {supervised} supervised tokens are lost (the assistant "
                                    "starts after the cut): shorten the user turn or raise the length"))
        elif lost:
            issues.append(LintIssue("truncated_some", "warning", f"the conversation is {len(ids)} tokens; cut at "
                                    f"{max_seq_len}, {lost} of {supervised} supervised tokens are lost "
                                    "(the end of the assistant's reply is never learned)"))

    issues.extend(_inference_mismatches(tokenizer, messages, ids))
    issues.extend(_tool_output_mismatches(tokenizer, messages))
    issues.extend(_special_token_text(messages))
    return LintReport(issues, ids, mask, len(ids), supervised, kept, max_seq_len)


def _inference_mismatches(tokenizer, messages, ids):
    """Compare the training ids before each assistant turn with render_for_completion's prompt."""
    issues = []
    assistant_start = tokenizer.encode_special("<|assistant_start|>")
    starts = [i for i, t in enumerate(ids) if t == assistant_start]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(starts) != len(turns):
        return [LintIssue("train_inference_mismatch", "error", f"the render has {len(starts)} <|assistant_start|> "
                          f"tokens for {len(turns)} assistant messages; at inference every reply follows one")]
    for k, (pos, msg_index) in enumerate(zip(starts, turns)):
        prompt = tokenizer.render_for_completion({"messages": messages[:msg_index]})
        trained = ids[:pos + 1]
        if trained != prompt:
            first = next((j for j, (a, b) in enumerate(zip(trained, prompt)) if a != b), min(len(trained), len(prompt)))
            got = tokenizer.decode(trained[first:first + 8])
            want = tokenizer.decode(prompt[first:first + 8])
            issues.append(LintIssue("train_inference_mismatch", "error", f"before assistant turn {k + 1} the "
                                    f"training render differs from the inference prompt at token {first}: "
                                    f"training has {got!r}, the engine feeds {want!r}"))
            break  # later turns share the same prefix: one report is enough
    return issues


def _tool_output_mismatches(tokenizer, messages):
    """A python_output in the data must be what the engine forces in after that python call."""
    issues = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or isinstance(m["content"], str):
            continue
        parts = m["content"]
        for j, part in enumerate(parts):
            if part["type"] != "python":
                continue
            result = use_calculator(part["text"])
            following = parts[j + 1] if j + 1 < len(parts) and parts[j + 1]["type"] == "python_output" else None
            if result is None:
                if following is not None:
                    issues.append(LintIssue("train_inference_mismatch", "warning", f"message {i}: the calculator "
                                            f"cannot evaluate {part['text']!r}, so at inference no output follows it, "
                                            f"but the data shows {following['text']!r}"))
                continue
            engine_text = str(result)
            if following is None:
                issues.append(LintIssue("train_inference_mismatch", "error", f"message {i}: after the python call "
                                        f"{part['text']!r} the engine inserts the output {engine_text!r}, but the "
                                        "data has no python_output part"))
            elif tokenizer.encode(following["text"]) != tokenizer.encode(engine_text):
                issues.append(LintIssue("train_inference_mismatch", "error", f"message {i}: the data's tool output "
                                        f"{following['text']!r} differs from what the calculator returns at inference "
                                        f"({engine_text!r})"))
    return issues


def _special_token_text(messages):
    issues = []
    for i, m in enumerate(messages):
        contents = [m["content"]] if isinstance(m["content"], str) else [p["text"] for p in m["content"]]
        found = sorted({s for s in SPECIAL_TOKENS for c in contents if s in c})
        if found:
            issues.append(LintIssue("special_token_text", "warning", f"message {i} contains {', '.join(found)} as "
                                    "text; it is encoded as ordinary characters, not as the special token"))
    return issues


def lint_jsonl(tokenizer, path, max_seq_len=None):
    """Lint every line of a conversation JSONL. Returns (conversation_check.JSONLReport,
    [(line, LintReport)] for the structurally valid lines)."""
    from nanochat.conversation_check import validate_jsonl
    report = validate_jsonl(path)
    linted = [(line, lint_conversation(tokenizer, messages, max_seq_len)) for line, messages in report.conversations]
    return report, linted

