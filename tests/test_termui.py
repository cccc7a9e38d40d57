"""The shared tool plumbing: terminal output, the error boundary, plots, smoothing and conversation checks."""

import io
import json
import math

import pytest

from tools.lib import termui as ui
from nanochat.common import run_entry
from tools.lib import plotting
from nanochat.common import UserError


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_colour_is_on_for_a_tty_and_off_when_piped_or_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert ui.style("x", "red", stream=FakeTTY()) == "\x1b[31mx\x1b[0m"
    assert ui.style("x", "red", stream=io.StringIO()) == "x"
    monkeypatch.setenv("NO_COLOR", "1")
    assert ui.style("x", "red", stream=FakeTTY()) == "x"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert ui.style("x", "bold", stream=io.StringIO()) == "\x1b[1mx\x1b[0m"


def test_table_columns_line_up_even_with_colour_and_wide_characters(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    rows = [["a", 1, ui.style("ok", "green")], ["longer name", 12345, "漢字"]]
    lines = ui.table(rows, headers=["name", "n", "note"]).splitlines()
    plain = [ui.strip_ansi(line) for line in lines]
    # the second column is right-aligned: its last digit sits in the same column on every row
    ends = {ui.display_width(line[:line.index(tok) + len(tok)]) for line, tok in zip(plain[2:], ["1", "12,345"])}
    assert len(ends) == 1
    assert ui.display_width("漢字") == 4
    assert plain[1].split() == ["-" * 11, "-" * 6, "----"]


def test_bar_fills_to_the_fraction_with_eighths():
    assert ui.bar(0.5, width=10) == "█" * 5 + " " * 5
    assert ui.bar(1 / 16, width=10).rstrip() == "▋"   # 0.625 columns = 5 eighths (▌ is 4)
    assert ui.bar(2.0, width=4) == "████" and ui.bar(float("nan"), width=3) == "   "


def test_fmt_helpers():
    assert ui.fmt_num(1234567) == "1,234,567"
    assert ui.fmt_num(None) == "-"
    assert ui.fmt_si(1.5e9) == "1.5G"
    assert ui.fmt_bytes(1536) == "1.5 KiB"


def test_run_tool_turns_user_mistakes_into_one_line_and_exit_2(capsys):
    def raises(exc):
        def main(argv):
            raise exc
        return main

    cases = [UserError("the folder x is empty; train first"), FileNotFoundError(2, "No such file", "/nope")]
    try:
        b"\xff".decode("utf-8")
    except UnicodeDecodeError as e:
        cases.append(e)
    try:
        json.loads("{bad")
    except json.JSONDecodeError as e:
        cases.append(e)
    for exc in cases:
        assert run_entry(raises(exc), []) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    # a programming error keeps its traceback
    with pytest.raises(ZeroDivisionError):
        run_entry(lambda argv: 1 / 0, [])


def test_bad_flag_is_one_line_and_help_shows_examples(capsys):
    def main(argv):
        p = ui.make_parser("A tool.", examples=["python tools/x.py DIR"])
        p.add_argument("--n", type=int)
        p.parse_args(argv)

    assert run_entry(main, ["--n", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n" in err
    assert run_entry(main, ["--help"]) == 0
    assert "examples:\n  python tools/x.py DIR" in capsys.readouterr().out


def test_progress_prints_nothing_when_not_a_terminal():
    stream = io.StringIO()
    assert list(ui.progress(range(5), desc="x", stream=stream)) == list(range(5))
    assert stream.getvalue() == ""
    tty = FakeTTY()
    list(ui.progress(range(3), desc="reading", stream=tty))
    assert "reading 100%" in tty.getvalue() and "3/3" in tty.getvalue()


def test_saved_png_has_the_requested_pixel_size(tmp_path):
    fig, axes = plotting.new_figure(1, 2, width=6, height=3, dpi=100, title="t")
    axes[0][0].plot([1, 2, 3], [3, 1, 2], color=plotting.color(0), label="a")
    plotting.style_axes(axes[0][0], "panel", "x", "y", legend=True)
    plotting.empty_panel(axes[0][1], "no data")
    path = plotting.save_figure(fig, tmp_path / "sub" / "p")  # no extension: .png is added, folder created
    assert path.endswith(".png")
    assert plotting.image_size(path) == (600, 300)
    with pytest.raises(UserError):
        plotting.save_figure(plotting.new_figure()[0], tmp_path / "x.txt")


def test_smoothing_is_debiased_and_never_rewrites_the_past():
    from tools.lib.metrics import smooth
    values = [5.0, 4.0, 4.5, float("nan"), 3.0, 2.5]
    full = smooth(values, beta=0.9)
    for k in range(1, len(values)):
        prefix = smooth(values[:k], beta=0.9)
        assert all((a == b) or (math.isnan(a) and math.isnan(b)) for a, b in zip(prefix, full[:k]))
    assert full[0] == 5.0  # debiased: the first point is not pulled towards zero
    assert full[1] == pytest.approx((0.9 * 0.1 * 5.0 + 0.1 * 4.0) / (1 - 0.9 ** 2))
    assert math.isnan(full[3]) and math.isfinite(full[4])  # NaN does not poison the rest


def test_validate_conversation_reports_every_problem():
    from nanochat.conversation_check import validate_conversation
    ok = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": [{"type": "python", "text": "1+1"},
                                                         {"type": "python_output", "text": "2"}]}]}
    assert validate_conversation(ok) == []
    bad = [{"role": "user", "content": ""}, {"role": "user", "content": 3}, {"content": "x"},
           {"role": "bot", "content": "y"}, {"role": "system", "content": "late"},
           {"role": "assistant", "content": [{"type": "image", "text": "z"}]}, {"role": "user", "content": "last"}]
    codes = [p.code for p in validate_conversation(bad)]
    for code in ("empty_content", "non_string_content", "missing_role", "unknown_role", "misplaced_system",
                 "bad_part", "alternation", "no_final_assistant"):
        assert code in codes, (code, codes)
    assert [p.code for p in validate_conversation("text")] == ["not_a_conversation"]
    assert [p.code for p in validate_conversation([])] == ["empty_conversation"]
