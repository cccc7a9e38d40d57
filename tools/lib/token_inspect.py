"""
Looking inside the tokenizer: what each token of a text is, how well text compresses, what the
vocabulary holds, how it compares with GPT-2 / GPT-4 encodings, and which tokens of a chat are
supervised.

Pipeline position: beside nanochat/tokenizer.py, for learning and debugging. The tokenizer
playground (tools/tokenizer_playground.py) prints what these functions return.
"""

import os
import unicodedata
from dataclasses import dataclass

from nanochat.common import UserError

# what each special token does in a conversation (see RustBPETokenizer.render_conversation)
SPECIAL_TOKEN_ROLES = {
    "<|bos|>": "beginning of sequence: starts every document and every conversation",
    "<|user_start|>": "opens a user message",
    "<|user_end|>": "closes a user message",
    "<|assistant_start|>": "opens an assistant reply; at inference the prompt ends here",
    "<|assistant_end|>": "closes an assistant reply; the model learns to emit it to stop",
    "<|python_start|>": "the assistant starts a calculator / python tool call",
    "<|python_end|>": "ends the tool call; the engine runs it now",
    "<|output_start|>": "the tool's result begins (forced by the engine, never trained on)",
    "<|output_end|>": "the tool's result ends",
}

TOKEN_TYPES = ("alphabetic", "numeric", "whitespace", "punctuation", "multi-byte", "partial UTF-8", "mixed", "special")

DEMO_CONVERSATION = {"messages": [
    {"role": "user", "content": "What is 12 times 7?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me compute it. "},
        {"type": "python", "text": "12*7"},
        {"type": "python_output", "text": "84"},
        {"type": "text", "text": "12 times 7 is 84."},
    ]},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]}


