"""Tools 1-5 (tokenizer playground, training dashboard, checkpoint browser, dataset inspector,
model calculator) run against the shared tiny training run, and the figures they print are
checked against values computed here independently (from the tokenizer, the metas, the model)."""

import os
import sys
import json
import math
import shutil
import importlib
import subprocess

import pytest
import torch

from nanochat import checkpoint_manager as cm
from nanochat.common import repo_root

TOOLS = ["tokenizer_playground", "training_dashboard", "checkpoint_browser", "dataset_inspector", "model_calculator"]


def tool(name):
    """Import tools/NAME.py as a module (the tools are scripts, not a package)."""
    return importlib.import_module(f"tools.{name}")


def run(name, argv, capsys):
    """Run a tool in-process like the command line does; returns (exit code, stdout, stderr)."""
    from nanochat.common import run_entry as run_tool
    code = run_tool(tool(name).main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(name, argv, capsys):
    code, out, err = run(name, list(argv) + ["--json"], capsys)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def run_dir(tiny_base_dir):
    return os.path.join(tiny_base_dir, "base_checkpoints", "d2")


@pytest.fixture(autouse=True)
def plain_output(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)


# -----------------------------------------------------------------------------
# the command line itself

@pytest.mark.slow
@pytest.mark.parametrize("name", TOOLS)
def test_tool_runs_as_a_script_and_help_shows_examples(name):
    r = subprocess.run([sys.executable, f"tools/{name}.py", "--help"], cwd=repo_root(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "examples:" in r.stdout and f"python tools/{name}.py" in r.stdout


@pytest.mark.slow
def test_script_exit_codes_on_real_runs(tiny_run, tmp_path):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(tiny_run), NO_COLOR="1")
    ok = subprocess.run([sys.executable, "tools/training_dashboard.py", "d2"], cwd=repo_root(), env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "best val checkpoint" in ok.stdout and "\x1b[" not in ok.stdout
    bad = subprocess.run([sys.executable, "tools/checkpoint_browser.py", "--inspect", "d2", "--step", "999"],
                         cwd=repo_root(), env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert "no step 999" in bad.stderr


# -----------------------------------------------------------------------------
# 1. tokenizer playground

def test_playground_token_counts_match_the_tokenizer(tiny_base_dir, capsys):
    from nanochat.tokenizer import get_tokenizer
    tok = get_tokenizer()
    text = "Hello world! 123 café"
    ids = tok.encode(text)
    data = run_json("tokenizer_playground", [text], capsys)
    assert [t["id"] for t in data["tokens"]] == ids
    assert data["stats"]["tokens"] == len(ids)
    assert data["stats"]["bytes"] == len(text.encode("utf-8"))
    assert "".join(t["text"] for t in data["tokens"] if t["type"] != "partial UTF-8") in text + "\ufffd"
    code, out, _ = run("tokenizer_playground", [text], capsys)
    assert code == 0 and f"tokens:        {len(ids)}" in out and "·w" in out  # whitespace made visible


def test_playground_against_shows_cl100k_and_a_note_for_gpt2(tiny_base_dir, capsys):
    from nanochat.tokenizer import get_reference_encoding
    text = "The quick brown fox jumps over the lazy dog."
    expected = len(get_reference_encoding("cl100k").encode(text))
    data = run_json("tokenizer_playground", [text, "--against", "gpt2", "cl100k"], capsys)
    rows = {r["name"]: r for r in data["against"]}
    assert rows["cl100k_base"]["tokens"] == expected
    code, out, err = run("tokenizer_playground", [text, "--against", "gpt2", "cl100k"], capsys)
    assert code == 0
    notes = [line for line in out.splitlines() if "gpt2" in line and "skipped" in line]
    if "gpt2" not in rows or rows["gpt2"]["tokens"] is None:  # offline: one line saying why
        assert len(notes) == 1


def test_playground_chat_counts_supervised_tokens(tiny_base_dir, capsys, tmp_path):
    from nanochat.tokenizer import get_tokenizer
    conv = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(conv))
    ids, mask = get_tokenizer().render_conversation({"messages": conv}, max_tokens=None)
    data = run_json("tokenizer_playground", ["--chat", path], capsys)["chat"]
    assert data["ids"] == ids and data["stats"]["supervised"] == sum(mask)
    code, out, _ = run("tokenizer_playground", ["--chat", "What is 2+2?", "It is 4."], capsys)
    assert code == 0 and f"supervised:       {sum(mask)}" in out


def test_playground_file_vocab_special_compare(tiny_base_dir, capsys, tmp_path):
    from nanochat.tokenizer import get_tokenizer
    tok = get_tokenizer()
    f = tmp_path / "mine.txt"
    f.write_text("To be, or not to be, that is the question.\n" * 20, encoding="utf-8")
    data = run_json("tokenizer_playground", ["--file", f, "--against", "cl100k"], capsys)
    assert data["stats"]["tokens"] == len(tok.encode(f.read_text()))
    vocab = run_json("tokenizer_playground", ["--vocab"], capsys)["vocab"]
    assert vocab["vocab_size"] == tok.get_vocab_size() and vocab["special"] == 9
    assert sum(vocab["length_histogram"].values()) == tok.get_vocab_size() - 9
    special = run_json("tokenizer_playground", ["--special"], capsys)["special_tokens"]
    assert {s["name"]: s["id"] for s in special}["<|bos|>"] == tok.get_bos_token_id()
    cmp = run_json("tokenizer_playground", ["--compare", "Hello", "Hey there"], capsys)["compare"]
    assert [c["ids"] for c in cmp] == [tok.encode("Hello"), tok.encode("Hey there")]


# -----------------------------------------------------------------------------
# 2. training dashboard

def test_dashboard_summary_matches_metas_and_metrics(run_dir, capsys):
    metas = {s: json.load(open(cm.meta_path(run_dir, s))) for s in cm.list_steps(run_dir)}
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    best_step = min(metas, key=lambda s: metas[s]["val_bpb"])
    # the smoothed loss, recomputed by hand: debiased EMA with beta 0.9
    v = 0.0
    for i, r in enumerate(records, 1):
        v = 0.9 * v + 0.1 * r["train_loss"]
    smoothed = v / (1 - 0.9 ** len(records))
    s = run_json("training_dashboard", [run_dir], capsys)
    assert s["origin"] == "metrics.jsonl" and s["checkpoint_steps"] == sorted(metas)
    assert s["best_val_step"] == best_step and s["best_val_bpb"] == metas[best_step]["val_bpb"]
    assert s["latest_train_loss"] == records[-1]["train_loss"]
    assert s["latest_smooth_train_loss"] == pytest.approx(smoothed, rel=1e-12)
    assert s["last_step"] == len(records) == records[-1]["step"]
    checks = {d["check"]: d for d in s["diagnosis"]}
    assert checks["first loss"]["level"] == "ok"  # the untrained loss is ~ln(512)
    assert abs(records[0]["train_loss"] - math.log(512)) < 0.1 * math.log(512)
    assert checks["warmdown"]["text"].startswith("warmdown reached")
    code, out, _ = run("training_dashboard", [run_dir, "--progress"], capsys)
    assert code == 0 and f"{metas[best_step]['val_bpb']:.4f} at step {best_step}" in out
    assert len([line for line in out.splitlines() if line.rstrip().endswith("ckpt") or "ckpt best" in line]) == len(metas)


def test_dashboard_plot_csv_compare_and_watch(run_dir, capsys, tmp_path):
    from tools.lib.plotting import image_size
    png = tmp_path / "dash.png"
    code, out, _ = run("training_dashboard", ["d2", "--plot", "--output", png, "--x", "tokens"], capsys)
    assert code == 0 and image_size(png) == (1200, 800) and png.stat().st_size > 20_000
    csv_path = tmp_path / "m.csv"
    code, out, _ = run("training_dashboard", [run_dir, "--export-csv", "--output", csv_path], capsys)
    lines = csv_path.read_text().splitlines()
    assert code == 0 and len(lines) == 1 + 12 and lines[0].startswith("step,tokens")
    code, out, _ = run("training_dashboard", [run_dir, "--compare", "base/d2"], capsys)
    assert code == 0 and "Comparison" in out
    code, out, _ = run("training_dashboard", [run_dir, "--watch", "--interval", "0.01", "--max-refreshes", "3"], capsys)
    assert code == 0 and out.count("Diagnosis") == 3


def test_diagnosis_finds_nan_spikes_and_plateau(tmp_path):
    from tools.lib import metrics as mx
    cdir = tmp_path / "run"
    cdir.mkdir()
    losses = [6.2] + [4.0] * 60
    losses[15] = 9.0      # a spike
    losses[20] = float("nan")
    with open(cdir / "metrics.jsonl", "w") as f:
        for i, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": i, "train_loss": loss, "lr": 1.0}) + "\n")
    findings = {f.check: f for f in mx.diagnose(mx.load_run(cdir))}
    assert findings["NaN/inf"].level == "bad" and "step 21" in findings["NaN/inf"].text
    assert findings["spikes"].level == "warn" and "16" in findings["spikes"].text
    assert findings["plateau"].level == "warn"
    assert findings["first loss"].level == "unknown"  # no meta, so no vocab size


# -----------------------------------------------------------------------------
# upstream-format folders: only model + meta files, metas without train_loss / lr

@pytest.fixture
def upstream_base(tiny_run, tmp_path, monkeypatch):
    base = tmp_path / "upstream"
    shutil.copytree(tiny_run / "tokenizer", base / "tokenizer")
    src = tiny_run / "base_checkpoints" / "d2"
    dst = base / "base_checkpoints" / "d2"
    dst.mkdir(parents=True)
    for step in cm.list_steps(src):
        shutil.copy(cm.model_path(src, step), cm.model_path(dst, step))
        meta = json.load(open(cm.meta_path(src, step)))
        upstream = {k: meta[k] for k in ("step", "val_bpb", "model_config", "user_config", "device_batch_size",
                                         "max_seq_len", "dataloader_state_dict")}
        upstream["loop_state"] = {k: meta["loop_state"][k] for k in ("min_val_bpb", "smooth_train_loss",
                                                                     "total_training_time")}
        json.dump(upstream, open(cm.meta_path(dst, step), "w"))
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    return base


def test_upstream_folder_degrades_gracefully(upstream_base, capsys, tmp_path):
    from tools.lib.plotting import image_size
    from tools.lib import metrics as mx
    run_dir = upstream_base / "base_checkpoints" / "d2"
    s = run_json("training_dashboard", [run_dir], capsys)
    assert s["origin"] == "meta files" and s["num_records"] == 3
    assert s["latest_train_loss"] is None and s["latest_lr_multiplier"] is None
    assert s["best_val_bpb"] == min(json.load(open(cm.meta_path(run_dir, k)))["val_bpb"] for k in (4, 8, 12))
    assert any("no metrics.jsonl" in m for m in s["missing"]) and any("no learning rate" in m for m in s["missing"])
    # the smoothed loss from loop_state, debiased with the step count
    raw = json.load(open(cm.meta_path(run_dir, 12)))["loop_state"]["smooth_train_loss"]
    assert s["latest_smooth_train_loss"] == pytest.approx(raw / (1 - 0.9 ** 12))
    code, out, _ = run("training_dashboard", [run_dir, "--plot", "--output", tmp_path / "u.png"], capsys)
    assert code == 0 and "missing: no metrics.jsonl" in out and image_size(tmp_path / "u.png") == (1200, 800)
    # the browser: integrity says the optimizer is absent (not an error), meta fields marked as upstream
    code, out, _ = run("checkpoint_browser", ["--inspect", "d2"], capsys)
    assert code == 0 and "not in meta (upstream format)" in out and "no optimizer file" in out
    code, out, _ = run("checkpoint_browser", ["--list"], capsys)
    assert code == 0 and out.count(" no ") >= 3
    # what the resume helper builds on: the history and its warmdown position, from the settings
    h = mx.load_run(run_dir)
    assert {f.check: f.level for f in mx.diagnose(h)}["warmdown"] == "info"


# -----------------------------------------------------------------------------
# 3. checkpoint browser

def test_browser_list_and_inspect_match_the_files_and_the_model(run_dir, capsys):
    rows = run_json("checkpoint_browser", ["--list", "--sort", "val_bpb"], capsys)
    assert [r["step"] for r in rows] == sorted(cm.list_steps(run_dir),
                                               key=lambda s: json.load(open(cm.meta_path(run_dir, s)))["val_bpb"])
    model, _, _ = cm.load_model_from_dir(run_dir, 12, "cpu")
    r12 = next(r for r in rows if r["step"] == 12)
    assert r12["num_params"] == model.num_params()
    assert r12["size_bytes"] == sum(os.path.getsize(p) for p in (cm.model_path(run_dir, 12), cm.meta_path(run_dir, 12),
                                                                 cm.optim_path(run_dir, 12)))
    rep = run_json("checkpoint_browser", ["--inspect", "d2", "--step", "8"], capsys)
    assert rep["num_params"] == model.num_params()
    assert rep["param_groups"] == model.param_counts()
    assert all(c["ok"] for c in rep["checks"])


def test_browser_compare_weights_and_prompt(run_dir, capsys):
    from nanochat.tokenizer import get_tokenizer
    out = run_json("checkpoint_browser", ["--compare", "d2:4", "d2:12", "--weights", "--prompt", "To be", "--max-tokens", "5"], capsys)
    a, _, _ = cm.load_checkpoint(run_dir, 4)
    b, _, _ = cm.load_checkpoint(run_dir, 12)
    keys = [k for k in a if k.startswith("transformer.h.1.")]
    num = sum(float(((b[k] - a[k]) ** 2).sum()) for k in keys)
    den = sum(float((a[k] ** 2).sum()) for k in keys)
    layer1 = next(w for w in out["weights"] if w["group"] == "layer  1")
    assert layer1["relative_change"] == pytest.approx((num / den) ** 0.5, rel=1e-6)
    diffs = {r["key"] for r in out["rows"] if r["differs"]}
    assert "step" in diffs and "val_bpb" in diffs and "model.n_layer" not in diffs
    tok = get_tokenizer()
    for side, step in (("a", 4), ("b", 12)):
        model, _, _ = cm.load_model_from_dir(run_dir, step, "cpu")
        ids = list(model.generate(tok.encode("To be", prepend="<|bos|>"), 5, temperature=0.0))
        assert out["samples"][side] == tok.decode(ids)


def test_browser_delete_confirms_and_stays_inside_the_base_dir(tiny_run, tmp_path, monkeypatch, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    d2 = base / "base_checkpoints" / "d2"
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    code, _, err = run("checkpoint_browser", ["--delete", "d2:4"], capsys)
    assert code == 2 and "--yes" in err and os.path.exists(cm.model_path(d2, 4))
    code, out, _ = run("checkpoint_browser", ["--delete", "d2:4", "--yes"], capsys)
    assert code == 0 and not os.path.exists(cm.model_path(d2, 4)) and cm.list_steps(d2) == [8, 12]
    # a tag folder that is a symlink to somewhere outside the base dir is never deleted
    outside = tmp_path / "precious"
    shutil.copytree(d2, outside)
    os.symlink(outside, base / "base_checkpoints" / "evil")
    code, _, err = run("checkpoint_browser", ["--delete", "evil", "--yes"], capsys)
    assert code == 2 and "refusing" in err and os.path.exists(cm.model_path(outside, 8))
    code, out, _ = run("checkpoint_browser", ["--base-dir", base, "--delete", "d2", "--yes"], capsys)
    assert code == 0 and not d2.exists()


# -----------------------------------------------------------------------------
# 4. dataset inspector

BROKEN_LINES = {
    2: ("bad_json", '{"messages": [oops'),
    3: ("missing_role", [{"content": "hi"}, {"role": "assistant", "content": "yo"}]),
    4: ("unknown_role", [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
    5: ("alternation", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]),
    6: ("empty_content", [{"role": "user", "content": "  "}, {"role": "assistant", "content": "yo"}]),
    7: ("non_string_content", [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "yo"}]),
}
GOOD = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def broken_file(tmp_path):
    lines = [GOOD] + [BROKEN_LINES[i][1] for i in range(2, 8)] + [GOOD]  # line 8 duplicates line 1
    return write_jsonl(tmp_path / "broken.jsonl", lines)


def test_inspector_reports_every_defect_with_its_line(tiny_base_dir, tmp_path, capsys):
    path = broken_file(tmp_path)
    code, out, _ = run("dataset_inspector", [path, "--validate"], capsys)
    assert code == 1
    for line, (kind, _) in BROKEN_LINES.items():
        assert any(l.strip().startswith(f"line {line}: {kind}") for l in out.splitlines()), (line, kind, out)
    data = run_json("dataset_inspector", [path], capsys)
    got = {(p["line"], p["code"]) for p in data["validation"]["problems"]}
    assert got == {(line, kind) for line, (kind, _) in BROKEN_LINES.items()}
    assert data["duplicates"] == [[1, 8]]
    clean = write_jsonl(tmp_path / "clean.jsonl", [GOOD, [{"role": "system", "content": "s"}] + GOOD])
    code, out, _ = run("dataset_inspector", [clean, "--validate"], capsys)
    assert code == 0 and "all 2 conversations are valid" in out


def test_inspector_fix_lengths_export(tiny_base_dir, tmp_path, capsys):
    from nanochat.tokenizer import get_tokenizer
    path = broken_file(tmp_path)
    out_path = tmp_path / "fixed.jsonl"
    code, out, _ = run("dataset_inspector", [path, "--fix", out_path], capsys)
    assert code == 0
    assert out_path.read_text().splitlines() == [json.dumps(GOOD)]
    for line in list(BROKEN_LINES) + [8]:
        assert f"  line {line}: " in out
    assert "exact duplicate of line 1" in out
    long_conv = [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]
    f = write_jsonl(tmp_path / "len.jsonl", [GOOD, long_conv])
    tok = get_tokenizer()
    n_long = len(tok.render_conversation({"messages": long_conv}, max_tokens=None)[0])
    data = run_json("dataset_inspector", [f, "--max-seq-len", n_long - 1], capsys)
    assert data["lengths"]["truncated"] == 1 and data["lengths"]["tokens"]["max"] == n_long
    code, out, _ = run("dataset_inspector", [f, "--analyze-lengths", "--export", tmp_path / "r.txt", "--export-count", "5"], capsys)
    assert code == 0 and (tmp_path / "r.txt").read_text().count("--- line") == 2


def test_inspector_pretraining_shards_counts_and_duplicates(tiny_base_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from nanochat.tokenizer import get_tokenizer
    docs = ["First document about kings.", "Second one, longer: " + "la " * 50, "First document about kings."]
    pq.write_table(pa.table({"text": docs}), tmp_path / "shard.parquet")
    data = run_json("dataset_inspector", [tmp_path / "shard.parquet"], capsys)
    tok = get_tokenizer()
    assert data["documents"] == 3 and data["total_chars"] == sum(map(len, docs))
    assert data["total_tokens"] == sum(len(tok.encode(d)) for d in docs)
    assert data["duplicates"] == [[1, 3]]
    (tmp_path / "t.txt").write_text("one doc\n\n\nanother doc\n", encoding="utf-8")
    code, out, _ = run("dataset_inspector", [tmp_path / "t.txt"], capsys)
    assert code == 0 and "documents:" in out and "2" in out


# -----------------------------------------------------------------------------
# 5. model calculator

@pytest.mark.parametrize("depth", [2, 4, 12, 20, 26])
def test_calculator_matches_the_real_model_on_the_meta_device(depth, capsys):
    from nanochat.gpt import GPT, config_from_depth
    data = run_json("model_calculator", ["--depth", depth], capsys)
    config = config_from_depth(depth, 32768, 2048, window_pattern="SSSL")
    with torch.device("meta"):
        model = GPT(config)
    assert data["config"] == config.to_dict()
    assert data["total_params"] == model.num_params()
    assert data["params"] == model.param_counts()
    assert data["flops_per_token"] == model.estimate_flops()
    assert data["scaling_params"] == model.num_scaling_params()


def test_calculator_cost_and_batch_suggestion(capsys):
    from nanochat.common import GPU_PEAK_FLOPS
    from tools.lib.model_calc import GPU_PRICE_PER_HOUR, memory_estimate, build_config
    data = run_json("model_calculator", ["--preset", "d20", "--batch-size", "32", "--seq-len", "2048",
                                         "--total-tokens", "20e9", "--gpu", "H100", "--num-gpus", "8"], capsys)
    p = data["plan"]
    assert p["tokens_per_step"] == 32 * 2048 * 8 and p["steps"] == math.ceil(20e9 / (32 * 2048 * 8))
    assert p["total_flops"] == data["flops_per_token"] * p["steps"] * p["tokens_per_step"]
    seconds = p["total_flops"] / (GPU_PEAK_FLOPS["H100"] * 8 * 0.4)
    assert p["seconds"] == pytest.approx(seconds) and p["cost"] == pytest.approx(seconds / 3600 * 8 * GPU_PRICE_PER_HOUR["H100"])
    b = data["suggested_batch_size"]
    cfg = build_config("d20")
    assert memory_estimate(cfg, b)["training_total"] <= 0.9 * 80e9 < memory_estimate(cfg, 2 * b)["training_total"]
    code, out, _ = run("model_calculator", ["--preset", "gpt2-small"], capsys)
    assert code == 0 and "-> equal" in out and "Insights" in out


@pytest.mark.slow
def test_calculator_measure_prints_predicted_vs_measured(capsys):
    code, out, err = run("model_calculator", ["--depth", "1", "--head-dim", "64", "--vocab-size", "256", "--seq-len", "32",
                                              "--batch-size", "2", "--measure", "--measure-steps", "1"], capsys)
    assert code == 0, err
    line = next(l for l in out.splitlines() if l.startswith("throughput"))
    predicted, measured = [float(x.replace(",", "")) for x in line.split()[2:4]]
    assert predicted > 0 and measured > 0
    assert "training memory" in out and "measured MFU" in out
