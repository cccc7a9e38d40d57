"""Chat training batches: supervised-only targets, packing, padding, exact resume, DDP sharding,
the offline mixture fallback, and the token history / streaming used by chat_cli."""

import pytest

from nanochat.common import UserError

from nanochat.chat import ChatHistory, StreamDecoder
from nanochat.chat_data import PackedChatLoader, PaddedChatLoader, row_inputs_targets
from nanochat_tasks.mixtures import build_mixture
from nanochat_tasks.common import TaskMixture
from nanochat_tasks.spellingbee import SimpleSpelling, SpellingBee
from nanochat_tasks.arithmetic import Arithmetic
from nanochat_tasks.identity import Identity


@pytest.fixture
def tokenizer(tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    return get_tokenizer()


@pytest.fixture
def mixture():
    # tool calls (python / python_output parts), multi-turn and plain replies, in one small task
    return TaskMixture([SimpleSpelling(size=12), SpellingBee(size=8), Arithmetic(size=8), Identity(size=8)])


def expected_targets(ids, mask):
    """The rule, written out independently: target j is ids[j+1] when mask[j+1] == 1, else -1."""
    return [ids[j + 1] if mask[j + 1] == 1 else -1 for j in range(len(ids) - 1)]


def parse_row(inputs, rendered, bos):
    """Split a packed row back into the conversations it holds, from its T input tokens.

    Returns (mask of the T+1 row positions, task indices used). A conversation may be cut at the
    row's end only if it is the first of its row (cropped: longer than a row) or if just its last
    token is missing (that token is the row's final target, not an input)."""
    mask, used, p, T = [], [], 0, len(inputs)
    while p < T:
        best = None
        for index, (ids, m) in rendered.items():
            n = min(len(ids), T - p)
            if inputs[p:p + n] != ids[:n]:
                continue
            whole = n == len(ids) or p == 0 or (p + n == T and len(ids) - n == 1)
            if whole and (best is None or n > best[1]):
                best = (index, n)
        if best is None:  # the rest must be padding
            assert all(t == bos for t in inputs[p:]), f"unrecognised tokens at position {p}"
            return mask + [0] * (T + 1 - p), used
        index, n = best
        ids, m = rendered[index]
        mask += m[:n + 1] if p + n == T and len(ids) > n else m[:n]
        used.append(index)
        p += n
    return mask + [0] * (T + 1 - len(mask)), used  # the final position: a new BOS or padding


def test_packed_rows_have_targets_only_on_supervised_tokens(tokenizer, mixture):
    T = 96
    rendered = {i: tokenizer.render_conversation(mixture[i], max_tokens=T + 1) for i in range(len(mixture))}
    bos = tokenizer.get_bos_token_id()
    loader = PackedChatLoader(tokenizer, mixture, B=2, T=T, repeat=False)
    seen, supervised = [], 0
    for x, y in loader:
        for xr, yr in zip(x.tolist(), y.tolist()):
            assert xr[0] == bos  # every row starts at a conversation boundary
            mask, used = parse_row(xr, rendered, bos)
            assert len(mask) == T + 1
            for j in range(T - 1):
                assert yr[j] == (xr[j + 1] if mask[j + 1] == 1 else -1)
            assert (yr[T - 1] != -1) == (mask[T] == 1)
            supervised += sum(t != -1 for t in yr)
            seen += used
    # each conversation was packed exactly once, and none was split across rows
    assert sorted(seen) == list(range(len(mixture)))
    assert supervised > 0


def test_padded_rows_are_one_conversation_each_padded_to_the_longest(tokenizer, mixture):
    loader = PaddedChatLoader(tokenizer, mixture, B=3, max_seq_len=512, repeat=False)
    x, y = loader.next_batch()
    convs = [tokenizer.render_conversation(mixture[i], max_tokens=513) for i in range(3)]
    width = max(len(ids) for ids, _ in convs) - 1
    assert x.shape == y.shape == (3, width)
    for row, (ids, mask) in enumerate(convs):
        n = len(ids) - 1
        assert x[row, :n].tolist() == ids[:-1]
        assert y[row, :n].tolist() == expected_targets(ids, mask)
        assert y[row, n:].tolist() == [-1] * (width - n)  # padding is never a target
        # the supervised targets are exactly the assistant's tokens of render_conversation
        assert sorted(t for t in y[row].tolist() if t != -1) == sorted(t for t, m in zip(ids, mask) if m)


def test_row_targets_mask_user_tokens():
    ids, mask = [1, 2, 3, 4, 5], [0, 0, 1, 1, 0]
    assert row_inputs_targets(ids, mask) == ([1, 2, 3, 4], [-1, 3, 4, -1])


@pytest.mark.parametrize("packed", [True, False])
def test_loader_state_resumes_exactly(tokenizer, mixture, packed):
    def make(state=None):
        if packed:
            return PackedChatLoader(tokenizer, mixture, B=2, T=48, buffer_size=4, state=state)
        return PaddedChatLoader(tokenizer, mixture, B=3, max_seq_len=64, state=state)

    loader = make()
    for _ in range(5):
        loader.next_batch()
    state = loader.state_dict()
    uninterrupted = [loader.next_batch() for _ in range(12)]  # runs past the end of the epoch
    assert loader.epoch >= 1
    resumed_loader = make(state=state)
    resumed = [resumed_loader.next_batch() for _ in range(12)]
    for (xa, ya), (xb, yb) in zip(uninterrupted, resumed):
        assert xa.tolist() == xb.tolist() and ya.tolist() == yb.tolist()


def test_ranks_split_the_conversations_between_them(tokenizer, mixture):
    rows = {}
    for rank in (0, 1):
        loader = PaddedChatLoader(tokenizer, mixture, B=1, max_seq_len=512, rank=rank, world_size=2, repeat=False)
        rows[rank] = [x[0].tolist() for x, _ in loader]
    for rank in (0, 1):
        expected = [tokenizer.render_conversation(mixture[i], 513)[0][:-1] for i in range(rank, len(mixture), 2)]
        assert rows[rank] == expected


def test_offline_mixture_has_the_synthetic_tasks_and_custom_json(tmp_path):
    custom = tmp_path / "mine.jsonl"
    custom.write_text('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]\n' * 20)
    train, names = build_mixture("sft", "train", offline=True, synthetic_size=30, custom_json=str(custom))
    val, _ = build_mixture("sft", "val", offline=True, synthetic_size=30, custom_json=str(custom))
    assert names == ["Identity", "SpellingBee", "SimpleSpelling", "Arithmetic", "TwoStepArithmetic", "Refusal", "CustomJSON"]
    assert len(train) == 4 * 30 + 30 // 8 + 30 // 2 + 20  # Refusal: half a synthetic task, SFT only
    assert len(val) == 4 * 3 + 1 + 1 + 2


def test_unreachable_hub_falls_back_to_offline_tasks_in_one_line(monkeypatch, capsys):
    import socket
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NANOCHAT_TASKS_DIR", raising=False)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", False)
    _, names = build_mixture("mid", "train", offline=False, synthetic_size=5)
    assert names == ["Identity", "SpellingBee", "SimpleSpelling", "Arithmetic", "TwoStepArithmetic"]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "offline tasks" in out[0]


