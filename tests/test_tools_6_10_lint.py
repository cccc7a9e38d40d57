"""Conversation linter: each planted mistake is flagged, and a clean conversation is not."""

import pytest

from nanochat.tokenizer import get_tokenizer
from nanochat.conversation_lint import lint_conversation, supervision_stats

CLEAN = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It's 4."},
         {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6."}]


@pytest.fixture
def tokenizer(tiny_base_dir):
    return get_tokenizer()


def test_clean_conversation_has_no_issues(tokenizer):
    report = lint_conversation(tokenizer, CLEAN, max_seq_len=256)
    assert report.issues == []
    ids, mask = tokenizer.render_conversation({"messages": CLEAN}, max_tokens=None)
    assert (report.ids, report.mask) == (ids, mask)
    assert report.supervised == sum(mask) > 0


def test_doubled_bos_is_flagged(tokenizer):
    ids, mask = tokenizer.render_conversation({"messages": CLEAN})
    bos = tokenizer.get_bos_token_id()
    report = lint_conversation(tokenizer, CLEAN, rendered=([bos] + ids, [0] + mask))
    assert "doubled_bos" in report.codes() and not report.ok
    # the extra BOS also shifts the prompt the model sees before each reply
    assert "train_inference_mismatch" in report.codes()


def test_nothing_supervised_is_flagged(tokenizer):
    ids, mask = tokenizer.render_conversation({"messages": CLEAN})
    report = lint_conversation(tokenizer, CLEAN, rendered=(ids, [0] * len(mask)))
    assert report.codes() == ["nothing_supervised"]


def test_truncation_losing_every_assistant_token_is_flagged(tokenizer):
    conv = [{"role": "user", "content": "tell me a story " * 40}, {"role": "assistant", "content": "No."}]
    ids, mask = tokenizer.render_conversation({"messages": conv}, max_tokens=None)
    first_supervised = mask.index(1)
    report = lint_conversation(tokenizer, conv, max_seq_len=first_supervised)  # the cut lands just before it
    assert "truncated_all" in report.codes() and report.supervised_kept == 0
    partial = lint_conversation(tokenizer, conv, max_seq_len=first_supervised + 1)
    assert partial.codes() == ["truncated_some"] and partial.supervised_kept == 1
    assert lint_conversation(tokenizer, conv, max_seq_len=len(ids)).codes() == []


def test_training_render_differing_from_inference_prompt_is_flagged(tokenizer):
    # a hand-made template that puts a newline after each user turn: the engine never does that
    S = tokenizer.encode_special
    ids = [tokenizer.get_bos_token_id(), S("<|user_start|>")] + tokenizer.encode("What is 2+2?") + [S("<|user_end|>")]
    ids += tokenizer.encode("\n") + [S("<|assistant_start|>")]
    mask = [0] * len(ids)
    reply = tokenizer.encode("It's 4.") + [S("<|assistant_end|>")]
    report = lint_conversation(tokenizer, CLEAN[:2], rendered=(ids + reply, mask + [1] * len(reply)))
    assert report.codes() == ["train_inference_mismatch"]
    assert "'\\n" in report.issues[0].message


def test_tool_output_that_the_calculator_would_not_produce_is_flagged(tokenizer):
    def conv(output):
        return [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": [
            {"type": "python", "text": "2+2"}, {"type": "python_output", "text": output},
            {"type": "text", "text": "It is 4."}]}]
    assert lint_conversation(tokenizer, conv("4")).codes() == []
    report = lint_conversation(tokenizer, conv("5"))
    assert report.codes() == ["train_inference_mismatch"] and "'4'" in report.issues[0].message


def test_special_token_text_and_invalid_structure(tokenizer):
    conv = [{"role": "user", "content": "say <|bos|>"}, {"role": "assistant", "content": "ok"}]
    assert lint_conversation(tokenizer, conv).codes() == ["special_token_text"]
    bad = lint_conversation(tokenizer, [{"role": "assistant", "content": "hi"}])
    assert set(bad.codes()) == {"invalid"} and not bad.ok


def test_supervision_stats():
    assert supervision_stats([1, 2, 3, 4], [0, 1, 1, 0]) == {"tokens": 4, "supervised": 2, "fraction": 0.5}
