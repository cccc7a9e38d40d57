"""Tests for nanochat/tokenizer.py: a tiny tokenizer trained on text made here, in well under a second."""

import copy
import gzip
import hashlib
import os
import random
import re

import pytest
import regex
import rustbpe

from nanochat.common import UserError
from nanochat import tokenizer as tokenizer_module
from nanochat.tokenizer import (
    SPECIAL_TOKENS, SPLIT_PATTERN, RustBPETokenizer, compute_token_bytes, get_reference_encoding,
    get_token_bytes, get_tokenizer, save_token_bytes, train_bpe_python,
)

VOCAB_SIZE = 512


def make_training_docs():
    """A few hundred small documents: English with numbers, code, Korean, CJK, emoji, whitespace."""
    rng = random.Random(0)
    words = ("the a model learns to predict next token from text data and we train it on many "
             "small examples of words numbers code").split()
    docs = []
    for _ in range(300):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(5, 15))).capitalize()
        docs.append(f"{sentence}. In {rng.randint(1900, 2030)} it cost {rng.randint(0, 10**8)} won.\n")
    docs += ["def add(a, b):\n    return a + b\n\n\tindented\twith\ttabs\n"] * 20
    docs += ["안녕하세요, 반갑습니다. 오늘은 날씨가 좋네요.", "日本語と中文的文本。", "Emoji: 😀🎉👩‍👩‍👧 🇰🇷"] * 20
    return docs


@pytest.fixture(scope="module")
def docs():
    return make_training_docs()


@pytest.fixture(scope="module")
def tok(docs):
    return RustBPETokenizer.train_from_iterator(iter(docs), VOCAB_SIZE)


HARD_TEXTS = {
    "empty": "",
    "emoji": "I 😀 tokens 🎉 family 👩‍👩‍👧 flag 🇰🇷 skin 👍🏽",
    "cjk": "日本語のテキストと中文的文本，还有標點。",
    "korean": "안녕하세요! 한국어 문장입니다. 띄어쓰기도   있어요.",
    "whitespace_runs": "a     b\n\n\n\nc          \n   \n",
    "tabs_and_newlines": "\tx\t\ty\r\n\r\nz\n\t\n",
    "combining_marks": "e\u0301 n\u0303 Z\u0324\u0354\u0367\u0311 a\u0308\u0308\u0308",
    "control_and_null": "nul\x00 bell\x07 esc\x1b[0m del\x7f",
    "special_token_text": "typing <|bos|> or <|assistant_end|> is just text",
    "replacement_char": "already \ufffd replaced \ufffd\ufffd",
    "long_digits": "pi is 3.14159265358979 and 1000000",
}


@pytest.mark.parametrize("name", sorted(HARD_TEXTS))
def test_round_trip_is_exact_on_hard_text(tok, name):
    text = HARD_TEXTS[name]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # byte-level: the tokens' bytes, concatenated, are exactly the UTF-8 of the text
    assert b"".join(tok.token_to_bytes(i) for i in ids) == text.encode("utf-8")


def test_round_trip_is_exact_on_random_bytes_decoded_with_replace(tok):
    # "invalid-looking bytes" reach a str API as U+FFFD (errors="replace"): valid text, so exact
    rng = random.Random(1)
    for _ in range(20):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
        text = raw.decode("utf-8", errors="replace")
        assert tok.decode(tok.encode(text)) == text


def test_lone_surrogates_are_encoded_as_replacement_characters(tok):
    # errors="surrogateescape" keeps each bad byte as a lone surrogate, which has no UTF-8 form;
    # the tokenizer encodes each one as U+FFFD (documented in encode())
    rng = random.Random(2)
    raw = b"ok " + bytes(rng.randrange(128, 256) for _ in range(50)) + b" done"
    text = raw.decode("utf-8", errors="surrogateescape")
    assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    expected = re.sub("[\ud800-\udfff]", "\ufffd", text)
    assert tok.decode(tok.encode(text)) == expected
    assert tok.encode([text]) == [tok.encode(expected)]