def test_chat_history_matches_render_conversation(tokenizer):
    history = ChatHistory(tokenizer)
    reply1 = tokenizer.encode("Hello! How can I help?")
    prompt1, _ = history.prompt_for("hi there")
    history.add_reply(reply1)
    prompt2, _ = history.prompt_for("spell cat")
    conversation = {"messages": [{"role": "user", "content": "hi there"},
                                 {"role": "assistant", "content": "Hello! How can I help?"},
                                 {"role": "user", "content": "spell cat"}]}
    assert prompt2 == tokenizer.render_for_completion(conversation)
    assert prompt1 == tokenizer.render_for_completion({"messages": conversation["messages"][:1]})


def test_chat_history_drops_the_oldest_exchanges_to_fit_the_context(tokenizer):
    history = ChatHistory(tokenizer)
    turns = [("first question here", "first answer"), ("second one", "second answer"), ("third", "third answer")]
    for user, reply in turns:
        ids, dropped = history.prompt_for(user)
        assert dropped == 0
        history.add_reply(tokenizer.encode(reply))
    messages = [{"role": r, "content": c} for u, a in turns for r, c in (("user", u), ("assistant", a))]
    full, _ = history.prompt_for("last")
    messages.append({"role": "user", "content": "last"})
    assert full == tokenizer.render_for_completion({"messages": messages})

    history.clear()
    for user, reply in turns:
        history.prompt_for(user)
        history.add_reply(tokenizer.encode(reply))
    # room for the last two exchanges and the new turn, but not the first exchange
    keep = tokenizer.render_for_completion({"messages": messages[2:]})
    ids, dropped = history.prompt_for("last", context_len=len(keep) + 1)
    assert dropped == 1 and ids == keep and len(ids) < len(keep) + 1
    # the history itself was trimmed: the next turn builds on what is left
    history.add_reply(tokenizer.encode("ok"))
    ids, dropped = history.prompt_for("again", context_len=10_000)
    assert dropped == 0 and ids[:len(keep)] == keep


def test_chat_history_refuses_a_message_that_cannot_fit_and_keeps_the_rest(tokenizer):
    history = ChatHistory(tokenizer)
    history.prompt_for("hi")
    history.add_reply(tokenizer.encode("hello"))
    before = list(history.ids)
    with pytest.raises(UserError, match="shorten it"):
        history.prompt_for("word " * 200, context_len=50)
    assert history.ids == before


def test_stream_decoder_never_splits_a_character(tokenizer):
    text = "Héllo 👋 wörld, 한국어 🍓!"
    ids = tokenizer.encode(text)
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.add(t) for t in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert any(p == "" for p in pieces)  # with a 512-token vocab some tokens are partial characters
