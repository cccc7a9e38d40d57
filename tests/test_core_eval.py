"""CORE metric: prompts, continuation spans, scoring by mean loss / exact greedy match, malformed
items, centered accuracy, bundle download; checked against a scripted model whose losses are known
in closed form, on the miniature bundle in tests/fixtures/core/."""

import io
import os
import math
import shutil
import zipfile
import threading
import http.server

import pytest
import torch

from nanochat import core_eval as ce
from nanochat.common import UserError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "core")

BOS = 256
V = 257
L = 5.0  # the scripted model's logit for its favourite token


class CharTokenizer:
    """One token per character (ord < 256), BOS = 256."""

    def get_bos_token_id(self):
        return BOS

    def encode(self, text, prepend=None):
        return ([prepend] if prepend is not None else []) + [ord(c) for c in text]


class LastLetterModel(torch.nn.Module):
    """Predicts that the next character repeats the most recent lowercase letter seen so far
    (logit L for it, 0 for every other token); uniform when no lowercase letter was seen yet."""

    def forward(self, ids):
        B, T = ids.shape
        logits = torch.zeros(B, T, V)
        for b in range(B):
            last = None
            for t in range(T):
                c = ids[b, t].item()
                if ord("a") <= c <= ord("z"):
                    last = c
                if last is not None:
                    logits[b, t, last] = L
        return logits


# the three losses a token can have under LastLetterModel
SAME = math.log(math.exp(L) + V - 1) - L   # it is the favourite
DIFF = math.log(math.exp(L) + V - 1)       # there was a favourite and it is another token
UNIFORM = math.log(V)                      # there was no favourite


def tasks_by_label():
    return {t["label"]: t for t in ce.load_core_tasks(FIXTURE)}


def test_bundle_tasks_are_read_with_their_baselines_and_defaults():
    tasks = tasks_by_label()
    assert list(tasks) == ["toy_choice", "toy_schema", "toy_lm"]
    assert tasks["toy_choice"]["random_baseline"] == 25.0
    assert tasks["toy_schema"]["continuation_delimiter"] == " "  # the default when core.yaml omits it
    assert tasks["toy_lm"]["num_fewshot"] == 1 and tasks["toy_lm"]["continuation_delimiter"] == "=>"


def test_malformed_items_are_skipped_and_counted():
    items, skipped = ce.load_task_items(tasks_by_label()["toy_choice"]["dataset_path"], "multiple_choice")
    assert [it["query"] for it in items] == ["Q1:", "Q2:", "Q3:"]
    assert skipped == 3  # gold out of range, a single choice, broken JSON
    assert ce.item_problem({"context_options": ["a", "b"], "continuation": "x"}, "schema") is not None
    assert ce.item_problem({"context": "c", "continuation": "  "}, "language_modeling") is not None
    assert ce.item_problem({"query": "q", "choices": ["a", "b"], "gold": True}, "multiple_choice") is not None


def test_prompts_follow_the_bundle_layout():
    shot = {"query": "Q0:", "choices": ["no", "yes"], "gold": 1}
    item = {"query": "Q1:", "choices": ["a", "b"], "gold": 0}
    assert ce.render_prompts(item, "multiple_choice", [shot], " ", "\n\n") == ["Q0: yes\n\nQ1: a", "Q0: yes\n\nQ1: b"]
    schema = {"context_options": ["A", "B"], "continuation": "end", "gold": 0}
    assert ce.render_prompts(schema, "schema", [schema], " ", "\n") == ["A end\nA end", "A end\nB end"]
    lm = {"context": " The capital is ", "continuation": "Paris"}
    assert ce.render_prompts(lm, "language_modeling", [], " ", "\n\n") == ["The capital is", "The capital is Paris"]


def test_fewshot_examples_exclude_the_item_and_are_reproducible():
    items = [{"i": i} for i in range(10)]
    for index in range(10):
        shots = ce.sample_fewshot(items, index, 3)
        assert len(shots) == 3 and items[index] not in shots
        assert len({s["i"] for s in shots}) == 3
        assert shots == ce.sample_fewshot(items, index, 3)
    assert ce.sample_fewshot(items, 0, 0) == []


