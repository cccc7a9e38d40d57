"""Report card: sections logged by stages become report.md with environment, code size, sections
in pipeline order and a filled summary table; reset starts over; other ranks write nothing."""

import os
import re

import pytest

from nanochat import report as rp

PLACEHOLDERS = re.compile(r"TODO|TBD|FIXME|placeholder|lorem|\[.*missing.*\]|XXX", re.IGNORECASE)


def fill(report):
    report.log(section="Chat evaluation sft", data=[{"source": "sft"},
               {"ARC-Easy": 0.31, "GSM8K": 0.02, "Arithmetic": 0.25, "ChatCORE": 0.05}])
    report.log(section="Base model training", data=[{"depth": 4}, {"Min val bpb": 1.875, "Steps": 200}])
    report.log(section="Base model evaluation", data=[{"CORE": 0.1234, "hellaswag": 0.3}])
    report.log(section="Chat evaluation rl", data=[{"Arithmetic": 0.5, "GSM8K": 0.04}])
    report.log(section="Tokenizer training", data=[{"vocab_size": 4096}, "trained in 1.2 s"])
    report.log(section="My experiment", data=[{"note": "extra section"}])


def test_generated_report_has_every_part_in_pipeline_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = rp.Report(str(tmp_path / "report"))
    report.reset()
    fill(report)
    path = report.generate()
    text = open(path, encoding="utf-8").read()
    assert open(tmp_path / "report.md", encoding="utf-8").read() == text  # the copy in the current folder
    for needle in ("## Environment", "- CPU:", "- RAM:", "- PyTorch:", "- Git", "## Code size", "- Lines:",
                   "Run started:", "Total wall clock time:", "## Summary"):
        assert needle in text, needle
    order = [text.index(f"## {s}") for s in ("Tokenizer training", "Base model training", "Base model evaluation",
                                              "Chat evaluation sft", "Chat evaluation rl", "My experiment")]
    assert order == sorted(order)
    assert "- Min val bpb: 1.8750" in text and "trained in 1.2 s" in text
    assert not PLACEHOLDERS.search(text)


def test_summary_table_takes_figures_from_the_eval_sections(tmp_path):
    report = rp.Report(str(tmp_path))
    fill(report)
    table = report.summary()
    assert table["CORE"] == {"BASE": 0.1234}
    assert table["ARC-Easy"] == {"SFT": 0.31}
    assert table["Arithmetic"] == {"SFT": 0.25, "RL": 0.5}
    assert table["MMLU"] == {}
    md = report.summary_markdown()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.splitlines()[2:]}
    assert list(rows) == rp.SUMMARY_ROWS
    assert rows["CORE"] == ["0.1234", "-", "-", "-"]
    assert rows["Arithmetic"] == ["-", "-", "0.2500", "0.5000"]
    assert rows["GSM8K"] == ["-", "-", "0.0200", "0.0400"]
    assert rows["HumanEval"] == ["-", "-", "-", "-"]


def test_reset_clears_sections_and_logging_again_replaces(tmp_path):
    report = rp.Report(str(tmp_path))
    fill(report)
    report.log(section="Base model evaluation", data=[{"CORE": 0.2}])
    assert report.summary()["CORE"] == {"BASE": 0.2}
    report.reset()
    assert report.sections() == []
    assert sorted(os.listdir(tmp_path)) == ["header.json", "header.md"]


def test_tables_for_rows_with_the_same_keys():
    md = rp.render_data([{"text": "news", "ratio": 4.5}, {"text": "code", "ratio": 3.25}])
    assert md.splitlines()[:4] == ["| text | ratio |", "|---|---|", "| news | 4.5000 |", "| code | 3.2500 |"]


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    report = rp.get_report(str(tmp_path))
    report.log(section="Base model training", data=[{"a": 1}])
    assert report.generate() is None and os.listdir(tmp_path) == []


def test_cli_generate_without_sections_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        rp.run_main(lambda argv: rp.main(["generate"]))
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
