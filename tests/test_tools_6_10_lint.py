"""Conversation linter: each planted mistake is flagged, and a clean conversation is not."""

import pytest

from nanochat.tokenizer import get_tokenizer
from tools.lib.conversation_lint import lint_conversation

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



# ----------------------------------------------------------------------------- the tool

def run_tool(*args, stdin=None):
    import os
    import sys
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, os.path.join(repo, "tools", "conversation_template_builder.py"),
                           *map(str, args)], cwd=repo, capture_output=True, text=True, input=stdin, timeout=120,
                          env=dict(os.environ, NO_COLOR="1"))


def test_builder_renders_exactly_what_render_conversation_produces(tokenizer):
    import json
    cases = [
        (["--simple", "What is 2+2?", "It's 4."], CLEAN[:2]),
        (["--multi", "Hi", "Hello!", "Bye", "Farewell."],
         [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
          {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Farewell."}]),
        (["--tool", "12*7?", "12*7", "84.", "--system", "Be brief."],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "12*7?"},
          {"role": "assistant", "content": [{"type": "python", "text": "12*7"},
                                            {"type": "python_output", "text": "84"},
                                            {"type": "text", "text": "84."}]}]),
    ]
    for argv, messages in cases:
        r = run_tool(*argv, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        ids, mask = tokenizer.render_conversation({"messages": messages}, max_tokens=None)
        assert (out["ids"], out["mask"]) == (ids, mask)
        assert out["issues"] == []
    plain = run_tool("--simple", "Hi", "Yo").stdout
    assert "<|user_start|>Hi<|user_end|><|assistant_start|>[" in plain and "[<|assistant_end|>]" in plain


def test_builder_linter_flags_each_planted_mistake(tokenizer, tmp_path):
    import json
    ids, mask = tokenizer.render_conversation({"messages": CLEAN})
    bos = tokenizer.get_bos_token_id()
    planted = {
        "doubled_bos": {"messages": CLEAN, "ids": [bos] + ids, "mask": [0] + mask},
        "nothing_supervised": {"messages": CLEAN, "ids": ids, "mask": [0] * len(mask)},
        "train_inference_mismatch": {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": [
            {"type": "python", "text": "2+2"}, {"type": "python_output", "text": "5"}, {"type": "text", "text": "4"}]}]},
    }
    for code, obj in planted.items():
        path = tmp_path / f"{code}.json"
        path.write_text(json.dumps(obj))
        r = run_tool("--validate", path)
        assert r.returncode == 1 and f"[{code}]" in r.stdout, (code, r.stdout, r.stderr)
    long = tmp_path / "long.json"
    long.write_text(json.dumps([{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]))
    r = run_tool("--validate", long, "--max-seq-len", 20)
    assert r.returncode == 1 and "[truncated_all]" in r.stdout
    assert run_tool("--validate", long, "--max-seq-len", 200).returncode == 0


def test_builder_interactive_mode_driven_through_stdin(tokenizer, tmp_path):
    import json
    saved = tmp_path / "conv.json"
    script = f"simple\nWhat is 2+2?\nIt's 4.\ntokenize\nvalidate\nsave {saved}\ntool\n3*3?\n3*3\nNine.\nshow\nquit\n"
    r = run_tool("--interactive", stdin=script)
    assert r.returncode == 0, r.stderr
    assert json.loads(saved.read_text()) == {"messages": CLEAN[:2]}
    assert "[<|assistant_end|>]" in r.stdout and "no problems found" in r.stdout
    assert '"text": "9"' in r.stdout  # the tool turn's output came from the calculator


def test_builder_batch_validation_report(tokenizer, tmp_path):
    import json
    data = tmp_path / "data.jsonl"
    lines = [json.dumps(CLEAN), "{not json", json.dumps([{"role": "user", "content": "x " * 60},
                                                         {"role": "assistant", "content": "y"}])]
    data.write_text("\n".join(lines) + "\n")
    report_path = tmp_path / "report.json"
    fits = len(tokenizer.render_conversation({"messages": CLEAN})[0])  # line 1 fits, line 3's user turn does not
    r = run_tool("--batch-validate", data, "--output", report_path, "--max-seq-len", fits)
    assert r.returncode == 1
    report = json.loads(report_path.read_text())
    assert report["structure"]["invalid"] == 1 and report["structure"]["problems"][0]["line"] == 2
    assert report["lint"]["conversations"] == 2
    assert [e["line"] for e in report["lint"]["lines"]] == [3]
    assert report["lint"]["issue_counts"] == {"truncated_all": 1}
    assert "line 2" in r.stdout and "line 3" in r.stdout
