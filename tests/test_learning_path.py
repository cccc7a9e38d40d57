"""The learning path as a beginner walks it (issue 15): the model's abilities are listed where a
learner looks (chat CLI, chat page, demo script, README), the diagnoses fit the stage they judge,
the tools' figures match the real thing, and the report card and guide 02 tell the truth."""

import io
import json
import math
import os
import re
import shutil

import httpx
import pytest

from nanochat.common import run_entry, repo_root, UserError
from nanochat import checkpoint_manager as cm
from conftest import base_dir_env

ROOT = repo_root()


# -----------------------------------------------------------------------------
# what the model can do: one list, drawn from the tasks, shown everywhere

def test_example_prompts_are_real_training_prompts_of_every_offline_task():
    from nanochat_tasks import get_task
    from nanochat_tasks.examples import example_prompts
    from nanochat_tasks.mixtures import OFFLINE_TASKS_BY_STAGE
    examples = example_prompts()
    assert [e["task"] for e in examples] == [name for name, _ in OFFLINE_TASKS_BY_STAGE["sft"]]
    assert "Refusal" in [e["task"] for e in examples]  # the family only SFT trains is shown too
    for e in examples:
        first = get_task(e["task"], "train", size=1)[0]
        assert e["prompt"] in [m["content"] for m in first["messages"] if m["role"] == "user"]
        assert e["family"] and e["family"] != e["task"]  # every offline task has a learner's description
    assert examples[0]["prompt"] not in ("Hi!", "hello", "Hey there", "Good morning!")  # not a greeting


def test_sft_trains_a_family_that_midtraining_does_not_and_chat_eval_scores_it(tiny_base_dir_copy, capsys):
    from nanochat_tasks.mixtures import build_mixture
    from scripts import chat_eval
    _, mid = build_mixture("mid", "train", offline=True, synthetic_size=8)
    sft_mixture, sft = build_mixture("sft", "train", offline=True, synthetic_size=8)
    assert "Refusal" in sft and "Refusal" not in mid and set(mid) < set(sft)
    assert any(c.get("capability") for c in sft_mixture)  # its conversations are really in the mixture
    assert "Refusal" in build_mixture("sft", "val", offline=True, synthetic_size=8)[1]
    results, _ = chat_eval.main(["-i", "base", "-a", "Refusal", "-x", "3", "-m", "6"])
    assert [(r.name, r.total) for r in results] == [("Refusal", 3)]
    assert "Refusal" in capsys.readouterr().out
    assert "Refusal" in re.search(r'^EVAL_TASKS="(.*)"$', open(os.path.join(ROOT, "runs", "cpu_demo.sh")).read(), re.M)[1]


@pytest.mark.slow
def test_sft_teaches_refusals_that_midtraining_never_did(tiny_run, tmp_path, monkeypatch):
    """The tiny run's base model stands in for a mid checkpoint (midtraining never trains Refusal,
    so what matters is only that the family is new to it); SFT at full learning rate then learns
    to decline, naming the right capability, on held-out requests."""
    from scripts import chat_eval, chat_sft
    base = tmp_path / "base"
    shutil.copytree(tiny_run, base)
    shutil.copytree(base / "base_checkpoints", base / "mid_checkpoints")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    chat_sft.main(["--offline", "--model-tag", "d2", "--synthetic-size", "200", "--device-batch-size", "8",
                   "--target-examples-per-step", "16", "--num-iterations", "150", "--eval-every", "-1",
                   "--init-lr-frac", "1.0"])
    score = {}
    for source in ("mid", "sft"):
        results, _ = chat_eval.main(["-i", source, "-g", "d2", "-a", "Refusal", "-x", "30", "-m", "24"])
        score[source] = results[0].accuracy
    assert score["mid"] == 0.0 and score["sft"] >= 0.5, score