def test_continuation_spans_for_each_kind():
    mc = [[9, 1, 2, 3], [9, 1, 2, 4, 5]]
    assert ce.continuation_spans(mc, "multiple_choice") == [(3, 4), (3, 5)]
    schema = [[9, 7, 1, 2], [9, 8, 8, 1, 2]]
    assert ce.continuation_spans(schema, "schema") == [(2, 4), (3, 5)]
    assert ce.continuation_spans([[9, 1], [9, 1, 5, 6]], "language_modeling") == [(2, 4)]
    # cropping a too-long prompt from the left keeps the answer in place
    assert ce.crop_left(list(range(10)), 7, 10, 4) == ([6, 7, 8, 9], 1, 4)


def test_scored_losses_match_the_closed_form():
    tok = CharTokenizer()
    seqs = [tok.encode("Q: aaaa", prepend=BOS), tok.encode("Q: abab", prepend=BOS)]
    spans = [(4, 8), (4, 8)]
    means, exact = ce.score_sequences(LastLetterModel(), seqs, spans, pad_id=BOS)
    assert means[0] == pytest.approx((UNIFORM + 3 * SAME) / 4, rel=1e-5)
    assert means[1] == pytest.approx((UNIFORM + 3 * DIFF) / 4, rel=1e-5)
    assert exact == [False, False]  # the first answer letter had no favourite
    means, exact = ce.score_sequences(LastLetterModel(), [tok.encode("x=>xx", prepend=BOS)], [(4, 6)])
    assert exact == [True] and means[0] == pytest.approx(SAME, rel=1e-5)


def test_multiple_choice_picks_lowest_mean_loss_not_lowest_sum():
    tok, model = CharTokenizer(), LastLetterModel()
    # "ba": [uniform, diff]; "aaaaab": [uniform, same x4, diff]. Lower mean: the long one; lower sum: "ba".
    item = {"query": "Q2:", "choices": ["ba", "aaaaab"], "gold": 1}
    assert (UNIFORM + 4 * SAME + DIFF) / 6 < (UNIFORM + DIFF) / 2
    assert ce.evaluate_item(model, tok, item, "multiple_choice") == 1
    assert ce.evaluate_item(model, tok, dict(item, gold=0), "multiple_choice") == 0


def test_core_on_the_fixture_bundle_matches_hand_computed_scores():
    results = ce.evaluate_core(LastLetterModel(), CharTokenizer(), FIXTURE)
    by_label = {r["label"]: r for r in results["tasks"]}
    # toy_choice: Q1 right (3 same vs fewer), Q2 right (mean, see above), Q3 wrong ("x" after x beats "y")
    assert (by_label["toy_choice"]["correct"], by_label["toy_choice"]["evaluated"]) == (2, 3)
    assert by_label["toy_choice"]["skipped"] == 3
    # toy_schema: "aaa" after "it was a" wins (right); "dd" after "the d" wins but gold is "the c" (wrong)
    assert (by_label["toy_schema"]["correct"], by_label["toy_schema"]["evaluated"]) == (1, 2)
    # toy_lm: "aa" after "zz a" and "cc" after "q c" are greedy; "ab" after "b" is not
    assert (by_label["toy_lm"]["correct"], by_label["toy_lm"]["evaluated"]) == (2, 3)
    centered = [(2 / 3 - 0.25) / 0.75, (0.5 - 0.5) / 0.5, 2 / 3]
    assert [by_label[k]["centered"] for k in ("toy_choice", "toy_schema", "toy_lm")] == pytest.approx(centered)
    assert results["core"] == pytest.approx(sum(centered) / 3)


def test_max_per_task_limits_items_and_task_filter_selects():
    results = ce.evaluate_core(LastLetterModel(), CharTokenizer(), FIXTURE, max_per_task=1, tasks=["toy_lm"])
    assert [r["label"] for r in results["tasks"]] == ["toy_lm"]
    assert results["tasks"][0]["evaluated"] == 1
    with pytest.raises(UserError, match="unknown CORE task"):
        ce.evaluate_core(LastLetterModel(), CharTokenizer(), FIXTURE, tasks=["hellaswag"])


def test_ranks_split_items_without_overlap():
    task = tasks_by_label()["toy_choice"]
    parts = [ce.evaluate_task(LastLetterModel(), CharTokenizer(), task, rank=r, world_size=2) for r in range(2)]
    assert sum(p["evaluated"] for p in parts) == 3 and sum(p["correct"] for p in parts) == 2