def visible(text):
    """Whitespace made visible: space ·, newline ↵, tab →, carriage return ␍."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "→").replace("\r", "␍")


def classify_bytes(data, special=False):
    """The type of a token from its bytes (see TOKEN_TYPES)."""
    if special:
        return "special"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "partial UTF-8"  # a piece of a multi-byte character: only whole with its neighbour
    if text.strip() == "":
        return "whitespace"
    core = text.strip()
    if any(ord(c) > 127 for c in core):
        return "multi-byte" if not core.isalpha() else "alphabetic"
    if core.isdigit():
        return "numeric"
    if core.isalpha():
        return "alphabetic"
    if all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punctuation"
    return "mixed"


@dataclass
class TokenInfo:
    index: int
    id: int
    text: str       # as decoded (U+FFFD for a partial character)
    nbytes: int
    type: str
    hex: str = ""   # the bytes in hex, for tokens that are only part of a character

    @property
    def shown(self):
        if self.type == "partial UTF-8":
            return "".join(f"<{self.hex[i:i + 2]}>" for i in range(0, len(self.hex), 2))
        return visible(self.text)


def tokenize(tokenizer, text):
    """Every token of `text`: index, id, text, byte length and type."""
    ids = tokenizer.encode(text)
    return token_infos(tokenizer, ids)


def token_infos(tokenizer, ids):
    out = []
    for i, t in enumerate(ids):
        special = tokenizer.is_special(t)
        data = b"" if special else tokenizer.token_to_bytes(t)
        kind = classify_bytes(data, special)
        out.append(TokenInfo(i, t, tokenizer.id_to_token(t), len(data), kind, data.hex() if kind == "partial UTF-8" else ""))
    return out


def text_stats(tokenizer, text, ids=None):
    """Tokens, characters, UTF-8 bytes and the compression ratios of one text."""
    ids = tokenizer.encode(text) if ids is None else ids
    n, nbytes = len(ids), len(text.encode("utf-8"))
    return {"tokens": n, "chars": len(text), "bytes": nbytes,
            "bytes_per_token": nbytes / n if n else 0.0, "chars_per_token": len(text) / n if n else 0.0}


def special_tokens(tokenizer):
    """[(name, id, role)] of the special tokens, in id order."""
    return [(name, tokenizer.encode_special(name), SPECIAL_TOKEN_ROLES.get(name, "")) for name in tokenizer.get_special_tokens()]


def vocab_stats(tokenizer, top=10, samples=8):
    """Size, token byte-length histogram, longest tokens and samples of the merge order.

    Ids 0-255 are the raw bytes; every id after that is a merge, in the order training learned
    them (the most frequent pair first), so the id itself tells how common a piece was."""
    n = tokenizer.get_vocab_size()
    regular = [t for t in range(n) if not tokenizer.is_special(t)]
    lengths = {t: len(tokenizer.token_to_bytes(t)) for t in regular}
    hist = {}
    for L in lengths.values():
        hist[L] = hist.get(L, 0) + 1
    types = {}
    for t in regular:
        k = classify_bytes(tokenizer.token_to_bytes(t))
        types[k] = types.get(k, 0) + 1
    longest = sorted(regular, key=lambda t: (-lengths[t], t))[:top]
    merges = [t for t in regular if t >= 256]
    pick = lambda seq: seq[:samples]
    mid = len(merges) // 2
    return {
        "vocab_size": n,
        "byte_tokens": sum(1 for t in regular if t < 256),
        "merges": len(merges),
        "special": n - len(regular),
        "length_histogram": dict(sorted(hist.items())),
        "type_counts": types,
        "mean_token_bytes": sum(lengths.values()) / max(1, len(lengths)),
        "longest": [(t, tokenizer.id_to_token(t), lengths[t]) for t in longest],
        "first_merges": [(t, tokenizer.id_to_token(t)) for t in pick(merges)],
        "middle_merges": [(t, tokenizer.id_to_token(t)) for t in merges[mid:mid + samples]],
        "last_merges": [(t, tokenizer.id_to_token(t)) for t in merges[-samples:]],
    }


# -----------------------------------------------------------------------------
# comparison with published encodings

def reference_counts(text, names):
    """For each name: ('ok', encoding name, token count) or ('unavailable', name, one-line reason)."""
    from nanochat.tokenizer import get_reference_encoding
    out = []
    for name in names:
        try:
            enc = get_reference_encoding(name)
        except UserError as e:
            out.append(("unavailable", name, str(e)))
            continue
        out.append(("ok", enc.name, len(enc.encode(text))))
    return out


def reference_split(text, name):
    """How a published encoding splits `text`: (encoding name, [TokenInfo]). Not available
    offline (no tiktoken cache, no bpe-openai) is a UserError whose sentence says so."""
    from nanochat.tokenizer import get_reference_encoding
    enc = get_reference_encoding(name)
    out = []
    for i, t in enumerate(enc.encode(text)):
        # both backends (tiktoken, bpe-openai) have it; the bytes show a piece of a character as it is
        data = enc._enc.decode_single_token_bytes(t)
        kind = classify_bytes(data)
        out.append(TokenInfo(i, t, data.decode("utf-8", "replace"), len(data), kind,
                             data.hex() if kind == "partial UTF-8" else ""))
    return enc.name, out


def compare_with_references(tokenizer, text, names):
    """Rows {name, tokens, bytes_per_token, vs_ours, note} for ours and each reference encoding."""
    nbytes = len(text.encode("utf-8"))
    ours = len(tokenizer.encode(text))
    rows = [{"name": f"ours (vocab {tokenizer.get_vocab_size():,})", "tokens": ours,
             "bytes_per_token": nbytes / ours if ours else 0.0, "vs_ours": 1.0, "note": ""}]
    for status, name, value in reference_counts(text, names):
        if status == "ok":
            rows.append({"name": name, "tokens": value, "bytes_per_token": nbytes / value if value else 0.0,
                         "vs_ours": value / ours if ours else None, "note": ""})
        else:
            rows.append({"name": name, "tokens": None, "bytes_per_token": None, "vs_ours": None, "note": value})
    return rows


def read_text_file(path, max_bytes=None):
    """A user's text file as str; missing, a folder, or not UTF-8 is a UserError."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; give a text file")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes) if max_bytes else f.read()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}; check the path") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if max_bytes and len(data) == max_bytes and e.start >= len(data) - 3:
            return data[:e.start].decode("utf-8")  # we cut a character in half at the size limit
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from None


# -----------------------------------------------------------------------------
# chat rendering

def conversation_from_turns(turns):
    """{'messages': ...} from alternating texts: user, assistant, user, ..."""
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


def chat_supervision(tokenizer, conversation, max_tokens=None):
    """Render a conversation for training: (ids, mask, stats). mask 1 = the model is trained to
    predict that token. Invalid conversations are a UserError listing every problem."""
    from nanochat.conversation_check import validate_conversation, conversation_messages
    problems = validate_conversation(conversation)
    if problems:
        raise UserError("the conversation is not valid: " + "; ".join(str(p) for p in problems))
    conv = {"messages": conversation_messages(conversation)}
    ids, mask = tokenizer.render_conversation(conv, max_tokens=max_tokens)
    sup = sum(mask)
    return ids, mask, {"tokens": len(ids), "supervised": sup, "not_supervised": len(ids) - sup,
                       "supervised_share": sup / len(ids) if ids else 0.0}


def supervision_lines(tokenizer, ids, mask, color):
    """A rendered conversation with its loss mask made visible, as lines to print: coloured
    backgrounds in a terminal, [brackets] around supervised tokens in plain text."""
    if color:
        return [tokenizer.visualize_tokenization(ids, mask),
                "  green = supervised (the model learns to predict it), grey = context only"]
    text = "".join(f"[{visible(tokenizer.id_to_token(t))}]" if m else visible(tokenizer.id_to_token(t))
                   for t, m in zip(ids, mask))
    return [text, "  [bracketed] = supervised (the model learns to predict it); the rest is context only"]