def test_chat_cli_lists_the_examples_in_help_but_not_with_p_or_piped_input(tiny_base_dir, capsys, monkeypatch):
    from scripts import chat_cli
    from nanochat_tasks.examples import example_prompts
    assert run_entry(chat_cli.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "trained on" in out and all(e["prompt"] in out for e in example_prompts())
    # -p prints the answer only, and piped input (not a terminal) gets no banner either
    assert run_entry(chat_cli.main, ["-i", "base", "-p", "Hello", "-m", "4", "-t", "0"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and "trained on" not in out
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
    assert run_entry(chat_cli.main, ["-i", "base", "-m", "4", "-t", "0"]) == 0
    out = capsys.readouterr().out
    assert "User: Hello" in out and "trained on" not in out


def test_stats_hands_the_examples_to_the_chat_page(tiny_run, tmp_path):
    from test_chat_web import serve
    from nanochat_tasks.examples import example_prompts
    with serve(tiny_run, tmp_path / "server.log") as (url, _):
        stats = httpx.get(url + "/stats", timeout=30).json()
        page = httpx.get(url + "/", timeout=30).text
    assert stats["examples"] == [{"prompt": e["prompt"], "family": e["family"]} for e in example_prompts()]
    assert "serverExamples" in page and ".innerHTML" not in page  # shown as text, like everything else


def test_readme_and_the_demo_show_the_same_examples():
    from nanochat_tasks.examples import example_prompts
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## What your model can do")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section, re.M)[1:]  # past the header row
    assert rows == [(e["family"], e["prompt"]) for e in example_prompts()]
    with open(os.path.join(ROOT, "runs", "cpu_demo.sh"), encoding="utf-8") as f:
        tail = f.read().rstrip().splitlines()[-4:]
    assert "python -m scripts.chat_cli -i sft -g $TAG" in tail[0] and tail[-1] == "python -m nanochat_tasks.examples"


# -----------------------------------------------------------------------------
# diagnoses that fit the stage

def history_of(records, stage=None, folder="run", metas=None, **meta_keys):
    from tools.lib import metrics as mx
    if stage is not None:
        metas = {records[-1]["step"]: {"stage": stage, "model_config": {"vocab_size": 512}, **meta_keys}}
    return mx.RunHistory(path=f"/nowhere/{folder}/d4", name="d4", origin="metrics.jsonl", records=records,
                         metas=metas or {})


def findings(history):
    from tools.lib import metrics as mx
    return {f.check: f for f in mx.diagnose(history)}


def losses(values):
    return [{"step": i, "train_loss": v, "lr": 1.0} for i, v in enumerate(values, 1)]


@pytest.mark.parametrize("stage", ["mid", "sft"])
def test_a_finetune_is_not_judged_by_a_fresh_models_first_loss(stage):
    started_trained = findings(history_of(losses([2.5] + [2.0] * 20), stage))["first loss"]
    assert started_trained.level == "ok" and "starts from a trained model" in started_trained.text
    assert "good init" not in started_trained.text
    # a finetune that starts at ln(vocab) did not load its weights: that is the finding
    started_fresh = findings(history_of(losses([math.log(512)] + [5.0] * 20), stage))["first loss"]
    assert started_fresh.level == "warn" and "were the weights" in started_fresh.text
    # the base model keeps its check
    base = findings(history_of(losses([math.log(512)] + [5.0] * 20), "base"))["first loss"]
    assert base.level == "ok" and "good init" in base.text


def test_sft_is_judged_as_sft_a_flat_loss_and_a_warmdown_from_step_one_are_its_design():
    n = 20
    flat = [{"step": i, "train_loss": 1.9, "lr": 1 - (i - 1) / n} for i in range(1, n + 1)]
    sft = findings(history_of(flat, "sft", num_iterations=n, user_config={"warmdown_ratio": 1.0}))
    assert sft["plateau"].level == "info" and "Normal for SFT" in sft["plateau"].text
    assert "whole run is a warmdown" in sft["warmdown"].text and "drops faster" not in sft["warmdown"].text
    assert "midtraining already trained it" in sft["first loss"].text
    # midtraining keeps the plateau warning and its warmdown line (its LR holds, then falls over the last 20%)
    held = [dict(r, lr=min(1.0, (n - r["step"] + 1) / (0.2 * n))) for r in flat]
    mid = findings(history_of(held, "mid", num_iterations=n, user_config={"warmdown_ratio": 0.2}))
    assert mid["plateau"].level == "warn" and "warmdown reached at step" in mid["warmdown"].text
    assert "conversations are new to it" in mid["first loss"].text


def test_the_stage_is_read_from_the_folder_while_a_run_has_no_checkpoint():
    for folder, stage in cm.STAGE_DIRS.items():
        assert history_of(losses([2.5] * 3), folder=stage).stage == folder
    assert history_of(losses([2.5] * 3)).stage == "base"  # a folder of any other name


def rl_records(rewards, **extra):
    return [{"step": i, "reward_mean": r, "loss": 0.001, "lr": 1 - i / len(rewards), **extra}
            for i, r in enumerate(rewards, 1)]


def test_an_rl_run_is_judged_by_its_rewards():
    rewards = [0.2, 0.25, 0.2, 0.22, 0.3, 0.35, 0.3, 0.4, 0.45, 0.5, 0.45, 0.55]
    records = rl_records(rewards)
    records[-1]["heldout_reward"] = 0.5
    h = history_of(records, "rl", loop_state={"heldout_before": {"reward": 0.3, "greedy": 0.3}})
    found = findings(h)
    assert set(found) == {"reward trend", "NaN/inf", "held-out"}
    assert all(f.level != "unknown" for f in found.values()), found
    assert found["reward trend"].level == "ok" and "0.217 over the first quarter" in found["reward trend"].text
    assert found["held-out"].level == "ok" and "0.300 before RL -> 0.500" in found["held-out"].text
    assert found["NaN/inf"].level == "ok"
    # a NaN policy-gradient loss, a flat reward, and nothing to learn from
    broken = rl_records(rewards)
    broken[5]["loss"] = float("nan")
    assert findings(history_of(broken, "rl"))["NaN/inf"].level == "bad"
    flat = findings(history_of(rl_records([0.3, 0.32, 0.28, 0.3] * 3), "rl"))["reward trend"]
    assert flat.level == "warn" and "no clear change" in flat.text
    zero = findings(history_of(rl_records([0.0] * 12), "rl"))["reward trend"]
    assert zero.level == "bad" and "nothing to learn" in zero.text


def test_an_rl_run_is_recognised_without_a_meta_and_its_summary_shows_rewards(tmp_path, capsys):
    run_dir = tmp_path / "chatrl_checkpoints" / "d4"
    run_dir.mkdir(parents=True)
    with open(run_dir / cm.METRICS_FILE, "w") as f:
        for r in rl_records([0.1 * (i % 5) for i in range(12)]):
            f.write(json.dumps(r) + "\n")
    from tools import training_dashboard
    assert run_entry(training_dashboard.main, [str(run_dir), "--progress"]) == 0
    out = capsys.readouterr().out
    assert "latest mean reward" in out and "reward trend" in out and "first loss" not in out
    assert "no validation bpb" not in out and "mean reward" in out.split("Progress")[1]


def drawn_panels(histories, tmp_path, monkeypatch):
    """{panel title: number of lines drawn} of the dashboard figure of these runs."""
    from tools.lib import metrics as mx, plotting
    figures = []
    real_save = plotting.save_figure
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: figures.append(fig) or real_save(fig, path))
    assert os.path.exists(mx.plot_runs(histories, str(tmp_path / "run.png")))
    return {ax.get_title(): len(ax.get_lines()) for ax in figures[0].axes}


def test_the_dashboard_plots_an_rl_run_by_its_rewards_with_no_empty_panel(tmp_path, monkeypatch):
    records = rl_records([0.1 * (i % 5) for i in range(12)], reply_tokens=40.0)
    records[-1]["heldout_reward"] = 0.4
    panels = drawn_panels([history_of(records, "rl")], tmp_path, monkeypatch)
    assert len(panels) == 4 and all(n > 0 for n in panels.values()), panels
    assert panels["Mean reward"] == 3  # raw, smoothed and the held-out points
    assert "Train loss" not in panels and "Throughput" not in panels
    # RL counts no tokens: plotted against tokens, every panel says so instead of drawing nothing
    from tools.lib import metrics as mx
    empty = []
    monkeypatch.setattr("tools.lib.plotting.empty_panel", lambda ax, why: empty.append(why))
    mx.plot_runs([history_of(records, "rl")], str(tmp_path / "by_tokens.png"), x="tokens")
    assert len(empty) == 4 and all("try --x step" in why for why in empty), empty
    # a base run keeps its loss panels, and one without val bpb or throughput says so instead of drawing
    base = drawn_panels([history_of(losses([6.0, 5.0, 4.5, 4.0]), "base")], tmp_path, monkeypatch)
    assert base["Train loss"] == 2 and base["Validation bits per byte"] == 0 and base["Throughput"] == 0


def test_an_inf_val_bpb_beside_finite_train_losses_is_not_called_a_divergence():
    records = losses([6.2] + [4.0] * 20)
    records[4]["val_bpb"] = float("inf")
    found = findings(history_of(records))["NaN/inf"]
    assert found.level == "warn" and "not a divergence" in found.text and "diverged" not in found.text
    records[10]["train_loss"] = float("nan")
    assert findings(history_of(records))["NaN/inf"].level == "bad"


def test_evaluate_bpb_refuses_to_measure_nothing():
    import torch
    from nanochat.gpt import GPTConfig, build_model
    from nanochat.loss_eval import evaluate_bpb
    model = build_model(GPTConfig(sequence_len=8, vocab_size=64, n_layer=1, n_head=1, n_kv_head=1, n_embd=32), "cpu")
    with pytest.raises(UserError, match="could not fill a single batch"):
        evaluate_bpb(model, iter([]), 4, torch.ones(64, dtype=torch.long))


def test_a_small_own_text_folder_is_refused_at_the_start_in_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    from scripts import base_train
    from conftest import TINY_TRAIN_ARGS
    shutil.copytree(tiny_run / "tokenizer", tmp_path / "base" / "tokenizer")  # the shared run stays untouched
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    data = tmp_path / "my_texts"
    data.mkdir()
    (data / "a_notes.txt").write_text("\n\n".join(f"My note {i} about foxes, dogs and the weather." for i in range(300)))
    (data / "b_last.txt").write_text("A short last note.")
    code = run_entry(base_train.main, TINY_TRAIN_ARGS + ["--data-dir", str(data), "--model-tag", "own"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert "b_last.txt" in err and "--device-batch-size" in err and "--eval-every -1" in err
    assert not os.path.exists(cm.checkpoint_dir("base", "own"))  # refused before anything was written
    # with evaluation off the same folder trains (a repeated flag: the last one counts)
    assert run_entry(base_train.main, TINY_TRAIN_ARGS + ["--num-iterations", "1", "--eval-every", "-1",
                                                         "--data-dir", str(data), "--model-tag", "own"]) == 0
    assert cm.list_steps(cm.checkpoint_dir("base", "own")) == [1]


# -----------------------------------------------------------------------------
# the tools' figures

def test_lr_finder_recommend_gives_the_flags_to_paste_and_names_the_lm_head_flag(tiny_base_dir, capsys):
    from tools import lr_finder
    assert run_entry(lr_finder.main, ["d2", "--recommend"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) >= 3
    assert "--matrix-lr 0.02 --embedding-lr 0.2 --unembedding-lr 0.004 --scalar-lr 0.5" in out
    assert "--range-test" in out
    assert run_entry(lr_finder.main, ["d2"]) == 0
    lm_head = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("lm_head"))
    assert lm_head.split()[1] == "--unembedding-lr" and lm_head.split()[-1] == "0.0040"


def test_lr_finder_suggests_halved_flags_after_a_nan(tmp_path):
    from tools.lib import lr_finder as lf
    records = losses([6.0, 5.5, float("nan")])
    a = lf.analyze_run(history_of(records, "base", user_config={"matrix_lr": 0.04}))
    assert a["flags"]["--matrix-lr"] == 0.04 and a["flags"]["--unembedding-lr"] == 0.004
    assert a["suggested_flags"]["--matrix-lr"] == 0.02 and a["suggested_flags"]["--warmup-ratio"] == 0.05


def demo_model_config():
    """The GPTConfig runs/cpu_demo.sh trains, from its own tok_train and base_train lines."""
    from test_runs import _commands
    from scripts import base_train, tok_train
    from nanochat.gpt import config_from_depth
    commands = dict(_commands("cpu_demo.sh"))
    vocab = tok_train.parse_args(commands["scripts.tok_train"]).vocab_size
    a = base_train.parse_args(commands["scripts.base_train"])
    return config_from_depth(a.depth, vocab, a.max_seq_len, a.aspect_ratio, a.head_dim, a.n_kv_head or None,
                             a.window_pattern)


def test_the_nanochat_tiny_preset_is_the_demos_model():
    import torch
    from nanochat.gpt import GPT
    from tools.lib import model_calc as mc
    demo = demo_model_config()
    preset = mc.build_config("nanochat-tiny")
    assert preset.to_dict() == demo.to_dict()
    with torch.device("meta"):
        model = GPT(demo)
    assert mc.total_params(preset) == model.num_params() and mc.flops_per_token(preset) == model.estimate_flops()
    # and the batch the demo trains with, which the calculator's memory and steps use
    from test_runs import _commands
    from scripts import base_train
    demo_args = base_train.parse_args(dict(_commands("cpu_demo.sh"))["scripts.base_train"])
    assert mc.PRESETS["nanochat-tiny"]["device_batch_size"] == demo_args.device_batch_size
    assert mc.PRESETS["nanochat-tiny"]["total_batch_size"] == demo_args.total_batch_size


def test_model_calculator_preset_uses_the_demos_batch(capsys):
    from tools import model_calculator
    from tools.lib import model_calc as mc
    preset = mc.PRESETS["nanochat-tiny"]
    assert run_entry(model_calculator.main, ["--preset", "nanochat-tiny", "--gpu", "H100", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["device_batch_size"] == preset["device_batch_size"]
    assert r["plan"]["tokens_per_step"] == preset["total_batch_size"]
    # the flag still wins
    assert run_entry(model_calculator.main, ["--preset", "nanochat-tiny", "--batch-size", "3", "--gpu", "H100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device_batch_size"] == 3


def test_model_calculator_reads_a_trained_checkpoint(tiny_base_dir, capsys):
    from tools import model_calculator
    meta = cm.read_meta(cm.checkpoint_dir("base", "d2"), 12)
    for argv in (["--from-checkpoint"], ["--model-tag", "d2", "--step", "12"], ["--from-checkpoint", "d2"],
                 ["--from-checkpoint", "base/d2:12"]):
        assert run_entry(model_calculator.main, argv + ["--gpu", "H100", "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["config"] == meta["model_config"] and r["check"]["equal"]
        assert r["checkpoint"]["model_tag"] == "d2" and r["checkpoint"]["step"] == 12
        assert r["plan"]["tokens_per_step"] == meta["total_batch_size"]
        assert r["device_batch_size"] == meta["device_batch_size"]  # the batch it trained with, not the default
    meta8 = cm.read_meta(cm.checkpoint_dir("base", "d2"), 8)
    assert run_entry(model_calculator.main, ["--from-checkpoint", "d2:8"]) == 0
    out = capsys.readouterr().out
    assert "base/d2 step 8" in out and f"device batch {meta8['device_batch_size']} (from the checkpoint's meta" in out
    # a bad address: one line that says what exists, exit 2
    for bad, says in (("d9", "unknown model tag 'd9'"), ("d2:7", "no step 7"), ("moon/d2", "unknown stage 'moon'"),
                      ("a:b:c", "cannot read the checkpoint name")):
        assert run_entry(model_calculator.main, ["--from-checkpoint", bad]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and says in err and "Traceback" not in err, (bad, err)
    assert run_entry(model_calculator.main, ["--model-tag", "d2", "--depth", "4"]) == 2
    assert "leave out --depth" in capsys.readouterr().err


def test_the_eta_leaves_out_the_first_slow_step_and_says_when_it_is_rough():
    from nanochat import training as tr
    from nanochat.common import format_duration
    progress = tr.Progress(100)
    dts = [60.0, 2.0, 2.0, 2.0, 50.0, 2.0]  # a slow warm-up step, then 2 s steps and one busy moment
    etas = [progress.line(i, 3.0, 1.0, dt, 1000.0, None).split(" | ")[-1] for i, dt in enumerate(dts)]
    assert etas[0] == "eta after step 2"  # nothing measured yet but the warm-up
    assert etas[1] == f"eta ~{format_duration(98 * 2.0)} (rough)" and etas[2] == f"eta ~{format_duration(97 * 2.0)} (rough)"
    assert etas[3] == f"eta {format_duration(96 * 2.0)}"
    assert etas[4] == f"eta {format_duration(95 * 2.0)}" and etas[5] == f"eta {format_duration(94 * 2.0)}"  # the median
    last = tr.Progress(2)
    assert [last.line(i, 3.0, 1.0, 5.0, 1000.0, None).split(" | ")[-1] for i in range(2)] == ["eta after step 2", "eta 0s"]


# -----------------------------------------------------------------------------
# small lies

def script_help(name, capsys):
    import importlib
    module = importlib.import_module(f"scripts.{name}")
    assert run_entry(module.main, ["--help"]) == 0
    return capsys.readouterr().out


def test_the_readme_says_which_stages_take_the_device_and_model_tag_flags(capsys):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    claim = text[text.index("Every stage takes `--help`."):].split("\n\n")[0]
    assert "(base_train to chat_web) take" in claim and "the tokenizer stages\n(tok_train, tok_eval)" in claim
    for name in ("base_train", "base_loss", "base_eval", "mid_train", "chat_sft", "chat_rl", "chat_eval", "chat_cli", "chat_web"):
        out = script_help(name, capsys)
        assert "--device-type" in out and "--model-tag" in out, name
        assert ("--resume-from-step" in out) == (name in ("base_train", "mid_train", "chat_sft", "chat_rl")), name
    for name in ("tok_train", "tok_eval"):
        out = script_help(name, capsys)
        assert "--device-type" not in out and "--model-tag" not in out, name


def test_the_report_card_orders_sections_by_pipeline_stage(tmp_path):
    from nanochat.report import Report
    report = Report(str(tmp_path / "report"))
    report.reset()
    # the order the CPU demo logs them in: the base model's chat evaluation comes after SFT
    for section in ["Tokenizer training", "Base model training", "Midtraining", "Chat SFT", "Chat evaluation base",
                    "Chat evaluation mid", "Chat evaluation sft", "Chat RL", "Chat evaluation rl"]:
        report.log(section, [{"figure": 1}])
    text = open(report.generate(copy_to_cwd=False), encoding="utf-8").read()
    headings = [h for h in re.findall(r"^## (.+)$", text, re.M) if h not in ("Environment", "Code size", "Summary")]
    assert headings == ["Tokenizer training", "Base model training", "Chat evaluation base", "Midtraining",
                        "Chat evaluation mid", "Chat SFT", "Chat evaluation sft", "Chat RL", "Chat evaluation rl"]


def test_every_section_a_script_logs_has_its_place_in_the_pipeline_order():
    from nanochat.report import SECTION_ORDER, SUMMARY_COLUMNS, BASE_EVAL_SECTION, chat_eval_section
    names = {chat_eval_section(source) for _, source in SUMMARY_COLUMNS} | {BASE_EVAL_SECTION}
    for name in os.listdir(os.path.join(ROOT, "scripts")):
        if name.endswith(".py"):
            text = open(os.path.join(ROOT, "scripts", name), encoding="utf-8").read()
            names |= set(re.findall(r'(?:section=|log_report\()"([^"]+)"', text))  # literal section names
            table = re.search(r"REPORT_SECTION = \{([^}]*)\}", text)              # chat_finetune's per stage
            names |= set(re.findall(r':\s*"([^"]+)"', table.group(1))) if table else set()
    assert {"Chat RL", "Midtraining", "Chat SFT", "Base model loss"} <= names
    assert names <= set(SECTION_ORDER), names - set(SECTION_ORDER)


def test_the_demo_tokenizer_splits_numbers_into_single_digits_as_guide_02_says(tmp_path):
    from scripts import tok_train
    from nanochat.tokenizer import get_tokenizer
    from test_runs import _commands
    vocab = tok_train.parse_args(dict(_commands("cpu_demo.sh"))["scripts.tok_train"]).vocab_size
    with base_dir_env(tmp_path):
        tok_train.main(["--vocab-size", str(vocab)])
        tokenizer = get_tokenizer()
        assert [tokenizer.decode([t]) for t in tokenizer.encode("12345")] == ["1", "2", "3", "4", "5"]
        pairs = [f"{a}{b}" for a in range(10) for b in range(10)]
        assert not [p for p in pairs if len(tokenizer.encode(p)) == 1]  # "learned no digit pair at all"
    with open(os.path.join(ROOT, "docs", "02-tokenization.md"), encoding="utf-8") as f:
        guide = " ".join(f.read().split())
    assert f"The CPU demo's {vocab:,}-token vocabulary" in guide and "learned no digit pair at all" in guide