def test_centered_accuracy():
    assert ce.centered_accuracy(0.25, 25.0) == 0.0
    assert ce.centered_accuracy(1.0, 25.0) == 1.0
    assert ce.centered_accuracy(0.625, 25.0) == pytest.approx(0.5)


def test_real_model_runs_on_the_fixture(tiny_base_dir):
    from nanochat.checkpoint_manager import load_model
    model, tokenizer, _ = load_model("base", "cpu", verbose=False)
    results = ce.evaluate_core(model, tokenizer, FIXTURE)
    assert [r["evaluated"] for r in results["tasks"]] == [3, 2, 3]
    assert all(0 <= r["correct"] <= r["evaluated"] for r in results["tasks"])
    assert -3.0 <= results["core"] <= 1.0


def test_missing_bundle_gives_none_for_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setattr(ce, "_core_note_printed", False)
    from nanochat.common import compute_init
    assert ce.evaluate_core_for_training(LastLetterModel(), CharTokenizer(), compute_init("cpu"), 10) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "CORE skipped" in out
    with pytest.raises(UserError, match="no core.yaml"):
        ce.get_bundle(bundle_dir=str(tmp_path))


def _serve(payload):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_bundle_downloads_and_unpacks_atomically(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for root, _, files in os.walk(FIXTURE):
            for name in files:
                path = os.path.join(root, name)
                z.write(path, os.path.join("eval_bundle", os.path.relpath(path, FIXTURE)))
    server = _serve(buf.getvalue())
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/eval_bundle.zip"
        folder = ce.get_bundle(url=url, base_dir=str(tmp_path))
    finally:
        server.shutdown()
    assert folder == os.path.join(str(tmp_path), "eval_bundle")
    assert [t["label"] for t in ce.load_core_tasks(folder)] == ["toy_choice", "toy_schema", "toy_lm"]
    assert sorted(os.listdir(tmp_path)) == ["eval_bundle"]  # no zip, no staging folder left behind


def test_a_download_that_is_not_a_bundle_is_one_clear_error(tmp_path):
    server = _serve(b"this is not a zip")
    port = server.server_address[1]
    try:
        with pytest.raises(UserError, match="could not download the CORE eval bundle"):
            ce.download_bundle(f"http://127.0.0.1:{port}/eval_bundle.zip", base_dir=str(tmp_path),
                               max_attempts=1, progress=False)
    finally:
        server.shutdown()
    assert not os.path.exists(os.path.join(tmp_path, "eval_bundle"))


def test_base_eval_and_base_loss_scripts_log_their_figures(tiny_run, tmp_path, monkeypatch, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    from scripts import base_eval, base_loss
    from nanochat.report import get_report
    figures = base_eval.main(["--eval", "core,bpb,sample", "--bundle-dir", FIXTURE, "--device-type", "cpu",
                              "--device-batch-size", "2", "--split-tokens", "256", "-s", "8"])
    out = capsys.readouterr().out
    assert "CORE:" in out and "val bpb:" in out and out.count("sample: ") == 5
    assert set(figures) >= {"CORE", "toy_choice", "toy_schema", "toy_lm", "train bpb", "val bpb"}
    assert figures["CORE"] == pytest.approx((figures["toy_choice"] + figures["toy_schema"] + figures["toy_lm"]) / 3)
    assert 0 < figures["val bpb"] < 20
    assert os.path.exists(base / "base_eval" / "base_d2_000008.csv")
    assert get_report().summary()["CORE"] == {"BASE": pytest.approx(figures["CORE"])}
    loss = base_loss.main(["--device-type", "cpu", "--device-batch-size", "2", "--split-tokens", "256",
                           "--max-tokens", "4"])
    assert 0 < loss["train bpb"] < 20
    with pytest.raises(UserError, match="--eval"):
        base_eval.main(["--eval", "core,perplexity"])


def test_a_long_core_evaluation_prints_progress_with_an_eta(capsys):
    ce.evaluate_core(LastLetterModel(), CharTokenizer(), FIXTURE, progress_seconds=1e-9)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  CORE: ")]
    assert lines and all(" elapsed, eta " in line for line in lines)
    done = [int(line.split()[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert "(task 1/3, toy_choice)" in lines[0]
    ce.evaluate_core(LastLetterModel(), CharTokenizer(), FIXTURE, progress_seconds=0)  # 0: never
    assert "CORE: " not in capsys.readouterr().out