def test_partial_utf8_token_shows_as_replacement_character(tok):
    lead_byte = 0xEC  # first byte of a 3-byte UTF-8 sequence (e.g. 안): not text on its own
    assert tok.token_to_bytes(lead_byte) == b"\xec"
    assert tok.id_to_token(lead_byte) == "\ufffd"
    assert tok.decode([lead_byte]) == "\ufffd"


def test_digits_are_split_into_groups_of_at_most_two(tok):
    assert regex.findall(SPLIT_PATTERN, "12345") == ["12", "34", "5"]
    # the training text is full of years and prices, yet no token holds 3 or more digits
    assert not [t for t in tok.mergeable_ranks if t.isdigit() and len(t) > 2]
    assert any(t.isdigit() and len(t) == 2 for t in tok.mergeable_ranks)
    ids = tok.encode("31415926535")
    pieces = [tok.id_to_token(i) for i in ids]
    assert "".join(pieces) == "31415926535"
    assert all(p.isdigit() and len(p) <= 2 for p in pieces)


def test_special_tokens_have_distinct_ids_at_the_top_of_the_vocab(tok):
    vocab_size = tok.get_vocab_size()
    assert vocab_size == VOCAB_SIZE  # the training text has enough pairs to fill it
    ids = [tok.encode_special(name) for name in SPECIAL_TOKENS]
    assert ids == list(range(vocab_size - len(SPECIAL_TOKENS), vocab_size))
    assert tok.get_special_tokens() == SPECIAL_TOKENS == [
        "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
        "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
    assert tok.get_bos_token_id() == ids[0]
    assert [tok.id_to_token(i) for i in ids] == SPECIAL_TOKENS
    with pytest.raises(ValueError):
        tok.encode_special("<|endoftext|>")


def test_special_token_text_in_ordinary_text_stays_ordinary(tok):
    ids = tok.encode("<|assistant_end|>")
    assert not any(tok.is_special(i) for i in ids)
    assert len(ids) > 1


def test_encode_batch_with_prepend_and_append(tok):
    texts = ["hello world", "안녕", ""]
    bos, end = tok.get_bos_token_id(), tok.encode_special("<|assistant_end|>")
    rows = tok.encode(texts, prepend="<|bos|>", append=end, num_threads=2)
    assert rows == [[bos] + tok.encode(t) + [end] for t in texts]
    assert tok.encode("hi", prepend=bos) == [bos] + tok.encode("hi")
    with pytest.raises(TypeError):
        tok.encode(b"bytes are not text")


def test_vocab_size_too_small_is_rejected():
    with pytest.raises(ValueError, match="at least 265"):
        RustBPETokenizer.train_from_iterator(iter(["abc"]), 264)


def test_our_encode_equals_rustbpe_encode(docs, tok):
    reference = rustbpe.Tokenizer()
    reference.train_from_iterator(iter(docs), VOCAB_SIZE - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    texts = docs[:50] + docs[-5:] + [t for t in HARD_TEXTS.values()]
    for text in texts:
        assert tok.encode(text) == list(reference.encode(text)), text


def test_python_trainer_learns_what_rustbpe_learns(docs):
    small = docs[:60] + docs[300:305] + docs[-3:]
    reference = rustbpe.Tokenizer()
    reference.train_from_iterator(iter(small), 330, pattern=SPLIT_PATTERN)
    expected = {bytes(piece): rank for piece, rank in reference.get_mergeable_ranks()}
    assert train_bpe_python(small, 330) == expected


def test_save_and_load_round_trip(tok, tmp_path):
    path = tok.save(str(tmp_path / "tok"))
    # data only, no pickle; and no temp file left behind
    assert sorted(os.listdir(tmp_path / "tok")) == ["tokenizer.json", "tokenizer.tiktoken"]
    loaded = RustBPETokenizer.from_directory(os.path.dirname(path))
    assert loaded.get_vocab_size() == tok.get_vocab_size()
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.mergeable_ranks == tok.mergeable_ranks and loaded.pattern == tok.pattern
    for text in HARD_TEXTS.values():
        assert loaded.encode(text) == tok.encode(text)


def test_merges_file_is_tiktokens_own_format(tok, tmp_path):
    import tiktoken.load
    tok.save(str(tmp_path))
    assert tiktoken.load.load_tiktoken_bpe(str(tmp_path / "tokenizer.tiktoken")) == tok.mergeable_ranks


def test_old_pickled_dict_tokenizer_still_loads_and_is_replaced_on_save(tok, tmp_path, capsys):
    import pickle
    old = {"format": 1, "pattern": tok.pattern, "mergeable_ranks": tok.mergeable_ranks,
           "special_tokens": tok.special_tokens}
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(old))
    loaded = RustBPETokenizer.from_directory(str(tmp_path))
    assert loaded.encode(HARD_TEXTS["korean"]) == tok.encode(HARD_TEXTS["korean"])
    assert "a pickle can run code" in capsys.readouterr().err
    loaded.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["tokenizer.json", "tokenizer.tiktoken"]


def test_merges_file_that_does_not_match_its_json_is_named(tok, tmp_path):
    tok.save(str(tmp_path))
    merges = tmp_path / "tokenizer.tiktoken"
    merges.write_bytes(merges.read_bytes().replace(b" 300\n", b" 301\n", 1))
    with pytest.raises(UserError, match="tokenizer.tiktoken does not match"):
        RustBPETokenizer.from_directory(str(tmp_path))


def test_get_tokenizer_and_token_bytes_from_base_dir(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(UserError, match="python -m scripts.tok_train"):
        get_tokenizer()
    with pytest.raises(UserError, match="python -m scripts.tok_train"):
        get_token_bytes()
    tok.save(str(tmp_path / "tokenizer"))
    save_token_bytes(tok, str(tmp_path / "tokenizer"))
    assert get_tokenizer().encode("hello 안녕") == tok.encode("hello 안녕")
    token_bytes = get_token_bytes("cpu")
    assert token_bytes.dtype.is_floating_point is False and token_bytes.shape == (tok.get_vocab_size(),)
    assert token_bytes.tolist() == compute_token_bytes(tok).tolist()
    assert all(token_bytes[tok.encode_special(s)] == 0 for s in SPECIAL_TOKENS)
    assert token_bytes[:256].tolist() == [1] * 256
    ids = tok.encode("안녕하세요 world")
    assert sum(token_bytes[i].item() for i in ids) == len("안녕하세요 world".encode("utf-8"))


def test_corrupt_tokenizer_file_is_a_user_error(tmp_path):
    (tmp_path / "tokenizer.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a tokenizer"):
        RustBPETokenizer.from_directory(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a nanochat tokenizer"):
        RustBPETokenizer.from_directory(str(tmp_path))


# -----------------------------------------------------------------------------
# the chat format

CONVERSATION = {"messages": [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 12*3?"},
    {"role": "assistant", "content": "Let me check."},
    {"role": "user", "content": "Use the tool."},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Sure. "},
        {"type": "python", "text": "12*3"},
        {"type": "python_output", "text": "36"},
        {"type": "text", "text": "It is 36."},
    ]},
]}


def expected_rendering(tok):
    """The rendering of CONVERSATION, built by hand from encode() calls."""
    S = tok.encode_special
    pieces = [  # (ids, mask value)
        ([S("<|bos|>")], 0),
        ([S("<|user_start|>")] + tok.encode("You are helpful.\n\nWhat is 12*3?") + [S("<|user_end|>")], 0),
        ([S("<|assistant_start|>")], 0),
        (tok.encode("Let me check.") + [S("<|assistant_end|>")], 1),
        ([S("<|user_start|>")] + tok.encode("Use the tool.") + [S("<|user_end|>")], 0),
        ([S("<|assistant_start|>")], 0),
        (tok.encode("Sure. "), 1),
        ([S("<|python_start|>")] + tok.encode("12*3") + [S("<|python_end|>")], 1),
        ([S("<|output_start|>")] + tok.encode("36") + [S("<|output_end|>")], 0),
        (tok.encode("It is 36.") + [S("<|assistant_end|>")], 1),
    ]
    ids = [i for piece, _ in pieces for i in piece]
    mask = [m for piece, m in pieces for _ in piece]
    return ids, mask


def test_render_conversation_ids_and_mask(tok):
    before = copy.deepcopy(CONVERSATION)
    ids, mask = tok.render_conversation(CONVERSATION)
    assert (ids, mask) == expected_rendering(tok)
    assert CONVERSATION == before  # folding the system message must not edit the caller's dict
    # the supervised tokens decode to exactly the assistant's own words and code
    supervised = tok.decode([i for i, m in zip(ids, mask) if m and not tok.is_special(i)])
    assert supervised == "Let me check.Sure. 12*3It is 36."


def test_render_conversation_truncates_to_max_tokens(tok):
    full_ids, full_mask = expected_rendering(tok)
    ids, mask = tok.render_conversation(CONVERSATION, max_tokens=10)
    assert (ids, mask) == (full_ids[:10], full_mask[:10])


def test_render_for_completion_ends_with_assistant_start(tok):
    ids = tok.render_for_completion(CONVERSATION)
    full_ids, _ = expected_rendering(tok)
    assistant_start = tok.encode_special("<|assistant_start|>")
    last_assistant = max(i for i, t in enumerate(full_ids) if t == assistant_start)
    assert ids == full_ids[:last_assistant + 1]
    assert ids[-1] == tok.encode_special("<|assistant_start|>")
    # a conversation that ends with the user's turn is prompted as is
    ids = tok.render_for_completion({"messages": CONVERSATION["messages"][:4]})
    assert ids == full_ids[:last_assistant + 1]


@pytest.mark.parametrize("messages", [
    [],
    [{"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
    [{"role": "user", "content": ["not", "a", "string"]}],
])
def test_render_conversation_rejects_malformed_conversations(tok, messages):
    with pytest.raises(ValueError):
        tok.render_conversation({"messages": messages})


def test_visualize_tokenization_shows_every_token(tok):
    ids, mask = tok.render_conversation(CONVERSATION)
    shown = tok.visualize_tokenization(ids, mask)
    plain = re.sub(r"\033\[[0-9;]*m", "", shown).replace("↵", "")
    assert plain == tok.decode(ids)
    assert "\033[48;5;22m" in shown and "\033[48;5;236m" in shown  # both supervised and not


# -----------------------------------------------------------------------------
# reference encodings, offline

def bpe_openai_installed():
    import importlib.util
    return importlib.util.find_spec("bpe_openai") is not None


@pytest.fixture
def no_tiktoken_cache(tmp_path, monkeypatch):
    """An empty tiktoken cache, and no encodings held in tiktoken's or our memory."""
    import tiktoken.registry
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    get_reference_encoding.cache_clear()
    yield tmp_path / "tiktoken-cache"
    get_reference_encoding.cache_clear()


@pytest.mark.skipif(not bpe_openai_installed(), reason="bpe-openai is not installed")
def test_cl100k_reference_encodes_known_ids(no_tiktoken_cache):
    enc = get_reference_encoding("cl100k")
    assert enc.name == "cl100k_base" and enc.source == "bpe-openai"
    assert enc.encode("hello world") == [15339, 1917]
    assert enc.decode([15339, 1917]) == "hello world"
    assert get_reference_encoding("o200k").encode("hello world") == [24912, 2375]


def test_gpt2_reference_encodes_known_ids_or_says_it_is_unavailable(no_tiktoken_cache):
    # bpe-openai 0.1.4 does not ship gpt2, so without a tiktoken cache this must be a clear
    # UserError, quickly and without touching the network
    try:
        enc = get_reference_encoding("gpt2")
    except UserError as e:
        assert "gpt2" in str(e) and "not available offline" in str(e)
        return
    assert enc.encode("hello world") == [31373, 995]


@pytest.mark.skipif(not bpe_openai_installed(), reason="bpe-openai is not installed")
def test_reference_encoding_prefers_tiktoken_cache(no_tiktoken_cache):
    # seed tiktoken's cache with the cl100k file that bpe-openai ships (the same bytes tiktoken
    # would download: tiktoken checks their sha256)
    from importlib import resources
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    data = gzip.decompress(resources.files("bpe_openai.data").joinpath("cl100k_base.tiktoken.gz").read_bytes())
    no_tiktoken_cache.mkdir()
    (no_tiktoken_cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
    enc = get_reference_encoding("cl100k_base")
    assert enc.source == "tiktoken cache"
    assert enc.encode("hello world") == [15339, 1917]


def test_unknown_reference_encoding_is_a_user_error():
    with pytest.raises(UserError, match="unknown reference encoding"):
        get_reference_encoding("gpt5")


@pytest.mark.skipif(not bpe_openai_installed(), reason="bpe-openai is not installed")
def test_reference_encoding_of_long_text_in_chunks_matches_whole(no_tiktoken_cache, docs):
    # lines that start with punctuation or spaces must not be cut before: o200k glues "/" after
    # a newline to the punctuation before it, for example
    text = "".join(docs) + "see below.\n/usr/bin\n...\n  indented\n\n\nend" * 30
    for name in ("cl100k", "o200k"):
        enc = get_reference_encoding(name)
        whole = enc.encode(text)
        chunked = tokenizer_module.ReferenceEncoding(enc.name, enc.source, enc._enc)
        chunked.MAX_CHUNK_CHARS = 500
        assert len(list(tokenizer_module._split_at_line_starts(text, 500))) > 10
        assert chunked.encode(text) == whole
        assert "".join(tokenizer_module._split_at_line_starts(text, 500)) == text


# -----------------------------------------------------------------------------
# the two scripts, end to end on a tiny data folder

def test_tok_train_then_tok_eval_on_a_text_folder(docs, tmp_path, monkeypatch, capsys):
    from scripts import tok_eval, tok_train
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "a.txt").write_text("\n\n\n".join(docs[:200]), encoding="utf-8")
    (data_dir / "b.txt").write_text("\n\n\n".join(docs[200:]), encoding="utf-8")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    get_reference_encoding.cache_clear()

    tok_train.main(["--vocab-size", "400", "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    assert "round trip ok" in out and "400 tokens" in out
    tok = get_tokenizer()
    assert tok.get_vocab_size() == 400
    assert get_token_bytes().shape == (400,)

    rows = tok_eval.main(["--references", "cl100k,gpt2", "--data-dir", str(data_dir), "--corpus-chars", "5000"])
    out = capsys.readouterr().out
    assert [row["text"] for row in rows] == ["news", "code", "math", "korean", "chinese/japanese", "corpus train", "corpus val"]
    for row in rows:
        assert row["ours_bytes_per_token"] == pytest.approx(row["bytes"] / row["ours_tokens"], abs=1e-3)
    if bpe_openai_installed():
        assert all(row["cl100k_base_tokens"] > 0 for row in rows)
    assert "gpt2" in out  # either a column or the one line saying it is left out


def test_tok_train_rejects_a_too_small_vocabulary():
    from scripts import tok_train
    with pytest.raises(UserError, match="at least 265"):
        tok_train.parse_args(["--vocab-size", "100"])
